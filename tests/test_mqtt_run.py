"""The three actors over a real Mosquitto give the embedded run's report and stream,
and every fault (broker down or lost, an actor killed, a second toolstack) ends in a
clear error or an aborted migration within seconds, with the source domain resumed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from migrate import mqtt
from migrate.bus import BrokerUnreachable, InProcessHub, InProcessTransport, RunRefused, parse_broker_url
from migrate.events import BatchSent, EventBus, PhaseChanged
from migrate.report import build_report
from migrate.runner import RunOptions, run_scenario
from migrate.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def scenario(name: str):
    return load_scenario(EXAMPLES / f"{name}.yaml")


def comparable(result) -> dict:
    rep = build_report(result)
    rep.pop("wall", None)
    return rep


def cfg_for(broker, timeout: float = 3.0):
    cfg = parse_broker_url(broker.url, timeout=timeout)
    cfg.heartbeat = 0.25
    return cfg


def actor_command(kind: str, broker, run: str, *extra: str) -> list[str]:
    """``python -m migrate <kind> ...`` once the lead's ``xmig`` registers the MQTT commands,
    else the same commands from ``python -m migrate.cli_mqtt``."""
    from migrate.cli import app

    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    module = "migrate" if kind in names else "migrate.cli_mqtt"
    return [sys.executable, "-m", module, kind, "--broker", broker.url, "--run", run, "--timeout", "3", *extra]


class Procs:
    """Actor subprocesses; anything still running at the end is killed and reported."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        p = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        self.procs[name] = p
        return p

    def wait(self, name: str, timeout: float = 10.0) -> tuple[int, str]:
        p = self.procs[name]
        try:
            _out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            _out, err = p.communicate()
            pytest.fail(f"{name} did not exit within {timeout} s (orphan): {err}")
        return p.returncode, err

    def cleanup(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.communicate()


@pytest.fixture
def procs():
    p = Procs()
    try:
        yield p
    finally:
        p.cleanup()


async def start_actor_tasks(cfg, run, sc, box=None):
    hv_t = await mqtt.mqtt_transport(cfg, run, "hypervisor")
    g_t = await mqtt.mqtt_transport(cfg, run, "guest")

    async def serve(coro, transport):
        try:
            return await coro
        finally:
            await transport.close()

    hv = asyncio.ensure_future(serve(mqtt.serve_hypervisor(hv_t, actor_box=box), hv_t))
    g = asyncio.ensure_future(serve(mqtt.serve_guest(sc, g_t), g_t))
    return hv, g


# ----------------------------------------------------------------------------- equality


@pytest.mark.mqtt
@pytest.mark.parametrize("name", ["balloon", "idle"])
async def test_report_and_stream_over_mqtt_equal_the_embedded_run(mqtt_broker, tmp_path, name):
    sc = scenario(name)
    stream = tmp_path / f"{name}.stream"
    emb = await run_scenario(sc, RunOptions(stream=str(stream)))
    stream.unlink()
    cfg = cfg_for(mqtt_broker)
    hv, g = await start_actor_tasks(cfg, f"eq-{name}", sc)
    rem = await mqtt.remote_run(sc, RunOptions(stream=str(stream)), broker=cfg, run_id=f"eq-{name}")
    stream.unlink()
    assert rem.save.outcome == "completed" and rem.ok
    assert comparable(rem) == comparable(emb)
    assert rem.stream["sha256"] == emb.stream["sha256"]
    assert await asyncio.wait_for(hv, 5) == "released"
    assert await asyncio.wait_for(g, 5) == "released"


@pytest.mark.parametrize("name,behaviour", [("balloon", "pre-fix"), ("pod-boot", None), ("nonconverging", None)])
async def test_in_process_transport_runs_the_same_code_paths_to_the_same_report(name, behaviour):
    sc = scenario(name)
    opts = RunOptions(behaviour=behaviour)
    emb = await run_scenario(sc, opts)
    hub = InProcessHub(codec=True)
    ts, hvt, gt = (InProcessTransport(hub, "local", a) for a in ("toolstack", "hypervisor", "guest"))
    hv = asyncio.ensure_future(mqtt.serve_hypervisor(hvt))
    g = asyncio.ensure_future(mqtt.serve_guest(sc, gt))
    rem = await mqtt.remote_run(sc, opts, transport=ts)
    assert comparable(rem) == comparable(emb)
    if behaviour == "pre-fix":
        assert rem.verify is not None and not rem.verify.ok    # stale or missing pages, as embedded
    assert await hv == "released" and await g == "released"


@pytest.mark.mqtt
async def test_watch_renders_the_same_final_dashboard(mqtt_broker):
    from rich.console import Console

    from migrate.cli_mqtt import watch_run
    from migrate.dashboard import Dashboard

    def text(dash) -> str:
        console = Console(record=True, width=140, color_system=None, file=open(os.devnull, "w"))
        console.print(dash.render())
        return console.export_text()

    sc = scenario("idle")
    local = Dashboard()
    bus = EventBus()
    bus.subscribe(local)
    await run_scenario(sc, RunOptions(), bus=bus)

    cfg = cfg_for(mqtt_broker)
    watched = Dashboard()
    subscribed = asyncio.Event()
    watcher = asyncio.ensure_future(watch_run(cfg, "w", dashboard=watched, ready=subscribed))
    await asyncio.wait_for(subscribed.wait(), 10)
    hv, g = await start_actor_tasks(cfg, "w", sc)
    await mqtt.remote_run(sc, RunOptions(), broker=cfg, run_id="w")
    assert await asyncio.wait_for(watcher, 5) == "completed"
    assert text(watched) == text(local)
    await asyncio.gather(hv, g)


# ----------------------------------------------------------------------------- faults


@pytest.mark.mqtt
async def test_broker_down_at_start_is_one_line_and_exit_2(mqtt_broker, procs):
    port = mqtt_broker.port
    mqtt_broker.kill()
    cfg = parse_broker_url(f"mqtt://127.0.0.1:{port}")
    with pytest.raises(BrokerUnreachable, match=f"^cannot reach the MQTT broker at mqtt://127.0.0.1:{port}: "
                                                "connection refused$"):
        await mqtt.remote_run(scenario("idle"), RunOptions(), broker=cfg, run_id="down")
    procs.start("hypervisor", actor_command("hypervisor", mqtt_broker, "down"))
    rc, err = procs.wait("hypervisor")
    assert rc == 2
    assert err.strip().splitlines()[-1] == \
        f"xmig: error: cannot reach the MQTT broker at mqtt://127.0.0.1:{port}: connection refused"


@pytest.mark.mqtt
async def test_broker_lost_mid_run_aborts_and_the_hypervisor_resumes_the_source(mqtt_broker):
    sc = scenario("idle")
    cfg = cfg_for(mqtt_broker)
    box: list = []
    hv, g = await start_actor_tasks(cfg, "lost", sc, box)
    bus = EventBus()

    def kill_in_final_pass(ev) -> None:
        if isinstance(ev, PhaseChanged) and ev.phase == "final":
            mqtt_broker.kill()      # the domain is suspended now

    bus.subscribe(kill_in_final_pass)
    t0 = time.monotonic()
    res = await mqtt.remote_run(sc, RunOptions(), broker=cfg, run_id="lost", bus=bus)
    assert time.monotonic() - t0 < 15
    assert res.save.outcome == "aborted"
    assert "lost the MQTT broker at mqtt://127.0.0.1" in res.save.error
    assert build_report(res)["outcome"] == "aborted"
    why = await asyncio.wait_for(hv, 10)
    assert "source domain resumed" in why
    assert box[0].hv.state == "running" and not box[0].hv.log_dirty_enabled
    assert "lost the MQTT broker" in await asyncio.wait_for(g, 10)


@pytest.mark.mqtt
@pytest.mark.parametrize("victim", ["guest", "hypervisor"])
async def test_killed_actor_process_aborts_the_migration(mqtt_broker, procs, victim):
    sc = scenario("idle")
    run = f"kill-{victim}"
    procs.start("hypervisor", actor_command("hypervisor", mqtt_broker, run))
    procs.start("guest", actor_command("guest", mqtt_broker, run, "--guest", str(EXAMPLES / "idle.yaml")))
    bus = EventBus()
    batches = []

    def kill_after_some_batches(ev) -> None:
        if isinstance(ev, BatchSent):
            batches.append(ev)
            if len(batches) == 20:
                os.kill(procs.procs[victim].pid, signal.SIGKILL)

    bus.subscribe(kill_after_some_batches)
    t0 = time.monotonic()
    res = await mqtt.remote_run(sc, RunOptions(), broker=cfg_for(mqtt_broker), run_id=run, bus=bus)
    assert time.monotonic() - t0 < 20
    assert res.save.outcome == "aborted"
    assert res.save.error.startswith(f"{victim} left the run"), res.save.error
    survivor = "hypervisor" if victim == "guest" else "guest"
    rc, err = procs.wait(survivor)           # it exits by itself: no orphan
    if survivor == "hypervisor":
        assert rc == 0 and "guest left the run" in err      # the toolstack still released it
    else:
        assert rc == 1 and "hypervisor left the run" in err


@pytest.mark.mqtt
async def test_killed_toolstack_makes_the_hypervisor_resume_the_source(mqtt_broker, procs):
    sc = scenario("idle")
    cfg = cfg_for(mqtt_broker)
    box: list = []
    hv, g = await start_actor_tasks(cfg, "ts", sc, box)
    # The toolstack stops (as if hung) once the domain is suspended, says so, and is killed.
    script = ("import asyncio, sys, time\n"
              "from migrate import mqtt\nfrom migrate.bus import parse_broker_url\n"
              "from migrate.events import EventBus, PhaseChanged\n"
              "from migrate.runner import RunOptions\nfrom migrate.scenario import load_scenario\n"
              "def hang(ev):\n"
              "    if isinstance(ev, PhaseChanged) and ev.phase == 'final':\n"
              "        print('suspended', flush=True)\n"
              "        time.sleep(60)\n"
              "bus = EventBus()\nbus.subscribe(hang)\n"
              f"cfg = parse_broker_url({mqtt_broker.url!r}, timeout=3)\n"
              f"sc = load_scenario({str(EXAMPLES / 'idle.yaml')!r})\n"
              "asyncio.run(mqtt.remote_run(sc, RunOptions(), broker=cfg, run_id='ts', bus=bus))\n")
    toolstack = procs.start("toolstack", [sys.executable, "-c", script])
    line = await asyncio.wait_for(asyncio.to_thread(toolstack.stdout.readline), 30)
    assert line.strip() == "suspended"
    assert box[0].hv.state == "suspended"
    os.kill(toolstack.pid, signal.SIGKILL)
    t_kill = time.monotonic()
    why = await asyncio.wait_for(hv, 10)
    assert time.monotonic() - t_kill < 5
    assert why.startswith("toolstack lost") and "source domain resumed" in why
    assert box[0].hv.state == "running" and not box[0].hv.log_dirty_enabled
    assert await asyncio.wait_for(g, 10) == "released"


class Gate:
    """A pacer that holds the engine at its first batch until opened."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.opened = asyncio.Event()

    async def pace(self, now: float) -> None:
        self.reached.set()
        await self.opened.wait()


@pytest.mark.mqtt
async def test_second_toolstack_on_the_same_run_is_refused(mqtt_broker):
    sc = scenario("idle")
    cfg = cfg_for(mqtt_broker)
    hv, g = await start_actor_tasks(cfg, "two", sc)
    gate = Gate()
    first = asyncio.ensure_future(mqtt.remote_run(sc, RunOptions(), broker=cfg, run_id="two", pacer=gate))
    await asyncio.wait_for(gate.reached.wait(), 15)       # the first one is mid-migration
    with pytest.raises(RunRefused, match="run id 'two' already has a toolstack"):
        await mqtt.remote_run(sc, RunOptions(), broker=cfg, run_id="two")
    gate.opened.set()
    res = await asyncio.wait_for(first, 30)
    assert res.save.outcome == "completed"        # not interleaved with the refused one
    assert comparable(res) == comparable(await run_scenario(sc, RunOptions()))
    assert await asyncio.wait_for(hv, 5) == "released"
    await g


@pytest.mark.mqtt
async def test_guest_actor_refuses_another_scenario(mqtt_broker):
    cfg = cfg_for(mqtt_broker)
    hv, g = await start_actor_tasks(cfg, "mix", scenario("idle"))
    from migrate.bus import TransportError

    with pytest.raises(TransportError, match="guest actor runs scenario 'idle'"):
        await mqtt.remote_run(scenario("balloon"), RunOptions(), broker=cfg, run_id="mix")
    # nothing was built: the right toolstack can still use the same actors
    res = await mqtt.remote_run(scenario("idle"), RunOptions(), broker=cfg, run_id="mix")
    assert res.save.outcome == "completed"
    assert await asyncio.wait_for(hv, 5) == "released" and await asyncio.wait_for(g, 5) == "released"


# ----------------------------------------------------------------------------- batches ahead


async def _in_process_remote(sc, opts, monkeypatch) -> tuple:
    """``remote_run`` over an InProcessHub; returns the result and the RemoteDomain."""
    hub = InProcessHub(codec=True)
    ts, hvt, gt = (InProcessTransport(hub, "local", a) for a in ("toolstack", "hypervisor", "guest"))
    sources: list = []
    orig = mqtt.RemoteSource.__init__

    def init(self, *args, **kwargs):
        orig(self, *args, **kwargs)
        sources.append(self)

    monkeypatch.setattr(mqtt.RemoteSource, "__init__", init)
    hv = asyncio.ensure_future(mqtt.serve_hypervisor(hvt))
    g = asyncio.ensure_future(mqtt.serve_guest(sc, gt))
    rem = await mqtt.remote_run(sc, opts, transport=ts)
    assert await asyncio.wait_for(hv, 5) == "released" and await asyncio.wait_for(g, 5) == "released"
    return rem, sources[0].control


async def test_batches_served_ahead_save_round_trips_and_keep_the_report(monkeypatch, caplog):
    sc = scenario("balloon")
    emb = await run_scenario(sc, RunOptions())
    rem, control = await _in_process_remote(sc, RunOptions(), monkeypatch)
    assert comparable(rem) == comparable(emb)
    batches = sum(r.batches for r in rem.save.rounds)
    assert control.ahead_hits > batches // 2
    assert control.rpcs < batches // 2
    assert not [r for r in caplog.records if "served ahead" in r.getMessage()]   # no wasted batch


@pytest.mark.parametrize("deadline", [0.3, 2.1234, 6.5, 8.77])
async def test_a_deadline_abort_mid_pass_sees_no_batch_served_ahead(monkeypatch, caplog, deadline):
    """The engine aborts between two batches of a pass: the hypervisor must not have
    served the next one (its guest would have run ahead of the embedded run's)."""
    sc = scenario("balloon")
    sc = sc.model_copy(update={"migration": sc.migration.model_copy(update={"deadline": deadline})})
    emb = await run_scenario(sc, RunOptions())
    assert emb.save.outcome == "aborted"
    rem, control = await _in_process_remote(sc, RunOptions(), monkeypatch)
    assert comparable(rem) == comparable(emb)
    assert control.ahead_hits > 0
    assert not [r for r in caplog.records if "served ahead" in r.getMessage()]


async def test_bandwidth_override_and_verify_keep_the_report_with_batches_ahead(monkeypatch):
    sc = scenario("pod-boot")
    opts = RunOptions(bandwidth=3e8, verify=True)
    emb = await run_scenario(sc, opts)
    rem, control = await _in_process_remote(sc, opts, monkeypatch)
    assert comparable(rem) == comparable(emb)
    assert control.ahead_hits > 0


@pytest.mark.mqtt
async def test_watch_records_the_events_with_their_call_site_effects(mqtt_broker, tmp_path):
    """`xmig watch --record`: the log holds what the watcher saw over the broker,
    MemoryOp call-site effects included, and rebuilds the run's report."""
    from migrate.cli_mqtt import watch_run
    from migrate.dashboard import Dashboard
    from migrate.eventlog import EventRecorder, read_event_log
    from migrate.events import MemoryOp
    from migrate.report import build_report
    from migrate.runner import result_from_events

    sc = scenario("balloon")
    cfg = cfg_for(mqtt_broker)
    rec = EventRecorder(tmp_path / "w.events", {"watched_run": "rec"})
    subscribed = asyncio.Event()
    watcher = asyncio.ensure_future(watch_run(cfg, "rec", dashboard=Dashboard(), ready=subscribed, also=rec))
    await asyncio.wait_for(subscribed.wait(), 10)
    hv, g = await start_actor_tasks(cfg, "rec", sc)
    rem = await mqtt.remote_run(sc, RunOptions(behaviour="pre-fix"), broker=cfg, run_id="rec")
    assert await asyncio.wait_for(watcher, 5) == "completed"
    rec.close()
    await asyncio.gather(hv, g)
    log = read_event_log(tmp_path / "w.events")
    assert log.header["behaviour"] == "pre-fix" and log.header["watched_run"] == "rec"
    ops = [e for e in log.events if isinstance(e, MemoryOp)]
    assert sum(e.leftover.size for e in ops) == 3357
    assert build_report(result_from_events(log.events)) == build_report(rem)
