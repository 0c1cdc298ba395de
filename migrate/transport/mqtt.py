"""The MQTT transport: ``Transport`` (``migrate.transport.base``) through a broker.

Xen's toolstack reaches the hypervisor through hypercalls (libxenctrl) and
xenstore; the project card's actors reach each other through a broker instead:
aiomqtt, MQTT v5. Topics, all under ``xmig/<run-id>/``::

      <actor>/rpc                 requests (QoS 1; v5 response topic + correlation data)
      <actor>/reply/<client-id>   replies to one client (QoS 1)
      events/<actor>              event batches (QoS 1, in order)
      snapshot/<actor>            the run so far, for a watcher that joins late
                                  (retained, refreshed; ``migrate.transport.snapshot``)
      alive/<actor>               heartbeats (QoS 0, every ``heartbeat`` s)
      presence/<actor>/<client>   a hello (at start) and the retained claim, each with
                                  the client's fresh challenge; the client's will
                                  replaces the claim with "gone", so a killed peer is
                                  seen at once and a second live actor (a second
                                  toolstack) on the same run id is refused
      proof/<actor>/<client>      a claim holder's answer to that client's challenge
      sync/<user>/<client>        a client's message to itself (the start barrier)

Every message is sealed with the run key and bound to the run's session, and counts
only from a sender that proved itself live to this client
(``migrate.transport.admission``): what fails is dropped and counted in
``MqttTransport.dropped`` (each reason logged once). A reply is bound to its request.

A call never hangs: it fails with ``PeerLost`` when the callee says it is gone,
when it has not been heard from (reply or heartbeat) for ``timeout`` seconds, or when
the broker connection is lost.
"""


from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import socket
import time
import uuid
from typing import Any, Callable

from migrate.errors import BrokerUnreachable, PeerLost, TransportError
from migrate.codec import wire
from migrate.transport import runkey
from migrate.transport.admission import DROP_REASONS, Admission
from migrate.transport.base import DEFAULT_TIMEOUT, Handler, Transport, _Peers, _raise_reply, _wait_reply, check_run_id
from migrate.transport.requests import serve_requests
from migrate.transport.snapshot import SnapshotSide
from migrate.transport.connection import BrokerConfig, make_client, parse_broker_url, quiet_closed_socket_noise, reason

log = logging.getLogger("xmig.mqtt")

#: The peer name under which a transport tells its listeners that the run's sealing
#: and its own do not match (an ``--insecure`` client on a sealed run).
RUN_KEY_PEER = "run key"


class EventBatches:
    """The numbers of the event batches seen per actor: which were missed (a gap, or
    the batches before the first one seen: a watcher that joined late)."""

    def __init__(self) -> None:
        self.missed: collections.Counter = collections.Counter()
        self.first: dict[str, int] = {}
        self._last: dict[str, int] = {}

    def count(self, actor: str, seq) -> None:
        if not isinstance(seq, int):
            return
        last = self._last.get(actor)
        if last is None:
            self.first[actor] = seq
            last = 0
        if seq > last + 1:
            self.missed[actor] += seq - last - 1
        self._last[actor] = seq

    def saw_start(self, actor: str) -> bool:
        """Did the batches of ``actor`` seen start with its first one?"""
        return self.first.get(actor) == 1


