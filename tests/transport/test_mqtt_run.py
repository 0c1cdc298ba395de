"""The three actors over a real Mosquitto give the embedded run's report and stream,
and every fault (broker down or lost, an actor killed, a second toolstack) ends in a
clear error or an aborted migration within seconds, with the source domain resumed."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from migrate import actors
from migrate.transport.mqtt import connect
from migrate.errors import BrokerUnreachable, RunRefused
from migrate.transport.base import InProcessHub, InProcessTransport
from migrate.transport.mqtt import MqttTransport, parse_broker_url
from migrate.events import BatchSent, EventBus, PhaseChanged
from migrate.run.report import build_report
from migrate.run.runner import RunOptions, run_scenario
from migrate.run.scenario import load_scenario
from tests.mqtt_broker import key_env, test_key

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def scenario(name: str):
    return load_scenario(EXAMPLES / f"{name}.yaml")


def comparable(result) -> dict:
    rep = build_report(result)
    rep.pop("wall", None)
    rep.pop("broker", None)     # over MQTT only: what the run key kept out
    return rep


def cfg_for(broker, timeout: float = 3.0):
    cfg = parse_broker_url(broker.url, timeout=timeout, key=test_key())
    cfg.heartbeat = 0.25
    return cfg


def actor_command(kind: str, broker, run: str, *extra: str) -> list[str]:
    """``python -m migrate <kind> ...`` once the lead's ``xmig`` registers the MQTT commands,
    else the same commands from ``python -m migrate.cli.broker``."""
    from migrate.cli.main import app

    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    module = "migrate" if kind in names else "migrate.cli.broker"
    return [sys.executable, "-m", module, kind, "--broker", broker.url, "--run", run, "--timeout", "3", *extra]


class Procs:
    """Actor subprocesses; anything still running at the end is killed and reported."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        p = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=key_env(),
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
    hv_t = await connect(cfg, run, "hypervisor")
    g_t = await connect(cfg, run, "guest")

    async def serve(coro, transport):
        try:
            return await coro
        finally:
            await transport.close()

    hv = asyncio.ensure_future(serve(actors.serve_hypervisor(hv_t, actor_box=box), hv_t))
    g = asyncio.ensure_future(serve(actors.serve_guest(sc, g_t), g_t))
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
    rem = await actors.remote_run(sc, RunOptions(stream=str(stream)), broker=cfg, run_id=f"eq-{name}")
    assert rem.save.outcome == "completed", rem.save.error
    stream.unlink()
    assert rem.save.outcome == "completed" and rem.ok
    assert comparable(rem) == comparable(emb)
    assert rem.stream["sha256"] == emb.stream["sha256"]
    assert await asyncio.wait_for(hv, 5) == "released"
    assert await asyncio.wait_for(g, 5) == "released"


async def in_process_run(sc, opts):
    """The three actors in one process over a codec-framed hub: the toolstack's result
    and the hypervisor's and guest's serving tasks (each ends "released")."""
    hub = InProcessHub(codec=True)
    ts, hvt, gt = (InProcessTransport(hub, "local", a) for a in ("toolstack", "hypervisor", "guest"))
    hv = asyncio.ensure_future(actors.serve_hypervisor(hvt))
    g = asyncio.ensure_future(actors.serve_guest(sc, gt))
    return await actors.remote_run(sc, opts, transport=ts), hv, g


@pytest.mark.parametrize("name,behaviour", [("balloon", "pre-fix"), ("pod-boot", None), ("nonconverging", None)])
async def test_in_process_transport_runs_the_same_code_paths_to_the_same_report(name, behaviour):
    sc = scenario(name)
    opts = RunOptions(behaviour=behaviour)
    emb = await run_scenario(sc, opts)
    rem, hv, g = await in_process_run(sc, opts)
    assert comparable(rem) == comparable(emb)
    if behaviour == "pre-fix":
        assert rem.verify is not None and not rem.verify.ok    # stale or missing pages, as embedded
    assert await hv == "released" and await g == "released"


