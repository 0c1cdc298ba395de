"""The domain's vCPUs on Xen's scheduler, as far as this model needs one.

Mirrors the pausing side of ``xen/common/sched/core.c`` and ``xen/common/domain.c``:
``domain_pause``/``domain_unpause`` nest through the domain's ``pause_count``; a guest
that suspends (``SCHEDOP_shutdown`` with ``SHUTDOWN_suspend``) is descheduled until
``domain_resume``; ``paging_log_dirty_op`` (``xen/arch/x86/mm/paging.c``) holds the
domain paused while it walks the bitmap. A vCPU runs only while none of these holds it.

There is no run queue: virtual time moves only when a request stamped ``t`` reaches the
hypervisor, which first runs the guest up to ``t`` (``advance_to``). The guest is a
generator of operations; each one it yields is served by ``apply`` and the result is
sent back into it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Protocol

from .abi import (EINVAL, AddToPhysmap, DecreaseReservation, GuestOp, HypercallResult, MemoryWrites,
                  PopulatePhysmap, RemoveFromPhysmap, SetTypedEntry, XenError)


class MemoryOps(Protocol):
    """The hypercalls a guest's operations become (``domain.Hypervisor`` serves them)."""

    def guest_write(self, gfns: Any, tokens: Any, *, t: float) -> None: ...
    def decrease_reservation(self, gfns: Any, *, t: float) -> HypercallResult: ...
    def populate_physmap(self, gfns: Any, *, pod: bool, t: float) -> HypercallResult: ...
    def add_to_physmap(self, src: int, dst: int, *, t: float) -> HypercallResult: ...
    def remove_from_physmap(self, gfn: int, *, t: float) -> HypercallResult: ...
    def set_typed_p2m_entry(self, gfn: int, p2m_type: Any, *, t: float) -> HypercallResult: ...

#: ``(kind, nr, t)``: a pause/unpause/suspend/resume happened at ``t``.
StateChange = Callable[[str, int, float], None]


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

    @property
    def state(self) -> str:
        if self.suspended:
            return "suspended"
        return "paused" if self.pause_count else "running"

    def hold_for_walk(self, t: float, walk_s: float) -> None:
        """paging_log_dirty_op pauses the domain for ``walk_s`` from ``t``."""
        self.walk_until = max(self.walk_until, float(t) + float(walk_s))

    def advance_to(self, t: float) -> None:
        """Run the guest's vCPUs up to virtual time ``t``.

        Time passes without the guest while the domain is paused or suspended, and
        during a CLEAN/PEEK walk window."""
        t = float(t)
        if t <= self.now or self._running_guest:
            return
        if self.state != "running" or self.guest is None:
            self.now = t
            return
        if self.now < self.walk_until:
            self.now = min(t, self.walk_until)
            if self.now >= t:
                return
        t0 = self.now
        self._running_guest = True
        try:
            gen = self.guest.run(t0, t)
            try:
                op = next(gen)
                while True:
                    op = gen.send(self.apply(op))
            except StopIteration:
                pass
        finally:
            self._running_guest = False
        self.now = t

    def apply(self, op: GuestOp) -> HypercallResult | None:
        """Serve one guest operation at its own time; returns what the guest's generator
        is sent (None for writes, the hypercall's result otherwise)."""
        d = self.domain
        match op:
            case MemoryWrites(t=t, gfns=gfns, tokens=tokens):
                d.guest_write(gfns, tokens, t=float(t))
                return None
            case DecreaseReservation(t=t, gfns=gfns):
                return d.decrease_reservation(gfns, t=float(t))
            case PopulatePhysmap(t=t, gfns=gfns, pod=pod):
                return d.populate_physmap(gfns, pod=pod, t=float(t))
            case AddToPhysmap(t=t, src=src, dst=dst):
                return d.add_to_physmap(src, dst, t=float(t))
            case RemoveFromPhysmap(t=t, gfn=gfn):
                return d.remove_from_physmap(gfn, t=float(t))
            case SetTypedEntry(t=t, gfn=gfn, p2m_type=p2m_type):
                return d.set_typed_p2m_entry(gfn, p2m_type, t=float(t))
        raise TypeError(f"not a guest operation: {op!r}")

    def pause(self, t: float) -> None:
        """domain_pause (nestable)."""
        self.advance_to(t)
        self.pause_count += 1
        self.on_change("pause", self.pause_count, t)

    def unpause(self, t: float) -> None:
        """domain_unpause: the vCPUs run again once every pause is undone."""
        self.advance_to(t)
        if self.pause_count == 0:
            raise XenError(EINVAL, "domain is not paused")
        self.pause_count -= 1
        self.on_change("unpause", self.pause_count, t)

    def suspend(self, t: float) -> None:
        """The guest suspends (SCHEDOP_shutdown, reason suspend): it runs no more."""
        self.advance_to(t)
        if self.suspended:
            raise XenError(EINVAL, "domain is already suspended")
        self.suspended = True
        self.on_change("suspend", 0, t)

    def resume(self, t: float) -> None:
        """domain_resume of a suspended domain (a failed migration's sender side)."""
        self.advance_to(t)
        if not self.suspended:
            raise XenError(EINVAL, "domain is not suspended")
        self.suspended = False
        self.on_change("resume", 0, t)
