"""The analytic precopy model: what the save loop should do, computed without simulating.

The iterative model of precopy migration (Liu et al., "Performance and energy modeling
for live migration of virtual machines", HPDC'11; the working-set refinement after
Clark et al., NSDI'05): round 0 sends all of memory; each later round sends the pages
dirtied while the previous one was sent; the loop stops when the policy says so and
the last dirty set is sent with the guest stopped. With ``λ = D/R`` (dirty rate over
link rate) the rounds shrink as ``M λ^i``. Here the pure-``D*T`` volume is replaced by
each writer's distinct-pages curve ``P(T)`` (pages rewritten within a window count
once):

- ``uniform`` over ``n`` pages at ``w`` writes/s: ``P(T) = n (1 - exp(-w T / n))`` (each
  write misses a given page with probability ``1 - 1/n``);
- ``sequential`` (wrapping) over ``n`` pages: ``P(T) = min(n, w T)``.

Everything else is the engine's own definitions, not a second copy of them: a pass's
time is ``LinkModel.batch_steps`` over its 1024-PFN batches (record framing from
``page_data_record_bytes``, the per-batch and per-hypercall overheads); a CLEAN costs
``LinkModel.clean_time`` with the guest held (its writes then never happen); the stop
decisions are the scenario's ``migrate.toolstack.policy`` objects, fed the same ``PrecopyStats``
and pass measurements the engine feeds them (Xen's loop in ``xg_sr_save.c``:
``send_memory_live`` then ``suspend_and_send_dirty``); the end records are counted by
the stream writer itself. So ``predict(scenario)`` is what the simulator must give,
round by round, when the guest's writes are spread in time as the model assumes (the
default ``guest.write_timing: continuous``); ``tests/toolstack/test_analytic.py``
pins that.

Scope: one ``uniform`` or wrapping ``sequential`` workload (over any region) in a flat guest (RAM pages
``[0, p2m_size)``, no holes, no balloon, no PoD); the ``xen`` and ``downtime``
policies; either switch-over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from hypervisor.abi import MAX_BATCH_SIZE, PAGE_SIZE

from migrate.events import PassPhase, Switchover
from migrate.toolstack.link import LinkModel, page_data_record_bytes
from migrate.toolstack.policy import Decision, DowntimePolicy, Policy, PrecopyStats, XenPolicy


class ModelError(ValueError):
    """A scenario outside the model's scope (the message says what it needs)."""


class WriterKind(StrEnum):
    """The workloads the model has a distinct-pages curve for (the scenario's names)."""

    UNIFORM = "uniform"
    SEQUENTIAL = "sequential"


@dataclass(frozen=True)
class Writer:
    """A workload as the model sees it: ``kind`` (uniform | sequential) writing
    ``rate`` pages/s over ``pages`` pages."""

    kind: WriterKind
    rate: float
    pages: int

    def __post_init__(self) -> None:
        if self.kind not in set(WriterKind):
            raise ModelError(f"writer kind {self.kind!r}: the model knows uniform and sequential")
        object.__setattr__(self, "kind", WriterKind(self.kind))

    def distinct(self, seconds: float) -> float:
        """``P(T)``: distinct pages written in ``seconds`` of running guest."""
        w = self.rate * max(0.0, seconds)
        if self.kind is WriterKind.UNIFORM:
            return self.pages * -math.expm1(-w / self.pages)
        return min(float(self.pages), w)


@dataclass
class ModelRound:
    """One pass as the model predicts it (the fields of ``events.RoundStats`` it
    predicts); ``dirty_count`` is what the CLEAN before it reported."""

    iteration: int
    phase: PassPhase      # live | final
    start_s: float
    end_s: float
    dirty_count: float
    pages_sent: float
    bytes: float


@dataclass
class ModelResult:
    """The predicted save: its rounds, when the guest was suspended, the downtime
    (suspend to the last byte's arrival, as ``Totals.downtime_s``) and, for every
    decision the policy took on a dirty count, how far that count was from flipping it
    (``margins``: relative distance to the threshold; a simulation near 0 may decide
    the other way on noise)."""

    rounds: list[ModelRound] = field(default_factory=list)
    t_start: float = 0.0
    t_suspend: float = 0.0
    t_last_byte: float = 0.0
    margins: list[float] = field(default_factory=list)

    @property
    def downtime_s(self) -> float:
        return self.t_last_byte - self.t_suspend

    @property
    def total_time_s(self) -> float:
        return self.t_last_byte - self.t_start

    @property
    def live(self) -> list[ModelRound]:
        return [r for r in self.rounds if r.phase is PassPhase.LIVE]