@pytest.mark.mqtt
async def test_watch_rebuilds_the_toolstacks_report_from_the_events(mqtt_broker):
    """What `xmig watch` summarises is the run's own report: rebuilt from the events it
    saw (the one fold and the RunSummary), equal to the toolstack's JSON report outside
    wall (and the broker's tally of what the run key kept out, not an event)."""
    from migrate.cli.broker import watch_run, watched_report
    from migrate.events.fold import RunFold

    sc = scenario("balloon")
    cfg = cfg_for(mqtt_broker)
    fold = RunFold()
    subscribed = asyncio.Event()
    watcher = asyncio.ensure_future(watch_run(cfg, "w", listener=fold, ready=subscribed))
    await asyncio.wait_for(subscribed.wait(), 10)
    hv, g = await start_actor_tasks(cfg, "w", sc)
    rem = await actors.remote_run(sc, RunOptions(behaviour="pre-fix"), broker=cfg, run_id="w")
    assert (await asyncio.wait_for(watcher, 5)).startswith("completed, but the destination diverged")
    await asyncio.gather(hv, g)
    expected = build_report(rem)
    for rep in (expected, watched := watched_report(fold)):
        rep.pop("wall")
        rep.pop("broker", None)
    assert watched == expected
    assert watched["pages"]["leftover_bits"] == 3357 and watched["totals"] == expected["totals"]


@pytest.mark.mqtt
async def test_plain_watch_prints_the_reports_summary(mqtt_broker, capsys):
    """Piped: the watcher's progress lines, then the summary `xmig run` prints from its
    report, to the byte (the totals are the toolstack's own, not approximations)."""
    from rich.console import Console

    from migrate.cli.broker import watch_run
    from migrate.ui.progress import print_summary

    sc = scenario("idle")
    cfg = cfg_for(mqtt_broker)
    subscribed = asyncio.Event()
    watcher = asyncio.ensure_future(watch_run(cfg, "p", console=Console(file=io.StringIO()), ready=subscribed))
    await asyncio.wait_for(subscribed.wait(), 10)
    hv, g = await start_actor_tasks(cfg, "p", sc)
    rem = await actors.remote_run(sc, RunOptions(), broker=cfg, run_id="p")
    assert await asyncio.wait_for(watcher, 5) == "completed"
    await asyncio.gather(hv, g)
    out = capsys.readouterr().out
    want = io.StringIO()
    print_summary(build_report(rem), want)
    assert out.endswith(want.getvalue())
    assert "xc: progress: End of stream" in out


# ----------------------------------------------------------------------------- faults


@pytest.mark.mqtt
async def test_broker_down_at_start_is_one_line_and_exit_2(mqtt_broker, procs):
    port = mqtt_broker.port
    mqtt_broker.kill()
    cfg = parse_broker_url(f"mqtt://127.0.0.1:{port}", key=test_key())
    with pytest.raises(BrokerUnreachable, match=f"^cannot reach the MQTT broker at mqtt://127.0.0.1:{port}: "
                                                "connection refused$"):
        await actors.remote_run(scenario("idle"), RunOptions(), broker=cfg, run_id="down")
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
    res = await actors.remote_run(sc, RunOptions(), broker=cfg, run_id="lost", bus=bus)
    assert time.monotonic() - t0 < 15
    assert res.save.outcome == "aborted"
    assert "lost the MQTT broker at mqtt://127.0.0.1" in res.save.error
    assert build_report(res)["outcome"] == "aborted"
    why = await asyncio.wait_for(hv, 10)
    assert "source domain resumed" in why
    assert box[0].hv.state == "running" and not box[0].hv.log_dirty_enabled
    assert "lost the MQTT broker" in await asyncio.wait_for(g, 10)


@pytest.mark.mqtt
@pytest.mark.parametrize("victim,sig", [("guest", signal.SIGKILL), ("hypervisor", signal.SIGKILL),
                                        ("guest", signal.SIGSTOP)])
