"""The toolstack's domctls and foreign mappings on a domain.

Mirrors ``xen/arch/x86/domctl.c`` and ``xen/common/domctl.c``: XEN_DOMCTL_shadow_op
(``paging_domctl`` -> ``paging_log_dirty_op`` in ``xen/arch/x86/mm/paging.c``, with
HAP's ``hap_enable_log_dirty`` / ``hap_clean_dirty_bitmap`` in
``xen/arch/x86/mm/hap/hap.c``), XEN_DOMCTL_getpageframeinfo3,
XEN_DOMCTL_pausedomain / unpausedomain, domain_resume, and
XENMEM_maximum_gpfn (``domain_get_maximum_gpfn``), XEN_DOMCTL_memory_mapping
(``map_mmio_regions`` / ``unmap_mmio_regions``, ``xen/arch/x86/mm/p2m.c``); and the mappings a toolstack makes
of a domain's frames (``xenforeignmemory_map``: read-only at the source, read-write
where a restore copies pages in). Every function takes the domain (``domain.Domain``).
"""

from __future__ import annotations

import numpy as np

from . import marks
from .abi import (E2BIG, EINVAL, ENOENT, IS_MAPPABLE, MAX_BATCH_SIZE, MAX_GFN, PFINFO_LTAB_SHIFT, PFINFO_OF_TYPE,
                  SHADOW_LOGDIRTY_FINAL, HypercallResult, LogDirtyOp, MemoryOpKind, P2MType, ShadowOp,
                  ShadowOpResult, XenError)
from .logdirty import TREE_PFNS
from .physmap import clear_mmio_entries, mapping_call, populate_pod_in, set_typed_entries
from .runs import last_wins
from .tables import lookup


def _i64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.int64).reshape(-1)


def shadow_op(d, t: float, op: int, mode: int, pages: int, want_bitmap: bool, walk_s: float) -> ShadowOpResult:
    """XEN_DOMCTL_shadow_op: ENABLE_LOGDIRTY, OFF, CLEAN, PEEK (mode: FINAL only).

    Raises XenError: EINVAL for an unknown op or mode bit, or enabling twice; ENOMEM
    from CLEAN/PEEK after failed node allocations (nothing is cleared then)."""
    d.advance_to(t)
    try:
        op = ShadowOp(op)
    except ValueError:
        raise XenError(EINVAL, f"unknown shadow op {op}") from None
    if op == ShadowOp.ENABLE_LOGDIRTY:
        if d.log_dirty_enabled:
            raise XenError(EINVAL, "log-dirty mode is already enabled")
        # hap_enable_log_dirty: no tree yet; every rw entry becomes logdirty.
        d.log_dirty_enabled = True
        d.p2m.change_type_global(P2MType.ram_rw, P2MType.ram_logdirty)
        d.trace.logdirty_op(LogDirtyOp.ENABLE, 0, 0, t)
        return ShadowOpResult(0, d.logdirty.stats(), None)
    if op == ShadowOp.OFF:
        # paging_log_dirty_disable: hap disable (logdirty -> rw), free the whole tree
        # (resets failed_allocs, keeps dirty_count).
        d.log_dirty_enabled = False
        d.p2m.change_type_global(P2MType.ram_logdirty, P2MType.ram_rw)
        nodes = d.logdirty.nodes
        d.logdirty.free()
        d.trace.logdirty_op(LogDirtyOp.OFF, nodes, 0, t)
        return ShadowOpResult(0, d.logdirty.stats(), None)
    if op in (ShadowOp.CLEAN, ShadowOp.PEEK):
        if mode & ~SHADOW_LOGDIRTY_FINAL:
            raise XenError(EINVAL, f"mode {mode:#x} has bits other than LOGDIRTY_FINAL")
        if pages < 0:
            raise XenError(EINVAL, f"pages must be >= 0, not {pages}")
        # (FINAL: hvm_mapped_guest_frames_mark_dirty; Xen holds no guest frames
        # write-mapped in this model, so it marks nothing.)
        clean = op == ShadowOp.CLEAN
        kind = LogDirtyOp.CLEAN if clean else LogDirtyOp.PEEK
        try:
            bitmap, stats = (d.logdirty.clean if clean else d.logdirty.peek)(pages, want_bitmap)
        except XenError as e:
            d.trace.logdirty_op(kind, pages, -e.errno, t)
            raise
        if clean and d.log_dirty_enabled:
            # hap_clean_dirty_bitmap: re-protect every rw entry.
            d.p2m.change_type_global(P2MType.ram_rw, P2MType.ram_logdirty)
        # paging_log_dirty_op pauses the domain for the walk.
        d.sched.hold_for_walk(t, walk_s)
        d.trace.logdirty_op(kind, pages, stats.dirty_count, t)
        return ShadowOpResult(min(int(pages), TREE_PFNS), stats, bitmap)
    raise XenError(EINVAL, f"shadow op {op.name} is not modelled")


def getpageframeinfo3(d, t: float, pfns) -> np.ndarray:
    """XEN_DOMCTL_getpageframeinfo3: per PFN the PFINFO nibble << 28 (uint32).

    get_page_from_gfn(P2M_ALLOC): PoD entries are demand-populated (and marked
    dirty) and read NOTAB; RAM -> NOTAB; ram_broken -> BROKEN; anything else
    (holes, MMIO, grant, foreign, out of range) -> XTAB."""
    p = _i64(pfns)
    if p.size > MAX_BATCH_SIZE:
        raise XenError(E2BIG, f"getpageframeinfo3 takes at most {MAX_BATCH_SIZE} PFNs, got {p.size}")
    d.advance_to(t)
    types = populate_pod_in(d, p, d.p2m.get_types(p), d.now)
    return PFINFO_OF_TYPE[types].astype(np.uint32) << PFINFO_LTAB_SHIFT


