"""XENMEM_* operations on a domain's physmap, per call and per run of calls.

Mirrors ``xen/common/memory.c``: ``decrease_reservation`` (through
``p2m_pod_decrease_reservation``, ``xen/arch/x86/mm/p2m-pod.c``, then
``guest_remove_page``), ``populate_physmap`` (``alloc_domheap_pages`` then
``p2m_add_page``, or PoD entries), ``xenmem_add_to_physmap_one`` (XENMAPSPACE_gmfn) and
``XENMEM_remove_from_physmap``, with Xen's return conventions (the number of extents
done, stopping at the first failure). Extents are order 0.

A balloon driver makes its calls back to back (``abi.DecreaseReservationRun``,
``PopulatePhysmapRun``). Where one call's extents cannot change what another's do, the
run is served in one pass and cut into the calls made (``run_calls``): each gets the
result, the event and the log-dirty effect it gets when served alone (the effects come
from the same ``marks.remove`` / ``marks.add`` the per-call path uses). Elsewhere the
calls are served one by one. Every function takes the domain (``domain.Domain``).
"""

from __future__ import annotations

import numpy as np

from . import marks
from .abi import (EBUSY, EINVAL, ENOENT, ENOMEM, EPERM, INVALID_M2P_ENTRY, INVALID_MFN, IS_MAPPABLE, IS_POD,
                  IS_SPECIAL, MAX_GFN, FixSite, HypercallResult, MemoryOpKind, MemoryOpServed, P2MType, XenError,
                  run_bounds)
from .physmap import REMOVABLE, map_ram, mapping_call, populate_pod_in, remove_foreign_entries, set_frames, set_typed_entries, unmap
from .pod import decrease_plan
from .runs import first_repeat, first_true, monotone, sorted_unique
from .tables import lookup

#: Types guest_remove_page answers -ENOENT for.
_ENOENT_REMOVE = np.zeros(16, dtype=bool)
_ENOENT_REMOVE[[P2MType.invalid, P2MType.mmio_dm]] = True


def _i64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.int64).reshape(-1)


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
    k = first_true(~ok)
    if k > free:
        return free, ENOMEM
    return k, 0 if k == ok.size else (EINVAL if not inrange[k] else EBUSY)


# ==================================================================== one call

def decrease_reservation(d, gfns, t: float) -> HypercallResult:
    """XENMEM_decrease_reservation (balloon inflate), order-0 extents.

    Per extent: p2m_pod_decrease_reservation first (PoD entries dropped, RAM stolen
    into a short PoD cache, and a cache left larger than the outstanding entries
    trimmed to them, its frames back to the host), else guest_remove_page ->
    p2m_remove_entry, the frame going back to the host. Stops at the first failure (-ENOENT for a hole or
    mmio_dm, -EPERM for special entries); returns the number of extents done."""
    g = _i64(gfns)
    n = g.size
    inrange = (g >= 0) & (g <= MAX_GFN)
    types, mfns = d.p2m.get(g)
    bad = ~inrange | ~(lookup(REMOVABLE, types) | lookup(IS_POD, types))
    k = min(first_true(bad), first_repeat(g))   # a repeat finds its GFN already gone
    errno = _decrease_errno(k, n, bad, inrange, types)
    g, types, mfns = g[:k], types[:k], mfns[:k]
    is_pod, steal = decrease_plan(types, int(d.p2m.type_counts[P2MType.populate_on_demand]), d.pod.count)
    if is_pod.any():
        d.p2m.set(g[is_pod], P2MType.invalid, INVALID_MFN, old=types[is_pod])
    if steal.any():
        # p2m-pod.c decrease_reservation: steal for the cache (M2P invalid, with the
        # fix mark clean), then p2m_pod_cache_add.
        unmap(d, g[steal], mfns[steal].astype(np.int64), FixSite.POD_DECREASE_RESERVATION, types[steal])
        d.pod.add(mfns[steal])
    if is_pod.any() or steal.any():
        # out_entry_check: liabilities below assets -> p2m_pod_set_cache_target(entry_count).
        spare = d.pod.count - int(d.p2m.type_counts[P2MType.populate_on_demand])
        if spare > 0:
            d.frames.free(d.pod.take(spare))
    rest = ~(is_pod | steal)
    if rest.all():                 # the usual case: no PoD in the domain
        rm = mfns.astype(np.int64)
        unmap(d, g, rm, old=types)
        d.frames.free(rm[rm != INVALID_MFN])
    elif rest.any():
        rm = mfns[rest].astype(np.int64)
        unmap(d, g[rest], rm, old=types[rest])
        d.frames.free(rm[rm != INVALID_MFN])
    d.trace.memory_op(MemoryOpKind.DECREASE_RESERVATION, n, k, g, t)
    return HypercallResult(rc=k, done=g.copy(), errno=errno)


