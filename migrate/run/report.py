"""Reports: the JSON report and the CSV per-round table, both built from ``RunResult``.

Mirrors nothing in Xen directly; the per-pass fields are ``struct precopy_stats`` and
what ``send_dirty_pages`` counts, extended with what the P2M/log-dirty fix changes
(XTAB entries, balloon operations, verify outcome). Times are virtual seconds; wall
time is kept in its own ``wall`` object so two runs with one seed give identical
reports outside it.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from migrate.events import RoundStats
from migrate.run.outputs import atomic_file
from migrate.run.runner import RunResult

SCHEMA_VERSION = 1

ROUND_FIELDS = ("iteration", "phase", "start_s", "end_s", "dirty_count", "pfns_walked", "pages_sent",
                "xtab_sent", "broken_sent", "bytes", "batches", "balloon_out", "balloon_in")


def _round(r: RoundStats) -> dict[str, Any]:
    d = r.as_dict()
    d["start_s"] = round(d["start_s"], 9)
    d["end_s"] = round(d["end_s"], 9)
    return {k: d[k] for k in ROUND_FIELDS}


def build_report(res: RunResult) -> dict[str, Any]:
    s = res.save
    totals = s.totals.as_dict()
    totals["total_time_s"] = round(totals["total_time_s"], 9)
    totals["downtime_s"] = round(totals["downtime_s"], 9)
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "scenario": res.scenario,
        "seed": res.seed,
        "behaviour": res.behaviour,
        "policy": {"name": res.policy, "params": res.policy_params},
        "switchover": s.switchover,
        "outcome": s.outcome,
        "error": s.error or None,
        "error_pfn": s.error_pfn,
        "p2m_size": s.p2m_size,
        "rounds": [_round(r) for r in s.rounds],
        "totals": totals,
        "timeline": {"start_s": round(s.t_start, 9),
                     "suspend_s": None if s.t_suspend is None else round(s.t_suspend, 9),
                     "end_s": None if s.t_last_byte is None else round(s.t_last_byte, 9)},
        "hypervisor": res.hypervisor,
        "verify": None if res.verify is None else res.verify.as_dict(),
        "restore": res.restore,
        "destination": res.destination,
        "guest": res.guest,
        "stream": res.stream,
        "wall": res.wall,
        "xen_behaviour_sites": res.sites,
        "pages": _pages(res),
    }
    final = dict(s.final_stats)
    checkpoint = final.pop("checkpoint", None)      # a checkpointed stream's replication
    if final:
        report["verify_pass"] = final
    if checkpoint is not None:
        report["checkpoint"] = checkpoint
    if res.broker is not None:
        report["broker"] = res.broker
    return report


def _pages(res: RunResult) -> dict[str, Any]:
    """Where the pages ended, in the states the teaching view draws: at the destination
    (current = the source's RAM pages that arrived with their last contents, missing,
    stale, extra) and what pre-fix left behind on the way (``track.PageLedger``)."""
    out: dict[str, Any] = dict(res.pages)
    v, src = res.verify, res.destination.get("source_ram_pages")
    if v is not None and src is not None:
        out["destination"] = {"current": int(src) - v.missing_pages - v.stale_pages,
                              "missing": v.missing_pages, "stale": v.stale_pages, "extra": v.extra_pages}
    return out


def write_csv(path: str | Path, reports: list[dict[str, Any]]) -> None:
    """One row per pass; with several runs (compare) a leading behaviour/policy column."""
    with atomic_file(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(("scenario", "behaviour", "policy") + ROUND_FIELDS)
        for rep in reports:
            for r in rep["rounds"]:
                w.writerow((rep["scenario"], rep["behaviour"], rep["policy"]["name"])
                           + tuple(r[k] for k in ROUND_FIELDS))
