"""The domain's vCPUs on Xen's scheduler, as far as this model needs one.

Mirrors the pausing side of ``xen/common/sched/core.c`` and ``xen/common/domain.c``:
``domain_pause``/``domain_unpause`` nest through the domain's ``pause_count``; a guest
that suspends (``SCHEDOP_shutdown`` with ``SHUTDOWN_suspend``) is descheduled until
``domain_resume``; ``paging_log_dirty_op`` (``xen/arch/x86/mm/paging.c``) holds the
domain paused while it walks the bitmap. A vCPU runs only while none of these holds it.

There is no run queue: virtual time moves only when a request stamped ``t`` reaches the
hypervisor, which first runs the guest up to ``t`` (``advance_to``). The guest is a
generator of operations; each one it yields is served by ``apply`` and the result is
sent back into it. Writes carry their own times: the scheduler holds those a tick
produced beyond ``t`` (``pending``) and applies exactly the writes before each
request's time; writes whose time falls while the vCPUs are held (paused, suspended,
a CLEAN walk) never happen: the ticks that start then never run, pending writes that
fall then are dropped, and a tick that started while they were held writes only from
the moment they run again (``Guest.run``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Protocol

import numpy as np

from .abi import (EINVAL, AddToPhysmap, DecreaseReservation, DecreaseReservationRun, ForeignMapping, GuestOp,
                  HypercallResult, MemoryMapping, MemoryWrites, PopulatePhysmap, PopulatePhysmapRun,
                  RemoveFromPhysmap, SchedOp, SetTypedEntry, XenError, write_arrays)


class MemoryOps(Protocol):
    """The hypercalls a guest's operations become (``domain.Hypervisor`` serves them)."""

    def guest_write(self, gfns: Any, tokens: Any, *, t: float, times: Any = None) -> None: ...
    def decrease_reservation(self, gfns: Any, *, t: float) -> HypercallResult: ...
    def populate_physmap(self, gfns: Any, *, pod: bool, t: float) -> HypercallResult: ...
    def decrease_reservation_run(self, gfns: Any, sizes: Any, *, t: float) -> list[HypercallResult]: ...
    def populate_physmap_run(self, gfns: Any, sizes: Any, *, pod: bool, t: float) -> list[HypercallResult]: ...
    def add_to_physmap(self, src: int, dst: int, *, t: float) -> HypercallResult: ...
    def remove_from_physmap(self, gfn: int, *, t: float) -> HypercallResult: ...
    def set_typed_p2m_entry(self, gfn: int, p2m_type: Any, *, t: float) -> HypercallResult: ...
    def memory_mapping(self, first_gfn: int, nr: int, add: bool, *, t: float) -> HypercallResult: ...
    def foreign_mapping(self, first_gfn: int, nr: int, add: bool, *, t: float) -> HypercallResult: ...

_EMPTY_F64 = np.empty(0, dtype=np.float64)
_EMPTY_I64 = np.empty(0, dtype=np.int64)
_EMPTY_U64 = np.empty(0, dtype=np.uint64)


#: ``(kind, pause_count, t)``: a pause/unpause/suspend/resume happened at ``t``.
StateChange = Callable[[SchedOp, int, float], None]


