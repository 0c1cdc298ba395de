"""The app's panels draw what the run's one fold says: the pass table, the GFN map, the
balloon and the hypervisor; the summary printed at the end draws a report."""

from __future__ import annotations

import io

from rich.console import Console

from migrate.events import (BalloonMoved, BalloonReached, BalloonStalled, BalloonTarget, BatchSent,
                            CountersSampled)
from migrate.ui.gfnmap import BALLOONED, XTAB, GfnMap
from migrate.ui.model import RunView
from migrate.ui.panels import BalloonPanel, HypervisorPanel, render_gfnmap
from migrate.ui.progress import pass_table, render_summary

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


def viewed(behaviour="pre-fix", until=None) -> RunView:
    view = RunView()
    feed(view, make_events(behaviour), until=until)
    return view


def table_rows(view: RunView, **kw) -> list[list[str]]:
    s = view.state
    text = export(pass_table(s.rounds, live=s.live_round(), **kw))
    return [ln.split() for ln in text.splitlines()]


def test_pass_table_counts_the_balloon_in_the_pass_before_as_the_engine_does():
    view = viewed(until=ended(2))
    rows = table_rows(view)
    # the balloon moved between passes 1 and 2: it counts in pass 1, as RoundStats does
    assert ["1", "live", "65536", "65536", "61344", "4192", "240.13", "0.064", "4096/0"] in rows
    assert ["2", "live", "4296", "4296", "200", "4096", "0.81", "0.005", "0/0"] in rows


def test_hypervisor_and_balloon_panels_show_the_latest_sample_and_moves():
    view = viewed(until=lambda ev: isinstance(ev, CountersSampled) and ev.counters["marks_dirty"] > 100)
    hv = export(HypervisorPanel(view).render())
    assert "marks_dirty                    300" in hv        # 100 + 200 after pass 2
    assert "logdirty_nodes" in hv and "failed_allocs" in hv
    bal = export(BalloonPanel(view).render())
    assert "target    56992 pages" in bal
    assert "pages out 4096 (16.0 MiB)" in bal
    assert "decrease  4096 pages in 4 ops" in bal


def test_gfn_map_cells_show_the_pre_fix_pass_visiting_the_balloon():
    events = make_events("pre-fix")
    inflate = next(i for i, e in enumerate(events) if isinstance(e, BalloonMoved) and e.direction == "inflate")
    gm = GfnMap()
    feed(gm, events[:inflate + 1])
    assert (gm.cells()[BALLOON_CELLS] == BALLOONED).all()
    feed(gm, events[inflate + 1:], until=ended(2))
    text = export(render_gfnmap(gm, width=70))
    assert (gm.cells()[BALLOON_CELLS] == XTAB).all()
    assert map_rows(text)["08000"] == "X" * 64
    assert map_rows(text)["0f000"] == "·" * 64              # MMIO hole: pass 1 listed it, pass 2 did not
    assert "X xtab 4,096" in text


def test_fixed_map_keeps_the_balloon_ballooned():
    gm = GfnMap()
    feed(gm, make_events("fixed"), until=ended(2))
    assert map_rows(export(render_gfnmap(gm, width=70)))["08000"] == "░" * 64


def test_the_pass_in_flight_follows_its_batches():
    view = viewed(until=lambda ev: isinstance(ev, BatchSent) and ev.iteration == 2 and ev.walked >= 2048)
    cur = view.state.current
    assert (cur.iteration, cur.phase, cur.dirty_count) == (2, "live", 4296)
    assert (cur.walked, cur.entries, cur.pages, cur.xtab) == (2048, 4296, 200, 1848)
    assert ["2", "live", "4296", "2048", "200", "1848"] == table_rows(view)[-1][:6]   # the live row


def test_each_balloon_note_shows_in_the_balloon_panel():
    view = RunView()
    view(BalloonTarget(t=0.5, current_pages=16, target_pages=7, previous_pages=16, scheduled_at=0.5,
                       reason="schedule"))
    view(BalloonMoved(t=0.6, current_pages=12, target_pages=7, direction="inflate", pages=4, batches=1))
    view(BalloonStalled(t=0.7, current_pages=12, target_pages=7, op="decrease_reservation", requested=5,
                        done=0, rc=None, reason="no free memory"))
    text = export(BalloonPanel(view).render())
    assert "target    7 pages" in text
    assert "inflate 4 pages" in text and "stalled: no free memory" in text
    view(BalloonTarget(t=0.8, current_pages=12, target_pages=12, previous_pages=7, scheduled_at=0.8,
                       reason="schedule"))
    view(BalloonReached(t=0.9, current_pages=12, target_pages=12))
    text = export(BalloonPanel(view).render())
    assert "target    12 pages" in text and "status    stalled" not in text and "0.900s reached" in text


def test_before_any_event():
    view = RunView()
    assert "no address space yet" in export(render_gfnmap(view.gfnmap))
    assert view.state.current is None and "no sample yet" in export(HypervisorPanel(view).render())


def test_long_runs_keep_the_last_passes_in_the_table():
    view = viewed()
    assert any("… 2 earlier passes" in " ".join(r) for r in table_rows(view, max_rows=3))


def test_summary_of_a_report():
    view = viewed()
    s = view.state
    report = {"scenario": "balloon", "seed": 7, "behaviour": "pre-fix",
              "policy": {"name": "xen", "params": {"max_iterations": 5, "dirty_threshold": 50}},
              "outcome": "completed", "error": None, "rounds": [r.as_dict() for r in s.rounds],
              "totals": {"iterations": 3, "pages_sent": 61584, "xtab_sent": 8288, "bytes": 0},
              "hypervisor": dict(s.counters), "verify": s.verify.as_dict()}
    text = export(render_summary(report))
    assert "balloon  seed 7  behaviour pre-fix  policy xen (max_iterations=5, dirty_threshold=50)  completed" in text
    assert "totals: 3 live passes, 61584 data pages, 8288 XTAB" in text
    assert "verify: FAILED missing 3, stale 5, extra 4096" in text
    assert "2   live           4296     4296     200   4096" in text


def test_summary_of_a_failed_run_without_verify():
    text = export(render_summary({"scenario": "s", "outcome": "failed", "error": "Mapping of pfn 0x10 failed",
                                  "rounds": [], "totals": {}, "verify": None}))
    assert "error: Mapping of pfn 0x10 failed" in text and "verify: not run" in text
