"""The teaching app: a Textual screen of panels fed only by the event stream.

One app serves four commands. Each gives it *producers* (coroutines that publish
events into the app's queue through an ``EventFeed``, a bus listener) and one
``RunView`` per run:

- ``xmig run``: the engine (``runner.run_scenario``) runs as a task in the app's loop and
  waits on the ``Playback`` between batches, so pausing stops virtual time;
- ``xmig compare``: two engines, fixed and pre-fix, one seed, one ``Playback``: one
  virtual clock for both;
- ``xmig watch``: the events of a run on an MQTT broker (pausing holds the view; the
  run itself goes on in its own processes);
- ``xmig replay``: a recorded event list, paced by the ``Playback``, with seeking.

Keys: space pause/resume, ``n`` next event of interest, ``+``/``-`` speed, ``d``
details (balloon and hypervisor panels when the terminal is small), ``t`` the tracked
GFN's story (``--track``; beside the map from 120x36, behind ``t`` below), ``[``/``]`` and
``1``-``9`` seek to a pass (replay), ``g`` guided on/off, ``?`` help, ``q`` quit (a
migration in flight is aborted cleanly: the source domain resumes).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import numpy as np
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from hypervisor.abi import PFINFO_HAS_DATA

from migrate.events import BatchSent, Event, EventBus, PassEnded
from migrate.ui.model import RunView, pass_starts
from migrate.ui.panels import (BalloonPanel, CaptionPanel, CompareTable, HeaderPanel, HypervisorPanel, MapPanel,
                     PassPanel, PassTablePanel, RunPanel, StoryPanel)
from migrate.ui.playback import Playback

MIN_SIZE = (80, 24)           # the README's minimum terminal size
WIDE = 120                    # from here on the balloon and hypervisor panels have room
TALL = 36
#: Wall seconds the app holds each batch with XTAB entries after pass 1 (pre-fix's
#: leftover dirty bits: 3,357 in balloon.yaml's pass 2, only ~4 batches).
XTAB_LATE_HOLD_S = 0.4


class EventFeed:
    """A bus listener that queues ``(run index, event)`` for the app: the engine never
    waits for the screen, the screen never blocks the engine."""

    def __init__(self, queue: asyncio.Queue, index: int = 0):
        self.queue = queue
        self.index = index

    def __call__(self, ev: Event) -> None:
        if isinstance(ev, PassEnded):
            # the engine keeps counting balloon moves into this RoundStats after the
            # event; the queue must carry the pass as it was when it ended
            ev = dataclasses.replace(ev, stats=copy.copy(ev.stats))
        self.queue.put_nowait((self.index, ev))


Producer = Callable[["XmigApp"], Awaitable[Any]]


@dataclass
class Replay:
    """A recorded run the app plays back: the events and where each pass starts."""

    events: list[Event]
    cursor: int = 0
    starts: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.starts = pass_starts(self.events)


HELP = """\
[b]xmig: keys[/b]

  space   pause / resume (virtual time stops: the engine waits)
  n       run to the next event of interest, then pause
  + / -   faster / slower (virtual seconds per wall second)
  g       guided: pause at every event of interest
  d       details: balloon and hypervisor panels (small terminals)
  t       the tracked GFN's story (--track; small terminals)
  [ / ]   replay: previous / next pass;  1-9: seek to pass N
  ?       this help
  q       quit (a migration in flight is aborted; the report is written)

