"""The simulated Xen's public ABI: what the guest and the toolstack import.

Mirrors the public headers the real actors share with Xen:
``xen/arch/x86/include/asm/p2m.h`` (p2m_type_t values and type classes),
``xen/include/public/domctl.h`` (XEN_DOMCTL_shadow_op op codes, flags and results,
XEN_DOMCTL_PFINFO_* types), ``xen/include/public/memory.h`` (the memory_op
sub-ops a guest issues) and the errno values Xen returns; ``xen.py`` holds the values,
``ops.py`` the guest's operations and the domain layout, ``results.py`` the results,
stats and events that cross the wire.

Nothing here holds state. ``migrate`` and ``guest`` import only this package from
``hypervisor`` (plus the ``Hypervisor`` façade, ``content``, ``tables`` and ``runs``).
"""

from __future__ import annotations

from .xen import (PAGE_SHIFT, PAGE_SIZE, MAX_GFN, INVALID_MFN, HOST_FRAMES_MAX, INVALID_M2P_ENTRY, P2MType,
    P2M_RAM_TYPES, P2M_HOLE_TYPES, P2M_GRANT_TYPES, P2M_SPECIAL_TYPES, P2M_CHANGEABLE_TYPES, P2M_ANY_RAM_TYPES,
    P2M_POD_TYPES, type_class_table, IS_RAM, IS_HOLE, IS_SPECIAL, IS_CHANGEABLE, IS_POD, ShadowOp,
    SHADOW_ENABLE_REFCOUNT, SHADOW_ENABLE_LOG_DIRTY, SHADOW_ENABLE_TRANSLATE, SHADOW_ENABLE_EXTERNAL,
    SHADOW_LOGDIRTY_FINAL, PFInfo, PFINFO_LTAB_SHIFT, PFINFO_LTAB_MASK, PFINFO_HAS_DATA, PFINFO_POPULATE,
    PFINFO_KNOWN, IS_GUEST_WRITABLE, IS_MAPPABLE, PFINFO_OF_TYPE, MAX_BATCH_SIZE, batch_counts, XenError, EINVAL,
    ENOMEM, EBUSY, ENOENT, ESRCH, EPERM, E2BIG, EEXIST, XenBehaviour, FixSite, FIX_SITES, MemoryOpKind,
    POD_DEMAND_POPULATE, site_behaviours, behaviour_label)
from .ops import (MemoryWrites, write_arrays, DecreaseReservation, PopulatePhysmap, DecreaseReservationRun,
    PopulatePhysmapRun, AddToPhysmap, RemoveFromPhysmap, SetTypedEntry, MemoryMapping,
    ForeignMapping, GuestOp, Hypercall, HypercallResult,
    run_bounds, all_done, GfnRuns, DomainLayout)
from .results import (LogDirtyEffect, ShadowStats, ShadowOpResult, HypervisorStats, SpanServed, SchedOp,
    LogDirtyOp, HypervisorEvent, MemoryOpServed, DomainStateChanged, LogDirtyOpServed, TrackedWritesSeen)

__all__ = [
    "PAGE_SHIFT", "PAGE_SIZE", "MAX_GFN", "INVALID_MFN", "HOST_FRAMES_MAX", "INVALID_M2P_ENTRY", "P2MType",
    "P2M_RAM_TYPES", "P2M_HOLE_TYPES", "P2M_GRANT_TYPES", "P2M_SPECIAL_TYPES", "P2M_CHANGEABLE_TYPES",
    "P2M_ANY_RAM_TYPES", "P2M_POD_TYPES", "type_class_table", "IS_RAM", "IS_HOLE", "IS_SPECIAL",
    "IS_CHANGEABLE", "IS_POD", "ShadowOp", "SHADOW_ENABLE_REFCOUNT", "SHADOW_ENABLE_LOG_DIRTY",
    "SHADOW_ENABLE_TRANSLATE", "SHADOW_ENABLE_EXTERNAL", "SHADOW_LOGDIRTY_FINAL", "PFInfo", "PFINFO_LTAB_SHIFT",
    "PFINFO_LTAB_MASK", "PFINFO_HAS_DATA", "PFINFO_POPULATE", "PFINFO_KNOWN", "IS_GUEST_WRITABLE",
    "IS_MAPPABLE", "PFINFO_OF_TYPE", "MAX_BATCH_SIZE", "batch_counts", "XenError", "EINVAL", "ENOMEM", "EBUSY",
    "ENOENT", "ESRCH", "EPERM", "E2BIG", "EEXIST", "XenBehaviour", "FixSite", "FIX_SITES", "MemoryOpKind",
    "POD_DEMAND_POPULATE", "site_behaviours", "behaviour_label", "MemoryWrites", "write_arrays",
    "DecreaseReservation", "PopulatePhysmap", "DecreaseReservationRun", "PopulatePhysmapRun", "AddToPhysmap",
    "RemoveFromPhysmap", "SetTypedEntry", "MemoryMapping", "ForeignMapping", "GuestOp", "Hypercall",
    "HypercallResult", "run_bounds", "all_done",
    "GfnRuns", "DomainLayout", "LogDirtyEffect", "ShadowStats", "ShadowOpResult", "HypervisorStats",
    "SpanServed", "SchedOp", "LogDirtyOp", "HypervisorEvent", "MemoryOpServed", "DomainStateChanged",
    "LogDirtyOpServed", "TrackedWritesSeen"
]
