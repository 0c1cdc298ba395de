"""The one fold of a run's events into its state: what every consumer reads.

What ``xl migrate`` learns from libxenguest's progress reports
(``xc_report_progress_single`` / ``_step`` in ``tools/libs/guest/xg_sr_save.c``) and
what ``struct precopy_stats`` holds per pass, rebuilt from the event stream alone:
the run's names (scenario, seed, behaviour per call site, policy), the pass in flight
(``send_dirty_pages``' ``written`` out of ``entries``), one ``RoundStats`` per finished
pass, the balloon driver's moves, the hypervisor's counters, the verdict, and the
``RunSummary`` the runner publishes last, so the run's whole report can be rebuilt
from a live stream, an MQTT topic or a log on disk alike.

Pure: no terminal, no clock. The app, the plain progress lines, ``watch`` and
``replay`` all feed one ``RunFold``; the report builder (``migrate/run``) reads it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hypervisor.abi import PFINFO_HAS_DATA, XenBehaviour

from migrate.events.track import PageLedger
from migrate.events.types import (BalloonMoved, BalloonNote, BalloonStalled, BalloonTarget, BatchSent, CleanDone,
                                  CleanOp, CountersSampled, Event, MemoryOp, MigrationFinished, Outcome, PassEnded,
                                  PassPhase, PassStarted, Phase, PhaseChanged, RoundStats, RunStarted, RunSummary,
                                  SaveSetup, VerifyDone, VerifyStats, balloon_moves)

_XTAB = 0xF
#: The balloon calls the pass table's "bal -/+" column counts (``balloon_moves``).
_BALLOON_OPS = ("decrease_reservation", "populate_physmap")


def _runs_pages(runs) -> int:
    a = np.asarray(runs if runs is not None else (), dtype=np.int64)
    if not a.size:
        return 0
    a = a.reshape(-1, 2)
    return int((a[:, 1] - a[:, 0]).clip(min=0).sum())


@dataclass(slots=True)
class PassInFlight:
    """The pass being sent (or the last one, once it ended): the batches so far."""

    iteration: int
    phase: PassPhase
    entries: int              # PFNs the pass's bitmap holds
    dirty_count: int
    start_s: float
    walked: int = 0
    pages: int = 0            # data pages
    xtab: int = 0             # XTAB entries (holes walked in bulk included)
    bytes: int = 0
    balloon_out: int = 0
    balloon_in: int = 0

    def as_round(self, t: float) -> RoundStats:
        """The pass so far as a pass-table row."""
        return RoundStats(iteration=self.iteration, phase=self.phase, start_s=self.start_s, end_s=t,
                          dirty_count=self.dirty_count, pfns_walked=self.walked, pages_sent=self.pages,
                          xtab_sent=self.xtab, bytes=self.bytes, balloon_out=self.balloon_out,
                          balloon_in=self.balloon_in)


@dataclass(slots=True)
class BalloonState:
    """The guest's balloon driver as its notes and the hypervisor's ops tell it."""

    target: int | None = None
    out_at_start: int = 0     # pages ballooned out before the save began
    decrease_ops: int = 0
    decrease_pages: int = 0
    populate_ops: int = 0
    populate_pages: int = 0
    stalled: str = ""
    recent: deque = field(default_factory=lambda: deque(maxlen=6))   # (t, words)

    @property
    def pages_out(self) -> int:
        return self.out_at_start + self.decrease_pages - self.populate_pages


@dataclass(slots=True)
class RunState:
    """Everything the events have said about one run so far (one writer: ``RunFold``)."""

    scenario: str = ""
    seed: int | None = None
    behaviour: str = ""                                       # fixed | pre-fix | mixed
    sites: dict[str, XenBehaviour] = field(default_factory=dict)   # call site -> its behaviour
    policy: str = ""
    policy_params: dict[str, Any] = field(default_factory=dict)
    guest_pages: int = 0
    p2m_size: int = 0
    tracked: tuple[int, ...] = ()
    t: float = 0.0
    t_start: float | None = None
    t_suspend: float | None = None
    t_done: float | None = None
    phase: str = "waiting"
    phase_detail: str = ""
    current: PassInFlight | None = None       # the pass in flight, or the last one
    in_pass: bool = False
    rounds: list[RoundStats] = field(default_factory=list)
    last_clean: CleanDone | None = None
    balloon: BalloonState = field(default_factory=BalloonState)
    counters: dict[str, Any] = field(default_factory=dict)
    nodes_peak: int = 0
    leftover_bits: int = 0        # the report's pages.leftover_bits so far (pre-fix)
    unmarked_additions: int = 0   # the report's pages.unmarked_additions so far (pre-fix)
    verify: VerifyStats | None = None
    outcome: str = ""
    message: str = ""
    summary: RunSummary | None = None         # the runner's last word: the report's facts

    def is_fixed(self, site: str) -> bool:
        """Does the hypervisor run the fixed code at this call site? From the run's own
        per-site mapping (``RunStarted.sites``), else its behaviour when it is one for all."""
        if site in self.sites:
            return self.sites[site] == XenBehaviour.FIXED
        return self.behaviour == XenBehaviour.FIXED

    def live_round(self) -> RoundStats | None:
        """The pass in flight as a pass-table row (None between passes)."""
        return self.current.as_round(self.t) if self.in_pass and self.current is not None else None

    @property
    def balloon_during_passes(self) -> tuple[int, int]:
        """Pages out and in counted in the pass table's rows (the live one included)."""
        rows = self.rounds + ([self.current] if self.in_pass and self.current is not None else [])
        return (sum(int(r.balloon_out) for r in rows), sum(int(r.balloon_in) for r in rows))

    def sent_so_far(self) -> dict[str, int]:
        """Data pages, XTAB entries, bytes and passes sent so far, the pass in flight
        included, VERIFY left out (as the report's totals leave it out)."""
        rows = [r for r in self.rounds if r.phase != PassPhase.VERIFY]
        out = {"data": sum(r.pages_sent for r in rows), "xtab": sum(r.xtab_sent for r in rows),
               "bytes": sum(r.bytes for r in rows), "passes": len(rows)}
        cur = self.current
        if self.in_pass and cur is not None and cur.phase != PassPhase.VERIFY:
            out["data"] += cur.pages
            out["xtab"] += cur.xtab
            out["bytes"] += cur.bytes
            out["passes"] += 1
        return out


