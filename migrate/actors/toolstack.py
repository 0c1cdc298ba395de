"""The toolstack's side: ``RemoteSource`` / ``RemoteDomain`` (the ``SourceSide``
and ``DomainControl`` of a domain held by a hypervisor actor), the publisher of
its events, and ``watch`` for a consumer of them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import numpy as np

from hypervisor.abi import (
    PFINFO_HAS_DATA,
    PFINFO_LTAB_SHIFT,
    ShadowOp,
)

from ..control import PassPlan, SourceInfo
from ..errors import PeerLost, TransportError
from ..events import Event, EventBus
from ..transport.base import Transport

from .guest import scenario_digest
from .messages import Lookahead, Served

log = logging.getLogger("xmig.actors")

#: Batches the hypervisor serves ahead of the saver, with the one it asks for (see
#: ``RemoteDomain``): each saves a round trip.
LOOKAHEAD = 8

#: Event batches for watchers: at most this long between flushes, or this many events.
EVENT_FLUSH_S = 0.05
EVENT_FLUSH_N = 256


class RemoteDomain:
    """``DomainControl`` over the transport: the hypervisor actor's LocalDomain.

    The engine states each pass's plan (``begin_pass``); every type query of a planned
    batch then carries the plan's link model, so the hypervisor also does the foreign
    map the saver makes ``LinkModel.map_time`` later, and the batches the plan walks
    next (up to ``lookahead``), each at ``LinkModel.next_batch_time``: the engine's own
    timing, so those calls are answered here without a round trip."""

    def __init__(self, transport: Transport, bus: EventBus, *, lookahead: int = LOOKAHEAD,
                 speculate: bool = True):
        self.transport = transport
        self.bus = bus
        self.owner = transport.client_id
        self.lost: PeerLost | None = None
        self.speculate = speculate
        self.lookahead = int(lookahead) if speculate else 0
        self._spec: tuple[float, np.ndarray, Served] | None = None
        self._counters: dict[str, Any] | None = None
        self._plan: PassPlan | None = None
        self._cursor = (0, 0)                   # (stretch, batch) the plan walks next
        self._ahead: list[tuple[float, np.ndarray, Served]] = []
        self.rpcs = 0
        self.spec_hits = 0
        self.ahead_hits = 0

    async def _call(self, method: str, args: dict) -> Any:
        if self.lost is not None:
            raise self.lost
        args["owner"] = self.owner
        self.rpcs += 1
        try:
            reply = await self.transport.call("hypervisor", method, args)
        except PeerLost as exc:
            self.lost = exc
            raise
        if isinstance(reply, Served) and reply.counters is not None:
            self._counters = reply.counters
        return reply

    def _finish(self, served: Served) -> Any:
        for ev in served.events:
            self.bus.publish(ev)
        if served.lost is not None:
            raise PeerLost(served.lost, served.peer)
        if served.error is not None:
            raise served.error
        return served.result

    def _drop_ahead(self, what: str) -> None:
        """The engine stopped its pass early (a stream that failed, Ctrl-C): what was
        served for it has run the guest up to a batch ahead."""
        if self._ahead:
            log.warning("the engine stopped before %d batches served ahead (it called %s)", len(self._ahead), what)
        self._ahead = []
        self._spec = None

    async def _op(self, method: str, **args) -> Any:
        self._drop_ahead(method)
        return self._finish(await self._call(method, args))

    # -------------------------------------------------------- the saver's batches

    async def begin_pass(self, t, plan):
        self._drop_ahead("begin_pass")
        self._plan = plan if self.speculate else None
        self._cursor = (0, 0)

    def _next_batches(self, pfns: np.ndarray) -> list[np.ndarray] | None:
        """If ``pfns`` is the batch the plan walks next, move past it and return the
        ones that follow it in its stretch (up to ``lookahead``); None for a batch the
        plan does not hold (one the engine sends between two stretches)."""
        plan = self._plan
        if plan is None:
            return None
        s, k = self._cursor
        while s < len(plan.stretches) and k >= len(plan.stretches[s]):
            s, k = s + 1, 0
        if s >= len(plan.stretches) or not np.array_equal(plan.stretches[s].batch(k), pfns):
            return None
        self._cursor = (s, k + 1)
        st = plan.stretches[s]
        return [st.batch(i) for i in range(k + 1, min(len(st), k + 1 + self.lookahead))]

    def _take_spec(self, served: Served, pfns: np.ndarray) -> None:
        if served.mapped is not None:
            nibbles = (np.asarray(served.result, dtype=np.uint32) >> PFINFO_LTAB_SHIFT).astype(np.uint8)
            self._spec = (served.mapped.t, pfns[PFINFO_HAS_DATA[nibbles]], served.mapped)

    async def getpageframeinfo3(self, t, pfns):
        t = float(t)
        pfns = np.asarray(pfns, dtype=np.int64)
        nxt = self._next_batches(pfns)
        if self._spec is not None:
            raise _broke_plan(f"getpageframeinfo3 at t={t!r}", "map_foreign of the last batch's data pages")
        if self._ahead:
            t_ahead, pfns_ahead, entry = self._ahead.pop(0)
            if t_ahead != t or not np.array_equal(pfns_ahead, pfns):
                raise _broke_plan(f"getpageframeinfo3 of {pfns.size} PFNs at t={t!r}",
                                  f"the plan's next batch at t={t_ahead!r}")
            self.ahead_hits += 1
            self._counters = entry.counters
            self._take_spec(entry, pfns)
            return self._finish(entry)
        args: dict[str, Any] = {"t": t, "pfns": pfns}
        plan = self._plan
        if plan is not None:
            args["plan"] = Lookahead(plan.link, nxt or [], plan.deadline)
        reply = await self._call("getpageframeinfo3", args)
        self._take_spec(reply, pfns)
        for i, entry in enumerate(reply.ahead):
            self._ahead.append((float(entry.t), nxt[i], entry))
        return self._finish(reply)

    async def map_foreign(self, t, pfns):
        if self._spec is not None:
            t_spec, spfns, spec = self._spec
            self._spec = None
            if float(t) != t_spec or not np.array_equal(np.asarray(pfns), spfns):
                raise _broke_plan(f"map_foreign at t={float(t)!r}", f"the map at t={t_spec!r} (LinkModel.map_time)")
            self.spec_hits += 1
            return self._finish(spec)
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
        if self._counters is not None and self._spec is None:
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


def _broke_plan(got: str, expected: str) -> RuntimeError:
    """The engine called something its stated plan and LinkModel's timing did not say:
    a bug in the engine (the hypervisor has already run the guest for the call it
    predicted), never a condition to recover from."""
    return RuntimeError(f"the precopy engine broke its stated pass plan: got {got}, expected {expected}")


class EventPublisher:
    """Bus listener that republishes every event on ``events/<actor>`` in batches."""

    def __init__(self, transport: Transport, *, interval: float = EVENT_FLUSH_S, max_batch: int = EVENT_FLUSH_N):
        self.transport = transport
        self.interval = interval
        self.max_batch = max_batch
        self._buf: list[Event] = []
        self._wake = asyncio.Event()
        self._closing = False
        self.failed: BaseException | None = None
        self.published = 0
        self._task = asyncio.ensure_future(self._loop())

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
            if batch and self.failed is None:
                try:
                    await self.transport.publish_events(batch)
                    self.published += len(batch)
                except Exception as exc:   # watchers are best effort; the run goes on
                    self.failed = exc
            if self._closing and not self._buf:
                return

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
                 host_frames: int, publish_events: bool = True, speculate: bool = True):
        self.transport = transport
        self.scenario = scenario
        self.behaviour = behaviour
        self.seed = seed
        self.bus = bus
        self.host_frames = host_frames
        self.control = RemoteDomain(transport, bus, speculate=speculate)
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
