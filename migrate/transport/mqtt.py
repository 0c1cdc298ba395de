"""The MQTT transport: ``Transport`` (``migrate.transport.base``) through a broker.

Xen's toolstack reaches the hypervisor through hypercalls (libxenctrl) and
xenstore; the project card's three actors reach each other through this instead. One
small interface, ``Transport``: ``serve`` a handler, ``call`` a peer's method, publish
and subscribe to event batches, and learn when a peer is lost. Two implementations:

- ``InProcessTransport``: actors as tasks of one event loop sharing an
  ``InProcessHub`` (optionally passing every message through the wire codec).
- ``MqttTransport``: aiomqtt, MQTT v5. Topics, all under ``xmig/<run-id>/``::

      <actor>/rpc                 requests (QoS 1; v5 response topic + correlation data)
      <actor>/reply/<client-id>   replies to one client (QoS 1)
      events/<actor>              event batches (QoS 1, in order)
      alive/<actor>               heartbeats (QoS 0, every ``heartbeat`` s)
      presence/<actor>/<client>   retained claim; the client's will replaces it with
                                  "gone", so a killed peer is seen at once and a
                                  second live actor (a second toolstack) on the same
                                  run id is refused

Every message is sealed with the run key (``migrate.transport.runkey``): what fails the seal, is
replayed, stale, from the wrong sender for its topic, or does not decode to a known
message is dropped and counted in ``MqttTransport.dropped`` (each reason logged once).
A reply is bound to its request. A claim counts only while its client heartbeats, so
a stale or replayed retained claim cannot squat a run id, and an empty retained
message (anyone may publish one) changes nothing.

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
import ssl
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

from migrate.errors import BrokerUnreachable, PeerLost, RunRefused, TransportError
from migrate.codec import wire
from migrate.transport import runkey
from migrate.transport.base import (ACTORS, DEFAULT_CALL_LIMIT, DEFAULT_HEARTBEAT, DEFAULT_PEER_WAIT, DEFAULT_TIMEOUT, Handler,
                   Transport, _error_reply, _Peers, _raise_reply, _wait_reply, check_run_id)

log = logging.getLogger("xmig.mqtt")


# ----------------------------------------------------------------------------- config


@dataclass(slots=True)
class BrokerConfig:
    """Where the broker is and how to talk to it (``mqtt://host:port`` or ``mqtts://``)."""

    url: str = "mqtt://127.0.0.1:1883"
    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    tls_insecure: bool = False
    timeout: float = DEFAULT_TIMEOUT        # RPC liveness: no sign of the callee for this long
    heartbeat: float = DEFAULT_HEARTBEAT
    peer_wait: float = DEFAULT_PEER_WAIT    # how long to wait for a peer to join the run
    call_limit: float = DEFAULT_CALL_LIMIT  # no call waits longer, even on a live peer
    keepalive: int = 10
    key: bytes | None = None                # the run key (runkey.load_key); None only with insecure
    insecure: bool = False                  # explicitly unauthenticated (--insecure)

    @property
    def display(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str, *, username: str | None = None, password: str | None = None,
                     tls_ca: str | None = None, tls_insecure: bool = False,
                     timeout: float = DEFAULT_TIMEOUT, key: bytes | None = None,
                     insecure: bool = False) -> BrokerConfig:
    """``mqtt://[user[:pass]@]host[:port]`` or ``mqtts://...``; options win over the URL.
    The password may also come from ``XMIG_MQTT_PASSWORD`` (kept out of ``ps``).
    ``key`` is the run key (``runkey.load_key``); without one, ``insecure`` must say so."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise TransportError(f"--broker: expected mqtt://HOST:PORT or mqtts://HOST:PORT, found {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise TransportError(f"--broker: bad port in {url!r}") from None
    if not parts.hostname:
        raise TransportError(f"--broker: no host in {url!r}")
    if parts.path not in ("", "/") or parts.query:
        raise TransportError(f"--broker: expected mqtt://HOST:PORT with no path, found {url!r}")
    tls = parts.scheme == "mqtts"
    if timeout <= 0:
        raise TransportError(f"--timeout: expected a positive number of seconds, found {timeout}")
    if tls_ca is not None and not os.path.isfile(tls_ca):
        raise TransportError(f"--tls-ca: no such file {tls_ca}")
    if (tls_ca or tls_insecure) and not tls:
        raise TransportError("--tls-ca/--tls-insecure need an mqtts:// broker URL")
    user = username if username is not None else (unquote(parts.username) if parts.username else None)
    pw = password if password is not None else (unquote(parts.password) if parts.password else None)
    if pw is None:
        pw = os.environ.get("XMIG_MQTT_PASSWORD") or None
    return BrokerConfig(url=url, host=parts.hostname, port=port or (8883 if tls else 1883), tls=tls,
                        username=user, password=pw, tls_ca=tls_ca, tls_insecure=tls_insecure,
                        timeout=float(timeout), peer_wait=max(DEFAULT_PEER_WAIT, 2 * float(timeout)),
                        key=key, insecure=bool(insecure))


# ----------------------------------------------------------------------------- MQTT


def _reason(exc: BaseException) -> str:
    text = str(exc)
    low = text.lower()
    if "refused" in low and "errno" in low:
        return "connection refused"
    if "timed out" in low:
        return "timed out"
    if "name or service not known" in low or "nodename nor servname" in low:
        return "unknown host"
    if "not authorized" in low or "bad user name or password" in low:
        return "not authorised (check --username/--password)"
    if "certificate" in low or "ssl" in low:
        return f"TLS failed ({text}); check --tls-ca or --tls-insecure"
    if "[code:" in low or "unexpected disconnect" in low or "disconnected" in low:
        return "the connection closed"
    return text


def _quiet_closed_socket_noise(loop: asyncio.AbstractEventLoop) -> None:
    """paho asks the loop to watch a socket that a lost broker already closed; asyncio
    then logs a harmless EBADF traceback. Keep it out of the user's terminal."""
    previous = loop.get_exception_handler()

    def handler(lp, context) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno == 9 and "add_" in repr(context.get("handle", "")):
            return
        if previous is not None:
            previous(lp, context)
        else:
            lp.default_exception_handler(context)

    if getattr(previous, "__name__", "") != "handler":
        loop.set_exception_handler(handler)


#: Why a message was dropped, as the counters name it.
DROP_REASONS = {
    "unsigned": "not sealed with a run key",
    "forged": "sealed with another key (or altered)",
    "replayed": "a sequence number already seen from its sender",
    "stale": f"stamped more than {runkey.MAX_AGE:g} s away from this clock",
    "wrong-sender": "sent by another actor than its topic belongs to",
    "malformed": "not a message this xmig knows",
    "oversized": "arrays larger than the frame justifies",
    "empty": "an empty (retained-clearing) message",
}


def _actor_of(client_id: str) -> str:
    """``xmig-<actor>-<hex>`` -> ``<actor>`` (client ids are made by ``MqttTransport``)."""
    parts = client_id.split("-")
    return parts[1] if len(parts) == 3 and parts[0] == "xmig" else ""


class MqttTransport(Transport):
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
        self.prefix = f"xmig/{run_id}"
        self._client = None
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task] = []
        self._handler: Handler | None = None
        self._requests: asyncio.Queue = asyncio.Queue()
        self._event_cbs: dict[str, list[Callable[[list], None]]] = {}
        self._sync: dict[bytes, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._seq = itertools.count(1)
        self._window = runkey.ReplayWindow()
        self._req_tags: dict[bytes, bytes] = {}
        self._closed = False
        self._claimed = False
        self._serving = False
        self._inflight: set[asyncio.Task] = set()
        self._event_seq = 0
        #: Messages dropped, by reason (``DROP_REASONS``); each reason is logged once.
        self.dropped: collections.Counter = collections.Counter()
        #: Event batches missed per actor (a gap in its batch numbers).
        self.events_missed: collections.Counter = collections.Counter()
        self._events_last: dict[str, int] = {}

    # ---------------------------------------------------------------- topics

    def t_rpc(self, actor: str) -> str:
        return f"{self.prefix}/{actor}/rpc"

    def t_presence(self, actor: str, cid: str = "+") -> str:
        return f"{self.prefix}/presence/{actor}/{cid}"

    def t_events(self, actor: str) -> str:
        return f"{self.prefix}/events/{actor}"

    # ---------------------------------------------------------------- sealing

    def _seal(self, topic: str, payload: bytes, bind: bytes = b"") -> bytes:
        if self.key is None:
            return payload
        return runkey.seal(self.key, topic, self.client_id, next(self._seq), payload, bind=bind)

    def _drop(self, reason: str, topic: str, detail: str = "") -> None:
        self.dropped[reason] += 1
        if self.dropped[reason] == 1:
            log.warning("%s dropped a message on %s: %s%s (further ones are counted, not logged)",
                        self.actor, topic, DROP_REASONS.get(reason, reason), f" ({detail})" if detail else "")

    def rejected(self) -> dict:
        return {"authenticated": self.key is not None, "dropped": dict(self.dropped)}

    def drop_summary(self) -> str:
        """``3 unsigned, 1 replayed`` (empty when nothing was dropped)."""
        return ", ".join(f"{n} {r}" for r, n in sorted(self.dropped.items()))

    def _decode(self, payload, topic: str) -> Any:
        """The message, or None (dropped and counted) if it is not one this xmig knows."""
        try:
            return wire.decode(payload)
        except wire.FrameTooLarge as exc:
            self._drop("oversized", topic, str(exc))
        except wire.WireError as exc:
            self._drop("malformed", topic, str(exc))
        return None

    # ---------------------------------------------------------------- lifecycle

    def _tls_context(self) -> ssl.SSLContext | None:
        cfg = self.config
        if not cfg.tls:
            return None
        ctx = ssl.create_default_context(cafile=cfg.tls_ca)
        if cfg.tls_insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    async def start(self) -> None:
        import aiomqtt
        from paho.mqtt.properties import Properties
        from paho.mqtt.packettypes import PacketTypes

        self._Properties, self._PacketTypes = Properties, PacketTypes
        cfg = self.config
        me = self.t_presence(self.actor, self.client_id)
        # The will says "gone" (sealed now, so it needs no key when the broker sends it);
        # never an empty message, which anyone could publish.
        will = aiomqtt.Will(topic=me, payload=self._seal(me, wire.encode({"gone": self.client_id})), qos=1,
                            retain=True)
        transport = self

        class DispatchQueue(asyncio.Queue):
            """aiomqtt's incoming queue, replaced by dispatch on arrival: no task and no
            queue hop per message (the reader only waits for a disconnection)."""

            def put_nowait(self, item) -> None:
                try:
                    transport._dispatch(item)
                except Exception as exc:   # a bug, or a message we did not foresee: counted
                    transport._drop("malformed", str(item.topic), f"{type(exc).__name__}: {str(exc)[:80]}")

        client = aiomqtt.Client(
            cfg.host, cfg.port, queue_type=DispatchQueue, username=cfg.username, password=cfg.password,
            identifier=self.client_id, protocol=aiomqtt.ProtocolVersion.V5, will=will,
            keepalive=cfg.keepalive, timeout=max(cfg.timeout, 1.0), tls_context=self._tls_context(),
            tls_insecure=cfg.tls_insecure if cfg.tls else None,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            logger=logging.getLogger("xmig.mqtt.paho"),
        )
        client.pending_calls_threshold = 1000
        try:
            await self._stack.enter_async_context(client)
        except aiomqtt.MqttError as exc:
            raise BrokerUnreachable(f"cannot reach the MQTT broker at {cfg.display}: {_reason(exc)}") from None
        except OSError as exc:
            raise BrokerUnreachable(f"cannot reach the MQTT broker at {cfg.display}: {_reason(exc)}") from None
        self._client = client
        _quiet_closed_socket_noise(asyncio.get_running_loop())
        self._tasks.append(asyncio.ensure_future(self._reader()))
        await client.subscribe([
            (f"{self.prefix}/+/reply/{self.client_id}", 1),
            (f"{self.prefix}/presence/#", 1),
            (f"{self.prefix}/alive/+", 0),
            (f"{self.prefix}/sync/{self.client_id}", 1),
        ])
        self._tasks.append(asyncio.ensure_future(self._heartbeat()))
        await self._barrier()

    async def _barrier(self) -> None:
        """Publish to ourselves and wait for it: by then the broker has sent us every
        retained presence claim (it sends them before handling our later publish)."""
        key = uuid.uuid4().bytes
        fut = asyncio.get_running_loop().create_future()
        self._sync[key] = fut
        topic = f"{self.prefix}/sync/{self.client_id}"
        try:
            await self._client.publish(topic, self._seal(topic, key), qos=1)
            await _wait_reply(self.peers, fut, "the MQTT broker", self.timeout)
        except PeerLost:
            raise BrokerUnreachable(f"the MQTT broker at {self.config.display} did not answer within "
                                    f"{self.timeout:g} s") from None
        finally:
            self._sync.pop(key, None)

    async def claim(self) -> None:
        others = self.peers.present.get(self.actor, set()) - {self.client_id}
        if others:
            # A claim counts only while its client heartbeats: a retained claim of a
            # client that is gone (or a replayed one) must not squat the run id.
            deadline = time.monotonic() + self.timeout
            while True:
                live = self.peers.live(self.actor, self.timeout) - {self.client_id}
                if live:
                    raise RunRefused(f"run id {self.run_id!r} already has a {self.actor} ({sorted(live)[0]}) "
                                     f"on {self.config.display}; choose another --run")
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.05)
            log.warning("ignored a claim of %s on run %r by %s, which has not been heard from for %g s",
                        self.actor, self.run_id, ", ".join(sorted(others)), self.timeout)
            for cid in others:
                self.peers.present[self.actor].discard(cid)
                self.peers.gone.add(cid)
        if self._handler is not None and not self._serving:
            # Subscribed before the claim is visible: no request can reach us unheard.
            await self._client.subscribe(self.t_rpc(self.actor), qos=1)
            self._serving = True
            self._tasks.append(asyncio.ensure_future(self._serve_loop()))
        topic = self.t_presence(self.actor, self.client_id)
        await self._client.publish(topic, self._seal(topic, wire.encode(
            {"actor": self.actor, "client": self.client_id, "pid": os.getpid(), "host": socket.gethostname()})),
            qos=1, retain=True)
        self._claimed = True

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

    def _greet(self) -> None:
        """Beat once now, for a client that has just joined: it counts us as live only
        once it hears a beat, and it may have subscribed just after our last one (it
        would otherwise wait up to a whole heartbeat period)."""
        async def beat_once() -> None:
            with contextlib.suppress(Exception):
                await self._beat()
        if self._client is not None and not self._closed:
            task = asyncio.ensure_future(beat_once())
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

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
        lost = PeerLost(f"lost the MQTT broker at {self.config.display}: {_reason(exc.__cause__ or exc)}",
                        "broker")
        self.peers.broken = lost
        for fut in self._sync.values():
            if not fut.done():
                fut.set_exception(lost)
        self.peers.lose("*", lost)
        self._requests.put_nowait(None)

    def _open(self, msg, topic: str, kind: str, parts: list[str]) -> tuple[str | None, bytes, bytes] | None:
        """(sender, payload, tag) of a message whose seal and sender check out; None
        (dropped and counted) otherwise. Without a key: (None, payload, b"")."""
        payload = msg.payload
        if not payload:
            self._drop("empty", topic)
            return None
        if self.key is None:
            return None, payload, b""
        bind = b""
        if kind == "reply":
            corr = getattr(msg.properties, "CorrelationData", None)
            bind = self._req_tags.get(bytes(corr) if corr is not None else b"")
            if bind is None:
                return None            # a reply to no call of ours (or one that timed out)
        try:
            opened = runkey.unseal(self.key, topic, payload, bind=bind,
                                   max_age=None if kind == "presence" else runkey.MAX_AGE)
        except runkey.SealError as exc:
            self._drop(exc.reason, topic)
            return None
        sender = opened.sender
        if kind == "presence":
            ok = sender == parts[4] and _actor_of(sender) == parts[3]
        elif kind in ("alive", "events"):
            ok = _actor_of(sender) == parts[3]
        elif kind == "reply":
            ok = _actor_of(sender) == parts[2]
        elif kind == "sync":
            ok = sender == self.client_id
        else:   # rpc: any actor of the run may call
            ok = _actor_of(sender) in ACTORS
        if not ok:
            self._drop("wrong-sender", topic, sender[:60])
            return None
        if kind != "presence" and not self._window.accept(sender, opened.seq):
            # (Presence is state, not a stream: a claim or "gone" may be delivered
            # again, retained, and means the same.)
            self._drop("replayed", topic)
            return None
        return sender, bytes(opened.payload), opened.tag

    def _dispatch(self, msg) -> None:
        topic = str(msg.topic)
        parts = topic.split("/")
        # xmig/<run>/<a>/<b>[/<c>]
        kind = parts[2] if len(parts) > 2 else ""
        if kind == "alive" and len(parts) == 4:
            pass
        elif kind == "presence" and len(parts) == 5:
            pass
        elif kind == "sync" and len(parts) == 4:
            pass
        elif kind == "events" and len(parts) == 4:
            if not self._event_cbs.get(parts[3]):
                return
        elif len(parts) == 5 and parts[3] == "reply":
            kind = "reply"
        elif len(parts) == 4 and parts[3] == "rpc" and parts[2] == self.actor:
            kind = "rpc"
        else:
            return
        opened = self._open(msg, topic, kind, parts)
        if opened is None:
            return
        sender, payload, tag = opened
        if kind == "alive":
            if sender is None:
                beat = self._decode(payload, topic)
                sender = beat.get("client") if isinstance(beat, dict) else None
                if not isinstance(sender, str):
                    return
            self.peers.seen(parts[3])
            self.peers.heard[sender] = time.monotonic()
        elif kind == "presence":
            self._presence(parts[3], parts[4], payload, topic)
        elif kind == "sync":
            fut = self._sync.get(payload)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif kind == "events":
            batch = self._decode(payload, topic)
            if not (isinstance(batch, dict) and isinstance(batch.get("events"), list)):
                if batch is not None:
                    self._drop("malformed", topic, "not an event batch")
                return
            seq, last = batch.get("seq"), self._events_last.get(parts[3])
            if isinstance(seq, int):
                if last is not None and seq > last + 1:
                    self.events_missed[parts[3]] += seq - last - 1
                self._events_last[parts[3]] = seq
            for cb in self._event_cbs.get(parts[3], ()):
                cb(batch["events"])
        elif kind == "reply":
            corr = getattr(msg.properties, "CorrelationData", None)
            entry = self.peers.pending.get(bytes(corr) if corr is not None else b"")
            self.peers.seen(parts[2])
            if entry is not None and not entry[1].done():
                try:
                    entry[1].set_result(wire.decode(payload))
                except wire.WireError as exc:
                    self._drop("oversized" if isinstance(exc, wire.FrameTooLarge) else "malformed", topic)
                    entry[1].set_exception(TransportError(f"{parts[2]}: {exc}"))
        elif kind == "rpc":
            self._requests.put_nowait((msg, sender, payload, tag))

    def _presence(self, actor: str, cid: str, payload: bytes, topic: str) -> None:
        """A claim (the client is on the run) or "gone" (its will, or its goodbye)."""
        claim = self._decode(payload, topic)
        if not isinstance(claim, dict):
            if claim is not None:
                self._drop("malformed", topic, "not a presence claim")
            return
        members = self.peers.present.setdefault(actor, set())
        if claim.get("gone") == cid:
            self.peers.gone.add(cid)
            if cid in members:
                members.discard(cid)
                if cid != self.client_id and not members:
                    self.peers.lose(actor, PeerLost(
                        f"{actor} left the run (its connection to the broker closed)", actor))
            return
        if claim.get("client") != cid or claim.get("actor") != actor:
            self._drop("malformed", topic, "a claim for another client")
            return
        if cid in self.peers.gone:
            return                     # a client that left does not come back
        if cid not in members and cid != self.client_id:
            self._greet()
        members.add(cid)
        self.peers.seen(actor)
        self.peers.changed.set()
        self.peers.changed = asyncio.Event()

    # ---------------------------------------------------------------- RPC

    def serve(self, handler: Handler) -> None:
        self._handler = handler
        if self._claimed and not self._serving:
            self._serving = True

            async def subscribe_then_serve() -> None:
                await self._client.subscribe(self.t_rpc(self.actor), qos=1)
                await self._serve_loop()

            self._tasks.append(asyncio.ensure_future(subscribe_then_serve()))

    async def _serve_loop(self) -> None:
        while True:
            item = await self._requests.get()
            if item is None:
                return
            msg, sender, payload, tag = item
            props = msg.properties
            topic = getattr(props, "ResponseTopic", None)
            corr = getattr(props, "CorrelationData", None)
            req = self._decode(payload, str(msg.topic))
            if not (isinstance(req, dict) and isinstance(req.get("m"), str) and isinstance(req.get("a") or {}, dict)):
                if req is not None:
                    self._drop("malformed", str(msg.topic), "not a request")
                reply = _error_reply(TransportError("the request did not decode"))
            else:
                caller = _actor_of(sender) if sender is not None else str(req.get("from", "?"))
                self.peers.seen(caller)
                try:
                    reply = {"ok": await self._handler(req["m"], req.get("a") or {}, caller)}
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    reply = _error_reply(exc)
            if not isinstance(topic, str) or not topic.startswith(f"{self.prefix}/{self.actor}/reply/"):
                continue               # replies go to the caller's reply topic of this run only
            out = self._Properties(self._PacketTypes.PUBLISH)
            if corr is not None:
                out.CorrelationData = corr
            try:
                payload = wire.encode(reply)
            except TypeError as exc:
                payload = wire.encode(_error_reply(exc))
            self._send(topic, self._seal(topic, payload, bind=tag), out, None)

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

    def _send(self, topic: str, payload: bytes, props, on_error: Callable[[BaseException], None] | None) -> None:
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

    async def wait_for_peer(self, actor: str, timeout: float) -> None:
        """Until a client claiming ``actor`` is on the run and heartbeating."""
        deadline = time.monotonic() + timeout
        while not self.peers.live(actor, self.timeout):
            if self.peers.broken is not None:
                raise self.peers.broken
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PeerLost(f"no {actor} joined run {self.run_id!r} on {self.config.display} within "
                               f"{timeout:g} s: start `xmig {actor} --broker {self.config.display} "
                               f"--run {self.run_id}` (with the run's key)", actor)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.peers.changed.wait(), min(remaining, 0.1))

    # ---------------------------------------------------------------- events

    async def publish_events(self, items: list) -> None:
        if self.peers.broken is not None:
            raise self.peers.broken
        self._event_seq += 1
        topic = self.t_events(self.actor)
        await self._client.publish(topic, self._seal(topic, wire.encode({"seq": self._event_seq, "events": items})),
                                   qos=1)

    async def subscribe_events(self, actor: str, callback: Callable[[list], None]) -> None:
        self._event_cbs.setdefault(actor, []).append(callback)
        await self._client.subscribe(self.t_events(actor), qos=1)

    def on_peer_lost(self, callback: Callable[[str, PeerLost], None]) -> None:
        self.peers.lost_callbacks.append(callback)


async def connect(config: BrokerConfig, run_id: str, actor: str) -> MqttTransport:
    """An ``MqttTransport`` for ``actor`` on ``run_id``, connected to the broker."""
    t = MqttTransport(config, run_id, actor)
    await t.start()
    return t


__all__ = ["MqttTransport", "BrokerConfig", "parse_broker_url", "connect", "DROP_REASONS"]