class VcpuScheduler:
    """Whether the domain's vCPUs may run, the domain's virtual clock, and running the
    guest up to a request's time."""

    def __init__(self, domain: MemoryOps, on_change: StateChange):
        self.domain = domain
        self.on_change = on_change
        self.guest = None
        self.now = 0.0
        self.pause_count = 0
        self.suspended = False
        #: End of the CLEAN/PEEK walk that holds the domain paused.
        self.walk_until = -math.inf
        self._running_guest = False
        #: Writes the guest made that are not applied yet (their times are not before
        #: the domain's clock), oldest first; each set carries its times.
        self.pending: list[MemoryWrites] = []

    @property
    def state(self) -> str:
        if self.suspended:
            return "suspended"
        return "paused" if self.pause_count else "running"

    def hold_for_walk(self, t: float, walk_s: float) -> None:
        """paging_log_dirty_op pauses the domain for ``walk_s`` from ``t``."""
        self.walk_until = max(self.walk_until, float(t) + float(walk_s))

    def advance_to(self, t: float) -> None:
        """Run the guest's vCPUs up to virtual time ``t``: the writes before ``t`` are
        applied, those a tick produced for ``t`` or later wait in ``pending``.

        Time passes without the guest while the domain is paused or suspended, and
        during a CLEAN/PEEK walk window: writes that fall then are dropped."""
        t = float(t)
        if t <= self.now or self._running_guest:
            return
        if self.state != "running" or self.guest is None:
            self._drop_pending(t)
            self.now = t
            return
        if self._hold_for_walk_until(t):
            return
        self._run_guest(self.now, t, hypercalls=True)
        self._apply_pending(t)
        self.now = t

    def _hold_for_walk_until(self, t: float) -> bool:
        """The part of ``[now, t)`` inside a CLEAN walk's window passes without the guest
        (its pending writes there are dropped); True if that is all of it."""
        if self.now >= self.walk_until:
            return False
        self._drop_pending(min(t, self.walk_until))
        self.now = min(t, self.walk_until)
        return self.now >= t

    def generate(self, t: float) -> None:
        """Run the guest's ticks that start before ``t`` without applying their writes
        (they wait in ``pending``): how a span of toolstack calls sees, at once, the
        writes the guest makes in it. The caller makes sure the guest makes no
        hypercall there (``Guest.window_end``); one is refused."""
        t = float(t)
        if self.state != "running" or self.guest is None or t <= self.now or self._running_guest:
            return
        # The writes a CLEAN walk's window swallows are gone before the span sees them.
        if self.now < self.walk_until:
            self._drop_pending(min(t, self.walk_until))
        t0 = max(self.now, self.walk_until)
        if t > t0:
            self._run_guest(t0, t, hypercalls=False)

    def pending_writes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(times, gfns, tokens)`` of the pending writes, in the order they happen."""
        if not self.pending:
            return _EMPTY_F64, _EMPTY_I64, _EMPTY_U64
        return write_arrays(self.pending)

    def _run_guest(self, t0: float, t1: float, *, hypercalls: bool) -> None:
        self._running_guest = True
        try:
            gen = self.guest.run(t0, t1)
            try:
                op = next(gen)
                while True:
                    if isinstance(op, MemoryWrites):
                        if np.asarray(op.gfns).size:
                            # (a set without times happens all at its stamp)
                            self.pending.append(op if op.times is not None else MemoryWrites(
                                op.t, op.gfns, op.tokens, np.full(np.asarray(op.gfns).size, float(op.t))))
                        res = None
                    elif not hypercalls:
                        raise RuntimeError(f"the guest made a hypercall ({type(op).__name__}) inside a "
                                           "span planned without one")
                    else:
                        # What the guest wrote before this call happened before it.
                        self._apply_pending(math.inf)
                        res = self.apply(op)
                    op = gen.send(res)
            except StopIteration:
                pass
        finally:
            self._running_guest = False

    def _take_pending(self, t: float) -> list[MemoryWrites]:
        """Remove the pending writes whose time is before ``t`` (all of them for
        ``inf``) and return them, oldest first; a set ``t`` cuts is split, its first
        part stamped with its last time."""
        taken: list[MemoryWrites] = []
        while self.pending:
            op = self.pending[0]
            times = op.times
            if t == math.inf or times[-1] < t:
                taken.append(self.pending.pop(0))
                continue
            i = int(np.searchsorted(times, t, side="left"))
            if i:
                taken.append(MemoryWrites(float(times[i - 1]), op.gfns[:i], op.tokens[:i], times[:i]))
                self.pending[0] = MemoryWrites(op.t, op.gfns[i:], op.tokens[i:], times[i:])
            break
        return taken

    def _apply_pending(self, t: float) -> None:
        """Apply the pending writes whose time is before ``t``, oldest first."""
        for op in self._take_pending(t):
            self.domain.guest_write(op.gfns, op.tokens, t=float(op.t), times=op.times)

    def _drop_pending(self, t: float) -> None:
        """Forget the pending writes whose time is before ``t`` (the vCPUs were held)."""
        self._take_pending(t)

    def apply(self, op: GuestOp) -> HypercallResult | list[HypercallResult] | None:
        """Serve one guest operation at its own time; returns what the guest's generator
        is sent (None for writes, the hypercall's result otherwise: a list of them for a
        run of calls)."""
        d = self.domain
        match op:
            case MemoryWrites(t=t, gfns=gfns, tokens=tokens, times=times):
                d.guest_write(gfns, tokens, t=float(t), times=times)
                return None
            case DecreaseReservation(t=t, gfns=gfns):
                return d.decrease_reservation(gfns, t=float(t))
            case PopulatePhysmap(t=t, gfns=gfns, pod=pod):
                return d.populate_physmap(gfns, pod=pod, t=float(t))
            case DecreaseReservationRun(t=t, gfns=gfns, sizes=sizes):
                return d.decrease_reservation_run(gfns, sizes, t=float(t))
            case PopulatePhysmapRun(t=t, gfns=gfns, sizes=sizes, pod=pod):
                return d.populate_physmap_run(gfns, sizes, pod=pod, t=float(t))
            case AddToPhysmap(t=t, src=src, dst=dst):
                return d.add_to_physmap(src, dst, t=float(t))
            case RemoveFromPhysmap(t=t, gfn=gfn):
                return d.remove_from_physmap(gfn, t=float(t))
            case SetTypedEntry(t=t, gfn=gfn, p2m_type=p2m_type):
                return d.set_typed_p2m_entry(gfn, p2m_type, t=float(t))
            case MemoryMapping(t=t, first_gfn=g0, nr=nr, add=add):
                return d.memory_mapping(g0, nr, add, t=float(t))
            case ForeignMapping(t=t, first_gfn=g0, nr=nr, add=add):
                return d.foreign_mapping(g0, nr, add, t=float(t))
        raise TypeError(f"not a guest operation: {op!r}")

    def pause(self, t: float) -> None:
        """domain_pause (nestable)."""
        self.advance_to(t)
        self.pause_count += 1
        self.on_change(SchedOp.PAUSE, self.pause_count, t)

    def unpause(self, t: float) -> None:
        """domain_unpause: the vCPUs run again once every pause is undone."""
        self.advance_to(t)
        if self.pause_count == 0:
            raise XenError(EINVAL, "domain is not paused")
        self.pause_count -= 1
        self.on_change(SchedOp.UNPAUSE, self.pause_count, t)

    def suspend(self, t: float) -> None:
        """The guest suspends (SCHEDOP_shutdown, reason suspend): it runs no more."""
        self.advance_to(t)
        if self.suspended:
            raise XenError(EINVAL, "domain is already suspended")
        self.suspended = True
        self.on_change(SchedOp.SUSPEND, 0, t)

    def resume(self, t: float) -> None:
        """domain_resume of a suspended domain (a failed migration's sender side)."""
        self.advance_to(t)
        if not self.suspended:
            raise XenError(EINVAL, "domain is not suspended")
        self.suspended = False
        self.on_change(SchedOp.RESUME, 0, t)
