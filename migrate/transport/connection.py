"""Where the MQTT broker is and how to reach it: ``BrokerConfig`` from an
``mqtt://`` / ``mqtts://`` URL and the options, and one-line reasons for a connection
that failed (what ``xmig`` says instead of a paho traceback).

The broker stands in for the network between the hosts of a Xen pool (and for
xenstore's watches); see ``migrate.transport.mqtt``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from typing import Callable
from urllib.parse import unquote, urlsplit

from migrate.errors import BrokerUnreachable, TransportError
from migrate.transport.base import DEFAULT_CALL_LIMIT, DEFAULT_HEARTBEAT, DEFAULT_PEER_WAIT, DEFAULT_TIMEOUT


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


def reason(exc: BaseException) -> str:
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


def quiet_closed_socket_noise(loop: asyncio.AbstractEventLoop) -> None:
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


class _LateAckNoise(logging.Filter):
    """aiomqtt logs a traceback when a SUBACK or UNSUBACK comes back for a request this
    process stopped waiting for (a stop signal while an actor subscribes at start-up):
    nothing is wrong with the run, so it stays out of the user's terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith("Unexpected message ID")
                    and "subscribe callback" in record.msg)


PAHO_LOG = logging.getLogger("xmig.mqtt.paho")
PAHO_LOG.addFilter(_LateAckNoise())


def tls_context(cfg: BrokerConfig) -> ssl.SSLContext | None:
    """The TLS context of an ``mqtts://`` broker (None for ``mqtt://``)."""
    if not cfg.tls:
        return None
    ctx = ssl.create_default_context(cafile=cfg.tls_ca)
    if cfg.tls_insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def make_client(cfg: BrokerConfig, client_id: str, stack: contextlib.AsyncExitStack,
                      dispatch: Callable, on_bug: Callable[[str, str, str], None], *, will: tuple[str, bytes]):
    """An aiomqtt client (MQTT v5, TCP_NODELAY) connected to the broker, entered into
    ``stack``, that hands every incoming message to ``dispatch`` as it arrives (a bug
    there is counted through ``on_bug(reason, topic, detail)``); its retained will is
    ``will`` (topic, payload). ``BrokerUnreachable`` (one line) when it cannot connect."""
    import aiomqtt

    class DispatchQueue(asyncio.Queue):
        """aiomqtt's incoming queue, replaced by dispatch on arrival: no task and no
        queue hop per message (the reader only waits for a disconnection)."""

        def put_nowait(self, item) -> None:
            try:
                dispatch(item)
            except Exception as exc:   # a bug, or a message we did not foresee: counted
                on_bug("malformed", str(item.topic), f"{type(exc).__name__}: {str(exc)[:80]}")

    client = aiomqtt.Client(
        cfg.host, cfg.port, queue_type=DispatchQueue, username=cfg.username, password=cfg.password,
        identifier=client_id, protocol=aiomqtt.ProtocolVersion.V5,
        will=aiomqtt.Will(topic=will[0], payload=will[1], qos=1, retain=True),
        keepalive=cfg.keepalive, timeout=max(cfg.timeout, 1.0), tls_context=tls_context(cfg),
        tls_insecure=cfg.tls_insecure if cfg.tls else None,
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        logger=PAHO_LOG,
    )
    client.pending_calls_threshold = 1000
    try:
        await stack.enter_async_context(client)
    except (aiomqtt.MqttError, OSError) as exc:
        raise BrokerUnreachable(f"cannot reach the MQTT broker at {cfg.display}: {reason(exc)}") from None
    return client


__all__ = ["BrokerConfig", "parse_broker_url", "tls_context", "make_client", "reason", "quiet_closed_socket_noise"]
