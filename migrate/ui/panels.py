"""The app's panels: each a small Textual widget drawing one part of a ``RunView``.

They reuse the rich pieces of ``migrate/ui/dashboard.py`` as renderables and only decide
what fits: a panel redraws when its run's ``version`` moved (new events) or its size
changed, never by folding events itself.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from textual.widget import Widget

from migrate.ui.dashboard import pass_table, render_gfnmap
from migrate.ui.model import RunView


class RunPanel(Widget):
    """Base: a widget that draws from one ``RunView`` and redraws when it changed."""

    def __init__(self, view: RunView, **kw: Any):
        super().__init__(**kw)
        self.view = view
        self._drawn = -1

    def set_view(self, view: RunView) -> None:
        self.view = view
        self._drawn = -1
        self.refresh()

    def tick(self) -> None:
        if self.view.version != self._drawn:
            self._drawn = self.view.version
            self.refresh(layout=self.auto_layout)

    auto_layout = False

    def plain(self) -> str:
        """What the panel shows, as text (for tests and screen readers)."""
        from rich.console import Console
        import io

        con = Console(width=max(self.content_size.width, 20), file=io.StringIO(), record=True)
        con.print(self.render())
        return con.export_text()


class HeaderPanel(RunPanel):
    """Scenario, seed, behaviour, policy; virtual time, phase, speed and the verdict."""

    auto_layout = True

    def __init__(self, view: RunView, status, *, behaviour: str | None = None, **kw: Any):
        super().__init__(view, **kw)
        self.status = status          # callable -> Text: paused, slow motion, speed
        self.behaviour = behaviour    # compare: both runs' labels instead of one behaviour

    def render(self) -> RenderableType:
        s = self.view.state
        wide = self.content_size.width >= 100
        t = Text(no_wrap=False)
        if not s.scenario:
            # joined after the run's first event: its names come with its summary
            t.append("joined after the start: scenario, seed and behaviour arrive with the run's end",
                     style="italic")
            t.append("\n")
        t.append(f"{s.scenario or '?'}", style="bold cyan")
        t.append(f"  seed {s.seed if s.seed is not None else '?'}  ")
        if self.behaviour:
            t.append(self.behaviour, style="bold")
        else:
            t.append(s.behaviour or "?", style="bold red" if s.behaviour == "pre-fix" else "bold green")
        t.append(f"  policy {s.policy or '?'}")
        if wide and s.policy_params:
            t.append(" (" + ", ".join(f"{k}={v}" for k, v in s.policy_params.items()) + ")")
        if s.p2m_size:
            t.append(f"  p2m_size {s.p2m_size:#x}", style="dim")
        t.append("\n")
        t.append(f"t={s.t:.3f} s  ", style="bold")
        t.append("phase ")
        t.append(s.phase, style="bold magenta" if s.phase in ("suspended", "final") else "bold")
        if s.outcome:
            t.append(f"  {s.outcome.upper()}", style="bold green" if s.outcome == "completed" else "bold red")
        if s.verify is not None and not self.behaviour:
            if s.verify.get("ok"):
                t.append("  destination VERIFIED", style="bold green")
            else:
                t.append(f"  destination DIVERGED: {s.verify.get('missing_pages', 0):,} missing, "
                         f"{s.verify.get('stale_pages', 0):,} stale", style="bold red")
        extra = self.status()
        if extra is not None and extra.plain:
            if len(t.plain) - t.plain.rfind("\n") + len(extra.plain) > self.content_size.width:
                extra = self.status(short=True)     # one line at 80 columns
            t.append(" ")
            t.append_text(extra)
        return t


class PassPanel(RunPanel):
    """The pass in flight: its PFNs walked out of the bitmap's, data, XTAB."""

    def render(self) -> RenderableType:
        s = self.view.state
        if not s.cur_iteration:
            return Text("waiting for the first pass", style="dim")
        head = Text(no_wrap=True, overflow="ellipsis")
        head.append(f"pass {s.cur_iteration} {s.cur_phase}", style="bold")
        narrow = self.content_size.width < 70
        head.append(f"  {s.cur_walked:,}/{s.cur_entries:,}{'' if narrow else ' PFNs'}  data {s.cur_pages:,}  ")
        head.append(f"XTAB {s.cur_xtab:,}", style="bold red" if s.cur_xtab else "")
        if not narrow:
            head.append(f"  {s.cur_bytes / (1 << 20):.1f} MiB")
        if self.content_size.width >= 90:
            head.append(f"  dirty_count {s.cur_dirty_count:,}", style="dim")
        if not s.in_pass:
            head.append("  done", style="dim")
        total = max(s.cur_entries, 1)
        bar = ProgressBar(total=total, completed=min(s.cur_walked, total),
                          width=max(self.content_size.width, 10))
        return Group(head, bar)


