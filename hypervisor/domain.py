"""The simulated Xen: one domain, its scheduling, and the hypercall and domctl surface.

Mirrors, for an HVM/PVH guest under HAP:
* ``xen/common/memory.c`` - XENMEM_decrease_reservation, populate_physmap,
  add_to_physmap (XENMAPSPACE_gmfn), remove_from_physmap, with Xen's return
  conventions (number of extents done, stopping at the first failure);
* ``xen/arch/x86/mm/p2m.c`` - ``p2m_remove_entry``, ``p2m_add_page``,
  ``set_typed_p2m_entry``, ``xenmem_add_to_physmap_one``; and the seed patch
  98fccdf0ac ("x86/mm: update log-dirty bitmap when manipulating P2M"), switched by
  ``behaviour``: ``fixed`` marks a GFN clean where it leaves the P2M and dirty where it
  enters it; ``pre-fix`` does neither. Nothing else differs;
* ``xen/arch/x86/mm/p2m-pod.c`` (through ``pod.py``) - PoD cache, demand populate,
  cache stealing;
* ``xen/arch/x86/mm/hap/hap.c`` and ``xen/arch/x86/hvm/hvm.c`` - HAP log-dirty: enable
  turns ram_rw into ram_logdirty, the first write to a logdirty GFN marks it and turns
  it back to rw, CLEAN re-protects, OFF turns logdirty back into rw;
* ``xen/arch/x86/mm/paging.c`` (through ``logdirty.py``) and ``xen/arch/x86/domctl.c``
  - XEN_DOMCTL_shadow_op, getpageframeinfo3, and the foreign map a toolstack does;
* the scheduler, as far as this model needs one (``sched.py``): before serving a
  request stamped ``t`` the hypervisor runs the guest up to ``t`` unless the domain is
  paused or suspended (or held paused by a CLEAN/PEEK walk).

Every hypercall takes the virtual time it is served at (``t``; the domain's clock when
omitted) and returns its errno on its result; nothing is passed through attributes.

Deliberate simplifications (each noted where it applies): extents are order 0; a
page unmapped by remove_from_physmap, or replaced by populate_physmap over RAM, stays
the domain's (as in Xen, it is freed only at teardown) and is counted in
``orphaned_frames``; a demand-populate with an empty PoD cache (Xen crashes the
domain) is counted in ``pod_failures`` and the access is dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .abi import (E2BIG, EBUSY, EINVAL, ENOENT, ENOMEM, EPERM, INVALID_M2P_ENTRY, INVALID_MFN,
                  IS_GUEST_WRITABLE, IS_MAPPABLE, IS_POD, IS_RAM, IS_SPECIAL, MAX_BATCH_SIZE, MAX_GFN, PFINFO_LTAB_SHIFT,
                  SHADOW_LOGDIRTY_FINAL, DomainLayout, GfnRuns, POD_DEMAND_POPULATE, HypercallResult,
                  LogDirtyEffect, P2MType, PFINFO_OF_TYPE, run_bounds, ShadowOp, ShadowStats, XenError, behaviour_label,
                  site_behaviours)
from .frames import HostFrames
from .logdirty import TREE_PFNS, DirtyBitmap, LogDirtyTree, sorted_unique
from .p2m import GET_BLOCK, M2P, P2M, run_start
from .pod import PoDCache, decrease_plan
from .sched import VcpuScheduler
from .span import SpanServed, serve_span
from .tables import lookup, run_array, stable_order

_EMPTY = np.empty(0, dtype=np.int64)

#: Types guest_remove_page removes (RAM, and broken frames).
_REMOVABLE = IS_RAM.copy()
_REMOVABLE[P2MType.ram_broken] = True
#: Types guest_remove_page answers -ENOENT for.
_ENOENT_REMOVE = np.zeros(16, dtype=bool)
_ENOENT_REMOVE[[P2MType.invalid, P2MType.mmio_dm]] = True


@dataclass(frozen=True, slots=True)
class ShadowOpResult:
    """What XEN_DOMCTL_shadow_op hands back: ``pages`` (the walked count, normally the
    requested one), ``stats`` read before the walk, and the bitmap (CLEAN/PEEK with
    ``want_bitmap``; None otherwise)."""

    pages: int
    stats: ShadowStats
    bitmap: DirtyBitmap | None


#: RAM entries the domain builder maps per step.
_BUILD_SLICE = 1 << 18   # 2^18 entries: ~8 MiB of temporaries per step at most


@dataclass(frozen=True, slots=True)
class HypervisorEvent:
    """A memory op or domain-state change: ``rc`` is Xen's return value (extents done for
    decrease/populate, 0 or -errno otherwise); ``gfns`` the GFNs it handled; ``sites``
    what each P2M call site it went through did to the log-dirty bitmap."""

    t: float
    kind: str
    nr: int
    rc: int
    gfns: np.ndarray | None = None
    sites: tuple[LogDirtyEffect, ...] = ()
    detail: dict | None = None    # kind ``track_writes``: per tracked GFN arrays


@dataclass(frozen=True, slots=True)
class HypervisorStats:
    marks_dirty: int            # bits actually set in the log-dirty tree, by any path
    marks_clean: int            # bits actually cleared by removal sites (fixed only)
    logdirty_nodes: int         # tree pages held now (Xen's log_dirty.allocs)
    logdirty_nodes_peak: int
    failed_allocs: int
    dirty_count: int            # internal (unsaturated) counter
    fault_count: int
    log_dirty_enabled: bool
    populated_pages: int        # P2M entries of RAM types
    pod_entries: int
    pod_cache_pages: int
    host_free_frames: int
    dropped_writes: int         # guest writes to non-RAM / read-only GFNs
    write_faults: int           # first writes to ram_logdirty GFNs
    # additions beyond CONTRACTS.md
    logdirty_levels: tuple[int, int, int, int] = (0, 0, 0, 0)   # nodes at L4, L3, L2, L1
    pod_failures: int = 0       # demand-populates that found the PoD cache empty
    orphaned_frames: int = 0    # frames unmapped but still the domain's
    now: float = 0.0


def _i64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.int64).reshape(-1)


def _monotone(g: np.ndarray) -> int:
    """1 if ``g`` is strictly increasing, -1 if strictly decreasing, else 0 (so unique:
    the balloon's and the restore's runs skip the sort that finds repeats)."""
    if g.size < 2:
        return 1
    d = g[1:] > g[:-1]
    if d.all():
        return 1
    if not d.any() and bool((g[1:] < g[:-1]).all()):
        return -1
    return 0


def _first_repeat(g: np.ndarray) -> int:
    """Index of the first element equal to an earlier one (``len(g)`` if none)."""
    if g.size < 2 or _monotone(g):
        return g.size
    order = stable_order(g)
    s = g[order]
    rep = np.flatnonzero(s[1:] == s[:-1])
    return int(order[rep + 1].min()) if rep.size else g.size


def _last_wins(g: np.ndarray, tok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique GFNs (sorted) with the token of each one's last occurrence."""
    if g.size < 2 or bool((g[1:] > g[:-1]).all()):
        return g, tok
    order = stable_order(g)
    s = g[order]
    last = np.ones(s.size, dtype=bool)
    last[:-1] = s[1:] != s[:-1]
    return s[last], tok[order[last]]


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