[b]the map[/b]: one glyph per group of GFNs, coloured by the most telling
state in it. The legend counts PFNs; missing and stale are the
destination's, after the end. Press any key to close."""


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,question_mark,space", "dismiss", "close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Static { width: auto; max-width: 80; border: round $accent; padding: 0 1;
                          background: $panel; }
    """

    def compose(self) -> ComposeResult:
        yield Static(HELP, id="help")

    def on_key(self, event) -> None:
        self.dismiss()


class XmigApp(App):
    """The app; build it with ``for_run``, ``for_compare``, ``for_watch`` or ``for_replay``."""

    TITLE = "xmig"
    ENABLE_COMMAND_PALETTE = False     # its footer entry would push "q quit" off 80 columns
    CSS = """
    Screen { layout: vertical; }
    .header { height: auto; background: $boost; padding: 0 1; }
    .caption { height: auto; max-height: 3; padding: 0 1; }
    .pass { height: 2; padding: 0 1; }
    #body { height: 1fr; }
    .main { width: 1fr; }
    #side { width: 44; }
    .table { height: auto; border: round $primary; border-title-align: left; padding: 0 1; }
    .map { height: 1fr; min-height: 5; border: round $primary; border-title-align: left; }
    #maprow { height: 1fr; }
    .story { width: 2fr; height: 1fr; border: round $warning; border-title-align: left; padding: 0 1; }
    #maprow .map { width: 3fr; }
    .untracked .story { display: none; }
    .side { height: auto; border: round $secondary; border-title-align: left; }
    #runs { height: 1fr; }
    .run { width: 1fr; }
    #compare { height: auto; border: round $primary; border-title-align: left; }
    .small #side { display: none; }
    .small .caption { max-height: 3; }
    .small.details .main { display: none; }
    .small.details #side { display: block; width: 1fr; layout: horizontal; }
    .small.details .side { width: 1fr; }
    .small .story { display: none; }
    .small.storyview .story { display: block; width: 1fr; }
    .small.storyview .map, .small.storyview .table { display: none; }
    .small .run .pass, .small .run .table, .small .run .caption { display: none; }
    """
    BINDINGS = [
        Binding("space", "toggle_pause", "pause"),
        Binding("n", "step", "next"),
        Binding("plus,equals_sign", "faster", "faster"),
        Binding("minus", "slower", "slower"),
        Binding("g", "guided", "guided", show=False),
        Binding("d", "details", "details"),
        Binding("t", "story", "story"),
        Binding("left_square_bracket", "seek(-1)", "prev pass", show=False),
        Binding("right_square_bracket", "seek(1)", "next pass", show=False),
        Binding("question_mark", "help", "help"),
        Binding("q,ctrl+c", "quit_run", "quit"),
    ] + [Binding(str(i), f"seek_to({i})", show=False) for i in range(1, 10)]

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
        self.view_paused = False          # watch: hold the view (the run goes on)
        self._view_resume = asyncio.Event()
        self.stepping = False
        self.results: list[Any] = [None] * len(producers)
        self.done = False
        self.error: BaseException | None = None
        self._tasks: list[asyncio.Task] = []
        self._pump_task: asyncio.Task | None = None
        self.panels: list[RunPanel] = []
        self._quitting = False

    # ------------------------------------------------------------------ builders

    @classmethod
    def for_run(cls, scenario, opts, *, speed: float | None, guided: bool = False,
                run=None, listeners: tuple = ()) -> "XmigApp":
        """``xmig run``: ``run(scenario, opts, bus=, pacer=)`` defaults to ``run_scenario``;
        ``listeners`` are subscribed to the run's bus too (e.g. the plot's recorder)."""
        from migrate.run.runner import run_scenario

        run = run or run_scenario
        pb = Playback(speed)
        view = RunView("", speed=speed)

        async def produce(app: "XmigApp"):
            bus = EventBus()
            for fn in listeners:
                bus.subscribe(fn)
            bus.subscribe(EventFeed(app.queue, 0))
            return await run(scenario, opts, bus=bus, pacer=pb)

        return cls([view], [produce], mode="run", playback=pb, guided=guided)

    @classmethod
    def for_compare(cls, scenario, variants: list, labels: list[str], *, speed: float | None,
                    guided: bool = False, listeners: list | None = None) -> "XmigApp":
        from migrate.run.runner import run_scenario

        pb = Playback(speed)
        views = [RunView(label, speed=speed) for label in labels]

        def producer(i, opts):
            async def produce(app: "XmigApp"):
                bus = EventBus()
                for fn in (listeners[i] if listeners else ()):
                    bus.subscribe(fn)
                bus.subscribe(EventFeed(app.queue, i))
                return await run_scenario(scenario, opts, bus=bus, pacer=pb)
            return produce

        return cls(views, [producer(i, o) for i, o in enumerate(variants)], mode="compare",
                   playback=pb, guided=guided)

    @classmethod
    def for_watch(cls, watch: Callable[[Callable[[Event], None]], Awaitable[Any]], *,
                  guided: bool = False) -> "XmigApp":
        """``watch(listener)`` subscribes ``listener`` to the run's events and returns the
        outcome (``cli_broker.watch_run`` with ``dashboard=listener``)."""
        view = RunView("")

        async def produce(app: "XmigApp"):
            return await watch(EventFeed(app.queue, 0))

        return cls([view], [produce], mode="watch", guided=guided)

    @classmethod
    def for_replay(cls, events: list[Event], *, speed: float | None, guided: bool = False) -> "XmigApp":
        pb = Playback(speed)
        rep = Replay(list(events))
        app = cls([RunView("", speed=speed)], [], mode="replay", playback=pb, guided=guided, replay=rep)
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

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        if self.mode == "compare":
            yield from self._compose_compare()
        else:
            yield from self._compose_single(self.views[0])
        yield Footer()

    def _compose_single(self, view: RunView) -> ComposeResult:
        with Vertical(id="top"):
            yield self._add(HeaderPanel(view, self._status, classes="header", id="header"))
            yield self._add(CaptionPanel(view, classes="caption", id="caption"))
            yield self._add(PassPanel(view, classes="pass", id="pass"))
            with Horizontal(id="body"):
                with Vertical(classes="main"):
                    yield self._add(PassTablePanel(view, classes="table", id="table"), "passes")
                    with Horizontal(id="maprow"):
                        yield self._add(MapPanel(view, classes="map", id="map"), "GFN map")
                        yield self._add(StoryPanel(view, classes="story", id="story"), "tracked GFN")
                with Vertical(id="side"):
                    yield self._add(BalloonPanel(view, classes="side", id="balloon"), "balloon")
                    yield self._add(HypervisorPanel(view, classes="side", id="hv"), "hypervisor")

    def _compose_compare(self) -> ComposeResult:
        with Vertical(id="top"):
            yield self._add(HeaderPanel(self.views[0], self._status, classes="header", id="header",
                                        behaviour=" vs ".join(v.label for v in self.views)))
            self.compare = CompareTable(self.views, id="compare")
            self.compare.border_title = "fixed vs pre-fix, one seed, one virtual clock (differences in yellow)"
            yield self.compare
            with Horizontal(id="runs"):
                for i, v in enumerate(self.views):
                    with Vertical(classes="run", id=f"run{i}"):
                        yield self._add(CaptionPanel(v, classes="caption", id=f"caption{i}"))
                        yield self._add(PassPanel(v, classes="pass", id=f"pass{i}"))
                        yield self._add(PassTablePanel(v, classes="table", id=f"table{i}"), f"passes: {v.label}")
                        yield self._add(MapPanel(v, classes="map", id=f"map{i}"), f"GFN map: {v.label}")

    def _add(self, panel, title: str | None = None):
        self.panels.append(panel)
        if title:
            panel.border_title = title
        return panel

    def on_mount(self) -> None:
        self._apply_size()
        self.set_interval(1 / 10, self._tick)
        self._pump_task = asyncio.create_task(self._pump())
        for i, p in enumerate(self.producers):
            self._tasks.append(asyncio.create_task(self._run_producer(i, p)))

    def on_resize(self, event) -> None:
        self._apply_size()

    def _apply_size(self) -> None:
        w, h = self.size
        top = self.query_one("#top")
        top.set_class(w < WIDE or h < TALL, "small")
        self.refresh_bindings()
        top.set_class(self.views[0].story is None, "untracked")
        for p in self.panels:
            if isinstance(p, PassTablePanel):
                p.view.dash.max_pass_rows = 3 if h < 30 else 8 if h < TALL else 12
        if self.mode == "compare":
            self.query_one("#runs").styles.height = "1fr"

    def _tick(self) -> None:
        for p in self.panels:
            p.tick()
        if self.mode != "compare":
            top = self.query_one("#top")
            if top.has_class("untracked") and self.views[0].story is not None:
                top.remove_class("untracked")           # --track: RunStarted named the GFNs
                self.refresh_bindings()
            story = self.query_one("#story")
            story.border_title = story.title() + (" (t: back to the map)" if top.has_class("storyview") else "")
        if self.mode == "compare":
            self.compare.tick()
        # the header's status (paused, slow motion) changes without events
        self.query_one("#header").refresh(layout=True)

    # ------------------------------------------------------------------ the stream

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
        while True:
            idx, ev = await self.queue.get()
            if idx < 0:
                self.done = True
                continue
            while self.view_paused:
                self._view_resume.clear()
                await self._view_resume.wait()
            self.deliver(idx, ev)

    def deliver(self, idx: int, ev: Event) -> None:
        """Fold one event into its run's view; pause at interesting moments when asked."""
        cap = self.views[idx].feed(ev)
        if self.playback is not None and isinstance(ev, BatchSent) and ev.hole is None:
            nib = np.asarray(ev.nibbles, dtype=np.uint8) & 0xF
            if nib.size and not PFINFO_HAS_DATA[nib].all():
                # slow motion over the XTAB walk; after pass 1 these are pre-fix's wasted
                # queries, a few batches only: hold each long enough to be seen
                self.playback.hold(XTAB_LATE_HOLD_S if ev.iteration > 1 else None)
            elif nib.size:
                self.playback.settle()
        if cap is not None and cap.interesting and (self.stepping or self.guided):
            self.stepping = False
            self._pause(True)

    def _pause(self, on: bool) -> None:
        # The view holds at once (events already queued wait), and the engine or the
        # replay stops at its next step; a watched run goes on in its own processes.
        if self.playback is not None and self.mode != "watch":
            (self.playback.pause if on else self.playback.resume)()
        self.view_paused = on
        if not on:
            self._view_resume.set()

    @property
    def paused(self) -> bool:
        return self.view_paused

    def _status(self, short: bool = False) -> Text:
        """The header's status; ``short`` drops the hints so it fits one line at 80
        columns (the help, ``?``, has them)."""
        t = Text()
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
        self.stepping = False
        self._pause(not self.paused)

    def action_step(self) -> None:
        self.stepping = True
        self._pause(False)

    def action_faster(self) -> None:
        if self.playback is not None:
            self.playback.faster()

    def action_slower(self) -> None:
        if self.playback is not None:
            self.playback.slower()

    def action_guided(self) -> None:
        self.guided = not self.guided

    def action_details(self) -> None:
        self.query_one("#top").toggle_class("details")

    def check_action(self, action: str, parameters) -> bool | None:
        small = self.mode != "compare" and self.query_one("#top").has_class("small")
        if action == "story":       # t only where the story panel is hidden, a GFN tracked
            return small and self.views[0].story is not None
        if action == "details":     # d only where the details panels are hidden
            return small
        return True

    def action_story(self) -> None:
        """Small terminals: the tracked GFN's story in place of the pass table and map."""
        if self.mode != "compare" and self.views[0].story is not None:
            self.query_one("#top").toggle_class("storyview")

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    async def action_seek(self, delta: int) -> None:
        if self.replay is None:
            return
        cur = self.views[0].state.cur_iteration or 0
        await self.action_seek_to(max(cur + delta, 1))

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
        view = RunView("", speed=self.playback.speed if self.playback else None)
        stop = rep.starts[iteration]
        for ev in rep.events[: stop + 1]:
            view.feed(ev)
        rep.cursor = stop + 1
        self.views[0] = view
        for p in self.panels:
            p.set_view(view)
        self.stepping = False
        self._pause(True)
        self.playback.reset()
        self._tasks.append(asyncio.create_task(self._run_producer(0, self._replay_producer)))

    async def action_quit_run(self) -> None:
        """Quit: a migration still running is cancelled (the engine aborts and the source
        domain resumes, as a failed Xen migration does) and its report still written."""
        if self._quitting:
            return
        self._quitting = True
        if self.playback is not None:
            self.playback.resume()
        self.view_paused = False
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
        parts = []
        for p in self.panels:
            if p.display and p.parent is not None and p.parent.display:
                parts.append(p.plain())
        if self.mode == "compare":
            parts.insert(1, self.compare_text())
        return "\n".join(parts)

    def compare_text(self) -> str:
        import io

        from rich.console import Console

        con = Console(width=120, file=io.StringIO(), record=True)
        con.print(self.compare.render())
        return con.export_text()


def run_app(app: XmigApp) -> list[Any]:
    """Run ``app`` in the terminal until the person quits; return the producers' results
    (``RunResult``s for run and compare, the outcome for watch). An error in a producer
    is raised here, after the screen is restored."""
    app.run()
    if app.error is not None:
        raise app.error
    return app.results


__all__ = ["EventFeed", "MIN_SIZE", "Replay", "XmigApp", "run_app"]
