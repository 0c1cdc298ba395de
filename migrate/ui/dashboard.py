"""The live terminal dashboard and the final summary.

What Xen shows through ``xc_report_progress_*`` and ``xl migrate``'s output, drawn as
one rich screen: the header (scenario, behaviour, policy), the current pass's progress
over its PFNs (``send_dirty_pages``' ``written``/``entries``), a table of passes
(``struct precopy_stats`` plus what each pass sent), the balloon, the hypervisor's
log-dirty counters and the GFN map (``migrate/ui/gfnmap.py``).

Everything here is a consumer of the event stream (``migrate/events/types.py``): a
``Dashboard`` is a bus listener and never asks any actor anything.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
from rich import box
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from hypervisor.abi import PFINFO_HAS_DATA

from migrate.events import (BalloonMoved, BalloonNote, BalloonStalled, BalloonTarget, BatchSent, CleanDone,
                      CountersSampled, Event, MemoryOp, MigrationFinished, Outcome, PassEnded, PassPhase,
                      PassStarted, Phase, PhaseChanged, RoundStats, RunStarted, RunSummary, SaveSetup,
                      VerifyDone)
from migrate.ui.gfnmap import LEGEND, LEGEND_BY_STATE, GfnMap
from migrate.ui.gfnmap import PENDING as PENDING_STATE
from migrate.ui.gfnmap import SENT as SENT_STATE

PAGE = 4096
MIB = 1 << 20
_XTAB = 0xF

# ----------------------------------------------------------------------------- state


def _runs_pages(runs) -> int:
    a = np.asarray(runs if runs is not None else (), dtype=np.int64)
    if not a.size:
        return 0
    a = a.reshape(-1, 2)
    return int((a[:, 1] - a[:, 0]).clip(min=0).sum())


@dataclass
class DashboardState:
    """Everything the dashboard shows, folded from events (one writer: ``Dashboard``)."""

    scenario: str = ""
    seed: int | None = None
    behaviour: str = ""
    policy: str = ""
    policy_params: dict[str, Any] = field(default_factory=dict)
    guest_pages: int = 0
    p2m_size: int = 0
    speed: float | None = None
    t: float = 0.0
    t_start: float | None = None
    t_suspend: float | None = None
    t_done: float | None = None
    phase: str = "waiting"
    phase_detail: str = ""
    # the pass in flight
    cur_iteration: int = 0
    cur_phase: str = ""
    cur_entries: int = 0
    cur_walked: int = 0
    cur_dirty_count: int = 0
    cur_pages: int = 0
    cur_xtab: int = 0
    cur_bytes: int = 0
    cur_start: float = 0.0
    cur_balloon_out: int = 0
    cur_balloon_in: int = 0
    in_pass: bool = False
    rounds: list[dict[str, Any]] = field(default_factory=list)
    last_clean: dict[str, Any] | None = None
    # balloon
    balloon_target: float | None = None
    ballooned_at_start: int = 0
    decrease_ops: int = 0
    decrease_pages: int = 0
    populate_ops: int = 0
    populate_pages: int = 0
    balloon_stalled: str = ""
    recent: deque = field(default_factory=lambda: deque(maxlen=6))
    # hypervisor
    counters: dict[str, Any] = field(default_factory=dict)
    nodes_peak: int = 0
    # end
    verify: dict[str, Any] | None = None
    outcome: str = ""
    message: str = ""

    @property
    def balloon_during_passes(self) -> tuple[int, int]:
        """Pages out and in counted in the pass table's rows (the live one included)."""
        out_ = sum(int(r.get("balloon_out", 0)) for r in self.rounds)
        in_ = sum(int(r.get("balloon_in", 0)) for r in self.rounds)
        if self.in_pass:
            out_, in_ = out_ + self.cur_balloon_out, in_ + self.cur_balloon_in
        return out_, in_

    @property
    def pages_out(self) -> int:
        return self.ballooned_at_start + self.decrease_pages - self.populate_pages


