"""Memory per guest page of a whole migration (source and destination in one process).

For a hot-set guest with a balloon (``run.sized_scenario``: the balloon gives back 1/16
of RAM early in pass 1 and takes it back later; stream counted, not stored) of each
size, two child processes run:

* a *baseline* child that only imports what a run imports (interpreter, numpy, the
  modules) and reports its peak RSS;
* a *run* child that runs the whole migration (``run_scenario``: build, precopy,
  restore, verify) and reports its peak RSS plus a per-structure table computed from
  the actual arrays at the end of the run (``nbytes`` of each table, source and
  destination).

Bytes per page = (run peak RSS - baseline peak RSS) / populated pages. The per-structure
table divides each structure's ``nbytes`` by the same populated pages.

    python benchmarks/bench_memory.py              # 4 GiB and 16 GiB
    python benchmarks/bench_memory.py --gib 1 4    # other sizes
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: The issue's goal for a whole migration (source + destination), bytes per guest page.
GOAL_BYTES_PER_PAGE = 30


def _peak_rss_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _imports() -> None:
    import numpy  # noqa: F401

    import migrate.run.runner  # noqa: F401
    import migrate.run.scenario  # noqa: F401


def _arrays_nbytes(obj, depth: int = 2, seen: set | None = None) -> int:
    """Bytes held by numpy arrays reachable from ``obj``'s attributes (a few levels)."""
    import numpy as np

    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return obj.nbytes if obj.base is None else 0
    if depth < 0:
        return 0
    if isinstance(obj, dict):
        vals = obj.values()
    elif isinstance(obj, (list, tuple, set)):
        vals = obj
    else:
        d = getattr(obj, "__dict__", None)
        vals = list(d.values()) if d else []
        for s in getattr(type(obj), "__slots__", ()):
            if hasattr(obj, s):
                vals.append(getattr(obj, s))
    return sum(_arrays_nbytes(v, depth - 1, seen) for v in vals)


def structure_table(src_hv, dst_hv, restorer, guest, engine) -> dict[str, int]:
    """``nbytes`` of each per-page structure (source, destination, run), at the end."""
    rows: dict[str, int] = {}
    for side, hv in (("source", src_hv), ("destination", dst_hv)):
        rows[f"{side} P2M types"] = hv.p2m.types.nbytes
        rows[f"{side} P2M MFNs"] = hv.p2m.mfns.nbytes
        m2p = hv.m2p
        rows[f"{side} M2P"] = m2p.nbytes if hasattr(m2p, "nbytes") else m2p.table.nbytes
        rows[f"{side} frame tokens"] = hv.frames.tokens.nbytes
        rows[f"{side} frame allocator"] = hv.frames._stack.nbytes   # the free stack
        rows[f"{side} PoD cache"] = _arrays_nbytes(hv.pod)
        rows[f"{side} log-dirty tree"] = _arrays_nbytes(hv.logdirty)
    rows["destination populated set (restorer)"] = _arrays_nbytes(restorer._populated)
    # Walk the guest and the engine without re-counting the hypervisors' tables.
    held = {id(src_hv), id(dst_hv), id(restorer)}
    rows["guest (owned map, balloon, workloads)"] = _arrays_nbytes(guest, depth=3, seen=set(held))
    rows["engine (bitmaps, batches held)"] = _arrays_nbytes(engine, depth=3, seen=held | {id(guest)})
    return rows


def _child_run(gib: int) -> None:
    import asyncio

    from benchmarks.run import sized_scenario
    from hypervisor import domain
    from migrate.toolstack import save as engine_mod
    from migrate.toolstack import restore as restore_mod
    from migrate.run import runner
    from migrate.run.scenario import parse_scenario

    made: dict[str, list] = {"hv": [], "restorer": [], "engine": []}

    def spy(cls, key):
        init = cls.__init__

        def wrapped(self, *a, **k):
            init(self, *a, **k)
            made[key].append(self)
        cls.__init__ = wrapped

    spy(domain.Hypervisor, "hv")
    spy(restore_mod.Restorer, "restorer")
    spy(engine_mod.PrecopyEngine, "engine")
    scenario = parse_scenario(sized_scenario(gib))
    res = asyncio.run(runner.run_scenario(scenario))
    peak = _peak_rss_bytes()
    src, dst = made["hv"][0], made["hv"][1]
    table = structure_table(src, dst, made["restorer"][0], src.guest, made["engine"][0])
    print(json.dumps({"peak": peak, "populated": res.guest["ram_pages_at_start"],
                      "verify_ok": bool(res.verify and res.verify.ok), "outcome": res.save.outcome,
                      "wall": res.wall["seconds"], "table": table}))


def _child_baseline() -> None:
    _imports()
    print(json.dumps({"peak": _peak_rss_bytes()}))


def _spawn(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"bench_memory child {args} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(sizes=(4, 16)) -> list[dict]:
    """One row per size: measured bytes/page and the per-structure table."""
    rows = []
    for gib in sizes:
        base = _spawn("--baseline")
        data = _spawn("--run", str(gib))
        pages = data["populated"]
        rows.append({"name": f"hot-set guest + balloon, {gib} GiB", "gib": gib, "pages": pages,
                     "baseline_bytes": base["peak"], "peak_bytes": data["peak"],
                     "bytes_per_page": (data["peak"] - base["peak"]) / pages,
                     "structures_per_page": {k: v / pages for k, v in data["table"].items()},
                     "verify_ok": data["verify_ok"], "wall": data["wall"]})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=int, nargs="+", default=[4, 16], help="guest sizes in GiB (default 4 16)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    ap.add_argument("--run", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.baseline:
        _child_baseline()
        return 0
    if args.run is not None:
        _child_run(args.run)
        return 0
    rows = run(args.gib)
    names = list(rows[0]["structures_per_page"])
    print(f"{'structure (bytes per populated page)':<44}" + "".join(f"{r['gib']:>9} GiB" for r in rows))
    for n in names:
        print(f"{n:<44}" + "".join(f"{r['structures_per_page'][n]:13.2f}" for r in rows))
    print(f"{'sum of the structures':<44}" + "".join(f"{sum(r['structures_per_page'].values()):13.2f}"
                                                     for r in rows))
    print(f"{'measured: (peak RSS - baseline) / pages':<44}" + "".join(f"{r['bytes_per_page']:13.2f}"
                                                                     for r in rows))
    print(f"{'baseline peak RSS (MiB)':<44}" + "".join(f"{r['baseline_bytes'] / 2**20:13.1f}" for r in rows))
    print(f"{'run peak RSS (MiB)':<44}" + "".join(f"{r['peak_bytes'] / 2**20:13.1f}" for r in rows))
    print(f"{'wall (s)':<44}" + "".join(f"{r['wall']:13.2f}" for r in rows))
    print(f"goal: <= {GOAL_BYTES_PER_PAGE} bytes/page measured; "
          + ", ".join(f"{r['gib']} GiB {'met' if r['bytes_per_page'] <= GOAL_BYTES_PER_PAGE else 'NOT met'}"
                      + ("" if r["verify_ok"] else " (NOT VERIFIED)") for r in rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
