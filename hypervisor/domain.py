"""The domain: its state, its builder, and the ``Hypervisor`` façade over it.

Mirrors ``struct domain`` (``xen/include/xen/sched.h``) as far as this model needs one:
the P2M and M2P (``p2m.py``), the log-dirty tree (``logdirty.py``, ``paging.c``), the
PoD cache (``pod.py``), the host's frames (``frames.py``), the vCPUs' scheduling
(``sched.py``), what the domain records (``trace.py``), and which call sites of seed
patch 98fccdf0ac are ``fixed``; the domain builder (``tools/libs/guest/xg_dom_*.c``:
RAM, PoD entries and cache, MMIO); and reading and writing the frames a GFN maps.

Xen's functions take a ``struct domain *``; so do this model's: ``memory.py``
(``xen/common/memory.c``), ``physmap.py`` (``p2m.c``'s entry points), ``marks.py`` (the
one home of the patch's marks), ``domctl.py`` (``domctl.c``) and ``span.py``. The
``Hypervisor`` façade (docs/CONTRACTS.md) holds one :class:`Domain` and serves every
call through them; every hypercall takes the virtual time it is served at (``t``; the
domain's clock when omitted) and returns its errno on its result.

Deliberate simplifications (each noted where it applies): extents are order 0; a
page unmapped by remove_from_physmap, or replaced by populate_physmap over RAM, stays
the domain's (as in Xen, it is freed only at teardown) and is counted in
``orphaned_frames``; a demand-populate with an empty PoD cache (Xen crashes the
domain) is counted in ``pod_failures`` and the access is dropped.
"""

from __future__ import annotations

import numpy as np

from . import domctl, memory, physmap
from .abi import (ENOMEM, INVALID_MFN, IS_POD, IS_RAM, MAX_GFN, DomainLayout, GfnRuns, HypercallResult,
                  HypervisorEvent, HypervisorStats, P2MType, ShadowOpResult, SpanServed, XenError, behaviour_label,
                  site_behaviours)
from .frames import HostFrames
from .logdirty import LogDirtyTree
from .chunked import GET_BLOCK
from .p2m import M2P, P2M
from .physmap import set_frames
from .pod import PoDCache
from .runs import sorted_unique
from .sched import VcpuScheduler
from .span import serve_span
from .tables import run_array
from .trace import DomainTrace

#: RAM entries the domain builder maps per step.
_BUILD_SLICE = 1 << 18   # 2^18 entries: ~8 MiB of temporaries per step at most


def _i64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.int64).reshape(-1)


def _build_steps(ram, n_ram: int):
    """``(position, gfns)`` steps of at most _BUILD_SLICE RAM GFNs in layout order; a
    GfnRuns layout steps through each run separately, so every step is one contiguous
    run of GFNs (made with one arange; the tables take it as a run)."""
    if not isinstance(ram, GfnRuns):
        for lo in range(0, n_ram, _BUILD_SLICE):
            yield lo, _i64(ram[lo:lo + _BUILD_SLICE])
        return
    pos = 0
    for first, count in zip(_i64(ram.first).tolist(), _i64(ram.count).tolist()):
        for off in range(0, count, _BUILD_SLICE):
            k = min(_BUILD_SLICE, count - off)
            yield pos + off, run_array(first + off, k)
        pos += count