async def test_killed_or_frozen_actor_process_aborts_the_migration(mqtt_broker, procs, victim, sig):
    """A killed actor is seen at once (its will); a frozen one (SIGSTOP) within
    --timeout, and named as frozen, not as a lost broker. (The guest is killed in a
    run whose balloon moves later: an idle guest's writes are all known to the
    hypervisor ahead, so a save can end before it needs the guest again.)"""
    name = "balloon" if victim == "guest" else "idle"
    sc = scenario(name)
    run = f"kill-{victim}-{int(sig)}"
    procs.start("hypervisor", actor_command("hypervisor", mqtt_broker, run))
    procs.start("guest", actor_command("guest", mqtt_broker, run, "--guest", str(EXAMPLES / f"{name}.yaml")))
    bus = EventBus()
    batches = []

    def kill_after_some_batches(ev) -> None:
        # Mid pass 1: the engine's first span is of 64 batches, told in two events.
        if isinstance(ev, BatchSent):
            batches.append(ev)
            if len(batches) == 1:
                os.kill(procs.procs[victim].pid, sig)

    bus.subscribe(kill_after_some_batches)
    t0 = time.monotonic()
    res = await actors.remote_run(sc, RunOptions(), broker=cfg_for(mqtt_broker), run_id=run, bus=bus)
    assert time.monotonic() - t0 < 20
    assert res.save.outcome == "aborted"
    if sig == signal.SIGSTOP:
        assert res.save.error.startswith(f"{victim} did not answer within 3 s and sent no heartbeat"), \
            res.save.error
        rc, err = procs.wait("hypervisor")
        assert rc == 0 and "lost the MQTT broker" not in err and "guest did not answer" in err, err
        procs.procs[victim].kill()
        return
    assert res.save.error.startswith(f"{victim} left the run"), res.save.error
    survivor = "hypervisor" if victim == "guest" else "guest"
    rc, err = procs.wait(survivor)           # it exits by itself: no orphan
    if survivor == "hypervisor":
        assert rc == 0 and "guest left the run" in err      # the toolstack still released it
    else:
        assert rc == 1 and "hypervisor left the run" in err


def hanging_toolstack(broker, run: str) -> list[str]:
    """A toolstack process that stops driving the migration once the domain is suspended,
    after saying so: its next call to the hypervisor never goes out. Its event loop runs
    on and keeps beating, so it is alive until the test kills or stops it (SIGSTOP), and
    the hypervisor's clock starts where the test's does. (Blocking the loop instead
    would silence it at the 'suspended' line, and the hypervisor could rightly give the
    domain back before the test had looked at it.)"""
    script = ("import asyncio\n"
              "from migrate import actors\nfrom migrate.actors.toolstack import RemoteDomain\n"
              "from migrate.transport.mqtt import parse_broker_url\n"
              "from migrate.events import EventBus, PhaseChanged\n"
              "from migrate.run.runner import RunOptions\nfrom migrate.run.scenario import load_scenario\n"
              "stuck = []\n"
              "call = RemoteDomain._call\n"
              "async def stop_after_suspend(self, method, args):\n"
              "    if stuck:\n"
              "        await asyncio.Event().wait()\n"
              "    return await call(self, method, args)\n"
              "RemoteDomain._call = stop_after_suspend\n"
              "def hang(ev):\n"
              "    if isinstance(ev, PhaseChanged) and ev.phase == 'final':\n"
              "        stuck.append(ev)\n"
              "        print('suspended', flush=True)\n"
              "bus = EventBus()\nbus.subscribe(hang)\n"
              f"cfg = parse_broker_url({broker.url!r}, timeout=3, key={test_key()!r})\n"
              f"sc = load_scenario({str(EXAMPLES / 'idle.yaml')!r})\n"
              f"asyncio.run(actors.remote_run(sc, RunOptions(), broker=cfg, run_id={run!r}, bus=bus))\n")
    return [sys.executable, "-c", script]


