"""The two new scenes have captions, with the report's numbers: an MMIO BAR over RAM
(set_typed_p2m_entry) and a PoD cache stealing what the balloon hands back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from migrate.events import EventBus
from migrate.run.runner import RunOptions, run_scenario
from migrate.run.scenario import load_scenario
from migrate.ui.gfnmap import GfnMap
from migrate.ui.narration import Narrator

SITES = Path(__file__).resolve().parents[2] / "examples" / "sites"


def narrated(name: str, behaviour: str):
    bus = EventBus()
    gfnmap = GfnMap(max_cells=4096)
    narrator = Narrator(gfnmap)
    bus.subscribe(gfnmap.on_event)
    bus.subscribe(narrator)
    res = asyncio.run(run_scenario(load_scenario(SITES / f"{name}.yaml"), RunOptions(behaviour=behaviour), bus=bus))
    return [c for c in narrator.captions], res


@pytest.mark.parametrize("behaviour", ["fixed", "pre-fix"])
def test_the_bar_scene_tells_the_gfns_it_takes_and_what_happens_to_their_bits(behaviour):
    caps, res = narrated("set-typed", behaviour)
    mapped = [c for c in caps if c.text.startswith("XEN_DOMCTL_memory_mapping (MMIO BAR) maps 64 MiB")]
    assert len(mapped) == 1 and mapped[0].interesting
    assert "set_typed_p2m_entry replaces 16,384 RAM entries, which the saver now finds XTAB" in mapped[0].text
    if behaviour == "fixed":
        n = res.pages["cleared_by_fix"]["set_typed_p2m_entry"]
        assert f"the fix marks them clean ({n:,} dirty bits cleared)" in mapped[0].text
    else:
        n = res.pages["leftover_bits"]
        assert f"pre-fix {n:,} dirty bits stay" in mapped[0].text
    assert n > 0
    assert any(c.text.startswith("XEN_DOMCTL_memory_mapping (unmap) takes the mapping off") for c in caps)


@pytest.mark.parametrize("behaviour", ["fixed", "pre-fix"])
def test_the_pod_scene_is_told_once_per_inflate(behaviour):
    caps, _ = narrated("pod-steal", behaviour)
    steal = [c.text for c in caps if c.text.startswith("the PoD cache is short of its entries")]
    assert len(steal) == 1
    assert ("marks each stolen GFN clean" in steal[0]) == (behaviour == "fixed")
