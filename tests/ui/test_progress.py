"""Plain progress lines: Xen's wording, deterministic, never an escape code."""

from __future__ import annotations

import dataclasses
import io

import numpy as np

from migrate.events import BalloonMoved, BalloonStalled, BalloonTarget, MemoryOp, MigrationFinished, PhaseChanged
from migrate.ui.progress import PlainProgress, print_summary

from .test_gfnmap import make_events

EXPECTED_PRE_FIX = """\
xmig: scenario balloon, seed 7, behaviour pre-fix, policy xen (max_iterations=5, dirty_threshold=50)
xc: info: Saving domain 1, type x86 HVM
xc: info: p2m_size 0x10000 (65536 pages)
xc: progress: Frames iteration 1 of 5: 65536/65536 pages, 61344 data, 4192 XTAB, 240.13 MiB, 0.064 s
xmig: balloon: t=0.065 s target 56992 pages (223 MiB)
xmig: balloon: t=0.066 s decrease_reservation 4096 pages (4 ops)
xc: progress: Frames iteration 2 of 5: 4296/4296 pages, 200 data, 4096 XTAB, 0.81 MiB, 0.005 s
xc: progress: Frames iteration 3 of 5: 30/30 pages, 30 data, 0 XTAB, 0.12 MiB, 0.001 s
xc: progress: Domain now suspended (t=0.079 s)
xc: progress: Frames iteration 4 (final): 10/10 pages, 10 data, 0 XTAB, 0.04 MiB, 0.001 s
xc: progress: End of stream (t=0.082 s)
xmig: verify: FAILED, missing 3, stale 5, extra 4096
xmig: migration completed at t=0.082 s
"""


def run(events, **kw) -> str:
    out = io.StringIO()
    p = PlainProgress(out, **kw)
    for ev in events:
        p(ev)
    p.close()
    return out.getvalue()


def test_lines_follow_xens_saver():
    # the default only reports inside passes of 65536 PFNs or more: pass 1 is exactly that
    text = run(make_events("pre-fix"), step_min_entries=1 << 20)
    assert text == EXPECTED_PRE_FIX


def test_long_passes_report_at_most_every_quarter():
    lines = run(make_events("pre-fix")).splitlines()
    steps = [ln for ln in lines if ln.startswith("xc: progress: Frames iteration 1 of 5") and "%" in ln]
    assert steps == ["xc: progress: Frames iteration 1 of 5: 16384/65536 pages (25%)",
                     "xc: progress: Frames iteration 1 of 5: 32768/65536 pages (50%)",
                     "xc: progress: Frames iteration 1 of 5: 49152/65536 pages (75%)"]
    assert not any("Frames iteration 2" in ln and "%" in ln for ln in lines)


def test_same_events_same_text_and_no_escape_codes():
    a, b = run(make_events("fixed")), run(make_events("fixed"))
    assert a == b
    assert "\x1b" not in a
    assert "xmig: verify: OK, missing 0, stale 0, extra 4096" in a


def test_balloon_bursts_fold_into_one_line_before_the_next_line():
    g = np.arange(16, dtype=np.int64)
    events = [MemoryOp(t=1.0, op="decrease_reservation", nr=8, rc=8, gfns=g[:8]),
              MemoryOp(t=1.1, op="decrease_reservation", nr=8, rc=5, gfns=g[8:]),
              MemoryOp(t=1.2, op="populate_physmap", nr=4, rc=4, gfns=g[:4]),
              MemoryOp(t=1.2, op="add_to_physmap", nr=1, rc=0, gfns=g[:1]),
              BalloonStalled(t=1.3, current_pages=9, target_pages=12, op="populate_physmap", requested=4,
                             done=0, rc=0, reason="host out of memory"),
              BalloonTarget(t=1.4, current_pages=9, target_pages=1792, previous_pages=12, scheduled_at=1.4,
                            reason="schedule"),
              BalloonMoved(t=1.5, current_pages=6, target_pages=1792, direction="inflate", pages=3, batches=1)]
    assert run(events).splitlines() == [
        "xmig: balloon: t=1.000 s decrease_reservation 13/16 pages (2 ops), populate_physmap 4 pages (1 op)",
        "xmig: balloon: t=1.300 s stalled: host out of memory",
        "xmig: balloon: t=1.400 s target 1792 pages (7 MiB)",
    ]


def test_failed_save_says_why_and_that_the_source_resumed():
    events = [PhaseChanged(t=2.0, phase="aborted", detail="Mapping of pfn 0x8000 (type NOTAB) failed"),
              PhaseChanged(t=2.0, phase="resumed", detail="source domain resumed after the failed save"),
              MigrationFinished(t=2.0, outcome="failed", message="Mapping of pfn 0x8000 (type NOTAB) failed")]
    assert run(events).splitlines() == [
        "xc: error: Save failed: Mapping of pfn 0x8000 (type NOTAB) failed",
        "xc: info: source domain resumed after the failed save",
        "xmig: migration failed at t=2.000 s: Mapping of pfn 0x8000 (type NOTAB) failed",
    ]


def test_policy_without_an_iteration_cap_prints_plain_iterations():
    events = make_events("fixed")
    events[0] = dataclasses.replace(events[0], policy="mypolicy:decide", policy_params={})
    text = run(events)
    assert "xc: progress: Frames iteration 2: 200/200 pages" in text


def test_plain_summary_has_no_escape_codes():
    progress = PlainProgress(io.StringIO())
    for ev in make_events("pre-fix"):
        progress(ev)
    s = progress.run.state
    out = io.StringIO()
    print_summary({"scenario": s.scenario, "seed": s.seed, "behaviour": s.behaviour, "outcome": s.outcome,
                   "rounds": [r.as_dict() for r in s.rounds], "totals": {}, "verify": s.verify.as_dict()}, out)
    text = out.getvalue()
    assert "\x1b" not in text
    assert "verify: FAILED missing 3, stale 5, extra 4096" in text
    assert "1   live          65536    65536   61344   4192   240.13" in text
