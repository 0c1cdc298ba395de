"""What the app draws, frame for frame, at the two sizes people use (80x24, 160x50), at
fixed moments of deterministic runs: a recorded run replayed and seeked, a compare,
a watch. Every number on screen is a virtual-time fact, so each frame is the same on
every machine; ``pytest --snapshot-update`` rewrites them after a deliberate change.
"""

from __future__ import annotations

import asyncio

import pytest

from migrate.run.runner import RunOptions
from migrate.run.scenario import load_scenario
from migrate.ui.app import XmigApp

from .test_app import EX, GFN, record, recorded

SIZES = [(80, 24), (160, 50)]

_TRACKED: dict = {}


def tracked_run():
    """balloon.yaml pre-fix with GFN 0x30060 followed (--track)."""
    if "events" not in _TRACKED:
        import copy
        import dataclasses

        from migrate.events import EventBus, PassEnded
        from migrate.run.runner import run_scenario

        events = []

        def keep(ev):
            if isinstance(ev, PassEnded):
                ev = dataclasses.replace(ev, stats=copy.copy(ev.stats))
            events.append(ev)

        bus = EventBus()
        bus.subscribe(keep)
        asyncio.run(run_scenario(load_scenario(EX / "balloon.yaml"),
                                 RunOptions(behaviour="pre-fix", track=(GFN,)), bus=bus))
        _TRACKED["events"] = events
    return _TRACKED["events"]


async def settle(pilot, cond, timeout: float = 60.0) -> None:
    waited = 0.0
    while not cond():
        await pilot.pause(0.05)
        waited += 0.05
        assert waited < timeout, "the app did not get there"
    await pilot.pause(0.3)


def at_pass(n: int):
    """Seek the replay to where pass ``n`` starts (the end of pass n-1), paused."""
    async def before(pilot):
        app = pilot.app
        await settle(pilot, lambda: app.views[0].events_seen > 0)
        await pilot.press(str(n))
        await settle(pilot, lambda: app.paused and getattr(app.views[0].state.current, "iteration", 0) == n)
    return before


def finished(pilot):
    app = pilot.app
    return settle(pilot, lambda: app.done)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_pre_fix_balloon_at_the_end_of_pass_2(size, snap_compare):
    """The moment the lesson is about: pass 2 has just sent the 3,357 leftover bits as
    XTAB entries."""
    events, _ = recorded("balloon.yaml", "pre-fix")
    assert snap_compare(XmigApp.for_replay(events, speed=None), terminal_size=size, run_before=at_pass(3))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_pre_fix_balloon_finished(size, snap_compare):
    events, _ = recorded("balloon.yaml", "pre-fix")
    assert snap_compare(XmigApp.for_replay(events, speed=None), terminal_size=size, run_before=finished)


def test_details_at_80x24_after_pass_2(snap_compare):
    events, _ = recorded("balloon.yaml", "pre-fix")
    assert snap_compare(XmigApp.for_replay(events, speed=None), terminal_size=(80, 24), run_before=at_pass(3),
                        press=["d"])


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_tracked_gfn_story_finished(size, snap_compare):
    app = XmigApp.for_replay(tracked_run(), speed=None)
    assert snap_compare(app, terminal_size=size, run_before=finished, press=["t"] if size[0] < 120 else [])


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_fixed_balloon_watched_to_the_end(size, snap_compare):
    events, _ = recorded("balloon.yaml", "fixed")

    async def watch(listener):
        for ev in events:
            listener(ev)
            await asyncio.sleep(0)
        return "completed"

    assert snap_compare(XmigApp.for_watch(watch), terminal_size=size, run_before=finished)


def test_compare_finished_at_160x50(snap_compare):
    scen = load_scenario(EX / "balloon.yaml")
    app = XmigApp.for_compare(scen, [RunOptions(behaviour=b) for b in ("fixed", "pre-fix")],
                              ["fixed", "pre-fix"], speed=None)
    assert snap_compare(app, terminal_size=(160, 50), run_before=finished)


__all__ = ["record"]
