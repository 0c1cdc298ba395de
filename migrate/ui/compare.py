"""What the compare table says under its numbers: why one run can look cheaper.

Under ``pre-fix`` the saver never sees the GFNs the balloon added back (no dirty bit:
``guest_physmap_add_entry`` before the fix), so it sends fewer pages and finishes
sooner, and the destination lacks those pages. The note states it with the two
reports' own numbers.
"""

from __future__ import annotations

from typing import Any


def cheaper_because_skipped(labels: list[str], reps: list[dict[str, Any]]) -> str:
    """One sentence when a run that sent less also left pages missing or stale at the
    destination; empty otherwise."""
    if len(reps) != 2:
        return ""
    (la, a), (lb, b) = zip(labels, reps)
    if a["totals"]["pages_sent"] < b["totals"]["pages_sent"]:
        (la, a), (lb, b) = (lb, b), (la, a)
    # b sent fewer data pages than a
    v = b.get("verify") or {}
    bad = int(v.get("missing_pages", 0)) + int(v.get("stale_pages", 0))
    fewer = a["totals"]["pages_sent"] - b["totals"]["pages_sent"]
    if not fewer or not bad:
        return ""
    mib = (a["totals"]["bytes"] - b["totals"]["bytes"]) / (1 << 20)
    return (f"{lb} looks cheaper ({fewer:,} fewer data pages, {mib:,.1f} MiB less) because it skipped "
            f"pages: {int(v.get('missing_pages', 0)):,} never reached the destination (missing) and "
            f"{int(v.get('stale_pages', 0)):,} arrived with old contents (stale).")


__all__ = ["cheaper_because_skipped"]
