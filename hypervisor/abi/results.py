"""What the simulated Xen hands back and reports: the ABI's results, stats and events.

Mirrors the out-parameters of ``xen/include/public/domctl.h`` (XEN_DOMCTL_shadow_op's
result and ``xen_domctl_shadow_op_stats``), the answer of a span of the saver's
``write_batch()`` calls (``tools/libs/guest/xg_sr_save.c``), and what a domain records
about itself as it serves calls (in Xen, ``xentrace`` records; here frozen values with
enum kinds): the memory ops it served with what each call site of seed patch 98fccdf0ac
did to the log-dirty bitmap, its scheduling changes, its log-dirty ops, and the writes
to the GFNs a consumer follows. These are the types that cross the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from .xen import MemoryOpKind

_EMPTY_U8 = np.empty(0, dtype=np.uint8)
_EMPTY_U64 = np.empty(0, dtype=np.uint64)


@dataclass(frozen=True, slots=True)
class LogDirtyEffect:
    """What one call site did to the log-dirty bitmap while serving one memory op.

    ``change`` is ``remove`` (the GFNs left the P2M) or ``add`` (they entered it);
    ``fixed`` says whether the seed patch's mark is active at this site. ``gfns`` are
    the GFNs the site changed (int64, op order); ``dirty`` those among them whose bit
    was set when it ran. ``cleared`` / ``set`` count the bits this site flipped.
    ``leftover``: removed GFNs whose bit stays set (pre-fix: the next CLEAN hands them
    to the saver, which sends them as XTAB); ``unmarked``: added GFNs left with no bit
    (pre-fix: lost unless written after the next CLEAN). All empty when log-dirty
    mode is off."""

    site: str
    change: str
    fixed: bool
    gfns: np.ndarray
    dirty: np.ndarray
    cleared: int = 0
    set: int = 0
    leftover: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    unmarked: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    @property
    def were_dirty(self) -> int:
        return int(self.dirty.size)


@dataclass(frozen=True, slots=True)
class ShadowStats:
    """xen_domctl_shadow_op_stats: uint32 counters, saturated at UINT32_MAX."""

    fault_count: int
    dirty_count: int


@dataclass(frozen=True, slots=True)
class ShadowOpResult:
    """What XEN_DOMCTL_shadow_op hands back: ``pages`` (the walked count, normally the
    requested one), ``stats`` read before the walk, and the bitmap (CLEAN/PEEK with
    ``want_bitmap``, a ``logdirty.DirtyBitmap``; None otherwise)."""

    pages: int
    stats: ShadowStats
    bitmap: object | None


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
    # additions beyond docs/CONTRACTS.md
    logdirty_levels: tuple[int, int, int, int] = (0, 0, 0, 0)   # nodes at L4, L3, L2, L1
    pod_failures: int = 0       # demand-populates that found the PoD cache empty
    orphaned_frames: int = 0    # frames unmapped but still the domain's
    now: float = 0.0


@dataclass(slots=True)
class SpanServed:
    """What a span of ``write_batch()`` calls got (``hypervisor.span``): for its first
    ``batches`` batches (``pfns`` PFNs), each PFN's PFINFO type nibble, the content token
    of each data-carrying PFN at its batch's map (in order), and the type-query time of
    each batch followed by the time of the call after the last one."""

    batches: int
    pfns: int
    nibbles: np.ndarray
    tokens: np.ndarray
    times: np.ndarray
    stop: str = "plan"       # plan | pod | hypercall | write | deadline

    @classmethod
    def empty(cls, t0: float, stop: str) -> "SpanServed":
        return cls(0, 0, _EMPTY_U8, _EMPTY_U64, np.array([float(t0)]), stop)


# --------------------------------------------------------------------------------------
# What a domain records as it serves calls (drained by ``Hypervisor.drain_events``).
# --------------------------------------------------------------------------------------


class SchedOp(StrEnum):
    """A change of whether the domain's vCPUs may run (``xen/common/domain.c``:
    domain_pause / domain_unpause, SCHEDOP_shutdown(suspend), domain_resume)."""

    PAUSE = "pause"
    UNPAUSE = "unpause"
    SUSPEND = "suspend"
    RESUME = "resume"


class LogDirtyOp(StrEnum):
    """A XEN_DOMCTL_shadow_op the domain served (``xen/arch/x86/mm/paging.c``)."""

    ENABLE = "logdirty_enable"
    OFF = "logdirty_off"
    CLEAN = "clean"
    PEEK = "peek"


@dataclass(frozen=True, slots=True)
class HypervisorEvent:
    """Something the domain did at virtual time ``t`` (one of the classes below)."""

    t: float


@dataclass(frozen=True, slots=True)
class MemoryOpServed(HypervisorEvent):
    """A P2M-changing operation served: ``rc`` is Xen's return value (extents done for
    decrease/populate and a PoD demand populate, 0 or -errno otherwise) of a call of
    ``nr`` extents; ``gfns`` the GFNs it handled; ``sites`` what each P2M call site it
    went through did to the log-dirty bitmap."""

    kind: MemoryOpKind
    nr: int
    rc: int
    gfns: np.ndarray
    sites: tuple[LogDirtyEffect, ...] = ()

    def __post_init__(self) -> None:
        # (a StrEnum travels as its string: the kind comes back as the member)
        object.__setattr__(self, "kind", MemoryOpKind(self.kind))


@dataclass(frozen=True, slots=True)
class DomainStateChanged(HypervisorEvent):
    """The domain was paused, unpaused, suspended or resumed; ``pause_count`` after it."""

    kind: SchedOp
    pause_count: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", SchedOp(self.kind))


@dataclass(frozen=True, slots=True)
class LogDirtyOpServed(HypervisorEvent):
    """A log-dirty op served: ``pages`` asked of CLEAN / PEEK (OFF: the tree pages it
    freed; ENABLE: 0); ``rc`` the dirty_count CLEAN / PEEK read, or -errno."""

    kind: LogDirtyOp
    pages: int
    rc: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", LogDirtyOp(self.kind))


@dataclass(frozen=True, slots=True)
class TrackedWritesSeen(HypervisorEvent):
    """The guest's writes to followed GFNs (``Hypervisor.track``) since the last event,
    ``t`` being the last of them: per GFN (sorted) how many, the first and the last
    write's time, and when a write fault first logged it (NaN if none did)."""

    gfns: np.ndarray
    writes: np.ndarray
    first_s: np.ndarray
    last_s: np.ndarray
    logged_s: np.ndarray
