"""Make the README's screenshots of the app: examples/balloon.yaml, pre-fix, following
GFN 0x30060 (--track), at the end of pass 2, at 80x24 and 160x50. Run from the
repository's root:

    python docs/make_screenshots.py

It plays the run headless (Textual's pilot) with --guided-like stepping: the engine
runs flat out and the app pauses itself when pass 2 ends, then saves an SVG."""

from __future__ import annotations

import asyncio
from pathlib import Path

from migrate.events import PassEnded
from migrate.run.runner import RunOptions
from migrate.run.scenario import load_scenario
from migrate.ui.app import XmigApp

ROOT = Path(__file__).resolve().parent.parent


async def shot(size: tuple[int, int], out: Path) -> None:
    app = XmigApp.for_run(load_scenario(ROOT / "examples" / "balloon.yaml"),
                          RunOptions(behaviour="pre-fix", track=(0x30060,)), speed=None)
    deliver = app.deliver

    def stop_after_pass_2(idx, ev):
        deliver(idx, ev)
        if isinstance(ev, PassEnded) and ev.stats.iteration == 2:
            app._pause(True)

    app.deliver = stop_after_pass_2
    async with app.run_test(size=size) as pilot:
        while not (app.paused and app.views[0].state.rounds and len(app.views[0].state.rounds) >= 2):
            await pilot.pause(0.05)
        await pilot.pause(0.3)
        app.save_screenshot(filename=out.name, path=str(out.parent))
        await pilot.press("q")
    print(f"wrote {out}")


def main() -> None:
    for size in ((80, 24), (160, 50)):
        asyncio.run(shot(size, ROOT / "docs" / f"app-{size[0]}x{size[1]}-prefix-pass2.svg"))


if __name__ == "__main__":
    main()
