"""The app's panels: each a small Textual widget drawing one part of a ``RunView``.

What ``xl migrate`` and libxenguest's progress reports (``xg_sr_save.c``) tell, plus the
P2M and log-dirty state behind them, one widget per part: the header, the caption, the
pass in flight, the pass table (``struct precopy_stats`` per pass), the GFN map, the
balloon, the hypervisor's counters, the tracked GFN's story, and compare's table.

A panel never folds events: the app folds them into the run's ``RunView`` and posts one
coalescing ``RunChanged``; the screen sets each panel's ``version`` reactive, and a
panel whose run moved redraws (re-laid out when its height follows its content). Each
widget carries its own CSS.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from migrate.ui.gfnmap import GfnMap
from migrate.ui.model import RunView
from migrate.ui.progress import policy_text, size_text

PAGE = 4096


class RunPanel(Widget):
    """Base: a widget that draws from one ``RunView``; setting ``version`` to the run's
    (``follow``) redraws it when the run moved, and lays the screen out again only when
    its ``shape`` (what decides its height) changed."""

    version = reactive(-1)

    def __init__(self, view: RunView, **kw: Any):
        super().__init__(**kw)
        self.view = view
        self._shape: Any = None
        self._key: Any = None

    def set_view(self, view: RunView) -> None:
        self.view = view
        self._shape = None
        self._key = None
        self.refresh(layout=True)
        self.follow()

    def follow(self) -> None:
        self.version = self.view.version

    def shape(self) -> Any:
        """What the panel's height depends on (None: a fixed or fractional height)."""
        return None

    def content_key(self) -> Any:
        """All the panel draws from, where that is cheap to compare (None: redraw on
        every move of the run): a run that moved without changing it costs no frame."""
        return None

    def watch_version(self) -> None:
        key = self.content_key()
        if key is not None and key == self._key:
            return
        self._key = key
        shape = self.shape()
        self.refresh(layout=shape != self._shape)
        self._shape = shape

    def plain(self) -> str:
        """What the panel shows, as text (for tests and screen readers)."""
        from rich.console import Console
        import io

        con = Console(width=max(self.content_size.width, 20), file=io.StringIO(), record=True)
        con.print(self.render())
        return con.export_text()


class HeaderPanel(RunPanel):
    """Scenario, seed, behaviour, policy; virtual time, phase, speed and the verdict."""

    DEFAULT_CSS = "HeaderPanel { height: auto; background: $boost; padding: 0 1; }"
    #: the app's status (paused, slow motion, speed) moves without events
    status_seq = reactive(0)

    def shape(self) -> Any:
        s = self.view.state
        return (bool(s.scenario), s.outcome, s.verify is None, self.status().plain)

    def watch_status_seq(self) -> None:
        self.watch_version()

    def __init__(self, view: RunView, status, *, behaviour: str | None = None, **kw: Any):
        super().__init__(view, **kw)
        self.status = status          # callable -> Text: paused, slow motion, speed
        self.behaviour = behaviour    # compare: both runs' labels instead of one behaviour

    def render(self) -> RenderableType:
        s = self.view.state
        wide = self.content_size.width >= 100
        t = Text(no_wrap=False)
        if not s.scenario:
            # before the run's first event, or joined after it with no snapshot of the
            # run so far (migrate/transport/snapshot.py): its names come with its summary
            t.append("joined after the start: scenario, seed and behaviour arrive with the run's end"
                     if self.view.events_seen else "waiting for the run to start", style="italic")
            t.append("\n")
        t.append(f"{s.scenario or '?'}", style="bold cyan")
        t.append(f"  seed {s.seed if s.seed is not None else '?'}  ")
        if self.behaviour:
            t.append(self.behaviour, style="bold")
        else:
            t.append(s.behaviour or "?", style="bold red" if s.behaviour == "pre-fix" else "bold green")
        t.append(f"  policy {policy_text(s.policy, s.policy_params) if wide else s.policy or '?'}")
        if s.p2m_size:
            t.append(f"  p2m_size {s.p2m_size:#x}", style="dim")
        t.append("\n")
        t.append(f"t={s.t:.3f} s  ", style="bold")
        if wide or s.verify is None:
            t.append("phase ")          # narrow, with the verdict: the line must stay one line
        t.append(s.phase, style="bold magenta" if s.phase in ("suspended", "final") else "bold")
        if s.outcome:
            t.append(f"  {s.outcome.upper()}", style="bold green" if s.outcome == "completed" else "bold red")
        if s.verify is not None and not self.behaviour:
            if s.verify.ok:
                t.append("  destination VERIFIED", style="bold green")
            else:
                t.append(f"  destination DIVERGED: {s.verify.missing_pages:,} missing, "
                         f"{s.verify.stale_pages:,} stale", style="bold red")
        extra = self.status()
        if extra is not None and extra.plain:
            room = self.content_size.width - (len(t.plain) - t.plain.rfind("\n"))
            if len(extra.plain) + 1 > room:
                extra = self.status(short=True)     # one line at 80 columns
            if len(extra.plain) + 1 <= room or s.verify is None:
                # a finished run's verdict keeps its line (the footer says q quits), so the
                # map below keeps its scale
                t.append(" ")
                t.append_text(extra)
        return t


