"""The toolstack's handle on a source domain: what libxenctrl gives ``xg_sr_save.c``.

``DomainControl`` is the async interface the precopy engine calls (the ``xc_*``
wrappers: ``xc_logdirty_control``, ``xc_get_pfn_type_batch``,
``xenforeignmemory_map``, ``xc_domain_maximum_gpfn``, the suspend callback).
``LocalDomain`` serves it from a ``Hypervisor`` in this process; the MQTT transport
serves the same calls from a hypervisor in another process. After every call the
hypervisor's and the guest's new events are published on the event bus, so every
consumer sees balloon operations in virtual-time order with the toolstack's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from guest.events import BalloonPagesMoved, BalloonStall, BalloonTargetReached, BalloonTargetSet, GuestEvent
from hypervisor.abi import (IS_POD, IS_RAM, MAX_BATCH_SIZE, GfnRuns, HypervisorEvent, MemoryOpServed, ShadowOp,
                            SpanServed, TrackedWritesSeen)
from hypervisor.runs import gfn_runs, merge_runs
from hypervisor.tables import lookup, run_array

from migrate.events import (BalloonMoved, BalloonNote, BalloonReached, BalloonStalled, BalloonTarget, Event, EventBus,
                            MemoryOp, TrackedWrites)
from migrate.toolstack.link import LinkModel
from migrate.toolstack.verify import DIGEST_BYTES, snapshot_digest


@dataclass(frozen=True, slots=True)
class Stretch:
    """Batches a pass walks back to back, with no other call between two of them: the
    PFNs ``pfns`` (send_dirty_pages: the bitmap's), or every PFN of ``[lo, hi)``
    (send_all_pages: a populated stretch of the P2M), cut into MAX_BATCH_SIZE batches."""

    pfns: np.ndarray | None = None
    lo: int = 0
    hi: int = 0

    def __len__(self) -> int:
        n = self.pfns.size if self.pfns is not None else max(0, self.hi - self.lo)
        return -(-n // MAX_BATCH_SIZE)

    def batch(self, k: int) -> np.ndarray:
        return self.batches(k, 1)

    def batches(self, k: int, n: int) -> np.ndarray:
        """The PFNs of batches ``[k, k + n)``, back to back."""
        a, b = k * MAX_BATCH_SIZE, (k + n) * MAX_BATCH_SIZE
        if self.pfns is not None:
            return self.pfns[a:b]
        return run_array(self.lo + a, max(0, min(self.lo + b, self.hi) - (self.lo + a)))


#: Batches the engine's span asks for first, and at most (bounds its arrays: 2 Mi PFNs).
SPAN_FIRST = 64
SPAN_MAX = 2048


#: The smallest cap ``span_cap`` gives (a guest of up to 16 GiB).
SPAN_CAP_MIN = 512


def span_cap(p2m_size: int) -> int:
    """The most batches a span asks for in a guest of ``p2m_size`` PFNs: about one
    8,192th of its PFNs, as a power of two from SPAN_CAP_MIN to SPAN_MAX (512 batches at
    16 GiB, SPAN_MAX from 64 GiB). A span's arrays (its PFNs, types and contents, about
    25 bytes a PFN) then stay a small part of a small guest's memory, while a large
    guest keeps long spans."""
    cap = 1 << max(0, (int(p2m_size) // 8192).bit_length() - 1)
    return min(SPAN_MAX, max(SPAN_CAP_MIN, cap))


def next_span_ask(ask: int, served: int, cap: int = SPAN_MAX) -> int:
    """The batches the engine's next span asks for, after one that asked ``ask`` and was
    served ``served``: twice as many while spans are served whole, else twice what was
    served (at least SPAN_FIRST); at most ``cap`` (the pass's ``PassPlan.span_max``). The
    engine walks a stretch by it, and a hypervisor actor that serves a stretch's spans
    ahead (``migrate.actors``) predicts the engine's next ask by it."""
    return min(cap, 2 * ask if served == ask else max(SPAN_FIRST, 2 * served))


@dataclass(frozen=True, slots=True)
class SpanAt:
    """Where a span starts: batch ``k`` of ``stretch``, which the engine walks on from
    there span after span (see ``DomainControl``)."""

    stretch: Stretch
    k: int


@dataclass(frozen=True, slots=True)
class PassPlan:
    """What the precopy engine states before a pass's first batch: the batches it will
    walk, in order (``stretches``; between two stretches it may call other things, e.g.
    walk a hole of the P2M in bulk), the link model that times each batch
    (``LinkModel.map_time`` / ``next_batch_time``), its deadline as ``(t_start, limit)``
    (it abandons the save once ``t - t_start > limit``), and the most batches a span
    asks for (``span_max``). A batch
    the engine sends that is not in the plan (a GFN added to a hole meanwhile) comes
    between two stretches."""

    iteration: int
    stretches: tuple[Stretch, ...]
    link: LinkModel
    deadline: tuple[float, float] | None = None
    span_max: int = SPAN_MAX              # the most batches a span asks for (span_cap)


class DomainControl(Protocol):
    """``serve_span``'s ``at``, when given, says where the span's batches ``pfns`` start
    in the pass: the engine walks the rest of that stretch span after span, each asking
    ``next_span_ask`` batches from where the last ended, with no other call in between
    unless a span stops on a PoD entry, a guest write or the deadline, or serves
    nothing. A domain behind a broker may serve those next spans ahead in the same
    round trip; one in this process ignores it."""

    async def begin_pass(self, t: float, plan: PassPlan) -> None: ...
    async def max_gpfn(self, t: float) -> int: ...
    async def shadow_op(self, t: float, op: ShadowOp, *, mode: int = 0, pages: int = 0,
                        want_bitmap: bool = True, walk_s: float = 0.0) -> Any: ...
    async def getpageframeinfo3(self, t: float, pfns: np.ndarray) -> np.ndarray: ...
    async def serve_span(self, t: float, pfns: np.ndarray, plan: PassPlan,
                         at: SpanAt | None = None) -> SpanServed: ...
    async def map_foreign(self, t: float, pfns: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
    async def suspend(self, t: float) -> None: ...
    async def resume(self, t: float) -> None: ...
    async def counters(self, t: float) -> dict[str, Any]: ...
    async def snapshot(self, t: float, lo: int = 0, hi: int | None = None) -> tuple[np.ndarray, np.ndarray]: ...
    async def mapped_runs(self, t: float, lo: int, hi: int) -> np.ndarray: ...
    async def snapshot_digests(self, t: float, windows: np.ndarray) -> np.ndarray: ...


class SourceSide(Protocol):
    """Where the source domain lives: in this process (``LocalSource``) or behind a
    broker (``migrate.actors.RemoteSource``). The runner only talks to this."""

    control: DomainControl

    async def setup(self, start: float) -> "SourceInfo": ...
    async def close(self) -> None: ...


@dataclass(slots=True)
class SourceInfo:
    """What the source knows once the domain is built and the guest ran to ``start``."""

    p2m_size: int
    guest_pages: int          # RAM pages in the guest's boot layout
    populated: np.ndarray     # (k, 2) [start, end) runs of the boot layout (RAM + PoD)
    ballooned: np.ndarray     # (k, 2) runs of those the guest has given back by ``start``
    ram_pages: int            # RAM pages in the P2M at ``start``
    #: (k, 2) runs of the builder's special pages (libxc's layout; not the guest's RAM)
    special: np.ndarray = field(default_factory=lambda: np.empty((0, 2), np.int64), metadata={"wire": "when_set"})
    #: the HVM params the builder set (HVMOP_get_param), for the stream's HVM_PARAMS
    hvm_params: tuple[tuple[int, int], ...] = field(default=(), metadata={"wire": "when_set"})


def source_info(hv, layout) -> SourceInfo:
    """Build SourceInfo from a hypervisor and the guest's boot layout (vectorised; no
    sort of the whole address space)."""
    ram = layout.ram_gfns          # an array or GfnRuns: both are read a slice at a time
    pod = np.asarray(layout.pod_gfns, dtype=np.int64)
    owned = IS_RAM | IS_POD
    populated, ballooned = [], []
    if isinstance(ram, GfnRuns):
        # Runs already: each is read as GFN ranges, no per-page array of the layout.
        first = np.asarray(ram.first, dtype=np.int64)
        end = first + np.asarray(ram.count, dtype=np.int64)
        populated.append(np.stack([first, end], axis=1))
        for a, b in zip(first.tolist(), end.tolist()):
            for lo in range(a, b, INFO_SLICE):
                hi = min(lo + INFO_SLICE, b)
                gone = np.flatnonzero(~lookup(owned, hv.p2m_types(np.arange(lo, hi, dtype=np.int64))))
                ballooned.append(gfn_runs(gone + lo))
    for g in (pod,) if isinstance(ram, GfnRuns) else (ram, pod):
        for lo in range(0, len(g), INFO_SLICE):   # slices bound the temporaries
            part = np.asarray(g[lo:lo + INFO_SLICE], dtype=np.int64)
            populated.append(gfn_runs(part))
            ballooned.append(gfn_runs(part[~owned[hv.p2m_types(part)]]))
    return SourceInfo(p2m_size=int(hv.max_gpfn()) + 1, guest_pages=int(ram.size),
                      populated=merge_runs(*populated) if populated else np.empty((0, 2), np.int64),
                      ballooned=merge_runs(*ballooned) if ballooned else np.empty((0, 2), np.int64),
                      ram_pages=int(hv.stats.populated_pages),
                      special=gfn_runs(np.asarray(getattr(layout, "special_gfns", ()), dtype=np.int64)),
                      hvm_params=tuple(hv.hvm_params()))


INFO_SLICE = 1 << 20


def hypervisor_counters(hv) -> dict[str, Any]:
    """The hypervisor's counters as a plain dict (one place defines what is sampled)."""
    s = hv.stats
    names = ("marks_dirty", "marks_clean", "logdirty_nodes", "logdirty_nodes_peak",
             "failed_allocs", "dirty_count", "populated_pages", "pod_entries", "dropped_writes",
             "write_faults")
    return {n: int(getattr(s, n)) for n in names if hasattr(s, n)}


def hypervisor_event(ev: HypervisorEvent) -> Event | None:
    """The toolstack's event for one of the hypervisor's (None: a scheduling or
    log-dirty change, which the toolstack's own events already tell)."""
    if isinstance(ev, MemoryOpServed):
        return MemoryOp(t=float(ev.t), op=ev.kind.value, nr=int(ev.nr), rc=int(ev.rc),
                        gfns=np.asarray(ev.gfns, dtype=np.int64), sites=tuple(ev.sites))
    if isinstance(ev, TrackedWritesSeen):
        return TrackedWrites(t=float(ev.t), gfns=np.asarray(ev.gfns, dtype=np.int64), writes=ev.writes,
                             first_s=ev.first_s, last_s=ev.last_s, logged_s=ev.logged_s)
    return None


def guest_event(ev: GuestEvent) -> BalloonNote:
    """The toolstack's event for one of the guest's notes (``guest.events``)."""
    t, now = float(ev.t), {"current_pages": ev.current_pages, "target_pages": ev.target_pages}
    if isinstance(ev, BalloonPagesMoved):
        return BalloonMoved(t=t, direction=ev.direction.value, pages=ev.pages, batches=ev.batches, **now)
    if isinstance(ev, BalloonTargetSet):
        return BalloonTarget(t=t, previous_pages=ev.previous_pages, scheduled_at=ev.scheduled_at,
                             reason=ev.reason, **now)
    if isinstance(ev, BalloonTargetReached):
        return BalloonReached(t=t, **now)
    if isinstance(ev, BalloonStall):
        return BalloonStalled(t=t, op=ev.op.value, requested=ev.requested, done=ev.done, rc=ev.rc,
                              reason=ev.reason, **now)
    raise TypeError(f"the guest noted a {type(ev).__name__}, which no event stands for")


def forward_events(hv, guest, bus: EventBus) -> None:
    """Publish what the hypervisor and the guest did since the last call, merged in
    virtual-time order (at one instant the guest's decision, e.g. a new balloon target,
    comes before the hypercalls it makes)."""
    out = [(1, e) for e in map(hypervisor_event, hv.drain_events()) if e is not None]
    if guest is not None:
        out.extend((0, guest_event(gev)) for gev in guest.drain_events())
    out.sort(key=lambda item: (item[1].t, item[0]))     # stable: each side keeps its order
    for _side, ev in out:
        bus.publish(ev)


class LocalDomain:
    """DomainControl served by a Hypervisor (and its attached guest) in this process."""

    def __init__(self, hv, guest, bus: EventBus):
        self.hv = hv
        self.guest = guest
        self.bus = bus

    def _after(self) -> None:
        forward_events(self.hv, self.guest, self.bus)

    async def begin_pass(self, t, plan):
        """Nothing to prepare in process: each call is served when it is made."""
        return None

    async def max_gpfn(self, t: float) -> int:
        self.hv.advance_to(t)
        self._after()
        return int(self.hv.max_gpfn())

    async def shadow_op(self, t, op, *, mode=0, pages=0, want_bitmap=True, walk_s=0.0):
        try:
            return self.hv.shadow_op(t, op, mode=mode, pages=pages, want_bitmap=want_bitmap, walk_s=walk_s)
        finally:
            self._after()

    async def getpageframeinfo3(self, t, pfns):
        try:
            return self.hv.getpageframeinfo3(t, pfns)
        finally:
            self._after()

    async def map_foreign(self, t, pfns):
        try:
            return self.hv.map_foreign(t, pfns)
        finally:
            self._after()

    async def serve_span(self, t, pfns, plan, at=None):
        try:
            return self.hv.serve_span(t, pfns, plan.link, plan.deadline)
        finally:
            self._after()

    async def suspend(self, t):
        try:
            self.hv.suspend(t)
        finally:
            self._after()

    async def resume(self, t):
        try:
            self.hv.resume(t)
        finally:
            self._after()

    async def counters(self, t):
        return hypervisor_counters(self.hv)

    async def snapshot(self, t, lo=0, hi=None):
        return self.hv.snapshot(lo, hi)

    async def snapshot_digests(self, t, windows):
        """``verify.snapshot_digest`` of ``snapshot(lo, hi)`` per ``[lo, hi)`` row of
        ``windows``, as a ``(k, 16)`` uint8 array."""
        w = np.asarray(windows, dtype=np.int64).reshape(-1, 2)
        out = np.empty((w.shape[0], DIGEST_BYTES), dtype=np.uint8)
        for i, (lo, hi) in enumerate(w.tolist()):
            out[i] = np.frombuffer(snapshot_digest(*self.hv.snapshot(lo, hi)), dtype=np.uint8)
        return out

    async def mapped_runs(self, t, lo, hi):
        try:
            self.hv.advance_to(t)
            return self.hv.mapped_runs(lo, hi)
        finally:
            self._after()


class LocalSource:
    """The source domain and its guest in this process (the embedded default)."""

    def __init__(self, scenario, *, behaviour: str, seed: int, bus: EventBus, host_frames: int):
        from guest.guest import Guest
        from hypervisor.domain import Hypervisor

        self.guest = Guest(scenario.guest, seed)
        self.hv = Hypervisor(host_frames=host_frames, behaviour=behaviour)
        self.control = LocalDomain(self.hv, self.guest, bus)

    def track(self, gfns) -> None:
        """Report every write to these GFNs (``--track``)."""
        self.hv.track(gfns)

    async def setup(self, start: float) -> SourceInfo:
        layout = self.guest.layout()
        self.hv.build(layout)
        self.hv.attach_guest(self.guest)
        self.hv.advance_to(start)
        # What happened before the migration started is not part of it.
        self.hv.drain_events()
        self.guest.drain_events()
        return source_info(self.hv, layout)

    async def close(self) -> None:
        return None
