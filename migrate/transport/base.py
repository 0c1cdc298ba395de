"""The RPC + event interface between the actors, and its in-process implementation.

Xen's toolstack reaches the hypervisor through hypercalls (libxenctrl) and
xenstore; the project card's three actors reach each other through this instead. One
small interface, ``Transport``: ``serve`` a handler, ``call`` a peer's method, publish
and subscribe to event batches, and learn when a peer is lost. The actors
(``migrate.actors``) see only this interface; the implementations:

- ``InProcessTransport`` (here): actors as tasks of one event loop sharing an
  ``InProcessHub`` (optionally passing every message through the wire codec).
- ``migrate.transport.mqtt.MqttTransport``: through an MQTT broker.

A call never hangs: it fails with ``PeerLost`` when the callee says it is gone,
when it has not been heard from (reply or heartbeat) for ``timeout`` seconds, or when
the connection is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any, Awaitable, Callable

from hypervisor.abi import XenError

from migrate.errors import BrokerUnreachable, PeerLost, RunRefused, TransportError
from migrate.codec import wire
from migrate.transport.limits import DEFAULT_CALL_LIMIT, DEFAULT_HEARTBEAT, DEFAULT_PEER_WAIT, DEFAULT_TIMEOUT  # noqa: F401

log = logging.getLogger("xmig.bus")

ACTORS = ("toolstack", "hypervisor", "guest")


Handler = Callable[[str, dict, str], Awaitable[Any]]   # (method, args, caller actor) -> result


def check_run_id(run_id: str) -> str:
    if not run_id or any(c in run_id for c in "/+#\0") or len(run_id) > 100:
        raise TransportError(f"--run: expected a name without '/', '+' or '#', found {run_id!r}")
    return run_id


# ----------------------------------------------------------------------------- interface


class Transport:
    """What an actor needs from the world: serve, call, events, and peer loss."""

    actor: str
    run_id: str
    client_id: str
    timeout: float

    async def start(self) -> None: ...
    async def close(self) -> None: ...

    def serve(self, handler: Handler) -> None:
        """Handle calls addressed to this actor, one at a time, in arrival order. Call it
        before ``claim``: peers send requests once they see the claim."""
        raise NotImplementedError

    async def call(self, actor: str, method: str, args: dict | None = None) -> Any:
        raise NotImplementedError

    def call_threadsafe(self, loop: asyncio.AbstractEventLoop, actor: str, method: str,
                        args: dict | None = None) -> Any:
        """``call`` from a worker thread (the synchronous hypervisor's guest scheduling)."""
        fut = asyncio.run_coroutine_threadsafe(self.call(actor, method, args), loop)
        return fut.result()

    async def claim(self) -> None:
        """Announce this actor on the run; refuse if another of its kind is there."""

    async def wait_for_peer(self, actor: str, timeout: float) -> None:
        raise NotImplementedError

    async def publish_events(self, items: list) -> int:
        """Publish a batch of events; returns its number (1 for the first)."""
        raise NotImplementedError

    def subscribe_events(self, actor: str, callback: Callable[[list], None], *, join: bool = False) -> Awaitable[None]:
        """``callback(events)`` for each batch ``actor`` publishes; with ``join``, a
        watcher that comes late starts from the run's snapshot where the transport
        keeps one (``migrate.transport.snapshot``)."""
        raise NotImplementedError

    async def publish_snapshot(self, payload: bytes | None) -> None:
        """Keep ``payload`` as the run's snapshot for late watchers (None: clear it).
        Only where watchers can join late (a broker); here: nothing."""

    def watchers(self) -> set[str]:
        """The watchers seen on the run (a snapshot names those it was taken for)."""
        return set()

    def on_watcher(self, callback: Callable[[str], None]) -> None:
        """``callback(client id)`` when a watcher joins the run (where one can)."""

    #: Does this transport keep a snapshot for watchers that join late?
    keeps_snapshots = False

    def rejected(self) -> dict | None:
        """What this transport kept out of the run (a broker's strangers), for the
        result's ``broker`` section; None where nothing can get in."""
        return None

    def on_peer_lost(self, callback: Callable[[str, PeerLost], None]) -> None:
        raise NotImplementedError

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class _Peers:
    """Who is on the run, when each was last heard from, and who to tell when one goes."""

    def __init__(self) -> None:
        self.present: dict[str, set[str]] = {}
        self.last_seen: dict[str, float] = {}
        self.heard: dict[str, float] = {}      # per client id: last heartbeat
        self.gone: set[str] = set()            # client ids that left (or whose claim was stale)
        self.lost_callbacks: list[Callable[[str, PeerLost], None]] = []
        self.pending: dict[bytes, tuple[str, asyncio.Future]] = {}
        self.broken: PeerLost | None = None
        self.changed = asyncio.Event()

    def seen(self, actor: str) -> None:
        self.last_seen[actor] = time.monotonic()

    def live(self, actor: str, within: float) -> set[str]:
        """The clients claiming ``actor`` that heartbeat within the last ``within`` s."""
        now = time.monotonic()
        return {c for c in self.present.get(actor, ()) if now - self.heard.get(c, -1e18) < within}

    def lose(self, actor: str, exc: PeerLost) -> None:
        for cid, (target, fut) in list(self.pending.items()):
            if (actor == "*" or target == actor) and not fut.done():
                fut.set_exception(exc)
        for cb in list(self.lost_callbacks):
            try:
                cb(actor, exc)
            except Exception:  # a listener's bug must not stop the others
                log.exception("peer-lost callback failed")
        self.changed.set()
        self.changed = asyncio.Event()


def _error_reply(exc: BaseException) -> dict:
    if isinstance(exc, PeerLost):
        return {"lost": str(exc), "peer": exc.peer}
    if isinstance(exc, XenError):
        return {"err": exc}
    if isinstance(exc, TransportError):
        return {"transport": type(exc).__name__, "msg": str(exc)}
    return {"err": wire.RemoteError(f"{type(exc).__name__}: {exc}")}


def _raise_reply(reply: dict, callee: str) -> Any:
    if "ok" in reply:
        return reply["ok"]
    if "lost" in reply:
        raise PeerLost(reply["lost"], reply.get("peer") or callee)
    if "transport" in reply:
        cls = {"RunRefused": RunRefused, "BrokerUnreachable": BrokerUnreachable}.get(reply["transport"],
                                                                                      TransportError)
        raise cls(reply["msg"])
    err = reply.get("err")
    if isinstance(err, XenError):
        raise err
    raise wire.RemoteError(f"{callee}: {err}")


async def _wait_reply(peers: _Peers, fut: asyncio.Future, callee: str, timeout: float,
                      limit: float = DEFAULT_CALL_LIMIT) -> Any:
    """Wait for ``fut`` while the callee shows signs of life (heartbeats), at most
    ``limit`` seconds in all; PeerLost otherwise."""
    sent = time.monotonic()
    while True:
        now = time.monotonic()
        heard = max(peers.last_seen.get(callee, 0.0), sent)
        remaining = min(heard + timeout, sent + limit) - now
        if remaining <= 0:
            if now - heard < timeout:
                raise PeerLost(f"{callee} did not answer within {limit:g} s (it is connected but busy)", callee)
            # Not "lost the broker": the broker is fine (it would have said so); the
            # callee is connected or was, and silent (stopped, frozen, or cut off).
            raise PeerLost(f"{callee} did not answer within {timeout:g} s and sent no heartbeat "
                           "(frozen, hung, or cut off from the broker)", callee)
        done, _ = await asyncio.wait({fut}, timeout=remaining)
        if done:
            return fut.result()


# ----------------------------------------------------------------------------- in-process


class InProcessHub:
    """The 'broker' of in-process actors. ``codec=True`` sends every message through
    ``wire.encode``/``decode`` so the in-process run exercises the same codec."""

    def __init__(self, *, codec: bool = True):
        self.codec = codec
        self.handlers: dict[str, tuple[Handler, asyncio.Lock]] = {}
        self.members: dict[str, "InProcessTransport"] = {}
        self.event_subs: dict[str, list[Callable[[list], None]]] = {}
        self.joined = asyncio.Event()

    def _pass(self, msg: Any) -> Any:
        return wire.roundtrip(msg) if self.codec else msg


class InProcessTransport(Transport):
    def __init__(self, hub: InProcessHub, run_id: str, actor: str, *, timeout: float = DEFAULT_TIMEOUT):
        self.hub = hub
        self.run_id = run_id
        self.actor = actor
        self.client_id = f"{actor}-{uuid.uuid4().hex[:8]}"
        self.timeout = timeout
        self.peers = _Peers()
        self._closed = False

    async def start(self) -> None:
        return None

    async def claim(self) -> None:
        other = self.hub.members.get(self.actor)
        if other is not None and other is not self:
            raise RunRefused(f"run id {self.run_id!r} already has a {self.actor} ({other.client_id}); "
                             "choose another --run")
        self.hub.members[self.actor] = self
        self.hub.joined.set()
        self.hub.joined = asyncio.Event()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.hub.members.get(self.actor) is self:
            del self.hub.members[self.actor]
            self.hub.handlers.pop(self.actor, None)
            exc = PeerLost(f"{self.actor} left the run", self.actor)
            for member in list(self.hub.members.values()):
                member.peers.lose(self.actor, exc)

    def serve(self, handler: Handler) -> None:
        self.hub.handlers[self.actor] = (handler, asyncio.Lock())

    async def wait_for_peer(self, actor: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while actor not in self.hub.members:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PeerLost(f"no {actor} joined run {self.run_id!r} within {timeout:g} s", actor)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.hub.joined.wait(), remaining)

    async def call(self, actor: str, method: str, args: dict | None = None) -> Any:
        if self._closed:
            raise PeerLost(f"{self.actor} has left run {self.run_id!r}", self.actor)
        entry = self.hub.handlers.get(actor)
        if entry is None or actor not in self.hub.members:
            raise PeerLost(f"{actor} is not on run {self.run_id!r}", actor)
        handler, lock = entry
        request = self.hub._pass({"m": method, "a": args or {}})
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        key = uuid.uuid4().bytes
        self.peers.pending[key] = (actor, fut)

        async def serve_one() -> None:
            async with lock:
                try:
                    reply = {"ok": await handler(request["m"], request["a"], self.actor)}
                except Exception as exc:  # the caller gets it, as over MQTT
                    reply = _error_reply(exc)
            if not fut.done():
                fut.set_result(self.hub._pass(reply))

        task = asyncio.ensure_future(serve_one())
        try:
            self.peers.seen(actor)
            while True:
                done, _ = await asyncio.wait({fut}, timeout=self.timeout)
                if done:
                    break
                if task.done():   # the handler finished but did not answer: a bug
                    raise PeerLost(f"{actor} did not answer within {self.timeout:g} s", actor)
            return _raise_reply(fut.result(), actor)
        finally:
            self.peers.pending.pop(key, None)

    async def publish_events(self, items: list) -> int:
        self._event_seq = getattr(self, "_event_seq", 0) + 1
        payload = self.hub._pass({"events": items})
        for cb in list(self.hub.event_subs.get(self.actor, ())):
            cb(self.hub._pass(payload)["events"] if self.hub.codec else list(items))
        return self._event_seq

    async def subscribe_events(self, actor: str, callback: Callable[[list], None], *, join: bool = False) -> None:
        self.hub.event_subs.setdefault(actor, []).append(callback)

    def on_peer_lost(self, callback: Callable[[str, PeerLost], None]) -> None:
        self.peers.lost_callbacks.append(callback)