class PassPanel(RunPanel):
    """The pass in flight: its PFNs walked out of the bitmap's, data, XTAB."""

    DEFAULT_CSS = "PassPanel { height: 2; padding: 0 1; }"

    def content_key(self) -> Any:
        s, cur = self.view.state, self.view.state.current
        return cur and (cur.iteration, cur.phase, cur.walked, cur.entries, cur.pages, cur.xtab, cur.bytes,
                        cur.dirty_count, s.in_pass)

    def render(self) -> RenderableType:
        s = self.view.state
        cur = s.current
        if cur is None:
            return Text("waiting for the first pass", style="dim")
        head = Text(no_wrap=True, overflow="ellipsis")
        head.append(f"pass {cur.iteration} {cur.phase}", style="bold")
        narrow = self.content_size.width < 70
        head.append(f"  {cur.walked:,}/{cur.entries:,}{'' if narrow else ' PFNs'}  data {cur.pages:,}  ")
        head.append(f"XTAB {cur.xtab:,}", style="bold red" if cur.xtab else "")
        if not narrow:
            head.append(f"  {cur.bytes / (1 << 20):.1f} MiB")
        if self.content_size.width >= 90:
            head.append(f"  dirty_count {cur.dirty_count:,}", style="dim")
        if not s.in_pass:
            head.append("  done", style="dim")
        total = max(cur.entries, 1)
        bar = ProgressBar(total=total, completed=min(cur.walked, total),
                          width=max(self.content_size.width, 10))
        return Group(head, bar)


class PassTablePanel(RunPanel):
    """One row per pass, fitted to the width (``passfit.py``: compact names, then
    abbreviated counts, then fewer columns; never a cut number), the latest ``max_rows``
    passes when the terminal is short."""

    DEFAULT_CSS = ("PassTablePanel { height: auto; border: round $primary; border-title-align: left; "
                   "padding: 0 1; }")
    max_rows = reactive(12, layout=True)

    def content_key(self) -> Any:
        s = self.view.state
        return (len(s.rounds), s.rounds[-1] if s.rounds else None, s.live_round())

    _kept = 0

    def kept_rows(self) -> int:
        """The pass rows it keeps room for: as many as the policy can run (``xen``: its
        ``max_iterations`` live passes and the final one), at most ``max_rows``."""
        n = (self.view.state.policy_params or {}).get("max_iterations")
        want = int(n) + 1 if isinstance(n, int) and n > 0 else self.max_rows
        return max(min(self.max_rows, want), 1)

    def _keep_room(self) -> None:
        # the room is kept from the start (border, header, rule, rows): the map below
        # keeps its scale as passes are added
        kept = self.kept_rows()
        if kept != self._kept:
            self._kept = kept
            self.styles.height = kept + 4

    def on_mount(self) -> None:
        self._keep_room()

    def watch_max_rows(self) -> None:
        self._keep_room()

    def watch_version(self) -> None:
        self._keep_room()
        super().watch_version()

    def render(self) -> RenderableType:
        from migrate.ui.passfit import fit_pass_table

        s = self.view.state
        return fit_pass_table(s.rounds, live=s.live_round(), max_rows=self._kept or self.max_rows,
                              width=max(self.content_size.width, 1))


