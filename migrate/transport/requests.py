"""The serving side of the MQTT transport's RPC: requests handled one at a time, in
arrival order (as a domain's domctls reach Xen one hypercall after another), each
answered on the caller's reply topic of this run, sealed and bound to its request.
"""

from __future__ import annotations

import asyncio

from migrate.errors import TransportError
from migrate.codec import wire
from migrate.transport.admission import actor_of
from migrate.transport.base import _error_reply


async def serve_requests(t) -> None:
    """Serve the requests ``t`` (an ``MqttTransport``) queued until it puts None."""
    while True:
        item = await t._requests.get()
        if item is None:
            return
        msg, sender, payload, tag = item
        props = msg.properties
        topic = getattr(props, "ResponseTopic", None)
        corr = getattr(props, "CorrelationData", None)
        req = t._decode(payload, str(msg.topic))
        if not (isinstance(req, dict) and isinstance(req.get("m"), str) and isinstance(req.get("a") or {}, dict)):
            if req is not None:
                t._drop("malformed", str(msg.topic), "not a request")
            reply = _error_reply(TransportError("the request did not decode"))
        else:
            caller = actor_of(sender) if sender is not None else str(req.get("from", "?"))
            t.peers.seen(caller)
            try:
                reply = {"ok": await t._handler(req["m"], req.get("a") or {}, caller)}
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reply = _error_reply(exc)
        if not isinstance(topic, str) or not topic.startswith(f"{t.prefix}/{t.actor}/reply/"):
            continue               # replies go to the caller's reply topic of this run only
        out = t._Properties(t._PacketTypes.PUBLISH)
        if corr is not None:
            out.CorrelationData = corr
        try:
            payload = wire.encode(reply)
        except TypeError as exc:
            payload = wire.encode(_error_reply(exc))
        t._send(topic, t._seal(topic, payload, bind=tag), out, None)


__all__ = ["serve_requests"]
