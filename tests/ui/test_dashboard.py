"""The dashboard renders what the events say, and --speed paces virtual time."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console

from migrate.ui.dashboard import Dashboard, LiveDashboard, render_summary
from migrate.ui.playback import Pacer
from migrate.events import (BalloonMoved, BalloonReached, BalloonStalled, BalloonTarget, BatchSent,
                            EventBus)
from migrate.ui.gfnmap import BALLOONED, XTAB, GfnMap

from .test_gfnmap import BALLOON_CELLS, ended, feed, make_events


def export(renderable) -> str:
    con = Console(record=True, width=120, file=io.StringIO())
    con.print(renderable)
    return con.export_text()


def map_rows(text: str) -> dict[str, str]:
    """GFN map rows by their hex label: '08000' -> the 64 glyphs."""
    rows = {}
    for line in text.splitlines():
        parts = line.strip("│ ").split(" ")
        if len(parts) >= 2 and len(parts[0]) == 5 and len(parts[1]) == 64:
            rows[parts[0]] = parts[1]
    return rows


def test_render_shows_header_pass_table_and_counters():
    dash = Dashboard(speed=10)
    feed(dash, make_events("pre-fix"), until=ended(2))
    text = export(dash.render())
    assert "behaviour pre-fix" in text
    assert "policy xen (max_iterations=5, dirty_threshold=50)" in text
    assert "p2m_size 0x10000 (65536 pages, 256.0 MiB)" in text
    assert "speed 10x" in text
    lines = [ln.split("│")[0].split() for ln in text.splitlines()]
    # the balloon moved between passes 1 and 2: it counts in pass 1, as RoundStats does
    assert ["1", "live", "65536", "65536", "61344", "4192", "240.13", "0.064", "4096/0"] in lines
    assert ["2", "live", "4296", "4296", "200", "4096", "0.81", "0.005", "0/0"] in lines
    assert "marks_dirty" in text and "300" in text           # 100 + 200 after pass 2
    assert "logdirty_nodes" in text and "failed_allocs" in text
    assert "target    56992 pages" in text
    assert "pages out 4096 (16.0 MiB)" in text
    assert "decrease  4096 pages in 4 ops" in text


def test_gfn_map_cells_show_the_pre_fix_pass_visiting_the_balloon():
    dash = Dashboard()
    events = make_events("pre-fix")
    feed(dash, events, until=lambda ev: isinstance(ev, BalloonMoved) and ev.direction == "inflate")
    assert (dash.gfnmap.cells()[BALLOON_CELLS] == BALLOONED).all()
    assert map_rows(export(dash.render()))["08000"] == "░" * 64
    feed(dash, events[events.index(next(e for e in events if isinstance(e, BalloonMoved)
                                         and e.direction == "inflate")) + 1:], until=ended(2))
    assert (dash.gfnmap.cells()[BALLOON_CELLS] == XTAB).all()
    text = export(dash.render())
    assert map_rows(text)["08000"] == "X" * 64
    assert map_rows(text)["0f000"] == "·" * 64              # MMIO hole: pass 1 listed it, pass 2 did not
    assert "X xtab 4,096" in text


def test_fixed_map_keeps_the_balloon_ballooned():
    dash = Dashboard()
    feed(dash, make_events("fixed"), until=ended(2))
    assert map_rows(export(dash.render()))["08000"] == "░" * 64


def test_progress_bar_follows_the_batches_of_the_pass_in_flight():
    dash = Dashboard()
    feed(dash, make_events("pre-fix"),
         until=lambda ev: isinstance(ev, BatchSent) and ev.iteration == 2 and ev.walked >= 2048)
    text = export(dash.render())
    assert "pass 2 (live)  dirty_count 4296  2048/4296 PFNs  data 200  XTAB 1848" in text


def test_each_balloon_note_shows_in_the_balloon_panel():
    dash = Dashboard()
    dash(BalloonTarget(t=0.5, current_pages=16, target_pages=7, previous_pages=16, scheduled_at=0.5,
                       reason="schedule"))
    dash(BalloonMoved(t=0.6, current_pages=12, target_pages=7, direction="inflate", pages=4, batches=1))
    dash(BalloonStalled(t=0.7, current_pages=12, target_pages=7, op="decrease_reservation", requested=5,
                        done=0, rc=None, reason="no free memory"))
    text = export(dash.render())
    assert "target    7 pages" in text
    assert "inflate 4 pages" in text and "stalled: no free memory" in text
    dash(BalloonTarget(t=0.8, current_pages=12, target_pages=12, previous_pages=7, scheduled_at=0.8,
                       reason="schedule"))
    dash(BalloonReached(t=0.9, current_pages=12, target_pages=12))
    text = export(dash.render())
    assert "target    12 pages" in text and "status    stalled" not in text and "0.900s reached" in text


def test_renders_before_any_event():
    text = export(Dashboard().render())
    assert "waiting for the first pass" in text and "no address space yet" in text


def test_summary_looks_the_same_live_and_from_the_report():
    dash = Dashboard()
    feed(dash, make_events("pre-fix"))
    live = dash.summary()
    report = {  # what migrate/run/report.py writes, with the engine's own totals
        "schema_version": 1, "scenario": "balloon", "seed": 7, "behaviour": "pre-fix",
        "policy": {"name": "xen", "params": {"max_iterations": 5, "dirty_threshold": 50}},
        "outcome": "completed", "error": None, "p2m_size": 0x10000,
        "rounds": [dict(r, batches=1) for r in live["rounds"]],
        "totals": dict(live["totals"]), "hypervisor": dict(live["hypervisor"]),
        "verify": dict(live["verify"]), "wall": {"seconds": 1.5},
    }
    a, b = export(render_summary(live)), export(render_summary(report))
    assert a == b
    assert "totals: 3 live passes, 61584 data pages, 8288 XTAB" in a
    assert "verify: FAILED missing 3, stale 5, extra 4096" in a
    assert "2   live           4296     4296     200   4096" in a


def test_summary_of_a_failed_run_without_verify():
    text = export(render_summary({"scenario": "s", "outcome": "failed", "error": "Mapping of pfn 0x10 failed",
                                  "rounds": [], "totals": {}, "verify": None}))
    assert "error: Mapping of pfn 0x10 failed" in text and "verify: not run" in text


def test_long_runs_keep_the_last_passes_in_the_table():
    dash = Dashboard(max_pass_rows=3)
    feed(dash, make_events("pre-fix"))
    text = export(dash.render())
    assert "… 2 earlier passes" in text


def test_live_dashboard_on_a_pipe_writes_one_plain_frame():
    out = io.StringIO()
    con = Console(file=out, width=120, force_terminal=False)
    bus = EventBus()
    dash = Dashboard(console=con)
    bus.subscribe(dash)
    with LiveDashboard(dash, refresh_per_second=20):
        for ev in make_events("fixed"):
            bus.publish(ev)
    text = out.getvalue()
    assert "\x1b[" not in text
    assert "COMPLETED" in text


def test_dashboard_can_share_a_map():
    gm = GfnMap()
    dash = Dashboard(gfnmap=gm)
    events = make_events()
    for ev in events:
        gm(ev)
        dash(ev)
    assert dash.gfnmap is gm and gm.iteration == 4


# ----------------------------------------------------------------------------- pacing


class FakeClock:
    def __init__(self):
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


async def test_pacer_none_never_sleeps():
    clock = FakeClock()
    p = Pacer(None, clock=clock, sleep=clock.sleep)
    for t in np.linspace(0, 1000, 50):
        await p.pace(float(t))
    assert clock.sleeps == []


async def test_pacer_holds_virtual_time_to_speed_times_wall_time():
    clock = FakeClock()
    p = Pacer(10.0, clock=clock, sleep=clock.sleep)
    await p.pace(5.0)                 # anchor
    await p.pace(6.0)                 # one virtual second at 10x: 0.1 s wall
    assert clock.sleeps == [pytest.approx(0.1)]
    clock.now += 0.05                 # the work itself took half the budget
    await p.pace(7.0)
    assert clock.sleeps[-1] == pytest.approx(0.05)
    assert clock.now == pytest.approx(100.2)


async def test_pacer_does_not_drift_over_many_tiny_steps():
    clock = FakeClock()
    p = Pacer(2.0, clock=clock, sleep=clock.sleep, min_sleep=0.002)
    for k in range(10001):            # steps of 1 ms virtual, 0.5 ms wall each: below min_sleep
        clock.now += 0.0001           # the caller's own work
        await p.pace(k * 0.001)
    # ten virtual seconds at 2x take five wall seconds, give or take one skipped sleep
    assert clock.now - 100.0 == pytest.approx(5.0, abs=0.003)
    assert len(clock.sleeps) < 10001 // 2


async def test_pacer_re_anchors_after_falling_far_behind():
    clock = FakeClock()
    p = Pacer(1.0, clock=clock, sleep=clock.sleep, max_lag=0.5)
    await p.pace(0.0)
    clock.now += 10.0                 # a very long stall
    await p.pace(1.0)                 # behind by 9 s: no sleep, new anchor
    await p.pace(2.0)                 # ... so the next second is paced again, not rushed
    assert clock.sleeps == [pytest.approx(1.0)]


def test_pacer_refuses_non_positive_speed():
    with pytest.raises(ValueError, match="positive"):
        Pacer(0)


def test_header_gives_the_destination_verdict():
    from rich.console import Console

    from migrate.ui.dashboard import Dashboard
    from migrate.events import MigrationFinished, VerifyDone, VerifyStats

    for ok, needle in ((True, "destination VERIFIED"), (False, "destination DIVERGED: 44,946 missing, 3 stale")):
        console = Console(record=True, width=140)
        dash = Dashboard(console)
        dash(VerifyDone(t=1.0, stats=VerifyStats(ok=ok, missing_pages=0 if ok else 44946,
                                                 stale_pages=0 if ok else 3, extra_pages=0)))
        dash(MigrationFinished(t=1.0, outcome="completed"))
        console.print(dash.render())
        assert needle in console.export_text()
