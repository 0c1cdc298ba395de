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
    behaviour: str            # fixed | pre-fix
    policy: str
    policy_params: dict[str, Any]
    guest_pages: int          # RAM pages the guest booted with (memory)
    populated: np.ndarray     # (k, 2) int64 [start, end) GFN runs of RAM/PoD at start
    ballooned: np.ndarray     # (k, 2) int64 runs the guest had ballooned out at start


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
    """A guest hypercall the hypervisor served (balloon inflate/deflate and friends)."""

    op: str
    nr: int
    rc: int
    gfns: np.ndarray


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
