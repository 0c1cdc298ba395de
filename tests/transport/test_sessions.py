"""A run's messages belong to that run: sealed traffic recorded on a real Mosquitto and
published again (replayed, reordered, flooded) into a later run with the same run id
and key, or to actors and watchers that were not there, changes nothing; a watcher
gives a verdict only for a session it saw begin; an ``--insecure`` peer on a sealed run
is named in one line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

import pytest

from migrate import actors
from migrate.codec import wire
from migrate.errors import PeerLost, RunRefused
from migrate.run.runner import RunOptions, run_scenario
from migrate.run.scenario import load_scenario
from migrate.transport import runkey
from migrate.transport.admission import Admission
from migrate.transport.base import _Peers
from migrate.transport.mqtt import MqttTransport, connect, parse_broker_url
from tests.mqtt_broker import test_key
from tests.transport.test_mqtt_run import SMALL_PREFIX, Gate, cfg_for, comparable, scenario, start_actor_tasks

pytestmark = pytest.mark.mqtt


class Recorder:
    """A broker user without the run key that records everything of a run and can
    publish it again, as it was (topic, payload, v5 properties)."""

    def __init__(self, client, run: str):
        self.client = client
        self.run = run
        self.msgs: list = []
        self._task = None

    async def start(self) -> "Recorder":
        await self.client.subscribe(f"xmig/{self.run}/#")

        async def listen():
            async for msg in self.client.messages:
                self.msgs.append(msg)

        self._task = asyncio.ensure_future(listen())
        return self

    def on(self, part: str) -> list:
        return [m for m in self.msgs if f"/{part}" in str(m.topic)]

    async def replay(self, msgs, *, retain: bool = False) -> None:
        for m in msgs:
            props = m.properties if getattr(m.properties, "CorrelationData", None) is not None else None
            await self.client.publish(str(m.topic), m.payload, qos=1, retain=retain, properties=props)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


@contextlib.asynccontextmanager
async def recorder(broker, run: str):
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as c:
        rec = await Recorder(c, run).start()
        try:
            yield rec
        finally:
            rec.stop()


def small(tmp_path, behaviour: str):
    path = tmp_path / f"small-{behaviour}.yaml"
    path.write_text(SMALL_PREFIX.replace("xen_behaviour: pre-fix", f"xen_behaviour: {behaviour}"))
    return load_scenario(path)


async def serving_actors(cfg, run: str, sc, runs: int):
    """The class set-up: a hypervisor and a guest that serve ``runs`` runs, as tasks."""
    hv = asyncio.ensure_future(actors.run_actor("hypervisor", cfg, run, serve=True, runs=runs))
    g = asyncio.ensure_future(actors.run_actor("guest", cfg, run, scenario=sc, serve=True, runs=runs))
    return hv, g


def last_batch(rec: Recorder) -> list:
    """The recorded event batches of the toolstack that end its run (VerifyDone OK,
    RunSummary, MigrationFinished), as a broker user sees them: sealed bytes."""
    return rec.on("events/toolstack")[-2:]


# ----------------------------------------------------------------------------- F1: events of an earlier run


async def test_run_1s_verdict_replayed_into_run_2_or_to_an_idle_watcher_changes_no_verdict(mqtt_broker, tmp_path,
                                                                                           caplog):
    from migrate.cli.broker import watch_run
    from migrate.events.fold import RunFold

    good, bad = small(tmp_path, "fixed"), small(tmp_path, "pre-fix")
    cfg = cfg_for(mqtt_broker)
    hv, g = await serving_actors(cfg, "class", good, runs=2)
    async with recorder(mqtt_broker, "class") as rec:
        first = await actors.remote_run(good, RunOptions(), broker=cfg, run_id="class")
        assert first.ok and first.verify.ok
        await asyncio.sleep(0.2)
        run1 = list(rec.msgs)
        ending = last_batch(rec)
        assert any(b"MigrationFinished" in bytes(m.payload) for m in ending)

        # A fresh watcher, no run going, fed run 1's batches (and all else of run 1).
        idle = RunFold()
        ready = asyncio.Event()
        lonely = asyncio.ensure_future(watch_run(cfg, "class", listener=idle, ready=ready))
        await asyncio.wait_for(ready.wait(), 10)
        await rec.replay(ending)
        await asyncio.sleep(0.5)
        assert not lonely.done()                 # no verdict: it saw no session begin
        lonely.cancel()

        # Run 2 (pre-fix: pages go missing), watched, with run 1's ending replayed into it,
        # then all of run 1 and what was seen of run 2 so far, shuffled, over and over.
        ready = asyncio.Event()
        watcher = asyncio.ensure_future(watch_run(cfg, "class", listener=RunFold(), ready=ready))
        await asyncio.wait_for(ready.wait(), 10)
        gate = Gate()
        run2 = asyncio.ensure_future(actors.remote_run(bad, RunOptions(), broker=cfg, run_id="class", pacer=gate))
        await asyncio.wait_for(gate.reached.wait(), 15)
        await rec.replay(ending)
        mixed = [m for m in run1 + list(rec.msgs) if "/presence/" not in str(m.topic)]
        rnd = random.Random(7)
        for _ in range(3):
            rnd.shuffle(mixed)
            await rec.replay(mixed)
        gate.opened.set()
        second = await asyncio.wait_for(run2, 60)
    emb = await run_scenario(bad, RunOptions())
    assert comparable(second) == comparable(emb) and not second.verify.ok
    outcome = await asyncio.wait_for(watcher, 10)
    assert outcome.startswith("completed, but the destination diverged"), outcome
    dropped = second.broker["dropped"]
    assert dropped.get("replayed", 0) + dropped.get("unproven", 0) > 0, dropped
    assert set(dropped) <= {"replayed", "unproven", "other-session"}, dropped
    # Said once per reason, not once per message.
    assert caplog.text.count("watch dropped a message on xmig/class/events/toolstack: from a client that has "
                             "not proved") <= 2
    assert await asyncio.wait_for(hv, 10) == "released" and await asyncio.wait_for(g, 10) == "released"


# ----------------------------------------------------------------------------- F2: a recorded create


async def test_a_recorded_create_makes_no_fresh_hypervisor_build_a_domain(mqtt_broker):
    sc = scenario("idle")
    cfg = cfg_for(mqtt_broker)
    async with recorder(mqtt_broker, "cap") as rec:
        hv, g = await start_actor_tasks(cfg, "cap", sc)
        assert (await actors.remote_run(sc, RunOptions(), broker=cfg, run_id="cap")).ok
        await asyncio.gather(hv, g)
        creates = [m for m in rec.on("hypervisor/rpc") if b"create" in bytes(m.payload)]
        assert len(creates) == 1
        box: list = []
        hv_t = await connect(cfg, "cap", "hypervisor")
        fresh = asyncio.ensure_future(actors.serve_hypervisor(hv_t, actor_box=box))
        try:
            await asyncio.sleep(0.3)
            await rec.replay(creates)
            await rec.replay(rec.on("presence/toolstack"), retain=True)   # and its old claim
            await rec.replay(rec.on("alive/toolstack"))
            await asyncio.sleep(0.5)
            assert box[0].owner is None and box[0].hv is None       # nothing built for the old toolstack
            assert hv_t.dropped["unproven"] >= 1
            # The real next toolstack is served as ever.
            g_t = await connect(cfg, "cap", "guest")
            g2 = asyncio.ensure_future(actors.serve_guest(sc, g_t))
            res = await actors.remote_run(sc, RunOptions(), broker=cfg, run_id="cap")
            assert res.ok and await asyncio.wait_for(fresh, 10) == "released"
            await asyncio.wait_for(g2, 10)
            await g_t.close()
        finally:
            fresh.cancel()
            await hv_t.close()


# ----------------------------------------------------------------------------- F3: a recorded claim


async def test_a_past_hypervisors_claim_and_heartbeats_replayed_neither_squat_nor_answer(mqtt_broker, caplog):
    cfg = cfg_for(mqtt_broker, timeout=1.0)
    async with recorder(mqtt_broker, "sq") as rec:
        old = await connect(cfg, "sq", "hypervisor")
        await old.claim()
        await asyncio.sleep(0.6)
        claim = [m for m in rec.on(f"presence/hypervisor/{old.client_id}") if b"challenge" in bytes(m.payload)
                 and b"hello" not in bytes(m.payload)]
        beats = rec.on("alive/hypervisor")
        assert claim and len(beats) >= 2
        await old.close()
        await asyncio.sleep(0.2)
        stop = asyncio.Event()

        async def squat():
            await rec.replay(claim, retain=True)
            while not stop.is_set():
                await rec.replay(beats)
                await asyncio.sleep(0.1)

        squatter = asyncio.ensure_future(squat())
        try:
            await asyncio.sleep(0.3)
            new = await connect(cfg, "sq", "hypervisor")
            ts = await connect(cfg, "sq", "toolstack")
            try:
                await new.claim()                  # not refused: the old claim never proves itself
                assert "ignored a claim of hypervisor" in caplog.text
                await ts.claim()
                await ts.wait_for_peer("hypervisor", 5)
                await asyncio.sleep(0.5)           # the old one's beats keep coming
                # The toolstack counts only the hypervisor that proved itself to it.
                assert ts.peers.live("hypervisor", 1.0) == {new.client_id}
            finally:
                await ts.close()
                await new.close()
        finally:
            stop.set()
            await squatter


# ----------------------------------------------------------------------------- watch's verdict


@pytest.mark.parametrize("snapshots", [True, False])
async def test_a_watcher_that_joined_late_gives_a_verdict_only_from_the_runs_snapshot(mqtt_broker, monkeypatch,
                                                                                      snapshots):
    """A watcher that joins after the first batches starts from the toolstack's sealed
    snapshot (migrate/transport/snapshot.py) and so saw the whole run; without one (a
    toolstack that keeps none) it gives no verdict for a run it did not see."""
    from migrate.cli.broker import watch_run
    from migrate.events.fold import RunFold

    monkeypatch.setattr(MqttTransport, "keeps_snapshots", snapshots)
    sc = scenario("idle")
    cfg = cfg_for(mqtt_broker)
    hv, g = await start_actor_tasks(cfg, "late", sc)
    gate = Gate()
    run = asyncio.ensure_future(actors.remote_run(sc, RunOptions(), broker=cfg, run_id="late", pacer=gate))
    await asyncio.wait_for(gate.reached.wait(), 15)
    await asyncio.sleep(0.3)                    # the run's first event batches are out
    ready = asyncio.Event()
    watcher = asyncio.ensure_future(watch_run(cfg, "late", listener=RunFold(), ready=ready))
    await asyncio.wait_for(ready.wait(), 10)
    gate.opened.set()
    assert (await asyncio.wait_for(run, 60)).ok
    outcome = await asyncio.wait_for(watcher, 10)
    if snapshots:
        assert outcome == "completed", outcome
    else:
        assert outcome.startswith("completed, but this watcher joined after the run began"), outcome
    await asyncio.gather(hv, g)


# ----------------------------------------------------------------------------- --insecure on a sealed run


async def test_an_insecure_watcher_or_actor_on_a_sealed_run_is_named_in_one_line(mqtt_broker, caplog):
    from migrate.cli.broker import watch_run
    from migrate.events.fold import RunFold

    sealed = cfg_for(mqtt_broker)
    loose = parse_broker_url(mqtt_broker.url, timeout=1.0, insecure=True)
    # A watcher --insecure, started first: the sealed actors' arrival stops it, named.
    ready = asyncio.Event()
    watcher = asyncio.ensure_future(watch_run(loose, "mix", listener=RunFold(), ready=ready))
    await asyncio.wait_for(ready.wait(), 10)
    hv_t = await connect(sealed, "mix", "hypervisor")
    await hv_t.claim()
    with pytest.raises(RunRefused, match="run 'mix' is sealed with a run key .* runs --insecure .*--key-file"):
        await asyncio.wait_for(watcher, 5)
    # Started after: refused at once.
    with pytest.raises(RunRefused, match="is sealed with a run key"):
        await asyncio.wait_for(watch_run(loose, "mix", listener=RunFold()), 5)
    # An --insecure guest on the sealed run: the sealed hypervisor names it, once.
    g_t = await connect(loose, "mix", "guest")
    try:
        await g_t.claim()
    except RunRefused:
        pass                                      # it saw the sealed hypervisor's claim
    with pytest.raises(PeerLost, match="a guest without the run key is on it .*--insecure"):
        await hv_t.wait_for_peer("guest", 0.5)
    assert caplog.text.count("a guest without the run key") == 1
    await g_t.close()
    await hv_t.close()
    # What sealed actors leave on the run id when they go (their retained "gone") does
    # not stop a later --insecure run there.
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(watch_run(loose, "mix", listener=RunFold()), 1.0)


# ----------------------------------------------------------------------------- the admission rules


def test_sessions_and_challenges_decide_what_a_receiver_accepts():
    key = test_key()
    peers = _Peers()
    watch = Admission(key, "xmig-watch-0000000001", "watch", "r", peers, 1.0)
    ts_id = "xmig-toolstack-0000000002"
    s1, s2 = runkey.new_session(), runkey.new_session()
    ev = "xmig/r/events/toolstack"
    batch = wire.encode({"seq": 1, "events": []})

    def sealed(topic, seq, session, bind=b"", payload=batch):
        return runkey.seal(key, topic, ts_id, seq, payload, bind=bind, session=session)

    def open_(topic, data, kind):
        return watch.open(topic, kind, topic.split("/"), data)

    # Before the toolstack proves itself: nothing of it counts.
    assert open_(ev, sealed(ev, 1, s2), "events") is None and watch.dropped["unproven"] == 1
    # A proof bound to another challenge (one recorded for another receiver) is no proof.
    pt = f"xmig/r/proof/toolstack/{watch.client_id}"
    assert open_(pt, sealed(pt, 5, s2, bind=b"x" * 16), "proof") is None and watch.dropped["forged"] == 1
    assert open_(pt, sealed(pt, 6, s2, bind=watch.challenge), "proof") is not None
    assert watch.session == s2 and watch.holder == ts_id
    # What it sent before its proof is no news; after it, its session only, each once.
    assert open_(ev, sealed(ev, 4, s2), "events") is None and watch.dropped["replayed"] == 1
    assert open_(ev, sealed(ev, 7, s1), "events") is None and watch.dropped["other-session"] == 1
    assert open_(ev, sealed(ev, 8, s2), "events") is not None
    assert open_(ev, sealed(ev, 8, s2), "events") is None and watch.dropped["replayed"] == 2
    # An older xmig's seal is named as such.
    old = bytearray(sealed(ev, 9, s2))
    old[2] = 1
    assert open_(ev, bytes(old), "events") is None and watch.dropped["version"] == 1
    # Gone is gone.
    peers.gone.add(ts_id)
    assert open_(ev, sealed(ev, 10, s2), "events") is None and watch.dropped["unproven"] == 2


def test_a_second_live_toolstack_does_not_take_the_session_over():
    key = test_key()
    peers = _Peers()
    hv = Admission(key, "xmig-hypervisor-0000000001", "hypervisor", "r", peers, 5.0)
    pt = f"xmig/r/proof/toolstack/{hv.client_id}"
    first, second = "xmig-toolstack-000000000a", "xmig-toolstack-000000000b"
    s1, s2 = runkey.new_session(), runkey.new_session()
    for cid, s in ((first, s1), (second, s2)):
        proof = runkey.seal(key, pt, cid, 1, wire.encode({"client": cid}), bind=hv.challenge, session=s)
        assert hv.open(pt, "proof", pt.split("/"), proof) is not None
        peers.heard[cid] = time.monotonic()
    assert hv.session == s1 and hv.holder == first
    peers.gone.add(first)
    proof = runkey.seal(key, pt, second, 2, wire.encode({"client": second}), bind=hv.challenge, session=s2)
    hv.open(pt, "proof", pt.split("/"), proof)
    assert hv.session == s2 and hv.holder == second


@pytest.fixture(autouse=True)
def _warnings(caplog):
    caplog.set_level(logging.WARNING, logger="xmig.mqtt")
    yield



async def test_xmig_watch_insecure_on_a_sealed_run_exits_2_in_one_line(mqtt_broker):
    import os
    import subprocess
    import sys

    from tests.transport.test_mqtt_run import ROOT

    hv_t = await connect(cfg_for(mqtt_broker), "sealed", "hypervisor")
    await hv_t.claim()
    try:
        env = {k: v for k, v in os.environ.items() if k != "XMIG_RUN_KEY"}
        out = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "migrate.cli.broker", "watch", "--broker", mqtt_broker.url, "--run", "sealed",
            "--insecure", "--no-dashboard", "--timeout", "2"], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=60)
    finally:
        await hv_t.close()
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("xmig: error: run 'sealed' is sealed with a run key")
    assert "--key-file" in out.stderr.strip().splitlines()[-1]
