"""The precopy engine: libxenguest's live save loop, on virtual time.

Mirrors ``tools/libs/guest/xg_sr_save.c``: ``send_domain_memory_live`` =
``enable_logdirty`` + ``send_memory_live`` + ``suspend_and_send_dirty`` (+
``verify_frames``), with ``send_dirty_pages`` / ``write_batch`` doing the batches of
at most MAX_BATCH_SIZE (1024) PFNs: one getpageframeinfo3, one foreign map of the
data-carrying PFNs, one PAGE_DATA record.

Everything costs virtual time through the link model; before each domctl the
hypervisor runs the guest up to the call's time, so the guest keeps writing and
ballooning between (and inside) batches, exactly the races Xen's saver lives with.

Departures from Xen, each a named option:
- ``tolerate_vanished``: a GFN that vanished between the type query and the map is
  sent as XTAB instead of failing the save (Xen's write_batch fails on any map error).
- ``stats_overflow="saturate"``: the initial ``dirty_count`` (p2m_size) is saturated
  at UINT32_MAX instead of truncated to 32 bits (v2 03/13, never committed); with
  ``truncate`` (Xen's behaviour) a p2m_size of 2^32 reads as 0 and pass 1 is skipped.
- ``engine="reference"``: one Python step per batch, each a getpageframeinfo3 and a map
  call (the saver's own loop, kept as the reference); ``span`` (the default) asks the
  domain for a whole run of batches at once (``DomainControl.serve_span``; see
  ``hypervisor/span.py``) and accounts records, bytes, time and events in bulk, with a
  byte-identical stream and an identical report.
- ``switchover="stopped"``: when the policy says stop at the top of the loop, the dirty
  set the last CLEAN returned is not sent live (Xen's ``send_memory_live`` sends it
  before it looks at the decision again); the domain is suspended first and that set,
  with whatever the final CLEAN adds, is sent while it is paused, as QEMU's
  ``migration_completion`` and SimGrid's migration model do. ``live`` is Xen's.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hypervisor.abi import (MAX_BATCH_SIZE, PFINFO_HAS_DATA, PFINFO_KNOWN, PFINFO_LTAB_SHIFT,
                            SHADOW_LOGDIRTY_FINAL, PFInfo, ShadowOp, XenError, batch_counts)
from hypervisor.tables import batch_totals, lookup

from migrate.toolstack.control import SPAN_FIRST, DomainControl, PassPlan, SpanAt, Stretch, next_span_ask, span_cap
from migrate.errors import MigrationAborted, MigrationFailed
from migrate.events import (BatchSent, CleanDone, CountersSampled, EventBus, MemoryOp, Outcome, PassEnded,
                     PassPhase, PassStarted, Phase, PhaseChanged, RoundStats, SaveSetup, Totals,
                     count_balloon)
from migrate.toolstack.link import LinkModel, page_data_record_bytes
from migrate.toolstack.policy import Decision, Policy, PrecopyStats
from migrate.stream import StreamError

UINT32_MAX = 0xFFFFFFFF
_EMPTY_PFNS = np.empty(0, dtype=np.int64)
_EMPTY_NIBBLES = np.empty(0, dtype=np.uint8)
#: Sample the hypervisor's counters every this many batches (and at every pass end).
COUNTER_SAMPLE_BATCHES = 32


def _send_all_walk(runs: np.ndarray, p2m_size: int) -> list:
    """send_all_pages' walk of ``[0, p2m_size)`` given the P2M's populated runs: in
    order, a ``Stretch`` of 1024-aligned batches over each populated part and a
    ``(lo, hi)`` hole (whole batches that are all XTAB) between them."""
    out: list = []
    pos = 0
    for a, b in runs.tolist() + [[p2m_size, p2m_size]]:
        a = a - a % MAX_BATCH_SIZE
        b = min(p2m_size, -(-b // MAX_BATCH_SIZE) * MAX_BATCH_SIZE)
        if pos < a:
            out.append((pos, a))
            pos = a
        lo = max(pos, a)
        if lo < b:
            if out and isinstance(out[-1], Stretch) and out[-1].hi == lo:
                out[-1] = Stretch(lo=out[-1].lo, hi=b)     # back to back: one stretch
            else:
                out.append(Stretch(lo=lo, hi=b))
        pos = max(pos, b)
    return out


@dataclass(slots=True)
class SaveOptions:
    verify: bool = False
    tolerate_vanished: bool = False
    stats_overflow: str = "truncate"     # "truncate" (Xen) | "saturate" (v2 03/13)
    deadline: float | None = None        # abort when the save runs longer (virtual s)
    switchover: str = "live"             # "live" (Xen) | "stopped" (QEMU, SimGrid)
    engine: str = "span"                 # "span" | "reference" (one step per batch)
    xen_version: tuple[int, int] = (4, 22)


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
    switchover: str = "live"             # SaveOptions.switchover of this save


class PrecopyEngine:
    """One live save of one domain into one stream writer."""

    def __init__(self, domain: DomainControl, writer, link: LinkModel, policy: Policy,
                 bus: EventBus, *, start: float, options: SaveOptions | None = None,
                 pacer=None):
        self.domain = domain
        self.writer = writer
        self.link = link
        self.policy = policy
        self.bus = bus
        self.now = float(start)
        self.options = options or SaveOptions()
        self.pacer = pacer
        self.result = SaveResult(outcome=Outcome.FAILED, t_start=self.now, switchover=self.options.switchover)
        self._current: RoundStats | None = None
        self._logdirty_on = False
        self._suspended = False
        self._plan: PassPlan | None = None
        #: Batches the next span asks for (grows while spans are served whole).
        self._span_ask = SPAN_FIRST
        bus.subscribe(self._on_event)

    # ------------------------------------------------------------------ bookkeeping

    def _on_event(self, ev) -> None:
        """Balloon operations count in the pass they happen in; those between two
        passes (the guest runs until the next call, e.g. the CLEAN) in the pass before."""
        if not isinstance(ev, MemoryOp):
            return
        cur = self._current
        if cur is None:
            if not self.result.rounds:
                return
            cur = self.result.rounds[-1]
        count_balloon(cur, ev)

    def _check_deadline(self) -> None:
        limit = self.options.deadline
        if limit is not None and self.now - self.result.t_start > limit:
            raise MigrationAborted(f"deadline of {limit:g} s exceeded at t={self.now:.3f} s "
                                   "(migration.deadline): the save was abandoned")

    def _phase(self, phase: Phase, detail: str = "") -> None:
        self.bus.publish(PhaseChanged(t=self.now, phase=phase, detail=detail))

    async def _sample_counters(self) -> None:
        counters = await self.domain.counters(self.now)
        self.bus.publish(CountersSampled(t=self.now, counters=counters))

    # ------------------------------------------------------------------ the batches

    async def _write_batch(self, pfns: np.ndarray, rnd: RoundStats) -> tuple[int, np.ndarray]:
        """write_batch(): type query, map the data PFNs, emit one PAGE_DATA record."""
        t_query = self.now
        types = await self.domain.getpageframeinfo3(t_query, pfns)
        nibbles = (np.asarray(types, dtype=np.uint32) >> PFINFO_LTAB_SHIFT).astype(np.uint8)
        if not PFINFO_KNOWN[nibbles].all():
            bad = int(pfns[~PFINFO_KNOWN[nibbles]][0])
            raise MigrationFailed(f"Unknown page type for pfn {bad:#x}", pfn=bad)
        self.now = self.link.map_time(t_query)
        data = PFINFO_HAS_DATA[nibbles]
        data_pfns = pfns[data]
        tokens = np.empty(0, dtype=np.uint64)
        if data_pfns.size:
            # write_batch() maps only when the batch has data pages.
            tokens, err = await self.domain.map_foreign(self.now, data_pfns)
            self.now = self.link.map_done(self.now)
            err = np.asarray(err)
            if err.any():
                bad = np.flatnonzero(err)
                if not self.options.tolerate_vanished:
                    pfn = int(data_pfns[bad[0]])
                    raise MigrationFailed(
                        f"Mapping of pfn {pfn:#x} (type NOTAB) failed: the GFN left the P2M "
                        f"between getpageframeinfo3 and the map (error {int(err[bad[0]])})", pfn=pfn)
                idx = np.flatnonzero(data)[bad]
                nibbles = nibbles.copy()
                nibbles[idx] = PFInfo.XTAB
                keep = np.ones(data_pfns.size, dtype=bool)
                keep[bad] = False
                tokens = np.asarray(tokens)[keep]
                data = PFINFO_HAS_DATA[nibbles]
        before = self.writer.bytes_written
        self.writer.write_page_data(pfns, nibbles, np.asarray(tokens, dtype=np.uint64))
        nbytes = self.writer.bytes_written - before
        n_data = int(data.sum())
        self.now = self.link.next_batch_time(t_query, nbytes, n_data, mapped=data_pfns.size > 0)
        rnd.pages_sent += n_data
        rnd.xtab_sent += int((nibbles == PFInfo.XTAB).sum())
        rnd.broken_sent += int((nibbles == PFInfo.BROKEN).sum())
        rnd.bytes += nbytes
        rnd.batches += 1
        rnd.pfns_walked += int(pfns.size)
        return nbytes, nibbles

    def _pass_started(self, rnd: RoundStats, entries: int, pfns: np.ndarray | None) -> None:
        self._current = rnd
        self.bus.publish(PassStarted(t=self.now, iteration=rnd.iteration, phase=rnd.phase,
                                     entries=entries, dirty_count=rnd.dirty_count, pfns=pfns))

    async def _pass_ended(self, rnd: RoundStats) -> None:
        rnd.end_s = self.now
        self._current = None
        self.result.rounds.append(rnd)
        # A copy: the engine still adds balloon ops between passes to ``rnd``; the
        # event says what the pass was when it ended (count_balloon replays the rest).
        self.bus.publish(PassEnded(t=self.now, stats=dataclasses.replace(rnd)))
        await self._sample_counters()

    async def _yield(self) -> None:
        """Between batches: pace virtual time against wall time, and always let the
        event loop run (Ctrl-C, the dashboard, an MQTT client's keep-alives)."""
        if self.pacer is not None:
            await self.pacer.pace(self.now)
        await asyncio.sleep(0)

    async def _batch(self, rnd: RoundStats, batch: np.ndarray, entries: int) -> None:
        nbytes, nibbles = await self._write_batch(batch, rnd)
        self.bus.publish(BatchSent(t=self.now, iteration=rnd.iteration, pfns=batch, nibbles=nibbles,
                                   walked=rnd.pfns_walked, entries=entries, bytes=nbytes))
        self._check_deadline()
        if rnd.batches % COUNTER_SAMPLE_BATCHES == 0:
            await self._sample_counters()
        await self._yield()

    async def _begin_pass(self, rnd: RoundStats, stretches: tuple[Stretch, ...]) -> None:
        """State the pass's batches to the domain before the first one."""
        limit = self.options.deadline
        deadline = None if limit is None else (self.result.t_start, limit)
        self._plan = PassPlan(rnd.iteration, stretches, self.link, deadline, span_cap(self.result.p2m_size))
        await self.domain.begin_pass(self.now, self._plan)

    async def _walk(self, rnd: RoundStats, stretch: Stretch, entries: int) -> None:
        n = len(stretch)
        k = 0
        spans = self.options.engine == "span"
        cap = COUNTER_SAMPLE_BATCHES if self.pacer is not None else self._plan.span_max
        while k < n:
            if spans:
                ask = min(n - k, self._span_ask, cap)
                if self.pacer is not None:
                    # A live view: spans end where the counters are sampled, so each
                    # sample is the domain as it was after that batch (as per batch).
                    ask = min(ask, COUNTER_SAMPLE_BATCHES - rnd.batches % COUNTER_SAMPLE_BATCHES)
                pfns = stretch.batches(k, ask)
                # With a pacer spans end at sampling points, not as next_span_ask says.
                at = SpanAt(stretch, k) if self.pacer is None else None
                served = await self.domain.serve_span(self.now, pfns, self._plan, at)
                self._span_ask = next_span_ask(ask, served.batches, self._plan.span_max)
                if served.batches:
                    await self._span(rnd, pfns, served, entries)
                    k += served.batches
                    continue
            await self._batch(rnd, stretch.batch(k), entries)
            k += 1

    async def _span(self, rnd: RoundStats, pfns: np.ndarray, served, entries: int) -> None:
        """Account a span the domain served: the PAGE_DATA records of its batches, in
        one write; the round's counts; virtual time (the same link model, batch by
        batch); and BatchSent events, one per batch with a pacer (a live view), else
        one per run of at most COUNTER_SAMPLE_BATCHES batches. The hypervisor's counters
        are sampled at the span's end when it crossed a sampling point (with a pacer
        spans end at those points)."""
        nib = np.asarray(served.nibbles, dtype=np.uint8)
        pfns = pfns[:served.pfns]
        if nib.size != pfns.size:
            raise MigrationFailed(f"the domain answered {nib.size} types for {pfns.size} PFNs")
        unknown = ~lookup(PFINFO_KNOWN, nib)
        if unknown.any():
            pfn = int(pfns[unknown][0])
            raise MigrationFailed(f"Unknown page type for pfn {pfn:#x}", pfn=pfn)
        data = lookup(PFINFO_HAS_DATA, nib)
        counts = batch_counts(pfns.size)
        starts = np.cumsum(counts) - counts
        dpb = batch_totals(data, MAX_BATCH_SIZE)
        tokens = np.asarray(served.tokens, dtype=np.uint64)
        if tokens.size != int(dpb.sum()):
            raise MigrationFailed(f"the domain mapped {tokens.size} pages for {int(dpb.sum())} data PFNs")
        times = self.link.span_times(self.now, counts, dpb)
        if not np.array_equal(times, np.asarray(served.times, dtype=np.float64)):
            raise MigrationFailed("the domain timed a span of batches differently from the link model")
        nbytes = page_data_record_bytes(counts, dpb)
        written = self.writer.write_page_data(pfns, nib, tokens)
        if written != int(nbytes.sum()):
            raise MigrationFailed(f"a span's PAGE_DATA records took {written} bytes, not {int(nbytes.sum())}")
        nb = counts.size
        b0, walked0 = rnd.batches, rnd.pfns_walked
        rnd.pages_sent += int(dpb.sum())
        if int(dpb.sum()) < pfns.size:               # (every PFN a data page: neither)
            rnd.xtab_sent += int(np.count_nonzero(nib == PFInfo.XTAB))
            rnd.broken_sent += int(np.count_nonzero(nib == PFInfo.BROKEN))
        rnd.bytes += written
        rnd.batches += nb
        rnd.pfns_walked += int(pfns.size)
        idx = np.arange(1, nb + 1)
        if self.pacer is None:
            ends = idx[((b0 + idx) % COUNTER_SAMPLE_BATCHES == 0) | (idx == nb)].tolist()
        else:
            ends = idx.tolist()
        ends_p = np.cumsum(counts)
        cum_bytes = np.cumsum(nbytes)
        i0 = 0
        for i1 in ends:
            a = int(starts[i0])
            b = int(ends_p[i1 - 1])
            self.now = float(times[i1])
            chunk_bytes = int(cum_bytes[i1 - 1] - (cum_bytes[i0 - 1] if i0 else 0))
            self.bus.publish(BatchSent(t=self.now, iteration=rnd.iteration, pfns=pfns[a:b], nibbles=nib[a:b],
                                       walked=walked0 + b, entries=entries, bytes=chunk_bytes,
                                       ends=times[i0 + 1:i1 + 1].copy() if i1 - i0 > 1 else None))
            if i1 == nb:
                self._check_deadline()
                if (b0 + nb) // COUNTER_SAMPLE_BATCHES > b0 // COUNTER_SAMPLE_BATCHES:
                    # The domain is at the span's end: sampled there, not mid-span.
                    await self._sample_counters()
            await self._yield()
            i0 = i1

    async def _send_pfns(self, rnd: RoundStats, pfns: np.ndarray) -> None:
        """send_dirty_pages(): walk the bitmap's PFNs in order, batch by 1024."""
        self._pass_started(rnd, int(pfns.size), pfns)
        stretch = Stretch(pfns=pfns)
        await self._begin_pass(rnd, (stretch,))
        await self._walk(rnd, stretch, int(pfns.size))
        await self._pass_ended(rnd)

    async def _send_all(self, rnd: RoundStats, p2m_size: int) -> None:
        """send_all_pages(): every PFN below p2m_size, in batches [k*1024, (k+1)*1024).

        Where the P2M has never held an entry (whole never-allocated chunks of the
        model's P2M) every batch is all XTAB: those batches are accounted in bulk, with
        the same records, bytes and virtual time Xen's saver spends on them, but no
        per-batch calls, so memory and time follow what is populated, not p2m_size.
        After each bulk span the engine checks that the span is still unmapped; a GFN
        added there meanwhile (not something the guest model does) is sent right away
        instead of at its exact batch time."""
        self._pass_started(rnd, p2m_size, None)
        runs = np.asarray(await self.domain.mapped_runs(self.now, 0, p2m_size), dtype=np.int64).reshape(-1, 2)
        walk = _send_all_walk(runs, p2m_size)
        await self._begin_pass(rnd, tuple(part for part in walk if isinstance(part, Stretch)))
        for part in walk:
            if isinstance(part, Stretch):
                await self._walk(rnd, part, p2m_size)
            else:
                await self._walk_hole(rnd, part[0], part[1], p2m_size)
        await self._pass_ended(rnd)

    #: PFNs of a hole accounted per step (4096 batches).
    HOLE_STEP = MAX_BATCH_SIZE * 4096

    async def _walk_hole(self, rnd: RoundStats, lo: int, hi: int, entries: int) -> None:
        per_batch = self.link.hypercall_overhead + self.link.batch_overhead
        # At most ~64 steps per hole, each a multiple of the batch size.
        step = max(self.HOLE_STEP, -(-(hi - lo) // (64 * MAX_BATCH_SIZE)) * MAX_BATCH_SIZE)
        for a in range(lo, hi, step):
            b = min(a + step, hi)
            nbytes = self.writer.write_xtab_run(a, b)
            nbatches = -(-(b - a) // MAX_BATCH_SIZE)
            self.now += nbatches * per_batch + self.link.transfer_time(nbytes)
            rnd.xtab_sent += b - a
            rnd.pfns_walked += b - a
            rnd.bytes += nbytes
            rnd.batches += nbatches
            self.bus.publish(BatchSent(t=self.now, iteration=rnd.iteration, pfns=_EMPTY_PFNS,
                                       nibbles=_EMPTY_NIBBLES, walked=rnd.pfns_walked, entries=entries,
                                       bytes=nbytes, hole=(a, b)))
            self._check_deadline()
            late = np.asarray(await self.domain.mapped_runs(self.now, a, b), dtype=np.int64).reshape(-1, 2)
            for c, d in late.tolist():
                await self._batch(rnd, np.arange(c, d, dtype=np.int64), entries)
            await self._sample_counters()
            await self._yield()

    # ------------------------------------------------------------------ the domctls

    async def _clean(self, p2m_size: int, *, final: bool, iteration: int, peek: bool = False):
        op = ShadowOp.PEEK if peek else ShadowOp.CLEAN
        mode = SHADOW_LOGDIRTY_FINAL if final else 0
        walk = self.link.clean_time(p2m_size)
        try:
            res = await self.domain.shadow_op(self.now, op, mode=mode, pages=p2m_size, walk_s=walk)
        except XenError as exc:
            raise MigrationFailed(f"Failed to retrieve logdirty bitmap: {exc}") from None
        self.now += walk
        if res.pages != p2m_size:
            raise MigrationFailed(
                f"Failed to retrieve logdirty bitmap: got {res.pages} pages, expected {p2m_size}")
        self.bus.publish(CleanDone(t=self.now, iteration=iteration, op=op.name, final=final,
                                   dirty_count=int(res.stats.dirty_count),
                                   fault_count=int(res.stats.fault_count), pages=int(res.pages)))
        return res

    async def _enable_logdirty(self) -> None:
        """enable_logdirty(): ENABLE_LOGDIRTY, else OFF then ENABLE_LOGDIRTY again."""
        try:
            await self.domain.shadow_op(self.now, ShadowOp.ENABLE_LOGDIRTY)
        except XenError:
            try:
                await self.domain.shadow_op(self.now, ShadowOp.OFF)
                await self.domain.shadow_op(self.now, ShadowOp.ENABLE_LOGDIRTY)
            except XenError as exc:
                raise MigrationFailed(f"Failed to enable logdirty: {exc}") from None
        self._logdirty_on = True
        self.now += self.link.hypercall_overhead

    # ------------------------------------------------------------------ the save

    async def run(self) -> SaveResult:
        res = self.result
        try:
            await self._save()
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
            res.t_end = self.now
            self._totals()
        return res

    def _totals(self) -> None:
        """Whole-run totals, from the passes (also for a save that failed or aborted)."""
        res = self.result
        live = [r for r in res.rounds if r.phase != PassPhase.VERIFY]
        t = res.totals
        t.pages_sent = sum(r.pages_sent for r in live)
        t.xtab_sent = sum(r.xtab_sent for r in live)
        t.broken_sent = sum(r.broken_sent for r in live)
        t.iterations = sum(1 for r in live if r.phase == PassPhase.LIVE)
        t.bytes = int(self.writer.bytes_written)
        end = res.t_last_byte if res.t_last_byte is not None else res.t_end
        t.total_time_s = end - res.t_start
        t.downtime_s = (end - res.t_suspend) if (res.t_suspend is not None and res.outcome == Outcome.COMPLETED) else 0.0

    async def _recover(self) -> None:
        """A failed Xen save leaves the domain to the toolstack, which resumes it at the
        sender (libxl's domain_suspend_done with rc != 0); log-dirty is turned off."""
        if self._current is not None:
            # The pass that was cut short still sent what it sent: keep it in the rounds.
            cut = self._current
            cut.end_s = self.now
            self._current = None
            self.result.rounds.append(cut)
            self.bus.publish(PassEnded(t=self.now, stats=dataclasses.replace(cut)))
        self._phase(Phase.ABORTED, self.result.error)
        if self._logdirty_on:
            try:
                await self.domain.shadow_op(self.now, ShadowOp.OFF)
            except XenError:
                pass
            self._logdirty_on = False
        if self._suspended:
            await self.domain.resume(self.now)
            self._suspended = False
            self._phase(Phase.RESUMED, "source domain resumed after the failed save")
        abort = getattr(self.writer, "abort", None)
        if abort is not None:
            abort()

    async def _save(self) -> None:
        res, opts = self.result, self.options
        self._phase(Phase.SETUP)
        p2m_size = await self.domain.max_gpfn(self.now) + 1   # x86_hvm_setup: fixed for the save
        res.p2m_size = p2m_size
        self.bus.publish(SaveSetup(t=self.now, p2m_size=p2m_size))
        self.writer.write_image_header()
        self.writer.write_domain_header(*opts.xen_version)
        self.writer.write_static_data()
        await self._enable_logdirty()

        # send_memory_live()
        initial = p2m_size & UINT32_MAX if opts.stats_overflow == "truncate" else min(p2m_size, UINT32_MAX)
        dirty_count = initial                      # xc_shadow_op_stats_t stats.dirty_count (uint32)
        pstats = PrecopyStats(iteration=0, total_written=0, dirty_count=p2m_size)
        bitmap_pfns = None                         # None = the all-ones bitmap of pass 1
        self._phase(Phase.PRECOPY)
        x = 0
        pending = _EMPTY_PFNS                      # switchover "stopped": the set held back
        while True:
            decision = self.policy.decide(pstats)
            if opts.switchover == "stopped" and decision == Decision.STOP_AND_COPY and dirty_count > 0:
                pending = bitmap_pfns              # None: pass 1 never ran, so everything
                break
            x += 1
            if dirty_count > 0 and decision != Decision.ABORT:
                rnd = RoundStats(iteration=x, phase=PassPhase.LIVE, start_s=self.now, dirty_count=int(dirty_count))
                if bitmap_pfns is None:
                    await self._send_all(rnd, p2m_size)
                else:
                    await self._send_pfns(rnd, bitmap_pfns)
                self.policy.observe_pass(rnd.bytes, rnd.end_s - rnd.start_s)
            if decision != Decision.CONTINUE_PRECOPY:
                break
            pstats = PrecopyStats(iteration=x, total_written=pstats.total_written + pstats.dirty_count,
                                  dirty_count=-1)
            decision = self.policy.decide(pstats)
            if decision != Decision.CONTINUE_PRECOPY:
                break
            clean = await self._clean(p2m_size, final=False, iteration=x)
            dirty_count = int(clean.stats.dirty_count)
            bitmap_pfns = clean.bitmap.pfns()
            pstats = PrecopyStats(iteration=pstats.iteration, total_written=pstats.total_written,
                                  dirty_count=dirty_count)
        if decision == Decision.ABORT:
            raise MigrationAborted("Abort precopy loop (the policy returned XGS_POLICY_ABORT)")

        # suspend_and_send_dirty()
        await self.domain.suspend(self.now)
        self._suspended = True
        res.t_suspend = self.now
        self._phase(Phase.SUSPENDED, "Domain now suspended")
        clean = await self._clean(p2m_size, final=True, iteration=x + 1)
        final_pfns = clean.bitmap.pfns()
        rnd = RoundStats(iteration=x + 1, phase=PassPhase.FINAL, start_s=self.now,
                         dirty_count=int(clean.stats.dirty_count))
        self._phase(Phase.FINAL)
        if pending is None:
            await self._send_all(rnd, p2m_size)
        else:
            if pending.size:
                final_pfns = np.union1d(pending, final_pfns)
            await self._send_pfns(rnd, final_pfns)

        if opts.verify:
            # verify_frames(): VERIFY record, send_all_pages again, PEEK for the stats.
            self._phase(Phase.VERIFY)
            self.writer.write_verify()
            rnd = RoundStats(iteration=x + 2, phase=PassPhase.VERIFY, start_s=self.now, dirty_count=p2m_size)
            await self._send_all(rnd, p2m_size)
            peek = await self._clean(p2m_size, final=False, iteration=x + 2, peek=True)
            res.final_stats = {"verify_dirty_count": int(peek.stats.dirty_count),
                               "verify_fault_count": int(peek.stats.fault_count)}

        # end_of_checkpoint() for HVM, then END; cleanup() turns log-dirty off.
        before = self.writer.bytes_written
        self.writer.write_end_of_checkpoint()
        self.writer.write_end()
        self.now += self.link.transfer_time(self.writer.bytes_written - before)
        await self.domain.shadow_op(self.now, ShadowOp.OFF)
        self._logdirty_on = False
        res.t_last_byte = self.now + self.link.latency
        close = getattr(self.writer, "close", None)
        if close is not None:
            close()
        self._phase(Phase.DONE, "End of stream")