@pytest.mark.mqtt
@pytest.mark.parametrize("how", ["killed", "frozen"])
async def test_a_killed_or_frozen_toolstack_makes_the_hypervisor_resume_the_source(mqtt_broker, procs, how):
    """A killed toolstack is seen at once (its will), a frozen one (SIGSTOP: connected,
    silent) within --timeout of the moment it froze; either way the hypervisor turns
    log-dirty off and resumes the source, as libxl does when a save fails."""
    await toolstack_dies(mqtt_broker, procs, how)


@pytest.mark.mqtt
async def test_a_toolstack_that_waits_longer_than_the_timeout_but_beats_keeps_the_domain(mqtt_broker, procs):
    """Silence, not slowness, loses a toolstack: one that sends no call for longer than
    --timeout while its heartbeats go on still holds the suspended domain (until it is
    killed, and then the domain is resumed at once)."""
    await toolstack_dies(mqtt_broker, procs, "killed", looked_after=cfg_for(mqtt_broker).timeout + 1)


async def toolstack_dies(mqtt_broker, procs, how: str, *, looked_after: float = 0.0) -> None:
    """``looked_after``: how long after the toolstack said the domain is suspended the
    test looks at it and then kills or stops the toolstack."""
    run = "ts"
    sc = scenario("idle")
    cfg = cfg_for(mqtt_broker)
    box: list = []
    hv, g = await start_actor_tasks(cfg, run, sc, box)
    toolstack = procs.start(f"toolstack-{run}", hanging_toolstack(mqtt_broker, run))
    line = await asyncio.wait_for(asyncio.to_thread(toolstack.stdout.readline), 30)
    assert line.strip() == "suspended"
    await asyncio.sleep(looked_after)
    assert box[0].hv.state == "suspended" and box[0].recovered is None
    if how == "killed":
        os.kill(toolstack.pid, signal.SIGKILL)         # seen at once (its will)
    else:
        os.kill(toolstack.pid, signal.SIGSTOP)         # silent: seen within --timeout (3 s)
    t0 = time.monotonic()
    why = await asyncio.wait_for(hv, 15)
    took = time.monotonic() - t0
    assert took < (2 if how == "killed" else cfg.timeout + 2), took
    assert why.startswith("toolstack lost") and "source domain resumed" in why
    assert box[0].hv.state == "running" and not box[0].hv.log_dirty_enabled
    assert await asyncio.wait_for(g, 10) == "released"
    if how == "frozen":
        os.kill(toolstack.pid, signal.SIGKILL)


@pytest.mark.mqtt
async def test_serving_actors_take_run_after_run(mqtt_broker, procs):
    sc = scenario("idle")
    emb = comparable(await run_scenario(sc, RunOptions()))
    procs.start("hypervisor", actor_command("hypervisor", mqtt_broker, "class", "--serve"))
    procs.start("guest", actor_command("guest", mqtt_broker, "class", "--serve", "--guest",
                                       str(EXAMPLES / "idle.yaml")))
    for _ in range(2):
        res = await actors.remote_run(sc, RunOptions(), broker=cfg_for(mqtt_broker), run_id="class")
        assert res.ok and comparable(res) == emb
    for name in ("hypervisor", "guest"):
        assert procs.procs[name].poll() is None        # still serving
        procs.procs[name].send_signal(signal.SIGINT)
        rc, err = procs.wait(name)
        assert "(run 2)" in err and "Traceback" not in err, err   # one process, both runs


SMALL_PREFIX = """\
name: small-balloon
seed: 1
guest:
  memory: 128MiB
  workloads: [{kind: uniform, rate: 8MiB/s}]
  balloon:
    batch_pages: 512
    rate: 512MiB/s
    reuse_share: 0.5
    reuse_within: 200ms
    schedule: [{at: 1.2s, target: -32MiB}, {at: 1.6s, target: +32MiB}]
link: {bandwidth: 1Gbit/s, latency: 1ms}
migration: {start: 1s, policy: xen, xen_behaviour: pre-fix}
"""