class MapPanel(RunPanel):
    """The GFN map, pooled to fit the panel (``mapview.py``), with its legend; ``z``
    zooms in towards ``centre`` (a jumped-to GFN, else the middle), ``j`` jumps."""

    DEFAULT_CSS = ("MapPanel { height: 1fr; min-height: 5; border: round $primary; "
                   "border-title-align: left; border-subtitle-align: right; border-subtitle-color: $text-muted; }")
    zoom = reactive(0)
    centre: reactive[int | None] = reactive(None)

    def __init__(self, view: RunView, **kw: Any):
        super().__init__(view, **kw)
        self.frame = None
        self._subtitle = ""
        self._key: Any = None
        self._strips: list = []
        self._fit = None                   # the last frame of the whole space

    def _args(self, w: int) -> dict[str, Any]:
        story = self.view.story
        # the whole map's scale last drawn stays while it still fits this width: a line
        # more or less above (a header or caption that wraps), or a zoom in and back
        # out, does not rescale it
        f = self._fit
        prefer = (f.cell, f.budget) if f is not None and f.columns_for == w else None
        return dict(zoom=self.zoom, centre=self.centre, target=self.centre, prefer=prefer,
                    tracked=tuple(int(g) for g in story.gfns) if story is not None else ())

    def _draw(self) -> None:
        """The strips for the panel as it is now (once per change of run, size or zoom)."""
        from migrate.ui.mapview import map_strips, scale_text

        w, h = self.size
        key = (self.view.version, w, h, self.zoom, self.centre)
        if key == self._key:
            return
        self._key = key
        self._strips, frame = map_strips(self.view.gfnmap, width=max(w, 16), height=max(h, 1),
                                         console=self.app.console, base=self.rich_style, **self._args(w))
        self.frame = frame
        if frame is None:
            return
        frame.columns_for = w
        if frame.zoom == 0:
            self._fit = frame
        sub = scale_text(frame, w - 4)
        if sub != self._subtitle:
            # the border is drawn with the content: draw again once it is set
            self._subtitle = self.border_subtitle = sub
            self.call_after_refresh(self.refresh)
        if frame.zoom != self.zoom:
            self.zoom = frame.zoom

    def render_line(self, y: int):
        from textual.strip import Strip

        self._draw()
        w = self.size.width
        if y < len(self._strips):
            return self._strips[y].apply_style(self.rich_style).crop_extend(0, w, self.rich_style)
        return Strip.blank(w, self.rich_style)

    def content_key(self) -> Any:
        return self.view.map_version

    def render(self) -> RenderableType:
        """The same map as a rich renderable (``plain()``: tests and screen readers)."""
        from migrate.ui.mapview import render_map

        w, h = self.content_size.width, self.content_size.height
        return render_map(self.view.gfnmap, width=max(w, 16), height=max(h, 3), scale=False, **self._args(w))[0]

    def cycle_zoom(self) -> None:
        """One step finer; from one GFN a glyph back to the whole space."""
        levels = self.frame.levels if self.frame is not None else 1
        self.zoom = (self.zoom + 1) % max(levels, 1)

    def jump(self, gfn: int) -> None:
        """Centre ``gfn`` at one GFN a glyph (the finest zoom)."""
        self.centre = int(gfn)
        self.zoom = (self.frame.levels - 1) if self.frame is not None else 0

    def title(self) -> str:
        gm = self.view.gfnmap
        return f"GFN map ({gm.p2m_size:,} PFNs)" if gm.p2m_size else "GFN map"


_SIDE_CSS = "{} {{ height: auto; border: round $secondary; border-title-align: left; }}"


