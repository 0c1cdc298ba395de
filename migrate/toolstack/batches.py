"""One pass of the live save: the batches ``xg_sr_save.c`` writes.

Mirrors ``send_dirty_pages`` (the PFNs a CLEAN returned, in order, in batches of at
most MAX_BATCH_SIZE = 1024), ``send_all_pages`` (every PFN below ``p2m_size``) and
``write_batch`` (one getpageframeinfo3, one foreign map of the data-carrying PFNs, one
PAGE_DATA record). ``save.PrecopyEngine`` decides which pass runs when; a
``PassSender`` runs it, charging every call's virtual time to the ``SaveContext`` both
share (Xen hands ``struct xc_sr_context`` to every function of the save).

Two ways through a pass, one result (``SaveEngine``): ``reference`` is the saver's own
loop, one step per batch; ``span`` asks the domain for a whole run of batches at once
(``DomainControl.serve_span``; see ``hypervisor/span.py``) and handles it in three
steps, check (the domain's answer is what the link model and the stream rules say it
must be), account (the PAGE_DATA records in one write, the pass's counts) and publish
(BatchSent events, counter samples), with a byte-identical stream and report.

Where the P2M has never held an entry, ``send_all_pages`` walks the hole without any
call: every batch there is all XTAB, accounted in bulk.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import numpy as np

from hypervisor.abi import MAX_BATCH_SIZE, PFINFO_HAS_DATA, PFINFO_KNOWN, PFINFO_LTAB_SHIFT, PFInfo, batch_counts
from hypervisor.tables import batch_totals, lookup

from migrate.errors import MigrationAborted, MigrationFailed
from migrate.events import BatchSent, CountersSampled, EventBus, PassEnded, PassStarted, RoundStats
from migrate.stream import StreamWriter
from migrate.toolstack.control import SPAN_FIRST, DomainControl, PassPlan, SpanAt, Stretch, next_span_ask, span_cap
from migrate.toolstack.link import LinkModel, page_data_record_bytes

_EMPTY_PFNS = np.empty(0, dtype=np.int64)
_EMPTY_NIBBLES = np.empty(0, dtype=np.uint8)
#: Sample the hypervisor's counters every this many batches (and at every pass end).
COUNTER_SAMPLE_BATCHES = 32


class SaveEngine(StrEnum):
    """How a pass's batches are driven: ``span`` (runs of batches in one step, the
    default) or ``reference`` (one step per batch, the saver's loop as Xen writes it)."""

    SPAN = "span"
    REFERENCE = "reference"


class Pacer(Protocol):
    """Paces virtual time against wall time for a live view (``ui.playback``)."""

    async def pace(self, virtual_t: float) -> None: ...

    def per_batch(self) -> bool:
        """Whether the view wants the save batch by batch now (a pace to keep, a pause,
        a recording): else spans run as long as the engine allows, as with no pacer."""


@dataclass(slots=True, eq=False)
class SaveContext:
    """What every stage of one save shares, as ``struct xc_sr_context`` in Xen: the
    domain, the stream, the link, the event bus, the virtual clock, ``p2m_size`` once
    setup fixed it, and the passes done so far."""

    domain: DomainControl
    writer: StreamWriter
    link: LinkModel
    bus: EventBus
    now: float
    t_start: float
    deadline: float | None = None        # abandon the save when it runs longer (virtual s)
    pacer: Pacer | None = None
    p2m_size: int = 0
    rounds: list[RoundStats] = field(default_factory=list)

    def check_deadline(self) -> None:
        limit = self.deadline
        if limit is not None and self.now - self.t_start > limit:
            raise MigrationAborted(f"deadline of {limit:g} s exceeded at t={self.now:.3f} s "
                                   "(migration.deadline): the save was abandoned")

    async def sample_counters(self) -> None:
        counters = await self.domain.counters(self.now)
        self.bus.publish(CountersSampled(t=self.now, counters=counters))

    async def pause_point(self) -> None:
        """Between batches: pace virtual time against wall time, and always let the
        event loop run (Ctrl-C, the app, an MQTT client's keep-alives)."""
        if self.pacer is not None:
            await self.pacer.pace(self.now)
        await asyncio.sleep(0)

    def live_view(self) -> bool:
        """Batch by batch (one BatchSent each, spans ending at sampling points) for a
        pacer that wants it now; a flat-out view gets what an unpaced run gets."""
        if self.pacer is None:
            return False
        per_batch = getattr(self.pacer, "per_batch", None)     # a pacer that does not say wants it
        return per_batch is None or bool(per_batch())


#: Most batches of PAGE_DATA expanded to bytes between two turns of the event loop
#: (256 MiB of pages, a few tenths of a second).
EXPAND_BATCHES = 64

@dataclass(frozen=True, slots=True)
class CheckedSpan:
    """A run of batches the domain served, checked: its PFNs and type nibbles, the
    PFNs per batch and data pages per batch, the mapped pages' tokens, when each batch
    ended (``times[0]`` is the span's start) and each PAGE_DATA record's size."""

    pfns: np.ndarray
    nibbles: np.ndarray
    counts: np.ndarray
    data: np.ndarray
    tokens: np.ndarray
    times: np.ndarray
    record_bytes: np.ndarray


def send_all_walk(runs: np.ndarray, p2m_size: int) -> list:
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


class PassSender:
    """Runs the passes of one save. ``current`` is the pass in flight, replaced by a new
    ``RoundStats`` whenever its counts change; a finished pass goes to ``ctx.rounds``
    before anything else runs, so a balloon op between two passes finds it there."""

    #: PFNs of a hole accounted per step (4096 batches).
    HOLE_STEP = MAX_BATCH_SIZE * 4096

    def __init__(self, ctx: SaveContext, *, engine: SaveEngine = SaveEngine.SPAN,
                 tolerate_vanished: bool = False):
        self.ctx = ctx
        self.spans = SaveEngine(engine) is SaveEngine.SPAN
        self.tolerate_vanished = tolerate_vanished
        self.current: RoundStats | None = None
        self._plan: PassPlan | None = None
        #: Batches the next span asks for (grows while spans are served whole).
        self._span_ask = SPAN_FIRST

    # ------------------------------------------------------------------ the passes

    async def send_dirty_pages(self, rnd: RoundStats, pfns: np.ndarray) -> RoundStats:
        """send_dirty_pages(): walk the bitmap's PFNs in order, batch by 1024."""
        self._started(rnd, int(pfns.size), pfns)
        stretch = Stretch(pfns=pfns)
        await self._begin_pass((stretch,))
        await self._walk(stretch, int(pfns.size))
        return await self._ended()

    async def send_all_pages(self, rnd: RoundStats) -> RoundStats:
        """send_all_pages(): every PFN below p2m_size, in batches [k*1024, (k+1)*1024).

        Where the P2M has never held an entry (whole 1024-GFN blocks of the model's
        P2M, ``mapped_runs``) every batch is all XTAB: those batches are accounted in bulk, with
        the same records, bytes and virtual time Xen's saver spends on them, but no
        per-batch calls, so memory and time follow what is populated, not p2m_size.
        After each bulk span the sender checks that the span is still unmapped; a GFN
        added there meanwhile (not something the guest model does) is sent right away
        instead of at its exact batch time."""
        ctx = self.ctx
        p2m_size = ctx.p2m_size
        self._started(rnd, p2m_size, None)
        runs = np.asarray(await ctx.domain.mapped_runs(ctx.now, 0, p2m_size), dtype=np.int64).reshape(-1, 2)
        walk = send_all_walk(runs, p2m_size)
        await self._begin_pass(tuple(part for part in walk if isinstance(part, Stretch)))
        for part in walk:
            if isinstance(part, Stretch):
                await self._walk(part, p2m_size)
            else:
                await self._walk_hole(part[0], part[1], p2m_size)
        return await self._ended()

    def cut_short(self) -> None:
        """The save failed mid-pass: the pass still sent what it sent, so it is kept."""
        if self.current is not None:
            cut = self._finish()
            self.ctx.bus.publish(PassEnded(t=self.ctx.now, stats=cut))

    def _started(self, rnd: RoundStats, entries: int, pfns: np.ndarray | None) -> None:
        self.current = rnd
        self.ctx.bus.publish(PassStarted(t=self.ctx.now, iteration=rnd.iteration, phase=rnd.phase,
                                         entries=entries, dirty_count=rnd.dirty_count, pfns=pfns))

    def _finish(self) -> RoundStats:
        done = dataclasses.replace(self.current, end_s=self.ctx.now)
        self.current = None
        self.ctx.rounds.append(done)
        return done

    async def _ended(self) -> RoundStats:
        done = self._finish()
        self.ctx.bus.publish(PassEnded(t=self.ctx.now, stats=done))
        await self.ctx.sample_counters()
        # Balloon ops the sample let through count in this pass (ctx.rounds[-1]).
        return self.ctx.rounds[-1]

    async def _begin_pass(self, stretches: tuple[Stretch, ...]) -> None:
        """State the pass's batches to the domain before the first one."""
        ctx = self.ctx
        deadline = None if ctx.deadline is None else (ctx.t_start, ctx.deadline)
        self._plan = PassPlan(self.current.iteration, stretches, ctx.link, deadline, span_cap(ctx.p2m_size))
        await ctx.domain.begin_pass(ctx.now, self._plan)

    # ------------------------------------------------------------------ one batch

    async def _write_batch(self, pfns: np.ndarray) -> tuple[int, np.ndarray]:
        """write_batch(): type query, map the data PFNs, emit one PAGE_DATA record."""
        ctx = self.ctx
        t_query = ctx.now
        types = await ctx.domain.getpageframeinfo3(t_query, pfns)
        nibbles = (np.asarray(types, dtype=np.uint32) >> PFINFO_LTAB_SHIFT).astype(np.uint8)
        if not PFINFO_KNOWN[nibbles].all():
            bad = int(pfns[~PFINFO_KNOWN[nibbles]][0])
            raise MigrationFailed(f"Unknown page type for pfn {bad:#x}", pfn=bad)
        ctx.now = ctx.link.map_time(t_query)
        data = PFINFO_HAS_DATA[nibbles]
        data_pfns = pfns[data]
        tokens = np.empty(0, dtype=np.uint64)
        if data_pfns.size:
            # write_batch() maps only when the batch has data pages.
            tokens, err = await ctx.domain.map_foreign(ctx.now, data_pfns)
            ctx.now = ctx.link.map_done(ctx.now)
            err = np.asarray(err)
            if err.any():
                bad = np.flatnonzero(err)
                if not self.tolerate_vanished:
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
        before = ctx.writer.bytes_written
        ctx.writer.write_page_data(pfns, nibbles, np.asarray(tokens, dtype=np.uint64))
        nbytes = ctx.writer.bytes_written - before
        ctx.now = ctx.link.next_batch_time(t_query, nbytes, int(data.sum()), mapped=data_pfns.size > 0)
        self.current = self.current.added(
            pages_sent=int(data.sum()), xtab_sent=int((nibbles == PFInfo.XTAB).sum()),
            broken_sent=int((nibbles == PFInfo.BROKEN).sum()), bytes=nbytes, batches=1,
            pfns_walked=int(pfns.size))
        return nbytes, nibbles

    async def _batch(self, batch: np.ndarray, entries: int) -> None:
        nbytes, nibbles = await self._write_batch(batch)
        ctx, rnd = self.ctx, self.current
        ctx.bus.publish(BatchSent(t=ctx.now, iteration=rnd.iteration, pfns=batch, nibbles=nibbles,
                                  walked=rnd.pfns_walked, entries=entries, bytes=nbytes))
        ctx.check_deadline()
        if rnd.batches % COUNTER_SAMPLE_BATCHES == 0:
            await ctx.sample_counters()
        await ctx.pause_point()

    # ------------------------------------------------------------------ runs of batches

    async def _walk(self, stretch: Stretch, entries: int) -> None:
        ctx = self.ctx
        n = len(stretch)
        k = 0
        while k < n:
            live_view = ctx.live_view()          # asked per span: the speed can change
            cap = COUNTER_SAMPLE_BATCHES if live_view else self._plan.span_max
            if self.spans:
                ask = min(n - k, self._span_ask, cap)
                if live_view:
                    # A live view: spans end where the counters are sampled, so each
                    # sample is the domain as it was after that batch (as per batch).
                    ask = min(ask, COUNTER_SAMPLE_BATCHES - self.current.batches % COUNTER_SAMPLE_BATCHES)
                pfns = stretch.batches(k, ask)
                # With a pacer spans end at sampling points, not as next_span_ask says.
                at = None if live_view else SpanAt(stretch, k)
                served = await ctx.domain.serve_span(ctx.now, pfns, self._plan, at)
                self._span_ask = next_span_ask(ask, served.batches, self._plan.span_max)
                if served.batches:
                    span = self._check_span(pfns, served)
                    before = self.current
                    await self._account_span(span)
                    await self._publish_span(span, before, entries, live_view)
                    k += served.batches
                    continue
            await self._batch(stretch.batch(k), entries)
            k += 1

    def _check_span(self, pfns: np.ndarray, served: Any) -> CheckedSpan:
        """Check a span the domain served against what the saver itself knows: one
        known type per PFN, one mapped page per data PFN, and the batches timed as the
        link model times them."""
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
        dpb = batch_totals(data, MAX_BATCH_SIZE)
        tokens = np.asarray(served.tokens, dtype=np.uint64)
        if tokens.size != int(dpb.sum()):
            raise MigrationFailed(f"the domain mapped {tokens.size} pages for {int(dpb.sum())} data PFNs")
        times = self.ctx.link.span_times(self.ctx.now, counts, dpb)
        if not np.array_equal(times, np.asarray(served.times, dtype=np.float64)):
            raise MigrationFailed("the domain timed a span of batches differently from the link model")
        return CheckedSpan(pfns=pfns, nibbles=nib, counts=counts, data=dpb, tokens=tokens, times=times,
                           record_bytes=page_data_record_bytes(counts, dpb))

    async def _account_span(self, span: CheckedSpan) -> None:
        """The span's PAGE_DATA records, and the pass's counts. Written in one call,
        unless every page is expanded to bytes here (a stream to a file or a socket):
        then at most EXPAND_BATCHES batches between two turns of the event loop, so a
        long span does not hold heartbeats, Ctrl-C and the screen for seconds (the
        same records either way: each batch is its own PAGE_DATA record)."""
        writer = self.ctx.writer
        nb = span.counts.size
        if not writer.expands_pages or nb <= EXPAND_BATCHES:
            written = writer.write_page_data(span.pfns, span.nibbles, span.tokens)
        else:
            written = 0
            tok = np.concatenate(([0], np.cumsum(span.data)))
            for b in range(0, nb, EXPAND_BATCHES):
                e = min(b + EXPAND_BATCHES, nb)
                p0, p1 = b * MAX_BATCH_SIZE, min(e * MAX_BATCH_SIZE, span.pfns.size)
                written += writer.write_page_data(span.pfns[p0:p1], span.nibbles[p0:p1],
                                                  span.tokens[int(tok[b]):int(tok[e])])
                await asyncio.sleep(0)
        if written != int(span.record_bytes.sum()):
            raise MigrationFailed(f"a span's PAGE_DATA records took {written} bytes, "
                                  f"not {int(span.record_bytes.sum())}")
        pages = int(span.data.sum())
        xtab = broken = 0
        if pages < span.pfns.size:               # (every PFN a data page: neither)
            xtab = int(np.count_nonzero(span.nibbles == PFInfo.XTAB))
            broken = int(np.count_nonzero(span.nibbles == PFInfo.BROKEN))
        self.current = self.current.added(pages_sent=pages, xtab_sent=xtab, broken_sent=broken, bytes=written,
                                          batches=span.counts.size, pfns_walked=span.pfns.size)

    async def _publish_span(self, span: CheckedSpan, before: RoundStats, entries: int, live_view: bool) -> None:
        """BatchSent events for a span (one per batch for a live view; else
        one per run of at most COUNTER_SAMPLE_BATCHES batches), the clock moved batch by
        batch, and the hypervisor's counters sampled at the span's end when it crossed
        a sampling point (with a pacer spans end at those points)."""
        ctx = self.ctx
        nb = span.counts.size
        b0, walked0 = before.batches, before.pfns_walked
        idx = np.arange(1, nb + 1)
        if not live_view:
            ends = idx[((b0 + idx) % COUNTER_SAMPLE_BATCHES == 0) | (idx == nb)].tolist()
        else:
            ends = idx.tolist()
        ends_p = np.cumsum(span.counts)
        starts = ends_p - span.counts
        cum_bytes = np.cumsum(span.record_bytes)
        times = span.times
        i0 = 0
        for i1 in ends:
            a = int(starts[i0])
            b = int(ends_p[i1 - 1])
            ctx.now = float(times[i1])
            chunk_bytes = int(cum_bytes[i1 - 1] - (cum_bytes[i0 - 1] if i0 else 0))
            ctx.bus.publish(BatchSent(t=ctx.now, iteration=before.iteration, pfns=span.pfns[a:b],
                                      nibbles=span.nibbles[a:b], walked=walked0 + b, entries=entries,
                                      bytes=chunk_bytes,
                                      ends=times[i0 + 1:i1 + 1].copy() if i1 - i0 > 1 else None))
            if i1 == nb:
                ctx.check_deadline()
                if (b0 + nb) // COUNTER_SAMPLE_BATCHES > b0 // COUNTER_SAMPLE_BATCHES:
                    # The domain is at the span's end: sampled there, not mid-span.
                    await ctx.sample_counters()
            await ctx.pause_point()
            i0 = i1

    async def _walk_hole(self, lo: int, hi: int, entries: int) -> None:
        ctx = self.ctx
        per_batch = ctx.link.hypercall_overhead + ctx.link.batch_overhead
        # At most ~64 steps per hole, each a multiple of the batch size.
        step = max(self.HOLE_STEP, -(-(hi - lo) // (64 * MAX_BATCH_SIZE)) * MAX_BATCH_SIZE)
        for a in range(lo, hi, step):
            b = min(a + step, hi)
            nbytes = ctx.writer.write_xtab_run(a, b)
            nbatches = -(-(b - a) // MAX_BATCH_SIZE)
            ctx.now += nbatches * per_batch + ctx.link.transfer_time(nbytes)
            self.current = self.current.added(xtab_sent=b - a, pfns_walked=b - a, bytes=nbytes, batches=nbatches)
            ctx.bus.publish(BatchSent(t=ctx.now, iteration=self.current.iteration, pfns=_EMPTY_PFNS,
                                      nibbles=_EMPTY_NIBBLES, walked=self.current.pfns_walked, entries=entries,
                                      bytes=nbytes, hole=(a, b)))
            ctx.check_deadline()
            late = np.asarray(await ctx.domain.mapped_runs(ctx.now, a, b), dtype=np.int64).reshape(-1, 2)
            for c, d in late.tolist():
                await self._batch(np.arange(c, d, dtype=np.int64), entries)
            await ctx.sample_counters()
            await ctx.pause_point()
