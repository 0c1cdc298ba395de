"""Checkpointed streams: Remus replication after the live migration, and failover.

Mirrors the checkpointed half of ``tools/libs/guest/xg_sr_save.c``'s ``save()``: with a
``stream_type`` other than PLAIN the loop of ``save()`` does not end after the live
phase. ``end_of_checkpoint`` writes the tail records (X86_TSC_INFO, HVM_CONTEXT,
HVM_PARAMS), ``write_checkpoint_record`` an empty CHECKPOINT, the ``postcopy`` callback
resumes the primary, and the ``checkpoint`` callback (libxl's ``libxl_remus.c``:
``remus_devices_commit_cb`` arms a timer of the Remus interval once the backup has
committed) waits; then ``send_domain_memory_checkpointed`` is ``suspend_and_send_dirty``
again: suspend, CLEAN with FINAL, send what was dirtied, and round again. The first
CHECKPOINT closes the live migration (checkpoint 0).

The backup (``restore.Restorer`` with ``checkpointed=True``) applies the live phase as
it comes, then holds every record until the next CHECKPOINT and applies them together
(``xg_sr_restore.c``: ``buffer_all_records``, ``handle_checkpoint``): it is consistent
at each checkpoint. When the primary fails (``failover`` at time T) the backup takes
over from the last checkpoint it committed; records of a checkpoint still in flight
are dropped (``remus_failover``). The primary's memory at that checkpoint is the one
the backup must hold, so each commit is checked while the primary is still paused
(``on_commit``), and the failover's verify is the last committed one's.

Modelled: the REMUS stream type (the libxc stream; the libxl wrapper's CHECKPOINT_END
and the device-model records are not written). Not modelled: COLO (the secondary runs
too and sends CHECKPOINT_DIRTY_PFN_LIST back, ``colo_merge_secondary_dirty_bitmap``),
Remus's network and disk buffering, and the heartbeat that detects the failure: the
failover time is given. Where the primary's stream would break off at the failure,
xmig closes it with END, which the backup treats alike (END while records are held
also leaves the backup at its last checkpoint), so the file is a whole v2 stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import numpy as np

from migrate.errors import MigrationAborted, MigrationFailed
from migrate.events import PassPhase, Phase, RoundStats, VerifyStats
from migrate.stream.format import RecType
from migrate.stream.records import Record

#: Checks the backup against the paused primary at a commit (the runner's whole-domain
#: verify at virtual time ``t``).
CommitCheck = Callable[[float], Awaitable[VerifyStats]]


@dataclass(frozen=True, slots=True)
class CheckpointOptions:
    """``interval``: the Remus checkpoint interval (virtual seconds from one commit to
    the next suspend); ``failover``: when the primary fails and the backup takes over."""

    interval: float
    failover: float


@dataclass(frozen=True, slots=True)
class Commit:
    """One checkpoint the backup committed: when the primary was suspended for it, when
    its CHECKPOINT reached the backup, what its pass sent, and the backup's verify
    against the paused primary then."""

    number: int
    t_suspend: float
    t_commit: float
    dirty_count: int
    pages_sent: int
    bytes: int
    verify: VerifyStats | None = None

    def as_dict(self) -> dict[str, Any]:
        v = self.verify
        return {"number": self.number, "suspend_s": round(self.t_suspend, 9), "commit_s": round(self.t_commit, 9),
                "dirty_count": self.dirty_count, "pages_sent": self.pages_sent, "bytes": self.bytes,
                "missing": None if v is None else v.missing_pages, "stale": None if v is None else v.stale_pages,
                "extra": None if v is None else v.extra_pages}


@dataclass(slots=True)
class Replication:
    """What the replication did, for the report: every commit, the failover."""

    options: CheckpointOptions
    commits: list[Commit] = field(default_factory=list)
    in_flight: int | None = None        # a checkpoint under way at the failover (dropped)

    @property
    def last(self) -> Commit | None:
        return self.commits[-1] if self.commits else None

    def as_dict(self) -> dict[str, Any]:
        last = self.last
        return {"stream_type": "remus", "interval_s": self.options.interval,
                "failover_s": self.options.failover, "checkpoints": len(self.commits),
                "failover_from": None if last is None else last.number,
                "failover_checkpoint_s": None if last is None else round(last.t_suspend, 9),
                "in_flight_dropped": self.in_flight,
                "commits": [c.as_dict() for c in self.commits]}


class Remus:
    """The checkpoint loop of ``save()`` for a REMUS stream, run by the engine (a
    ``save.PrecopyEngine``, whose stages it shares) once ``send_domain_memory_live``
    has sent the final pass (the primary is suspended)."""

    def __init__(self, engine: Any, options: CheckpointOptions, on_commit: CommitCheck | None = None):
        self.engine = engine
        self.options = options
        self.on_commit = on_commit
        self.state = Replication(options)
        self._note()

    def _note(self) -> None:
        """The save's final stats carry the replication (so does the run's summary, and a
        recorded event log rebuilds the report's ``checkpoint`` from it)."""
        self.engine.result.final_stats["checkpoint"] = self.state.as_dict()

    async def run(self) -> Replication:
        e, opts = self.engine, self.options
        ctx = e.ctx
        number, t_suspend = 0, float(e.result.t_suspend or ctx.now)
        rnd = ctx.rounds[-1] if ctx.rounds else None
        while True:
            commit = await self._commit(number, t_suspend, rnd)
            if commit is None:
                break
            # postcopy: the primary runs on; the checkpoint callback waits the interval.
            await ctx.domain.resume(ctx.now)
            e._suspended = False
            next_at = commit.t_commit + opts.interval
            if next_at >= opts.failover:
                break
            ctx.now = next_at
            number += 1
            t_suspend = ctx.now
            try:
                rnd = await self._send_domain_memory_checkpointed(number)
            except MigrationAborted:
                # The primary failed mid-pass: what it sent of this checkpoint is held
                # by the backup and dropped.
                e.sender.cut_short()
                self.state.in_flight = number
                self._note()
                break
        if not self.state.commits:
            raise MigrationFailed(
                f"failover at {opts.failover:g} s came before the first checkpoint was committed: the "
                "backup has no consistent state (xg_sr_restore.c handle_checkpoint)")
        ctx.now = max(ctx.now, opts.failover)
        last = self.state.last
        e._phase(Phase.FAILOVER, f"primary failed at t={opts.failover:.3f} s: the backup takes over from "
                                 f"checkpoint {last.number} (t={last.t_suspend:.3f} s)")
        return self.state

    async def _commit(self, number: int, t_suspend: float, rnd: RoundStats | None) -> Commit | None:
        """end_of_checkpoint, then the CHECKPOINT record, unless the primary fails before
        the backup has it (then the checkpoint's records are dropped there)."""
        e = self.engine
        ctx, writer = e.ctx, e.writer
        before = writer.bytes_written
        writer.write_end_of_checkpoint(hvm_params=e.options.hvm_params)
        ctx.now += ctx.link.transfer_time(writer.bytes_written - before)
        arrives = ctx.now + ctx.link.transfer_time(8) + ctx.link.latency
        if arrives > self.options.failover:
            self.state.in_flight = number
            self._note()
            return None
        writer.write_checkpoint()
        ctx.now += ctx.link.transfer_time(8)
        if number == 0:
            e.result.t_last_byte = ctx.now + ctx.link.latency
        verify = await self.on_commit(ctx.now) if self.on_commit is not None else None
        commit = Commit(number=number, t_suspend=t_suspend, t_commit=ctx.now + ctx.link.latency,
                        dirty_count=0 if rnd is None else int(rnd.dirty_count),
                        pages_sent=0 if rnd is None else int(rnd.pages_sent),
                        bytes=writer.bytes_written - before + (0 if rnd is None else int(rnd.bytes)),
                        verify=verify)
        self.state.commits.append(commit)
        self._note()
        bad = "" if verify is None else (f": backup missing {verify.missing_pages}, stale {verify.stale_pages}"
                                         if not verify.ok else ": backup consistent")
        e._phase(Phase.CHECKPOINT, f"checkpoint {number} committed at t={commit.t_commit:.3f} s{bad}")
        return commit

    async def _send_domain_memory_checkpointed(self, number: int) -> RoundStats:
        """send_domain_memory_checkpointed() is suspend_and_send_dirty(): suspend, CLEAN
        with FINAL, send what it returned while the primary is paused."""
        e = self.engine
        ctx = e.ctx
        await ctx.domain.suspend(ctx.now)
        e._suspended = True
        iteration = (ctx.rounds[-1].iteration if ctx.rounds else 0) + 1
        clean = await e._read_dirty_bitmap(iteration, final=True)
        rnd = RoundStats(iteration=iteration, phase=PassPhase.CHECKPOINT, start_s=ctx.now,
                         dirty_count=int(clean.stats.dirty_count))
        # The pass stops where the primary fails (the saver's deadline check, at the
        # failover time; a scenario's own deadline is refused with checkpointing).
        ctx.deadline = self.options.failover - ctx.t_start
        try:
            return await e.sender.send_dirty_pages(rnd, clean.bitmap.pfns())
        finally:
            ctx.deadline = None