def populate_physmap(d, g: np.ndarray, pod: bool, t: float, run: bool = False) -> tuple[int, int]:
    """XENMEM_populate_physmap of int64 ``g``, order-0 extents: ``(extents done, errno)``.

    Real frames: alloc_domheap_pages then p2m_add_page(ram_rw); stops when the host is
    out of frames. With ``pod``: guest_physmap_mark_populate_on_demand, which refuses
    (-EBUSY) over RAM. ``run``: the caller knows ``g`` is one contiguous increasing run
    (see ``_populate_run``)."""
    if run and not pod and _populate_run(d, g, t):
        return g.size, 0
    n = g.size
    inrange = (g >= 0) & (g <= MAX_GFN)
    types, mfns = d.p2m.get(g)
    if pod:
        ok = inrange & ((types == P2MType.invalid) | (types == P2MType.mmio_dm) | lookup(IS_POD, types))
        k, errno = _populate_stop(ok, inrange, n)
        done = g[:k]
        d.p2m.set(sorted_unique(done), P2MType.populate_on_demand, INVALID_MFN)
        d.trace.memory_op(MemoryOpKind.POPULATE_PHYSMAP, n, k, done, t)
        return k, errno
    # p2m_add_page refuses special entries (Xen crashes the domain); a bad GFN fails.
    ok = inrange & ~lookup(IS_SPECIAL, types)
    k, errno = _populate_stop(ok, inrange, d.frames.free_frames)
    done = g[:k]
    if k:
        new = d.frames.alloc(k)
        mono = monotone(done)
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
        _orphan(d, old_m, lookup(REMOVABLE, old_t))
        if k - ug.size:
            d.orphaned_frames += k - ug.size
        map_ram(d, ug, umfn, old_t)
    d.trace.memory_op(MemoryOpKind.POPULATE_PHYSMAP, n, k, done, t)
    return k, errno


def _orphan(d, old_m: np.ndarray, was_ram: np.ndarray) -> None:
    """Frames a populate maps over leave the M2P and stay the domain's (orphaned)."""
    if was_ram.any():
        d.m2p.set(old_m[was_ram].astype(np.int64), INVALID_M2P_ENTRY)
        d.orphaned_frames += int(np.count_nonzero(was_ram))


def _populate_run(d, g: np.ndarray, t: float) -> bool:
    """``populate_physmap`` of ``g`` known to be one increasing run (a restore group of
    fresh PFNs: xg_sr_restore.c populate_pfns into memory.c populate_physmap), done as
    the general path does it when every extent succeeds and the host hands out a run of
    fresh frames: the run's types read as one slice, the frames taken as a run, the P2M
    and M2P set as two runs, and no per-extent array made. False (nothing done) when any
    of that does not hold: then the general path finds the failing extent and its errno."""
    n, g0 = g.size, int(g[0])
    if n == 0 or g0 < 0 or g0 + n - 1 > MAX_GFN or n > d.frames.free_frames:
        return False
    types = d.p2m.types.get_run(g0, n)
    # p2m_add_page refuses special entries: left to the general path's errors.
    if lookup(IS_SPECIAL, types).any():
        return False
    m0 = d.frames.alloc_run(n)
    if m0 is None:
        return False
    was_ram = lookup(REMOVABLE, types)
    if was_ram.any():           # as the general path: the old frames leave the M2P
        _orphan(d, d.p2m.mfns.get_run(g0, n), was_ram)
    map_ram(d, g, None, types, m0=m0)
    d.trace.memory_op(MemoryOpKind.POPULATE_PHYSMAP, n, n, g, t)
    return True


def populate_physmap_exact(d, p: np.ndarray, t: float, run: bool = False) -> None:
    """xc_domain_populate_physmap_exact: all extents or XenError."""
    k, errno = populate_physmap(d, p, False, t, run=run)
    if k != p.size:
        raise XenError(errno or ENOMEM, f"populate_physmap_exact: {k} of {p.size} PFNs populated; "
                                        f"pfn {int(p[k]):#x} failed")


def add_to_physmap(d, src: int, dst: int, t: float) -> HypercallResult:
    """XENMEM_add_to_physmap, XENMAPSPACE_gmfn: move the frame at ``src`` to ``dst``
    (xenmem_add_to_physmap_one): the page at ``dst`` goes (guest_remove_page), ``src``
    is unhooked (p2m_remove_entry: clean with the fix) and the frame is added at
    ``dst`` as ram_rw (p2m_add_page: dirty with the fix)."""
    src, dst = int(src), int(dst)
    rc = _add_to_physmap(d, src, dst)
    d.trace.memory_op(MemoryOpKind.ADD_TO_PHYSMAP, 1, rc, [src, dst] if rc == 0 else [], t)
    return HypercallResult(rc=rc, done=np.array([dst] if rc == 0 else [], dtype=np.int64), errno=-rc)