class Domain:
    """One domain's state (``struct domain``); ``ops`` serves the guest's operations
    (the ``Hypervisor`` façade) when the scheduler runs the guest."""

    def __init__(self, host_frames: int, behaviour="fixed", logdirty_pool_pages: int | None = None,
                 record_events: bool = True, ops=None):
        #: ``fixed`` / ``pre-fix`` for every call site of the seed patch, or a mapping
        #: site -> behaviour (hypervisor.abi.FIX_SITES) to switch them one at a time.
        self.sites = site_behaviours(behaviour)
        self.behaviour = behaviour_label(self.sites)
        #: Per call site: is the seed patch's mark made there (``marks.py`` asks this).
        self.fixed = {s: b == "fixed" for s, b in self.sites.items()}
        self.frames = HostFrames(host_frames)
        self.p2m = P2M()
        self.m2p = M2P()
        self.logdirty = LogDirtyTree(logdirty_pool_pages)
        self.pod = PoDCache()
        self.log_dirty_enabled = False
        #: What the domain did, for the toolstack (a destination's is never read: off).
        self.trace = DomainTrace(record_events)
        #: The vCPUs' scheduling and the domain's virtual clock.
        self.sched = VcpuScheduler(ops, self.trace.state_changed)
        self.built = False
        #: HVMOP_set_param values the builder set (index -> value).
        self.hvm_params: dict[int, int] = {}
        # counters
        self.marks_dirty = 0
        self.marks_clean = 0
        self.dropped_writes = 0
        self.write_faults = 0
        self.pod_failures = 0
        self.orphaned_frames = 0

    @property
    def guest(self):
        return self.sched.guest

    @property
    def now(self) -> float:
        """The domain's virtual clock (seconds): the last time the guest was run to."""
        return self.sched.now

    @property
    def state(self) -> str:
        """``running``, ``paused`` or ``suspended``."""
        return self.sched.state

    def advance_to(self, t: float) -> None:
        """Run the guest's vCPUs up to virtual time ``t`` (``VcpuScheduler.advance_to``)."""
        self.sched.advance_to(t)

    def at(self, t: float | None) -> float:
        return self.now if t is None else float(t)

    def build(self, layout: DomainLayout) -> None:
        """The domain builder: RAM, PoD entries + cache, MMIO; log-dirty off, nothing marked."""
        if self.built:
            raise RuntimeError("domain already built")
        ram = layout.ram_gfns
        if isinstance(ram, GfnRuns):
            first, count = _i64(ram.first), _i64(ram.count)
            if count.size and ((count < 1).any() or int(first.min()) < 0
                               or int(first[-1] + count[-1] - 1) > MAX_GFN):
                raise ValueError(f"layout ram_gfns runs must be non-empty and in [0, {MAX_GFN:#x}]")
            if (first[1:] < first[:-1] + count[:-1]).any():
                raise ValueError("layout ram_gfns runs must be ascending and apart (repeated GFNs)")
        else:
            ram = _i64(ram)
        pod = _i64(layout.pod_gfns)
        mmio = _i64(layout.mmio_gfns)
        special = _i64(layout.special_gfns)
        for name, arr in (("ram_gfns", ram), ("pod_gfns", pod), ("mmio_gfns", mmio), ("special_gfns", special)):
            if not isinstance(arr, np.ndarray):
                continue
            if arr.size and (int(arr.min()) < 0 or int(arr.max()) > MAX_GFN):
                raise ValueError(f"layout {name} must be in [0, {MAX_GFN:#x}]")
            # Strictly increasing arrays (the usual layout) skip the sort.
            if arr.size > 1 and not (arr[1:] > arr[:-1]).all() and sorted_unique(arr).size != arr.size:
                raise ValueError(f"layout {name} has repeated GFNs")
        n_ram = int(ram.size)
        need = n_ram + int(layout.pod_cache_pages) + int(special.size)
        if need > self.frames.free_frames:
            raise XenError(ENOMEM, f"domain needs {need} frames, host has {self.frames.free_frames}")
        tok = layout.ram_tokens
        if tok is not None:
            if isinstance(tok, np.ndarray) or not hasattr(tok, "__getitem__"):
                tok = np.asarray(tok, dtype=np.uint64).reshape(-1)
            if len(tok) != n_ram:
                raise ValueError("ram_tokens must match ram_gfns in length")
        into = getattr(tok, "into", None)         # a lazy source that writes where it is told
        # In slices, so a guest of hundreds of GiB never holds more than one slice of
        # temporaries on top of its tables (a GfnRuns layout and lazy contents are
        # never whole arrays at all).
        for lo, part in _build_steps(ram, n_ram):
            mfns = self.frames.alloc(part.size)
            set_frames(self, part, P2MType.ram_rw, mfns)
            if into is not None:
                self.frames.fill(mfns, lambda pos, out, lo=lo: into(lo + pos, out))
            elif tok is not None:
                self.frames.write(mfns, np.asarray(tok[lo:lo + part.size], dtype=np.uint64))
        if (pod.size and (self.p2m.get_types(pod) != P2MType.invalid).any()) or \
                (mmio.size and (self.p2m.get_types(mmio) != P2MType.invalid).any()) or \
                (pod.size and mmio.size and np.intersect1d(pod, mmio).size):
            raise ValueError("layout GFNs must be unique across ram_gfns, pod_gfns and mmio_gfns")
        self.p2m.set(pod, P2MType.populate_on_demand, INVALID_MFN)
        self.pod.add(self.frames.alloc(int(layout.pod_cache_pages)))
        self.p2m.set(mmio, P2MType.mmio_direct, INVALID_MFN)
        if special.size:
            # alloc_magic_pages_hvm: populate_physmap of the special pages, then
            # xc_clear_domain_pages (fresh frames are scrubbed: token 0).
            if (self.p2m.get_types(special) != P2MType.invalid).any():
                raise ValueError("layout special_gfns must not overlap ram_gfns, pod_gfns or mmio_gfns")
            set_frames(self, special, P2MType.ram_rw, self.frames.alloc(special.size))
        self.hvm_params = {int(i): int(v) for i, v in layout.hvm_params}
        self.built = True


    def contents(self, gfns: np.ndarray, *, increasing: bool = False) -> np.ndarray:
        """Content tokens of the frames RAM GFNs map (what a foreign map of them reads),
        GET_BLOCK GFNs at a time: a large read holds no MFN array of its size, only the
        tokens it returns. ``increasing``: the caller knows ``gfns`` strictly
        increasing (``ram_gfns``' order), so a run among them is known by its ends."""
        g = _i64(gfns)
        if g.size <= GET_BLOCK:
            return self._contents_block(g, increasing=increasing)
        out = np.empty(g.size, dtype=np.uint64)
        for a in range(0, g.size, GET_BLOCK):
            self._contents_block(g[a:a + GET_BLOCK], out[a:a + GET_BLOCK], increasing)
        return out

    def _contents_block(self, g: np.ndarray, out: np.ndarray | None = None, increasing: bool = False) -> np.ndarray:
        # A run of GFNs mapping a run of frames (the builder's and an in-order restore's
        # layout) reads one slice of the token table; anything else, frame by frame.
        if not increasing:
            m0 = self.p2m.mfns.run_value(g)
        else:   # strictly increasing GFNs are a run exactly when they span their count
            m0 = self.p2m.mfns.run_value_of(int(g[0]), g.size) \
                if g.size and int(g[-1]) - int(g[0]) == g.size - 1 else None
        if m0 is not None:
            return self.frames.read_run(m0, g.size, out)
        if out is None:
            return self.frames.read(self.p2m.mfns.get(g))
        out[:] = self.frames.read(self.p2m.mfns.get(g))
        return out

    def write_contents(self, g: np.ndarray, tok: np.ndarray, run: bool = False) -> None:
        """Store ``tok`` in the frames the unique RAM GFNs ``g`` map (as ``contents``
        reads them: a run of GFNs mapping a run of frames is one slice; ``run``: the
        caller knows ``g`` is a run of GFNs)."""
        m0 = self.p2m.mfns.run_value_of(int(g[0]), g.size) if run else self.p2m.mfns.run_value(g)
        if m0 is not None:
            self.frames.write_run(m0, tok)
        else:
            self.frames.write(self.p2m.mfns.get(g), tok)

    def stats(self) -> HypervisorStats:
        nc = self.logdirty.node_counts()
        return HypervisorStats(
            marks_dirty=self.marks_dirty,
            marks_clean=self.marks_clean,
            logdirty_nodes=nc.total,
            logdirty_nodes_peak=self.logdirty.nodes_peak,
            failed_allocs=self.logdirty.failed_allocs,
            dirty_count=self.logdirty.dirty_count,
            fault_count=self.logdirty.fault_count,
            log_dirty_enabled=self.log_dirty_enabled,
            populated_pages=self.p2m.ram_count(),
            pod_entries=int(self.p2m.type_counts[P2MType.populate_on_demand]),
            pod_cache_pages=self.pod.count,
            host_free_frames=self.frames.free_frames,
            dropped_writes=self.dropped_writes,
            write_faults=self.write_faults,
            logdirty_levels=(nc.l4, nc.l3, nc.l2, nc.l1),
            pod_failures=self.pod_failures,
            orphaned_frames=self.orphaned_frames,
            now=self.now,
        )