def pass_time(link: LinkModel, pfns: float, data_pages: float) -> tuple[float, float]:
    """``(seconds, bytes)`` of a pass over ``pfns`` PFNs of which the first
    ``data_pages`` carry data, in batches of 1024 (the engine's ``write_batch``): a
    fractional count is sent as its fraction of a page, so the model stays smooth."""
    if pfns <= 0:
        return 0.0, 0.0
    nb = math.ceil(pfns / MAX_BATCH_SIZE - 1e-12)
    count = np.full(nb, float(MAX_BATCH_SIZE))
    count[-1] = pfns - MAX_BATCH_SIZE * (nb - 1)
    data = np.clip(data_pages - MAX_BATCH_SIZE * np.arange(nb), 0.0, count)
    # page_data_record_bytes(c, d) = header + count word + c pfn words + d pages (8-aligned).
    fixed = page_data_record_bytes(0, 0)
    nbytes = fixed + 8.0 * count + PAGE_SIZE * data
    steps = link.batch_steps(nbytes, data, data > 0)
    return float(steps.sum()), float(nbytes.sum())


def _end_bytes() -> int:
    """Bytes of the records after the last pass (end of checkpoint, END), counted by the
    stream writer itself."""
    from migrate.stream.sinks import NullSink
    from migrate.stream.writer import StreamWriter

    w = StreamWriter(NullSink())
    w.write_end_of_checkpoint()
    w.write_end()
    n = int(w.bytes_written)
    w.close()
    return n


def _margin(policy: Policy, stats: PrecopyStats) -> float | None:
    """How far a decision on ``stats.dirty_count`` is from flipping (relative)."""
    if stats.dirty_count < 0:
        return None
    if isinstance(policy, XenPolicy):
        if stats.iteration >= policy.max_iterations:
            return None
        th = max(policy.dirty_threshold, 1)
        return abs(stats.dirty_count - th) / th
    if isinstance(policy, DowntimePolicy):
        if stats.iteration >= policy.max_iterations or policy.bandwidth is None:
            return None
        budget = policy.bandwidth * policy.downtime_limit
        return abs(stats.dirty_count * PAGE_SIZE - budget) / budget
    return None


def precopy(writer: Writer, p2m_size: int, link: LinkModel, policy: Policy, *, t_start: float = 0.0,
            switchover: Switchover = Switchover.LIVE) -> ModelResult:
    """The precopy loop of ``migrate.toolstack.save`` on the model's smooth quantities."""
    switchover = Switchover(switchover)
    h = link.hypercall_overhead
    walk = link.clean_time(p2m_size)
    res = ModelResult(t_start=t_start)
    now = t_start + h                     # enable_logdirty
    since = t_start                       # writes from here on are in the next CLEAN
    dirty: float = float(p2m_size)
    stats = PrecopyStats(iteration=0, total_written=0, dirty_count=p2m_size)
    x = 0
    held: float | None = None              # switchover "stopped": the set held back

    def decide(s: PrecopyStats) -> Decision:
        m = _margin(policy, s)
        if m is not None:
            res.margins.append(m)
        return policy.decide(s)

    def send(iteration: int, phase: PassPhase, reported: float, pages: float, walk_all: bool) -> ModelRound:
        """A pass of ``pages`` data pages: send_all_pages over p2m_size when ``walk_all``,
        else send_dirty_pages over the dirty PFNs."""
        nonlocal now
        secs, nbytes = pass_time(link, p2m_size if walk_all else pages, pages)
        r = ModelRound(iteration, phase, now, now + secs, reported, pages, nbytes)
        res.rounds.append(r)
        now += secs
        return r

    while True:
        decision = decide(stats)
        if switchover is Switchover.STOPPED and decision == Decision.STOP_AND_COPY and dirty > 0:
            held = dirty
            break
        x += 1
        if dirty > 0 and decision != Decision.ABORT:
            first = x == 1
            r = send(x, PassPhase.LIVE, dirty, float(p2m_size) if first else dirty, first)
            policy.observe_pass(int(round(r.bytes)), r.end_s - r.start_s)
        if decision != Decision.CONTINUE_PRECOPY:
            break
        stats = PrecopyStats(iteration=x, total_written=stats.total_written + max(stats.dirty_count, 0),
                             dirty_count=-1)
        decision = decide(stats)
        if decision != Decision.CONTINUE_PRECOPY:
            break
        dirty = writer.distinct(now - since)      # CLEAN: the guest is held for the walk
        now += walk
        since = now
        stats = PrecopyStats(iteration=stats.iteration, total_written=stats.total_written,
                             dirty_count=int(round(dirty)))
    if decision == Decision.ABORT:
        raise ModelError("the policy aborted the precopy loop")

    res.t_suspend = now                            # suspend_and_send_dirty
    final = reported = writer.distinct(now - since)
    now += walk
    if held is not None:
        reported = final + held               # dirty_count + nr_deferred_pages, as the engine
        final = held + final - held * final / writer.pages   # the union of two independent sets
    if held is not None and x == 0:          # stopped before pass 1: everything, suspended
        send(x + 1, PassPhase.FINAL, float(p2m_size), float(p2m_size), True)
    else:
        send(x + 1, PassPhase.FINAL, reported, final, False)
    now += link.transfer_time(_end_bytes())
    res.t_last_byte = now + link.latency
    return res
