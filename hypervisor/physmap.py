"""The P2M's entry points every physmap change goes through, and the P2M_ALLOC lookup.

Mirrors ``xen/arch/x86/mm/p2m.c``: ``p2m_remove_entry`` (M2P invalid, the fix's clean
mark, P2M invalid), ``p2m_add_page`` (P2M and M2P set, ram_rw, the fix's dirty mark) and
``set_typed_p2m_entry`` (an MMIO / foreign entry over what was there), with the two
ways such an entry goes again (``clear_mmio_p2m_entry``; a foreign entry through
``p2m_remove_entry``, which leaves special types unmarked); the
``get_page_from_gfn(P2M_ALLOC)`` lookup, which demand-populates PoD entries
(``p2m_pod_demand_populate``, ``xen/arch/x86/mm/p2m-pod.c``); and the guest's writes
under HAP (``hvm_hap_nested_page_fault``, ``xen/arch/x86/hvm/hvm.c``): the first write
to a ram_logdirty GFN marks it dirty and makes it ram_rw again. The marks themselves
are made in ``marks.py``. Every function takes the domain (``domain.Domain``).
"""

from __future__ import annotations

import numpy as np

from . import marks
from .abi import (EINVAL, ENOENT, ENOMEM, EPERM, INVALID_M2P_ENTRY, INVALID_MFN, IS_GUEST_WRITABLE, IS_POD,
                  IS_RAM, IS_SPECIAL, MAX_GFN, FixSite, HypercallResult, MemoryOpKind, P2MType)
from .runs import first_true, last_wins, run_start, sorted_unique
from .tables import lookup

_EMPTY = np.empty(0, dtype=np.int64)

#: Types guest_remove_page removes (RAM, and broken frames).
REMOVABLE = IS_RAM.copy()
REMOVABLE[P2MType.ram_broken] = True


def unmap(d, gfns: np.ndarray, mfns: np.ndarray, site: FixSite = FixSite.P2M_REMOVE_PAGE,
          old: np.ndarray | None = None) -> None:
    """p2m_remove_entry for RAM GFNs: M2P invalid, (fix) mark clean, P2M invalid.
    ``old``: the GFNs' P2M types when the caller has just read them."""
    if gfns.size == 0:
        return
    valid = mfns != INVALID_MFN
    d.m2p.set(mfns if valid.all() else mfns[valid], INVALID_M2P_ENTRY)
    marks.removed(d, gfns, site)
    d.p2m.set(gfns, P2MType.invalid, INVALID_MFN, old=old)


