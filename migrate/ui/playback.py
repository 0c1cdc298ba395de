"""The pacer the engine (or a replay) awaits between batches, with the app's controls.

Virtual time is the engine's own (``migrate/toolstack/save.py`` stamps every call); this only
decides how fast it runs against the wall clock: ``Pacer`` (``--speed``) keeps
``speed`` virtual seconds per wall second, and ``Playback`` adds what a person needs:
pause (virtual time stops because the engine waits here), a new speed, and
*holds*: the app asks the virtual clock to stand still a little longer around a moment
too short to see (the ~10 ms XTAB walk of a ballooned region), and for ``READ_S`` wall
seconds at each event of interest, so its caption can be read (``hold_to_read``; the
app's view waits as long, ``reading``). A hold or a pause moves the pace's anchor, so
every run paced by the same playback (compare's two) waits alike and nothing rushes by
afterwards to catch up. Flat out (``--speed max``) nothing is held; a run without the app
(``--no-dashboard``) has a bare ``Pacer`` and never holds. The screen says when it slows down.
"""

from __future__ import annotations

import asyncio
import time
from enum import StrEnum
from typing import Any, Callable


class Pacer:
    """Let virtual time advance at most ``speed`` x wall time (``None``: flat out).

    The pace is measured from an anchor (the first call), so skipped tiny sleeps and
    sleep overshoot never accumulate drift. If the run falls behind by more than
    ``max_lag`` wall seconds (a long CLEAN, a slow terminal) the anchor moves up rather
    than letting the next virtual seconds rush by to catch up. ``clock`` and ``sleep``
    are injectable for tests.
    """

    def __init__(self, speed: float | None, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Any] = asyncio.sleep, min_sleep: float = 0.002,
                 max_lag: float = 0.5):
        if speed is not None and not speed > 0:
            raise ValueError(f"--speed must be a positive number or 'max', not {speed!r}")
        self.speed = None if speed is None else float(speed)
        self._clock = clock
        self._sleep = sleep
        self.min_sleep = float(min_sleep)
        self.max_lag = float(max_lag)
        self._wall0: float | None = None
        self._virt0 = 0.0
        self.slept = 0.0          # total requested sleep, for tests and the header

    def reset(self) -> None:
        self._wall0 = None

    def per_batch(self) -> bool:
        """A bare pacer is asked for by whoever wants the save batch by batch (a
        ``--record``, a ``--track``, a pace to keep): always."""
        return True

    async def pace(self, virtual_t: float) -> None:
        if self.speed is None:
            return
        now = self._clock()
        if self._wall0 is None:
            self._wall0, self._virt0 = now, float(virtual_t)
            return
        delay = self._wall0 + (float(virtual_t) - self._virt0) / self.speed - now
        if delay >= self.min_sleep:
            self.slept += delay
            await self._sleep(delay)
        elif delay < -self.max_lag:
            self._wall0, self._virt0 = now, float(virtual_t)


SPEEDS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 1.0, 2.0, 5.0, 10.0, None)   # None: flat out


def default_tty_speed() -> float:
    """Virtual seconds per wall second when a person watches: examples/balloon.yaml
    (~9.6 s of virtual time from the start of the save) then lasts ~25 s, ~30 s with the
    slow-motion holds, plus ``READ_S`` for each of its ~12 events of interest."""
    return 0.4


#: Wall seconds each event of interest stays on screen at a pace (not flat out): long
#: enough to read a two-line caption (issue 23: 0.47 s was too short).
READ_S = 3.0


