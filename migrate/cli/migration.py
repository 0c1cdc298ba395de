"""One migration as the command line runs it, what ``xl migrate`` does around
libxenguest's save (tools/xl/xl_migrate.c): in this process or driving the actors over
a broker, with its live view (the interactive app on a terminal, Xen-style progress
lines otherwise), and Ctrl-C, SIGTERM or SIGHUP aborting it cleanly."""

from __future__ import annotations

import asyncio
import functools
import gc
import sys
from typing import Any, Optional


def collect_after_start_up(fn):
    """Run a command with the cyclic garbage collector paused until its migration
    starts (``one_run`` resumes it): the start-up imports (numpy, pydantic's models,
    the simulator) make several hundred thousand long-lived objects, and the
    collections they would trigger find nothing to free (about a tenth of a small
    run's CPU). Resumed on every way out."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        was = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was:
                gc.enable()
    return wrapper


def _start_collecting() -> None:
    """What start-up made stays for the run: out of the collector's sight from here
    (``gc.freeze``), and the collector back on for what the run makes."""
    gc.freeze()
    gc.enable()


async def _run_with_interrupt(coro_fn):
    """Run ``coro_fn()`` so that Ctrl-C, SIGTERM or SIGHUP cancels it (the engine then
    aborts cleanly, resumes the source domain and removes a half-written stream file)
    instead of killing the process mid-stream."""
    task = asyncio.ensure_future(coro_fn())
    interrupted = {"yes": False}

    def on_stop() -> None:
        interrupted["yes"] = True
        task.cancel()

    from migrate.run import outputs

    with outputs.stop_on_signals(on_stop):
        result = await task
        for _ in range(3):       # a stop signal delivered just before the end still counts:
            await asyncio.sleep(0)   # the loop reads it, then calls on_stop, one turn each
    return result, interrupted["yes"]


def runner_for(remote: Optional[dict[str, Any]]):
    """``run(scenario, opts, *, bus, pacer)``: in this process, or driving the actors of
    ``remote`` (broker settings) over MQTT."""
    if remote is None:
        from migrate.run.runner import run_scenario

        return run_scenario
    from migrate.cli.broker import remote_run

    async def run(scenario, opts, *, bus, pacer):
        return await remote_run(scenario, opts, remote["broker"], remote["run_id"], bus, pacer,
                                username=remote["username"], password=remote["password"],
                                tls_ca=remote["tls_ca"], tls_insecure=remote["tls_insecure"],
                                timeout=remote["timeout"], key_file=remote["key_file"],
                                insecure=remote["insecure"])
    return run


def pacer_for(speed: Optional[float], *, detail: bool = False):
    """What the engine waits on between batches: a ``Pacer`` when ``speed`` asks for a
    pace, or when a listener wants the run as a live view sees it (``detail``: one
    ``BatchSent`` per batch and the counters sampled every COUNTER_SAMPLE_BATCHES, so a
    ``--record`` replays batch by batch and a ``--track`` story is told call by call);
    otherwise None, so nothing cuts the engine's spans short for a pace nobody keeps.
    The report, the CSV and the progress lines are the same either way."""
    if speed is None and not detail:
        return None
    from migrate.ui.playback import Pacer

    return Pacer(speed)


def one_run(scenario, opts, *, dashboard: bool, speed: Optional[float], console, record_map: bool,
            quiet: bool = False, remote: Optional[dict[str, Any]] = None, listeners=(),
            guided: bool = False, detail: bool = False):
    """One migration with its live view: the interactive app on a terminal, Xen-style
    progress lines otherwise (nothing with ``quiet``). ``remote`` holds the broker settings
    when the hypervisor and the guest are ``xmig hypervisor`` / ``xmig guest`` processes;
    ``listeners`` are subscribed to the run's events too; ``detail``: see ``pacer_for``.
    Returns (result, interrupted, recorder)."""
    run = runner_for(remote)
    _start_collecting()
    if dashboard:
        from migrate.ui.commands import interactive_run

        return interactive_run(scenario, opts, speed=speed, guided=guided, record_map=record_map, run=run,
                               listeners=listeners, detail=detail)
    from migrate.events import EventBus
    from migrate.ui.progress import PlainProgress

    bus = EventBus()
    pacer = pacer_for(speed, detail=detail)
    progress = recorder = None
    if not quiet:
        progress = PlainProgress(sys.stdout)
        bus.subscribe(progress)
    if record_map:
        from migrate.ui.gfnmap import GfnMapRecorder

        recorder = GfnMapRecorder()
        bus.subscribe(recorder)
    for fn in listeners:
        bus.subscribe(fn)

    async def go():
        return await run(scenario, opts, bus=bus, pacer=pacer)

    try:
        result, interrupted = asyncio.run(_run_with_interrupt(go))
    finally:
        if progress is not None:
            progress.close()
    return result, interrupted, recorder


