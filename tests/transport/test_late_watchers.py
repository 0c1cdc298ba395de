"""A watcher that joins a run late starts from the toolstack's sealed, retained snapshot
(``migrate/transport/snapshot.py``) and ends with the report's numbers; one that was
there from the start is not told it joined late; a forged or unsealed snapshot is
refused; the snapshot is cleared when the run ends. All over a real Mosquitto."""

from __future__ import annotations

import asyncio

import pytest

from migrate import actors
from migrate.run.report import build_report
from migrate.run.runner import RunOptions
from migrate.transport import runkey
from migrate.transport.mqtt import connect
from migrate.transport.snapshot import LateJoin, Snapshot, SnapshotWriter, read_snapshot
from migrate.ui.model import RunView
from migrate.ui.playback import Pacer
from tests.transport.test_mqtt_run import cfg_for, scenario, start_actor_tasks

pytestmark = pytest.mark.mqtt


def without_wall(rep: dict) -> dict:
    rep = dict(rep)
    rep.pop("wall", None)
    rep.pop("broker", None)
    return rep


class Watched:
    """A watcher's RunView and fold; the first event it folded, and whether it knew the
    run's names and map by the time it had caught up with virtual time ``catch_up``."""

    def __init__(self) -> None:
        from migrate.events.fold import RunFold

        self.view = RunView("")
        self.fold = RunFold()
        self.first = None
        self.catch_up: float | None = None
        self.caught_up_knowing: bool | None = None

    def knows(self) -> bool:
        s = self.view.state
        return bool(s.scenario and s.seed is not None and s.behaviour and self.view.gfnmap.totals()["sent"] > 0)

    def __call__(self, ev) -> None:
        self.first = self.first or ev
        self.view(ev)
        self.fold(ev)
        if self.catch_up is not None and self.caught_up_knowing is None and self.view.state.t >= self.catch_up:
            self.caught_up_knowing = self.knows()


async def paced_run(cfg, run: str, behaviour: str, speed: float):
    sc = scenario("balloon")
    hv, g = await start_actor_tasks(cfg, run, sc)
    rem = asyncio.ensure_future(actors.remote_run(sc, RunOptions(behaviour=behaviour), broker=cfg, run_id=run,
                                                  pacer=Pacer(speed)))
    return rem, hv, g


async def test_a_watcher_joining_mid_run_sees_the_run_at_once_and_ends_with_the_report(mqtt_broker):
    from migrate.cli.broker import watch_run, watched_report

    cfg = cfg_for(mqtt_broker)
    early, late = Watched(), Watched()
    ready = asyncio.Event()
    w_early = asyncio.ensure_future(watch_run(cfg, "late", listener=early, ready=ready))
    await asyncio.wait_for(ready.wait(), 10)
    rem, hv, g = await paced_run(cfg, "late", "pre-fix", speed=3.0)       # ~3.5 s of wall
    while early.view.state.t < 4.0 and not rem.done():      # mid pass 1, the balloon inflated (~2 s left)
        await asyncio.sleep(0.05)
    assert not rem.done()
    late.catch_up = early.view.state.t          # where the run stood when the late watcher came
    w_late = asyncio.ensure_future(watch_run(cfg, "late", listener=late))
    result = await asyncio.wait_for(rem, 30)
    outcomes = await asyncio.wait_for(asyncio.gather(w_early, w_late), 10)
    await asyncio.gather(hv, g)
    # Both the early and the late watcher give the run's own verdict: neither "joined late".
    assert all(o.startswith("completed, but the destination diverged") for o in outcomes), outcomes
    # It started from the run's first event (the snapshot), and by the time it had caught
    # up with where the run stood when it came, it showed the names and a non-empty map.
    assert type(late.first).__name__ == "RunStarted"
    assert late.caught_up_knowing is True
    assert late.view.state.scenario == "balloon" and late.view.state.behaviour == "pre-fix"
    expected = without_wall(build_report(result))
    for w in (early, late):
        assert without_wall(watched_report(w.fold)) == expected
    # The late watcher's map is the early one's, GFN for GFN.
    assert (late.view.gfnmap.counts() == early.view.gfnmap.counts()).all()