class Playback(Pacer):
    """``Pacer`` with pause / resume, speed steps and slow-motion holds."""

    def __init__(self, speed: float | None, *, hold_s: float = 0.03, detail: bool = False,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], Any] = asyncio.sleep):
        super().__init__(speed, clock=clock, sleep=sleep)
        #: a listener wants the save batch by batch even flat out (``--record``, ``--track``)
        self.detail = bool(detail)
        self.hold_s = float(hold_s)
        self.paused = False
        self._resume: asyncio.Event | None = None
        self._paused_at = 0.0
        self.held = 0.0             # wall seconds spent in holds (shown on screen)
        self.last_hold_wall = -1.0  # clock() of the last hold
        self.read_s = READ_S
        #: every hold to read asked for: (virtual t, what was shown, wall seconds)
        self.reads: list[tuple[float, str, float]] = []
        self._read_until = float("-inf")
        self._read_cut: asyncio.Event | None = None

    # ------------------------------------------------------------------ controls

    def pause(self) -> None:
        if not self.paused:
            self.cut_read()             # the pause holds the screen from here, as long as it lasts
            self._paused_at = self._clock()
        self.paused = True

    def resume(self) -> None:
        if self.paused and self._wall0 is not None:
            # the pause is not lag: the whole virtual clock moves on by its length
            self._wall0 += self._clock() - self._paused_at
        self.paused = False
        if self._resume is not None:
            self._resume.set()

    def toggle(self) -> bool:
        (self.resume if self.paused else self.pause)()
        return self.paused

    def set_speed(self, speed: float | None) -> None:
        self.speed = None if speed is None else float(speed)
        if self.speed is None:
            self.cut_read()
        self.reset()

    def faster(self) -> float | None:
        return self._step(+1)

    def slower(self) -> float | None:
        return self._step(-1)

    def _step(self, d: int) -> float | None:
        cur = self.speed
        order = [s for s in SPEEDS if s is not None]
        if cur is None:
            idx = len(order) if d > 0 else len(order) - 1
        else:
            idx = min(range(len(order)), key=lambda i: abs(order[i] - cur))
            idx += d
        if idx >= len(order):
            self.set_speed(None)
        else:
            self.set_speed(order[max(idx, 0)])
        return self.speed

    def per_batch(self) -> bool:
        """Flat out (``--speed max``) with nothing recorded, the save runs in spans as
        an unpaced run does (the screen redraws at its own rate anyway); a pace, a pause
        or a recording makes it batch by batch again from the next span."""
        return self.detail or self.speed is not None or self.paused

    def hold(self, seconds: float | None = None) -> None:
        """Slow motion: the virtual clock stands still for ``seconds`` more wall time,
        for every run paced by this playback (compare's two engines stay in step)."""
        if self.speed is None:
            return
        h = self.hold_s if seconds is None else float(seconds)
        if self._wall0 is not None:
            self._wall0 += h
        self.held += h
        self.last_hold_wall = self._clock()

    def slowing(self, within: float = 0.5) -> bool:
        return self.last_hold_wall >= 0 and self._clock() - self.last_hold_wall < within

    def settle(self) -> None:
        """The moment that was slowed is over (the saver is sending data again): the
        screen stops saying ``slow motion`` at once."""
        self.last_hold_wall = -1.0

    # ------------------------------------------------------------------ time to read

    def hold_to_read(self, t: float = 0.0, what: str = "") -> float:
        """An event of interest is on screen (its caption, the map as it stands): the
        virtual clock stands still ``read_s`` wall seconds, as a slow-motion hold does,
        and ``reading`` keeps the view on it as long. Flat out: nothing. Returns the hold."""
        if self.speed is None or self.read_s <= 0:
            return 0.0
        self._read_until = self._clock() + self.read_s
        if self._wall0 is not None:
            self._wall0 += self.read_s
        self.reads.append((float(t), what, self.read_s))
        return self.read_s

    async def reading(self) -> None:
        """Wait until the event of interest shown last has had its time on screen (or
        the person moved on: ``cut_read``)."""
        left = self._read_until - self._clock()
        if left <= 0:
            return
        cut = self._read_cut = asyncio.Event()
        waits = [asyncio.ensure_future(self._sleep(left)), asyncio.ensure_future(cut.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def cut_read(self) -> None:
        """The person moved on (``n``, a seek, flat out): the rest of the hold to read is
        given back to the run at once."""
        left = self._read_until - self._clock()
        if left > 0 and self._wall0 is not None:
            self._wall0 -= left
        self._read_until = float("-inf")
        if self._read_cut is not None:
            self._read_cut.set()

    # ------------------------------------------------------------------ the engine side

    async def pace(self, virtual_t: float) -> None:
        while self.paused:
            if self._resume is None:
                self._resume = asyncio.Event()
            self._resume.clear()
            await self._resume.wait()
        await super().pace(virtual_t)


# ----------------------------------------------------------------------------- play / pause / step


class PlayState(StrEnum):
    PLAYING = "playing"
    PAUSED = "paused"
    STEPPING = "stepping"       # playing until the next event of interest, then paused


class PlayInput(StrEnum):
    TOGGLE = "toggle"           # space
    STEP = "step"               # n
    MARK = "mark"               # an event of interest was shown
    STOP = "stop"               # an event of interest was shown in guided mode; a seek


#: (state, input) -> next state: every way the person and the run move the playback.
TRANSITIONS: dict[tuple[PlayState, PlayInput], PlayState] = {
    (PlayState.PLAYING, PlayInput.TOGGLE): PlayState.PAUSED,
    (PlayState.PAUSED, PlayInput.TOGGLE): PlayState.PLAYING,
    (PlayState.STEPPING, PlayInput.TOGGLE): PlayState.PAUSED,
    (PlayState.PLAYING, PlayInput.STEP): PlayState.STEPPING,
    (PlayState.PAUSED, PlayInput.STEP): PlayState.STEPPING,
    (PlayState.STEPPING, PlayInput.STEP): PlayState.STEPPING,
    (PlayState.PLAYING, PlayInput.MARK): PlayState.PLAYING,
    (PlayState.PAUSED, PlayInput.MARK): PlayState.PAUSED,
    (PlayState.STEPPING, PlayInput.MARK): PlayState.PAUSED,
    (PlayState.PLAYING, PlayInput.STOP): PlayState.PAUSED,
    (PlayState.PAUSED, PlayInput.STOP): PlayState.PAUSED,
    (PlayState.STEPPING, PlayInput.STOP): PlayState.PAUSED,
}


class PlayControl:
    """Where the playback stands, moved only through ``TRANSITIONS``."""

    def __init__(self) -> None:
        self.state = PlayState.PLAYING

    def send(self, inp: PlayInput) -> PlayState:
        self.state = TRANSITIONS[self.state, inp]
        return self.state

    @property
    def paused(self) -> bool:
        return self.state == PlayState.PAUSED


__all__ = ["Pacer", "PlayControl", "PlayInput", "PlayState", "Playback", "READ_S", "SPEEDS", "TRANSITIONS",
           "default_tty_speed"]