@pytest.mark.mqtt
async def test_forged_replies_and_events_from_a_second_client_leave_the_verdict_true(mqtt_broker, tmp_path):
    """The attack: a pre-fix run that loses pages printed `verify: OK` after one forged
    RPC reply, and `watch` said completed after a forged event. Both are dropped now."""
    import aiomqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from migrate.codec import wire
    from migrate.cli.broker import watch_run
    from migrate.events import MigrationFinished, VerifyDone, VerifyStats

    (tmp_path / "small.yaml").write_text(SMALL_PREFIX)
    sc = load_scenario(tmp_path / "small.yaml")
    emb = await run_scenario(sc, RunOptions())
    assert not emb.verify.ok                                   # pre-fix: the destination diverges
    cfg = cfg_for(mqtt_broker)
    ready = asyncio.Event()
    watcher = asyncio.ensure_future(watch_run(cfg, "atk", ready=ready))
    await asyncio.wait_for(ready.wait(), 10)
    all_ok = VerifyStats(ok=True, missing_pages=0, stale_pages=0, extra_pages=0)
    fake_end = wire.encode({"seq": 1, "events": [VerifyDone(t=2.0, stats=all_ok),
                                                 MigrationFinished(t=2.0, outcome="completed")]})
    forged = []
    async with aiomqtt.Client("127.0.0.1", mqtt_broker.port, identifier="evil",
                              protocol=aiomqtt.ProtocolVersion.V5) as evil:
        await evil.publish("xmig/atk/events/toolstack", fake_end, qos=1)
        await asyncio.sleep(0.3)
        assert not watcher.done()                              # the forged "completed" was dropped
        await evil.subscribe("xmig/atk/hypervisor/rpc")

        async def forge():
            async for msg in evil.messages:                    # answer every request first, falsely
                p = Properties(PacketTypes.PUBLISH)
                p.CorrelationData = msg.properties.CorrelationData
                await evil.publish(msg.properties.ResponseTopic, wire.encode({"ok": {"r": None, "c": {}, "ev": []}}),
                                   qos=1, properties=p)
                forged.append(1)

        task = asyncio.ensure_future(forge())
        hv, g = await start_actor_tasks(cfg, "atk", sc)
        rem = await actors.remote_run(sc, RunOptions(), broker=cfg, run_id="atk")
        task.cancel()
    assert forged and rem.broker["authenticated"] and rem.broker["dropped"].get("unsigned", 0) >= 1
    assert comparable(rem) == comparable(emb) and not rem.verify.ok
    outcome = await asyncio.wait_for(watcher, 10)
    assert outcome.startswith("completed, but the destination diverged"), outcome   # xmig watch: exit 1
    await asyncio.gather(hv, g)


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
    first = asyncio.ensure_future(actors.remote_run(sc, RunOptions(), broker=cfg, run_id="two", pacer=gate))
    await asyncio.wait_for(gate.reached.wait(), 15)       # the first one is mid-migration
    with pytest.raises(RunRefused, match="run id 'two' already has a toolstack"):
        await actors.remote_run(sc, RunOptions(), broker=cfg, run_id="two")
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
    from migrate.errors import TransportError

    with pytest.raises(TransportError, match="guest actor runs scenario 'idle'"):
        await actors.remote_run(scenario("balloon"), RunOptions(), broker=cfg, run_id="mix")
    # nothing was built: the right toolstack can still use the same actors
    res = await actors.remote_run(scenario("idle"), RunOptions(), broker=cfg, run_id="mix")
    assert res.save.outcome == "completed"
    assert await asyncio.wait_for(hv, 5) == "released" and await asyncio.wait_for(g, 5) == "released"


# ----------------------------------------------------------------------------- spans over the transport


