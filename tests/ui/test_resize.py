"""The app at any size, any time: resized mid-run in both directions, every number in
the pass table is the report's (exactly or honestly abbreviated), the pass table and
the map are laid out again for the new size, and the map's legend stays on screen."""

from __future__ import annotations

import pytest

from migrate.run.runner import RunOptions
from migrate.run.scenario import load_scenario
from migrate.ui.app import XmigApp
from migrate.ui.screens import WIDE

from .test_app import EX, recorded, until
from .test_passfit import check_row, table_cells
from .test_snapshots import at_pass


def screen_lines(app) -> list[str]:
    """What the terminal shows, line by line."""
    upd = app.screen._compositor.render_full_update()
    return ["".join(seg.text for seg in strip) for strip in upd.strips]


def pass_table_text(app) -> str:
    """The pass table panel's inside, as text."""
    lines = screen_lines(app)
    top = next(i for i, ln in enumerate(lines) if "╭─ passes" in ln)
    col = lines[top].index("╭─ passes")
    out = []
    for ln in lines[top + 1:]:
        inner = ln[col:]
        if inner.startswith("╰"):
            break
        out.append(inner[1:inner.index("│", 1)])
    return "\n".join(out)


def check_table(app, result) -> list[str]:
    """Each row shown against the report (finished passes) or the pass in flight."""
    want = {r.iteration: r.as_dict() for r in result.save.rounds}
    state = app.views[0].state
    live = state.live_round()
    if live is not None:
        want[live.iteration] = live.as_dict()
    head, rows = table_cells(pass_table_text(app))
    assert rows, "no pass rows on screen"
    for cells in rows:
        check_row(head, cells, want[int(cells[0])])
    return head


def columns_now(app) -> list[str]:
    """The column names the table takes at the width its panel has now."""
    from migrate.ui.passfit import fitted_cells, shown_rows

    state = app.views[0].state
    panel = app.screen.query_one("#table")
    rows, _ = shown_rows(state.rounds, live=state.live_round(), max_rows=panel.kept_rows())
    cols, _, compact = fitted_cells(rows, panel.content_size.width)
    return [(c.short if compact else c.wide).replace("time s", "time_s").replace("bal -/+", "bal") for c in cols]


def check_map(app) -> None:
    text = "\n".join(screen_lines(app))
    assert "1 glyph =" in text, "the map's scale is not shown"
    assert "█ sent" in text, "the map's legend was pushed off screen"


@pytest.fixture(autouse=True)
def no_holds_to_read(monkeypatch):
    """Sizes are the subject here, not the 3 s each event of interest holds a paced run
    (``playback.READ_S``, pinned in tests/ui/test_teaching.py): without the holds these
    paced runs take seconds, not a minute each."""
    from migrate.ui import playback

    monkeypatch.setattr(playback, "READ_S", 0.0)


@pytest.fixture
def prefix():
    return recorded("balloon.yaml", "pre-fix")


@pytest.mark.parametrize("a, b", [((120, 40), (80, 24)), ((80, 24), (160, 50)), ((80, 24), (200, 60))],
                         ids=lambda s: f"{s[0]}x{s[1]}")
async def test_replay_resized_mid_run_keeps_every_number_true(a, b, prefix):
    events, result = prefix
    app = XmigApp.for_replay(events, speed=4.0)
    async with app.run_test(size=a) as pilot:
        await at_pass(4)(pilot)
        head_a = check_table(app, result)
        assert head_a == columns_now(app)
        check_map(app)
        await pilot.resize_terminal(*b)
        await pilot.pause(0.3)
        head_b = check_table(app, result)
        check_map(app)
        assert head_b == columns_now(app)          # the columns follow the width they have now
        assert app.screen.query_one("#top").has_class("small") == (b[0] < WIDE or b[1] < 36)
        await pilot.press("space")               # run on, and back to the first size on the way
        await until(pilot, lambda: app.views[0].state.t > 9.5)
        await pilot.resize_terminal(*a)
        await until(pilot, lambda: app.done)
        check_table(app, result)
        check_map(app)


async def test_a_live_run_shrunk_from_120x40_to_80x24_never_cuts_a_number(prefix):
    """The case the issue saw: 262240 read ``26224`` after a shrink."""
    _, result = prefix
    app = XmigApp.for_run(load_scenario(EX / "balloon.yaml"), RunOptions(behaviour="pre-fix"), speed=8.0)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: len(app.views[0].state.rounds) >= 2)
        await pilot.resize_terminal(80, 24)
        await until(pilot, lambda: app.done, timeout=60)
        check_table(app, result)
        check_map(app)
        await pilot.resize_terminal(30, 24)        # narrower than the app is made for
        await pilot.pause(0.3)
        check_table(app, result)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
async def test_the_maps_scale_holds_while_captions_and_passes_come_and_go(size, prefix):
    """Captions of one, two and three lines and a pass table that fills up do not
    rescale the map: its height is kept for it from the start."""
    events, _ = prefix
    app = XmigApp.for_replay(events, speed=6.0)
    scales, captions = set(), set()
    async with app.run_test(size=size) as pilot:
        panel = app.screen.query_one("#map")
        await until(pilot, lambda: app.views[0].state.p2m_size and panel.frame is not None)
        while True:
            await pilot.pause(0.05)
            if app.views[0].gfnmap.finished:           # the destination's view may take its own
                break
            if panel.frame is not None:
                scales.add(panel.frame.cell)
            cap = app.views[0].caption
            if cap is not None:
                captions.add(len(cap.line()) // (size[0] - 2) + 1)
    assert len(captions) >= 2                  # captions did wrap to different heights
    assert len(scales) == 1, scales