def _add_to_physmap(d, src: int, dst: int) -> int:
    if not (0 <= src <= MAX_GFN and 0 <= dst <= MAX_GFN):
        return -EINVAL
    (ts, td), (ms, md) = d.p2m.get([src, dst])
    # c9491ea21a: the source must be p2m_ram_rw or p2m_ram_logdirty.
    if ts not in (P2MType.ram_rw, P2MType.ram_logdirty):
        return -EINVAL
    if dst != src and IS_SPECIAL[td]:
        return -EBUSY       # p2m_add_page refuses special entries (Xen crashes the domain)
    S = np.array([src], dtype=np.int64)
    D = np.array([dst], dtype=np.int64)
    if dst != src and REMOVABLE[td]:
        unmap(d, D, np.array([md], dtype=np.int64))
        d.frames.free(np.array([md], dtype=np.int64))
    unmap(d, S, np.array([ms], dtype=np.int64))
    map_ram(d, D, np.array([ms], dtype=np.int64))
    return 0


def remove_from_physmap(d, gfn: int, t: float) -> HypercallResult:
    """XENMEM_remove_from_physmap: get_page_from_gfn(P2M_ALLOC) then
    guest_physmap_remove_page. The page stays the domain's (orphaned)."""
    gfn = int(gfn)
    rc = -ENOENT
    if 0 <= gfn <= MAX_GFN:
        G = np.array([gfn], dtype=np.int64)
        typ = populate_pod_in(d, G, d.p2m.get_types(G), t)[0]
        if IS_MAPPABLE[typ]:
            unmap(d, G, d.p2m.mfns.get(G).astype(np.int64))
            d.orphaned_frames += 1
            rc = 0
    d.trace.memory_op(MemoryOpKind.REMOVE_FROM_PHYSMAP, 1, rc, [gfn] if rc == 0 else [], t)
    return HypercallResult(rc=rc, done=np.array([gfn] if rc == 0 else [], dtype=np.int64), errno=-rc)


def foreign_mapping(d, g: np.ndarray | None, nr: int, add: bool, t: float) -> HypercallResult:
    """Foreign frames in the domain's own physmap at GFNs ``g`` (``domctl.gfn_range``;
    None: -EINVAL). ``add``: XENMEM_acquire_resource from a translated caller, which
    calls set_foreign_p2m_entry -> set_typed_p2m_entry(p2m_map_foreign) for each frame
    straight over what the GFN held (RAM there loses its M2P entry and, with the fix,
    its dirty bit). Not ``add``: XENMEM_remove_from_physmap of each GFN, which drops a
    foreign entry without a mark (``remove_foreign_entries``).

    (The other foreign path, XENMEM_add_to_physmap with XENMAPSPACE_gmfn_foreign,
    p2m.c's p2m_add_foreign, first frees RAM at the GFN with guest_remove_page, so its
    clean mark is p2m_remove_page's and set_typed_p2m_entry only ever meets a hole.)"""
    if add:
        return mapping_call(d, g, nr, lambda gs: set_typed_entries(d, gs, P2MType.map_foreign),
                            MemoryOpKind.ACQUIRE_RESOURCE, t)
    return mapping_call(d, g, nr, lambda gs: remove_foreign_entries(d, gs), MemoryOpKind.REMOVE_FROM_PHYSMAP, t)


# ==================================================================== runs of calls

def one_by_one(call, g: np.ndarray, bounds: np.ndarray) -> list[HypercallResult]:
    """A run of calls served one at a time, up to the first that does not finish."""
    out = []
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        out.append(call(g[a:b]))
        if out[-1].rc != b - a:
            break
    return out


