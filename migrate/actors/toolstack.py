"""The toolstack's side: ``RemoteSource`` / ``RemoteDomain`` (the ``SourceSide``
and ``DomainControl`` of a domain held by a hypervisor actor), the publisher of
its events, and ``watch`` for a consumer of them."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import Any

import numpy as np

from hypervisor.abi import MAX_BATCH_SIZE, PFINFO_HAS_DATA, ShadowOp, SpanServed
from hypervisor.tables import lookup

from migrate.toolstack.control import SourceInfo, next_span_ask
from migrate.errors import PeerLost, TransportError
from migrate.events import Event, EventBus, PassEnded, PassStarted
from migrate.transport.base import Transport
from migrate.transport.snapshot import SnapshotWriter

from migrate.actors.guest import scenario_digest
from migrate.actors.messages import BootElided, Served

log = logging.getLogger("xmig.actors")

#: Event batches for watchers: at most this long between flushes, or this many events.
EVENT_FLUSH_S = 0.05
EVENT_FLUSH_N = 256


class RemoteDomain:
    """``DomainControl`` over the transport: the hypervisor actor's LocalDomain.

    The saver's batches go as spans (``serve_span``): one round trip carries the PFNs of
    a run of batches, the link model that times them and the save's deadline, and the
    hypervisor answers for as many as it can serve at once (``hypervisor/span.py``),
    exactly as in process. A batch a span stops before goes as its two calls."""

    #: The verify step (runner._verify) asks for a digest of each window of the
    #: source first and fetches only the windows whose digest differs from the
    #: destination's: the contents of a guest cross the transport only where they differ.
    verify_by_digest = True

    def __init__(self, transport: Transport, bus: EventBus):
        self.transport = transport
        self.bus = bus
        self.owner = transport.client_id
        self.lost: PeerLost | None = None
        self._counters: dict[str, Any] | None = None
        self.rpcs = 0
        self.span_batches = 0
        self._stretch = None          # the stretch the hypervisor holds (as id _stretch_id)
        self._stretch_id = 0
        self._ahead: collections.deque = collections.deque()   # (Served, k, ask) served ahead
        self._next = None             # ((k, ask), task) of the span requested ahead

    async def _call(self, method: str, args: dict) -> Any:
        if self.lost is not None:
            raise self.lost
        if method != "serve_span":
            self._drop_ahead()
        args["owner"] = self.owner
        self.rpcs += 1
        try:
            reply = await self.transport.call("hypervisor", method, args)
        except PeerLost as exc:
            self.lost = exc
            raise
        if method != "serve_span" and isinstance(reply, Served) and reply.counters is not None:
            self._counters = reply.counters
        return reply

    def _finish(self, served: Served) -> Any:
        if served.counters is not None:
            self._counters = served.counters
        for ev in served.events:
            self.bus.publish(ev)
        if served.lost is not None:
            raise PeerLost(served.lost, served.peer)
        if served.error is not None:
            raise served.error
        return served.result

    async def _op(self, method: str, **args) -> Any:
        return self._finish(await self._call(method, args))

    # -------------------------------------------------------- the saver's batches

    async def begin_pass(self, t, plan):
        """Nothing to prepare: each span carries what the hypervisor needs of the plan."""
        return None

    async def serve_span(self, t, pfns, plan, at=None):
        """A span of batches. Given by its place in the pass (``at``), the stretch goes
        to the hypervisor once, and the hypervisor serves the spans the engine will ask
        for next with it (``Served.ahead``, see ``HypervisorActor._serve_spans``); and
        while the engine works through those, the request for the span after them is
        already out, so the hypervisor serves ahead while the toolstack writes and
        restores. Each span answered from ahead is checked to be the very one the
        engine asks for."""
        pfns = np.asarray(pfns, dtype=np.int64)
        ask = -(-pfns.size // MAX_BATCH_SIZE)
        if at is None:
            self._drop_ahead()
            return self._span(self._finish(await self._call("serve_span", {
                "t": float(t), "pfns": pfns, "link": plan.link, "deadline": plan.deadline})), pfns)
        if not self._ahead and self._next is not None:
            (k, n_ask), task = self._next       # checked below, as every span from ahead
            self._next = None
            self._queue(await task, k, n_ask, plan)
        if not self._ahead:
            self._drop_ahead()
            args = {"t": float(t), "link": plan.link, "deadline": plan.deadline, "span_max": plan.span_max}
            if at.stretch is not self._stretch:
                self._stretch, self._stretch_id = at.stretch, self._stretch_id + 1
                args["stretch"] = at.stretch
            args["at"] = (self._stretch_id, int(at.k), ask)
            self._queue(await self._call("serve_span", args), int(at.k), ask, plan)
        entry, k, e_ask = self._ahead.popleft()
        if at.stretch is not self._stretch or (at.k, ask, float(t)) != (k, e_ask, entry.t):
            self._drop_ahead()
            raise TransportError("the engine asked for another span than the hypervisor served ahead")
        return self._span(self._finish(entry), pfns)

    def _queue(self, reply: Served, k: int, ask: int, plan) -> None:
        """Queue a serve_span reply's spans (its own and those ahead) and, when the
        engine will ask for another span of the stretch after them, request it now."""
        if not isinstance(reply, Served):
            raise TransportError(f"serve_span answered a {type(reply).__name__}")
        self._ahead.append((reply, k, ask))
        for entry in reply.ahead if isinstance(reply.ahead, list) else [None]:
            at = getattr(entry, "at", None)
            if not (isinstance(entry, Served) and isinstance(at, tuple) and len(at) == 2
                    and all(type(x) is int for x in at)):
                raise TransportError("serve_span answered a bad span ahead")
            self._ahead.append((entry, at[0], at[1]))
        last, k, ask = self._ahead[-1]
        res = last.result
        if not (last.ok and isinstance(res, SpanServed) and res.batches and res.stop in ("plan", "hypercall")):
            return
        k += res.batches
        ask = min(len(self._stretch) - k, next_span_ask(ask, res.batches, plan.span_max))
        if ask > 0:
            t = float(res.times[-1])
            task = asyncio.ensure_future(self._call("serve_span", {
                "t": t, "link": plan.link, "deadline": plan.deadline, "span_max": plan.span_max,
                "at": (self._stretch_id, k, ask)}))
            # Awaited when the engine asks for it; if it never does, its error is no news.
            task.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._next = ((k, ask), task)

    def _drop_ahead(self) -> None:
        """Forget spans served ahead that the engine did not ask for (a save cut short:
        the hypervisor has run that much further)."""
        self._ahead.clear()
        if self._next is not None:
            self._next[1].cancel()
            self._next = None

    def _span(self, served, pfns: np.ndarray) -> SpanServed:
        if not isinstance(served, SpanServed):
            raise TransportError(f"serve_span answered a {type(served).__name__}")
        if isinstance(served.tokens, BootElided):
            data = lookup(PFINFO_HAS_DATA, np.asarray(served.nibbles, dtype=np.uint8))
            if data.size != served.pfns or served.pfns > pfns.size:
                raise TransportError(f"serve_span answered {data.size} types for {served.pfns} PFNs")
            try:
                served.tokens = served.tokens.expand(pfns[:served.pfns][data])
            except (ValueError, TypeError, OverflowError) as exc:
                raise TransportError(f"serve_span: bad elided contents: {exc}") from None
        self.span_batches += served.batches
        return served

    async def getpageframeinfo3(self, t, pfns):
        return await self._op("getpageframeinfo3", t=float(t), pfns=np.asarray(pfns, dtype=np.int64))

    async def map_foreign(self, t, pfns):
        return await self._op("map_foreign", t=float(t), pfns=np.asarray(pfns, dtype=np.int64))

    # -------------------------------------------------------- the other domctls

    async def shadow_op(self, t, op, *, mode=0, pages=0, want_bitmap=True, walk_s=0.0):
        if self.lost is not None and int(op) == ShadowOp.OFF:
            return None      # the hypervisor actor turns log-dirty off itself when we go
        return await self._op("shadow_op", t=float(t), op=int(op), mode=int(mode), pages=int(pages),
                              want_bitmap=bool(want_bitmap), walk_s=float(walk_s))

    async def resume(self, t):
        if self.lost is not None:
            return None      # the hypervisor actor resumes the domain itself when we go
        return await self._op("resume", t=float(t))

    async def counters(self, t):
        # Every reply carries the counters as they stood after the call, and nothing
        # changes in the hypervisor between calls: the last reply's are the current ones.
        if self._counters is not None:
            return dict(self._counters)
        if self.lost is not None:
            return {}
        return await self._op("counters", t=float(t))

    async def max_gpfn(self, t):
        return await self._op("max_gpfn", t=float(t))

    async def suspend(self, t):
        return await self._op("suspend", t=float(t))

    async def snapshot(self, t, lo=0, hi=None):
        return await self._op("snapshot", t=float(t), lo=int(lo), hi=None if hi is None else int(hi))

    async def mapped_runs(self, t, lo, hi):
        return await self._op("mapped_runs", t=float(t), lo=int(lo), hi=int(hi))

    async def snapshot_digests(self, t, windows):
        return await self._op("snapshot_digests", t=float(t), windows=np.asarray(windows, dtype=np.int64))


class EventPublisher:
    """Bus listener that republishes every event on ``events/<actor>`` in batches and,
    where watchers can join late (a broker), keeps the run's snapshot beside them
    (``migrate.transport.snapshot``): refreshed when a pass starts or ends, at most
    about once a second otherwise, at once when a watcher joins, cleared at the end."""

    def __init__(self, transport: Transport, *, interval: float = EVENT_FLUSH_S, max_batch: int = EVENT_FLUSH_N):
        self.transport = transport
        self.interval = interval
        self.max_batch = max_batch
        self._buf: list[Event] = []
        self._wake = asyncio.Event()
        self._closing = False
        self.failed: BaseException | None = None
        self.published = 0
        self.snapshot = SnapshotWriter() if transport.keeps_snapshots else None
        self.snapshots = 0            # snapshots published
        self._joiner = False          # a watcher joined since the last snapshot
        if self.snapshot is not None:
            transport.on_watcher(self._watcher_joined)
        self._task = asyncio.ensure_future(self._loop())

    def _watcher_joined(self, _cid: str) -> None:
        self._joiner = True
        self._wake.set()

    def __call__(self, ev: Event) -> None:
        self._buf.append(ev)
        if len(self._buf) >= self.max_batch:
            self._wake.set()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            batch, self._buf = self._buf, []
            if (batch or self._joiner) and self.failed is None:
                try:
                    if batch:
                        seq = await self.transport.publish_events(batch)
                        self.published += len(batch)
                    if self.snapshot is not None:
                        await self._refresh(seq if batch else None, batch)
                except Exception as exc:   # watchers are best effort; the run goes on
                    self.failed = exc
            if self._closing and not self._buf:
                if self.snapshots and self.failed is None:
                    # The run is over: a watcher coming now has nothing to join.
                    with contextlib.suppress(Exception):
                        await self.transport.publish_snapshot(None)
                return

    async def _refresh(self, seq: int | None, batch: list[Event]) -> None:
        snap = self.snapshot
        if seq is not None:
            snap.add(seq, batch)
        # A snapshot names the watchers it was taken for, so with none claimed yet it
        # would be no use to anyone: it is kept (compressed), not published.
        if not (self._joiner or self.transport.watchers()):
            return
        now = self._joiner or any(isinstance(ev, (PassStarted, PassEnded)) for ev in batch)
        if snap.due(now=now):
            self._joiner = False
            await self.transport.publish_snapshot(snap.payload(self.transport.watchers()))
            self.snapshots += 1

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._task), 2 * self.transport.timeout)
        if not self._task.done():
            self._task.cancel()


class RemoteSource:
    """``SourceSide`` whose domain lives in a hypervisor actor (``source_factory``)."""

    def __init__(self, transport: Transport, scenario, *, behaviour: str, seed: int, bus: EventBus,
                 host_frames: int, publish_events: bool = True):
        self.transport = transport
        self.scenario = scenario
        self.behaviour = behaviour
        self.seed = seed
        self.bus = bus
        self.host_frames = host_frames
        self.control = RemoteDomain(transport, bus)
        self.publisher = EventPublisher(transport) if publish_events else None
        if self.publisher is not None:
            bus.subscribe(self.publisher)
        self.created = False

    async def setup(self, start: float) -> SourceInfo:
        config = getattr(self.transport, "config", None)
        await self.transport.wait_for_peer("hypervisor", getattr(config, "peer_wait", self.transport.timeout))
        info = await self.control._call("create", {
            "behaviour": self.behaviour, "host_frames": int(self.host_frames), "start": float(start),
            "seed": int(self.seed), "scenario": self.scenario.name, "digest": scenario_digest(self.scenario)})
        self.created = True
        return info

    async def close(self) -> None:
        if self.publisher is not None:
            await self.publisher.close()
        if self.created and self.control.lost is None:
            with contextlib.suppress(TransportError):
                await self.control._call("release", {})
