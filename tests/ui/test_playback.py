"""The playback the engine waits on: pause stops virtual time, holds slow it for every
run it paces, speed steps through a fixed ladder."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from migrate.ui.playback import TRANSITIONS, Pacer, PlayControl, PlayInput, Playback, PlayState
from tests.ui.fake_clock import FakeClock


class Clock:
    def __init__(self):
        self.now = 100.0
        self.slept = []

    def __call__(self):
        return self.now

    async def sleep(self, s):
        self.slept.append(round(s, 6))
        self.now += s


def test_a_hold_makes_both_runs_on_one_clock_wait_alike():
    async def go():
        c = Clock()
        pb = Playback(1.0, clock=c, sleep=c.sleep, hold_s=0.03)
        await pb.pace(1.0)                 # anchors: wall 100 = virtual 1.0
        pb.hold()
        await pb.pace(1.0)                 # run A at the same virtual time waits the hold
        await pb.pace(1.0)                 # run B at the same time: the hold is over
        c.now += 0.2
        await pb.pace(1.25)                # later steps stay 0.03 s behind the old anchor
        return c.slept, pb.held
    slept, held = asyncio.run(go())
    assert slept == [0.03, 0.05] and held == 0.03


def test_pause_stops_virtual_time_and_resume_does_not_rush():
    async def go():
        c = Clock()
        pb = Playback(1.0, clock=c, sleep=c.sleep)
        await pb.pace(0.0)
        pb.pause()
        task = asyncio.ensure_future(pb.pace(0.1))
        await asyncio.sleep(0)
        assert not task.done()             # the engine waits here
        c.now += 5.0                       # five wall seconds paused
        pb.resume()
        await task
        await pb.pace(0.2)
        return c.slept
    # 0.1 virtual s after the anchor, shifted by the 5 s pause: sleeps 0.1, not -4.9 (rush)
    assert asyncio.run(go()) == [0.1, 0.1]


def test_speed_ladder_up_to_max_and_back():
    pb = Playback(0.4)
    assert pb.faster() == 1.0 and pb.faster() == 2.0
    assert pb.slower() == 1.0 and pb.slower() == 0.4
    pb.set_speed(10.0)
    assert pb.faster() is None              # flat out
    assert pb.slower() == 10.0


def test_settle_ends_the_slow_motion_notice_at_once():
    c = Clock()
    pb = Playback(1.0, clock=c, sleep=c.sleep, hold_s=0.03)
    pb.hold()
    assert pb.slowing()
    pb.settle()                            # a batch of data pages: the XTAB walk is over
    assert not pb.slowing()


# ----------------------------------------------------------------------------- play / pause / step


def test_every_state_answers_every_input():
    assert set(TRANSITIONS) == {(s, i) for s in PlayState for i in PlayInput}


def test_step_runs_to_the_next_event_of_interest_then_pauses():
    c = PlayControl()
    assert c.send(PlayInput.MARK) == PlayState.PLAYING          # not guided: plays on
    assert c.send(PlayInput.TOGGLE) == PlayState.PAUSED
    assert c.send(PlayInput.STEP) == PlayState.STEPPING and not c.paused
    assert c.send(PlayInput.MARK) == PlayState.PAUSED and c.paused
    assert c.send(PlayInput.STEP) == PlayState.STEPPING
    assert c.send(PlayInput.TOGGLE) == PlayState.PAUSED          # space while stepping: stop there
    assert c.send(PlayInput.TOGGLE) == PlayState.PLAYING
    assert c.send(PlayInput.STOP) == PlayState.PAUSED            # guided, or a seek


# ----------------------------------------------------------------------------- pacing



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


# ----------------------------------------------------------------------------- batch by batch or in spans


def test_a_flat_out_playback_lets_the_save_run_in_spans_and_a_pace_pause_or_recording_does_not():
    from migrate.ui.playback import Pacer

    assert Pacer(None).per_batch()                 # asked for by a --record or a --track
    flat = Playback(None)
    assert not flat.per_batch()
    flat.pause()
    assert flat.per_batch()
    flat.resume()
    flat.set_speed(0.4)
    assert flat.per_batch()
    assert Playback(None, detail=True).per_batch()


def test_the_app_flat_out_gets_the_events_an_unpaced_run_gets_and_the_same_report():
    import asyncio
    import json
    from pathlib import Path

    from migrate.events import BatchSent, EventBus
    from migrate.run.report import build_report
    from migrate.run.runner import RunOptions, run_scenario
    from migrate.run.scenario import load_scenario
    from migrate.ui.playback import Pacer

    sc = load_scenario(Path(__file__).resolve().parents[2] / "examples" / "balloon.yaml")

    def run(pacer):
        bus, sizes = EventBus(), []
        bus.subscribe(lambda ev: sizes.append(len(ev.pfns)) if isinstance(ev, BatchSent) else None)
        res = asyncio.run(run_scenario(sc, RunOptions(), bus=bus, pacer=pacer))
        rep = build_report(res)
        rep.pop("wall", None)
        return json.dumps(rep, sort_keys=True, default=str), sizes

    unpaced, flat, batchwise = run(None), run(Playback(None)), run(Pacer(None))
    assert flat == unpaced
    assert max(batchwise[1]) <= 1024 < max(flat[1])
    assert batchwise[0] == flat[0]


def test_the_app_redraws_less_often_flat_out_than_at_a_pace_or_paused():
    from migrate.ui.app import FRAME_FLAT_OUT_S, FRAME_S, XmigApp
    from migrate.ui.model import RunView

    pb = Playback(None)
    app = XmigApp([RunView("")], [], mode="replay", playback=pb)
    assert app._frame_s() == FRAME_FLAT_OUT_S > FRAME_S
    pb.pause()
    assert app._frame_s() == FRAME_S
    pb.resume()
    pb.set_speed(0.4)
    assert app._frame_s() == FRAME_S
