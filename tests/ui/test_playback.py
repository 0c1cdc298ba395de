"""The playback the engine waits on: pause stops virtual time, holds slow it for every
run it paces, speed steps through a fixed ladder."""

from __future__ import annotations

import asyncio

from migrate.ui.playback import Playback


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