async def test_an_early_watcher_is_never_told_it_joined_late(mqtt_broker):
    from migrate.cli.broker import watch_run

    cfg = cfg_for(mqtt_broker)
    sc = scenario("idle")
    w = Watched()
    ready = asyncio.Event()
    watcher = asyncio.ensure_future(watch_run(cfg, "early", listener=w, ready=ready))
    await asyncio.wait_for(ready.wait(), 10)
    assert w.view.events_seen == 0          # the header says "waiting for the run to start"
    hv, g = await start_actor_tasks(cfg, "early", sc)
    await actors.remote_run(sc, RunOptions(), broker=cfg, run_id="early")
    assert await asyncio.wait_for(watcher, 10) == "completed"
    await asyncio.gather(hv, g)


async def test_a_forged_or_unsealed_retained_snapshot_is_refused_and_the_real_one_cleared(mqtt_broker):
    """A snapshot on the run's topic that is not sealed with the run key (unsealed, or
    sealed with another key, claiming to be the toolstack) is dropped and counted; the
    watcher takes the toolstack's own. After the run the retained snapshot is gone."""
    import aiomqtt

    from migrate.cli.broker import watch_run, watched_report

    cfg = cfg_for(mqtt_broker)
    rem, hv, g = await paced_run(cfg, "forge", "fixed", speed=3.0)
    await asyncio.sleep(1.5)                     # into the run (a few batches out), not a check
    assert not rem.done()
    topic = "xmig/forge/snapshot/toolstack"
    fake = SnapshotWriter()
    fake.add(1, [])
    bad_key = runkey.load_key(environ={runkey.KEY_ENV: "another-key-entirely-0123456789abcdef"})
    async with aiomqtt.Client("127.0.0.1", mqtt_broker.port) as cli:
        await cli.subscribe("xmig/forge/presence/toolstack/+")          # the toolstack's client id
        async for msg in cli.messages:
            toolstack = str(msg.topic).rsplit("/", 1)[1]
            break
        # sealed with another key in the toolstack's name, then unsealed: the broker keeps the last
        forged = runkey.seal(bad_key, topic, toolstack, 10 ** 6, fake.payload())
        await cli.publish(topic, forged, qos=1, retain=True)
        w0 = Watched()
        t0 = await connect(cfg, "forge", "watch")
        watch0 = asyncio.ensure_future(actors.watch(t0, w0))
        await asyncio.sleep(0.5)
        await cli.publish(topic, fake.payload(), qos=1, retain=True)
    w1 = Watched()
    t1 = await connect(cfg, "forge", "watch")
    watch1 = asyncio.ensure_future(actors.watch(t1, w1))
    result = await asyncio.wait_for(rem, 30)
    outcomes = await asyncio.wait_for(asyncio.gather(watch0, watch1), 10)
    for t in (t0, t1):
        await t.close()
    await asyncio.gather(hv, g)
    assert outcomes == ["completed", "completed"], outcomes
    assert t0.dropped["forged"] == 1 and t1.dropped["unsigned"] == 1, (t0.dropped, t1.dropped)
    for w in (w0, w1):
        assert without_wall(watched_report(w.fold)) == without_wall(build_report(result))
    # Cleared at the run's end: nothing retained on the topic any more.
    got = []
    async with aiomqtt.Client("127.0.0.1", mqtt_broker.port) as cli:
        await cli.subscribe(topic)
        await cli.subscribe("check/after")
        await cli.publish("check/after", b"x", qos=1)     # the broker sends retained ones before it
        async for msg in cli.messages:
            if str(msg.topic) == "check/after":
                break
            got.append(msg.payload)
    assert got == []


def test_a_snapshot_holds_every_batch_and_a_join_counts_none_twice():
    w = SnapshotWriter(clock=lambda: 0.0)
    batches = [[f"a{i}"] for i in range(1, 6)]
    for i, b in enumerate(batches[:3], 1):
        w.add(i, b)
    snap = read_snapshot(w.payload(["me"]))
    assert snap.upto == 3 and snap.batches == batches[:3]
    shown, counted = [], []
    join = LateJoin("me", lambda seq, ev: shown.append((seq, ev)), counted.append)
    join.batch(3, batches[2])          # a live batch the snapshot also holds
    join.batch(4, batches[3])
    assert not join.decided and shown == []
    assert not join.snapshot(Snapshot(1, (), batches[:1]))     # does not join up: wait for another
    assert join.snapshot(snap)
    join.batch(5, batches[4])
    assert [s for s, _ in shown] == [1, 2, 3, 4, 5] == counted
    assert [e for _, e in shown] == batches and not join.late