class RunFold:
    """Event listener folding one run's events into a ``RunState`` (``state``) and the
    page ledger (``ledger``: the report's ``pages``; ``pages=False`` leaves it out,
    None, where nobody reads it); ``version`` counts the events folded."""

    def __init__(self, *, recent: int = 6, pages: bool = True):
        self.state = RunState(balloon=BalloonState(recent=deque(maxlen=recent)))
        self.ledger: PageLedger | None = PageLedger() if pages else None
        self.version = 0

    def __call__(self, ev: Event) -> None:
        if self.ledger is not None:
            self.ledger(ev)
        self._fold(ev)
        self.version += 1

    on_event = __call__

    def _fold(self, ev: Event) -> None:
        s = self.state
        if ev.t > s.t:
            s.t = float(ev.t)
        if isinstance(ev, BatchSent):
            cur = s.current
            if cur is None:
                return
            cur.walked, cur.entries = int(ev.walked), int(ev.entries)
            nib = np.asarray(ev.nibbles, dtype=np.uint8) & 0xF
            cur.pages += int(np.count_nonzero(PFINFO_HAS_DATA[nib]))
            cur.xtab += int(np.count_nonzero(nib == _XTAB))
            if ev.hole is not None:          # a never-mapped range walked in bulk: all XTAB
                cur.xtab += int(ev.hole[1]) - int(ev.hole[0])
            cur.bytes += int(ev.bytes)
        elif isinstance(ev, CountersSampled):
            s.counters = dict(ev.counters)
            nodes = s.counters.get("logdirty_nodes_peak", s.counters.get("logdirty_nodes", 0))
            s.nodes_peak = max(s.nodes_peak, int(nodes or 0))
        elif isinstance(ev, MemoryOp):
            left, unmarked = ev.left_behind()
            s.leftover_bits += left
            s.unmarked_additions += unmarked
            self._memory_op(ev)
        elif isinstance(ev, BalloonNote):
            self._balloon_note(ev)
        elif isinstance(ev, PassStarted):
            s.in_pass = True
            s.current = PassInFlight(iteration=int(ev.iteration), phase=PassPhase(ev.phase),
                                     entries=int(ev.entries), dirty_count=int(ev.dirty_count), start_s=float(ev.t))
        elif isinstance(ev, PassEnded):
            s.rounds.append(ev.stats)        # frozen: later balloon moves make a new value
            s.in_pass = False
            if s.current is not None:
                s.current.walked = int(ev.stats.pfns_walked)
        elif isinstance(ev, CleanDone):
            s.last_clean = ev
            if ev.op == CleanOp.CLEAN and "dirty_count" in s.counters:
                # A completed CLEAN zeroes the stats it reported (paging_log_dirty_op in
                # xen/arch/x86/mm/paging.c); PEEK leaves them. Until the next sample the
                # hypervisor's dirty_count is 0, not the last sample's.
                s.counters = {**s.counters, "dirty_count": 0}
        elif isinstance(ev, PhaseChanged):
            s.phase, s.phase_detail = str(ev.phase), ev.detail
            if ev.phase == Phase.SUSPENDED and s.t_suspend is None:
                s.t_suspend = float(ev.t)
            elif ev.phase == Phase.DONE:
                s.t_done = float(ev.t)
        elif isinstance(ev, RunStarted):
            self._names(ev)
            s.sites = dict(ev.sites)
            s.guest_pages = int(ev.guest_pages)
            s.tracked = tuple(ev.tracked)
            s.balloon.out_at_start = _runs_pages(ev.ballooned)
            s.t_start = float(ev.t)
        elif isinstance(ev, SaveSetup):
            s.p2m_size = int(ev.p2m_size)
        elif isinstance(ev, RunSummary):
            s.summary = ev
            if ev.hypervisor:
                # The report's counters, read after cleanup's OFF freed the log-dirty
                # tree: the last word, where the last sample was taken before it.
                s.counters = dict(ev.hypervisor)
                s.nodes_peak = max(s.nodes_peak, int(s.counters.get("logdirty_nodes_peak", 0) or 0))
            if not s.scenario:               # a watcher that joined late learns the names here
                self._names(ev)
        elif isinstance(ev, VerifyDone):
            s.verify = ev.stats
        elif isinstance(ev, MigrationFinished):
            s.outcome, s.message = str(ev.outcome), ev.message
            s.phase = "done" if ev.outcome == Outcome.COMPLETED else str(ev.outcome)

    def _names(self, ev: RunStarted | RunSummary) -> None:
        s = self.state
        s.scenario, s.seed, s.behaviour = ev.scenario, ev.seed, str(ev.behaviour)
        s.policy, s.policy_params = ev.policy, dict(ev.policy_params or {})

    def _memory_op(self, ev: MemoryOp) -> None:
        s, b = self.state, self.state.balloon
        if ev.op not in _BALLOON_OPS:
            return
        rc = int(ev.rc)
        if ev.op == "decrease_reservation":
            b.decrease_ops += 1
            b.decrease_pages += max(rc, 0)
        else:
            b.populate_ops += 1
            b.populate_pages += max(rc, 0)
        # The engine's own rule: a balloon op counts in the pass it happens in; between
        # two passes (the guest runs until the next call), in the pass before.
        if s.in_pass and s.current is not None:
            out, back = balloon_moves(ev)
            s.current.balloon_out += out
            s.current.balloon_in += back
        elif s.rounds:
            s.rounds[-1] = s.rounds[-1].with_balloon(ev)
        word = "decrease" if ev.op == "decrease_reservation" else "populate"
        res = f"{rc}/{ev.nr} pages" if rc >= 0 else f"{ev.nr} pages, rc={rc}"
        b.recent.append((float(ev.t), f"{word} {res}"))

    def _balloon_note(self, ev: BalloonNote) -> None:
        b, t = self.state.balloon, float(ev.t)
        if isinstance(ev, BalloonTarget):
            b.target = int(ev.target_pages)
            b.stalled = ""
            b.recent.append((t, f"target → {int(ev.target_pages)} pages"))
        elif isinstance(ev, BalloonStalled):
            b.stalled = str(ev.reason)
            b.recent.append((t, f"stalled: {ev.reason}"))
        elif isinstance(ev, BalloonMoved):
            b.recent.append((t, f"{ev.direction} {int(ev.pages)} pages"))
        else:
            b.recent.append((t, "reached"))


def fold_events(events) -> RunFold:
    """A fresh ``RunFold`` fed every event of ``events``."""
    fold = RunFold()
    for ev in events:
        fold(ev)
    return fold


__all__ = ["BalloonState", "PassInFlight", "RunFold", "RunState", "fold_events"]