async def _in_process_remote(sc, opts, monkeypatch) -> tuple:
    """``remote_run`` over an InProcessHub; returns the result and the RemoteDomain."""
    hub = InProcessHub(codec=True)
    ts, hvt, gt = (InProcessTransport(hub, "local", a) for a in ("toolstack", "hypervisor", "guest"))
    sources: list = []
    orig = actors.RemoteSource.__init__

    def init(self, *args, **kwargs):
        orig(self, *args, **kwargs)
        sources.append(self)

    monkeypatch.setattr(actors.RemoteSource, "__init__", init)
    hv = asyncio.ensure_future(actors.serve_hypervisor(hvt))
    g = asyncio.ensure_future(actors.serve_guest(sc, gt))
    rem = await actors.remote_run(sc, opts, transport=ts)
    assert await asyncio.wait_for(hv, 5) == "released" and await asyncio.wait_for(g, 5) == "released"
    return rem, sources[0].control


async def test_spans_save_round_trips_and_keep_the_report(monkeypatch):
    sc = scenario("balloon")
    emb = await run_scenario(sc, RunOptions())
    rem, control = await _in_process_remote(sc, RunOptions(), monkeypatch)
    assert comparable(rem) == comparable(emb)
    # the batches pass 1 walks in bulk through libxc's hole (0x40400-0xfebff) need no span
    batches = sum(r.batches for r in rem.save.rounds) - (0xFEC00 - 0x40400) // 1024
    assert control.span_batches > batches // 2
    assert control.rpcs < batches // 4


@pytest.mark.parametrize("deadline", [0.3, 2.1234, 6.5, 8.77])
async def test_a_deadline_abort_mid_pass_keeps_the_report(monkeypatch, deadline):
    """The engine aborts after the batch that ends past the deadline: the hypervisor
    served no span past it (its guest would have run ahead of the embedded run's)."""
    sc = scenario("balloon")
    sc = sc.model_copy(update={"migration": sc.migration.model_copy(update={"deadline": deadline})})
    emb = await run_scenario(sc, RunOptions())
    assert emb.save.outcome == "aborted"
    rem, control = await _in_process_remote(sc, RunOptions(), monkeypatch)
    assert comparable(rem) == comparable(emb)
    assert control.span_batches > 0


async def test_bandwidth_override_and_verify_keep_the_report_with_spans(monkeypatch):
    sc = scenario("pod-boot")
    opts = RunOptions(bandwidth=3e8, verify=True)
    emb = await run_scenario(sc, opts)
    rem, control = await _in_process_remote(sc, opts, monkeypatch)
    assert comparable(rem) == comparable(emb)
    assert control.span_batches > 0


@pytest.mark.mqtt
async def test_watch_records_the_events_with_their_call_site_effects(mqtt_broker, tmp_path):
    """`xmig watch --record`: the log holds what the watcher saw over the broker,
    MemoryOp call-site effects included, and rebuilds the run's report."""
    from migrate.cli.broker import watch_run
    from migrate.events.log import EventRecorder, read_event_log
    from migrate.events import MemoryOp
    from migrate.run.report import build_report
    from migrate.run.runner import result_from_events

    sc = scenario("balloon")
    cfg = cfg_for(mqtt_broker)
    rec = EventRecorder(tmp_path / "w.events", {"watched_run": "rec"})
    subscribed = asyncio.Event()
    watcher = asyncio.ensure_future(watch_run(cfg, "rec", ready=subscribed, also=rec))
    await asyncio.wait_for(subscribed.wait(), 10)
    hv, g = await start_actor_tasks(cfg, "rec", sc)
    rem = await actors.remote_run(sc, RunOptions(behaviour="pre-fix"), broker=cfg, run_id="rec")
    # pre-fix: the watcher trusts only a verified destination
    assert (await asyncio.wait_for(watcher, 5)).startswith("completed, but the destination diverged: 42576 missing")
    rec.close()
    await asyncio.gather(hv, g)
    log = read_event_log(tmp_path / "w.events")
    assert log.header["behaviour"] == "pre-fix" and log.header["watched_run"] == "rec"
    ops = [e for e in log.events if isinstance(e, MemoryOp)]
    assert sum(e.leftover.size for e in ops) == 3357
    expected = build_report(rem)
    expected.pop("broker", None)    # what the run key kept out: the toolstack's own count, not an event
    assert build_report(result_from_events(log.events)) == expected


