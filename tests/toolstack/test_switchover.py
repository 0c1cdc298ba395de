"""migration.switchover: what the saver does when the policy says stop.

``live`` is Xen's send_memory_live (the dirty set the last CLEAN returned is still sent
with the guest running; the suspended pass sends only what was dirtied meanwhile);
``stopped`` is QEMU's and SimGrid's (suspend first, then send the pending set).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from migrate.run.report import build_report
from migrate.run.runner import RunOptions, result_from_events, run_scenario
from migrate.run.scenario import ScenarioError, load_scenario
from migrate.events import EventBus

ROOT = Path(__file__).resolve().parents[2]


def _run(name: str, **migration):
    sc = load_scenario(ROOT / "examples" / f"{name}.yaml")
    sc = sc.model_copy(update={"migration": sc.migration.model_copy(update=migration)})
    events: list = []
    bus = EventBus()
    bus.subscribe(events.append)
    result = asyncio.run(run_scenario(sc, RunOptions(), bus=bus))
    return result, events


def _passes(result):
    return [(r.iteration, r.phase, r.pages_sent) for r in result.save.rounds]


def test_stopped_sends_the_pending_set_suspended_and_bounds_the_downtime():
    """webserver.yaml with QEMU's rule (50 ms): the policy stops at the top of
    iteration 4 with 1,117 dirty pages. Live (Xen) still sends them running and suspends
    for the 298 dirtied meanwhile; stopped suspends first and sends the 1,117."""
    policy = {"policy": "downtime", "policy_params": {"downtime_limit": 0.05}}
    live, _ = _run("webserver", switchover="live", **policy)
    stopped, _ = _run("webserver", switchover="stopped", **policy)
    assert _passes(live)[3:] == [(4, "live", 1117), (5, "final", 298)]
    assert _passes(stopped)[3:] == [(4, "final", 1117)]
    assert _passes(stopped)[:3] == _passes(live)[:3]
    assert live.ok and stopped.ok
    # Stopped: the downtime is the pending set over the link, which the policy bounded.
    assert stopped.save.totals.downtime_s <= 0.05
    assert stopped.save.totals.downtime_s > live.save.totals.downtime_s


def test_xens_own_policy_stops_after_the_pass_so_both_modes_agree():
    """simple_precopy_policy's iteration cap fires on the second call of a loop turn,
    after the pass and before the CLEAN: nothing is pending, so stopped is live."""
    live, _ = _run("webserver", switchover="live")
    stopped, _ = _run("webserver", switchover="stopped")
    assert _passes(live) == _passes(stopped)
    assert build_report(live)["totals"] == build_report(stopped)["totals"]


def test_stopped_before_pass_1_sends_all_memory_suspended():
    """A policy that stops at once (the dirty threshold above p2m_size): stopped
    suspends the guest and sends every page in one paused pass (pure stop-and-copy)."""
    res, _ = _run("idle", switchover="stopped", policy_params={"dirty_threshold": 1 << 40})
    assert [(r.iteration, r.phase) for r in res.save.rounds] == [(1, "final")]
    assert res.save.totals.iterations == 0
    assert res.ok
    assert res.save.rounds[0].pages_sent == res.destination["source_ram_pages"]
    # send_all_pages is told p2m_size, as the held set is every PFN
    assert res.save.rounds[0].dirty_count == res.save.p2m_size
    assert res.save.totals.downtime_s == pytest.approx(res.save.totals.total_time_s, abs=1e-3)


def test_the_report_and_a_rebuilt_report_name_the_switchover():
    res, events = _run("webserver", switchover="stopped",
                       policy="downtime", policy_params={"downtime_limit": 0.05})
    rep = build_report(res)
    assert rep["switchover"] == "stopped"
    assert build_report(result_from_events(events))["switchover"] == "stopped"
    live, _ = _run("idle")
    assert build_report(live)["switchover"] == "live"


def test_an_unknown_switchover_is_one_error_naming_the_field(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("guest: {memory: 64MiB}\nmigration: {switchover: paused}\n")
    with pytest.raises(ScenarioError) as exc:
        load_scenario(path)
    text = str(exc.value)
    assert "migration.switchover" in text and "paused" in text and "\n" not in text


def _stopped_scenario(tmp_path: Path) -> Path:
    """webserver.yaml under QEMU's rule with ``switchover: stopped``: the policy stops at
    the top of iteration 4 with 1,117 pages held back for the paused pass."""
    text = (ROOT / "examples" / "webserver.yaml").read_text().replace(
        "  policy: xen\n", "  policy: downtime\n  policy_params: {downtime_limit: 0.05}\n  switchover: stopped\n")
    path = tmp_path / "webserver-stopped.yaml"
    path.write_text(text)
    return path


def test_stopped_final_pass_counts_the_held_set_as_xen_counts_deferred_pages(tmp_path, xmig):
    """suspend_and_send_dirty (xg_sr_save.c) tells send_dirty_pages ``dirty_count +
    nr_deferred_pages``; the set held back plays the deferred pages' part, so the paused
    pass's dirty_count is the final CLEAN's (0 here: the guest was suspended at once)
    plus the 1,117 held back, never 0 beside 1,117 pages sent. The report, the CSV, the
    printed pass table and the event log say the same."""
    import csv as _csv

    from migrate.events import CleanDone, PassEnded, PassStarted
    from migrate.events.log import read_event_log

    out = xmig("run", "--guest", _stopped_scenario(tmp_path), "--no-dashboard", "--report", tmp_path / "r.json",
               "--csv", tmp_path / "r.csv", "--record", tmp_path / "r.events")
    assert out.returncode == 0, out.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    final = rep["rounds"][-1]
    assert (final["phase"], final["pages_sent"]) == ("final", 1117)
    log = read_event_log(tmp_path / "r.events")
    clean = [e for e in log.events if isinstance(e, CleanDone) and e.final][0]
    assert final["dirty_count"] == clean.dirty_count + 1117 == 1117
    rows = list(_csv.DictReader((tmp_path / "r.csv").open()))
    assert int(rows[-1]["dirty_count"]) == final["dirty_count"]
    started = [e for e in log.events if isinstance(e, PassStarted)][-1]
    ended = [e for e in log.events if isinstance(e, PassEnded)][-1]
    assert started.dirty_count == ended.stats.dirty_count == final["dirty_count"]
    table = [ln.split() for ln in out.stdout.splitlines() if ln.split()[:2] == ["4", "final"]]
    assert table and int(table[0][2]) == final["dirty_count"]


def test_live_final_pass_dirty_count_is_the_final_cleans():
    """Nothing held back (Xen's switch-over): the paused pass reports the final CLEAN's
    dirty_count alone."""
    res, events = _run("webserver")
    from migrate.events import CleanDone

    clean = [e for e in events if isinstance(e, CleanDone) and e.final][0]
    assert res.save.rounds[-1].dirty_count == clean.dirty_count == res.save.rounds[-1].pages_sent


def test_xens_own_policy_differs_between_modes_when_the_dirty_threshold_stops():
    """pod-boot.yaml under ``xen``: the CLEAN after pass 4 reports 44 < 50, so the
    policy stops at the top of the loop. Live (Xen) sends the 44 with the guest running
    and suspends for the 3 dirtied meanwhile; stopped suspends first and sends the 44
    paused: one pass fewer and a longer downtime."""
    live, _ = _run("pod-boot", switchover="live")
    stopped, _ = _run("pod-boot", switchover="stopped")
    assert _passes(live)[3:] == [(4, "live", 642), (5, "live", 44), (6, "final", 3)]
    assert _passes(stopped)[3:] == [(4, "live", 642), (5, "final", 44)]
    assert stopped.save.rounds[-1].dirty_count == 44
    assert stopped.save.totals.downtime_s > live.save.totals.downtime_s
    assert live.ok and stopped.ok