def run_calls(d, kind: MemoryOpKind, g: np.ndarray, bounds: np.ndarray, k: int, errno: int, t: float,
              mark: marks.SiteMark | None) -> list[HypercallResult]:
    """Split a run served in one pass, whose extents ``g[:k]`` were done (``k``: where
    the first call that does not finish stops, with ``errno``), into the calls made:
    each gets the result, the event and the log-dirty effect (``mark.split``) it has
    when served alone (memory.c returns to the guest after each call).

    The arrays of all calls are cut from two copies (the results' done GFNs; the
    events' GFNs, which their effects record too), not copied call by call."""
    ncalls = int(np.searchsorted(bounds[:-1], k, side="right"))
    starts = bounds[:ncalls].tolist()
    ends = bounds[1:ncalls + 1].tolist()
    done = g.copy()
    out = [HypercallResult(rc=min(b, k) - a, done=done[a:min(b, k)], errno=0 if b <= k else errno)
           for a, b in zip(starts, ends)]
    if not d.trace.record:
        return out
    d.trace.flush_tracked()
    evg = g.copy()        # the events' record of the GFNs (their effects share it)
    cut = [min(b, k) for b in ends]
    if mark is None:      # nothing done: the (empty) run's mark was never made
        mark = marks.SiteMark("", marks.REMOVE, False, g[:0], None, 0, False)
    effects = mark.split(evg, starts, cut)
    t = float(t)
    for i, (a, b) in enumerate(zip(starts, ends)):
        e = min(b, k)
        sites = (effects[i],) if e > a else ()
        if i == 0 and d.trace.effects:
            sites = d.trace.take_effects() + sites
        d.trace.append(MemoryOpServed(t, kind, b - a, e - a, evg[a:e], sites))
    return out


def decrease_reservation_run(d, g: np.ndarray, sizes, t: float, call) -> list[HypercallResult]:
    """Back-to-back XENMEM_decrease_reservation calls (``abi.DecreaseReservationRun``).

    In a domain with no PoD entries and an empty PoD cache (so
    p2m_pod_decrease_reservation hands every extent on to guest_remove_page), one
    call's extents never change what another's do: the run is served in one pass,
    stopping where the first call that does not finish stops, and each call made
    gets the result, event and effect it gets on its own. Otherwise the calls are
    served one by one (``call``, the per-call path)."""
    bounds = run_bounds(sizes, g.size)
    if bounds.size <= 2 or int(d.p2m.type_counts[P2MType.populate_on_demand]) or d.pod.count:
        return one_by_one(call, g, bounds)
    n = g.size
    inrange = (g >= 0) & (g <= MAX_GFN)
    types, mfns = d.p2m.get(g)
    bad = ~inrange | ~lookup(REMOVABLE, types)
    # A repeat finds its GFN already gone: in its own call, or in a later one, which
    # reads it invalid (-ENOENT either way).
    k = min(first_true(bad), first_repeat(g))
    errno = _decrease_errno(k, n, bad, inrange, types)
    g, types, mfns = g[:k], types[:k], mfns[:k].astype(np.int64)
    mark = None
    if k:
        # guest_remove_page -> p2m_remove_entry for every extent done (as ``unmap``).
        valid = mfns != INVALID_MFN
        d.m2p.set(mfns if valid.all() else mfns[valid], INVALID_M2P_ENTRY)
        mark = marks.remove(d, g, FixSite.P2M_REMOVE_PAGE)
        d.p2m.set(g, P2MType.invalid, INVALID_MFN, old=types)
        d.frames.free(mfns[valid])
    return run_calls(d, MemoryOpKind.DECREASE_RESERVATION, g, bounds, k, errno, t, mark)


def populate_physmap_run(d, g: np.ndarray, sizes, pod: bool, t: float, call) -> list[HypercallResult]:
    """Back-to-back XENMEM_populate_physmap calls (``abi.PopulatePhysmapRun``).

    Real frames for ascending GFNs (the balloon's deflate) are served in one pass:
    the extents are distinct, the frames come off the allocator in the order the
    calls would take them, and the run stops where the first call that does not
    finish stops (a bad GFN, or the host out of frames); each call made gets the
    result, event and effect it gets on its own. PoD entries, other orders and a
    bounded log-dirty pool (where the order marks are made in matters) are served
    one by one (``call``)."""
    bounds = run_bounds(sizes, g.size)
    if pod or bounds.size <= 2 or d.logdirty.pool_pages is not None or monotone(g) != 1:
        return one_by_one(call, g, bounds)
    inrange = (g >= 0) & (g <= MAX_GFN)
    types, mfns = d.p2m.get(g)
    ok = inrange & ~lookup(IS_SPECIAL, types)
    # Earlier calls take their frames first: the run stops where the first bad
    # extent or the last free frame is.
    k, errno = _populate_stop(ok, inrange, d.frames.free_frames)
    g, types, mfns = g[:k], types[:k], mfns[:k]
    mark = None
    if k:
        new = d.frames.alloc(k)
        # As populate_physmap: over RAM the old frame's M2P goes, the page stays the domain's.
        _orphan(d, mfns, lookup(REMOVABLE, types))
        # map_ram: p2m_add_page(ram_rw), then the add site's mark.
        set_frames(d, g, P2MType.ram_rw, new, old=types)
        mark = marks.add(d, g)
    return run_calls(d, MemoryOpKind.POPULATE_PHYSMAP, g, bounds, k, errno, t, mark)