def read_frames(d, p: np.ndarray, types: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A read-only map of ``p`` whose P2M types are ``types``: ``(tokens, err)`` with err
    0 or -errno per page (-EINVAL where the GFN is not mappable RAM, as mod_l1_entry;
    -ENOENT for a paged-out entry)."""
    ok = lookup(IS_MAPPABLE, types)
    err = np.where(ok, 0, -EINVAL).astype(np.int32)
    err[(types == P2MType.ram_paged) | (types == P2MType.ram_paging_in)] = -ENOENT
    tokens = np.zeros(p.size, dtype=np.uint64)
    if ok.any():
        tokens[ok] = d.frames.read(d.p2m.mfns.get(p[ok]))
    return tokens, err


def map_foreign(d, t: float, pfns) -> tuple[np.ndarray, np.ndarray]:
    """xenforeignmemory_map of a batch, read-only, with P2M_ALLOC (``read_frames``)."""
    p = _i64(pfns)
    d.advance_to(t)
    return read_frames(d, p, populate_pod_in(d, p, d.p2m.get_types(p), d.now))


def read_pages(d, pfns) -> tuple[np.ndarray, np.ndarray]:
    """Read-only map without P2M_ALLOC and without running the guest: ``(tokens, err)``."""
    p = _i64(pfns)
    return read_frames(d, p, d.p2m.get_types(p))


def write_pages(d, pfns, tokens, run: bool = False) -> None:
    """Foreign-map ``pfns`` read-write and copy ``tokens`` in (last write wins).
    Nothing is written unless every page maps. ``run``: the caller knows ``pfns``
    is one contiguous increasing run (no repeats; its types one slice)."""
    p = _i64(pfns)
    tok = np.asarray(tokens, dtype=np.uint64).reshape(-1)
    if tok.size != p.size:
        raise ValueError("write_pages: pfns and tokens differ in length")
    run = run and p.size > 0 and int(p[0]) >= 0 and int(p[-1]) <= MAX_GFN
    if run:
        types = d.p2m.types.get_run(int(p[0]), p.size)
    else:
        p, tok = last_wins(p, tok)
        types = d.p2m.get_types(p)
    ok = lookup(IS_MAPPABLE, types)
    if not ok.all():
        bad = int(p[np.flatnonzero(~ok)[0]])
        raise XenError(EINVAL, f"Mapping of pfn {bad:#x} failed (p2m type "
                               f"{P2MType(int(types[~ok][0])).name})")
    d.write_contents(p, tok, run)
    # A writable foreign mapping marks the page dirty when dropped (paging_mark_dirty).
    marks.mark_dirty(d, p)


def gfn_range(first_gfn: int, nr: int) -> np.ndarray | None:
    """The GFNs ``[first_gfn, first_gfn + nr)``, or None when the range is empty or
    leaves the GFN space (the domctl's -EINVAL)."""
    first_gfn, nr = int(first_gfn), int(nr)
    if nr < 1 or first_gfn < 0 or first_gfn + nr - 1 > MAX_GFN:
        return None
    return np.arange(first_gfn, first_gfn + nr, dtype=np.int64)


def memory_mapping(d, t: float, first_gfn: int, nr: int, add: bool) -> HypercallResult:
    """XEN_DOMCTL_memory_mapping (xen/common/domctl.c): ``add`` is map_mmio_regions,
    set_mmio_p2m_entry -> set_typed_p2m_entry(p2m_mmio_direct) per GFN (RAM there
    loses its M2P entry and, with the fix, its dirty bit); otherwise
    unmap_mmio_regions, clear_mmio_p2m_entry per GFN. Order-0 entries; libxc's
    xc_domain_memory_mapping repeats the domctl until the range is done, so one call
    here is the whole range, stopping at the first GFN refused."""
    if add:
        return mapping_call(d, gfn_range(first_gfn, nr), nr, lambda g: set_typed_entries(d, g, P2MType.mmio_direct),
                            MemoryOpKind.MAP_MMIO_REGIONS, t)
    return mapping_call(d, gfn_range(first_gfn, nr), nr, lambda g: clear_mmio_entries(d, g),
                        MemoryOpKind.UNMAP_MMIO_REGIONS, t)


def max_gpfn(d) -> int:
    """domain_get_maximum_gpfn: p2m->max_mapped_pfn (never lowered)."""
    return max(0, d.p2m.max_mapped_pfn)


def pause(d, t: float) -> None:
    """XEN_DOMCTL_pausedomain: domain_pause (nestable)."""
    d.sched.pause(t)


def unpause(d, t: float) -> None:
    """XEN_DOMCTL_unpausedomain: domain_unpause."""
    d.sched.unpause(t)


def suspend(d, t: float) -> None:
    """The guest suspends (SCHEDOP_shutdown, reason suspend): it runs no more."""
    d.sched.suspend(t)


def resume(d, t: float) -> None:
    """XEN_DOMCTL_resumedomain: resume a suspended domain (a failed migration's sender)."""
    d.sched.resume(t)