class BalloonPanel(RunPanel):
    """The balloon driver: its target, the pages out, the ops, the latest moves."""

    DEFAULT_CSS = _SIDE_CSS.format("BalloonPanel")

    def shape(self) -> Any:
        b = self.view.state.balloon
        return (len(b.recent), bool(b.stalled))

    def content_key(self) -> Any:
        b = self.view.state.balloon
        return (b.target, b.pages_out, b.decrease_ops, b.decrease_pages, b.populate_ops, b.populate_pages,
                b.stalled, tuple(b.recent), self.view.state.balloon_during_passes)

    def render(self) -> RenderableType:
        b = self.view.state.balloon
        g = Table.grid(padding=(0, 1))
        g.add_column(style="dim")
        g.add_column()
        g.add_row("target", "-" if b.target is None else f"{b.target} pages")
        g.add_row("pages out", f"{b.pages_out} ({size_text(b.pages_out * PAGE)})")
        g.add_row("decrease", f"{b.decrease_pages} pages in {b.decrease_ops} ops")
        g.add_row("populate", f"{b.populate_pages} pages in {b.populate_ops} ops")
        out_, in_ = self.view.state.balloon_during_passes
        g.add_row("in passes", f"-{out_}/+{in_} (bal -/+ summed)")
        if b.stalled:
            g.add_row("status", Text(f"stalled: {b.stalled}", style="bold yellow"))
        body: list[RenderableType] = [g]
        if b.recent:
            body.append(Text("recent", style="dim"))
            for t, line in b.recent:
                body.append(Text(f"{t:.3f}s {line}", overflow="ellipsis", no_wrap=True))
        return Group(*body)


#: The hypervisor counters shown first, in this order; any others follow, sorted.
COUNTERS = ("marks_dirty", "marks_clean", "logdirty_nodes", "dirty_count", "failed_allocs",
            "populated_pages", "pod_entries", "dropped_writes", "write_faults")


class HypervisorPanel(RunPanel):
    """The hypervisor's log-dirty counters as last sampled, and the last CLEAN."""

    DEFAULT_CSS = _SIDE_CSS.format("HypervisorPanel")

    def shape(self) -> Any:
        s = self.view.state
        return (tuple(s.counters), s.last_clean is None)

    def content_key(self) -> Any:
        s = self.view.state
        lc = s.last_clean
        return (tuple(s.counters.items()), s.nodes_peak,
                lc and (float(lc.t), lc.op, lc.final, lc.dirty_count, lc.fault_count))

    def render(self) -> RenderableType:
        s = self.view.state
        g = Table.grid(padding=(0, 1))
        g.add_column(style="dim")
        g.add_column(justify="right")
        c = s.counters
        for k in COUNTERS:
            if k in c:
                val = str(c[k]) + (f" (peak {s.nodes_peak})" if k == "logdirty_nodes" else "")
                g.add_row(k, Text(val, style="bold red" if k == "failed_allocs" and c[k] else ""))
        for k in sorted(set(c) - set(COUNTERS) - {"logdirty_nodes_peak"}):
            g.add_row(k, str(c[k]))
        lc = s.last_clean
        if lc is not None:
            g.add_row("last " + lc.op + (" FINAL" if lc.final else ""),
                      f"dirty {lc.dirty_count} faults {lc.fault_count}")
        if not c and lc is None:
            g.add_row("no sample yet", "")
        return g


class StoryPanel(RunPanel):
    """The tracked GFNs' stories as they unfold (``--track GFN``): the lines
    ``xmig explain`` prints, newest at the bottom; the oldest scroll off when the panel
    is full (``xmig explain`` or the summary has them all)."""

    DEFAULT_CSS = ("StoryPanel { width: 2fr; height: 1fr; border: round $warning; border-title-align: left; "
                   "padding: 0 1; }")

    def render(self) -> RenderableType:
        from rich.console import Console

        lines = self.view.story_lines()
        w = max(self.content_size.width, 20)
        h = max(self.content_size.height, 1)
        many = self.view.story is not None and len(self.view.story.lines) > 1
        if not lines:
            return Text("no events for the tracked GFN yet" if self.view.story is not None
                        else "no GFN tracked: run with --track GFN", style="dim")
        con = Console(width=w)
        rows: list[Text] = []
        for t, g, text in lines:
            line = Text(no_wrap=False)
            line.append(f"t={t:.3f} ", style="dim")
            if many:
                line.append(f"{g:#x} ", style="bold cyan")
            line.append(text, style=_story_style(text))
            rows.extend(line.wrap(con, w))
        hidden = max(len(rows) - h, 0)
        if hidden:
            # keep the newest; say how much scrolled off
            rows = rows[hidden + 1:]
            rows.insert(0, Text(f"… {len(lines)} events, older ones above", style="dim italic"))
        return Group(*rows)

    def title(self) -> str:
        story = self.view.story
        if story is None or not story.lines:
            return "tracked GFN"
        names = ", ".join(f"{g:#x}" for g in story.lines)
        return f"GFN {names}: its story"