def example_broker(tmp_path, users):
    """A Mosquitto run with examples/mosquitto's config and ACL (its paths made absolute),
    and a password file for ``users`` (password ``pw-<user>``)."""
    import shutil

    from tests.mqtt_broker import Broker, free_port, mosquitto_binary

    if mosquitto_binary() is None or shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto and mosquitto_passwd are needed")
    passwd = tmp_path / "passwd"
    for i, user in enumerate(users):
        subprocess.run(["mosquitto_passwd", "-b", *([] if i else ["-c"]), str(passwd), user, f"pw-{user}"],
                       check=True, capture_output=True)
    conf = (ROOT / "examples" / "mosquitto" / "mosquitto.conf").read_text().splitlines()
    kept = [ln for ln in conf if ln.strip() and not ln.startswith("#") and ln.split()[0] not in
            ("listener", "password_file", "acl_file", "persistence", "set_tcp_nodelay", "max_queued_messages")]
    assert "use_username_as_clientid true" in kept and "allow_anonymous false" in kept
    extra = "\n".join(kept) + (f"\npassword_file {passwd}\nuser root\n"
                                f"acl_file {ROOT / 'examples' / 'mosquitto' / 'acl'}\n")
    return Broker(mosquitto_binary(), free_port(), tmp_path / "mosquitto.conf", tmp_path / "mosquitto.log",
                  extra=extra).start()


