"""The site examples through the three actors: the mapping ops and a late PoD balloon
travel from the guest actor to the hypervisor actor (codec-framed in process, and over a
real Mosquitto) and give the embedded run's report."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from migrate import actors
from migrate.run.report import build_report
from migrate.run.runner import RunOptions, run_scenario
from migrate.run.scenario import load_scenario
from tests.transport.test_mqtt_run import cfg_for, in_process_run, start_actor_tasks

SITES = Path(__file__).resolve().parents[2] / "examples" / "sites"


def comparable(result) -> dict:
    rep = build_report(result)
    rep.pop("wall", None)
    rep.pop("broker", None)
    return rep


@pytest.mark.parametrize("name", ["set-typed", "pod-steal", "physmap-add", "remove-page"])
async def test_the_codec_framed_actors_give_the_embedded_report(name):
    sc = load_scenario(SITES / f"{name}.yaml")
    opts = RunOptions(behaviour="pre-fix")
    emb = await run_scenario(sc, opts)
    rem, hv, g = await in_process_run(sc, opts)
    assert comparable(rem) == comparable(emb)
    assert await hv == "released" and await g == "released"


@pytest.mark.mqtt
async def test_a_bar_mapped_over_mqtt_gives_the_embedded_report(mqtt_broker):
    sc = load_scenario(SITES / "set-typed.yaml")
    opts = RunOptions(behaviour="pre-fix")
    emb = await run_scenario(sc, opts)
    cfg = cfg_for(mqtt_broker)
    hv, g = await start_actor_tasks(cfg, "sites-set-typed", sc)
    rem = await actors.remote_run(sc, opts, broker=cfg, run_id="sites-set-typed")
    assert rem.save.outcome == "completed", rem.save.error
    assert comparable(rem) == comparable(emb)
    assert comparable(rem)["pages"]["leftover_sent_as_xtab"] > 0
    assert await asyncio.wait_for(hv, 5) == "released"
    assert await asyncio.wait_for(g, 5) == "released"
