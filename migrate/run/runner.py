"""Wire the actors together for one migration, in one process.

What ``xl migrate`` does around libxenguest (tools/xl/xl_migrate.c and
libxl_stream_write.c), in miniature: build the source domain from the scenario and
let the guest run until the migration starts; create an empty destination domain;
run the precopy engine into the stream; the destination restores from the stream as
it arrives; on success the destination resumes and the source stays suspended (and
would be destroyed); on failure the source resumes. Then the destination is compared
with the source as it stood at suspend.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from hypervisor.abi import DomainLayout, behaviour_label, site_behaviours
from hypervisor.domain import Hypervisor
from guest.layout import special_pages

from migrate.toolstack.control import LocalSource, SourceSide
from migrate.toolstack.checkpoint import CheckpointOptions
from migrate.toolstack.save import PrecopyEngine, SaveOptions, SaveResult
from migrate.events import (EventBus, MigrationFinished, Outcome, PageFate, RunStarted, RunSummary, TrackedFinal,
                            VerifyDone, VerifyStats)
from migrate.heap import keep_freed_arrays
from migrate.toolstack.link import LinkModel
from migrate.toolstack.policy import make_policy
from migrate.toolstack.restore import Restorer
from migrate.run.scenario import Scenario
from migrate.stream import CallbackSink, FileSink, RecordSink, Sink, StreamError, TcpSink, TeeSink
from migrate.events.track import PageLedger
from migrate.toolstack.verify import VerifyAccumulator, snapshot_digest


@dataclass(slots=True)
class RunOptions:
    """Command-line overrides of the scenario's migration and link settings."""

    behaviour: str | None = None
    policy: str | None = None
    policy_params: dict[str, Any] | None = None
    bandwidth: float | None = None
    stream: str | None = None        # a file path or tcp://HOST:PORT; None = counted only
    verify: bool | None = None
    seed: int | None = None
    #: User policy functions the user enabled (``--allow-policy``); see policy.allowed_policies.
    allow_policies: frozenset[str] = frozenset()
    track: tuple[int, ...] = ()      # GFNs whose every event is reported (--track)


@dataclass(slots=True)
class RunResult:
    scenario: str
    seed: int
    behaviour: str
    policy: str
    policy_params: dict[str, Any]
    save: SaveResult
    verify: VerifyStats | None = None
    sites: dict[str, str] = field(default_factory=dict)      # behaviour per call site of the fix
    pages: dict[str, Any] = field(default_factory=dict)      # PageLedger's counts
    restore: dict[str, Any] = field(default_factory=dict)
    hypervisor: dict[str, Any] = field(default_factory=dict)
    destination: dict[str, Any] = field(default_factory=dict)
    stream: dict[str, Any] = field(default_factory=dict)
    guest: dict[str, Any] = field(default_factory=dict)
    wall: dict[str, float] = field(default_factory=dict)
    broker: dict[str, Any] | None = None    # over MQTT: messages the run key kept out (transport.mqtt.DROP_REASONS)

    @property
    def ok(self) -> bool:
        return self.save.outcome == Outcome.COMPLETED and self.verify is not None and self.verify.ok


def host_frames_for(scenario: Scenario) -> int:
    """Host memory for the source: the scenario's host_memory if it sets one, else room
    for maxmem plus a little (so a balloon can always deflate back to maxmem)."""
    g = scenario.guest
    if g.host_memory:
        # host_memory is for the guest's RAM; the builder's special pages come on top.
        return int(g.host_memory) // 4096 + special_pages(g.layout.kind)
    return int(g.maxmem) // 4096 + 4096


#: What the emulator spends per guest page, source and destination together: P2M type
#: (1 byte) + content token (8) on each side, MFNs and M2P held as runs, plus the guest's
#: map is about 21 bytes; whole runs measure 26 (16 GiB) and 24 (1 TiB: 6.2 GiB peak)
#: with benchmarks/bench_memory.py and run.py; the rest is room for chunks that stop
#: being runs, the log-dirty bitmap and temporaries.
EMULATOR_BYTES_PER_PAGE = 32


