"""The one event stream every consumer reads: dashboard, reports, CSV, plots, MQTT.

Mirrors what Xen's saver reports through ``xc_report_progress_single`` /
``xc_report_progress_step`` ("Frames iteration N", "Domain now suspended",
"End of stream") and ``struct precopy_stats``, plus the hypervisor's and guest's own
events, all stamped with virtual time ``t`` (seconds).

``RoundStats`` and ``Totals`` are the single definition of per-pass and whole-run
numbers; the JSON report, the CSV and the dashboard all read them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from hypervisor.abi import LogDirtyEffect


@dataclass(slots=True)
class RoundStats:
    """One pass of the save loop (a live pass, the final paused pass, or verify)."""

    iteration: int
    phase: str                # "live" | "final" | "verify"
    start_s: float
    end_s: float = 0.0
    dirty_count: int = 0      # what the CLEAN that produced this pass's bitmap reported
    pfns_walked: int = 0      # PFNs taken from the bitmap and put into batches
    pages_sent: int = 0       # data pages written (NOTAB)
    xtab_sent: int = 0        # XTAB entries (pfn word, no data)
    broken_sent: int = 0
    bytes: int = 0            # stream bytes of this pass's PAGE_DATA records
    batches: int = 0
    balloon_out: int = 0      # pages the guest gave back while this pass ran
    balloon_in: int = 0       # pages the guest got back while this pass ran

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Totals:
    pages_sent: int = 0
    xtab_sent: int = 0
    broken_sent: int = 0
    bytes: int = 0            # whole stream, headers and all records
    iterations: int = 0       # live passes
    total_time_s: float = 0.0
    downtime_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class VerifyStats:
    """Destination against the source as it stood at suspend."""

    ok: bool
    missing_pages: int        # RAM at the source, not populated at the destination
    stale_pages: int          # populated at both, contents differ
    extra_pages: int          # populated at the destination, not RAM at the source
    missing_sample: list[int] = field(default_factory=list)
    stale_sample: list[int] = field(default_factory=list)
    extra_sample: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- events


@dataclass(slots=True)
class Event:
    t: float

    @property
    def kind(self) -> str:
        return type(self).__name__


@dataclass(slots=True)
class RunStarted(Event):
    """Published once by the runner before the save starts."""

    scenario: str
    seed: int
    behaviour: str            # fixed | pre-fix | mixed (see ``sites``)
    policy: str
    policy_params: dict[str, Any]
    guest_pages: int          # RAM pages the guest booted with (memory)
    populated: np.ndarray     # (k, 2) int64 [start, end) GFN runs of RAM/PoD at start
    ballooned: np.ndarray     # (k, 2) int64 runs the guest had ballooned out at start
    #: the effective behaviour of each of the seed patch's call sites (hypervisor.abi.FIX_SITES)
    sites: dict[str, str] = field(default_factory=dict)
    #: GFNs followed one by one (``--track``): TrackedWrites and TrackedFinal name them
    tracked: tuple[int, ...] = ()


@dataclass(slots=True)
class SaveSetup(Event):
    """x86_hvm_setup(): the saver fixed p2m_size = maximum_gpfn + 1."""

    p2m_size: int


@dataclass(slots=True)
class PhaseChanged(Event):
    phase: str                # setup | precopy | suspended | final | verify | resumed | done | aborted
    detail: str = ""


@dataclass(slots=True)
class PassStarted(Event):
    iteration: int
    phase: str
    entries: int              # PFNs the bitmap holds for this pass
    dirty_count: int
    pfns: np.ndarray | None   # the bitmap's PFNs; None = every PFN below p2m_size


@dataclass(slots=True)
class BatchSent(Event):
    iteration: int
    pfns: np.ndarray          # the batch's PFNs (empty for a walked hole)
    nibbles: np.ndarray       # PFINFO type nibble per PFN
    walked: int               # PFNs of this pass done so far
    entries: int
    bytes: int
    hole: tuple[int, int] | None = None   # [lo, hi): never-mapped PFNs sent as XTAB in bulk


@dataclass(slots=True)
class PassEnded(Event):
    stats: RoundStats


@dataclass(slots=True)
class CleanDone(Event):
    iteration: int
    op: str                   # CLEAN | PEEK
    final: bool
    dirty_count: int
    fault_count: int
    pages: int


@dataclass(slots=True)
class MemoryOp(Event):
    """A guest hypercall the hypervisor served (balloon inflate/deflate and friends).

    ``sites``: per P2M call site it went through (p2m_remove_page,
    pod_decrease_reservation, set_typed_p2m_entry, guest_physmap_add_entry,
    p2m_pod_demand_populate), what that site did to the log-dirty bitmap: the GFNs it
    changed, those whose bit was set, the bits the fix cleared or set, and what pre-fix
    leaves behind (``leftover`` bits on GFNs gone from the P2M, ``unmarked`` additions)."""

    op: str
    nr: int
    rc: int
    gfns: np.ndarray
    sites: tuple[LogDirtyEffect, ...] = ()

    @property
    def leftover(self) -> np.ndarray:
        """GFNs this op removed from the P2M whose dirty bit stays set (pre-fix)."""
        return _cat([s.leftover for s in self.sites])

    @property
    def unmarked(self) -> np.ndarray:
        """GFNs this op added to the P2M with no dirty bit (pre-fix)."""
        return _cat([s.unmarked for s in self.sites])


def count_balloon(rnd: RoundStats, ev: MemoryOp) -> None:
    """Count a balloon op in ``rnd``: the pass it happened in, or, between two passes
    (the guest runs until the next call, e.g. the CLEAN), the pass before. The engine
    and any consumer rebuilding the passes from events apply this one rule."""
    if ev.rc < 0:
        return
    if ev.op == "decrease_reservation":
        rnd.balloon_out += int(ev.rc)
    elif ev.op == "populate_physmap":
        rnd.balloon_in += int(ev.rc)


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    parts = [p for p in parts if p.size]
    if not parts:
        return np.empty(0, dtype=np.int64)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


@dataclass(slots=True)
class TrackedWrites(Event):
    """The guest's writes to tracked GFNs since the hypervisor last reported (``t`` is
    the last of them). Per GFN: how many writes, the first and last write's time, and
    whether a write fault logged it (set its dirty bit and made the entry ram_rw again:
    hvm_hap_nested_page_fault), with the time of that fault (NaN if none)."""

    gfns: np.ndarray          # int64, sorted
    writes: np.ndarray        # int64
    first_s: np.ndarray       # float64
    last_s: np.ndarray        # float64
    logged_s: np.ndarray      # float64, NaN where no write was logged


@dataclass(slots=True)
class GuestNote(Event):
    """A guest-side decision: balloon target change, stall, workload start."""

    what: str
    detail: dict[str, Any]


@dataclass(slots=True)
class CountersSampled(Event):
    """The hypervisor's counters (marks, nodes, dirty_count now)."""

    counters: dict[str, Any]


