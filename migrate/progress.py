"""Plain progress lines for logs, pipes and ``--no-dashboard``.

Modelled on what libxenguest prints through ``xc_report_progress_single`` /
``xc_report_progress_step`` (``tools/libs/guest/xg_sr_save.c``) as ``xl migrate`` shows
them: "xc: info: Saving domain 1, type x86 HVM", "Frames iteration N" with
``written/entries``, "Domain now suspended", "End of stream". xmig's own lines (scenario,
balloon, verify) start with ``xmig:``. Only virtual times appear, so the same events
always give the same text; no escape codes, ever.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

import numpy as np

from .events import (BatchSent, Event, GuestNote, MemoryOp, MigrationFinished, PassEnded,
                     PassStarted, PhaseChanged, RunStarted, SaveSetup, VerifyDone)

PAGE = 4096
MIB = 1 << 20


class PlainProgress:
    """Event listener writing one line per notable event to ``file`` (default stdout).

    Passes print at their end; a pass of at least ``step_min_entries`` PFNs also prints
    when it crosses each ``step_fraction`` of its entries. Bursts of balloon hypercalls
    are folded into one line, written before the next other line.
    """

    def __init__(self, file: TextIO | None = None, *, domid: int = 1, step_fraction: float = 0.25,
                 step_min_entries: int = 65536):
        self.file = file
        self.domid = domid
        self.step_fraction = float(step_fraction)
        self.step_min_entries = int(step_min_entries)
        self.max_iterations: int | None = None
        self._prefix = ""
        self._entries = 0
        self._next_mark = None
        self._ops: dict[str, list[int]] = {}     # op -> [ops, pages done, pages asked]
        self._ops_t: float | None = None

    def _out(self) -> TextIO:
        return self.file if self.file is not None else sys.stdout

    def _line(self, text: str) -> None:
        self._flush_ops()
        self._write(text)

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
        self._write(f"xmig: balloon: t={self._ops_t:.3f} s " + ", ".join(parts))
        self._ops.clear()
        self._ops_t = None

    # ------------------------------------------------------------------ events

    def __call__(self, ev: Event) -> None:
        if isinstance(ev, BatchSent):
            if self._next_mark is not None and ev.walked >= self._next_mark and ev.walked < ev.entries:
                pct = int(100 * ev.walked // max(ev.entries, 1))
                self._line(f"xc: progress: {self._prefix}: {ev.walked}/{ev.entries} pages ({pct}%)")
                step = max(int(ev.entries * self.step_fraction), 1)
                self._next_mark = (ev.walked // step + 1) * step
        elif isinstance(ev, MemoryOp):
            if ev.op in ("decrease_reservation", "populate_physmap"):
                acc = self._ops.setdefault(ev.op, [0, 0, 0])
                acc[0] += 1
                acc[1] += max(int(ev.rc), 0)
                acc[2] += int(ev.nr)
                if self._ops_t is None:
                    self._ops_t = float(ev.t)
        elif isinstance(ev, PassStarted):
            self._prefix = self._pass_prefix(ev.iteration, ev.phase)
            self._entries = int(ev.entries)
            step = max(int(ev.entries * self.step_fraction), 1)
            self._next_mark = step if ev.entries >= self.step_min_entries else None
        elif isinstance(ev, PassEnded):
            st = ev.stats
            self._next_mark = None
            dur = st.end_s - st.start_s
            self._line(f"xc: progress: {self._prefix}: {st.pfns_walked}/{self._entries} pages, "
                       f"{st.pages_sent} data, {st.xtab_sent} XTAB, {st.bytes / MIB:.2f} MiB, "
                       f"{dur:.3f} s")
        elif isinstance(ev, GuestNote):
            self._guest_note(ev)
        elif isinstance(ev, PhaseChanged):
            if ev.phase == "suspended":
                self._line(f"xc: progress: Domain now suspended (t={ev.t:.3f} s)")
            elif ev.phase == "done":
                self._line(f"xc: progress: End of stream (t={ev.t:.3f} s)")
            elif ev.phase == "aborted":
                self._line(f"xc: error: Save failed: {ev.detail}" if ev.detail else "xc: error: Save failed")
            elif ev.phase == "resumed":
                self._line(f"xc: info: {ev.detail or 'source domain resumed'}")
        elif isinstance(ev, RunStarted):
            params = dict(ev.policy_params or {})
            mi = params.get("max_iterations")
            self.max_iterations = int(mi) if isinstance(mi, (int, np.integer)) else None
            ptxt = ev.policy + (" (" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")" if params else "")
            self._line(f"xmig: scenario {ev.scenario}, seed {ev.seed}, behaviour {ev.behaviour}, "
                       f"policy {ptxt}")
            self._line(f"xc: info: Saving domain {self.domid}, type x86 HVM")
        elif isinstance(ev, SaveSetup):
            self._line(f"xc: info: p2m_size {ev.p2m_size:#x} ({ev.p2m_size} pages)")
        elif isinstance(ev, VerifyDone):
            v = ev.stats
            self._line(f"xmig: verify: {'OK' if v.ok else 'FAILED'}, missing {v.missing_pages}, "
                       f"stale {v.stale_pages}, extra {v.extra_pages}")
        elif isinstance(ev, MigrationFinished):
            msg = f": {ev.message}" if ev.message else ""
            self._line(f"xmig: migration {ev.outcome} at t={ev.t:.3f} s{msg}")

    on_event = __call__

    def close(self) -> None:
        """Write any balloon operations still folded."""
        self._flush_ops()

    def _pass_prefix(self, iteration: int, phase: str) -> str:
        if phase == "verify":
            return "Frames verify"
        if phase == "final":
            return f"Frames iteration {iteration} (final)"
        if self.max_iterations is not None:
            return f"Frames iteration {iteration} of {self.max_iterations}"
        return f"Frames iteration {iteration}"

    def _guest_note(self, ev: GuestNote) -> None:
        d = ev.detail if isinstance(ev.detail, dict) else {}
        if ev.what == "balloon_target":
            tgt = next((d[k] for k in ("target_pages", "target", "pages", "value")
                        if isinstance(d.get(k), (int, float, np.integer)) and not isinstance(d.get(k), bool)),
                       None)
            if tgt is not None:
                self._line(f"xmig: balloon: t={ev.t:.3f} s target {int(tgt)} pages "
                           f"({int(tgt) * PAGE / MIB:.0f} MiB)")
            else:
                self._line(f"xmig: balloon: t={ev.t:.3f} s new target")
        elif ev.what == "balloon_stalled":
            why = d.get("reason") or d.get("message") or d.get("error") or "no progress"
            self._line(f"xmig: balloon: t={ev.t:.3f} s stalled: {why}")


def print_summary(result: dict[str, Any], file: TextIO | None = None, *, width: int = 100) -> None:
    """The final summary (``dashboard.render_summary``) as plain text, no escape codes."""
    from rich.console import Console

    from .dashboard import render_summary

    con = Console(file=file if file is not None else sys.stdout, force_terminal=False, no_color=True,
                  color_system=None, width=width, highlight=False, emoji=False, soft_wrap=False)
    con.print(render_summary(result))


__all__ = ["PlainProgress", "print_summary"]
