"""The one fold of a run's events: what it holds equals what the engine and the report say."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from pathlib import Path

import pytest

from migrate.events import EventBus, PassEnded, RunStarted
from migrate.events.fold import RunFold, fold_events
from migrate.run.report import build_report
from migrate.run.runner import RunOptions, result_from_events, result_from_fold, run_scenario
from migrate.run.scenario import load_scenario

EX = Path(__file__).resolve().parents[2] / "examples"


def run_with_events(name: str, behaviour: str):
    events = []

    def keep(ev):
        if isinstance(ev, PassEnded):       # as a recorder keeps it: the pass as it ended
            ev = dataclasses.replace(ev, stats=copy.copy(ev.stats))
        events.append(ev)

    bus = EventBus()
    bus.subscribe(keep)
    res = asyncio.run(run_scenario(load_scenario(EX / name), RunOptions(behaviour=behaviour), bus=bus))
    return events, res


@pytest.mark.parametrize("behaviour", ["fixed", "pre-fix"])
def test_the_report_rebuilt_from_the_fold_is_the_toolstacks(behaviour):
    events, res = run_with_events("balloon.yaml", behaviour)
    fold = fold_events(events)
    assert build_report(result_from_fold(fold)) == build_report(res)
    assert build_report(result_from_events(events)) == build_report(res)
    s = fold.state
    # the passes, balloon moves counted after each PassEnded included, are the engine's
    assert [r.as_dict() for r in s.rounds] == [r.as_dict() for r in res.save.rounds]
    sent = s.sent_so_far()
    assert (sent["data"], sent["xtab"]) == (res.save.totals.pages_sent, res.save.totals.xtab_sent)
    assert s.balloon_during_passes == (65536, 65536)
    assert s.verify == res.verify and s.outcome == "completed" and s.phase == "done"


def test_a_fold_without_the_summary_has_no_report():
    events, _ = run_with_events("idle.yaml", "fixed")
    fold = fold_events(events[: len(events) // 2])
    with pytest.raises(ValueError, match="cut short"):
        result_from_fold(fold)


def test_a_late_fold_learns_the_runs_names_from_its_summary():
    events, res = run_with_events("idle.yaml", "pre-fix")
    fold = fold_events(ev for ev in events if not isinstance(ev, RunStarted))
    s = fold.state
    assert (s.scenario, s.seed, s.behaviour, s.policy) == (res.scenario, res.seed, "pre-fix", res.policy)
    assert not s.sites and not s.is_fixed("p2m_remove_page")      # no per-site word: the run's behaviour


def test_each_call_site_answers_for_itself():
    fold = RunFold()
    events, _ = run_with_events("idle.yaml", "fixed")
    start = next(ev for ev in events if isinstance(ev, RunStarted))
    fold(dataclasses.replace(start, behaviour="mixed",
                             sites={**start.sites, "guest_physmap_add_entry": "pre-fix"}))
    assert fold.state.is_fixed("p2m_remove_page") and not fold.state.is_fixed("guest_physmap_add_entry")
    assert fold.version == 1