@dataclass(slots=True)
class VerifyDone(Event):
    stats: VerifyStats


@dataclass(slots=True)
class TrackedFinal(Event):
    """Each tracked GFN at the end, destination against the suspended source:
    ``ok`` (same contents), ``missing`` (RAM at the source, absent at the destination),
    ``stale`` (both hold it, contents differ), ``extra`` (only the destination holds
    it), ``absent`` (neither holds it)."""

    gfns: np.ndarray
    states: tuple[str, ...]


@dataclass(slots=True)
class RunSummary(Event):
    """What the run knows at its end and no earlier event said: the restore side's,
    the stream writer's and the hypervisor's final numbers (published by the runner
    just before MigrationFinished, so a recorded log rebuilds the whole report)."""

    scenario: str
    seed: int
    behaviour: str
    policy: str
    policy_params: dict[str, Any]
    outcome: str
    error: str
    error_pfn: int | None
    p2m_size: int
    totals: Totals
    t_start: float
    t_suspend: float | None
    t_last_byte: float | None
    final_stats: dict[str, Any]
    hypervisor: dict[str, Any]
    restore: dict[str, Any]
    destination: dict[str, Any]
    stream: dict[str, Any]
    guest: dict[str, Any]
    wall: dict[str, Any]
    switchover: str = "live"  # SaveOptions.switchover: live (Xen) | stopped (QEMU, SimGrid)


@dataclass(slots=True)
class MigrationFinished(Event):
    outcome: str              # completed | failed | aborted
    message: str = ""


Listener = Callable[[Event], None]


class EventBus:
    """Synchronous fan-out of events to listeners, in publication order."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, fn: Listener) -> None:
        self._listeners.append(fn)

    def publish(self, event: Event) -> None:
        for fn in self._listeners:
            fn(event)