def _removal_effect(site: str, fixed: bool, gfns: np.ndarray, was: np.ndarray | None,
                    cleared: int) -> LogDirtyEffect:
    """What a removal site did to the log-dirty bitmap for ``gfns``: ``was`` marks those
    that were dirty (None: not looked at); with the fix ``cleared`` bits went, without
    it the dirty ones are left over."""
    dirty = _EMPTY if was is None else gfns[was]
    return LogDirtyEffect(site, "remove", fixed, gfns.copy(), dirty, cleared, 0, _EMPTY if fixed else dirty, _EMPTY)


def _addition_effect(site: str, fixed: bool, gfns: np.ndarray, was: np.ndarray | None,
                     marked: int) -> LogDirtyEffect:
    """What an addition site did for ``gfns``: with the fix ``marked`` bits were set;
    without it the ones not already dirty stay unmarked."""
    dirty = _EMPTY if was is None else gfns[was]
    unmarked = gfns[~was] if not fixed and was is not None else _EMPTY
    return LogDirtyEffect(site, "add", fixed, gfns.copy(), dirty, 0, marked, _EMPTY, unmarked)


def _decrease_errno(k: int, n: int, bad: np.ndarray, inrange: np.ndarray, types: np.ndarray) -> int:
    """Why a decrease_reservation of ``n`` extents stopped at extent ``k`` (0: it did
    not): -ENOENT for a hole, an mmio_dm entry or a GFN already gone, -EPERM for
    special entries (guest_remove_page)."""
    if k == n:
        return 0
    if not bad[k] or not inrange[k] or _ENOENT_REMOVE[types[k]]:
        return ENOENT
    return EPERM


def _populate_stop(ok: np.ndarray, inrange: np.ndarray, free: int) -> tuple[int, int]:
    """``(extents done, errno)`` of a populate_physmap whose extents are ``ok`` up to
    the first bad one (-EINVAL out of range, -EBUSY over a special entry), with
    ``free`` frames left on the host (-ENOMEM when they run out first)."""
    k = _first_true(~ok)
    if k > free:
        return free, ENOMEM
    return k, 0 if k == ok.size else (EINVAL if not inrange[k] else EBUSY)


def _first_true(mask: np.ndarray) -> int:
    i = np.flatnonzero(mask)
    return int(i[0]) if i.size else mask.size


