"""The app's screens, one per mode: a live run, a watched run, a replay, a compare;
and the help.

Each lays its panels (``migrate/ui/panels.py``) out for the terminal's size: from
120x36 the balloon and hypervisor panels sit beside the map (behind ``d`` below), and
the tracked GFN's story beside the map (behind ``t`` below). None of them polls: the
app folds each event into the run's ``RunView`` and posts ``RunChanged``, a message
that replaces any older one still queued, and the screen hands the runs' new versions
to its panels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Static

from migrate.ui.panels import (BalloonPanel, CaptionPanel, CompareTable, HeaderPanel, HypervisorPanel, MapPanel,
                               PassPanel, PassTablePanel, RunPanel, StoryPanel)
from migrate.ui.patch import PatchPanel

if TYPE_CHECKING:
    from rich.text import Text

    from migrate.ui.model import RunView


class ModeHost(Protocol):
    """What a mode's screen asks of the app that shows it (``XmigApp``): the header's
    status and its version, and a refresh of the keys shown."""

    status_seq: int

    def status_text(self, short: bool = False) -> "Text": ...

    def refresh_bindings(self) -> None: ...

WIDE = 120                    # from here on the balloon and hypervisor panels have room
TALL = 36


def keys(*extra: Binding) -> list[Binding]:
    """A mode's keys, in the footer's order: the playback's (the app's actions), then
    the mode's own, then help and quit."""
    return [Binding("space", "app.toggle_pause", "pause"),
            Binding("n", "app.step", "next"),
            Binding("plus,equals_sign", "app.faster", "faster"),
            Binding("minus", "app.slower", "slower"),
            Binding("g", "app.guided", "guided", show=False),
            *extra,
            Binding("question_mark", "app.help", "help"),
            Binding("q", "app.quit_run", "quit")]


#: the map's keys (``mapview.py``): zoom one level finer, jump to a GFN
MAP_KEYS = (Binding("z", "zoom", "zoom"), Binding("j", "jump", "jump", show=False))


class RunChanged(Message):
    """A run's view moved (events folded) or the app's status did: redraw what changed.
    One still queued is replaced by the newer one, so a burst costs one redraw."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunChanged)


HELP = """\
[b]xmig: keys[/b]

  space   pause / resume (virtual time stops: the engine waits)
  n       run to the next event of interest, then pause
  + / -   faster / slower (virtual seconds per wall second)
  g       guided: pause at every event of interest
  d       details: balloon and hypervisor panels (small terminals)
  t       the tracked GFN's story (--track; small terminals)
  z       zoom the map in, down to one GFN a glyph, then back out
  j       jump: centre a GFN on the map, one GFN a glyph
  [ / ]   replay: previous / next pass;  1-9: seek to pass N
          live: step back / forth over the events of interest so far
          (the run pauses; ] past the newest goes live again)
  s       save this screen as SVG (slides: ./xmig-slides/)
  ?       this help (the run pauses while it is shown)
  q       quit (a migration in flight is aborted; the report is written)

[b]the map[/b]: one glyph per group of GFNs; along the map each state
gets glyphs in proportion to its GFNs (a glyph never shows a state
none of its GFNs is in). Tracked GFNs are in reverse video; a long
hole is folded into one row. The legend counts PFNs; missing and stale
are the destination's, after the end. Press any key to close."""


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


class ModeScreen(Screen):
    """What every mode's screen shares: its panels, following the runs they draw."""

    app: ModeHost

    def __init__(self) -> None:
        super().__init__()
        self.panels: list[RunPanel] = []

    def _add(self, panel: RunPanel, title: str | None = None) -> RunPanel:
        self.panels.append(panel)
        if title:
            panel.border_title = title
        return panel

    def on_mount(self) -> None:
        self.apply_size()

    def on_resize(self, event) -> None:
        self.apply_size()

    def apply_size(self) -> None:
        w, h = self.size
        self.query_one("#top").set_class(w < WIDE or h < TALL, "small")
        rows = 3 if h < 30 else 8 if h < TALL else 12
        for p in self.panels:
            if isinstance(p, PassTablePanel):
                p.max_rows = rows
        self.app.refresh_bindings()

    def action_zoom(self) -> None:
        """``z``: every map one zoom level finer (the whole space after the finest)."""
        for m in self.query(MapPanel):
            m.cycle_zoom()

    def action_jump(self) -> None:
        """``j``: ask for a GFN, then centre it on every map at one GFN a glyph."""
        from migrate.ui.jump import JumpScreen

        maps = list(self.query(MapPanel))

        def centre(gfn: int | None) -> None:
            for m in maps if gfn is not None else ():
                m.jump(gfn)
        if maps:
            self.app.push_screen(JumpScreen(maps[0].view.gfnmap.p2m_size), centre)

    def on_run_changed(self, message: RunChanged) -> None:
        self.redraw()

    def redraw(self) -> None:
        for p in self.panels:
            p.follow()
        self.query_one(HeaderPanel).status_seq = self.app.status_seq

    def texts(self) -> list[str]:
        """Every panel shown, as text, top to bottom (what the person reads)."""
        return [p.plain() for p in self.panels if p.display and p.parent is not None and p.parent.display]

    def text(self) -> str:
        return "\n".join(self.texts())


