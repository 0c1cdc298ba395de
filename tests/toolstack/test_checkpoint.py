"""Checkpointed (Remus) streams: the backup at each checkpoint, and at failover.

After the live migration the primary runs on and is paused every ``interval`` to send
what it dirtied (xg_sr_save.c's checkpointed ``save()`` loop); the backup applies each
checkpoint's records at its CHECKPOINT record (xg_sr_restore.c ``handle_checkpoint``).
At ``failover`` the backup takes over from the last checkpoint it committed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from migrate.events import EventBus, Outcome, PassPhase, Phase, PhaseChanged
from migrate.run.report import build_report
from migrate.run.runner import RunOptions, result_from_events, run_scenario
from migrate.run.scenario import ScenarioError, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[2]
DEFLATE_AT = 3.5

#: A 128 MiB guest that gave 32 MiB back before the migration and takes it back at
#: DEFLATE_AT, during the replication (the live migration ends near t = 2.2 s).
SMALL = {
    "name": "checkpoint-small",
    "seed": 3,
    "guest": {
        "memory": "128MiB",
        "workloads": [{"kind": "uniform", "rate": "8MiB/s"},
                      {"kind": "hotset", "rate": "16MiB/s", "region": {"start": 0, "size": "25%"},
                       "hot_fraction": 0.2, "hot_share": 0.9}],
        "balloon": {"batch_pages": 512, "rate": "512MiB/s", "reuse_share": 0.5, "reuse_within": "300ms",
                    "schedule": [{"at": "0.5s", "target": "-32MiB"}, {"at": f"{DEFLATE_AT}s", "target": "+32MiB"}]},
    },
    "migration": {"start": "1s", "checkpoint": {"interval": "200ms", "failover": "5s"}},
}


def _scenario(failover: float | None = None, behaviour: str = "fixed", **migration):
    data = {**SMALL, "migration": {**SMALL["migration"], "xen_behaviour": behaviour, **migration}}
    if failover is not None:
        data["migration"]["checkpoint"] = {"interval": "200ms", "failover": failover}
    return parse_scenario(data)


def _run(scenario, stream: str | None = None):
    events: list = []
    bus = EventBus()
    bus.subscribe(events.append)
    result = asyncio.run(run_scenario(scenario, RunOptions(stream=stream), bus=bus))
    return result, events


#: Failover times the sweep tries: before the deflate, just after it (before and after
#: the first checkpoint that follows it commits), and later.
FAILOVERS = (2.5, 3.3, 3.52, 3.7, 3.9, 4.4, 5.0)


@pytest.mark.parametrize("failover", FAILOVERS)
def test_fixed_backup_verifies_exactly_at_every_failover(failover):
    result, _ = _run(_scenario(failover, "fixed"))
    rep = build_report(result)
    assert result.save.outcome is Outcome.COMPLETED
    assert rep["checkpoint"]["checkpoints"] >= 2
    assert result.verify.missing_pages == 0 and result.verify.stale_pages == 0, rep["checkpoint"]
    # Consistent at every checkpoint, not only the last.
    assert all(c["missing"] == 0 and c["stale"] == 0 for c in rep["checkpoint"]["commits"])


@pytest.mark.parametrize("failover", FAILOVERS)
def test_prefix_backup_diverges_once_a_checkpoint_after_the_deflate_committed(failover):
    result, _ = _run(_scenario(failover, "pre-fix"))
    ckpt = build_report(result)["checkpoint"]
    last = ckpt["commits"][-1]
    after_deflate = last["suspend_s"] > DEFLATE_AT
    # Added GFNs get no dirty bit and their first writes go unlogged until the next
    # CLEAN: the pages not written again are never sent, so the backup lacks them.
    assert (result.verify.missing_pages > 0) == after_deflate, ckpt
    assert result.verify.missing_pages == last["missing"]
    if not after_deflate:
        assert result.verify.ok


def test_the_sweep_has_failovers_on_both_sides_of_the_deflate():
    sides = set()
    for failover in FAILOVERS:
        result, _ = _run(_scenario(failover, "fixed"))
        sides.add(build_report(result)["checkpoint"]["commits"][-1]["suspend_s"] > DEFLATE_AT)
    assert sides == {True, False}


def test_checkpoint_passes_events_and_the_report_section():
    result, events = _run(_scenario(4.0))
    phases = [r.phase for r in result.save.rounds]
    assert phases.count(PassPhase.FINAL) == 1 and PassPhase.CHECKPOINT in phases
    assert phases.index(PassPhase.FINAL) < phases.index(PassPhase.CHECKPOINT)
    commits = [e for e in events if isinstance(e, PhaseChanged) and e.phase == Phase.CHECKPOINT]
    failover = [e for e in events if isinstance(e, PhaseChanged) and e.phase == Phase.FAILOVER]
    ckpt = build_report(result)["checkpoint"]
    assert len(commits) == ckpt["checkpoints"] == len(ckpt["commits"])
    # Told once the pass under way at the failover stops (its first batch past it).
    assert len(failover) == 1 and 4.0 <= failover[0].t < 4.05
    # One checkpoint per pass after the live migration; each committed before the failover.
    assert ckpt["checkpoints"] == phases.count(PassPhase.CHECKPOINT) + 1 - (ckpt["in_flight_dropped"] is not None)
    assert all(c["commit_s"] <= 4.0 for c in ckpt["commits"])
    # Remus's interval runs from one commit to the next suspend.
    for a, b in zip(ckpt["commits"], ckpt["commits"][1:]):
        assert b["suspend_s"] == pytest.approx(a["commit_s"] + 0.2)
    assert result.restore["checkpoints"] == ckpt["checkpoints"]


def test_a_checkpoint_in_flight_at_the_failover_is_dropped_by_the_backup(tmp_path):
    first, _ = _run(_scenario(5.0))
    commits = build_report(first)["checkpoint"]["commits"]
    # Fail just after checkpoint 5's suspend: its pass is under way, never committed.
    failover = commits[5]["suspend_s"] + 0.002
    path = tmp_path / "remus.stream"
    result, _ = _run(_scenario(failover), stream=str(path))
    ckpt = build_report(result)["checkpoint"]
    assert ckpt["in_flight_dropped"] == 5 and ckpt["failover_from"] == 4
    assert ckpt["commits"] == commits[:5]
    # The file's own restore held the checkpoint's records and dropped them at END.
    assert result.restore["records_discarded"] > 0
    assert result.verify.ok


def test_the_stream_file_and_the_in_process_records_restore_the_same_backup(tmp_path):
    counted, _ = _run(_scenario(4.4, "pre-fix"))
    filed, _ = _run(_scenario(4.4, "pre-fix"), stream=str(tmp_path / "s"))
    assert filed.verify == counted.verify and filed.verify.missing_pages > 0
    assert build_report(filed)["checkpoint"] == build_report(counted)["checkpoint"]


def test_same_seed_gives_a_byte_identical_checkpointed_stream(tmp_path):
    digests = []
    for name in ("a", "b"):
        path = tmp_path / name
        result, _ = _run(_scenario(4.0, "pre-fix"), stream=str(path))
        digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
        assert result.stream["sha256"] == digests[-1]
    assert digests[0] == digests[1]


def test_the_event_log_rebuilds_the_checkpoint_report():
    result, events = _run(_scenario(4.0, "pre-fix"))
    live, replay = build_report(result), build_report(result_from_events(events))
    assert replay["checkpoint"] == live["checkpoint"]
    assert replay["verify"] == live["verify"]


def test_a_failover_before_the_first_checkpoint_fails_the_save():
    result, _ = _run(_scenario(1.5))
    assert result.save.outcome is Outcome.FAILED
    assert "before the first checkpoint" in result.save.error
    assert not result.ok


def test_runs_without_checkpoint_fields_write_no_checkpoint_section():
    sc = load_scenario(ROOT / "examples" / "idle.yaml")
    result = asyncio.run(run_scenario(sc, RunOptions()))
    rep = build_report(result)
    assert "checkpoint" not in rep and "checkpoints" not in rep["restore"]
    assert "CHECKPOINT" not in rep["stream"]["records"]


@pytest.mark.parametrize("migration, where", [
    ({"checkpoint": {"interval": "0s", "failover": "5s"}}, "migration.checkpoint.interval"),
    ({"checkpoint": {"interval": "200ms", "failover": "0.5s"}}, "migration.checkpoint.failover"),
    ({"checkpoint": {"interval": "200ms"}}, "migration.checkpoint.failover"),
    ({"checkpoint": {"interval": "200ms", "failover": "5s"}, "deadline": "10s"}, "migration.deadline"),
])
def test_bad_checkpoint_fields_name_the_field(migration, where):
    data = {**SMALL, "migration": {"start": "1s", **migration}}
    with pytest.raises(ScenarioError) as err:
        parse_scenario(data, "x.yaml")
    assert str(err.value).startswith(f"x.yaml: {where}: expected"), str(err.value)


# ------------------------------------------------------------------ where users see it

def test_xmig_run_prints_the_commits_the_failover_and_its_verify(xmig, tmp_path):
    pre = xmig("run", "--guest", "examples/checkpoint.yaml", "-b", "pre-fix", "--no-dashboard",
               "--report", tmp_path / "pre.json")
    assert pre.returncode == 1, pre.stderr          # the backup misses pages
    out = pre.stdout
    assert "xmig: checkpoint: checkpoint 0 committed at t=" in out
    assert "xmig: failover: primary failed at t=10.000 s: the backup takes over from checkpoint" in out
    missing = json.loads((tmp_path / "pre.json").read_text())["verify"]["missing_pages"]
    assert missing > 0
    assert f"xmig: verify: FAILED, missing {missing}, stale 0, extra 0" in out
    assert out.index("xmig: failover:") < out.index("xmig: verify:")
    assert "Checkpointed save" in out
    fixed = xmig("run", "--guest", "examples/checkpoint.yaml", "--no-dashboard")
    assert fixed.returncode == 0, fixed.stderr
    assert "xmig: verify: OK, missing 0, stale 0, extra 0" in fixed.stdout


def test_a_bad_checkpoint_field_is_one_line_and_exit_2(xmig, tmp_path):
    (tmp_path / "bad.yaml").write_text("guest: {memory: 16MiB}\n"
                                       "migration: {start: 10ms, checkpoint: {interval: fast, failover: 1s}}\n")
    res = xmig("run", "--guest", "bad.yaml", "--no-dashboard", cwd=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert "bad.yaml" in lines[0] and "migration.checkpoint.interval" in lines[0] and "expected" in lines[0]


def test_the_app_captions_each_commit_and_the_failover():
    """The teaching view's caption (migrate/ui/narration.py) for the replication."""
    from migrate.ui.gfnmap import GfnMap
    from migrate.ui.narration import Narrator

    bus = EventBus()
    gfnmap = GfnMap(max_cells=4096)
    narrator = Narrator(gfnmap, keep=10_000)
    bus.subscribe(gfnmap.on_event)
    bus.subscribe(narrator)
    result = asyncio.run(run_scenario(_scenario(4.4, "pre-fix"), RunOptions(), bus=bus))
    commits = [c for c in narrator.captions if c.text.startswith("checkpoint ")]
    assert len(commits) == build_report(result)["checkpoint"]["checkpoints"]
    assert "the backup applied the checkpoint's records at once" in commits[0].text
    # The first commit whose backup lacks pages is a moment to stop at; consistent ones are not.
    behind = [c for c in commits if "missing" in c.text]
    assert behind and all(c.interesting for c in behind) and not any(c.interesting for c in commits[:2])
    failover = [c for c in narrator.captions if c.text.startswith("failover: ")]
    assert len(failover) == 1 and failover[0].interesting
    assert "the backup takes over from checkpoint" in failover[0].text


@pytest.mark.parametrize("size", [(80, 24), (160, 50)])
async def test_the_app_runs_a_replication_to_its_failover(size):
    """The Textual app (pilot) on a checkpointed run: the failover caption is told, and
    the destination line states the report's verify of the backup."""
    from migrate.ui.app import XmigApp
    from tests.ui.test_app import shown, until

    app = XmigApp.for_run(_scenario(4.4, "pre-fix"), RunOptions(), speed=None)
    async with app.run_test(size=size) as pilot:
        await until(pilot, lambda: app.done, timeout=120)
        texts = [c.text for c in app.views[0].narrator.captions]
        assert any(t.startswith("failover: primary failed at t=4.400 s") for t in texts)
        missing = app.views[0].state.verify.missing_pages
        assert missing > 0
        assert f"{missing:,} missing" in app.screen_text()
        for pid in ("header", "caption", "table", "map"):
            assert shown(app, pid), pid
        await pilot.press("q")
    assert app.return_value[0].verify.missing_pages == missing