class Hypervisor:
    """One domain on a simulated Xen host (see docs/CONTRACTS.md)."""

    def __init__(self, host_frames: int, behaviour="fixed", logdirty_pool_pages: int | None = None,
                 record_events: bool = True):
        #: ``fixed`` / ``pre-fix`` for every call site of the seed patch, or a mapping
        #: site -> behaviour (hypervisor.abi.FIX_SITES) to switch them one at a time.
        self.sites = site_behaviours(behaviour)
        self.behaviour = behaviour_label(self.sites)
        self._site_fixed = {s: b == "fixed" for s, b in self.sites.items()}
        self.frames = HostFrames(host_frames)
        self.p2m = P2M()
        self.m2p = M2P()
        self.logdirty = LogDirtyTree(logdirty_pool_pages)
        self.pod = PoDCache()
        self.log_dirty_enabled = False
        #: The vCPUs' scheduling and the domain's virtual clock.
        self.sched = VcpuScheduler(self, lambda kind, nr, t: self._event(kind, nr, 0, t=t))
        #: A destination domain has nobody reading its events: don't keep them.
        self.record_events = record_events
        self._built = False
        self._events: list[HypervisorEvent] = []
        self._effects: list[LogDirtyEffect] = []
        #: GFNs followed one by one (``track``); their writes are reported in summary.
        self._tracked = _EMPTY
        self._tw: dict[int, list[float]] = {}     # gfn -> [writes, first, last, logged]
        # counters
        self.marks_dirty = 0
        self.marks_clean = 0
        self.dropped_writes = 0
        self.write_faults = 0
        self.pod_failures = 0
        self.orphaned_frames = 0

    # ================================================================ building

    def build(self, layout: DomainLayout) -> None:
        """The domain builder: RAM, PoD entries + cache, MMIO; log-dirty off, nothing marked."""
        if self._built:
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
        for name, arr in (("ram_gfns", ram), ("pod_gfns", pod), ("mmio_gfns", mmio)):
            if not isinstance(arr, np.ndarray):
                continue
            if arr.size and (int(arr.min()) < 0 or int(arr.max()) > MAX_GFN):
                raise ValueError(f"layout {name} must be in [0, {MAX_GFN:#x}]")
            # Strictly increasing arrays (the usual layout) skip the sort.
            if arr.size > 1 and not (arr[1:] > arr[:-1]).all() and sorted_unique(arr).size != arr.size:
                raise ValueError(f"layout {name} has repeated GFNs")
        n_ram = int(ram.size)
        need = n_ram + int(layout.pod_cache_pages)
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
            self._set_frames(part, P2MType.ram_rw, mfns)
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
        self._built = True

    def attach_guest(self, guest) -> None:
        self.sched.guest = guest

    # ================================================================ scheduling

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

    def apply(self, op):
        """Serve one guest operation; returns what the guest's generator is sent."""
        return self.sched.apply(op)

    def _at(self, t: float | None) -> float:
        return self.now if t is None else float(t)

    def track(self, gfns) -> None:
        """Follow these GFNs: their writes are reported as ``track_writes`` events (one
        per span between two other events), so a consumer can tell a page's whole story."""
        self._tracked = sorted_unique(_i64(gfns))

    def _track_writes(self, g: np.ndarray, times: np.ndarray, faulted: np.ndarray) -> None:
        """Count the writes to tracked GFNs among ``g`` (in time order, at ``times``):
        how many, the first and last, and when the first of them was logged (``faulted``:
        the GFNs whose write faulted into the log-dirty bitmap, at their first write)."""
        hit = np.isin(g, self._tracked)
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

    def _flush_tracked(self) -> None:
        if not self._tw:
            return
        gfns = sorted(self._tw)
        rows = np.array([self._tw[g] for g in gfns], dtype=np.float64).reshape(-1, 4)
        self._tw = {}
        detail = {"writes": rows[:, 0].astype(np.int64), "first_s": rows[:, 1].copy(),
                  "last_s": rows[:, 2].copy(), "logged_s": rows[:, 3].copy()}
        self._events.append(HypervisorEvent(float(rows[:, 2].max()), "track_writes", len(gfns), 0,
                                            np.array(gfns, dtype=np.int64), (), detail))

    def _event(self, kind: str, nr: int, rc: int, gfns=None, *, t: float) -> None:
        if not self.record_events:
            return
        self._flush_tracked()
        effects, self._effects = tuple(self._effects), []
        self._events.append(HypervisorEvent(float(t), kind, int(nr), int(rc),
                                            None if gfns is None else _i64(gfns).copy(), effects))

    def drain_events(self) -> list[HypervisorEvent]:
        self._flush_tracked()
        ev, self._events = self._events, []
        return ev

    # ================================================================ marking

    def _mark_dirty(self, gfns: np.ndarray) -> None:
        # paging_mark_pfn_dirty: nothing unless the domain is in log-dirty mode.
        if self.log_dirty_enabled and gfns.size:
            self.marks_dirty += self.logdirty.mark_dirty(gfns)

    def _dirty_now(self, gfns: np.ndarray) -> np.ndarray | None:
        """Per-GFN "bit set now", when an effect record needs it (None otherwise)."""
        if not (self.record_events and self.log_dirty_enabled and gfns.size):
            return None
        return self.logdirty.is_dirty(gfns)

    def _was_dirty(self, gfns: np.ndarray) -> np.ndarray:
        """Those of ``gfns`` whose bit is set now (only what the effect record needs)."""
        was = self._dirty_now(gfns)
        return _EMPTY if was is None else gfns[was]

    def _fix_mark_dirty(self, gfns: np.ndarray, site: str = "guest_physmap_add_entry") -> None:
        # 98fccdf0ac: p2m_add_page marks each added GFN dirty.
        fixed = self._site_fixed[site]
        was = self._dirty_now(gfns)
        n = 0
        if fixed and self.log_dirty_enabled and gfns.size:
            n = self.logdirty.mark_dirty(gfns)
            self.marks_dirty += n
        if self.record_events:
            self._effects.append(_addition_effect(site, fixed, gfns, was, n))

    def _fix_mark_clean(self, gfns: np.ndarray, site: str) -> None:
        # 98fccdf0ac: paging_mark_pfn_clean next to set_gpfn_from_mfn(INVALID) in
        # p2m_remove_entry, set_typed_p2m_entry and p2m-pod.c's decrease_reservation.
        fixed = self._site_fixed[site]
        was = self._dirty_now(gfns)
        n = 0
        if fixed and self.log_dirty_enabled and gfns.size:
            n = self.logdirty.mark_clean(gfns)
            self.marks_clean += n
        if self.record_events:
            self._effects.append(_removal_effect(site, fixed, gfns, was, n))

    # ================================================================ P2M primitives

    def _unmap(self, gfns: np.ndarray, mfns: np.ndarray, site: str = "p2m_remove_page",
               old: np.ndarray | None = None) -> None:
        """p2m_remove_entry for RAM GFNs: M2P invalid, (fix) mark clean, P2M invalid.
        ``old``: the GFNs' P2M types when the caller has just read them."""
        if gfns.size == 0:
            return
        valid = mfns != INVALID_MFN
        self.m2p.set(mfns if valid.all() else mfns[valid], INVALID_M2P_ENTRY)
        self._fix_mark_clean(gfns, site)
        self.p2m.set(gfns, P2MType.invalid, INVALID_MFN, old=old)

    def _set_frames(self, gfns: np.ndarray, t: P2MType, mfns: np.ndarray | None, old: np.ndarray | None = None,
                    m0: int | None = None) -> None:
        """Map unique ``gfns`` to frames ``mfns`` as type ``t`` in the P2M and the M2P
        (``old``: the GFNs' current types, when just read). A run of GFNs onto a run of
        frames (a build step, a restore group) goes in as the two runs; ``m0``: the
        caller knows ``gfns`` is a run and its frames the run from ``m0`` (no ``mfns``)."""
        if m0 is not None:
            g0 = int(gfns[0])
        else:
            g0, m0 = run_start(gfns), run_start(mfns)
        if g0 is not None and m0 is not None and (mfns is None or gfns.size == mfns.size):
            self.p2m.set_run(g0, gfns.size, t, m0, old=old)
            self.m2p.set_run(m0, gfns.size, g0)
            return
        self.p2m.set(gfns, t, mfns, old=old)
        self.m2p.set(mfns, gfns)

    def _map_ram(self, gfns: np.ndarray, mfns: np.ndarray | None, old: np.ndarray | None = None,
                 m0: int | None = None) -> None:
        """p2m_add_page(..., p2m_ram_rw): a fresh entry is ram_rw in both behaviours, so
        under pre-fix its writes go unlogged until the next CLEAN re-protects it
        (``m0``: as ``_set_frames``)."""
        if gfns.size == 0:
            return
        self._set_frames(gfns, P2MType.ram_rw, mfns, old=old, m0=m0)
        self._fix_mark_dirty(gfns)

    def _pod_demand_populate(self, gfns: np.ndarray, t: float) -> np.ndarray:
        """p2m_pod_demand_populate for unique PoD GFNs; returns the mask of those backed.

        Marks each populated GFN dirty in both behaviours (pre-seed code already did)."""
        n = gfns.size
        k = min(n, self.pod.count)
        done = gfns[:k]
        if k:
            mfns = self.pod.take(k)
            self.frames.write(mfns, np.zeros(k, dtype=np.uint64))   # cache pages are zeroed
            self._set_frames(done, P2MType.ram_rw, mfns)
            dirty = self._was_dirty(done)
            before = self.marks_dirty
            self._mark_dirty(done)
            if self.record_events:
                self._effects.append(LogDirtyEffect(POD_DEMAND_POPULATE, "add", True, done.copy(), dirty,
                                                    0, self.marks_dirty - before))
        if k < n:
            # Xen: "PoD cache exhausted" -> domain_crash(). Counted here instead.
            self.pod_failures += n - k
        self._event("pod_populate", n, k if k == n else -ENOMEM, done, t=t)
        ok = np.zeros(n, dtype=bool)
        ok[:k] = True
        return ok

    def _populate_pod_in(self, g: np.ndarray, types: np.ndarray, t: float) -> np.ndarray:
        """P2M_ALLOC lookups: demand-populate the PoD GFNs among ``g``; new types."""
        pod = lookup(IS_POD, types)
        if pod.any():
            ug = sorted_unique(g[pod])
            self._pod_demand_populate(ug, t)
            types = self.p2m.get_types(g)
        return types

    # ================================================================ guest-facing

    def guest_write(self, gfns, tokens, *, t: float | None = None, times=None) -> None:
        """The guest's vCPUs write ``gfns`` (last write wins) with content ``tokens``
        at ``t`` (each at ``times[i]`` when given, in order)."""
        t = self._at(t)
        g = _i64(gfns)
        tok = np.asarray(tokens, dtype=np.uint64).reshape(-1)
        if g.size == 0:
            return
        raw = g
        g, tok = _last_wins(g, tok)
        types = self._populate_pod_in(g, self.p2m.get_types(g), t)
        ld = types == P2MType.ram_logdirty
        fg = _EMPTY
        if ld.any():
            # hvm_hap_nested_page_fault: paging_mark_pfn_dirty, then p2m_change_type_one
            # logdirty -> rw; later writes this round are not seen.
            fg = g[ld]
            self.write_faults += fg.size
            self._mark_dirty(fg)
            self.p2m.change_type(fg, P2MType.ram_logdirty, P2MType.ram_rw)
        if self._tracked.size and self.record_events:
            raw_times = np.full(raw.size, t) if times is None else np.asarray(times, dtype=np.float64).reshape(-1)
            self._track_writes(raw, raw_times, fg if self.log_dirty_enabled else _EMPTY)
        ok = lookup(IS_GUEST_WRITABLE, types)
        nbad = g.size - int(np.count_nonzero(ok))
        if nbad:
            self.dropped_writes += nbad
            g, tok = g[ok], tok[ok]
        if g.size:
            self._write_contents(g, tok)

    def decrease_reservation(self, gfns, *, t: float | None = None) -> HypercallResult:
        """XENMEM_decrease_reservation (balloon inflate), order-0 extents.

        Per extent: p2m_pod_decrease_reservation first (PoD entries dropped, RAM stolen
        into a short PoD cache), else guest_remove_page -> p2m_remove_entry, the frame
        going back to the host. Stops at the first failure (-ENOENT for a hole or
        mmio_dm, -EPERM for special entries); returns the number of extents done."""
        g = _i64(gfns)
        n = g.size
        inrange = (g >= 0) & (g <= MAX_GFN)
        types, mfns = self.p2m.get(g)
        bad = ~inrange | ~(lookup(_REMOVABLE, types) | lookup(IS_POD, types))
        k = min(_first_true(bad), _first_repeat(g))   # a repeat finds its GFN already gone
        errno = _decrease_errno(k, n, bad, inrange, types)
        g, types, mfns = g[:k], types[:k], mfns[:k]
        is_pod, steal = decrease_plan(types, int(self.p2m.type_counts[P2MType.populate_on_demand]),
                                      self.pod.count)
        if is_pod.any():
            self.p2m.set(g[is_pod], P2MType.invalid, INVALID_MFN, old=types[is_pod])
        if steal.any():
            # p2m-pod.c decrease_reservation: steal for the cache (M2P invalid, with the
            # fix mark clean), then p2m_pod_cache_add.
            self._unmap(g[steal], mfns[steal].astype(np.int64), "pod_decrease_reservation", types[steal])
            self.pod.add(mfns[steal])
        rest = ~(is_pod | steal)
        if rest.all():                 # the usual case: no PoD in the domain
            rm = mfns.astype(np.int64)
            self._unmap(g, rm, old=types)
            self.frames.free(rm[rm != INVALID_MFN])
        elif rest.any():
            rm = mfns[rest].astype(np.int64)
            self._unmap(g[rest], rm, old=types[rest])
            self.frames.free(rm[rm != INVALID_MFN])
        self._event("decrease_reservation", n, k, g, t=self._at(t))
        return HypercallResult(rc=k, done=g.copy(), errno=errno)

    def populate_physmap(self, gfns, pod: bool = False, *, t: float | None = None) -> HypercallResult:
        """XENMEM_populate_physmap (balloon deflate), order-0 extents.

        Real frames: alloc_domheap_pages then p2m_add_page(ram_rw); stops when the
        host is out of frames (rc = extents done). With ``pod``:
        guest_physmap_mark_populate_on_demand, which refuses (-EBUSY) over RAM."""
        g = _i64(gfns)
        k, errno = self._populate(g, pod, self._at(t))
        return HypercallResult(rc=k, done=g[:k].copy(), errno=errno)

    def _populate(self, g: np.ndarray, pod: bool, t: float, run: bool = False) -> tuple[int, int]:
        """``populate_physmap`` of int64 ``g``: ``(extents done, errno)``. ``run``: the
        caller knows ``g`` is one contiguous increasing run (see ``_populate_run``)."""
        if run and not pod and self._populate_run(g, t):
            return g.size, 0
        n = g.size
        inrange = (g >= 0) & (g <= MAX_GFN)
        types, mfns = self.p2m.get(g)
        if pod:
            ok = inrange & ((types == P2MType.invalid) | (types == P2MType.mmio_dm) | lookup(IS_POD, types))
            k, errno = _populate_stop(ok, inrange, n)
            done = g[:k]
            self.p2m.set(sorted_unique(done), P2MType.populate_on_demand, INVALID_MFN)
            self._event("populate_physmap", n, k, done, t=t)
            return k, errno
        # p2m_add_page refuses special entries (Xen crashes the domain); a bad GFN fails.
        ok = inrange & ~lookup(IS_SPECIAL, types)
        k, errno = _populate_stop(ok, inrange, self.frames.free_frames)
        done = g[:k]
        if k:
            new = self.frames.alloc(k)
            mono = _monotone(done)
            if mono:
                # No repeats (the balloon's runs, the restore's ascending groups):
                # the same sorted order the general case makes, without its sort.
                sl = slice(None) if mono > 0 else slice(None, None, -1)
                ug, umfn, old_t, old_m = done[sl], new[sl], types[:k][sl], mfns[:k][sl]
            else:
                # Repeats: each extent gets a frame; only the last one stays mapped.
                order = np.argsort(done, kind="stable")
                s = done[order]
                last = np.ones(k, dtype=bool)
                last[:-1] = s[1:] != s[:-1]
                ug, umfn = s[last], new[order][last]
                old_t, old_m = types[:k][order][last], mfns[:k][order][last]
            # p2m_add_page over RAM invalidates the old frame's M2P; the page stays the
            # domain's (no mark clean: the GFN is re-marked dirty by the add).
            was_ram = lookup(_REMOVABLE, old_t)
            if was_ram.any():
                self.m2p.set(old_m[was_ram].astype(np.int64), INVALID_M2P_ENTRY)
                self.orphaned_frames += int(np.count_nonzero(was_ram))
            if k - ug.size:
                self.orphaned_frames += k - ug.size
            self._map_ram(ug, umfn, old_t)
        self._event("populate_physmap", n, k, done, t=t)
        return k, errno

    def _populate_run(self, g: np.ndarray, t: float) -> bool:
        """``_populate`` of ``g`` known to be one increasing run (a restore group of
        fresh PFNs: xg_sr_restore.c populate_pfns into xen/common/memory.c
        populate_physmap), done as the general path does it when every extent succeeds and
        the host hands out a run of fresh frames: the run's types read as one slice,
        the frames taken as a run, the P2M and M2P set as two runs, and no per-extent
        array made. False (nothing done) when any of that does not hold: then the
        general path runs and finds the failing extent and its errno."""
        n, g0 = g.size, int(g[0])
        if n == 0 or g0 < 0 or g0 + n - 1 > MAX_GFN or n > self.frames.free_frames:
            return False
        types = self.p2m.types.get_run(g0, n)
        # p2m_add_page refuses special entries: left to the general path's errors.
        if lookup(IS_SPECIAL, types).any():
            return False
        m0 = self.frames.alloc_run(n)
        if m0 is None:
            return False
        was_ram = lookup(_REMOVABLE, types)
        if was_ram.any():           # as the general path: the old frames leave the M2P
            self.m2p.set(self.p2m.mfns.get_run(g0, n)[was_ram].astype(np.int64), INVALID_M2P_ENTRY)
            self.orphaned_frames += int(np.count_nonzero(was_ram))
        self._map_ram(g, None, types, m0=m0)
        self._event("populate_physmap", n, n, g, t=t)
        return True

    # ---------------------------------------------------------------- runs of calls

    def _one_by_one(self, call, g: np.ndarray, bounds: np.ndarray) -> list[HypercallResult]:
        """A run of calls served one at a time, up to the first that does not finish."""
        out = []
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            out.append(call(g[a:b]))
            if out[-1].rc != b - a:
                break
        return out

    def _run_calls(self, kind: str, g: np.ndarray, bounds: np.ndarray, k: int, errno: int, t: float,
                   site: str, change: str, was: np.ndarray | None, marking: bool) -> list[HypercallResult]:
        """Split a run served in one pass, whose extents ``g[:k]`` were done (``k``: where
        the first call that does not finish stops, with ``errno``), into the calls made:
        each gets the result, the event and the log-dirty effect (``_run_effects``) it
        has when served alone (memory.c returns to the guest after each call).

        The arrays of all calls are cut from two copies (the results' done GFNs; the
        events' GFNs, which their effects record too), not copied call by call."""
        ncalls = int(np.searchsorted(bounds[:-1], k, side="right"))
        starts = bounds[:ncalls].tolist()
        ends = bounds[1:ncalls + 1].tolist()
        done = g.copy()
        out = [HypercallResult(rc=min(b, k) - a, done=done[a:min(b, k)], errno=0 if b <= k else errno)
               for a, b in zip(starts, ends)]
        if not self.record_events:
            return out
        self._flush_tracked()
        evg = g.copy()        # the events' record of the GFNs (their effects share it)
        effects = self._run_effects(site, change, evg, was, marking, starts, [min(b, k) for b in ends])
        t = float(t)
        for i, (a, b) in enumerate(zip(starts, ends)):
            e = min(b, k)
            sites = (effects[i],) if e > a else ()
            if i == 0 and self._effects:
                sites, self._effects = tuple(self._effects) + sites, []
            self._events.append(HypervisorEvent(t, kind, b - a, e - a, evg[a:e], sites))
        return out

    def _run_effects(self, site: str, change: str, g: np.ndarray, was: np.ndarray | None, marking: bool,
                     starts: list[int], ends: list[int]) -> list[LogDirtyEffect]:
        """The log-dirty effect of each call ``g[a:e]`` of a run at ``site`` (``change``:
        ``remove``, p2m_remove_entry, or ``add``, p2m_add_page), as ``_removal_effect`` /
        ``_addition_effect`` give it for the call alone: ``was`` marks the GFNs whose bit
        was set (None: not looked at); ``marking``: the fix's mark was made (and, with
        an unbounded pool, flipped every bit it could). ``g`` is the events' copy of the
        run's GFNs: each effect's GFNs are a slice of it."""
        fixed = self._site_fixed[site]
        remove = change == "remove"
        # Bits set before each call's first extent (the calls made cover g[:k] in order;
        # only the last may be empty).
        cw = [0] * (len(starts) + 1)
        dg = ug = _EMPTY
        if was is not None:
            full = [a for a, e in zip(starts, ends) if e > a]
            if full:
                cw[1:len(full) + 1] = np.cumsum(np.add.reduceat(was, full, dtype=np.int64)).tolist()
                cw[len(full) + 1:] = cw[len(full):len(full) + 1] * (len(starts) - len(full))
            dg = g[was]
            ug = g[~was] if not (fixed or remove) else _EMPTY
        out = []
        for a, e, ca, ce in zip(starts, ends, cw[:-1], cw[1:]):
            dirty = _EMPTY if was is None else dg[ca:ce]
            if remove:
                out.append(LogDirtyEffect(site, "remove", fixed, g[a:e], dirty, ce - ca if marking else 0, 0,
                                          _EMPTY if fixed else dirty, _EMPTY))
            else:
                unmarked = ug[a - ca:e - ce] if ug is not _EMPTY else _EMPTY
                out.append(LogDirtyEffect(site, "add", fixed, g[a:e], dirty, 0,
                                          (e - a) - (ce - ca) if marking else 0, _EMPTY, unmarked))
        return out

    def decrease_reservation_run(self, gfns, sizes, *, t: float | None = None) -> list[HypercallResult]:
        """Back-to-back XENMEM_decrease_reservation calls (``abi.DecreaseReservationRun``).

        In a domain with no PoD entries and an empty PoD cache (so
        p2m_pod_decrease_reservation hands every extent on to guest_remove_page), one
        call's extents never change what another's do: the run is served in one pass,
        stopping where the first call that does not finish stops, and each call made
        gets the result, event and effect it gets on its own. Otherwise the calls are
        served one by one (``decrease_reservation``)."""
        g = _i64(gfns)
        bounds = run_bounds(sizes, g.size)
        t = self._at(t)
        if bounds.size <= 2 or int(self.p2m.type_counts[P2MType.populate_on_demand]) or self.pod.count:
            return self._one_by_one(lambda x: self.decrease_reservation(x, t=t), g, bounds)
        n = g.size
        inrange = (g >= 0) & (g <= MAX_GFN)
        types, mfns = self.p2m.get(g)
        bad = ~inrange | ~lookup(_REMOVABLE, types)
        # A repeat finds its GFN already gone: in its own call, or in a later one, which
        # reads it invalid (-ENOENT either way).
        k = min(_first_true(bad), _first_repeat(g))
        errno = _decrease_errno(k, n, bad, inrange, types)
        g, types, mfns = g[:k], types[:k], mfns[:k].astype(np.int64)
        site = "p2m_remove_page"
        fixed = self._site_fixed[site]
        was = self._dirty_now(g)
        # guest_remove_page -> p2m_remove_entry for every extent done (see _unmap).
        valid = mfns != INVALID_MFN
        if k:
            self.m2p.set(mfns if valid.all() else mfns[valid], INVALID_M2P_ENTRY)
            if fixed and self.log_dirty_enabled:
                self.marks_clean += self.logdirty.mark_clean(g)
            self.p2m.set(g, P2MType.invalid, INVALID_MFN, old=types)
            self.frames.free(mfns[valid])
        marking = fixed and self.log_dirty_enabled
        return self._run_calls("decrease_reservation", g, bounds, k, errno, t, site, "remove", was, marking)

    def populate_physmap_run(self, gfns, sizes, pod: bool = False, *,
                             t: float | None = None) -> list[HypercallResult]:
        """Back-to-back XENMEM_populate_physmap calls (``abi.PopulatePhysmapRun``).

        Real frames for ascending GFNs (the balloon's deflate) are served in one pass:
        the extents are distinct, the frames come off the allocator in the order the
        calls would take them, and the run stops where the first call that does not
        finish stops (a bad GFN, or the host out of frames); each call made gets the
        result, event and effect it gets on its own. PoD entries, other orders and a
        bounded log-dirty pool (where the order marks are made in matters) are served
        one by one (``populate_physmap``)."""
        g = _i64(gfns)
        bounds = run_bounds(sizes, g.size)
        t = self._at(t)
        if pod or bounds.size <= 2 or self.logdirty.pool_pages is not None or _monotone(g) != 1:
            return self._one_by_one(lambda x: self.populate_physmap(x, pod=pod, t=t), g, bounds)
        n = g.size
        inrange = (g >= 0) & (g <= MAX_GFN)
        types, mfns = self.p2m.get(g)
        ok = inrange & ~lookup(IS_SPECIAL, types)
        # Earlier calls take their frames first: the run stops where the first bad
        # extent or the last free frame is.
        k, errno = _populate_stop(ok, inrange, self.frames.free_frames)
        g, types, mfns = g[:k], types[:k], mfns[:k]
        site = "guest_physmap_add_entry"
        fixed = self._site_fixed[site]
        was = None
        if k:
            new = self.frames.alloc(k)
            # As populate_physmap: over RAM the old frame's M2P goes, the page stays the domain's.
            was_ram = lookup(_REMOVABLE, types)
            if was_ram.any():
                self.m2p.set(mfns[was_ram].astype(np.int64), INVALID_M2P_ENTRY)
                self.orphaned_frames += int(np.count_nonzero(was_ram))
            # _map_ram: p2m_add_page(ram_rw), then (with the fix) mark dirty.
            self._set_frames(g, P2MType.ram_rw, new, old=types)
            was = self._dirty_now(g)
            if fixed and self.log_dirty_enabled:
                self.marks_dirty += self.logdirty.mark_dirty(g)
        marking = fixed and self.log_dirty_enabled
        return self._run_calls("populate_physmap", g, bounds, k, errno, t, site, "add", was, marking)

    def add_to_physmap(self, src: int, dst: int, *, t: float | None = None) -> HypercallResult:
        """XENMEM_add_to_physmap, XENMAPSPACE_gmfn: move the frame at ``src`` to ``dst``
        (xenmem_add_to_physmap_one): the page at ``dst`` goes (guest_remove_page), ``src``
        is unhooked (p2m_remove_entry: clean with the fix) and the frame is added at
        ``dst`` as ram_rw (p2m_add_page: dirty with the fix)."""
        src, dst = int(src), int(dst)
        rc = self._add_to_physmap(src, dst)
        self._event("add_to_physmap", 1, rc, [src, dst] if rc == 0 else [], t=self._at(t))
        return HypercallResult(rc=rc, done=np.array([dst] if rc == 0 else [], dtype=np.int64), errno=-rc)

    def _add_to_physmap(self, src: int, dst: int) -> int:
        if not (0 <= src <= MAX_GFN and 0 <= dst <= MAX_GFN):
            return -EINVAL
        (ts, td), (ms, md) = self.p2m.get([src, dst])
        # c9491ea21a: the source must be p2m_ram_rw or p2m_ram_logdirty.
        if ts not in (P2MType.ram_rw, P2MType.ram_logdirty):
            return -EINVAL
        if dst != src and IS_SPECIAL[td]:
            return -EBUSY       # p2m_add_page refuses special entries (Xen crashes the domain)
        S = np.array([src], dtype=np.int64)
        D = np.array([dst], dtype=np.int64)
        if dst != src and _REMOVABLE[td]:
            self._unmap(D, np.array([md], dtype=np.int64))
            self.frames.free(np.array([md], dtype=np.int64))
        self._unmap(S, np.array([ms], dtype=np.int64))
        self._map_ram(D, np.array([ms], dtype=np.int64))
        return 0

    def remove_from_physmap(self, gfn: int, *, t: float | None = None) -> HypercallResult:
        """XENMEM_remove_from_physmap: get_page_from_gfn(P2M_ALLOC) then
        guest_physmap_remove_page. The page stays the domain's (orphaned)."""
        gfn, t = int(gfn), self._at(t)
        rc = -ENOENT
        if 0 <= gfn <= MAX_GFN:
            G = np.array([gfn], dtype=np.int64)
            typ = self._populate_pod_in(G, self.p2m.get_types(G), t)[0]
            if IS_MAPPABLE[typ]:
                m = self.p2m.mfns.get(G).astype(np.int64)
                self._unmap(G, m)
                self.orphaned_frames += 1
                rc = 0
        self._event("remove_from_physmap", 1, rc, [gfn] if rc == 0 else [], t=t)
        return HypercallResult(rc=rc, done=np.array([gfn] if rc == 0 else [], dtype=np.int64), errno=-rc)

    def set_typed_p2m_entry(self, gfn: int, p2m_type: int, *, t: float | None = None) -> HypercallResult:
        """set_typed_p2m_entry: map ``p2m_type`` (mmio_direct or map_foreign) over ``gfn``.
        RAM that was there is freed (M2P invalid, clean with the fix); a PoD entry is
        simply dropped from entry_count."""
        gfn, nt = int(gfn), int(p2m_type)
        rc = 0
        if nt not in (P2MType.mmio_direct, P2MType.map_foreign) or not 0 <= gfn <= MAX_GFN:
            rc = -EINVAL
        else:
            G = np.array([gfn], dtype=np.int64)
            (t,), (m,) = self.p2m.get(G)
            if IS_SPECIAL[t]:
                # An identical mapping is fine; anything else crashes the domain in Xen.
                rc = 0 if t == nt else -EBUSY
            else:
                if _REMOVABLE[t]:
                    mm = np.array([m], dtype=np.int64)
                    self.m2p.set(mm, INVALID_M2P_ENTRY)
                    self._fix_mark_clean(G, "set_typed_p2m_entry")
                    self.frames.free(mm)
                self.p2m.set(G, nt, INVALID_MFN)
        self._event("set_typed_p2m_entry", 1, rc, [gfn] if rc == 0 else [], t=self._at(t))
        return HypercallResult(rc=rc, done=np.array([gfn] if rc == 0 else [], dtype=np.int64), errno=-rc)

    # ================================================================ toolstack domctls

    def shadow_op(self, t: float, op: int, *, mode: int = 0, pages: int = 0, want_bitmap: bool = True,
                  walk_s: float = 0.0) -> ShadowOpResult:
        """XEN_DOMCTL_shadow_op: ENABLE_LOGDIRTY, OFF, CLEAN, PEEK (mode: FINAL only).

        Raises XenError: EINVAL for an unknown op or mode bit, or enabling twice; ENOMEM
        from CLEAN/PEEK after failed node allocations (nothing is cleared then)."""
        self.advance_to(t)
        try:
            op = ShadowOp(op)
        except ValueError:
            raise XenError(EINVAL, f"unknown shadow op {op}") from None
        if op == ShadowOp.ENABLE_LOGDIRTY:
            if self.log_dirty_enabled:
                raise XenError(EINVAL, "log-dirty mode is already enabled")
            # hap_enable_log_dirty: no tree yet; every rw entry becomes logdirty.
            self.log_dirty_enabled = True
            self.p2m.change_type_global(P2MType.ram_rw, P2MType.ram_logdirty)
            self._event("logdirty_enable", 0, 0, t=t)
            return ShadowOpResult(0, self.logdirty.stats(), None)
        if op == ShadowOp.OFF:
            # paging_log_dirty_disable: hap disable (logdirty -> rw), free the whole tree
            # (resets failed_allocs, keeps dirty_count).
            self.log_dirty_enabled = False
            self.p2m.change_type_global(P2MType.ram_logdirty, P2MType.ram_rw)
            nodes = self.logdirty.nodes
            self.logdirty.free()
            self._event("logdirty_off", nodes, 0, t=t)
            return ShadowOpResult(0, self.logdirty.stats(), None)
        if op in (ShadowOp.CLEAN, ShadowOp.PEEK):
            if mode & ~SHADOW_LOGDIRTY_FINAL:
                raise XenError(EINVAL, f"mode {mode:#x} has bits other than LOGDIRTY_FINAL")
            if pages < 0:
                raise XenError(EINVAL, f"pages must be >= 0, not {pages}")
            # (FINAL: hvm_mapped_guest_frames_mark_dirty; Xen holds no guest frames
            # write-mapped in this model, so it marks nothing.)
            clean = op == ShadowOp.CLEAN
            kind = "clean" if clean else "peek"
            try:
                bitmap, stats = (self.logdirty.clean if clean else self.logdirty.peek)(pages, want_bitmap)
            except XenError as e:
                self._event(kind, pages, -e.errno, t=t)
                raise
            if clean and self.log_dirty_enabled:
                # hap_clean_dirty_bitmap: re-protect every rw entry.
                self.p2m.change_type_global(P2MType.ram_rw, P2MType.ram_logdirty)
            # paging_log_dirty_op pauses the domain for the walk.
            self.sched.hold_for_walk(t, walk_s)
            self._event(kind, pages, stats.dirty_count, t=t)
            return ShadowOpResult(min(int(pages), TREE_PFNS), stats, bitmap)
        raise XenError(EINVAL, f"shadow op {op.name} is not modelled")

    def getpageframeinfo3(self, t: float, pfns) -> np.ndarray:
        """XEN_DOMCTL_getpageframeinfo3: per PFN the PFINFO nibble << 28 (uint32).

        get_page_from_gfn(P2M_ALLOC): PoD entries are demand-populated (and marked
        dirty) and read NOTAB; RAM -> NOTAB; ram_broken -> BROKEN; anything else
        (holes, MMIO, grant, foreign, out of range) -> XTAB."""
        p = _i64(pfns)
        if p.size > MAX_BATCH_SIZE:
            raise XenError(E2BIG, f"getpageframeinfo3 takes at most {MAX_BATCH_SIZE} PFNs, got {p.size}")
        self.advance_to(t)
        types = self._populate_pod_in(p, self.p2m.get_types(p), self.now)
        return PFINFO_OF_TYPE[types].astype(np.uint32) << PFINFO_LTAB_SHIFT

    def serve_span(self, t: float, pfns, timing, deadline: tuple[float, float] | None = None) -> SpanServed:
        """The saver's batches ``pfns[k*1024:(k+1)*1024]`` back to back from ``t``, as
        many as can be served at once (``hypervisor.span``)."""
        return serve_span(self, t, pfns, timing, deadline)

    def _read(self, p: np.ndarray, types: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ok = lookup(IS_MAPPABLE, types)
        err = np.where(ok, 0, -EINVAL).astype(np.int32)
        err[(types == P2MType.ram_paged) | (types == P2MType.ram_paging_in)] = -ENOENT
        tokens = np.zeros(p.size, dtype=np.uint64)
        if ok.any():
            tokens[ok] = self.frames.read(self.p2m.mfns.get(p[ok]))
        return tokens, err

    def map_foreign(self, t: float, pfns) -> tuple[np.ndarray, np.ndarray]:
        """xenforeignmemory_map of a batch, read-only: ``(tokens, err)`` with err 0 or
        -errno per page (-EINVAL where the GFN is not mappable RAM, as mod_l1_entry)."""
        p = _i64(pfns)
        self.advance_to(t)
        types = self._populate_pod_in(p, self.p2m.get_types(p), self.now)
        return self._read(p, types)

    def pause(self, t: float) -> None:
        """domain_pause (nestable)."""
        self.sched.pause(t)

    def unpause(self, t: float) -> None:
        self.sched.unpause(t)

    def suspend(self, t: float) -> None:
        """The guest suspends (SCHEDOP_shutdown, reason suspend): it runs no more."""
        self.sched.suspend(t)

    def resume(self, t: float) -> None:
        """Resume a suspended domain (a failed migration's sender side)."""
        self.sched.resume(t)

    def max_gpfn(self) -> int:
        """domain_get_maximum_gpfn: p2m->max_mapped_pfn (never lowered)."""
        return max(0, self.p2m.max_mapped_pfn)

    # ================================================================ destination side

    def populate_physmap_exact(self, pfns, *, run: bool = False) -> None:
        """xc_domain_populate_physmap_exact: all extents or XenError. ``run``: the
        caller knows ``pfns`` is one contiguous increasing run (a restore group), which
        spares the passes that would find it out."""
        p = _i64(pfns)
        k, errno = self._populate(p, False, self.now, run=run)
        if k != p.size:
            raise XenError(errno or ENOMEM,
                           f"populate_physmap_exact: {k} of {p.size} PFNs populated; "
                           f"pfn {int(p[k]):#x} failed")

    def write_pages(self, pfns, tokens, *, run: bool = False) -> None:
        """Foreign-map ``pfns`` read-write and copy ``tokens`` in (last write wins).
        Nothing is written unless every page maps. ``run``: the caller knows ``pfns``
        is one contiguous increasing run (no repeats; its types one slice)."""
        p = _i64(pfns)
        tok = np.asarray(tokens, dtype=np.uint64).reshape(-1)
        if tok.size != p.size:
            raise ValueError("write_pages: pfns and tokens differ in length")
        run = run and p.size > 0 and int(p[0]) >= 0 and int(p[-1]) <= MAX_GFN
        if run:
            types = self.p2m.types.get_run(int(p[0]), p.size)
        else:
            p, tok = _last_wins(p, tok)
            types = self.p2m.get_types(p)
        ok = lookup(IS_MAPPABLE, types)
        if not ok.all():
            bad = int(p[np.flatnonzero(~ok)[0]])
            raise XenError(EINVAL, f"Mapping of pfn {bad:#x} failed (p2m type "
                                   f"{P2MType(int(types[~ok][0])).name})")
        self._write_contents(p, tok, run)
        # A writable foreign mapping marks the page dirty when dropped (paging_mark_dirty).
        self._mark_dirty(p)

    def read_pages(self, pfns) -> tuple[np.ndarray, np.ndarray]:
        """Read-only map without P2M_ALLOC and without running the guest: ``(tokens, err)``."""
        p = _i64(pfns)
        return self._read(p, self.p2m.get_types(p))

    # ================================================================ introspection

    def p2m_types(self, gfns) -> np.ndarray:
        return self.p2m.get_types(_i64(gfns))

    def p2m_mfns(self, gfns) -> np.ndarray:
        return self.p2m.get(_i64(gfns))[1]

    def ram_gfns(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Sorted GFNs in [lo, hi) whose entry is a RAM type."""
        return self.p2m.gfns_where(IS_RAM, lo, hi)

    def pod_gfns(self) -> np.ndarray:
        return self.p2m.gfns_where(IS_POD)

    def snapshot(self, lo: int = 0, hi: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(gfns, tokens)`` of every RAM entry in [lo, hi), sorted by GFN."""
        g = self.ram_gfns(lo, hi)
        return g, self.contents(g, increasing=True)

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

    def _write_contents(self, g: np.ndarray, tok: np.ndarray, run: bool = False) -> None:
        """Store ``tok`` in the frames the unique RAM GFNs ``g`` map (as ``contents``
        reads them: a run of GFNs mapping a run of frames is one slice; ``run``: the
        caller knows ``g`` is a run of GFNs)."""
        m0 = self.p2m.mfns.run_value_of(int(g[0]), g.size) if run else self.p2m.mfns.run_value(g)
        if m0 is not None:
            self.frames.write_run(m0, tok)
        else:
            self.frames.write(self.p2m.mfns.get(g), tok)

    def mapped_runs(self, lo: int, hi: int) -> np.ndarray:
        """``(k, 2)`` GFN runs within [lo, hi) outside which no P2M entry has ever been
        set (the P2M's never-allocated chunks). Not a Xen call: the engine uses it to
        account, in bulk, the all-XTAB batches Xen's saver walks through such holes."""
        return self.p2m.types.present_runs(int(lo), int(hi))

    @property
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
