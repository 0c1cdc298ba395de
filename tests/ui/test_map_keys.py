"""The map's keys where people press them (Textual's pilot): ``z`` zooms down to one
GFN a glyph and back out, ``j`` centres a typed GFN, a bad GFN is refused in place."""

from __future__ import annotations

import pytest

from migrate.ui.app import XmigApp
from migrate.ui.jump import JumpScreen

from .test_app import recorded
from .test_resize import screen_lines
from .test_snapshots import at_pass


@pytest.fixture
def prefix():
    return recorded("balloon.yaml", "pre-fix")


@pytest.mark.parametrize("size", [(80, 24), (200, 60)], ids=lambda s: f"{s[0]}x{s[1]}")
async def test_z_zooms_in_step_by_step_and_back_out(size, prefix):
    events, _ = prefix
    app = XmigApp.for_replay(events, speed=None)
    async with app.run_test(size=size) as pilot:
        await at_pass(3)(pilot)
        panel = app.screen.query_one("#map")
        levels, cells = panel.frame.levels, [panel.frame.cell]
        for _ in range(levels - 1):
            await pilot.press("z")
            await pilot.pause(0.2)
            cells.append(panel.frame.cell)
        assert cells == sorted(cells, reverse=True) and cells[-1] == 1
        assert "1 glyph = 1 GFN" in "\n".join(screen_lines(app))
        await pilot.press("z")
        await pilot.pause(0.2)
        assert panel.frame.zoom == 0 and panel.frame.cell == cells[0]


async def test_j_centres_the_typed_gfn_at_one_gfn_a_glyph(prefix):
    events, _ = prefix
    app = XmigApp.for_replay(events, speed=None)
    async with app.run_test(size=(80, 24)) as pilot:
        await at_pass(3)(pilot)
        await pilot.press("j")
        await pilot.pause(0.2)
        assert isinstance(app.screen, JumpScreen)
        await pilot.press("z", "z", "enter")             # not a GFN: said in place, stays open
        await pilot.pause(0.2)
        assert isinstance(app.screen, JumpScreen)
        assert "not a GFN" in "\n".join(screen_lines(app))
        for _ in range(2):
            await pilot.press("backspace")
        await pilot.press(*"0x30060", "enter")
        await pilot.pause(0.3)
        panel = app.screen.query_one("#map")
        assert panel.frame.cell == 1 and panel.centre == 0x30060
        row = next(r for r in panel.frame.rows if r.lo <= 0x30060 < r.lo + r.states.size)
        assert row.marks[0x30060 - row.lo] == "reverse underline"
        assert any(ln.lstrip("│").startswith("30060 ") or "30060" in ln[:8] for ln in screen_lines(app))


async def test_compare_zooms_both_maps(prefix):
    from migrate.run.runner import RunOptions
    from migrate.run.scenario import load_scenario

    from .test_app import EX

    app = XmigApp.for_compare(load_scenario(EX / "balloon.yaml"),
                              [RunOptions(behaviour="fixed"), RunOptions(behaviour="pre-fix")],
                              ["fixed", "pre-fix"], speed=None)
    async with app.run_test(size=(160, 50)) as pilot:
        maps = list(app.screen.query("MapPanel"))
        while not all(m.frame is not None for m in maps):
            await pilot.pause(0.1)
        await pilot.press("z")
        await pilot.pause(0.3)
        assert [m.zoom for m in maps] == [1, 1]
        await pilot.press("q")