@pytest.mark.mqtt
async def test_the_example_broker_gives_each_actor_only_its_topics_and_resists_takeover(tmp_path):
    """examples/mosquitto on a real Mosquitto: a migration runs with one broker user per
    actor; a student's account can watch but publish nothing into the run, and its
    connection under an actor's client id (read from the presence topics) does not
    drop the actor (MQTT session takeover), so the run completes."""
    import aiomqtt

    from migrate.codec import wire
    from migrate.cli.broker import watch_run
    from migrate.events import MigrationFinished

    broker = example_broker(tmp_path, ("toolstack", "hypervisor", "guest", "watch", "student", "intruder"))
    try:
        def cfg(user):
            c = parse_broker_url(broker.url, username=user, password=f"pw-{user}", timeout=3.0, key=test_key())
            c.heartbeat = 0.25
            return c

        sc = scenario("idle")
        emb = await run_scenario(sc, RunOptions())
        ready = asyncio.Event()
        watcher = asyncio.ensure_future(watch_run(cfg("watch"), "acl", ready=ready))
        await asyncio.wait_for(ready.wait(), 10)
        hv_t = await connect(cfg("hypervisor"), "acl", "hypervisor")
        g_t = await connect(cfg("guest"), "acl", "guest")
        hv = asyncio.ensure_future(actors.serve_hypervisor(hv_t))
        g = asyncio.ensure_future(actors.serve_guest(sc, g_t))
        seen = []
        async with aiomqtt.Client("127.0.0.1", broker.port, username="student", password="pw-student",
                                  protocol=aiomqtt.ProtocolVersion.V5) as student:
            await student.subscribe("xmig/#")

            async def listen():
                async for msg in student.messages:
                    seen.append(str(msg.topic))

            listening = asyncio.ensure_future(listen())
            fake = wire.encode({"seq": 1, "events": [MigrationFinished(t=0.0, outcome="completed")]})
            for topic in ("xmig/acl/events/toolstack", "xmig/acl/hypervisor/rpc",
                          "xmig/acl/presence/toolstack/xmig-toolstack-0000000000"):
                # (Another account: Mosquitto closes a v5 connection that publishes where it may not.)
                with contextlib.suppress(aiomqtt.MqttError):
                    async with aiomqtt.Client("127.0.0.1", broker.port, username="intruder", password="pw-intruder",
                                              protocol=aiomqtt.ProtocolVersion.V5) as other:
                        await other.publish(topic, fake, qos=1)
            gate = Gate()
            run = asyncio.ensure_future(actors.remote_run(sc, RunOptions(), broker=cfg("toolstack"), run_id="acl",
                                                          pacer=gate))
            await asyncio.wait_for(gate.reached.wait(), 15)      # mid-migration
            victims = [c.split("/")[-1] for c in seen if "/presence/" in c]
            assert hv_t.client_id in victims and g_t.client_id in victims   # the ids are readable...
            for cid in (hv_t.client_id, g_t.client_id):
                # ...and a connection under one of them takes no actor over.
                async with aiomqtt.Client("127.0.0.1", broker.port, identifier=cid, username="intruder",
                                          password="pw-intruder", protocol=aiomqtt.ProtocolVersion.V5):
                    await asyncio.sleep(0.3)
                with pytest.raises(aiomqtt.MqttError):           # and without an account, none at all
                    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=cid,
                                              protocol=aiomqtt.ProtocolVersion.V5):
                        pass
            gate.opened.set()
            res = await asyncio.wait_for(run, 60)
            listening.cancel()
        assert hv_t.peers.broken is None and g_t.peers.broken is None
        assert res.ok and comparable(res) == comparable(emb)
        assert await asyncio.wait_for(watcher, 10) == "completed"
        # The broker kept the student's messages out: nothing reached the actors to drop,
        # and the student read none of the run's calls and replies.
        assert res.broker["dropped"] == {} and hv_t.dropped == {} and g_t.dropped == {}
        assert not [t for t in seen if "/rpc" in t or "/reply/" in t], seen
        assert any("/events/toolstack" in t for t in seen), seen      # a class account may watch
        assert await asyncio.wait_for(hv, 10) == "released" and await asyncio.wait_for(g, 10) == "released"
        await hv_t.close()
        await g_t.close()
    finally:
        broker.kill()


def test_an_actor_without_a_run_key_refuses_in_one_line_and_keygen_makes_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XMIG_RUN_KEY"}
    out = subprocess.run([sys.executable, "-m", "migrate.cli.broker", "hypervisor", "--broker", "mqtt://127.0.0.1:1",
                          "--run", "r"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert out.stderr.startswith("xmig: error: no run key") and "--insecure" in out.stderr
    key = tmp_path / "run.key"
    made = subprocess.run([sys.executable, "-m", "migrate.cli.broker", "keygen", "--out", str(key)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0 and len(key.read_text().strip()) == 64 and (key.stat().st_mode & 0o077) == 0
    again = subprocess.run([sys.executable, "-m", "migrate.cli.broker", "keygen", "--out", str(key)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "exists" in again.stderr


@pytest.mark.mqtt
async def test_a_client_that_joins_late_hears_the_others_at_once(mqtt_broker):
    """Heartbeats every 30 s: a hypervisor that subscribes after the guest's first beat
    still counts the guest live at once, because the guest beats when it sees the
    hypervisor's claim (no wait of up to a heartbeat period before the first call)."""
    cfg = cfg_for(mqtt_broker)
    cfg.heartbeat = 30.0
    guest = MqttTransport(cfg, "late", "guest")
    await guest.start()
    await guest.claim()
    hv = MqttTransport(cfg, "late", "hypervisor")
    try:
        await asyncio.sleep(0.3)          # the guest's first beat is long gone
        await hv.start()
        await hv.claim()
        t0 = time.monotonic()
        await hv.wait_for_peer("guest", 5.0)
        assert time.monotonic() - t0 < 2.0
        await guest.wait_for_peer("hypervisor", 5.0)
    finally:
        await hv.close()
        await guest.close()