class Dashboard:
    """Event-bus listener holding a ``DashboardState``; ``render()`` draws it."""

    def __init__(self, console: Console | None = None, speed: float | None = None, *,
                 gfnmap: GfnMap | None = None, recent: int = 6, max_pass_rows: int = 12):
        self.console = console
        self.state = DashboardState(speed=speed, recent=deque(maxlen=recent))
        self.gfnmap = gfnmap if gfnmap is not None else GfnMap()
        self._owns_map = gfnmap is None
        self.max_pass_rows = max_pass_rows
        self._lock = threading.RLock()   # Live renders from its refresh thread

    # ------------------------------------------------------------------ events

    def __call__(self, ev: Event) -> None:
        with self._lock:
            if self._owns_map:
                self.gfnmap(ev)
            self._fold(ev)

    on_event = __call__

    def _fold(self, ev: Event) -> None:
        s = self.state
        if ev.t > s.t:
            s.t = float(ev.t)
        if isinstance(ev, BatchSent):
            s.cur_walked, s.cur_entries = int(ev.walked), int(ev.entries)
            nib = np.asarray(ev.nibbles, dtype=np.uint8) & 0xF
            s.cur_pages += int(np.count_nonzero(PFINFO_HAS_DATA[nib]))
            s.cur_xtab += int(np.count_nonzero(nib == _XTAB))
            if ev.hole is not None:          # a never-mapped range walked in bulk: all XTAB
                s.cur_xtab += int(ev.hole[1]) - int(ev.hole[0])
            s.cur_bytes += int(ev.bytes)
        elif isinstance(ev, CountersSampled):
            s.counters = dict(ev.counters)
            nodes = s.counters.get("logdirty_nodes_peak", s.counters.get("logdirty_nodes", 0))
            s.nodes_peak = max(s.nodes_peak, int(nodes or 0))
        elif isinstance(ev, MemoryOp):
            self._memory_op(ev)
        elif isinstance(ev, BalloonNote):
            self._balloon_note(ev)
        elif isinstance(ev, PassStarted):
            s.in_pass = True
            s.cur_iteration, s.cur_phase = int(ev.iteration), ev.phase
            s.cur_entries, s.cur_walked = int(ev.entries), 0
            s.cur_dirty_count = int(ev.dirty_count)
            s.cur_pages = s.cur_xtab = s.cur_bytes = 0
            s.cur_balloon_out = s.cur_balloon_in = 0
            s.cur_start = float(ev.t)
        elif isinstance(ev, PassEnded):
            s.in_pass = False
            s.rounds.append(_round_dict(ev.stats))
            s.cur_walked = int(ev.stats.pfns_walked)
        elif isinstance(ev, CleanDone):
            s.last_clean = {"iteration": ev.iteration, "op": ev.op, "final": ev.final,
                            "dirty_count": ev.dirty_count, "fault_count": ev.fault_count}
        elif isinstance(ev, PhaseChanged):
            s.phase, s.phase_detail = ev.phase, ev.detail
            if ev.phase == Phase.SUSPENDED and s.t_suspend is None:
                s.t_suspend = float(ev.t)
            elif ev.phase == Phase.DONE:
                s.t_done = float(ev.t)
        elif isinstance(ev, RunStarted):
            s.scenario, s.seed, s.behaviour = ev.scenario, ev.seed, ev.behaviour
            s.policy, s.policy_params = ev.policy, dict(ev.policy_params or {})
            s.guest_pages = int(ev.guest_pages)
            s.ballooned_at_start = _runs_pages(ev.ballooned)
            s.t_start = float(ev.t)
        elif isinstance(ev, SaveSetup):
            s.p2m_size = int(ev.p2m_size)
        elif isinstance(ev, RunSummary) and not s.scenario:
            # a watcher that joined after RunStarted learns the run's names here
            s.scenario, s.seed, s.behaviour = ev.scenario, ev.seed, ev.behaviour
            s.policy, s.policy_params = ev.policy, dict(ev.policy_params or {})
        elif isinstance(ev, VerifyDone):
            s.verify = ev.stats.as_dict()
        elif isinstance(ev, MigrationFinished):
            s.outcome, s.message = ev.outcome, ev.message
            s.phase = "done" if ev.outcome == Outcome.COMPLETED else ev.outcome

    def _memory_op(self, ev: MemoryOp) -> None:
        s = self.state
        rc = int(ev.rc)
        if ev.op == "decrease_reservation":
            s.decrease_ops += 1
            s.decrease_pages += max(rc, 0)
        elif ev.op == "populate_physmap":
            s.populate_ops += 1
            s.populate_pages += max(rc, 0)
        else:
            return
        # The pass table's "bal -/+" column, by the engine's own rule (RoundStats.with_balloon):
        # in the pass it happens in; between two passes, in the pass before.
        one = RoundStats(iteration=0, phase=PassPhase.LIVE, start_s=0.0).with_balloon(ev)
        if s.in_pass:
            s.cur_balloon_out += one.balloon_out
            s.cur_balloon_in += one.balloon_in
        elif s.rounds:
            last = s.rounds[-1]
            last["balloon_out"] = int(last.get("balloon_out", 0)) + one.balloon_out
            last["balloon_in"] = int(last.get("balloon_in", 0)) + one.balloon_in
        word = "decrease" if ev.op == "decrease_reservation" else "populate"
        res = f"{rc}/{ev.nr} pages" if rc >= 0 else f"{ev.nr} pages, rc={rc}"
        s.recent.append((float(ev.t), f"{word} {res}"))

    def _balloon_note(self, ev: BalloonNote) -> None:
        s, t = self.state, float(ev.t)
        match ev:
            case BalloonTarget(target_pages=tgt):
                s.balloon_target = tgt
                s.balloon_stalled = ""
                s.recent.append((t, f"target → {int(tgt)} pages"))
            case BalloonStalled(reason=why):
                s.balloon_stalled = str(why)
                s.recent.append((t, f"stalled: {why}"))
            case BalloonMoved(direction=word, pages=n):
                s.recent.append((t, f"{word} {int(n)} pages"))
            case _:
                s.recent.append((t, "reached"))

    # ------------------------------------------------------------------ rendering

    def __rich__(self) -> RenderableType:
        return self.render()

    def render(self) -> RenderableType:
        with self._lock:
            top = Table.grid(padding=(0, 1))
            top.add_column()
            top.add_column()
            top.add_row(self.pass_table_panel(), self.counters_panel())
            bottom = Table.grid(padding=(0, 1))
            bottom.add_column()
            bottom.add_column()
            bottom.add_row(render_gfnmap(self.gfnmap), self.balloon_panel())
            return Group(self.header_panel(), self.progress_panel(), top, bottom)

    def header_panel(self) -> RenderableType:
        s = self.state
        t = Text()
        t.append("xmig ", style="bold")
        t.append(f"{s.scenario or '?'}", style="bold cyan")
        t.append(f"  seed {s.seed if s.seed is not None else '?'}  ")
        t.append("behaviour ")
        t.append(s.behaviour or "?", style="bold red" if s.behaviour == "pre-fix" else "bold green")
        t.append(f"  policy {_policy_text(s.policy, s.policy_params)}")
        t.append("\n")
        if s.p2m_size:
            t.append(f"p2m_size {s.p2m_size:#x} ({s.p2m_size} pages, {_size(s.p2m_size * PAGE)})  ")
        t.append(f"t = {s.t:.3f} s  ")
        t.append("phase ")
        t.append(s.phase, style="bold magenta" if s.phase in ("suspended", "final") else "bold")
        if s.phase_detail and s.phase not in ("done",):
            t.append(f" ({s.phase_detail})", style="dim")
        t.append(f"  speed {'max' if s.speed is None else f'{s.speed:g}x'}", style="dim")
        if s.outcome:
            t.append(f"  {s.outcome.upper()}", style="bold green" if s.outcome == Outcome.COMPLETED else "bold red")
        if s.verify is not None:
            # The verdict: does the destination match the source as it stood at suspend?
            t.append("\n")
            if s.verify.get("ok"):
                t.append("destination VERIFIED", style="bold green")
            else:
                t.append(f"destination DIVERGED: {s.verify.get('missing_pages', 0):,} missing, "
                         f"{s.verify.get('stale_pages', 0):,} stale", style="bold red")
        return Panel(t, box=box.ROUNDED, padding=(0, 1))

    def progress_panel(self, width: int = 96) -> RenderableType:
        s = self.state
        if not s.cur_iteration:
            return Panel(Text("waiting for the first pass", style="dim"), title="pass", title_align="left")
        total = max(s.cur_entries, 1)
        head = Text(f"pass {s.cur_iteration} ({s.cur_phase})  dirty_count {s.cur_dirty_count}  ")
        head.append(f"{s.cur_walked}/{s.cur_entries} PFNs  ", style="bold")
        head.append(f"data {s.cur_pages}  ")
        head.append(f"XTAB {s.cur_xtab}", style="red" if s.cur_xtab else "")
        head.append(f"  {_mib(s.cur_bytes)} MiB")
        if not s.in_pass:
            head.append("  (done)", style="dim")
        bar = ProgressBar(total=total, completed=min(s.cur_walked, total), width=width)
        return Panel(Group(head, bar), title="current pass", title_align="left", padding=(0, 1))

    def pass_table_panel(self, max_rows: int | None = None, compact: bool = False,
                         title: str | None = "passes", narrow: bool = False) -> RenderableType:
        s = self.state
        rows = list(s.rounds)
        live = None
        if s.in_pass:
            live = {"iteration": s.cur_iteration, "phase": s.cur_phase, "dirty_count": s.cur_dirty_count,
                    "pfns_walked": s.cur_walked, "pages_sent": s.cur_pages, "xtab_sent": s.cur_xtab,
                    "bytes": s.cur_bytes, "start_s": s.cur_start, "end_s": s.t,
                    "balloon_out": s.cur_balloon_out, "balloon_in": s.cur_balloon_in}
        return pass_table(rows, live=live, max_rows=max_rows or self.max_pass_rows, compact=compact,
                          title=title, narrow=narrow)

    def counters_panel(self) -> RenderableType:
        s = self.state
        g = Table.grid(padding=(0, 1))
        g.add_column(style="dim")
        g.add_column(justify="right")
        c = s.counters
        order = ("marks_dirty", "marks_clean", "logdirty_nodes", "dirty_count", "failed_allocs",
                 "populated_pages", "pod_entries", "dropped_writes", "write_faults")
        for k in order:
            if k in c:
                val = str(c[k])
                if k == "logdirty_nodes":
                    val += f" (peak {s.nodes_peak})"
                g.add_row(k, Text(val, style="bold red" if k == "failed_allocs" and c[k] else ""))
        for k in sorted(set(c) - set(order) - {"logdirty_nodes_peak"}):
            g.add_row(k, str(c[k]))
        if s.last_clean:
            lc = s.last_clean
            g.add_row("last " + lc["op"] + (" FINAL" if lc["final"] else ""),
                      f"dirty {lc['dirty_count']} faults {lc['fault_count']}")
        if not c and not s.last_clean:
            g.add_row("no sample yet", "")
        return Panel(g, title="hypervisor", title_align="left", box=box.ROUNDED, width=40)

    def balloon_panel(self) -> RenderableType:
        s = self.state
        g = Table.grid(padding=(0, 1))
        g.add_column(style="dim")
        g.add_column()
        tgt = "-" if s.balloon_target is None else f"{int(s.balloon_target)} pages"
        g.add_row("target", tgt)
        g.add_row("pages out", f"{s.pages_out} ({_size(s.pages_out * PAGE)})")
        g.add_row("decrease", f"{s.decrease_pages} pages in {s.decrease_ops} ops")
        g.add_row("populate", f"{s.populate_pages} pages in {s.populate_ops} ops")
        out_, in_ = s.balloon_during_passes
        g.add_row("in passes", f"-{out_}/+{in_} (bal -/+ summed)")
        if s.balloon_stalled:
            g.add_row("status", Text(f"stalled: {s.balloon_stalled}", style="bold yellow"))
        body: list[RenderableType] = [g]
        if s.recent:
            body.append(Text("recent", style="dim"))
            for t, line in s.recent:
                body.append(Text(f"{t:.3f}s {line}", overflow="ellipsis", no_wrap=True))
        return Panel(Group(*body), title="balloon", title_align="left", box=box.ROUNDED, width=40)

    # ------------------------------------------------------------------ summary

    def summary(self) -> dict[str, Any]:
        """The run as a report-shaped dict (see ``migrate/run/report.py``), from events alone.

        ``totals.bytes`` counts PAGE_DATA only and times end at "End of stream" (the
        events carry neither the stream's header bytes nor the link latency); prefer
        the real report when there is one.
        """
        with self._lock:
            s = self.state
            live = [r for r in s.rounds if r["phase"] != "verify"]
            t0 = s.t_start if s.t_start is not None else (s.rounds[0]["start_s"] if s.rounds else 0.0)
            t_end = s.t_done if s.t_done is not None else s.t
            totals = {"pages_sent": sum(r["pages_sent"] for r in live),
                      "xtab_sent": sum(r["xtab_sent"] for r in live),
                      "broken_sent": sum(r.get("broken_sent", 0) for r in live),
                      "bytes": sum(r["bytes"] for r in live),
                      "iterations": sum(1 for r in live if r["phase"] == "live"),
                      "total_time_s": t_end - t0,
                      "downtime_s": (t_end - s.t_suspend) if s.t_suspend is not None else 0.0}
            hv = dict(s.counters)
            hv.setdefault("logdirty_nodes_peak", s.nodes_peak)
            return {"scenario": s.scenario, "seed": s.seed, "behaviour": s.behaviour,
                    "policy": {"name": s.policy, "params": dict(s.policy_params)},
                    "outcome": s.outcome or s.phase, "error": s.message or None,
                    "p2m_size": s.p2m_size, "rounds": [dict(r) for r in s.rounds],
                    "totals": totals, "hypervisor": hv, "verify": s.verify}


