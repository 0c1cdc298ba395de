"""The one event stream every consumer reads: the app, reports, CSV, plots, MQTT.

Mirrors what Xen's saver reports through ``xc_report_progress_single`` /
``xc_report_progress_step`` ("Frames iteration N", "Domain now suspended",
"End of stream") and ``struct precopy_stats``, plus the hypervisor's and guest's own
events, all stamped with virtual time ``t`` (seconds).

``RoundStats`` and ``Totals`` are the single definition of per-pass and whole-run
numbers; the JSON report, the CSV and the app all read them.

Every event, and every value one carries, is a frozen dataclass: a listener cannot
change what the next listener sees, and a pass's numbers are a new ``RoundStats`` each
time they change (``RoundStats.added``), never an object updated behind the event that
carried it. Kinds are enums (``Phase``, ``MemoryOpKind``, ...); each is a ``StrEnum``
whose members are their strings, so the wire codec writes them as the plain strings
they always were (``migrate.codec.wire``), and each event coerces the strings it is
given back to its enums in ``__post_init__`` (which is how frames and event logs
recorded before the enums decode).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Callable

import numpy as np

from hypervisor.abi import MAX_BATCH_SIZE, FixSite, LogDirtyEffect, MemoryOpKind, XenBehaviour


def _coerce(obj: Any, **kinds: type) -> None:
    """Set each named field of the frozen ``obj`` to its value as ``kinds[name]``
    (an enum member from its string: a frame or an old log carries plain strings)."""
    for name, kind in kinds.items():
        object.__setattr__(obj, name, kind(getattr(obj, name)))


# ----------------------------------------------------------------------------- vocabularies
# Each is a StrEnum: a member is its string, so JSON, CSV, f-strings and comparisons
# with plain strings see ``completed`` / ``live`` / ``suspended``. Events coerce what
# they are given (a frame read back from the wire or a log carries plain strings).


class Outcome(StrEnum):
    """How a save ended (libxl's migration result)."""

    COMPLETED = "completed"
    FAILED = "failed"
    ABORTED = "aborted"


class PassPhase(StrEnum):
    """Which pass of the save loop: a live precopy pass, the final pass with the domain
    suspended, the verify pass (xg_sr_save.c's ``verify_frames``: a VERIFY record,
    then every page again), or one checkpoint of a checkpointed (Remus) stream
    (``send_domain_memory_checkpointed``: suspend, CLEAN, send what was dirtied)."""

    LIVE = "live"
    FINAL = "final"
    VERIFY = "verify"
    CHECKPOINT = "checkpoint"


class Phase(StrEnum):
    """Where the migration stands (what ``xc_report_progress_single`` announces)."""

    SETUP = "setup"
    PRECOPY = "precopy"
    SUSPENDED = "suspended"
    FINAL = "final"
    VERIFY = "verify"
    RESUMED = "resumed"
    DONE = "done"
    ABORTED = "aborted"
    CHECKPOINT = "checkpoint"     # a CHECKPOINT record committed a consistent backup
    FAILOVER = "failover"         # the primary failed: the backup takes over


class Switchover(StrEnum):
    """What the save does when the policy says stop at the top of its loop: ``live``
    (Xen's ``send_memory_live`` sends the set the last CLEAN returned first) or
    ``stopped`` (suspend first and send it paused, as QEMU and SimGrid do)."""

    LIVE = "live"
    STOPPED = "stopped"


class CleanOp(StrEnum):
    """How the saver read the log-dirty bitmap (XEN_DOMCTL_SHADOW_OP_CLEAN clears what
    it returns; PEEK, verify_frames' read, leaves it)."""

    CLEAN = "CLEAN"
    PEEK = "PEEK"


class BalloonDirection(StrEnum):
    """Which way the balloon driver moved pages: ``inflate`` (decrease_reservation:
    the guest gives them back) or ``deflate`` (populate_physmap: it gets them back)."""

    INFLATE = "inflate"
    DEFLATE = "deflate"


class PageFate(StrEnum):
    """A tracked GFN at the end, the destination against the suspended source."""

    OK = "ok"                 # same contents at both ends
    MISSING = "missing"       # RAM at the source, absent at the destination
    STALE = "stale"           # both hold it, contents differ
    EXTRA = "extra"           # only the destination holds it
    ABSENT = "absent"         # neither holds it


@dataclass(frozen=True, slots=True)
class RoundStats:
    """One pass of the save loop (a live pass, the final paused pass, or verify), as it
    stood when it was taken: whoever counts a pass holds the latest value and replaces
    it (``added``, ``with_balloon``)."""

    iteration: int
    phase: PassPhase
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

    def __post_init__(self) -> None:
        _coerce(self, phase=PassPhase)

    def added(self, **counts: int) -> RoundStats:
        """This pass with ``counts`` added to the counters they name (a new value)."""
        return dataclasses.replace(self, **{k: getattr(self, k) + int(n) for k, n in counts.items()})

    def with_balloon(self, ev: MemoryOp) -> RoundStats:
        """This pass with the balloon op ``ev`` counted (``balloon_moves``)."""
        out, back = balloon_moves(ev)
        return self.added(balloon_out=out, balloon_in=back) if out or back else self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class Event:
    t: float

    @property
    def kind(self) -> str:
        return type(self).__name__


@dataclass(frozen=True, slots=True)
class RunStarted(Event):
    """Published once by the runner before the save starts."""

    scenario: str
    seed: int
    behaviour: XenBehaviour   # fixed | pre-fix | mixed (see ``sites``)
    policy: str
    policy_params: dict[str, Any]
    guest_pages: int          # RAM pages the guest booted with (memory)
    populated: np.ndarray     # (k, 2) int64 [start, end) GFN runs of RAM/PoD at start
    ballooned: np.ndarray     # (k, 2) int64 runs the guest had ballooned out at start
    #: the effective behaviour of each of the seed patch's call sites (hypervisor.abi.FIX_SITES)
    sites: dict[FixSite, XenBehaviour] = field(default_factory=dict)
    #: GFNs followed one by one (``--track``): TrackedWrites and TrackedFinal name them
    tracked: tuple[int, ...] = ()
    #: (k, 2) int64 runs of the builder's special pages (libxc's layout): populated, but
    #: not the guest's RAM. A GFN below p2m_size in none of populated, ballooned and
    #: special is a hole of the layout (or MMIO): pass 1 sends it as XTAB.
    special: np.ndarray = field(default_factory=lambda: np.empty((0, 2), np.int64), metadata={"wire": "when_set"})

    def __post_init__(self) -> None:
        _coerce(self, behaviour=XenBehaviour)
        object.__setattr__(self, "sites", {FixSite(site): XenBehaviour(b) for site, b in self.sites.items()})


@dataclass(frozen=True, slots=True)
class SaveSetup(Event):
    """x86_hvm_setup(): the saver fixed p2m_size = maximum_gpfn + 1."""

    p2m_size: int


@dataclass(frozen=True, slots=True)
class PhaseChanged(Event):
    phase: Phase
    detail: str = ""

    def __post_init__(self) -> None:
        _coerce(self, phase=Phase)


@dataclass(frozen=True, slots=True)
class PassStarted(Event):
    iteration: int
    phase: PassPhase
    entries: int              # PFNs the bitmap holds for this pass
    dirty_count: int
    pfns: np.ndarray | None   # the bitmap's PFNs; None = every PFN below p2m_size

    def __post_init__(self) -> None:
        _coerce(self, phase=PassPhase)


@dataclass(frozen=True, slots=True)
class BatchSent(Event):
    iteration: int
    pfns: np.ndarray          # the batch's PFNs (empty for a walked hole)
    nibbles: np.ndarray       # PFINFO type nibble per PFN
    walked: int               # PFNs of this pass done so far
    entries: int
    bytes: int
    hole: tuple[int, int] | None = None   # [lo, hi): never-mapped PFNs sent as XTAB in bulk
    #: Several batches (the span engine's, between two counter samples): the time each
    #: one ended, in order (the last is ``t``); None for one batch.
    ends: np.ndarray | None = None

    def batch_times(self) -> np.ndarray:
        """The time each PFN's batch ended (``t`` for all of a single batch)."""
        if self.ends is None:
            return np.full(np.asarray(self.pfns).size, float(self.t))
        return np.asarray(self.ends, dtype=np.float64)[np.arange(np.asarray(self.pfns).size) // MAX_BATCH_SIZE]


@dataclass(frozen=True, slots=True)
class PassEnded(Event):
    stats: RoundStats


@dataclass(frozen=True, slots=True)
class CleanDone(Event):
    iteration: int
    op: CleanOp
    final: bool
    dirty_count: int
    fault_count: int
    pages: int

    def __post_init__(self) -> None:
        _coerce(self, op=CleanOp)


@dataclass(frozen=True, slots=True)
class MemoryOp(Event):
    """A guest hypercall the hypervisor served (balloon inflate/deflate and friends).

    ``sites``: per P2M call site it went through (p2m_remove_page,
    pod_decrease_reservation, set_typed_p2m_entry, guest_physmap_add_entry,
    p2m_pod_demand_populate), what that site did to the log-dirty bitmap: the GFNs it
    changed, those whose bit was set, the bits the fix cleared or set, and what pre-fix
    leaves behind (``leftover`` bits on GFNs gone from the P2M, ``unmarked`` additions)."""

    op: MemoryOpKind
    nr: int
    rc: int
    gfns: np.ndarray
    sites: tuple[LogDirtyEffect, ...] = ()

    def __post_init__(self) -> None:
        _coerce(self, op=MemoryOpKind)

    @property
    def leftover(self) -> np.ndarray:
        """GFNs this op removed from the P2M whose dirty bit stays set (pre-fix)."""
        return _cat([s.leftover for s in self.sites])

    @property
    def unmarked(self) -> np.ndarray:
        """GFNs this op added to the P2M with no dirty bit (pre-fix)."""
        return _cat([s.unmarked for s in self.sites])

    def left_behind(self) -> tuple[int, int]:
        """``(leftover bits, unmarked additions)`` this op leaves (pre-fix): what the
        report's ``pages.leftover_bits`` and ``pages.unmarked_additions`` add up."""
        return (sum(int(s.leftover.size) for s in self.sites), sum(int(s.unmarked.size) for s in self.sites))


def balloon_moves(ev: MemoryOp) -> tuple[int, int]:
    """``(pages out, pages back)`` a balloon op moves: what a pass's ``balloon_out`` /
    ``balloon_in`` count. It counts in the pass it happened in, or, between two passes
    (the guest runs until the next call, e.g. the CLEAN), in the pass before; the engine
    and any consumer rebuilding the passes from events apply this one rule
    (``RoundStats.with_balloon``)."""
    if ev.rc < 0:
        return 0, 0
    if ev.op is MemoryOpKind.DECREASE_RESERVATION:
        return int(ev.rc), 0
    if ev.op is MemoryOpKind.POPULATE_PHYSMAP:
        return 0, int(ev.rc)
    return 0, 0


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    parts = [p for p in parts if p.size]
    if not parts:
        return np.empty(0, dtype=np.int64)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class BalloonNote(Event):
    """What the guest's balloon driver says about itself (Linux's xen-balloon driver
    following ``memory/target`` in xenstore): where it stands after the note."""

    current_pages: int        # pages the guest owns
    target_pages: int


@dataclass(frozen=True, slots=True)
class BalloonTarget(BalloonNote):
    """The driver got a new target."""

    previous_pages: int       # the target before this one
    scheduled_at: float       # the scenario's time for it (the driver acts on the next tick)
    reason: str               # "schedule", or the PoD boot target


@dataclass(frozen=True, slots=True)
class BalloonMoved(BalloonNote):
    """One tick in which the driver moved pages: ``inflate`` (decrease_reservation, the
    guest gives pages back) or ``deflate`` (populate_physmap, it gets them back)."""

    direction: BalloonDirection
    pages: int
    batches: int              # hypercalls it took

    def __post_init__(self) -> None:
        _coerce(self, direction=BalloonDirection)


@dataclass(frozen=True, slots=True)
class BalloonReached(BalloonNote):
    """The driver reached its target."""


@dataclass(frozen=True, slots=True)
class BalloonStalled(BalloonNote):
    """The driver stopped short of its target until the next one (Xen did fewer
    extents than asked, or the driver had no page left to move)."""

    op: MemoryOpKind          # decrease_reservation | populate_physmap
    requested: int
    done: int
    rc: int | None            # the hypercall's return value; None if none was made
    reason: str

    def __post_init__(self) -> None:
        _coerce(self, op=MemoryOpKind)


def balloon_note(t: float, kind: str, detail: dict[str, Any]) -> BalloonNote:
    """The event for one of the guest's own notes (``guest.GuestEvent``: ``kind`` and
    its ``detail``); the one place that knows the guest's keys."""
    d = dict(detail)
    if kind in ("balloon_inflate", "balloon_deflate"):
        return BalloonMoved(t=float(t), direction=kind.removeprefix("balloon_"), **d)
    cls = {"balloon_target": BalloonTarget, "balloon_reached": BalloonReached,
           "balloon_stalled": BalloonStalled}.get(kind)
    if cls is None:
        raise ValueError(f"the guest noted {kind!r}, which no event stands for")
    return cls(t=float(t), **d)


@dataclass(frozen=True, slots=True)
class CountersSampled(Event):
    """The hypervisor's counters (marks, nodes, dirty_count now)."""

    counters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class VerifyDone(Event):
    stats: VerifyStats


#: Most ``[start, end)`` runs a ``VerifySets`` keeps of each set (1 MiB of runs at most,
#: whatever the guest's size): a set of more runs keeps its first ones and says so.
MAX_VERIFY_RUNS = 1 << 16


@dataclass(frozen=True, slots=True)
class VerifySets(Event):
    """The GFNs the verify found missing and stale (``VerifyDone`` has their counts), as
    sorted, disjoint ``[start, end)`` runs (k x 2), so the fate of a GFN nobody tracked
    can still be told (``xmig explain``). Published right after ``VerifyDone`` when
    either set is non-empty. A set of more than ``MAX_VERIFY_RUNS`` runs keeps its first
    ones, ``*_complete`` False: past its last run that set does not know."""

    missing: np.ndarray
    stale: np.ndarray
    missing_complete: bool = True
    stale_complete: bool = True

    def fate(self, gfn: int) -> PageFate | None:
        """MISSING or STALE when a set holds ``gfn``, OK when neither does (the verify
        found it neither; it may still be extra or absent), None when a set that was
        cut short could hold it."""
        g = int(gfn)
        for runs, fate in ((self.missing, PageFate.MISSING), (self.stale, PageFate.STALE)):
            r = np.asarray(runs, dtype=np.int64).reshape(-1, 2)
            i = int(np.searchsorted(r[:, 0], g, side="right")) - 1
            if i >= 0 and g < int(r[i, 1]):
                return fate
        for runs, complete in ((self.missing, self.missing_complete), (self.stale, self.stale_complete)):
            r = np.asarray(runs, dtype=np.int64).reshape(-1, 2)
            if not complete and (r.shape[0] == 0 or g >= int(r[-1, 1])):
                return None
        return PageFate.OK


@dataclass(frozen=True, slots=True)
class TrackedFinal(Event):
    """Each tracked GFN at the end, destination against the suspended source (see
    ``PageFate``: ok, missing, stale, extra, absent)."""

    gfns: np.ndarray
    states: tuple[PageFate, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "states", tuple(PageFate(s) for s in self.states))


@dataclass(frozen=True, slots=True)
class RunSummary(Event):
    """What the run knows at its end and no earlier event said: the restore side's,
    the stream writer's and the hypervisor's final numbers (published by the runner
    just before MigrationFinished, so a recorded log rebuilds the whole report)."""

    scenario: str
    seed: int
    behaviour: XenBehaviour
    policy: str
    policy_params: dict[str, Any]
    outcome: Outcome
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
    switchover: Switchover = Switchover.LIVE  # SaveOptions.switchover

    def __post_init__(self) -> None:
        _coerce(self, behaviour=XenBehaviour, outcome=Outcome, switchover=Switchover)


@dataclass(frozen=True, slots=True)
class MigrationFinished(Event):
    outcome: Outcome
    message: str = ""

    def __post_init__(self) -> None:
        _coerce(self, outcome=Outcome)


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


__all__ = [
    "Outcome", "PassPhase", "Phase", "Switchover", "CleanOp", "BalloonDirection", "PageFate", "RoundStats", "Totals", "VerifyStats", "Event", "RunStarted", "SaveSetup",
    "PhaseChanged", "PassStarted", "BatchSent", "PassEnded", "CleanDone", "MemoryOp", "balloon_moves",
    "TrackedWrites", "BalloonNote", "BalloonTarget", "BalloonMoved", "BalloonReached", "BalloonStalled",
    "balloon_note", "CountersSampled", "VerifyDone", "VerifySets", "MAX_VERIFY_RUNS", "TrackedFinal", "RunSummary", "MigrationFinished",
    "Listener", "EventBus",
]
