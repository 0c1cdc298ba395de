"""The key ``s`` saves the screen as an SVG slide, in ``./xmig-slides/``, and says
where; pressed again it never overwrites the first one."""

from __future__ import annotations

import pytest

from migrate.events.log import read_event_log
from migrate.ui.app import XmigApp
from migrate.ui.slides import SLIDES_DIR


@pytest.mark.parametrize("size", [(80, 24), (200, 60)])
async def test_s_saves_the_screen_as_svg_and_names_the_file(size, recorded_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    events = read_event_log(recorded_run.events).events
    app = XmigApp.for_replay(events, speed=None)
    async with app.run_test(size=size) as pilot:
        while not app.done:
            await pilot.pause(0.05)
        await pilot.press("s")
        await pilot.press("s")
        await pilot.pause()
        saved = sorted((tmp_path / SLIDES_DIR).iterdir())
        notes = [str(n.message) for n in app._notifications]
        await pilot.press("q")
    w, h = size
    assert [p.name for p in saved] == [f"xmig-replay-pass6-t10.85s-{w}x{h}-2.svg",
                                       f"xmig-replay-pass6-t10.85s-{w}x{h}.svg"]
    assert saved[1].read_text().startswith("<svg") and "GFN" in saved[1].read_text()
    assert notes == [f"saved {saved[1]}", f"saved {saved[0]}"]
