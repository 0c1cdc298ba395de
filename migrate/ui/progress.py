"""Plain progress lines for logs, pipes and ``--no-dashboard``.

Modelled on what libxenguest prints through ``xc_report_progress_single`` /
``xc_report_progress_step`` (``tools/libs/guest/xg_sr_save.c``) as ``xl migrate`` shows
them: "xc: info: Saving domain 1, type x86 HVM", "Frames iteration N" with
``written/entries``, "Domain now suspended", "End of stream". xmig's own lines (scenario,
balloon, verify) start with ``xmig:``. Only virtual times appear, so the same events
always give the same text; no escape codes, ever.

The lines read the run from the one fold of its events (``migrate.events.fold``); the
summary printed at the end (``render_summary``, ``print_summary``) and the pass table
the app shows too (``pass_table``) are drawn from a report (``report.build_report``).
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, TextIO

import numpy as np

from hypervisor.abi import MAX_BATCH_SIZE
from migrate.events.fold import RunFold
from migrate.events import (BalloonNote, BalloonStalled, BalloonTarget, BatchSent, CleanDone, Event, MemoryOp,
                            MigrationFinished, PassEnded, PassPhase, PassStarted, Phase, PhaseChanged, RoundStats,
                            RunStarted, RunSummary, SaveSetup, TrackedWrites, VerifyDone)

PAGE = 4096
MIB = 1 << 20

#: Toolstack events published after a call that ran the guest up to that call's time.
_AFTER_A_CALL = (BatchSent, CleanDone, SaveSetup)


class PlainProgress:
    """Event listener writing one line per notable event to ``file`` (default stdout).

    Passes print at their end; a pass of at least ``step_min_entries`` PFNs also prints
    when it crosses each ``step_fraction`` of its entries. Bursts of balloon hypercalls
    are folded into one line.

    Lines come out in virtual-time order. The guest runs only up to the time of the
    toolstack's latest call, so its hypercalls between that call and the next are
    published after toolstack events stamped later (a pass ends at t=9.46, the balloon
    op at t=9.44 is served when the next CLEAN runs the guest). So lines wait until the
    next event that comes after a call into the hypervisor (a batch, a CLEAN, suspend):
    by then every guest event up to the time of the previous toolstack event is in.
    """

    def __init__(self, file: TextIO | None = None, *, domid: int = 1, step_fraction: float = 0.25,
                 step_min_entries: int = 65536, pages: bool = False):
        self.file = file
        self.domid = domid
        self.step_fraction = float(step_fraction)
        self.step_min_entries = int(step_min_entries)
        #: the run as the events told it so far (fed after each event's lines are made);
        #: ``pages``: with the page ledger, so it rebuilds the whole report (``watch``)
        self.run = RunFold(pages=pages)
        self._prefix = ""
        self._next_mark = None
        self._ops: dict[str, list[int]] = {}     # op -> [ops, pages done, pages asked]
        self._ops_t: float | None = None
        self._pending: list[tuple[float, int, str]] = []   # (t, order, text) not yet written
        self._order = 0
        self._engine_t = float("-inf")       # t of the latest toolstack event

    def _out(self) -> TextIO:
        return self.file if self.file is not None else sys.stdout

    def _line(self, text: str, t: float) -> None:
        self._flush_ops()
        self._queue(float(t), text)

    def _queue(self, t: float, text: str) -> None:
        self._pending.append((t, self._order, text))
        self._order += 1

    def _emit(self, upto: float = float("inf")) -> None:
        """Write the waiting lines stamped at or before ``upto``, in time order."""
        if not self._pending:
            return
        self._pending.sort()
        # Balloon ops still being folded come before any line stamped after them.
        fold_t = float("inf") if self._ops_t is None else self._ops_t
        k = 0
        while k < len(self._pending) and self._pending[k][0] <= upto and self._pending[k][0] < fold_t:
            self._write(self._pending[k][2])
            k += 1
        del self._pending[:k]

    def _write(self, text: str) -> None:
        f = self._out()
        f.write(text + "\n")
        f.flush()

    def _flush_ops(self) -> None:
        if not self._ops:
            return
        parts = []
        for op, (n, done, asked) in self._ops.items():
            pages = f"{done}" if done == asked else f"{done}/{asked}"
            parts.append(f"{op} {pages} pages ({n} op{'s' if n != 1 else ''})")
        self._queue(self._ops_t, f"xmig: balloon: t={self._ops_t:.3f} s " + ", ".join(parts))
        self._ops.clear()
        self._ops_t = None

    # ------------------------------------------------------------------ events

    def __call__(self, ev: Event) -> None:
        guest_side = isinstance(ev, (MemoryOp, BalloonNote, TrackedWrites))
        if (isinstance(ev, _AFTER_A_CALL) and getattr(ev, "hole", None) is None) or \
                (isinstance(ev, PhaseChanged) and ev.phase == Phase.SUSPENDED):
            self._emit(self._engine_t)
        self._fold(ev)
        if not guest_side:
            self._engine_t = max(self._engine_t, float(ev.t))
        self.run(ev)
        if isinstance(ev, MigrationFinished):
            self._flush_ops()
            self._emit()

    on_event = __call__

    def _fold(self, ev: Event) -> None:
        if isinstance(ev, BatchSent):
            if self._next_mark is None or ev.walked < self._next_mark:
                return
            if ev.ends is None:
                self._mark(ev.walked, ev.entries, ev.t)
                return
            # Several batches in one event (a run with nothing to pace): each mark is
            # stated at the batch that crossed it, as one event per batch would state it.
            n = np.asarray(ev.pfns).size
            ends = np.asarray(ev.ends, dtype=np.float64)
            walked = ev.walked - n + np.minimum(np.arange(1, ends.size + 1) * MAX_BATCH_SIZE, n)
            j = int(np.searchsorted(walked, self._next_mark))
            while self._next_mark is not None and j < walked.size and walked[j] < ev.entries:
                self._mark(int(walked[j]), ev.entries, float(ends[j]))
                j = int(np.searchsorted(walked, self._next_mark))
        elif isinstance(ev, MemoryOp):
            if ev.op in ("decrease_reservation", "populate_physmap"):
                acc = self._ops.setdefault(ev.op, [0, 0, 0])
                acc[0] += 1
                acc[1] += max(int(ev.rc), 0)
                acc[2] += int(ev.nr)
                if self._ops_t is None:
                    self._ops_t = float(ev.t)
        elif isinstance(ev, PassStarted):
            last = self.run.state.current          # the pass before this one
            before = last.iteration if last is not None and last.phase != PassPhase.VERIFY else 0
            if ev.phase != PassPhase.VERIFY and ev.iteration > before + 1 and before:
                # xg_sr_save.c's send_memory_live does x++ on every turn of its loop, and
                # sends nothing on a turn whose CLEAN found dirty_count 0.
                skipped = ", ".join(str(i) for i in range(before + 1, ev.iteration))
                self._line(f"xmig: iteration {skipped} sent nothing: the CLEAN after pass "
                           f"{before} found no dirty pages, and Xen's loop counter "
                           "still counted the turn", ev.t)
            self._prefix = self._pass_prefix(ev.iteration, ev.phase)
            step = max(int(ev.entries * self.step_fraction), 1)
            self._next_mark = step if ev.entries >= self.step_min_entries else None
        elif isinstance(ev, PassEnded):
            st = ev.stats
            self._next_mark = None
            dur = st.end_s - st.start_s
            entries = self.run.state.current.entries if self.run.state.current is not None else 0
            self._line(f"xc: progress: {self._prefix}: {st.pfns_walked}/{entries} pages, "
                       f"{st.pages_sent} data, {st.xtab_sent} XTAB, {st.bytes / MIB:.2f} MiB, "
                       f"{dur:.3f} s", ev.t)
        elif isinstance(ev, BalloonNote):
            self._balloon_note(ev)
        elif isinstance(ev, PhaseChanged):
            if ev.phase == Phase.SUSPENDED:
                self._line(f"xc: progress: Domain now suspended (t={ev.t:.3f} s)", ev.t)
            elif ev.phase == Phase.DONE:
                self._line(f"xc: progress: End of stream (t={ev.t:.3f} s)", ev.t)
            elif ev.phase == Phase.ABORTED:
                self._line(f"xc: error: Save failed: {ev.detail}" if ev.detail else "xc: error: Save failed", ev.t)
            elif ev.phase == Phase.RESUMED:
                self._line(f"xc: info: {ev.detail or 'source domain resumed'}", ev.t)
            elif ev.phase in (Phase.CHECKPOINT, Phase.FAILOVER):
                self._line(f"xmig: {ev.phase}: {ev.detail}", ev.t)
        elif isinstance(ev, RunStarted):
            params = dict(ev.policy_params or {})
            ptxt = ev.policy + (" (" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")" if params else "")
            self._line(f"xmig: scenario {ev.scenario}, seed {ev.seed}, behaviour {ev.behaviour}, "
                       f"policy {ptxt}", ev.t)
            mixed = {s: b for s, b in (ev.sites or {}).items() if b != ev.behaviour}
            if mixed:
                self._line("xmig: call sites: " + ", ".join(f"{s} {b}" for s, b in ev.sites.items()), ev.t)
            self._line(f"xc: info: Saving domain {self.domid}, type x86 HVM", ev.t)
        elif isinstance(ev, SaveSetup):
            self._line(f"xc: info: p2m_size {ev.p2m_size:#x} ({ev.p2m_size} pages)", ev.t)
        elif isinstance(ev, VerifyDone):
            v = ev.stats
            self._line(f"xmig: verify: {'OK' if v.ok else 'FAILED'}, missing {v.missing_pages}, "
                       f"stale {v.stale_pages}, extra {v.extra_pages}", ev.t)
        elif isinstance(ev, RunSummary):
            n = int((ev.restore or {}).get("pages_populated_by_verify") or 0)
            if n:
                self._line(f"xmig: verify: the VERIFY pass populated {n} pages no earlier pass sent (restore "
                           "populates before it compares, as xg_sr_restore.c does, and copies nothing): "
                           "they now hold zeroed pages, so those the guest never wrote since it got them "
                           "back zeroed match the source and no longer count as missing; those it wrote "
                           f"count as stale. Xen's own VERIFY check saw "
                           f"{int(ev.restore.get('verify_mismatches') or 0)} mismatching pages", ev.t)
        elif isinstance(ev, MigrationFinished):
            msg = f": {ev.message}" if ev.message else ""
            self._line(f"xmig: migration {ev.outcome} at t={ev.t:.3f} s{msg}", ev.t)

    def close(self) -> None:
        """Write the balloon operations still folded and every waiting line."""
        self._flush_ops()
        self._emit()

    def _mark(self, walked: int, entries: int, t: float) -> None:
        """The pass has walked past its next step mark: say how far, once."""
        if walked >= entries:
            return              # the pass's own line says it
        pct = int(100 * walked // max(entries, 1))
        self._line(f"xc: progress: {self._prefix}: {walked}/{entries} pages ({pct}%)", t)
        step = max(int(entries * self.step_fraction), 1)
        self._next_mark = (walked // step + 1) * step

    def _pass_prefix(self, iteration: int, phase: str) -> str:
        if phase == "verify":
            return "Frames verify"
        if phase == "final":
            return f"Frames iteration {iteration} (final)"
        if phase == "checkpoint":
            return f"Checkpointed save {iteration}"
        if self.max_iterations is not None:
            return f"Frames iteration {iteration} of {self.max_iterations}"
        return f"Frames iteration {iteration}"

    @property
    def max_iterations(self) -> int | None:
        """The policy's iteration cap, when it has one (Xen's ``max_iterations``)."""
        mi = self.run.state.policy_params.get("max_iterations")
        return int(mi) if isinstance(mi, (int, np.integer)) else None

    def _balloon_note(self, ev: BalloonNote) -> None:
        if isinstance(ev, BalloonTarget):
            tgt = int(ev.target_pages)
            self._line(f"xmig: balloon: t={ev.t:.3f} s target {tgt} pages ({tgt * PAGE / MIB:.0f} MiB)", ev.t)
        elif isinstance(ev, BalloonStalled):
            self._line(f"xmig: balloon: t={ev.t:.3f} s stalled: {ev.reason}", ev.t)


#: A pipe has no width: the plain summary is laid out as wide as its rows need, up to this.
PLAIN_WIDTH = 10_000


def print_summary(result: dict[str, Any], file: TextIO | None = None, *, width: int = PLAIN_WIDTH) -> None:
    """The final summary (``render_summary``) as plain text, no escape codes, never
    wrapped in the middle of a row (trailing blanks stripped)."""
    import io

    from rich.console import Console

    buf = io.StringIO()
    con = Console(file=buf, force_terminal=False, no_color=True, color_system=None, width=width,
                  highlight=False, emoji=False, soft_wrap=False)
    con.print(render_summary(result))
    out = file if file is not None else sys.stdout
    out.write("".join(line.rstrip() + "\n" for line in buf.getvalue().splitlines()))
    out.flush()


# ----------------------------------------------------------------------------- the summary and the pass table


def mib(nbytes: float) -> str:
    return f"{nbytes / MIB:.2f}"


def size_text(nbytes: float) -> str:
    for unit, div in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= div:
            return f"{nbytes / div:.1f} {unit}"
    return f"{int(nbytes)} B"


def policy_text(name: str | None, params: dict[str, Any] | None) -> str:
    """``xen (max_iterations=5, dirty_threshold=50)``: a policy and its parameters."""
    if not params:
        return name or "?"
    return f"{name or '?'} (" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"


PASS_COLUMNS = (("#", "right"), ("phase", "left"), ("dirty_count", "right"),
                ("walked", "right"), ("data", "right"), ("XTAB", "right"),
                ("MiB", "right"), ("time s", "right"), ("bal -/+", "right"))
# 80 columns: shorter names, no "walked" (data + XTAB + BROKEN add up to it)
COMPACT_COLUMNS = (("#", "right"), ("phase", "left"), ("dirty", "right"), ("data", "right"),
                   ("XTAB", "right"), ("MiB", "right"), ("s", "right"), ("bal -/+", "right"))


def pass_table(rounds: Iterable[RoundStats | dict[str, Any]], *, live: RoundStats | dict[str, Any] | None = None,
               max_rows: int | None = None, title: str | None = "passes",
               compact: bool = False, narrow: bool = False):
    """One row per pass (``RoundStats`` or its dict); the pass in flight in italics.
    ``compact`` fits 80 columns, ``narrow`` (compact without the time column) half of
    120: no column is ever cut to an ellipsis."""
    from rich import box
    from rich.table import Table

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
        tbl.add_row(*cells(_round_dict(live)), style="italic yellow")
    return tbl


def _round_dict(r: RoundStats | dict[str, Any]) -> dict[str, Any]:
    return dict(r) if isinstance(r, dict) else r.as_dict()


def _row_cells(r: dict[str, Any], compact: bool = False) -> list:
    from rich.text import Text

    xtab = int(r.get("xtab_sent", 0))
    dur = float(r.get("end_s", 0.0)) - float(r.get("start_s", 0.0))
    bal = f"{r['balloon_out']}/{r['balloon_in']}" if "balloon_out" in r else ""
    cells = [str(r.get("iteration", "")), str(r.get("phase", "")), str(r.get("dirty_count", "")),
             str(r.get("pfns_walked", "")), str(r.get("pages_sent", "")),
             Text(str(xtab), style="bold red" if xtab else ""), mib(int(r.get("bytes", 0))),
             f"{dur:.3f}", bal]
    if compact:
        del cells[3]
        cells[-3] = f"{int(r.get('bytes', 0)) / MIB:.0f}"
        cells[-2] = f"{dur:.2f}"
    return cells


def render_summary(result: dict[str, Any], *, passes: bool = True):
    """The end-of-run summary from a report (``report.build_report``): header, passes,
    totals, hypervisor counters, verify. ``passes=False`` leaves out the pass table."""
    from rich.console import Group
    from rich.text import Text

    r = result or {}
    pol = r.get("policy")
    name, params = (pol.get("name"), pol.get("params")) if isinstance(pol, dict) else (pol, r.get("policy_params"))
    head = Text()
    head.append(f"{r.get('scenario', '?')}", style="bold cyan")
    head.append(f"  seed {r.get('seed', '?')}  behaviour ")
    beh = r.get("behaviour", "?")
    head.append(str(beh), style="bold red" if beh == "pre-fix" else "bold green")
    head.append(f"  policy {policy_text(name, params)}")
    outcome = r.get("outcome") or "?"
    head.append(f"  {outcome}", style="bold green" if outcome == "completed" else "bold red")
    parts: list = [head]
    if r.get("error"):
        parts.append(Text(f"error: {r['error']}", style="red"))
    if passes:
        parts.append(pass_table(r.get("rounds") or [], title="passes"))
    tot = r.get("totals") or {}
    parts.append(Text(
        f"totals: {tot.get('iterations', 0)} live passes, {tot.get('pages_sent', 0)} data pages, "
        f"{tot.get('xtab_sent', 0)} XTAB, {mib(int(tot.get('bytes', 0)))} MiB, "
        f"total {float(tot.get('total_time_s', 0.0)):.3f} s, downtime {float(tot.get('downtime_s', 0.0)):.3f} s"))
    hv = r.get("hypervisor") or {}
    if hv:
        parts.append(Text(
            "hypervisor: " + ", ".join(f"{k} {hv[k]}" for k in
                                       ("marks_dirty", "marks_clean", "logdirty_nodes_peak", "failed_allocs")
                                       if k in hv)))
    parts.append(_verify_text(r.get("verify")))
    return Group(*parts)


def _verify_text(v: dict[str, Any] | None):
    from rich.text import Text

    if not v:
        return Text("verify: not run", style="dim")
    ok = bool(v.get("ok"))
    t = Text("verify: ")
    t.append("OK" if ok else "FAILED", style="bold green" if ok else "bold red")
    t.append(f" missing {v.get('missing_pages', 0)}, stale {v.get('stale_pages', 0)}, "
             f"extra {v.get('extra_pages', 0)}")
    return t


__all__ = ["PlainProgress", "pass_table", "policy_text", "print_summary", "render_summary"]
