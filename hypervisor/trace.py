"""What a domain records about itself as it serves calls, for the toolstack to drain.

Xen's own record is ``xentrace`` (``xen/common/trace.c``: per-CPU buffers of typed
records a consumer drains). Here a domain keeps a list of the frozen events of
``abi.results`` (memory ops with their call sites' log-dirty effects, scheduling
changes, log-dirty ops) and, for the GFNs a consumer follows, tallies their writes and
reports them as one event per stretch between two other events. A destination domain,
which nobody reads, records nothing (``record=False``).
"""

from __future__ import annotations

import math

import numpy as np

from .abi import (DomainStateChanged, HypervisorEvent, LogDirtyEffect, LogDirtyOp, LogDirtyOpServed, MemoryOpKind,
                  MemoryOpServed, SchedOp, TrackedWritesSeen)
from .runs import sorted_unique

_EMPTY = np.empty(0, dtype=np.int64)


class DomainTrace:
    """The events a domain made since the last ``drain``, and the effects of the call
    being served (attached to its event when it is recorded)."""

    def __init__(self, record: bool = True):
        self.record = record
        self.events: list[HypervisorEvent] = []
        #: What the call sites did while serving the call whose event comes next.
        self.effects: list[LogDirtyEffect] = []
        #: GFNs followed one by one (``track``), and their writes not yet reported.
        self.tracked = _EMPTY
        self._tw: dict[int, list[float]] = {}     # gfn -> [writes, first, last, logged]

    # ---------------------------------------------------------------- recording

    def effect(self, e: LogDirtyEffect) -> None:
        if self.record:
            self.effects.append(e)

    def take_effects(self) -> tuple[LogDirtyEffect, ...]:
        out, self.effects = tuple(self.effects), []
        return out

    def memory_op(self, kind: MemoryOpKind, nr: int, rc: int, gfns, t: float) -> None:
        """A memory op served; it carries the effects recorded while it was served."""
        if not self.record:
            return
        self.flush_tracked()
        g = np.asarray(gfns, dtype=np.int64).reshape(-1).copy()
        self.events.append(MemoryOpServed(float(t), kind, int(nr), int(rc), g, self.take_effects()))

    def state_changed(self, kind: SchedOp, pause_count: int, t: float) -> None:
        if self.record:
            self.flush_tracked()
            self.events.append(DomainStateChanged(float(t), SchedOp(kind), int(pause_count)))

    def logdirty_op(self, kind: LogDirtyOp, pages: int, rc: int, t: float) -> None:
        if self.record:
            self.flush_tracked()
            self.events.append(LogDirtyOpServed(float(t), kind, int(pages), int(rc)))

    def append(self, ev: HypervisorEvent) -> None:
        """An event made whole by the caller (the calls of a run, ``memory.run_calls``)."""
        self.events.append(ev)

    def drain(self) -> list[HypervisorEvent]:
        self.flush_tracked()
        ev, self.events = self.events, []
        return ev

    # ---------------------------------------------------------------- followed GFNs

    def track(self, gfns) -> None:
        """Follow these GFNs: their writes are reported as ``TrackedWritesSeen`` events
        (one per stretch between two other events), so a consumer can tell a page's
        whole story."""
        self.tracked = sorted_unique(np.asarray(gfns, dtype=np.int64).reshape(-1))

    def writes(self, g: np.ndarray, times: np.ndarray, faulted: np.ndarray) -> None:
        """Count the writes to tracked GFNs among ``g`` (in time order, at ``times``):
        how many, the first and last, and when the first of them was logged (``faulted``:
        the GFNs whose write faulted into the log-dirty bitmap, at their first write)."""
        hit = np.isin(g, self.tracked)
        if not hit.any():
            return
        hg, ht = g[hit], times[hit]
        order = np.argsort(hg, kind="stable")
        hg, ht = hg[order], ht[order]
        u, first, n = np.unique(hg, return_index=True, return_counts=True)
        logged = set(faulted[np.isin(faulted, u)].tolist()) if faulted.size else set()
        for gfn, a, cnt in zip(u.tolist(), first.tolist(), n.tolist()):
            t_first, t_last = float(ht[a]), float(ht[a + cnt - 1])
            acc = self._tw.setdefault(gfn, [0, t_first, t_last, math.nan])
            acc[0] += cnt
            acc[2] = t_last
            if gfn in logged and math.isnan(acc[3]):
                acc[3] = t_first

    def flush_tracked(self) -> None:
        if not self._tw:
            return
        gfns = sorted(self._tw)
        rows = np.array([self._tw[g] for g in gfns], dtype=np.float64).reshape(-1, 4)
        self._tw = {}
        self.events.append(TrackedWritesSeen(float(rows[:, 2].max()), np.array(gfns, dtype=np.int64),
                                             rows[:, 0].astype(np.int64), rows[:, 1].copy(), rows[:, 2].copy(),
                                             rows[:, 3].copy()))