def _story_style(text: str) -> str:
    """The words that matter for the fix stand out: what pre-fix leaves wrong in red,
    what the fix does in green."""
    if "MISSING" in text or "STALE" in text or "NOT marked dirty" in text or "stays set" in text:
        return "bold red"
    if "(the fix)" in text or "destination: ok" in text:
        return "green"
    return ""


class CaptionPanel(RunPanel):
    """The latest caption: what just happened, in plain words."""

    #: three lines always, however many the caption takes: the map below keeps its scale
    DEFAULT_CSS = "CaptionPanel { height: 3; padding: 0 1; }"

    def content_key(self) -> Any:
        cap = self.view.caption
        return cap and (cap.line(), cap.interesting)

    def render(self) -> RenderableType:
        cap = self.view.caption
        t = Text()
        if cap is not None:
            t.append(cap.line(), style="bold" if cap.interesting else "")
        else:
            t.append("waiting for the first event", style="dim")
        return t


class CompareTable(Widget):
    """Two runs' numbers side by side; numbers that differ are highlighted."""

    DEFAULT_CSS = "CompareTable { height: auto; border: round $primary; border-title-align: left; }"
    version = reactive((), layout=True)

    def __init__(self, views: list[RunView], **kw: Any):
        super().__init__(**kw)
        self.views = views

    def follow(self) -> None:
        self.version = tuple(x.version for x in self.views)

    def rows(self) -> list[tuple[str, list[str]]]:
        out = []
        for name, fn in COMPARE_ROWS:
            out.append((name, [fn(v) for v in self.views]))
        return out

    def render(self) -> RenderableType:
        tbl = Table(box=None, padding=(0, 1), show_edge=False, expand=False)
        tbl.add_column("")
        for v in self.views:
            tbl.add_column(v.label, justify="right", no_wrap=True)
        for name, vals in self.rows():
            differ = len(set(vals)) > 1
            tbl.add_row(name, *[Text(x, style="bold yellow" if differ else "") for x in vals])
        return tbl


def _live_totals(v: RunView) -> dict[str, int]:
    return v.state.sent_so_far()


def _verify_num(v: RunView, key: str) -> str:
    ver = v.state.verify
    return "-" if ver is None else f"{int(getattr(ver, key)):,}"


COMPARE_ROWS = (
    ("t (virtual s)", lambda v: f"{v.state.t:.2f}"),
    ("phase", lambda v: v.state.phase),
    ("passes", lambda v: str(_live_totals(v)["passes"])),
    ("data pages sent", lambda v: f"{_live_totals(v)['data']:,}"),
    ("XTAB entries", lambda v: f"{_live_totals(v)['xtab']:,}"),
    ("MiB sent", lambda v: f"{_live_totals(v)['bytes'] / (1 << 20):.1f}"),
    # The report's pages.leftover_bits and pages.unmarked_additions (whole-run counts),
    # not the map's glyphs: the map shows what is pending now, and ends at 0.
    ("leftover bits", lambda v: f"{v.state.leftover_bits:,}"),
    ("lost additions", lambda v: f"{v.state.unmarked_additions:,}"),
    ("missing", lambda v: _verify_num(v, "missing_pages")),
    ("stale", lambda v: _verify_num(v, "stale_pages")),
)


# ----------------------------------------------------------------------------- the map as text


def render_gfnmap(gmap: GfnMap, *, width: int | None = None, height: int | None = None) -> RenderableType:
    """The whole GFN map in ``width`` x ``height`` characters (``mapview.render_map``)."""
    from migrate.ui.mapview import render_map

    return render_map(gmap, width=width, height=height)[0]


__all__ = ["BalloonPanel", "CaptionPanel", "CompareTable", "HeaderPanel", "HypervisorPanel", "MapPanel",
           "PassPanel", "PassTablePanel", "RunPanel", "StoryPanel", "render_gfnmap"]