class PassTablePanel(RunPanel):
    """One row per pass; compact (8 columns) below 100 columns of width."""

    auto_layout = True

    def render(self) -> RenderableType:
        w = self.content_size.width
        return self.view.dash.pass_table_panel(compact=w < 96, narrow=w < 62, title=None)


class MapPanel(RunPanel):
    """The GFN map, pooled to fit the panel, with its legend."""

    def render(self) -> RenderableType:
        w, h = self.content_size.width, self.content_size.height
        return render_gfnmap(self.view.gfnmap, width=max(w, 16), height=max(h, 3), panel=False)

    def on_resize(self) -> None:
        self._drawn = -1
        self.tick()

    def watch_size(self) -> None:   # pragma: no cover - Textual calls on_resize
        self.refresh()

    def title(self) -> str:
        gm = self.view.gfnmap
        return f"GFN map ({gm.p2m_size:,} PFNs)" if gm.p2m_size else "GFN map"


class BalloonPanel(RunPanel):
    def render(self) -> RenderableType:
        return self.view.dash.balloon_panel().renderable


class HypervisorPanel(RunPanel):
    def render(self) -> RenderableType:
        return self.view.dash.counters_panel().renderable


class StoryPanel(RunPanel):
    """The tracked GFNs' stories as they unfold (``--track GFN``): the lines
    ``xmig explain`` prints, newest at the bottom; the oldest scroll off when the panel
    is full (``xmig explain`` or the summary has them all)."""

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

    auto_layout = True

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

    def __init__(self, views: list[RunView], **kw: Any):
        super().__init__(**kw)
        self.views = views
        self._drawn: tuple = ()

    def tick(self) -> None:
        v = tuple(x.version for x in self.views)
        if v != self._drawn:
            self._drawn = v
            self.refresh(layout=True)

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
    s = v.state
    rounds = [r for r in s.rounds if r["phase"] != "verify"]
    tot = {"data": sum(r["pages_sent"] for r in rounds), "xtab": sum(r["xtab_sent"] for r in rounds),
           "bytes": sum(r["bytes"] for r in rounds), "passes": len(rounds)}
    if s.in_pass and s.cur_phase != "verify":
        tot["data"] += s.cur_pages
        tot["xtab"] += s.cur_xtab
        tot["bytes"] += s.cur_bytes
        tot["passes"] += 1
    return tot


def _verify_num(v: RunView, key: str) -> str:
    ver = v.state.verify
    return "-" if ver is None else f"{int(ver.get(key, 0)):,}"


COMPARE_ROWS = (
    ("t (virtual s)", lambda v: f"{v.state.t:.2f}"),
    ("phase", lambda v: v.state.phase),
    ("passes", lambda v: str(_live_totals(v)["passes"])),
    ("data pages sent", lambda v: f"{_live_totals(v)['data']:,}"),
    ("XTAB entries", lambda v: f"{_live_totals(v)['xtab']:,}"),
    ("MiB sent", lambda v: f"{_live_totals(v)['bytes'] / (1 << 20):.1f}"),
    ("leftover bits", lambda v: f"{v.gfnmap.totals()['leftover']:,}"),
    ("lost additions", lambda v: f"{v.gfnmap.totals()['lost']:,}"),
    ("missing", lambda v: _verify_num(v, "missing_pages")),
    ("stale", lambda v: _verify_num(v, "stale_pages")),
)


__all__ = ["BalloonPanel", "CaptionPanel", "CompareTable", "HeaderPanel", "HypervisorPanel", "MapPanel",
           "PassPanel", "PassTablePanel", "RunPanel", "StoryPanel"]
