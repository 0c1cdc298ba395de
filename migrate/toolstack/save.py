"""The precopy engine: libxenguest's live save, on virtual time.

Mirrors ``tools/libs/guest/xg_sr_save.c`` stage by stage. ``PrecopyEngine.run`` is
``save()``: setup (``x86_hvm_setup`` fixes ``p2m_size``; ``write_headers`` and the
static data records), then ``send_domain_memory_live``, which reads as Xen's::

    enable_logdirty        ENABLE_LOGDIRTY (else OFF, then ENABLE_LOGDIRTY again)
    send_memory_live       pass 1 over every PFN, then CLEAN + send the dirty PFNs
                           until the policy, asked twice per loop, says stop
    suspend_and_send_dirty suspend, CLEAN with FINAL, send the rest paused
    verify_frames          (optional) a VERIFY record, every page again, PEEK

then the end of the stream (``end_of_checkpoint``, END; ``cleanup`` turns log-dirty
off). A checkpointed stream (``SaveOptions.checkpoint``) goes on from there as Remus
does (``checkpoint.Remus``: a CHECKPOINT record, then a checkpoint per interval) until
the failover, and only END follows; its VERIFY pass is not run (Xen runs
``verify_frames`` for plain streams only). The passes themselves (``send_dirty_pages``, ``send_all_pages``,
``write_batch``) are ``batches.PassSender``'s; the engine writes the stream into the
``Sink`` it is given (``xc_domain_save``'s ``io_fd``) through its own ``StreamWriter``.

Everything costs virtual time through the link model; before each domctl the
hypervisor runs the guest up to the call's time, so the guest keeps writing and
ballooning between (and inside) batches, exactly the races Xen's saver lives with.

Departures from Xen, each a named option (``SaveOptions``):
- ``tolerate_vanished``: a GFN that vanished between the type query and the map is
  sent as XTAB instead of failing the save (Xen's write_batch fails on any map error).
- ``stats_overflow=saturate``: the initial ``dirty_count`` (p2m_size) is saturated
  at UINT32_MAX instead of truncated to 32 bits (v2 03/13, never committed); with
  ``truncate`` (Xen's behaviour) a p2m_size of 2^32 reads as 0 and pass 1 is skipped.
- ``engine=reference``: one Python step per batch, each a getpageframeinfo3 and a map
  call (the saver's own loop, kept as the reference); ``span`` (the default) asks the
  domain for a whole run of batches at once, with a byte-identical stream and an
  identical report (see ``batches``).
- ``switchover=stopped``: when the policy says stop at the top of the loop, the dirty
  set the last CLEAN returned is not sent live (Xen's ``send_memory_live`` sends it
  before it looks at the decision again); the domain is suspended first and that set,
  with whatever the final CLEAN adds, is sent while it is paused, as QEMU's
  ``migration_completion`` and SimGrid's migration model do. ``live`` is Xen's. The
  paused pass's ``dirty_count`` is the final CLEAN's plus the held set's size, as
  suspend_and_send_dirty adds ``nr_deferred_pages``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

import numpy as np

from hypervisor.abi import SHADOW_LOGDIRTY_FINAL, ShadowOp, XenError

from migrate.errors import MigrationAborted, MigrationFailed
from migrate.events import (CleanDone, CleanOp, EventBus, MemoryOp, Outcome, PassPhase, Phase, PhaseChanged,
                            RoundStats, SaveSetup, Switchover, Totals)
from migrate.stream import Sink, StreamError, StreamWriter
from migrate.toolstack.batches import Pacer, PassSender, SaveContext, SaveEngine
from migrate.toolstack.checkpoint import CheckpointOptions, CommitCheck, Remus
from migrate.toolstack.control import DomainControl
from migrate.toolstack.link import LinkModel
from migrate.toolstack.policy import Decision, Policy, PrecopyStats

UINT32_MAX = 0xFFFFFFFF
_EMPTY_PFNS = np.empty(0, dtype=np.int64)


class StatsOverflow(StrEnum):
    """How the initial ``dirty_count`` (p2m_size) fits the 32-bit ``stats.dirty_count``:
    ``truncate`` (Xen) or ``saturate`` at UINT32_MAX (v2 03/13, never committed)."""

    TRUNCATE = "truncate"
    SATURATE = "saturate"

    def initial_dirty_count(self, p2m_size: int) -> int:
        if self is StatsOverflow.TRUNCATE:
            return p2m_size & UINT32_MAX
        return min(p2m_size, UINT32_MAX)


@dataclass(slots=True)
class SaveOptions:
    verify: bool = False
    tolerate_vanished: bool = False
    stats_overflow: StatsOverflow = StatsOverflow.TRUNCATE
    deadline: float | None = None        # abort when the save runs longer (virtual s)
    switchover: Switchover = Switchover.LIVE
    engine: SaveEngine = SaveEngine.SPAN
    xen_version: tuple[int, int] = (4, 22)
    checkpoint: CheckpointOptions | None = None     # a checkpointed (Remus) stream
    #: the HVM params the builder set (SourceInfo.hvm_params); None: the stream's defaults
    hvm_params: tuple[tuple[int, int], ...] | None = None

    def __post_init__(self) -> None:
        self.stats_overflow = StatsOverflow(self.stats_overflow)
        self.switchover = Switchover(self.switchover)
        self.engine = SaveEngine(self.engine)


@dataclass(slots=True)
class SaveResult:
    outcome: Outcome
    p2m_size: int = 0
    rounds: list[RoundStats] = field(default_factory=list)
    totals: Totals = field(default_factory=Totals)
    t_start: float = 0.0
    t_suspend: float | None = None
    t_last_byte: float | None = None     # when the destination has the final data
    t_end: float = 0.0
    error: str = ""
    error_pfn: int | None = None
    final_stats: dict[str, Any] = field(default_factory=dict)
    switchover: Switchover = Switchover.LIVE    # SaveOptions.switchover of this save

    def __post_init__(self) -> None:
        self.outcome = Outcome(self.outcome)
        self.switchover = Switchover(self.switchover)


class LiveEnd(NamedTuple):
    """Where ``send_memory_live`` left the save: the loop's iterations and, with
    ``switchover=stopped``, the dirty set it held back for the paused pass (None: pass 1
    never ran, so everything; empty: nothing held back)."""

    iterations: int
    held: np.ndarray | None = _EMPTY_PFNS


class PrecopyEngine:
    """One live save of one domain into one stream sink."""

    def __init__(self, domain: DomainControl, sink: Sink, link: LinkModel, policy: Policy,
                 bus: EventBus, *, start: float, options: SaveOptions | None = None,
                 pacer: Pacer | None = None, on_commit: CommitCheck | None = None):
        self.options = options or SaveOptions()
        self.on_commit = on_commit
        self.writer = StreamWriter(sink)
        self.policy = policy
        self.ctx = SaveContext(domain=domain, writer=self.writer, link=link, bus=bus, now=float(start),
                               t_start=float(start), deadline=self.options.deadline, pacer=pacer)
        self.sender = PassSender(self.ctx, engine=self.options.engine,
                                 tolerate_vanished=self.options.tolerate_vanished)
        self.result = SaveResult(outcome=Outcome.FAILED, t_start=self.ctx.now, rounds=self.ctx.rounds,
                                 switchover=self.options.switchover)
        self._logdirty_on = False
        self._suspended = False
        bus.subscribe(self._on_event)

    @property
    def now(self) -> float:
        """The save's virtual clock."""
        return self.ctx.now

    def _on_event(self, ev) -> None:
        """Balloon operations count in the pass they happen in; those between two
        passes (the guest runs until the next call, e.g. the CLEAN) in the pass before."""
        if not isinstance(ev, MemoryOp):
            return
        sender, rounds = self.sender, self.ctx.rounds
        if sender.current is not None:
            sender.current = sender.current.with_balloon(ev)
        elif rounds:
            rounds[-1] = rounds[-1].with_balloon(ev)

    def _phase(self, phase: Phase, detail: str = "") -> None:
        self.ctx.bus.publish(PhaseChanged(t=self.ctx.now, phase=phase, detail=detail))

    # ------------------------------------------------------------------ save()

    async def run(self) -> SaveResult:
        res = self.result
        try:
            await self._setup()
            await self._send_domain_memory_live()
            if self.options.checkpoint is not None:
                await Remus(self, self.options.checkpoint, self.on_commit).run()
            await self._end_of_stream()
            res.outcome = Outcome.COMPLETED
        except MigrationAborted as exc:
            res.outcome, res.error, res.error_pfn = Outcome.ABORTED, str(exc), exc.pfn
            await self._recover()
        except MigrationFailed as exc:
            res.outcome, res.error, res.error_pfn = Outcome.FAILED, str(exc), exc.pfn
            await self._recover()
        except (StreamError, OSError) as exc:
            # The stream could not be written (disk full, the receiver went away):
            # write_stream() failing makes xc_domain_save fail the same way.
            res.outcome, res.error = Outcome.FAILED, f"stream write failed: {exc}"
            await self._recover()
        except (asyncio.CancelledError, KeyboardInterrupt):
            res.outcome, res.error = Outcome.ABORTED, "interrupted by the user"
            await self._recover()
        finally:
            res.t_end = self.ctx.now
            res.totals = self._totals()
        return res

    async def _setup(self) -> None:
        """x86_hvm_setup() fixes p2m_size for the whole save; write_headers() and the
        static data records open the stream."""
        ctx, res = self.ctx, self.result
        self._phase(Phase.SETUP)
        ctx.p2m_size = res.p2m_size = await ctx.domain.max_gpfn(ctx.now) + 1
        ctx.bus.publish(SaveSetup(t=ctx.now, p2m_size=ctx.p2m_size))
        self.writer.write_image_header()
        self.writer.write_domain_header(*self.options.xen_version)
        self.writer.write_static_data()

    async def _send_domain_memory_live(self) -> None:
        """send_domain_memory_live(): the four stages, in Xen's order."""
        await self._enable_logdirty()
        live = await self._send_memory_live()
        await self._suspend_and_send_dirty(live)
        if self.options.verify and self.options.checkpoint is None:
            await self._verify_frames(live)

    async def _end_of_stream(self) -> None:
        """end_of_checkpoint() for HVM, then END; cleanup() turns log-dirty off. (A
        checkpointed stream wrote its last end_of_checkpoint with its last checkpoint.)"""
        ctx, writer = self.ctx, self.writer
        before = writer.bytes_written
        checkpointed = self.options.checkpoint is not None
        if not checkpointed:
            writer.write_end_of_checkpoint(hvm_params=self.options.hvm_params)
        writer.write_end()
        ctx.now += ctx.link.transfer_time(writer.bytes_written - before)
        await ctx.domain.shadow_op(ctx.now, ShadowOp.OFF)
        self._logdirty_on = False
        if not checkpointed:
            self.result.t_last_byte = ctx.now + ctx.link.latency
        writer.close()
        self._phase(Phase.DONE, "End of stream")

    # ------------------------------------------------------------------ the stages

    async def _enable_logdirty(self) -> None:
        """enable_logdirty(): ENABLE_LOGDIRTY, else OFF then ENABLE_LOGDIRTY again."""
        ctx = self.ctx
        try:
            await ctx.domain.shadow_op(ctx.now, ShadowOp.ENABLE_LOGDIRTY)
        except XenError:
            try:
                await ctx.domain.shadow_op(ctx.now, ShadowOp.OFF)
                await ctx.domain.shadow_op(ctx.now, ShadowOp.ENABLE_LOGDIRTY)
            except XenError as exc:
                raise MigrationFailed(f"Failed to enable logdirty: {exc}") from None
        self._logdirty_on = True
        ctx.now += ctx.link.hypercall_overhead

    async def _send_memory_live(self) -> LiveEnd:
        """send_memory_live(): pass 1 sends every PFN below p2m_size; then, while the
        policy says continue, CLEAN and send what it returned. The policy is asked at
        the top of the loop with the CLEAN's dirty_count and again after each pass
        with dirty_count -1, as Xen asks it."""
        ctx, opts = self.ctx, self.options
        dirty_count = opts.stats_overflow.initial_dirty_count(ctx.p2m_size)   # stats.dirty_count (uint32)
        stats = PrecopyStats(iteration=0, total_written=0, dirty_count=ctx.p2m_size)
        bitmap: np.ndarray | None = None          # None = the all-ones bitmap of pass 1
        self._phase(Phase.PRECOPY)
        x = 0
        while True:
            decision = self.policy.decide(stats)
            if opts.switchover is Switchover.STOPPED and decision == Decision.STOP_AND_COPY and dirty_count > 0:
                return LiveEnd(x, held=bitmap)
            x += 1
            if dirty_count > 0 and decision != Decision.ABORT:
                rnd = RoundStats(iteration=x, phase=PassPhase.LIVE, start_s=ctx.now, dirty_count=int(dirty_count))
                done = await (self.sender.send_all_pages(rnd) if bitmap is None
                              else self.sender.send_dirty_pages(rnd, bitmap))
                self.policy.observe_pass(done.bytes, done.end_s - done.start_s)
            if decision != Decision.CONTINUE_PRECOPY:
                break
            stats = PrecopyStats(iteration=x, total_written=stats.total_written + stats.dirty_count, dirty_count=-1)
            decision = self.policy.decide(stats)
            if decision != Decision.CONTINUE_PRECOPY:
                break
            clean = await self._read_dirty_bitmap(x, final=False)
            dirty_count = int(clean.stats.dirty_count)
            bitmap = clean.bitmap.pfns()
            stats = PrecopyStats(iteration=x, total_written=stats.total_written, dirty_count=dirty_count)
        if decision == Decision.ABORT:
            raise MigrationAborted("Abort precopy loop (the policy returned XGS_POLICY_ABORT)")
        return LiveEnd(x)

    async def _suspend_and_send_dirty(self, live: LiveEnd) -> None:
        """suspend_and_send_dirty(): suspend the domain, CLEAN with FINAL, and send
        what it returned (with ``switchover=stopped``, also the set held back)."""
        ctx, res = self.ctx, self.result
        await ctx.domain.suspend(ctx.now)
        self._suspended = True
        res.t_suspend = ctx.now
        self._phase(Phase.SUSPENDED, "Domain now suspended")
        clean = await self._read_dirty_bitmap(live.iterations + 1, final=True)
        final_pfns = clean.bitmap.pfns()
        rnd = RoundStats(iteration=live.iterations + 1, phase=PassPhase.FINAL, start_s=ctx.now,
                         dirty_count=self._final_entries(int(clean.stats.dirty_count), live))
        self._phase(Phase.FINAL)
        if live.held is None:
            await self.sender.send_all_pages(rnd)
            return
        if live.held.size:
            final_pfns = np.union1d(live.held, final_pfns)
        await self.sender.send_dirty_pages(rnd, final_pfns)

    def _final_entries(self, dirty_count: int, live: LiveEnd) -> int:
        """What the paused pass is told to expect, as suspend_and_send_dirty counts it:
        the final CLEAN's ``dirty_count`` plus ``nr_deferred_pages``. The set
        ``switchover=stopped`` held back plays the deferred pages' part (OR'd into the
        bitmap, counted on top, overlap and all); held back before pass 1 means every
        PFN, and send_all_pages is told ``p2m_size``."""
        if live.held is None:
            return self.ctx.p2m_size
        return dirty_count + int(live.held.size)

    async def _verify_frames(self, live: LiveEnd) -> None:
        """verify_frames(): a VERIFY record, send_all_pages again, PEEK for the stats."""
        ctx = self.ctx
        self._phase(Phase.VERIFY)
        self.writer.write_verify()
        iteration = live.iterations + 2
        rnd = RoundStats(iteration=iteration, phase=PassPhase.VERIFY, start_s=ctx.now, dirty_count=ctx.p2m_size)
        await self.sender.send_all_pages(rnd)
        peek = await self._read_dirty_bitmap(iteration, final=False, peek=True)
        self.result.final_stats = {"verify_dirty_count": int(peek.stats.dirty_count),
                                   "verify_fault_count": int(peek.stats.fault_count)}

    async def _read_dirty_bitmap(self, iteration: int, *, final: bool, peek: bool = False):
        """XEN_DOMCTL_SHADOW_OP_CLEAN (or PEEK) over p2m_size: the dirty bitmap and stats."""
        ctx = self.ctx
        p2m_size = ctx.p2m_size
        op = CleanOp.PEEK if peek else CleanOp.CLEAN
        walk = ctx.link.clean_time(p2m_size)
        try:
            res = await ctx.domain.shadow_op(ctx.now, ShadowOp[op.value], mode=SHADOW_LOGDIRTY_FINAL if final else 0,
                                             pages=p2m_size, walk_s=walk)
        except XenError as exc:
            raise MigrationFailed(f"Failed to retrieve logdirty bitmap: {exc}") from None
        ctx.now += walk
        if res.pages != p2m_size:
            raise MigrationFailed(
                f"Failed to retrieve logdirty bitmap: got {res.pages} pages, expected {p2m_size}")
        ctx.bus.publish(CleanDone(t=ctx.now, iteration=iteration, op=op, final=final,
                                  dirty_count=int(res.stats.dirty_count),
                                  fault_count=int(res.stats.fault_count), pages=int(res.pages)))
        return res

    # ------------------------------------------------------------------ the end

    def _totals(self) -> Totals:
        """Whole-run totals, from the passes (also for a save that failed or aborted)."""
        res = self.result
        live = [r for r in res.rounds if r.phase != PassPhase.VERIFY]
        end = res.t_last_byte if res.t_last_byte is not None else res.t_end
        suspended = res.t_suspend is not None and res.outcome == Outcome.COMPLETED
        return Totals(pages_sent=sum(r.pages_sent for r in live), xtab_sent=sum(r.xtab_sent for r in live),
                      broken_sent=sum(r.broken_sent for r in live),
                      bytes=int(self.writer.bytes_written),
                      iterations=sum(1 for r in live if r.phase == PassPhase.LIVE),
                      total_time_s=end - res.t_start, downtime_s=(end - res.t_suspend) if suspended else 0.0)

    async def _recover(self) -> None:
        """A failed Xen save leaves the domain to the toolstack, which resumes it at the
        sender (libxl's domain_suspend_done with rc != 0); log-dirty is turned off."""
        ctx = self.ctx
        self.sender.cut_short()
        self._phase(Phase.ABORTED, self.result.error)
        if self._logdirty_on:
            try:
                await ctx.domain.shadow_op(ctx.now, ShadowOp.OFF)
            except XenError:
                pass
            self._logdirty_on = False
        if self._suspended:
            await ctx.domain.resume(ctx.now)
            self._suspended = False
            self._phase(Phase.RESUMED, "source domain resumed after the failed save")
        self.writer.abort()