class MqttTransport(SnapshotSide, Transport):
    """One aiomqtt client = one actor on one run."""

    def __init__(self, config: BrokerConfig, run_id: str, actor: str):
        if config.key is None and not config.insecure:
            raise TransportError(
                "no run key: anyone on the broker could fake this run's messages. Make one with "
                f"`xmig keygen > run.key` and give every actor `--key-file run.key` (or {runkey.KEY_ENV}); "
                "or pass --insecure to every actor")
        self.config = config
        self.run_id = check_run_id(run_id)
        self.actor = actor
        self.client_id = f"xmig-{actor}-{uuid.uuid4().hex[:10]}"
        self.timeout = config.timeout
        self.key = config.key
        self.peers = _Peers()
        self.gate = Admission(config.key, self.client_id, actor, run_id, self.peers, config.timeout,
                              on_mismatch=lambda text: self.peers.lose(RUN_KEY_PEER, PeerLost(text, RUN_KEY_PEER)))
        self.prefix = f"xmig/{run_id}"
        self._client = None
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task] = []
        self._handler: Handler | None = None
        self._requests: asyncio.Queue = asyncio.Queue()
        self._event_cbs: dict[str, list[Callable[[list], None]]] = {}
        self._sync: dict[bytes, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._req_tags: dict[bytes, bytes] = {}
        self._closed = False
        self._claimed = False
        self._serving = False
        self._inflight: set[asyncio.Task] = set()
        self._event_seq = 0
        self.batches = EventBatches()
        self._init_snapshots()

    @property
    def events_missed(self) -> collections.Counter:
        return self.batches.missed

    @property
    def dropped(self) -> collections.Counter:
        """Messages dropped, by reason (``admission.DROP_REASONS``); each reason logged once."""
        return self.gate.dropped

    @property
    def session(self) -> bytes:
        """The run's current session (``runkey.NO_SESSION`` until a toolstack opens one)."""
        return self.gate.session

    # ---------------------------------------------------------------- topics

    def t_rpc(self, actor: str) -> str:
        return f"{self.prefix}/{actor}/rpc"

    def t_presence(self, actor: str, cid: str = "+") -> str:
        return f"{self.prefix}/presence/{actor}/{cid}"

    def t_events(self, actor: str) -> str:
        return f"{self.prefix}/events/{actor}"

    def t_sync(self) -> str:
        # The user name in it lets a broker ACL give each account only its own
        # (``pattern readwrite xmig/+/sync/%u/+``; examples/mosquitto/acl).
        return f"{self.prefix}/sync/{self.config.username or '-'}/{self.client_id}"

    # ---------------------------------------------------------------- sealing

    def _seal(self, topic: str, payload: bytes, bind: bytes = b"") -> bytes:
        return self.gate.seal(topic, payload, bind)

    def _drop(self, reason: str, topic: str, detail: str = "") -> None:
        self.gate.drop(reason, topic, detail)

    def rejected(self) -> dict:
        return {"authenticated": self.key is not None, "dropped": dict(self.dropped)}

    def drop_summary(self) -> str:
        """``3 unsigned, 1 replayed`` (empty when nothing was dropped)."""
        return self.gate.drop_summary()

    def _decode(self, payload, topic: str) -> Any:
        """The message, or None (dropped and counted) if it is not one this xmig knows."""
        return self.gate.decode(payload, topic)

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        from paho.mqtt.properties import Properties
        from paho.mqtt.packettypes import PacketTypes

        self._Properties, self._PacketTypes = Properties, PacketTypes
        me = self.t_presence(self.actor, self.client_id)
        # The will says "gone" (sealed now, so it needs no key when the broker sends it);
        # never an empty message, which anyone could publish.
        client = await make_client(self.config, self.client_id, self._stack, self._dispatch, self._drop,
                                   will=(me, self._seal(me, wire.encode({"gone": self.client_id}))))
        self._client = client
        quiet_closed_socket_noise(asyncio.get_running_loop())
        self._tasks.append(asyncio.ensure_future(self._reader()))
        await client.subscribe([
            (f"{self.prefix}/+/reply/{self.client_id}", 1),
            (f"{self.prefix}/presence/#", 1),
            (f"{self.prefix}/alive/+", 0),
            (f"{self.prefix}/proof/+/{self.client_id}", 1),
            (self.t_sync(), 1),
        ])
        # The hello shows our challenge to the claim holders already there: they answer it.
        await client.publish(me, self._seal(me, wire.encode(
            {"hello": self.client_id, "actor": self.actor, "challenge": self.gate.challenge})), qos=1)
        if self.actor != "watch":      # nobody waits for a watcher
            self._tasks.append(asyncio.ensure_future(self._heartbeat()))
        await self._barrier()

    async def _barrier(self) -> None:
        """Publish to ourselves and wait for it: by then the broker has sent us every
        retained presence claim (it sends them before handling our later publish)."""
        key = uuid.uuid4().bytes
        fut = asyncio.get_running_loop().create_future()
        self._sync[key] = fut
        topic = self.t_sync()
        try:
            await self._client.publish(topic, self._seal(topic, key), qos=1)
            await _wait_reply(self.peers, fut, "the MQTT broker", self.timeout)
        except PeerLost:
            raise BrokerUnreachable(f"the MQTT broker at {self.config.display} did not answer within "
                                    f"{self.timeout:g} s") from None
        finally:
            self._sync.pop(key, None)

    async def claim(self) -> None:
        await self.gate.refuse_squatters(self.config.display)
        if self._handler is not None and not self._serving:
            # Subscribed before the claim is visible: no request can reach us unheard.
            await self._client.subscribe(self.t_rpc(self.actor), qos=1)
            self._serving = True
            self._tasks.append(asyncio.ensure_future(serve_requests(self)))
        if self.actor == "toolstack":
            self.gate.open_session()
        topic = self.t_presence(self.actor, self.client_id)
        await self._client.publish(topic, self._seal(topic, wire.encode(
            {"actor": self.actor, "client": self.client_id, "challenge": self.gate.challenge, "pid": os.getpid(),
             "host": socket.gethostname()})), qos=1, retain=True)
        self._claimed = self.gate.claimed = True
        sent = self._prove()
        if sent:                       # out before our first event batch or call
            await asyncio.wait(sent, timeout=self.timeout)

    def _prove(self) -> list[asyncio.Task]:
        """Answer the challenge of every client we owe a proof."""
        sent = []
        for cid in self.gate.proof_due(self._claimed):
            topic = f"{self.prefix}/proof/{self.actor}/{cid}"
            payload = wire.encode({"client": self.client_id, "to": cid})
            sent.append(self._send(topic, self.gate.seal(topic, payload, self.gate.challenges.get(cid, b"")), None,
                                   None))
        return sent

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        client = self._client
        if client is not None and self.peers.broken is None:
            with contextlib.suppress(Exception):
                if self._claimed:
                    topic = self.t_presence(self.actor, self.client_id)
                    await asyncio.wait_for(client.publish(topic, self._seal(topic, wire.encode(
                        {"gone": self.client_id})), qos=1, retain=True), self.timeout)
        if self._inflight and self.peers.broken is None:
            with contextlib.suppress(Exception):
                await asyncio.wait(set(self._inflight), timeout=self.timeout)
        tasks = self._tasks + list(self._inflight)
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: on Python 3.11 a cancel that lands as aiomqtt's own wait_for
            # completes is lost, and such a task would never end (a close that hung).
            done, _ = await asyncio.wait(tasks, timeout=self.timeout)
            for task in done:
                task.cancelled() or task.exception()     # retrieved: no "never retrieved" noise
        with contextlib.suppress(Exception):
            # aiomqtt bounds its disconnect by the same timeout: wait past it, so the two
            # deadlines never race.
            await asyncio.wait_for(self._stack.aclose(), 2 * self.timeout + 1)

    # ---------------------------------------------------------------- background tasks

    async def _beat(self) -> None:
        topic = f"{self.prefix}/alive/{self.actor}"
        await self._client.publish(topic, self._seal(topic, wire.encode({"client": self.client_id})), qos=0)

    async def _heartbeat(self) -> None:
        me = asyncio.current_task()
        with contextlib.suppress(Exception):
            while not self._closed:
                await self._beat()
                if me.cancelling():
                    # Cancelled while aiomqtt's wait_for completed, which swallowed it
                    # (Python 3.11): stop beating all the same.
                    raise asyncio.CancelledError
                await asyncio.sleep(self.config.heartbeat)

    async def _reader(self) -> None:
        import aiomqtt

        try:
            async for _msg in self._client.messages:   # never yields: DispatchQueue dispatches
                pass
        except aiomqtt.MqttError as exc:
            if not self._closed:
                self._broker_lost(exc)
        except asyncio.CancelledError:
            raise

    def _broker_lost(self, exc: BaseException) -> None:
        lost = PeerLost(f"lost the MQTT broker at {self.config.display}: {reason(exc.__cause__ or exc)}",
                        "broker")
        self.peers.broken = lost
        for fut in self._sync.values():
            if not fut.done():
                fut.set_exception(lost)
        self.peers.lose("*", lost)
        self._requests.put_nowait(None)

    def _dispatch(self, msg) -> None:
        topic = str(msg.topic)
        parts = topic.split("/")
        # xmig/<run>/<a>/<b>[/<c>[/<d>]]
        kind = parts[2] if len(parts) > 2 else ""
        if (kind, len(parts)) in (("alive", 4), ("presence", 5), ("proof", 5), ("sync", 5)):
            pass
        elif kind == "events" and len(parts) == 4:
            if not self._event_cbs.get(parts[3]):
                return
        elif kind == "snapshot" and len(parts) == 4:
            self._snapshot(parts, topic, msg.payload)
            return
        elif len(parts) == 5 and parts[3] == "reply":
            kind = "reply"
        elif len(parts) == 4 and parts[3] == "rpc" and parts[2] == self.actor:
            kind = "rpc"
        else:
            return
        bind = b""
        corr = getattr(msg.properties, "CorrelationData", None) if kind in ("reply", "rpc") else None
        if kind == "reply":
            bind = self._req_tags.get(bytes(corr) if corr is not None else b"")
        opened = self.gate.open(topic, kind, parts, msg.payload, bind)
        if opened is None:
            return
        sender, payload = opened
        if kind == "alive":
            self.gate.heard(sender, payload, topic, parts[3])
        elif kind == "presence":
            self._presence(parts[3], parts[4], payload, topic)
        elif kind == "proof":
            self.gate.heard(sender, payload, topic, parts[3])
            self._proved(sender)
            self.peers.changed.set()
            self.peers.changed = asyncio.Event()
        elif kind == "sync":
            fut = self._sync.get(payload)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif kind == "events":
            self._events(parts[3], payload, topic)
        elif kind == "reply":
            entry = self.peers.pending.get(bytes(corr) if corr is not None else b"")
            self.peers.seen(parts[2])
            if entry is not None and not entry[1].done():
                try:
                    entry[1].set_result(wire.decode(payload))
                except wire.WireError as exc:
                    self._drop("oversized" if isinstance(exc, wire.FrameTooLarge) else "malformed", topic)
                    entry[1].set_exception(TransportError(f"{parts[2]}: {exc}"))
        elif kind == "rpc":
            tag = runkey.tag_of(msg.payload) if self.key is not None else b""
            self._requests.put_nowait((msg, sender, payload, tag))

    def _presence(self, actor: str, cid: str, payload: bytes, topic: str) -> None:
        """A hello or a claim (the client is on the run), or "gone" (its will, or its goodbye)."""
        claim = self._decode(payload, topic)
        if not isinstance(claim, dict):
            if claim is not None:
                self._drop("malformed", topic, "not a presence claim")
            return
        if self.gate.presence(actor, cid, claim, topic):
            # Our proof also tells a client that has just joined that we are live at once
            # (it would otherwise wait for our next heartbeat).
            self._prove()
        if actor == "watch" and claim.get("client") == cid and cid not in self.peers.gone:
            self._watcher_claimed(cid)

    # ---------------------------------------------------------------- RPC

    def serve(self, handler: Handler) -> None:
        self._handler = handler
        if self._claimed and not self._serving:
            self._serving = True

            async def subscribe_then_serve() -> None:
                await self._client.subscribe(self.t_rpc(self.actor), qos=1)
                await serve_requests(self)

            self._tasks.append(asyncio.ensure_future(subscribe_then_serve()))

    async def call(self, actor: str, method: str, args: dict | None = None) -> Any:
        if self.peers.broken is not None:
            raise self.peers.broken
        if self._closed:
            raise PeerLost(f"{self.actor} has left run {self.run_id!r}", self.actor)
        if actor in self.peers.present and not self.peers.present[actor]:
            raise PeerLost(f"{actor} left the run (its connection to the broker closed)", actor)
        corr = f"{next(self._ids)}".encode()
        fut = asyncio.get_running_loop().create_future()
        self.peers.pending[corr] = (actor, fut)
        props = self._Properties(self._PacketTypes.PUBLISH)
        props.ResponseTopic = f"{self.prefix}/{actor}/reply/{self.client_id}"
        props.CorrelationData = corr
        try:
            topic = self.t_rpc(actor)
            payload = self._seal(topic, wire.encode({"m": method, "a": args or {}, "from": self.actor}))
            if self.key is not None:
                self._req_tags[corr] = runkey.tag_of(payload)

            def failed(exc: BaseException) -> None:
                if not fut.done():
                    fut.set_exception(self.peers.broken or PeerLost(f"cannot send to {actor}: {exc}", actor))

            # Not awaited: the PUBACK overlaps the call, and a publish stuck on a dead
            # connection must not hold the call past the broker-lost notice.
            self._send(topic, payload, props, failed)
            reply = await _wait_reply(self.peers, fut, actor, self.timeout, self.config.call_limit)
        finally:
            self.peers.pending.pop(corr, None)
            self._req_tags.pop(corr, None)
        if not isinstance(reply, dict):
            raise TransportError(f"{actor}: the reply is not one this xmig knows")
        return _raise_reply(reply, actor)

    def _send(self, topic: str, payload: bytes, props,
              on_error: Callable[[BaseException], None] | None) -> asyncio.Task:
        """Publish QoS 1 in the background, in call order (tasks start FIFO)."""
        task = asyncio.ensure_future(self._client.publish(topic, payload, qos=1, properties=props))
        self._inflight.add(task)

        def done(t: asyncio.Task) -> None:
            self._inflight.discard(t)
            if t.cancelled():
                return
            exc = t.exception()
            if exc is not None:
                if on_error is not None:
                    on_error(exc)
                elif self.peers.broken is None:
                    log.warning("publish to %s failed: %s", topic, exc)

        task.add_done_callback(done)
        return task

    async def wait_for_peer(self, actor: str, timeout: float) -> None:
        """Until a client claiming ``actor`` is on the run and heartbeating."""
        deadline = time.monotonic() + timeout
        while not self.peers.live(actor, self.timeout):
            if self.peers.broken is not None:
                raise self.peers.broken
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PeerLost(f"no {actor} joined run {self.run_id!r} on {self.config.display} within "
                               f"{timeout:g} s{self.gate.stranger_note(actor)}: start `xmig {actor} --broker "
                               f"{self.config.display} --run {self.run_id}` (with the run's key)", actor)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.peers.changed.wait(), min(remaining, 0.1))

    # ---------------------------------------------------------------- events

    async def publish_events(self, items: list) -> int:
        if self.peers.broken is not None:
            raise self.peers.broken
        self._event_seq += 1
        topic = self.t_events(self.actor)
        await self._client.publish(topic, self._seal(topic, wire.encode({"seq": self._event_seq, "events": items})),
                                   qos=1)
        return self._event_seq

    async def subscribe_events(self, actor: str, callback: Callable[[list], None], *, join: bool = False) -> None:
        self._event_cbs.setdefault(actor, []).append(callback)
        if join:
            self._start_join(actor)
        await self._client.subscribe(self.t_events(actor), qos=1)
        if join:
            await self._client.subscribe(self.t_snapshot(actor), qos=1)

    def on_peer_lost(self, callback: Callable[[str, PeerLost], None]) -> None:
        self.peers.lost_callbacks.append(callback)


async def connect(config: BrokerConfig, run_id: str, actor: str) -> MqttTransport:
    """An ``MqttTransport`` for ``actor`` on ``run_id``, connected to the broker."""
    t = MqttTransport(config, run_id, actor)
    await t.start()
    return t


__all__ = ["MqttTransport", "BrokerConfig", "parse_broker_url", "connect", "DROP_REASONS", "RUN_KEY_PEER",
           "DEFAULT_TIMEOUT"]