class RunScreen(ModeScreen):
    """One run: header, caption, the pass in flight, the pass table, the map; the
    balloon, the hypervisor and the tracked GFN's story where there is room."""

    DEFAULT_CSS = """
    RunScreen { layout: vertical; }
    RunScreen #body { height: 1fr; }
    RunScreen .main { width: 1fr; }
    RunScreen #side { width: 44; }
    RunScreen #maprow { height: 1fr; }
    RunScreen #maprow .map { width: 3fr; }
    RunScreen .untracked .story { display: none; }
    RunScreen .small #side { display: none; }
    RunScreen .small.details .main { display: none; }
    RunScreen .small.details #side { display: block; width: 1fr; layout: horizontal; }
    RunScreen .small.details .side { width: 1fr; }
    RunScreen .small .story { display: none; }
    RunScreen .small.storyview .story { display: block; width: 1fr; }
    RunScreen .small.storyview .map, RunScreen .small.storyview .table { display: none; }
    RunScreen #capline { height: auto; }
    RunScreen #capline .caption { width: 1fr; }
    RunScreen .small #capline { layout: vertical; }
    RunScreen .small .patch { width: 1fr; height: 1; border: none; }
    """
    BINDINGS = keys(Binding("d", "details", "details"), Binding("t", "story", "story"), *MAP_KEYS)

    def __init__(self, view: "RunView") -> None:
        super().__init__()
        self.view = view

    def compose(self) -> ComposeResult:
        view = self.view
        with Vertical(id="top", classes="untracked"):
            yield self._add(HeaderPanel(view, self.app.status_text, classes="header", id="header"))
            with Horizontal(id="capline"):      # the caption, and the patch's call site beside it
                yield self._add(CaptionPanel(view, classes="caption", id="caption"))
                yield self._add(PatchPanel(view, classes="patch", id="patch"))
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
        yield Footer()

    def set_view(self, view: "RunView") -> None:
        self.view = view
        for p in self.panels:
            p.set_view(view)

    def redraw(self) -> None:
        super().redraw()
        top = self.query_one("#top")
        if top.has_class("untracked") and self.view.story is not None:
            top.remove_class("untracked")           # --track: RunStarted named the GFNs
            self.app.refresh_bindings()
        story = self.query_one(StoryPanel)
        story.border_title = story.title() + (" (t: back to the map)" if top.has_class("storyview") else "")

    def _small(self) -> bool:
        return self.query_one("#top").has_class("small")

    def check_action(self, action: str, parameters) -> bool | None:
        if action == "story":       # t only where the story panel is hidden, a GFN tracked
            return self._small() and self.view.story is not None
        if action == "details":     # d only where the details panels are hidden
            return self._small()
        return True

    def action_details(self) -> None:
        self.query_one("#top").toggle_class("details")

    def action_story(self) -> None:
        """Small terminals: the tracked GFN's story in place of the pass table and map."""
        if self.view.story is not None:
            self.query_one("#top").toggle_class("storyview")
            self.redraw()


#: ``[`` / ``]`` in a live or watched run: step over its history (``history.py``)
STEP_KEYS = [Binding("left_square_bracket", "app.history(-1)", "back", show=False),
             Binding("right_square_bracket", "app.history(1)", "forth", show=False)]


class LiveRunScreen(RunScreen):
    """``xmig run``: the engine runs in this process, paced by the playback."""

    BINDINGS = STEP_KEYS


class WatchScreen(RunScreen):
    """``xmig watch``: the events of a run on a broker; pausing holds only the view."""

    BINDINGS = STEP_KEYS


class ReplayScreen(RunScreen):
    """``xmig replay``: a recorded run, with seeking to the start of any pass."""

    BINDINGS = [Binding("left_square_bracket", "app.seek(-1)", "prev pass", show=False),
                Binding("right_square_bracket", "app.seek(1)", "next pass", show=False),
                ] + [Binding(str(i), f"app.seek_to({i})", show=False) for i in range(1, 10)]



class CompareScreen(ModeScreen):
    """``xmig compare``: two runs on one clock, their numbers side by side and each
    one's caption, pass, pass table and map."""

    DEFAULT_CSS = """
    CompareScreen { layout: vertical; }
    CompareScreen #runs { height: 1fr; }
    CompareScreen .run { width: 1fr; }
    CompareScreen .small .run .pass, CompareScreen .small .run .table,
    CompareScreen .small .run .caption { display: none; }
    """
    BINDINGS = keys(*MAP_KEYS)

    def __init__(self, views: list["RunView"]) -> None:
        super().__init__()
        self.views = views

    def compose(self) -> ComposeResult:
        with Vertical(id="top"):
            yield self._add(HeaderPanel(self.views[0], self.app.status_text, classes="header", id="header",
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
        yield Footer()

    def redraw(self) -> None:
        super().redraw()
        self.compare.follow()

    def compare_text(self) -> str:
        import io

        from rich.console import Console

        con = Console(width=120, file=io.StringIO(), record=True)
        con.print(self.compare.render())
        return con.export_text()

    def texts(self) -> list[str]:
        parts = super().texts()
        parts.insert(1, self.compare_text())
        return parts


__all__ = ["CompareScreen", "HelpScreen", "LiveRunScreen", "ModeScreen", "ReplayScreen", "RunChanged",
           "RunScreen", "WatchScreen"]
