"""The saver runs xg_sr_save.c's stages, in Xen's order, and says so in its events."""

from __future__ import annotations

import asyncio

import pytest

from migrate.events import (CleanDone, CleanOp, EventBus, PassPhase, PassStarted, Phase, PhaseChanged, SaveSetup,
                            Switchover)
from migrate.run.runner import RunOptions, run_scenario
from migrate.run.scenario import parse_scenario
from migrate.stream import NullSink, StreamError, StreamWriter
from migrate.toolstack.batches import SaveEngine
from migrate.toolstack.save import PrecopyEngine, SaveOptions, StatsOverflow

STAGES = ("_setup", "_send_domain_memory_live", "_enable_logdirty", "_send_memory_live",
          "_suspend_and_send_dirty", "_verify_frames", "_end_of_stream")


def scenario(**migration):
    return parse_scenario({
        "name": "stages", "seed": 5,
        "guest": {"memory": "16MiB", "workloads": [{"kind": "uniform", "rate": "2MiB/s"}]},
        "link": {"bandwidth": "1Gbit/s", "latency": "1ms"},
        "migration": {"start": "100ms", "verify": True, **migration},
    })


def run(sc, monkeypatch=None, calls=None):
    if calls is not None:
        for name in STAGES:
            orig = getattr(PrecopyEngine, name)

            async def spy(self, *a, _orig=orig, _name=name, **k):
                calls.append(_name)
                return await _orig(self, *a, **k)
            monkeypatch.setattr(PrecopyEngine, name, spy)
    bus, seen = EventBus(), []
    bus.subscribe(seen.append)
    res = asyncio.run(run_scenario(sc, RunOptions(), bus=bus))
    return res, seen


def test_send_domain_memory_live_calls_the_four_stages_in_xens_order(monkeypatch):
    calls: list[str] = []
    res, _ = run(scenario(), monkeypatch, calls)
    assert res.save.outcome == "completed"
    assert calls == list(STAGES)


def _story(events, squeeze: bool = True) -> list[str]:
    """The save as the stages tell it: phases, CLEANs and passes, in order."""
    out = []
    for e in events:
        if isinstance(e, PhaseChanged):
            out.append(f"phase {e.phase}")
        elif isinstance(e, SaveSetup):
            out.append("setup")
        elif isinstance(e, CleanDone):
            out.append(f"{e.op}{' final' if e.final else ''}")
        elif isinstance(e, PassStarted):
            out.append(f"{e.phase} pass")
    if not squeeze:
        return out
    # Collapse the live loop (its length depends on the guest) to one CLEAN + pass.
    squeezed = []
    for item in out:
        if squeezed[-2:] != ["CLEAN", "live pass"] or item not in ("CLEAN", "live pass"):
            squeezed.append(item)
    return squeezed


def test_each_stage_publishes_its_events_in_xens_order():
    _, seen = run(scenario())
    assert _story(seen) == [
        "phase setup", "setup",                          # x86_hvm_setup fixes p2m_size
        "phase precopy", "live pass",                     # send_memory_live: pass 1 sends everything,
        "CLEAN", "live pass",                             # then CLEAN + the dirty PFNs, while the policy says so
        "phase suspended", "CLEAN final",                 # suspend_and_send_dirty
        "phase final", "final pass",
        "phase verify", "verify pass", "PEEK",            # verify_frames
        "phase done",                                     # END
    ]


def test_the_stopped_switchover_suspends_before_the_held_set_is_sent():
    _, seen = run(scenario(switchover="stopped", policy_params={"max_iterations": 3}))
    story = _story(seen, squeeze=False)
    last_live = max(i for i, s in enumerate(story) if s == "live pass")
    # The loop's last CLEAN found pages dirty; they are not sent live: the domain is
    # suspended first and sends them, with what the final CLEAN adds, paused.
    assert story[last_live + 1:last_live + 6] == ["CLEAN", "phase suspended", "CLEAN final", "phase final",
                                                  "final pass"]
    final = [e for e in seen if isinstance(e, PassStarted) and e.phase is PassPhase.FINAL]
    assert len(final) == 1 and final[0].entries > 0


def test_save_options_are_enums_and_refuse_an_unknown_mode():
    opts = SaveOptions(switchover="stopped", engine="reference", stats_overflow="saturate")
    assert opts.switchover is Switchover.STOPPED
    assert opts.engine is SaveEngine.REFERENCE
    assert opts.stats_overflow is StatsOverflow.SATURATE
    assert StatsOverflow.TRUNCATE.initial_dirty_count(1 << 32) == 0
    assert StatsOverflow.SATURATE.initial_dirty_count(1 << 32) == 0xFFFFFFFF
    with pytest.raises(ValueError, match="fast"):
        SaveOptions(engine="fast")


def test_the_engine_writes_into_a_sink_not_into_a_writer_it_is_handed():
    with pytest.raises(StreamError, match="Sink"):
        PrecopyEngine(None, StreamWriter(NullSink()), None, None, EventBus(), start=0.0)


def test_clean_events_name_the_op_as_an_enum():
    _, seen = run(scenario())
    ops = {e.op for e in seen if isinstance(e, CleanDone)}
    assert ops == {CleanOp.CLEAN, CleanOp.PEEK}
    assert all(isinstance(e.phase, Phase) for e in seen if isinstance(e, PhaseChanged))
