"""The map as a person reads it: pooled glyphs in proportion to their GFNs' states,
holes apart from ballooned GFNs (a long one folded), zoom to one GFN a glyph, the
tracked GFNs marked, and the plot's destination row showing what arrived."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from migrate.events import EventBus, MemoryOp, PassEnded, PassStarted, RunStarted
from migrate.run.runner import RunOptions, run_scenario
from migrate.run.scenario import load_scenario
from migrate.ui.gfnmap import (BALLOONED, LEFTOVER, MISSING, NSTATES, SENT, UNPOPULATED, XTAB, GfnMap,
                               GfnMapRecorder)
from migrate.ui.pooling import share_states
from migrate.ui.mapview import holes, layout, parse_gfn, render_map
from migrate.ui.model import RunView

from .test_app import EX, recorded

#: balloon.yaml: the top 256 MiB of its 1 GiB go out at t=3 s and come back at t=9.25 s
REGION = (0x30060, 0x40060)


def text(renderable, width=120) -> str:
    con = Console(record=True, width=width, file=io.StringIO())
    con.print(renderable)
    return con.export_text()


def view_until(events, stop) -> RunView:
    view = RunView()
    for ev in events:
        view.feed(ev)
        if stop(ev):
            break
    return view


def glyph_states(gm: GfnMap, width: int, height: int) -> tuple[np.ndarray, int]:
    frame = layout(gm, width, height)
    return np.concatenate([r.states for r in frame.rows if r.states is not None]), frame.cell


# ----------------------------------------------------------------------------- in proportion


def test_a_pooled_glyph_shows_its_states_in_proportion_never_one_it_lacks():
    counts = np.zeros((200, NSTATES), dtype=np.int64)
    counts[:, BALLOONED] = 95
    counts[:, LEFTOVER] = 5
    counts[150:, :] = 0
    counts[150:, SENT] = 100
    s = share_states(counts)
    assert abs(np.count_nonzero(s == LEFTOVER) - 150 * 0.05) <= 1     # 7.5 glyphs' worth
    assert set(s[150:].tolist()) == {SENT}                 # a pure cell shows its one state
    assert set(s[:150].tolist()) <= {BALLOONED, LEFTOVER}  # never a state the cell lacks


@pytest.mark.parametrize("size", [(74, 10), (110, 20), (194, 45)])
def test_after_the_inflate_leftover_glyphs_match_3357_of_65536(size):
    events, result = recorded("balloon.yaml", "pre-fix")
    view = view_until(events, lambda ev: isinstance(ev, PassStarted) and ev.iteration == 2)
    gm = view.gfnmap
    assert gm.totals()["leftover"] == 3357
    states, cell = glyph_states(gm, *size)
    lo, hi = REGION[0] // cell, -(-REGION[1] // cell)
    region = states[lo:hi]
    share = np.count_nonzero(region == LEFTOVER) / region.size
    # about 5 % of the region's glyphs, as 3,357 of its 65,536 GFNs; not the whole region
    assert share == pytest.approx(3357 / 65536, abs=1.5 / region.size + 0.01)
    assert np.count_nonzero(states == LEFTOVER) == pytest.approx(3357 / cell, abs=1.5)


def test_at_the_end_of_pass_2_xtab_glyphs_are_the_passes_share_not_the_region():
    events, result = recorded("balloon.yaml", "pre-fix")
    view = view_until(events, lambda ev: isinstance(ev, PassEnded) and ev.stats.iteration == 2)
    states, cell = glyph_states(view.gfnmap, 74, 10)
    xtab = result.save.rounds[1].xtab_sent
    assert np.count_nonzero(states == XTAB) == pytest.approx(xtab / cell, abs=1.5)
    assert np.count_nonzero(states == BALLOONED) > 10 * np.count_nonzero(states == XTAB)


def test_the_plots_destination_row_shows_what_arrived():
    events, result = recorded("balloon.yaml", "pre-fix")
    rec = GfnMapRecorder()
    for ev in events:
        rec(ev)
    dest = rec.snapshots[-1]
    assert dest["phase"] == "destination"
    cells = dest["cells"]
    cell = rec.gfnmap.cell_pfns
    region = cells[REGION[0] // cell: REGION[1] // cell]
    arrived = np.count_nonzero(region == SENT) / region.size
    # 65,536 re-added, 42,576 missing: about 32 % of them arrived
    assert result.verify.missing_pages == 42576
    assert arrived == pytest.approx(1 - 42576 / 65536, abs=0.03)
    assert np.count_nonzero(cells == MISSING) * cell == pytest.approx(42576, rel=0.03)


# ----------------------------------------------------------------------------- holes


def _high_scenario(tmp_path: Path) -> Path:
    """balloon.yaml with four pages at the top (as libxc's special pages sit below
    0xFEFF4): p2m_size 0xFEFF4, a long hole from the end of RAM up to them."""
    src = (EX / "balloon.yaml").read_text()
    out = tmp_path / "high.yaml"
    out.write_text(src.replace("guest:\n  memory: 1GiB\n",
                               "guest:\n  memory: 1GiB\n  layout:\n"
                               "    kind: compact\n"
                               "    holes: [{start: 0xA0, end: 0x100}]\n"
                               "    high_pages: [0xFEFF0, 0xFEFF1, 0xFEFF2, 0xFEFF3]\n", 1))
    return out


def test_a_long_hole_is_folded_into_one_marked_row_and_drawn_apart_from_the_balloon(tmp_path):
    scen = load_scenario(_high_scenario(tmp_path))
    view = RunView()
    bus = EventBus()
    seen = []

    def keep(ev):
        view.feed(ev)
        if isinstance(ev, PassStarted) and ev.iteration == 2:
            seen.append(text(render_map(view.gfnmap, width=78, height=12)[0], width=78))

    bus.subscribe(keep)
    asyncio.run(run_scenario(scen, RunOptions(behaviour="pre-fix"), bus=bus))
    gm = view.gfnmap
    assert gm.p2m_size == 0xFEFF4
    h = holes(gm)
    assert [int(h[-1][0]), int(h[-1][1])] == [0x40060 - 4, 0xFEFF0] or int(h[-1][1]) == 0xFEFF0
    frame = layout(gm, 72, 9)
    assert len(frame.folded) == 1
    lo, hi = frame.folded[0]
    assert h[-1][0] <= lo < hi <= 0xFEFF0 and hi - lo > 0xB0000
    shown = seen[0]
    assert "folded" in shown and "hole" in shown and "ballooned" in shown
    # populated memory keeps the room: the folded hole takes one row, RAM the rest
    assert sum(1 for r in frame.rows if r.states is not None) >= 6
    # at pass 2 the balloon's GFNs are out: their glyph and the hole's are not the same
    assert "░ ballooned" in shown and "· hole" in shown
    assert any("░" in ln and "folded" not in ln for ln in shown.splitlines()[:-3])


def test_the_vga_hole_is_a_hole_not_a_ballooned_range():
    events, _ = recorded("balloon.yaml", "fixed")
    view = view_until(events, lambda ev: isinstance(ev, RunStarted))
    assert holes(view.gfnmap).tolist()[0] == [0xA0, 0xC0]    # libxc: the VGA hole only
    levels = layout(view.gfnmap, 72, 9).levels
    frame = layout(view.gfnmap, 72, 9, zoom=levels - 1, centre=0xC0)
    assert frame.cell == 1
    states = np.concatenate([r.states for r in frame.rows])
    first = frame.rows[0].lo
    assert (states[0xA0 - first:0xC0 - first] == UNPOPULATED).all()
    holes_total = int(sum(hi - lo for lo, hi in holes(view.gfnmap).tolist()))
    assert f"· hole {holes_total:,}" in text(render_map(view.gfnmap, width=78, height=12)[0], width=78)


# ----------------------------------------------------------------------------- zoom, jump, tracked


def test_zoom_goes_down_to_one_gfn_a_glyph_and_centres_the_jumped_gfn():
    events, _ = recorded("balloon.yaml", "pre-fix")
    view = view_until(events, lambda ev: isinstance(ev, PassStarted) and ev.iteration == 2)
    gm = view.gfnmap
    fit = layout(gm, 72, 10)
    assert fit.zoom == 0 and fit.cell > 1 and fit.levels >= 3
    cells = [layout(gm, 72, 10, zoom=z, centre=0x30060).cell for z in range(fit.levels)]
    assert cells == sorted(cells, reverse=True) and cells[-1] == 1
    z = layout(gm, 72, 10, zoom=fit.levels - 1, centre=0x30060, target=0x30060)
    rows = [r for r in z.rows if r.lo <= 0x30060 < r.lo + r.states.size]
    assert rows and 2 <= z.rows.index(rows[0]) <= 7              # near the middle
    assert rows[0].marks == {0x30060 - rows[0].lo: "reverse underline"}
    # at one GFN a glyph each glyph is that GFN's own state
    got = np.concatenate([r.states for r in z.rows])
    assert (got == gm.states(np.arange(z.rows[0].lo, z.rows[0].lo + got.size))).all()
    assert layout(gm, 72, 10, zoom=fit.levels).zoom == 0       # z past the last: back out


def test_tracked_gfns_are_marked_in_the_legend_and_on_their_glyph():
    events, _ = recorded("balloon.yaml", "pre-fix")
    view = view_until(events, lambda ev: isinstance(ev, PassStarted) and ev.iteration == 2)
    frame = layout(view.gfnmap, 72, 10, tracked=(0x30060, 0x100))
    marked = [(r.lo, m) for r in frame.rows for m in r.marks]
    assert len(marked) == 2
    for lo, m in marked:
        g0 = lo + m * frame.cell
        assert any(g0 <= g < g0 + frame.cell for g in (0x30060, 0x100))
    assert "▮ tracked" in text(render_map(view.gfnmap, width=78, height=14, tracked=(0x30060,))[0], 78)


@pytest.mark.parametrize("typed, want", [("0x30060", 0x30060), ("196704", 196704), (" 0X3_0060 ", 0x30060)])
def test_a_typed_gfn_parses(typed, want):
    assert parse_gfn(typed, 0x40060) == want


@pytest.mark.parametrize("typed, says", [("zz", "expected 0x30060"), ("0x40060", "outside the address space"),
                                         ("-1", "outside")])
def test_a_bad_gfn_says_what_was_expected(typed, says):
    with pytest.raises(ValueError, match=says):
        parse_gfn(typed, 0x40060)


def test_memory_ops_say_which_gfns_left_dirty():
    """The leftover glyphs come from the inflate's own event (pre-fix), before any pass."""
    events, _ = recorded("balloon.yaml", "pre-fix")
    ops = [e for e in events if isinstance(e, MemoryOp) and e.op == "decrease_reservation"]
    assert sum(int(np.asarray(e.leftover).size) for e in ops) == 3357


def test_a_zoom_with_no_gfn_jumped_to_looks_at_memory_not_at_the_layouts_gap():
    """With libxc's layout the middle of a 1 GiB guest's address space is the gap below
    the special pages: a zoom centres the middle of what is not a hole (or the tracked
    GFN), so ``z`` shows pages, not a screen of holes."""
    events, _ = recorded("balloon.yaml", "fixed")
    view = view_until(events, lambda ev: isinstance(ev, RunStarted))
    gm = view.gfnmap
    levels = layout(gm, 72, 9).levels
    for zoom in range(1, levels):
        frame = layout(gm, 72, 9, zoom=zoom)
        states = np.concatenate([r.states for r in frame.rows if r.states is not None])
        assert (states != UNPOPULATED).any(), zoom
    frame = layout(gm, 72, 9, zoom=levels - 1, tracked=(0x30060,))
    assert frame.rows[0].lo <= 0x30060 < frame.rows[-1].lo + frame.columns * frame.cell
