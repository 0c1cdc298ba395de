"""A wall clock for pacing tests: time moves only when slept, and a sleep still yields
to the event loop (so the app and the engine get their turns)."""

from __future__ import annotations

import asyncio


class FakeClock:
    def __init__(self, start: float = 100.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s
        await asyncio.sleep(0)