def set_frames(d, gfns: np.ndarray, t: P2MType, mfns: np.ndarray | None, old: np.ndarray | None = None,
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
        d.p2m.set_run(g0, gfns.size, t, m0, old=old)
        d.m2p.set_run(m0, gfns.size, g0)
        return
    d.p2m.set(gfns, t, mfns, old=old)
    d.m2p.set(mfns, gfns)


def map_ram(d, gfns: np.ndarray, mfns: np.ndarray | None, old: np.ndarray | None = None,
            m0: int | None = None) -> None:
    """p2m_add_page(..., p2m_ram_rw): a fresh entry is ram_rw in both behaviours, so
    under pre-fix its writes go unlogged until the next CLEAN re-protects it
    (``m0``: as ``set_frames``)."""
    if gfns.size == 0:
        return
    set_frames(d, gfns, P2MType.ram_rw, mfns, old=old, m0=m0)
    marks.added(d, gfns)


def pod_demand_populate(d, gfns: np.ndarray, t: float) -> np.ndarray:
    """p2m_pod_demand_populate for unique PoD GFNs; returns the mask of those backed.
    Each populated GFN is marked dirty in both behaviours (``marks.pod_populated``)."""
    n = gfns.size
    k = min(n, d.pod.count)
    done = gfns[:k]
    if k:
        mfns = d.pod.take(k)
        d.frames.write(mfns, np.zeros(k, dtype=np.uint64))   # cache pages are zeroed
        set_frames(d, done, P2MType.ram_rw, mfns)
        marks.pod_populated(d, done)
    if k < n:
        # Xen: "PoD cache exhausted" -> domain_crash(). Counted here instead.
        d.pod_failures += n - k
    d.trace.memory_op(MemoryOpKind.POD_POPULATE, n, k if k == n else -ENOMEM, done, t)
    ok = np.zeros(n, dtype=bool)
    ok[:k] = True
    return ok


def populate_pod_in(d, g: np.ndarray, types: np.ndarray, t: float) -> np.ndarray:
    """P2M_ALLOC lookups: demand-populate the PoD GFNs among ``g``; their new types."""
    pod = lookup(IS_POD, types)
    if pod.any():
        pod_demand_populate(d, sorted_unique(g[pod]), t)
        types = d.p2m.get_types(g)
    return types


def set_typed_entries(d, gfns: np.ndarray, nt: int) -> tuple[int, int]:
    """set_typed_p2m_entry (p2m.c) of order-0 entries, one GFN after another, as
    map_mmio_regions (``set_mmio_p2m_entry``) and acquire_resource
    (``set_foreign_p2m_entry``) call it: ``(entries done, errno)``, stopping at the
    first GFN it refuses. Over a special entry only the identical mapping is accepted
    (a no-op); anything else Xen refuses with -EPERM after crashing the domain (the
    crash is not modelled: the call stops there). Over RAM (p2m_is_ram): the old frame's M2P entry
    goes and, with the fix, the GFN is marked clean; the frame itself is not freed (it
    stays the domain's, as after remove_from_physmap: ``orphaned_frames``). Over a PoD
    entry: one outstanding PoD entry less (the P2M's PoD count)."""
    n = gfns.size
    types, mfns = d.p2m.get(gfns)
    special = lookup(IS_SPECIAL, types)
    bad = special & (types != nt)
    k = first_true(bad)
    errno = 0
    if k < n:
        errno = EPERM
    g, types, mfns = gfns[:k], types[:k], mfns[:k]
    change = ~special[:k]
    if change.any():
        if not change.all():
            g, types, mfns = g[change], types[change], mfns[change]
        ram = lookup(IS_RAM, types)
        if ram.any():
            old = mfns[ram].astype(np.int64)
            d.m2p.set(old, INVALID_M2P_ENTRY)
            marks.removed(d, g[ram], FixSite.SET_TYPED_P2M_ENTRY)
            d.orphaned_frames += int(old.size)
        d.p2m.set(g, nt, INVALID_MFN, old=types)
    return k, errno


def clear_mmio_entries(d, gfns: np.ndarray) -> tuple[int, int]:
    """clear_mmio_p2m_entry (p2m.c) of order-0 entries, as unmap_mmio_regions calls it:
    each must be p2m_mmio_direct (else -EINVAL, stopping there) and becomes p2m_invalid:
    a hole. No mark: nothing the saver could send leaves, and the RAM the mapping
    covered does not come back. ``(entries done, errno)``."""
    types = d.p2m.get_types(gfns)
    k = first_true(types != P2MType.mmio_direct)
    if k:
        d.p2m.set(gfns[:k], P2MType.invalid, INVALID_MFN, old=types[:k])
    return k, (EINVAL if k < gfns.size else 0)


def remove_foreign_entries(d, gfns: np.ndarray) -> tuple[int, int]:
    """XENMEM_remove_from_physmap of foreign entries (memory.c: get_page_from_gfn gives
    the foreign page, guest_physmap_remove_page -> p2m_remove_entry): a special type
    keeps its M2P entry and gets no mark (p2m_remove_entry skips p2m_is_special), the
    GFN becomes p2m_invalid. Stops at the first GFN that is not map_foreign (-ENOENT).
    ``(entries done, errno)``."""
    types = d.p2m.get_types(gfns)
    k = first_true(types != P2MType.map_foreign)
    if k:
        d.p2m.set(gfns[:k], P2MType.invalid, INVALID_MFN, old=types[:k])
    return k, (ENOENT if k < gfns.size else 0)


def mapping_call(d, g: np.ndarray | None, nr: int, entries, kind: MemoryOpKind, t: float) -> HypercallResult:
    """One mapping hypercall over GFNs ``g`` (None: a bad range, -EINVAL): ``entries(g)``
    does the P2M part (``set_typed_entries``, ``clear_mmio_entries``,
    ``remove_foreign_entries``: ``(entries done, errno)``); the call is traced as ``kind``
    with Xen's answer, 0 or the first refusal's -errno."""
    if g is None:
        k, errno, done = 0, EINVAL, np.empty(0, dtype=np.int64)
    else:
        k, errno = entries(g)
        done = g[:k]
    d.trace.memory_op(kind, int(nr), -errno if errno else k, done, t)
    return HypercallResult(rc=-errno if errno else 0, done=done.copy(), errno=errno)


def set_typed_p2m_entry(d, gfn: int, p2m_type: int, t: float) -> HypercallResult:
    """set_typed_p2m_entry of one GFN (``set_typed_entries``): map ``p2m_type``
    (mmio_direct or map_foreign) over ``gfn``."""
    gfn, nt = int(gfn), int(p2m_type)
    rc = 0
    if nt not in (P2MType.mmio_direct, P2MType.map_foreign) or not 0 <= gfn <= MAX_GFN:
        rc = -EINVAL
    else:
        k, errno = set_typed_entries(d, np.array([gfn], dtype=np.int64), nt)
        rc = -errno if k == 0 else 0
    done = [gfn] if rc == 0 else []
    d.trace.memory_op(MemoryOpKind.SET_TYPED_P2M_ENTRY, 1, rc, done, t)
    return HypercallResult(rc=rc, done=np.array(done, dtype=np.int64), errno=-rc)


def guest_write(d, gfns, tokens, t: float, times=None) -> None:
    """The guest's vCPUs write ``gfns`` (last write wins) with content ``tokens`` at
    ``t`` (each at ``times[i]`` when given, in order)."""
    g = np.asarray(gfns, dtype=np.int64).reshape(-1)
    tok = np.asarray(tokens, dtype=np.uint64).reshape(-1)
    if g.size == 0:
        return
    raw = g
    g, tok = last_wins(g, tok)
    types = populate_pod_in(d, g, d.p2m.get_types(g), t)
    ld = types == P2MType.ram_logdirty
    fg = _EMPTY
    if ld.any():
        # hvm_hap_nested_page_fault: paging_mark_pfn_dirty, then p2m_change_type_one
        # logdirty -> rw; later writes this round are not seen.
        fg = g[ld]
        d.write_faults += fg.size
        marks.mark_dirty(d, fg)
        d.p2m.change_type(fg, P2MType.ram_logdirty, P2MType.ram_rw)
    if d.trace.tracked.size and d.trace.record:
        raw_times = np.full(raw.size, t) if times is None else np.asarray(times, dtype=np.float64).reshape(-1)
        d.trace.writes(raw, raw_times, fg if d.log_dirty_enabled else _EMPTY)
    ok = lookup(IS_GUEST_WRITABLE, types)
    nbad = g.size - int(np.count_nonzero(ok))
    if nbad:
        d.dropped_writes += nbad
        g, tok = g[ok], tok[ok]
    if g.size:
        d.write_contents(g, tok)