class Hypervisor:
    """One domain on a simulated Xen host (see docs/CONTRACTS.md): the hypercall and
    domctl surface, each call served by the module that mirrors its Xen file."""

    def __init__(self, host_frames: int, behaviour="fixed", logdirty_pool_pages: int | None = None,
                 record_events: bool = True):
        self.domain = Domain(host_frames, behaviour, logdirty_pool_pages, record_events, ops=self)

    # ================================================================ the domain's parts

    @property
    def sites(self) -> dict:
        return self.domain.sites

    @property
    def behaviour(self):
        return self.domain.behaviour

    @property
    def p2m(self) -> P2M:
        return self.domain.p2m

    @property
    def m2p(self) -> M2P:
        return self.domain.m2p

    @property
    def frames(self) -> HostFrames:
        return self.domain.frames

    @property
    def logdirty(self) -> LogDirtyTree:
        return self.domain.logdirty

    @property
    def pod(self) -> PoDCache:
        return self.domain.pod

    @property
    def sched(self) -> VcpuScheduler:
        return self.domain.sched

    @property
    def log_dirty_enabled(self) -> bool:
        return self.domain.log_dirty_enabled

    @property
    def record_events(self) -> bool:
        return self.domain.trace.record

    # ================================================================ building and scheduling

    def build(self, layout: DomainLayout) -> None:
        """The domain builder: RAM, PoD entries + cache, MMIO; log-dirty off, nothing marked."""
        self.domain.build(layout)

    def attach_guest(self, guest) -> None:
        self.domain.sched.guest = guest

    @property
    def guest(self):
        return self.domain.guest

    @property
    def now(self) -> float:
        """The domain's virtual clock (seconds): the last time the guest was run to."""
        return self.domain.now

    @property
    def state(self) -> str:
        """``running``, ``paused`` or ``suspended``."""
        return self.domain.state

    def advance_to(self, t: float) -> None:
        """Run the guest's vCPUs up to virtual time ``t`` (``VcpuScheduler.advance_to``)."""
        self.domain.advance_to(t)

    def apply(self, op):
        """Serve one guest operation; returns what the guest's generator is sent."""
        return self.domain.sched.apply(op)

    def track(self, gfns) -> None:
        """Follow these GFNs: their writes are reported as ``TrackedWritesSeen`` events."""
        self.domain.trace.track(gfns)

    def drain_events(self) -> list[HypervisorEvent]:
        return self.domain.trace.drain()

    # ================================================================ guest-facing (memory.c, p2m.c, hvm.c)

    def guest_write(self, gfns, tokens, *, t: float | None = None, times=None) -> None:
        """The guest's vCPUs write ``gfns`` (last write wins) with content ``tokens``
        at ``t`` (each at ``times[i]`` when given, in order)."""
        physmap.guest_write(self.domain, gfns, tokens, self.domain.at(t), times)

    def decrease_reservation(self, gfns, *, t: float | None = None) -> HypercallResult:
        """XENMEM_decrease_reservation (balloon inflate), order-0 extents."""
        return memory.decrease_reservation(self.domain, gfns, self.domain.at(t))

    def populate_physmap(self, gfns, pod: bool = False, *, t: float | None = None) -> HypercallResult:
        """XENMEM_populate_physmap (balloon deflate), order-0 extents; ``pod`` asks for
        PoD entries."""
        g = _i64(gfns)
        k, errno = memory.populate_physmap(self.domain, g, pod, self.domain.at(t))
        return HypercallResult(rc=k, done=g[:k].copy(), errno=errno)

    def decrease_reservation_run(self, gfns, sizes, *, t: float | None = None) -> list[HypercallResult]:
        """Back-to-back XENMEM_decrease_reservation calls (``abi.DecreaseReservationRun``)."""
        t = self.domain.at(t)
        return memory.decrease_reservation_run(self.domain, _i64(gfns), sizes, t,
                                               lambda x: self.decrease_reservation(x, t=t))

    def populate_physmap_run(self, gfns, sizes, pod: bool = False, *,
                             t: float | None = None) -> list[HypercallResult]:
        """Back-to-back XENMEM_populate_physmap calls (``abi.PopulatePhysmapRun``)."""
        t = self.domain.at(t)
        return memory.populate_physmap_run(self.domain, _i64(gfns), sizes, pod, t,
                                           lambda x: self.populate_physmap(x, pod=pod, t=t))

    def add_to_physmap(self, src: int, dst: int, *, t: float | None = None) -> HypercallResult:
        """XENMEM_add_to_physmap, XENMAPSPACE_gmfn: move the frame at ``src`` to ``dst``."""
        return memory.add_to_physmap(self.domain, src, dst, self.domain.at(t))

    def remove_from_physmap(self, gfn: int, *, t: float | None = None) -> HypercallResult:
        """XENMEM_remove_from_physmap. The page stays the domain's (orphaned)."""
        return memory.remove_from_physmap(self.domain, gfn, self.domain.at(t))

    def set_typed_p2m_entry(self, gfn: int, p2m_type: int, *, t: float | None = None) -> HypercallResult:
        """set_typed_p2m_entry: map ``p2m_type`` (mmio_direct or map_foreign) over ``gfn``."""
        return physmap.set_typed_p2m_entry(self.domain, gfn, p2m_type, self.domain.at(t))

    def memory_mapping(self, first_gfn: int, nr: int, add: bool = True, *,
                       t: float | None = None) -> HypercallResult:
        """XEN_DOMCTL_memory_mapping from the device model: MMIO over (or off) a GFN range."""
        return domctl.memory_mapping(self.domain, self.domain.at(t), first_gfn, nr, add)

    def foreign_mapping(self, first_gfn: int, nr: int, add: bool = True, *,
                        t: float | None = None) -> HypercallResult:
        """XENMEM_acquire_resource into the domain's own physmap (or remove_from_physmap)."""
        return memory.foreign_mapping(self.domain, domctl.gfn_range(first_gfn, nr), nr, add, self.domain.at(t))

    # ================================================================ toolstack domctls (domctl.c)

    def shadow_op(self, t: float, op: int, *, mode: int = 0, pages: int = 0, want_bitmap: bool = True,
                  walk_s: float = 0.0) -> ShadowOpResult:
        """XEN_DOMCTL_shadow_op: ENABLE_LOGDIRTY, OFF, CLEAN, PEEK (``domctl.shadow_op``)."""
        return domctl.shadow_op(self.domain, t, op, mode, pages, want_bitmap, walk_s)

    def getpageframeinfo3(self, t: float, pfns) -> np.ndarray:
        """XEN_DOMCTL_getpageframeinfo3: per PFN the PFINFO nibble << 28 (uint32)."""
        return domctl.getpageframeinfo3(self.domain, t, pfns)

    def serve_span(self, t: float, pfns, timing, deadline: tuple[float, float] | None = None) -> SpanServed:
        """The saver's batches ``pfns[k*1024:(k+1)*1024]`` back to back from ``t``, as
        many as can be served at once (``hypervisor.span``)."""
        return serve_span(self.domain, t, pfns, timing, deadline)

    def map_foreign(self, t: float, pfns) -> tuple[np.ndarray, np.ndarray]:
        """xenforeignmemory_map of a batch, read-only: ``(tokens, err)``."""
        return domctl.map_foreign(self.domain, t, pfns)

    def pause(self, t: float) -> None:
        """domain_pause (nestable)."""
        domctl.pause(self.domain, t)

    def unpause(self, t: float) -> None:
        domctl.unpause(self.domain, t)

    def suspend(self, t: float) -> None:
        """The guest suspends (SCHEDOP_shutdown, reason suspend): it runs no more."""
        domctl.suspend(self.domain, t)

    def resume(self, t: float) -> None:
        """Resume a suspended domain (a failed migration's sender side)."""
        domctl.resume(self.domain, t)

    def max_gpfn(self) -> int:
        """domain_get_maximum_gpfn: p2m->max_mapped_pfn (never lowered)."""
        return domctl.max_gpfn(self.domain)

    def hvm_params(self) -> tuple[tuple[int, int], ...]:
        """HVMOP_get_param of every param the builder set, as ``(index, value)``."""
        return tuple(self.domain.hvm_params.items())

    # ================================================================ destination side

    def populate_physmap_exact(self, pfns, *, run: bool = False) -> None:
        """xc_domain_populate_physmap_exact: all extents or XenError. ``run``: the
        caller knows ``pfns`` is one contiguous increasing run (a restore group)."""
        memory.populate_physmap_exact(self.domain, _i64(pfns), self.domain.now, run=run)

    def write_pages(self, pfns, tokens, *, run: bool = False) -> None:
        """Foreign-map ``pfns`` read-write and copy ``tokens`` in (``domctl.write_pages``)."""
        domctl.write_pages(self.domain, pfns, tokens, run)

    def read_pages(self, pfns) -> tuple[np.ndarray, np.ndarray]:
        """Read-only map without P2M_ALLOC and without running the guest: ``(tokens, err)``."""
        return domctl.read_pages(self.domain, pfns)

    # ================================================================ introspection

    def p2m_types(self, gfns) -> np.ndarray:
        return self.domain.p2m.get_types(_i64(gfns))

    def p2m_mfns(self, gfns) -> np.ndarray:
        return self.domain.p2m.get(_i64(gfns))[1]

    def ram_gfns(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Sorted GFNs in [lo, hi) whose entry is a RAM type."""
        return self.domain.p2m.gfns_where(IS_RAM, lo, hi)

    def pod_gfns(self) -> np.ndarray:
        return self.domain.p2m.gfns_where(IS_POD)

    def snapshot(self, lo: int = 0, hi: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(gfns, tokens)`` of every RAM entry in [lo, hi), sorted by GFN."""
        g = self.ram_gfns(lo, hi)
        return g, self.domain.contents(g, increasing=True)

    def contents(self, gfns: np.ndarray, *, increasing: bool = False) -> np.ndarray:
        """Content tokens of the frames RAM GFNs map (``Domain.contents``)."""
        return self.domain.contents(gfns, increasing=increasing)

    def mapped_runs(self, lo: int, hi: int) -> np.ndarray:
        """``(k, 2)`` GFN runs within [lo, hi) outside which no P2M entry has ever been
        set (whole 1024-GFN blocks, ``P2M.ever_set_runs``). Not a Xen call: the engine uses it to
        account, in bulk, the all-XTAB batches Xen's saver walks through such holes."""
        return self.domain.p2m.ever_set_runs(int(lo), int(hi))

    @property
    def stats(self) -> HypervisorStats:
        return self.domain.stats()