def memory_shortfall(scenario: Scenario) -> str | None:
    """Why this machine cannot simulate the scenario's guest, or None when it can.

    A guest of N pages costs about 32 * N bytes of this machine's memory (1 TiB of
    guest: 8 GiB), so a guest is refused up front when that exceeds the memory the
    kernel reports available, instead of being killed by the OOM killer part-way."""
    need = scenario.guest.maxmem_pages * EMULATOR_BYTES_PER_PAGE
    try:
        with open("/proc/meminfo") as fh:
            avail = next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None             # no way to tell: let the run try
    if need <= avail:
        return None
    from guest.units import format_size

    return (f"a guest this machine can simulate: {format_size(scenario.guest.maxmem)} needs about "
            f"{need / 2**30:.1f} GiB ({EMULATOR_BYTES_PER_PAGE} bytes per 4 KiB page, source and destination) "
            f"and {avail / 2**30:.1f} GiB is available")


VERIFY_SPAN = 1 << 16  # GFNs compared per step (~3 MiB of temporaries for both sides at most)


async def _verify(control, dst: Hypervisor, t: float, p2m_size: int):
    """Compare the destination with the (suspended) source, range by range over the
    GFN runs the source's P2M has ever mapped, so memory stays bounded at any size."""
    acc = VerifyAccumulator()
    src_pages = dst_pages = 0
    top = max(p2m_size, int(dst.max_gpfn()) + 1)
    windows = [(a, min(a + VERIFY_SPAN, hi)) for lo, hi in np.asarray(await control.mapped_runs(t, 0, top)).tolist()
               for a in range(lo, hi, VERIFY_SPAN)]
    # A remote source sends a digest per window first, and its contents only where the
    # digest differs from the destination's (``RemoteDomain.verify_by_digest``). It
    # digests its windows while this side digests the destination's, in a thread (the
    # snapshot reads and the hash release the GIL), so neither waits for the other.
    same: set[int] = set()
    if windows and getattr(control, "verify_by_digest", False):
        remote, local = await asyncio.gather(control.snapshot_digests(t, np.asarray(windows, dtype=np.int64)),
                                             asyncio.to_thread(_window_digests, dst, windows))
        for i, (n, digest) in enumerate(local):
            if bytes(np.asarray(remote[i], dtype=np.uint8)) == digest:
                same.add(i)            # the source's window holds exactly this: nothing to compare
                src_pages += n
                dst_pages += n
    for i, (a, b) in enumerate(windows):
        if i in same:
            continue
        dg, dt = dst.snapshot(a, b)
        sg, st = await control.snapshot(t, a, b)
        acc.add(sg, st, dg, dt)
        src_pages += int(sg.size)
        dst_pages += int(dg.size)
    return acc, {"populated_pages": dst_pages, "source_ram_pages": src_pages}


