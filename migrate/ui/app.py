"""The teaching app: one Textual screen per mode, fed only by the event stream.

One app serves four commands. Each gives it *producers* (coroutines that publish
events into the app's queue through an ``EventFeed``, a bus listener), one ``RunView``
per run and the screen of its mode (``migrate/ui/screens.py``):

- ``xmig run``: the engine (``runner.run_scenario``) runs as a task in the app's loop and
  waits on the ``Playback`` between batches, so pausing stops virtual time;
- ``xmig compare``: two engines, fixed and pre-fix, one seed, one ``Playback``: one
  virtual clock for both;
- ``xmig watch``: the events of a run on an MQTT broker (pausing holds the view; the
  run itself goes on in its own processes);
- ``xmig replay``: a recorded event list, paced by the ``Playback``, with seeking.

The app's pump takes each event from the queue, folds it into its run's ``RunView``
(the GFN map, the run's one fold, the narrator) and posts ``RunChanged`` to the
screen; a newer one replaces any still queued, so the screen redraws as fast as it can
and never more often than the run moves. Play, pause and step move through the
transition table in ``playback.py``.

Keys: space pause/resume, ``n`` next event of interest, ``+``/``-`` speed, ``d``
details (balloon and hypervisor panels when the terminal is small), ``t`` the tracked
GFN's story (``--track``; beside the map from 120x36, behind ``t`` below), ``[``/``]`` and
``1``-``9`` seek to a pass (replay), ``[``/``]`` step back and forth over the events of
interest so far (a live or watched run: ``history.py``), ``g`` guided on/off, ``z`` zoom
the map and ``j`` jump to a GFN (``mapview.py``), ``?`` help (the run pauses while it is
shown), ``q`` quit (a migration in flight is aborted cleanly: the source domain resumes).
At a pace, each event of interest holds the run ``playback.READ_S`` wall seconds, so it
can be read.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import numpy as np
from rich.text import Text
from textual.app import App
from textual.binding import Binding

from hypervisor.abi import PFINFO_HAS_DATA

from migrate.events import BatchSent, Event, EventBus
from migrate.ui.history import Stepping
from migrate.ui.slides import SlideKeys
from migrate.ui.model import RunView, pass_starts
from migrate.ui.playback import PlayControl, PlayInput, Playback
from migrate.ui.screens import (CompareScreen, HelpScreen, LiveRunScreen, ModeScreen, ReplayScreen, RunChanged,
                                WatchScreen)

MIN_SIZE = (80, 24)           # the smallest terminal the app is made for (docs/walkthrough.md)
#: Wall seconds the app holds each batch with XTAB entries after pass 1 (pre-fix's
#: leftover dirty bits: 3,357 in balloon.yaml's pass 2, only ~4 batches).
XTAB_LATE_HOLD_S = 0.4
#: The header says "slow motion" this long after the last hold (Playback.slowing).
SLOW_SHOWN_S = 0.5
#: At most one redraw per this many wall seconds.
FRAME_S = 1 / 10
#: ... and flat out (``--speed max``, not paused), where the picture moves faster than
#: anyone reads it: a frame costs 20-40 ms at 160x50, the run's own pace is the point.
FRAME_FLAT_OUT_S = 1 / 2
#: ... and watching a run on a broker: a class of watchers on one machine each pays for
#: every frame, and the run's own events come in batches a twentieth of a second apart.
FRAME_WATCH_S = 1 / 2


class EventFeed:
    """A bus listener that queues ``(run index, event)`` for the app: the engine never
    waits for the screen, the screen never blocks the engine."""

    def __init__(self, queue: asyncio.Queue, index: int = 0):
        self.queue = queue
        self.index = index

    def __call__(self, ev: Event) -> None:
        self.queue.put_nowait((self.index, ev))      # events are frozen: no copy needed


Producer = Callable[["XmigApp"], Awaitable[Any]]


@dataclass
class Replay:
    """A recorded run the app plays back: the events and where each pass starts."""

    events: list[Event]
    cursor: int = 0
    starts: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.starts = pass_starts(self.events)


class XmigApp(SlideKeys, App):
    """The app; build it with ``for_run``, ``for_compare``, ``for_watch`` or ``for_replay``."""

    TITLE = "xmig"
    ENABLE_COMMAND_PALETTE = False     # its footer entry would push "q quit" off 80 columns
    #: each mode's keys are its screen's (``screens.keys``); Ctrl-C quits as ``q`` does
    BINDINGS = [Binding("ctrl+c", "quit_run", "quit", show=False), Binding("s", "save_slide", "slide", show=False)]
    def __init__(self, views: list[RunView], producers: list[Producer], *, mode: str,
                 playback: Playback | None = None, guided: bool = False, replay: Replay | None = None):
        super().__init__()
        self.views = views
        self.producers = producers
        self.mode = mode
        self.playback = playback
        self.guided = guided
        self.replay = replay
        self.queue: asyncio.Queue = asyncio.Queue()
        self.control = PlayControl()
        self._view_resume = asyncio.Event()
        self.results: list[Any] = [None] * len(producers)
        self.done = False
        self.error: BaseException | None = None
        self.status_seq = 0                 # bumped whenever the header's status may read differently
        self._tasks: list[asyncio.Task] = []
        self._pump_task: asyncio.Task | None = None
        self._slow_timer = None
        self._post_timer = None
        self._last_post = float("-inf")
        self._quitting = False
        self.stepping = Stepping(self, enabled=mode in ("run", "watch"))
        self.main: ModeScreen = self._mode_screen()

    def _mode_screen(self) -> ModeScreen:
        if self.mode == "compare":
            return CompareScreen(self.views)
        return {"run": LiveRunScreen, "watch": WatchScreen, "replay": ReplayScreen}[self.mode](self.views[0])

    # ------------------------------------------------------------------ builders

    @classmethod
    def for_run(cls, scenario, opts, *, speed: float | None, guided: bool = False,
                run=None, listeners: tuple = (), detail: bool = False) -> "XmigApp":
        """``xmig run``: ``run(scenario, opts, bus=, pacer=)`` defaults to ``run_scenario``;
        ``listeners`` are subscribed to the run's bus too (e.g. the plot's recorder)."""
        from migrate.run.runner import run_scenario

        run = run or run_scenario
        pb = Playback(speed, detail=detail)

        async def produce(app: "XmigApp"):
            bus = EventBus()
            for fn in listeners:
                bus.subscribe(fn)
            bus.subscribe(EventFeed(app.queue, 0))
            return await run(scenario, opts, bus=bus, pacer=pb)

        return cls([RunView("")], [produce], mode="run", playback=pb, guided=guided)

    @classmethod
    def for_compare(cls, scenario, variants: list, labels: list[str], *, speed: float | None,
                    guided: bool = False, listeners: list | None = None) -> "XmigApp":
        from migrate.run.runner import run_scenario

        pb = Playback(speed)

        def producer(i, opts):
            async def produce(app: "XmigApp"):
                bus = EventBus()
                for fn in (listeners[i] if listeners else ()):
                    bus.subscribe(fn)
                bus.subscribe(EventFeed(app.queue, i))
                return await run_scenario(scenario, opts, bus=bus, pacer=pb)
            return produce

        return cls([RunView(label) for label in labels], [producer(i, o) for i, o in enumerate(variants)],
                   mode="compare", playback=pb, guided=guided)

    @classmethod
    def for_watch(cls, watch: Callable[[Callable[[Event], None]], Awaitable[Any]], *,
                  guided: bool = False) -> "XmigApp":
        """``watch(listener)`` subscribes ``listener`` to the run's events and returns the
        outcome (``cli_broker.watch_run`` with ``listener=``)."""
        async def produce(app: "XmigApp"):
            return await watch(EventFeed(app.queue, 0))

        return cls([RunView("")], [produce], mode="watch", guided=guided)

    @classmethod
    def for_replay(cls, events: list[Event], *, speed: float | None, guided: bool = False) -> "XmigApp":
        app = cls([RunView("")], [], mode="replay", playback=Playback(speed), guided=guided,
                  replay=Replay(list(events)))
        app.producers = [app._replay_producer]
        app.results = [None]
        return app

    async def _replay_producer(self, app: "XmigApp") -> str:
        rep = self.replay
        while rep.cursor < len(rep.events):
            ev = rep.events[rep.cursor]
            await self.playback.pace(float(ev.t))
            rep.cursor += 1
            self.queue.put_nowait((0, ev))
            await asyncio.sleep(0)
        return "replayed"

    # ------------------------------------------------------------------ the stream

    def get_default_screen(self) -> ModeScreen:
        return self.main

    def on_mount(self) -> None:
        self._pump_task = asyncio.create_task(self._pump())
        for i, p in enumerate(self.producers):
            self._tasks.append(asyncio.create_task(self._run_producer(i, p)))

    async def _run_producer(self, i: int, produce: Producer) -> None:
        try:
            self.results[i] = await produce(self)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:      # shown, then re-raised by the caller after exit
            self.error = exc
        finally:
            if all(t.done() or t is asyncio.current_task() for t in self._tasks):
                self.queue.put_nowait((-1, None))

    async def _pump(self) -> None:
        """The producer side of the screen: fold each event, post one coalescing
        ``RunChanged``. A paused view holds the events still queued."""
        while True:
            idx, ev = await self.queue.get()
            if idx < 0:
                self.done = True
                self.status_seq += 1
                if self._post_timer is not None:     # the last frame now, not a frame later
                    self._post_timer.stop()
                self._post_changed()
                continue
            while self.paused:
                self._view_resume.clear()
                await self._view_resume.wait()
            self.deliver(idx, ev)
            if self.playback is not None:
                await self.playback.reading()     # an event of interest's time on screen

    def deliver(self, idx: int, ev: Event) -> None:
        """Fold one event into its run's view; pause at interesting moments when asked."""
        cap = self.views[idx].feed(ev)
        status = self.mode == "replay"          # the header counts the replay's events
        if self.playback is not None and isinstance(ev, BatchSent) and ev.hole is None:
            nib = np.asarray(ev.nibbles, dtype=np.uint8) & 0xF
            if nib.size and not PFINFO_HAS_DATA[nib].all():
                # slow motion over the XTAB walk; after pass 1 these are pre-fix's wasted
                # queries, a few batches only: hold each long enough to be seen
                self.playback.hold(XTAB_LATE_HOLD_S if ev.iteration > 1 else None)
                self._slow_until_shown()
                status = True
            elif nib.size and self.playback.slowing():
                self.playback.settle()
                status = True
        self.stepping.fed(idx, ev, cap)
        if cap is not None and cap.interesting:
            self._send(PlayInput.STOP if self.guided else PlayInput.MARK)
            if self.playback is not None and not self.paused:
                self.playback.hold_to_read(cap.t, cap.text)
        self.changed(status=status)

    def _slow_until_shown(self) -> None:
        """One timer (not a poll) to take "slow motion" off the header once it is over."""
        if self._slow_timer is not None:
            self._slow_timer.stop()
        self._slow_timer = self.set_timer(SLOW_SHOWN_S + 0.05, lambda: self.changed(status=True))

    def changed(self, *, status: bool = False) -> None:
        """The runs (and, with ``status``, the header's status) moved: tell the screen,
        now or, within a frame of the last word, once at the frame's end (a run
        replayed flat out moves faster than a terminal can show)."""
        if status:
            self.status_seq += 1
        wait = self._last_post + self._frame_s() - time.monotonic()
        if wait <= 0:
            self._post_changed()
        elif self._post_timer is None:
            self._post_timer = self.set_timer(wait, self._post_changed)

    def _frame_s(self) -> float:
        pb = self.playback
        flat_out = pb is not None and pb.speed is None and not pb.paused
        if self.mode == "watch":
            return FRAME_WATCH_S
        return FRAME_FLAT_OUT_S if flat_out else FRAME_S

    def _post_changed(self) -> None:
        self._post_timer = None
        self._last_post = time.monotonic()
        self.main.post_message(RunChanged())

    # ------------------------------------------------------------------ play / pause / step

    def _send(self, inp: PlayInput) -> None:
        was = self.paused
        self.control.send(inp)
        if self.paused != was:
            # The view holds at once (events already queued wait), and the engine or the
            # replay stops at its next step; a watched run goes on in its own processes.
            if self.playback is not None and self.mode != "watch":
                (self.playback.pause if self.paused else self.playback.resume)()
            if not self.paused:
                self.stepping.live()
                self._view_resume.set()
            self.changed(status=True)

    @property
    def paused(self) -> bool:
        return self.control.paused

    def status_text(self, short: bool = False) -> Text:
        """The header's status; ``short`` drops the hints so it fits one line at 80
        columns (the help, ``?``, has them)."""
        t = self.stepping.status(short)
        if self.done:
            t.append(" finished: q quits ", style="bold black on green")
        elif self.paused:
            t.append(" PAUSED ", style="bold black on yellow")
            if not short:
                t.append(" space resumes, n steps  ", style="dim")
        pb = self.playback
        if pb is not None and pb.slowing():
            t.append(" slow motion: XTAB " if short else
                     f" slow motion: GFNs sent as XTAB (+{pb.hold_s * 1000:.0f} ms a batch) ",
                     style="bold black on cyan")
        if pb is not None and not (short and self.done):
            t.append(f" speed {'max' if pb.speed is None else f'{pb.speed:g}x'}", style="dim")
        if self.guided:
            t.append("  guided", style="bold cyan")
        if self.mode == "watch" and self.paused:
            t.append("  (the run goes on)" if short else "  (the run goes on; its events wait)", style="dim")
        if self.mode == "replay" and self.replay is not None:
            t.append(f"  {self.replay.cursor}/{len(self.replay.events)}" if short else
                     f"  replay {self.replay.cursor}/{len(self.replay.events)} events", style="dim")
        return t

    # ------------------------------------------------------------------ actions

    def action_toggle_pause(self) -> None:
        self._send(PlayInput.TOGGLE)

    def action_step(self) -> None:
        if self.playback is not None:
            self.playback.cut_read()
        self._send(PlayInput.STEP)

    def action_history(self, d: int) -> None:
        self.stepping.step(d)

    def action_faster(self) -> None:
        if self.playback is not None:
            self.playback.faster()
            self.changed(status=True)

    def action_slower(self) -> None:
        if self.playback is not None:
            self.playback.slower()
            self.changed(status=True)

    def action_guided(self) -> None:
        self.guided = not self.guided
        self.changed(status=True)

    def action_help(self) -> None:
        """The help; the run pauses while it is shown (and resumes if it was playing)."""
        was_playing = not self.paused
        if was_playing:
            self._send(PlayInput.TOGGLE)

        def closed(_: Any = None) -> None:
            if was_playing and self.paused:
                self._send(PlayInput.TOGGLE)
        self.push_screen(HelpScreen(), closed)

    async def action_seek(self, delta: int) -> None:
        if self.replay is None:
            return
        cur = self.views[0].state.current
        await self.action_seek_to(max((cur.iteration if cur is not None else 0) + delta, 1))

    async def action_seek_to(self, iteration: int) -> None:
        """Replay: show the run as it stood when pass ``iteration`` started, paused."""
        rep = self.replay
        if rep is None or iteration not in rep.starts:
            return
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        while not self.queue.empty():
            self.queue.get_nowait()
        self.done = False
        view = RunView("")
        stop = rep.starts[iteration]
        for ev in rep.events[: stop + 1]:
            view.feed(ev)
        rep.cursor = stop + 1
        self.views[0] = view
        self.main.set_view(view)
        self._send(PlayInput.STOP)
        self.playback.reset()
        self.changed(status=True)
        self._tasks.append(asyncio.create_task(self._run_producer(0, self._replay_producer)))

    async def action_quit_run(self) -> None:
        """Quit: a migration still running is cancelled (the engine aborts and the source
        domain resumes, as a failed Xen migration does) and its report still written."""
        if self._quitting:
            return
        self._quitting = True
        if self.playback is not None:
            self.playback.resume()
        if self.paused:
            self.control.send(PlayInput.TOGGLE)
        self._view_resume.set()
        for t in self._tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pump_task is not None:
            self._pump_task.cancel()
        self.exit(self.results)

    # ------------------------------------------------------------------ for tests

    def screen_text(self) -> str:
        """Every panel's text, top to bottom (what the person reads)."""
        return self.main.text()

    def compare_text(self) -> str:
        return self.main.compare_text()

    @property
    def compare(self):
        return self.main.compare


def run_app(app: XmigApp) -> list[Any]:
    """Run ``app`` in the terminal until the person quits; return the producers' results
    (``RunResult``s for run and compare, the outcome for watch). An error in a producer
    is raised here, after the screen is restored."""
    app.run()
    if app.error is not None:
        raise app.error
    return app.results


__all__ = ["EventFeed", "HelpScreen", "MIN_SIZE", "Replay", "XmigApp", "run_app"]
