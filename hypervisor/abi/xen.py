"""Xen's public headers as the simulated Xen's ABI: values, type classes, errors.

Mirrors ``xen/arch/x86/include/asm/p2m.h`` (p2m_type_t values and type classes),
``xen/include/public/domctl.h`` (XEN_DOMCTL_shadow_op op codes and flags,
XEN_DOMCTL_PFINFO_* types), the errno values Xen returns, and the names of the call
sites seed patch 98fccdf0ac changes (``xen/arch/x86/mm/p2m.c``, ``p2m-pod.c``) with the
``fixed`` / ``pre-fix`` switch over them. Nothing here holds state.
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Mapping
from enum import IntEnum, StrEnum, nonmember

import numpy as np


PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

#: Largest GFN the model accepts: the log-dirty tree covers 2^42 PFNs
#: (four levels, see ``logdirty.py``); x86 guests use at most 52-bit addresses.
MAX_GFN = (1 << 40) - 1

INVALID_MFN = np.uint32(0xFFFFFFFF)
#: Most frames a host may hold: every MFN must fit 32 bits and differ from INVALID_MFN.
HOST_FRAMES_MAX = 0xFFFFFFFF
#: M2P "invalid" entry (Xen's INVALID_M2P_ENTRY): read back as -1, held as 0xFFFFFFFF (p2m.M2P).
INVALID_M2P_ENTRY = -1


class P2MType(IntEnum):
    """p2m_type_t, values as at Xen HEAD (xen/arch/x86/include/asm/p2m.h)."""

    ram_rw = 0
    invalid = 1
    ram_logdirty = 2
    ram_ro = 3
    mmio_dm = 4
    mmio_direct = 5
    populate_on_demand = 6
    grant_map_rw = 7
    grant_map_ro = 8
    ram_paging_out = 9
    ram_paged = 10
    ram_paging_in = 11
    ram_shared = 12
    ram_broken = 13
    map_foreign = 14
    ioreq_server = 15


def _mask(*types: P2MType) -> int:
    m = 0
    for t in types:
        m |= 1 << int(t)
    return m


#: Type classes as bit masks over P2MType values (p2m.h P2M_RAM_TYPES etc.).
P2M_RAM_TYPES = _mask(
    P2MType.ram_rw, P2MType.ram_logdirty, P2MType.ram_ro, P2MType.ram_paging_out,
    P2MType.ram_paged, P2MType.ram_paging_in, P2MType.ram_shared, P2MType.ioreq_server,
)
P2M_HOLE_TYPES = _mask(P2MType.mmio_dm, P2MType.invalid, P2MType.ram_paging_in, P2MType.ram_paged)
P2M_GRANT_TYPES = _mask(P2MType.grant_map_rw, P2MType.grant_map_ro)
P2M_SPECIAL_TYPES = P2M_GRANT_TYPES | _mask(P2MType.map_foreign, P2MType.mmio_direct)
P2M_CHANGEABLE_TYPES = _mask(P2MType.ram_rw, P2MType.ram_logdirty, P2MType.ioreq_server)
P2M_ANY_RAM_TYPES = P2M_RAM_TYPES | P2M_GRANT_TYPES | _mask(P2MType.map_foreign)
P2M_POD_TYPES = _mask(P2MType.populate_on_demand)


def type_class_table(mask: int) -> np.ndarray:
    """A 16-entry bool lookup table: ``table[p2m_types]`` tests class membership vectorised."""
    return np.array([(mask >> i) & 1 == 1 for i in range(16)], dtype=bool)


IS_RAM = type_class_table(P2M_RAM_TYPES)
IS_HOLE = type_class_table(P2M_HOLE_TYPES)
IS_SPECIAL = type_class_table(P2M_SPECIAL_TYPES)
IS_CHANGEABLE = type_class_table(P2M_CHANGEABLE_TYPES)
IS_POD = type_class_table(P2M_POD_TYPES)


class ShadowOp(IntEnum):
    """XEN_DOMCTL_SHADOW_OP_* (xen/include/public/domctl.h)."""

    OFF = 0
    ENABLE_TEST = 1
    ENABLE_LOGDIRTY = 2
    ENABLE_TRANSLATE = 3
    CLEAN = 11
    PEEK = 12
    GET_ALLOCATION = 30
    SET_ALLOCATION = 31
    ENABLE = 32


#: XEN_DOMCTL_SHADOW_ENABLE_* mode flags (for ShadowOp.ENABLE).
SHADOW_ENABLE_REFCOUNT = 1 << 1
SHADOW_ENABLE_LOG_DIRTY = 1 << 2
SHADOW_ENABLE_TRANSLATE = 1 << 3
SHADOW_ENABLE_EXTERNAL = 1 << 4
#: XEN_DOMCTL_SHADOW_LOGDIRTY_FINAL: CLEAN/PEEK mode flag for the last, paused pass.
SHADOW_LOGDIRTY_FINAL = 1 << 0


class PFInfo(IntEnum):
    """XEN_DOMCTL_PFINFO_* page types as the 4-bit nibble (domctl.h bits 28..31).

    getpageframeinfo3 returns ``nibble << 28`` in a uint32; the v2 stream moves the
    nibble to bits 63..60 of a pfn word.
    """

    NOTAB = 0x0
    L1TAB = 0x1
    L2TAB = 0x2
    L3TAB = 0x3
    L4TAB = 0x4
    L1TAB_PINNED = 0x9
    L2TAB_PINNED = 0xA
    L3TAB_PINNED = 0xB
    L4TAB_PINNED = 0xC
    BROKEN = 0xD
    XALLOC = 0xE
    XTAB = 0xF


PFINFO_LTAB_SHIFT = 28
PFINFO_LTAB_MASK = 0xF << PFINFO_LTAB_SHIFT

#: Nibbles whose pages carry data in the stream (NOTAB, L1..L4, pinned L1..L4).
PFINFO_HAS_DATA = np.zeros(16, dtype=bool)
PFINFO_HAS_DATA[[0x0, 0x1, 0x2, 0x3, 0x4, 0x9, 0xA, 0xB, 0xC]] = True
#: Nibbles the restore side populates (data types and XALLOC), xg_sr_restore.c.
PFINFO_POPULATE = PFINFO_HAS_DATA.copy()
PFINFO_POPULATE[PFInfo.XALLOC] = True
#: Nibbles a reader accepts at all (0x5..0x8 are reserved).
PFINFO_KNOWN = PFINFO_POPULATE.copy()
PFINFO_KNOWN[[PFInfo.BROKEN, PFInfo.XTAB]] = True

#: P2M types a guest write lands in (HAP: rw is writable; logdirty faults into the
#: log-dirty bitmap once, then becomes rw); a write to any other type is the
#: hypervisor's to act on (PoD populate) or is dropped.
IS_GUEST_WRITABLE = np.zeros(16, dtype=bool)
IS_GUEST_WRITABLE[[P2MType.ram_rw, P2MType.ram_logdirty]] = True
#: P2M types get_page_from_gfn gives a page for: RAM, less paged-out entries.
IS_MAPPABLE = IS_RAM.copy()
IS_MAPPABLE[[P2MType.ram_paged, P2MType.ram_paging_in]] = False
#: getpageframeinfo3's PFINFO type per P2M type (xen/arch/x86/domctl.c): RAM that maps
#: -> NOTAB, ram_broken -> BROKEN, anything else (holes, MMIO, grant, foreign, PoD left
#: unpopulated) -> XTAB.
PFINFO_OF_TYPE = np.full(16, PFInfo.XTAB, dtype=np.uint8)
PFINFO_OF_TYPE[IS_MAPPABLE] = PFInfo.NOTAB
PFINFO_OF_TYPE[P2MType.ram_broken] = PFInfo.BROKEN

#: getpageframeinfo3 takes at most this many PFNs (the saver's MAX_BATCH_SIZE).
MAX_BATCH_SIZE = 1024


def batch_counts(n: int) -> np.ndarray:
    """The PFNs in each batch when ``n`` PFNs are cut into MAX_BATCH_SIZE batches in
    order (the saver's batches, one PAGE_DATA record each): all full but the last."""
    return np.minimum(MAX_BATCH_SIZE, n - np.arange(0, n, MAX_BATCH_SIZE, dtype=np.int64))


class XenError(Exception):
    """A hypercall or domctl failed with Xen's errno (``-rc`` in Xen's convention)."""

    def __init__(self, err: int, message: str):
        self.errno = err
        super().__init__(f"{_errno.errorcode.get(err, str(err))}: {message}")


EINVAL = _errno.EINVAL
ENOMEM = _errno.ENOMEM
EBUSY = _errno.EBUSY
ENOENT = _errno.ENOENT
ESRCH = _errno.ESRCH
EPERM = _errno.EPERM
E2BIG = _errno.E2BIG
EEXIST = _errno.EEXIST


class XenBehaviour(StrEnum):
    """``fixed`` (seed patch 98fccdf0ac applied) or ``pre-fix`` (the code before it).
    A member is its string, so JSON, CSV and f-strings show ``fixed`` / ``pre-fix``."""

    FIXED = "fixed"
    PRE_FIX = "pre-fix"
    #: The label of a per-site mapping that is neither all fixed nor all pre-fix.
    MIXED = "mixed"
    #: What one call site (or a whole domain) can be set to.
    ALL = nonmember(("fixed", "pre-fix"))


#: The four places seed patch 98fccdf0ac touches, by the names the patch as posted
#: (2021) used; today's names in brackets:
#: * ``p2m_remove_page`` [p2m_remove_entry], xen/arch/x86/mm/p2m.c: every RAM removal
#:   (balloon inflate through guest_remove_page, remove_from_physmap, the old GFN of
#:   add_to_physmap) marks the GFN clean;
#: * ``set_typed_p2m_entry``, p2m.c: RAM overlaid by an MMIO / foreign entry, clean;
#: * ``pod_decrease_reservation`` [decrease_reservation], xen/arch/x86/mm/p2m-pod.c:
#:   RAM stolen into the PoD cache by a balloon inflate, clean;
#: * ``guest_physmap_add_entry`` [p2m_add_page], p2m.c: every RAM addition
#:   (populate_physmap, the new GFN of add_to_physmap) marks the GFN dirty.
class FixSite(StrEnum):
    """The four call sites seed patch 98fccdf0ac changes (p2m.c, p2m-pod.c). A member is
    its string, so reports and scenario files spell them as Xen's function names."""

    P2M_REMOVE_PAGE = "p2m_remove_page"
    SET_TYPED_P2M_ENTRY = "set_typed_p2m_entry"
    POD_DECREASE_RESERVATION = "pod_decrease_reservation"
    GUEST_PHYSMAP_ADD_ENTRY = "guest_physmap_add_entry"


FIX_SITES = tuple(FixSite)


class MemoryOpKind(StrEnum):
    """The P2M-changing operations a domain reports (memory.c's XENMEM_* subops, p2m.c's
    set_typed_p2m_entry, p2m-pod.c's demand populate). A member is its string."""

    DECREASE_RESERVATION = "decrease_reservation"
    POPULATE_PHYSMAP = "populate_physmap"
    ADD_TO_PHYSMAP = "add_to_physmap"
    REMOVE_FROM_PHYSMAP = "remove_from_physmap"
    SET_TYPED_P2M_ENTRY = "set_typed_p2m_entry"
    POD_POPULATE = "pod_populate"
    #: XEN_DOMCTL_memory_mapping (domctl.c), add and remove (p2m.c's two functions).
    MAP_MMIO_REGIONS = "map_mmio_regions"
    UNMAP_MMIO_REGIONS = "unmap_mmio_regions"
    #: XENMEM_acquire_resource into the caller's own physmap (memory.c).
    ACQUIRE_RESOURCE = "acquire_resource"

#: Where a P2M change touches the log-dirty bitmap outside the patch: a PoD entry
#: demand-populated (p2m_pod_demand_populate) was always marked dirty.
POD_DEMAND_POPULATE = "p2m_pod_demand_populate"


def site_behaviours(behaviour) -> dict[str, XenBehaviour]:
    """``fixed`` / ``pre-fix`` (every site) or a mapping ``{site: fixed|pre-fix}`` ->
    the behaviour of each of ``FIX_SITES`` (a mapping must name every site).

    Raises ValueError naming the bad key (with a did-you-mean) or value."""
    if isinstance(behaviour, str):
        if behaviour not in XenBehaviour.ALL:
            raise ValueError(f"behaviour must be one of {XenBehaviour.ALL}, not {behaviour!r}")
        return {s: XenBehaviour(behaviour) for s in FIX_SITES}
    if not isinstance(behaviour, Mapping):
        raise ValueError(f"behaviour must be 'fixed', 'pre-fix' or a mapping of {', '.join(FIX_SITES)}")
    import difflib

    out: dict[str, XenBehaviour] = {}
    for key, val in behaviour.items():
        if key not in FIX_SITES:
            close = difflib.get_close_matches(str(key), FIX_SITES, n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"unknown call site {key!r}{hint}: expected one of {', '.join(FIX_SITES)}")
        if val not in XenBehaviour.ALL:
            raise ValueError(f"call site {key}: expected 'fixed' or 'pre-fix', found {val!r}")
        out[key] = XenBehaviour(val)
    missing = [s for s in FIX_SITES if s not in out]
    if missing:
        raise ValueError(f"behaviour mapping must name every call site; missing: {', '.join(missing)}")
    return {s: out[s] for s in FIX_SITES}


def behaviour_label(sites: Mapping[str, str]) -> XenBehaviour:
    """``fixed`` / ``pre-fix`` when every site agrees, else ``mixed``."""
    vals = set(sites.values())
    return XenBehaviour(vals.pop()) if len(vals) == 1 else XenBehaviour.MIXED