def _window_digests(dst: Hypervisor, windows: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
    """``(RAM pages, snapshot_digest)`` of each window of the destination."""
    out = []
    for a, b in windows:
        dg, dt = dst.snapshot(a, b)
        out.append((int(dg.size), snapshot_digest(dg, dt)))
    return out


@dataclass(frozen=True, slots=True)
class RunSettings:
    """What one run uses: the scenario's migration and link settings with the command
    line's overrides applied (``run_settings``)."""

    behaviour: Any            # "fixed" / "pre-fix", or a mapping site -> behaviour
    policy: str
    policy_params: dict[str, Any]
    seed: int
    verify: bool
    link: LinkModel


def run_settings(scenario: Scenario, opts: RunOptions) -> RunSettings:
    """The scenario's settings, overridden by ``opts`` where it sets them."""
    mig = scenario.migration
    params = dict(mig.policy_params or {}) if opts.policy is None else dict(opts.policy_params or {})
    link = scenario.link
    bandwidth = float(opts.bandwidth or link.bandwidth)
    model = LinkModel(bandwidth=bandwidth, latency=float(link.latency),
                      batch_overhead=float(link.batch_overhead),
                      hypercall_overhead=float(link.hypercall_overhead),
                      clean_rate=float(link.clean_rate),
                      restore_rate=None if link.restore_rate is None else float(link.restore_rate))
    return RunSettings(behaviour=opts.behaviour or mig.xen_behaviour, policy=opts.policy or mig.policy,
                       policy_params=params, seed=scenario.seed if opts.seed is None else int(opts.seed),
                       verify=mig.verify if opts.verify is None else bool(opts.verify), link=model)


def open_sink(target: str | None, restorer: Restorer) -> Sink:
    """The stream's destination(s): always the in-process restorer, plus a file or a TCP
    peer when asked. With no target nothing is expanded or stored: bytes are counted and
    records handed over structured. A file is restored from its own bytes, so every
    run with ``--stream FILE`` also proves the file parses."""
    if target is None:
        return RecordSink(restorer.apply, restorer.skip_xtab_run, restorer.apply_page_data_run)
    if target.startswith("tcp://"):
        host, sep, port = target[len("tcp://"):].rpartition(":")
        if not sep or not host or not port.isdigit():
            raise StreamError(f"bad stream target {target!r}: expected tcp://HOST:PORT")
        return TeeSink(TcpSink(host, int(port)),
                       RecordSink(restorer.apply, restorer.skip_xtab_run, restorer.apply_page_data_run))
    return TeeSink(FileSink(target, hash=True), CallbackSink(restorer.feed, copy=False))


SourceFactory = Callable[..., SourceSide]


async def run_scenario(scenario: Scenario, opts: RunOptions | None = None, *,
                       bus: EventBus | None = None, pacer=None,
                       source_factory: SourceFactory | None = None) -> RunResult:
    """Run one migration of ``scenario`` end to end and return everything measured.

    ``source_factory(scenario, behaviour=, seed=, bus=, host_frames=)`` gives the source
    side; the default keeps the hypervisor and the guest in this process.
    """
    keep_freed_arrays()
    opts = opts or RunOptions()
    bus = bus or EventBus()
    wall0 = time.perf_counter()
    settings = run_settings(scenario, opts)
    frames = host_frames_for(scenario)
    source = (source_factory or LocalSource)(scenario, behaviour=settings.behaviour, seed=settings.seed, bus=bus,
                                             host_frames=frames)
    if opts.track and not hasattr(source, "track"):
        raise ValueError("--track needs the hypervisor in this process (not over a broker)")
    try:
        return await _run(scenario, opts, settings, bus, pacer, source, frames, wall0)
    finally:
        await source.close()


async def _run(scenario, opts, settings: RunSettings, bus, pacer, source, frames, wall0) -> RunResult:
    behaviour, seed = settings.behaviour, settings.seed
    start = float(scenario.migration.start)
    info = await source.setup(start)
    tracked = tuple(sorted({int(g) for g in opts.track}))
    if tracked:
        source.track(np.array(tracked, dtype=np.int64))
    policy = make_policy(settings.policy, settings.policy_params, p2m_size=info.p2m_size, allowed=opts.allow_policies)
    sites = site_behaviours(behaviour)
    ledger = PageLedger()
    bus.subscribe(ledger)
    bus.publish(RunStarted(t=start, scenario=scenario.name, seed=seed, behaviour=behaviour_label(sites),
                           policy=policy.name, policy_params=policy.params(),
                           guest_pages=info.guest_pages, populated=info.populated,
                           ballooned=info.ballooned, sites=dict(sites), tracked=tracked,
                           special=info.special))

    # Destination: an empty domain that the restorer populates from the stream.
    dst = Hypervisor(host_frames=frames, behaviour=behaviour, record_events=False)
    dst.build(DomainLayout(ram_gfns=np.empty(0, dtype=np.int64)))
    mig = scenario.migration
    ckpt = mig.checkpoint
    restorer = Restorer(dst, checkpointed=ckpt is not None)
    sink = open_sink(opts.stream, restorer)
    options = SaveOptions(verify=settings.verify, tolerate_vanished=mig.tolerate_vanished,
                          stats_overflow=mig.stats_overflow, deadline=mig.deadline,
                          switchover=mig.switchover, engine=mig.engine,
                          checkpoint=None if ckpt is None else CheckpointOptions(float(ckpt.interval),
                                                                                 float(ckpt.failover)),
                          hvm_params=tuple(tuple(p) for p in info.hvm_params) or None)
    at_commit: dict[str, Any] = {}

    async def on_commit(t: float) -> VerifyStats:
        """A checkpoint committed: the backup against the paused primary."""
        at_commit["checked"], at_commit["counts"] = await _verify(source.control, dst, t, engine.result.p2m_size)
        return at_commit["checked"].result()

    engine = PrecopyEngine(source.control, sink, settings.link, policy, bus, start=start, pacer=pacer,
                           options=options, on_commit=on_commit)
    save = await engine.run()
    writer = engine.writer

    result = RunResult(scenario=scenario.name, seed=seed, behaviour=behaviour_label(sites), policy=policy.name,
                       policy_params=policy.params(), save=save, sites=dict(sites))
    result.hypervisor = await source.control.counters(save.t_end)
    restored = restorer.finish() if save.outcome is Outcome.COMPLETED else restorer.result
    result.restore = restored.as_dict()
    result.stream = {"target": opts.stream, "bytes": int(writer.bytes_written),
                     "records": {k.name: int(v) for k, v in sorted(writer.records_written.items())}}
    digest = getattr(sink, "sha256", None)
    if digest:
        result.stream["sha256"] = digest
    if save.outcome is Outcome.COMPLETED:
        if ckpt is not None:
            # The backup took over at the failover: it holds the last committed checkpoint.
            checked, counts = at_commit["checked"], at_commit["counts"]
        else:
            # The source is still suspended, so its memory is what it was at suspend.
            checked, counts = await _verify(source.control, dst, save.t_end, save.p2m_size)
        result.verify = checked.result()
        bus.publish(VerifyDone(t=save.t_end, stats=result.verify))
        sets = checked.sets(save.t_end)      # which GFNs, for explain (only when any)
        if sets is not None:
            bus.publish(sets)
        result.destination = counts
        if tracked and ckpt is None:
            bus.publish(TrackedFinal(t=save.t_end, gfns=np.array(tracked, dtype=np.int64),
                                     states=await _final_states(source.control, dst, save.t_end, tracked)))
    result.guest = {"ram_pages_at_start": info.ram_pages}
    result.pages = ledger.as_dict()
    result.wall = {"seconds": round(time.perf_counter() - wall0, 3)}
    bus.publish(run_summary(result))
    bus.publish(MigrationFinished(t=save.t_end, outcome=save.outcome, message=save.error))
    return result


async def _final_states(control, dst: Hypervisor, t: float, gfns: tuple[int, ...]) -> tuple[PageFate, ...]:
    """ok / missing / stale / extra / absent for each tracked GFN (sorted, unique): the
    whole-domain check's comparison, made on one snapshot of each side per window of
    GFNs at most VERIFY_SPAN apart, so a thousand tracked pages cost a few snapshots."""
    g = np.asarray(gfns, dtype=np.int64)
    out = np.full(g.size, PageFate.ABSENT, dtype=object)
    i = 0
    while i < g.size:
        j = int(np.searchsorted(g, g[i] + VERIFY_SPAN))
        w = g[i:j]
        sg, st = await control.snapshot(t, int(w[0]), int(w[-1]) + 1)
        dg, dt = dst.snapshot(int(w[0]), int(w[-1]) + 1)
        in_s, tok_s = _lookup(np.asarray(sg, dtype=np.int64), np.asarray(st, dtype=np.uint64), w)
        in_d, tok_d = _lookup(np.asarray(dg, dtype=np.int64), np.asarray(dt, dtype=np.uint64), w)
        state = out[i:j]
        state[in_s & ~in_d] = PageFate.MISSING
        state[in_s & in_d & (tok_s != tok_d)] = PageFate.STALE
        state[in_s & in_d & (tok_s == tok_d)] = PageFate.OK
        state[~in_s & in_d] = PageFate.EXTRA
        i = j
    return tuple(PageFate(s) for s in out)


def _lookup(gfns: np.ndarray, tokens: np.ndarray, want: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which of ``want`` are in the sorted ``gfns``, and their tokens (0 where absent)."""
    if not gfns.size:
        return np.zeros(want.size, dtype=bool), np.zeros(want.size, dtype=np.uint64)
    pos = np.minimum(np.searchsorted(gfns, want), gfns.size - 1)
    found = gfns[pos] == want
    return found, np.where(found, tokens[pos], np.uint64(0))


def run_summary(res: RunResult) -> RunSummary:
    """The run's facts that are not in the earlier events (what the restore side, the
    stream writer and the hypervisor's counters say at the end), so that a recorded
    event log rebuilds the whole report (``result_from_events``)."""
    s = res.save
    return RunSummary(t=s.t_end, scenario=res.scenario, seed=res.seed, behaviour=res.behaviour,
                      policy=res.policy, policy_params=res.policy_params, outcome=s.outcome,
                      error=s.error, error_pfn=s.error_pfn, p2m_size=s.p2m_size, totals=s.totals,
                      t_start=s.t_start, t_suspend=s.t_suspend, t_last_byte=s.t_last_byte,
                      final_stats=dict(s.final_stats), hypervisor=dict(res.hypervisor),
                      restore=dict(res.restore), destination=dict(res.destination),
                      stream=dict(res.stream), guest=dict(res.guest), wall=dict(res.wall),
                      switchover=s.switchover)


def result_from_events(events) -> RunResult:
    """Rebuild a RunResult from a run's events (live or read back from an event log)
    through the one fold every consumer shares (``migrate.events.fold``). Raises
    ValueError for a log without a RunSummary (a run cut short)."""
    from migrate.events.fold import fold_events

    return result_from_fold(fold_events(events))


def result_from_fold(fold) -> RunResult:
    """The RunResult a ``RunFold`` has seen: the passes from the PassEnded snapshots plus
    the balloon ops counted after them (``RoundStats.with_balloon``, the engine's own rule), the
    page ledger, the run's end facts from RunSummary. Raises ValueError when the
    RunSummary never came (a run cut short)."""
    st = fold.state
    summary = st.summary
    if summary is None:
        raise ValueError("the events end before the run's summary (the run was cut short)")
    save = SaveResult(outcome=summary.outcome, p2m_size=summary.p2m_size,
                      rounds=list(st.rounds),
                      totals=summary.totals, t_start=summary.t_start, t_suspend=summary.t_suspend,
                      t_last_byte=summary.t_last_byte, t_end=summary.t, error=summary.error,
                      error_pfn=summary.error_pfn, final_stats=dict(summary.final_stats),
                      switchover=summary.switchover)
    return RunResult(scenario=summary.scenario, seed=summary.seed, behaviour=summary.behaviour,
                     policy=summary.policy, policy_params=dict(summary.policy_params), save=save,
                     verify=st.verify, restore=dict(summary.restore), hypervisor=dict(summary.hypervisor),
                     destination=dict(summary.destination), stream=dict(summary.stream),
                     guest=dict(summary.guest), wall=dict(summary.wall), sites=dict(st.sites),
                     pages=fold.ledger.as_dict())


__all__ = ["RunOptions", "RunResult", "RunSettings", "result_from_events", "result_from_fold", "run_scenario", "run_settings"]