def _round_dict(r: RoundStats | dict) -> dict[str, Any]:
    return dict(r) if isinstance(r, dict) else r.as_dict()


# ----------------------------------------------------------------------------- pieces


def _size(nbytes: float) -> str:
    for unit, div in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= div:
            return f"{nbytes / div:.1f} {unit}"
    return f"{int(nbytes)} B"


def _mib(nbytes: float) -> str:
    return f"{nbytes / MIB:.2f}"


def _policy_text(name: str, params: dict[str, Any] | None) -> str:
    if not params:
        return name or "?"
    return f"{name or '?'} (" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"


PASS_COLUMNS = (("#", "right"), ("phase", "left"), ("dirty_count", "right"),
                ("walked", "right"), ("data", "right"), ("XTAB", "right"),
                ("MiB", "right"), ("time s", "right"), ("bal -/+", "right"))
# 80 columns: shorter names, no "walked" (data + XTAB + BROKEN add up to it)
COMPACT_COLUMNS = (("#", "right"), ("phase", "left"), ("dirty", "right"), ("data", "right"),
                   ("XTAB", "right"), ("MiB", "right"), ("s", "right"), ("bal -/+", "right"))


def pass_table(rounds: Iterable[dict[str, Any]], *, live: dict[str, Any] | None = None,
               max_rows: int | None = None, title: str | None = "passes",
               compact: bool = False, narrow: bool = False) -> Table:
    """One row per pass (``RoundStats`` fields); the pass in flight in italics.
    ``compact`` fits 80 columns, ``narrow`` (compact without the time column) half of
    120: no column is ever cut to an ellipsis."""
    tbl = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1),
                show_edge=False, pad_edge=False)
    cols = COMPACT_COLUMNS if compact or narrow else PASS_COLUMNS
    drop = cols.index(("s", "right")) if narrow else None
    for i, (name, just) in enumerate(cols):
        if i != drop:
            tbl.add_column(name, justify=just, no_wrap=True, overflow="fold", min_width=len(name))
    rows = [_round_dict(r) for r in rounds]
    if max_rows is not None and len(rows) + (live is not None) > max_rows:
        keep = max(max_rows - (live is not None) - 1, 1)
        hidden = len(rows) - keep
        rows = rows[-keep:]
        tbl.caption = f"… {hidden} earlier passes not shown"
        tbl.caption_justify = "left"
    def cells(r):
        c = _row_cells(r, compact or narrow)
        return c if drop is None else c[:drop] + c[drop + 1:]

    for r in rows:
        tbl.add_row(*cells(r))
    if live is not None:
        tbl.add_row(*cells(live), style="italic yellow")
    return tbl