class HeldRecords:
    """The backup's side: ``buffer_all_records`` (xg_sr_restore.c). Past the first
    CHECKPOINT the restorer holds each call that would apply records, with its own
    copies of the arrays it was handed, until the next CHECKPOINT ``replay``s them;
    ``records`` counts those held (dropped if the stream ends first)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., None], tuple, dict]] = []
        self.records = 0

    def hold(self, fn: Callable[..., None], args: tuple, kw: dict | None = None, *, records: int = 1) -> None:
        self.calls.append((fn, tuple(_own(a) for a in args), {**(kw or {}), "records": records}))
        self.records += int(records)

    def replay(self) -> None:
        for fn, args, kw in self.calls:
            fn(*args, **kw)
        self.calls, self.records = [], 0


def _own(a: Any) -> Any:
    """A copy of an array (or of a PAGE_DATA record's arrays) a caller may reuse."""
    if isinstance(a, np.ndarray):
        return a.copy()
    if isinstance(a, Record) and a.pfns is not None:
        return Record(a.type, body=a.body, pfns=np.array(a.pfns), nibbles=np.array(a.nibbles),
                      tokens=np.array(a.tokens), length=a.length, index=a.index, offset=a.offset,
                      corrupt_pfns=a.corrupt_pfns)
    return a


class CheckpointedRestore:
    """The checkpointed half of ``restore.Restorer`` (xg_sr_restore.c): its
    ``handle_checkpoint`` and ``remus_failover``, over the restorer's ``_held``."""

    _held: HeldRecords | None

    def _hold(self, fn: Callable[..., None], args: tuple, kw: dict | None = None, *, records: int = 1) -> bool:
        """Past the first CHECKPOINT, hold this call until the next one (True)."""
        if self._held is None:
            return False
        self._held.hold(fn, args, kw, records=records)
        return True

    def _apply(self, rec: Record, *, from_stream: bool, records: int = 1) -> None:
        """The restorer's ``_apply_now``, or held; END and CHECKPOINT are never held."""
        if rec.type in (RecType.END, RecType.CHECKPOINT) or \
                not self._hold(self._apply_now, (rec,), {"from_stream": from_stream}, records=records):
            self._apply_now(rec, from_stream=from_stream, records=records)

    def _drop_held(self) -> None:
        """The stream ended after the last CHECKPOINT: what it carried since is dropped."""
        if self._held is not None:
            self.result.records_discarded += self._held.records
        self._held = None

    def _checkpoint(self) -> None:
        """handle_checkpoint: apply what was held since the last CHECKPOINT (the first
        only starts holding); the backup is consistent again."""
        held, self._held = self._held, None
        if held is not None:
            held.replay()
        self.flush()
        self._held, self.result.checkpoints = HeldRecords(), self.result.checkpoints + 1

    def _fail_over(self) -> None:
        """The input ended without END past the first CHECKPOINT: the backup takes over
        from its last checkpoint (``remus_failover``), a complete restore."""
        if not self._failed and not self._done and self._held is not None:
            self._drop_held()
            self._done = self.result.complete = True
