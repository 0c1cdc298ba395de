"""Wiring: an actor process (``run_actor``), the toolstack against remote actors
(``remote_run``), and the three actors on one in-process hub."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from migrate.errors import PeerLost, TransportError
from migrate.events import Event, EventBus, MigrationFinished, VerifyDone
from migrate.transport.base import InProcessHub, InProcessTransport, Transport
from migrate.transport.mqtt import RUN_KEY_PEER, BrokerConfig, connect
from migrate.actors.guest import serve_guest
from migrate.actors.hypervisor import serve_hypervisor
from migrate.actors.toolstack import RemoteSource

log = logging.getLogger("xmig.actors")


async def run_actor(kind: str, config: BrokerConfig, run_id: str, *, scenario=None,
                    echo: Callable[[str], None] | None = None, serve: bool = False,
                    runs: int | None = None) -> str:
    """``xmig hypervisor`` / ``xmig guest``: connect, serve until done, disconnect.
    With ``serve``, again for the next run on the same connection (a fresh domain or
    guest each time: nothing of one run leaks into the next), ``runs`` times (None:
    until cancelled). Returns why the last run ended."""
    transport = await connect(config, run_id, kind)
    done = 0
    try:
        while True:
            if echo is not None:
                waiting = "a toolstack" if kind == "hypervisor" else "the hypervisor"
                nth = f" (run {done + 1})" if serve else ""
                echo(f"{kind} on run {run_id!r} at {config.display}: waiting for {waiting}{nth}")
            transport.peers.lost_callbacks.clear()      # the last run's actor listens no more
            if kind == "hypervisor":
                why = await serve_hypervisor(transport, echo=echo)
            else:
                why = await serve_guest(scenario, transport)
            done += 1
            if transport.peers.broken is not None or not serve or (runs is not None and done >= runs):
                return why
            if echo is not None and kind == "guest" and why != "released":
                echo(why)
    finally:
        await transport.close()
        if getattr(transport, "dropped", None) and echo is not None:
            echo(f"{kind} dropped messages that were not this run's: {transport.drop_summary()}")


async def remote_run(scenario, opts=None, *, broker: BrokerConfig | None = None, run_id: str = "xmig",
                     bus: EventBus | None = None, pacer=None, transport: Transport | None = None):
    """``xmig run --broker URL --run ID``: the toolstack against remote actors.

    Claims the run id (a second toolstack is refused with ``RunRefused``), runs
    ``run_scenario`` with a ``RemoteSource``, and returns its ``RunResult``. Setup
    problems raise ``TransportError`` (``BrokerUnreachable``, ``PeerLost``...)."""
    from migrate.run.runner import run_scenario

    bus = bus or EventBus()
    own = transport is None
    if own:
        if broker is None:
            raise TransportError("remote_run needs a broker or a transport")
        transport = await connect(broker, run_id, "toolstack")
    try:
        await transport.claim()

        def factory(sc, *, behaviour, seed, bus, host_frames):
            return RemoteSource(transport, sc, behaviour=behaviour, seed=seed, bus=bus, host_frames=host_frames)

        result = await run_scenario(scenario, opts, bus=bus, pacer=pacer, source_factory=factory)
        broker_view = transport.rejected()
        if broker_view is not None:
            # Not part of the migration's result (it is the same as embedded): what the
            # broker threw at the toolstack that the run key kept out.
            result.broker = broker_view
        return result
    finally:
        if own:
            await transport.close()


async def watch(transport: Transport, listener: Callable[[Event], None], *,
                stop_when_finished: bool = True, ready: asyncio.Event | None = None) -> str:
    """Feed the toolstack's event topic to ``listener`` (any bus listener) until the
    run finishes or the toolstack goes. Returns ``"completed"`` only for a completed
    migration whose destination was verified equal to the source, every event batch of
    the toolstack's session seen from its first one on, sealed with the run key; else
    what happened. The watcher claims its place on the run (once subscribed), so the
    toolstack proves itself to it and tells it its session: batches of any other
    session, or from a client that never proved itself, are dropped. ``RunRefused``
    when this watcher runs ``--insecure`` on a sealed run (one line, not a silent wait)."""
    from migrate.errors import RunRefused

    done: asyncio.Future = asyncio.get_running_loop().create_future()
    verified: list[VerifyDone] = []

    def verdict(ev: MigrationFinished) -> str:
        if ev.outcome != "completed":
            return f"{ev.outcome}: {ev.message}" if ev.message else ev.outcome
        batches = getattr(transport, "batches", None)
        missed = getattr(transport, "events_missed", {}).get("toolstack", 0)
        if batches is not None and not batches.saw_start("toolstack"):
            return (f"completed, but this watcher joined after the run began ({missed} event batches of the "
                    "toolstack came before it): no verdict for a run it did not see from the start")
        if missed:
            return f"completed, but {missed} event batches of the toolstack never arrived: no verdict to trust"
        if getattr(transport, "key", b"") is None:
            return "completed, but unauthenticated (--insecure): anyone on the broker could have sent these events"
        if not verified:
            return "completed, but no destination check was seen"
        st = verified[-1].stats
        if not st.ok:
            return (f"completed, but the destination diverged: {st.missing_pages} missing, {st.stale_pages} "
                    f"stale, {st.extra_pages} extra pages")
        return "completed"

    def on_batch(items: list) -> None:
        for ev in items:
            listener(ev)
            if isinstance(ev, VerifyDone):
                verified.append(ev)
            if isinstance(ev, MigrationFinished) and stop_when_finished and not done.done():
                done.set_result(verdict(ev))

    def lost(peer: str, exc: PeerLost) -> None:
        if done.done():
            return
        if peer == RUN_KEY_PEER:
            done.set_exception(RunRefused(str(exc)))
        elif peer in ("toolstack", "*"):
            done.set_result(f"stopped: {exc}")

    transport.on_peer_lost(lost)
    await transport.subscribe_events("toolstack", on_batch, join=True)
    await transport.claim()
    if ready is not None:
        ready.set()
    return await done


def in_process_actors(*, codec: bool = True, timeout: float = 5.0, run_id: str = "local"):
    """Three InProcessTransports on one hub (tests, and the same code paths without a broker)."""
    hub = InProcessHub(codec=codec)
    return tuple(InProcessTransport(hub, run_id, a, timeout=timeout) for a in ("toolstack", "hypervisor", "guest"))