def _row_cells(r: dict[str, Any], compact: bool = False) -> list[RenderableType]:
    xtab = int(r.get("xtab_sent", 0))
    dur = float(r.get("end_s", 0.0)) - float(r.get("start_s", 0.0))
    bal = f"{r['balloon_out']}/{r['balloon_in']}" if "balloon_out" in r else ""
    cells = [str(r.get("iteration", "")), str(r.get("phase", "")), str(r.get("dirty_count", "")),
             str(r.get("pfns_walked", "")), str(r.get("pages_sent", "")),
             Text(str(xtab), style="bold red" if xtab else ""), _mib(int(r.get("bytes", 0))),
             f"{dur:.3f}", bal]
    if compact:
        del cells[3]
        cells[-3] = f"{int(r.get('bytes', 0)) / MIB:.0f}"
        cells[-2] = f"{dur:.2f}"
    return cells


def render_gfnmap(gmap: GfnMap, *, title: str | None = None, width: int | None = None,
                  height: int | None = None, panel: bool = True) -> RenderableType:
    """The GFN map as coloured glyph cells, row labels (first GFN, hex) and a legend.

    ``width`` x ``height`` (characters, inside any border) bound the drawing: adjacent
    cells are pooled (``GfnMap.cells_binned``) until the rows fit, so a small terminal
    shows the same map with fewer, wider cells. The legend lists every state present,
    with its count in PFNs."""
    if not gmap.ncells:
        body = Text("no address space yet", style="dim")
        return Panel(body, title="GFN map", title_align="left") if panel else body
    label = len(f"{gmap.p2m_size:x}") + 1
    totals = gmap.totals()
    legend_lines = _legend_lines(gmap, totals, (width or 100))
    columns = gmap.columns
    if width is not None:
        columns = min(max(width - label, 8), 128)       # any width: rows need not be round
    rows_budget = None if height is None else max(height - len(legend_lines), 1)
    k = 1
    while rows_budget is not None and -(-gmap.ncells // (k * columns)) > rows_budget and k < gmap.ncells:
        k *= 2
    cells = gmap.cells_binned(k)
    step = k * gmap.cell_pfns
    lines = Text(no_wrap=True, overflow="crop")
    glyph = {e.state: (e.glyph, e.colour) for e in LEGEND}
    for r in range(-(-cells.size // columns)):
        row = cells[r * columns:(r + 1) * columns]
        lines.append(f"{r * columns * step:0{label - 1}x} ", style="dim")
        # runs of one state become one styled span: cheap to render
        cut = np.flatnonzero(np.diff(row)) + 1
        for seg in np.split(row, cut):
            g, colour = glyph[int(seg[0])]
            lines.append(g * seg.size, style=colour)
        lines.append("\n")
    lines.rstrip()
    legend = Text(no_wrap=True, overflow="crop")
    for i, ln in enumerate(legend_lines):
        if i:
            legend.append("\n")
        legend.append_text(ln)
    title = title or (f"GFN map  {cells.size} cells x {step} PFNs"
                      + ("" if gmap.dense else " (approximate)"))
    body = Group(lines, legend)
    return Panel(body, title=title, title_align="left", box=box.ROUNDED) if panel else body


def _legend_lines(gmap: GfnMap, totals: dict[str, int], width: int) -> list[Text]:
    """Legend entries (glyph, name, PFN count) of the states present, packed into lines
    no wider than ``width``; an entry is never split."""
    entries = []
    for e in LEGEND:
        n = totals[e.name]
        if n or e.state in (SENT_STATE, PENDING_STATE):
            t = Text()
            t.append(e.glyph, style=e.colour)
            t.append(f" {e.name} {n:,}")
            entries.append(t)
    if gmap.unplaced_stale:
        entries.append(Text(f"({gmap.unplaced_stale:,} stale drawn as sent: written unlogged)", style="dim"))
    lines: list[Text] = [Text()]
    for t in entries:
        if lines[-1].cell_len and lines[-1].cell_len + 2 + t.cell_len > width:
            lines.append(Text())
        if lines[-1].cell_len:
            lines[-1].append("  ")
        lines[-1].append_text(t)
    return lines


# ----------------------------------------------------------------------------- live


class LiveDashboard:
    """``with LiveDashboard(dash): ...`` redraws ``dash`` ~10 times a second on a terminal.

    Piped output gets only the last frame (rich's behaviour); use ``progress.py``
    there instead.
    """

    def __init__(self, dashboard: Dashboard, *, console: Console | None = None,
                 refresh_per_second: float = 10, transient: bool = False):
        from rich.live import Live

        self.dashboard = dashboard
        self.console = console or dashboard.console or Console()
        self._live = Live(console=self.console, get_renderable=dashboard.render,
                          refresh_per_second=refresh_per_second, transient=transient,
                          redirect_stdout=True, redirect_stderr=True)

    def __enter__(self) -> Dashboard:
        self._live.__enter__()
        return self.dashboard

    def __exit__(self, *exc) -> None:
        self._live.__exit__(*exc)

    def refresh(self) -> None:
        self._live.refresh()


# ----------------------------------------------------------------------------- summary


def render_summary(result: dict[str, Any], *, passes: bool = True) -> RenderableType:
    """The end-of-run summary from a report-shaped dict (``report.build_report`` or
    ``Dashboard.summary()``): header, passes, totals, hypervisor counters, verify.
    ``passes=False`` leaves out the pass table (the dashboard's last frame shows it)."""
    r = result or {}
    pol = r.get("policy")
    name, params = (pol.get("name"), pol.get("params")) if isinstance(pol, dict) else (pol, r.get("policy_params"))
    head = Text()
    head.append(f"{r.get('scenario', '?')}", style="bold cyan")
    head.append(f"  seed {r.get('seed', '?')}  behaviour ")
    beh = r.get("behaviour", "?")
    head.append(str(beh), style="bold red" if beh == "pre-fix" else "bold green")
    head.append(f"  policy {_policy_text(name, params)}")
    outcome = r.get("outcome") or "?"
    head.append(f"  {outcome}", style="bold green" if outcome == "completed" else "bold red")
    parts: list[RenderableType] = [head]
    if r.get("error"):
        parts.append(Text(f"error: {r['error']}", style="red"))
    if passes:
        parts.append(pass_table(r.get("rounds") or [], title="passes"))
    tot = r.get("totals") or {}
    parts.append(Text(
        f"totals: {tot.get('iterations', 0)} live passes, {tot.get('pages_sent', 0)} data pages, "
        f"{tot.get('xtab_sent', 0)} XTAB, {_mib(int(tot.get('bytes', 0)))} MiB, "
        f"total {float(tot.get('total_time_s', 0.0)):.3f} s, downtime {float(tot.get('downtime_s', 0.0)):.3f} s"))
    hv = r.get("hypervisor") or {}
    if hv:
        parts.append(Text(
            "hypervisor: " + ", ".join(f"{k} {hv[k]}" for k in
                                       ("marks_dirty", "marks_clean", "logdirty_nodes_peak", "failed_allocs")
                                       if k in hv)))
    parts.append(_verify_text(r.get("verify")))
    return Group(*parts)


def _verify_text(v: dict[str, Any] | None) -> Text:
    if not v:
        return Text("verify: not run", style="dim")
    ok = bool(v.get("ok"))
    t = Text("verify: ")
    t.append("OK" if ok else "FAILED", style="bold green" if ok else "bold red")
    t.append(f" missing {v.get('missing_pages', 0)}, stale {v.get('stale_pages', 0)}, "
             f"extra {v.get('extra_pages', 0)}")
    return t


__all__ = ["Dashboard", "DashboardState", "LiveDashboard", "pass_table", "render_gfnmap",
           "render_summary", "LEGEND_BY_STATE"]
