"""``xmig sweep``: sweep files, the local engine, results that survive Ctrl-C, --resume,
and the summary and plot. Scenarios are 32 MiB guests (a run is a few tens of ms); the
sweeps run as real ``python -m migrate sweep`` processes, as a user runs them.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from migrate.sweep.results import read_part, read_results
from migrate.sweep.spec import SCHEMA_PATH, SweepError, load_sweep, sweep_json_schema
from migrate.sweep.stats import group_by, t95

from tests.xmig_process import ROOT, one_error_line, xmig, xmig_popen

TINY = """\
name: tiny
seed: 1
guest:
  memory: 32MiB
  workloads:
    - {kind: uniform, rate: 4MiB/s}
  balloon:
    batch_pages: 64
    rate: 64MiB/s
    schedule:
      - {at: 1.05s, target: -8MiB}
      - {at: 1.2s, target: +8MiB}
migration: {start: 1s}
"""

SWEEP = """\
name: tiny-sweep
base: tiny.yaml
axes:
  guest.balloon.schedule[1].at: {from: 1.1s, to: 1.4s, step: 0.1s}
  migration.xen_behaviour: [fixed, pre-fix]
  seed: {range: [1, 3]}
"""


@pytest.fixture
def study(tmp_path: Path) -> Path:
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    return tmp_path / "sweep.yaml"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The tiny study run once, uninterrupted, on 2 local workers: Parquet and CSV."""
    d = tmp_path_factory.mktemp("ref")
    (d / "tiny.yaml").write_text(TINY)
    (d / "sweep.yaml").write_text(SWEEP)
    r = xmig("sweep", d / "sweep.yaml", "--out", d / "r.parquet", "-j", "2",
             "--summary", "guest.balloon.schedule[1].at", "--plot", d / "p.png")
    assert r.returncode == 0, r.stderr
    c = xmig("sweep", d / "sweep.yaml", "--out", d / "r.csv", "-j", "1")
    assert c.returncode == 0, c.stderr
    return {"dir": d, "parquet": d / "r.parquet", "csv": d / "r.csv", "stdout": r.stdout, "stderr": r.stderr,
            "plot": d / "p.png"}


# ------------------------------------------------------------------------ the file

def test_axes_expand_to_their_product_in_file_order(study: Path):
    plan = load_sweep(study)
    assert plan.axis_names == ["guest.balloon.schedule[1].at", "migration.xen_behaviour", "seed"]
    assert len(plan) == 4 * 2 * 3
    at = plan.axes[0]
    assert at.values == ("1.1s", "1.2s", "1.3s", "1.4s")          # the unit goes to the scenario
    assert at.columns == (1.1, 1.2, 1.3, 1.4) and at.unit == "s"   # the number to the results
    pts = plan.points()
    assert pts[0].values == ("1.1s", "fixed", 1) and pts[1].values == ("1.1s", "fixed", 2)
    assert pts[-1].values == ("1.4s", "pre-fix", 3)
    data = plan.scenario_data(pts[5].values)
    assert data["guest"]["balloon"]["schedule"][1]["at"] == "1.1s"
    assert data["migration"]["xen_behaviour"] == "pre-fix" and data["seed"] == 3
    assert data["guest"]["balloon"]["schedule"][0]["at"] == "1.05s"     # the base is untouched elsewhere


def test_zip_moves_axes_together_and_creates_missing_mappings(study: Path):
    study.write_text("""\
base: tiny.yaml
axes:
  seed: [7, 8]
zip:
  - migration.policy: [xen, downtime]
    migration.policy_params.max_iterations: [3, 9]
""")
    plan = load_sweep(study)
    assert len(plan) == 4
    combos = [p.values for p in plan.points()]
    assert combos == [(7, "xen", 3), (7, "downtime", 9), (8, "xen", 3), (8, "downtime", 9)]
    assert plan.scenario_data(combos[1])["migration"]["policy_params"] == {"max_iterations": 9}


def test_inline_base_and_numeric_ranges(study: Path):
    study.write_text("""\
name: inline
base:
  guest: {memory: 32MiB}
  migration: {start: 100ms}
axes:
  link.latency: {from: 0.001, to: 0.003, step: 0.001}
  seed: {range: [1, 9, 4]}
""")
    plan = load_sweep(study)
    assert plan.axes[0].values == (0.001, 0.002, 0.003)
    assert plan.axes[1].values == (1, 5, 9)
    assert plan.base["name"] == "inline"


@pytest.mark.parametrize("body, says", [
    ("axes:\n  guest.balloon.schedule[1].at: [1.3s, 0.5s]\n",
     "axis guest.balloon.schedule[1].at = '0.5s': guest.balloon.schedule[1].at: expected times in order"),
    ("axes:\n  migration.xen_behavour: [fixed]\n", "axis migration.xen_behavour = 'fixed': migration.xen_behavour: unknown key"),
    ("axes:\n  migration.xen_behaviour: [fixed, prefix]\n",
     "axis migration.xen_behaviour = 'prefix': migration.xen_behaviour: expected 'fixed' or 'pre-fix', or a mapping"),
    ("axes:\n  guest.balloon.schedule[5].at: [2s]\n", "axis guest.balloon.schedule[5].at: guest.balloon.schedule has 2 entries"),
    ("axes:\n  migration.policy: [xen, nosuch]\n", "axis migration.policy = 'nosuch': migration.policy:"),
    ("axes:\n  link.latency: {from: 1ms, to: 1s, step: 1ms}\n", "expected from, to and step in one unit"),
    ("axes:\n  seed: {range: [5, 1]}\n", "axes.seed: expected range [first, last]"),
    ("zip:\n  - {seed: [1, 2], migration.policy: [xen]}\n", "zip[0]: expected axes of one length, found seed: 2, migration.policy: 1"),
    ("axes:\n  seed: [1, 2]\nzip:\n  - {seed: [3, 4], link.latency: [1ms, 2ms]}\n", "zip[0].seed: axis seed is already swept by axes.seed"),
    ("axes:\n  bogus.field: [1]\n", "expected a path starting with one of name, description, seed, guest, link, migration"),
    ("axes:\n  seed: {from: 1}\n", "axes.seed"),
    ("axis:\n  seed: [1]\n", "axis: unknown key"),
])
def test_bad_sweep_files_exit_2_with_one_line_naming_file_axis_and_value(study: Path, body: str, says: str):
    study.write_text("base: tiny.yaml\n" + body)
    with pytest.raises(SweepError) as exc:
        load_sweep(study)
    assert str(exc.value).startswith(f"{study}: ") and says in str(exc.value), str(exc.value)


def test_bad_sweep_file_through_the_real_command(study: Path, tmp_path: Path):
    study.write_text("base: tiny.yaml\naxes:\n  migration.xen_behaviour: [fixed, prefix]\n")
    r = xmig("sweep", study, "--out", tmp_path / "r.csv")
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert str(study) in line and "migration.xen_behaviour" in line and "'prefix'" in line
    assert not (tmp_path / "r.csv").exists()
    r = xmig("sweep", tmp_path / "nosuch.yaml", "--out", tmp_path / "r.csv")
    assert r.returncode == 2 and "no such file" in one_error_line(r.stderr)
    r = xmig("sweep", study.with_name("tiny.yaml"), "--out", tmp_path / "r.csv")
    assert r.returncode == 2 and "found a scenario file" in one_error_line(r.stderr)
    study.write_text("base: tiny.yaml\naxes:\n  seed: [1, 2]\n")
    r = xmig("sweep", study, "--out", tmp_path / "r.txt")
    assert r.returncode == 2 and ".parquet or .csv" in one_error_line(r.stderr)


def test_shipped_schema_equals_the_generated_one_and_checks_examples():
    jsonschema = pytest.importorskip("jsonschema")
    assert json.loads(SCHEMA_PATH.read_text()) == sweep_json_schema(), "run: python -m migrate.sweep.spec"
    schema = sweep_json_schema()
    examples = sorted((ROOT / "examples").glob("sweeps/*.yaml"))
    assert examples
    for path in examples:
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
        load_sweep(path)
    jsonschema.validate({"base": {"guest": {"memory": "1GiB"}}, "axes": {"seed": {"range": [1, 3]}}}, schema)
    for bad in ({"axes": {}}, {"base": "x.yaml", "axes": {"seed": 5}},
                {"base": {"guest": {"memory": "1GiB", "wrkloads": []}}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_the_manuals_sweep_example_loads(tmp_path: Path):
    import re
    import shutil

    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "sweeps.md").read_text(), flags=re.S)
              if re.search(r"^base:", b, flags=re.M)]
    assert blocks
    shutil.copy(ROOT / "examples" / "balloon.yaml", tmp_path / "balloon.yaml")
    for text in blocks:
        (tmp_path / "s.yaml").write_text(text)
        assert len(load_sweep(tmp_path / "s.yaml")) > 1


# ------------------------------------------------------------------------ running

def test_a_row_is_what_xmig_run_reports_for_those_values(reference: dict, tmp_path: Path):
    rows = read_results(reference["parquet"], "parquet")
    assert len(rows) == 24 and all(r["outcome"] == "completed" for r in rows)
    row = next(r for r in rows if r["guest.balloon.schedule[1].at"] == 1.2 and r["seed"] == 2
               and r["migration.xen_behaviour"] == "pre-fix")
    scen = yaml.safe_load(TINY)
    scen["guest"]["balloon"]["schedule"][1]["at"] = "1.2s"
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(scen))
    r = xmig("run", "--guest", tmp_path / "one.yaml", "--seed", "2", "--behaviour", "pre-fix",
             "--no-dashboard", "--report", tmp_path / "rep.json")
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert row["missing"] == rep["verify"]["missing_pages"] > 0    # the point of the study
    assert row["stale"] == rep["verify"]["stale_pages"]
    assert row["ok"] is False and r.returncode == 1
    assert row["data_pages"] == rep["totals"]["pages_sent"] and row["bytes"] == rep["totals"]["bytes"]
    assert row["iterations"] == rep["totals"]["iterations"]
    assert row["total_time_s"] == rep["totals"]["total_time_s"] and row["downtime_s"] == rep["totals"]["downtime_s"]
    assert row["marks_dirty"] == rep["hypervisor"]["marks_dirty"]
    assert row["xtab_after_pass1"] == sum(x["xtab_sent"] for x in rep["rounds"][1:] if x["phase"] != "verify")


def test_results_do_not_depend_on_worker_count_or_format(reference: dict):
    pq_rows = read_results(reference["parquet"], "parquet")       # 2 workers
    csv_rows = read_results(reference["csv"], "csv")              # 1 worker
    assert pq_rows == csv_rows
    # canonical order: the product order of the file's axes, whatever finished first
    assert [(r["guest.balloon.schedule[1].at"], r["migration.xen_behaviour"], r["seed"]) for r in pq_rows][:4] == \
        [(1.1, "fixed", 1), (1.1, "fixed", 2), (1.1, "fixed", 3), (1.1, "pre-fix", 1)]
    assert not Path(str(reference["parquet"]) + ".part").exists()


def test_summary_groups_by_the_axis_and_plot_is_drawn(reference: dict):
    rows = read_results(reference["parquet"], "parquet")
    groups = [g for g in group_by(rows, "guest.balloon.schedule[1].at", "missing") if g.series == ("pre-fix",)]
    g = next(g for g in groups if g.value == 1.2)
    xs = [r["missing"] for r in rows if r["guest.balloon.schedule[1].at"] == 1.2
          and r["behaviour"] == "pre-fix"]
    assert g.n == 3 and g.mean == pytest.approx(sum(xs) / 3) and (g.min, g.max) == (min(xs), max(xs))
    assert g.lo < g.mean < g.hi or g.lo == g.hi == g.mean
    out = reference["stdout"]
    assert "missing by guest.balloon.schedule[1].at" in out and "95% interval" in out
    assert f"{g.mean:,.1f}".rstrip("0").rstrip(".") in out
    assert reference["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_is_plain_lines_when_piped_and_a_bar_on_a_terminal(reference: dict):
    import io

    from rich.console import Console

    from migrate.cli.sweep import _Bar

    lines = reference["stderr"].splitlines()
    assert lines[0] == "xmig sweep: 0/24 runs, 0 failed, 0.0 runs/s, ETA -"
    assert lines[-1].startswith("xmig sweep: 24/24 runs, 0 failed, ") and "\x1b" not in reference["stderr"]
    buf = io.StringIO()
    bar = _Bar(Console(file=buf, force_terminal=True, color_system=None, width=120), "tiny")
    bar.start(10, 2)
    for outcome in ("completed", "failed", "completed"):
        bar.advance({"outcome": outcome})
    bar.close()
    text = buf.getvalue()
    assert "5/10" in text and "1 failed" in text and "runs/s" in text and "ETA" in text


def test_t95_quantiles():
    assert t95(1) == 12.706 and t95(30) == 2.042
    assert t95(60) == pytest.approx(2.000, abs=1e-3) and t95(120) == pytest.approx(1.980, abs=1e-3)


def test_a_bad_combination_is_a_row_with_its_error_not_a_crashed_sweep(tmp_path: Path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    # Each value is fine alone; 64 MiB of RAM with a 32 MiB maxmem is not.
    (tmp_path / "s.yaml").write_text("base: tiny.yaml\naxes:\n  guest.memory: [32MiB, 64MiB]\n"
                                     "  guest.maxmem: [32MiB, 64MiB]\n")
    r = xmig("sweep", tmp_path / "s.yaml", "--out", tmp_path / "r.csv", "-j", "2")
    assert r.returncode == 1, r.stderr
    rows = read_results(tmp_path / "r.csv", "csv")
    assert [row["outcome"] for row in rows] == ["completed", "completed", "invalid", "completed"]
    assert "guest.maxmem" in rows[2]["error"] and "tiny.yaml" in rows[2]["error"]
    assert rows[2]["missing"] is None
    assert "4 of 4 runs" in r.stdout


def _wait_rows(part: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if len(read_part(part)[1]) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"{part} never reached {n} rows")


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def test_resume_after_ctrl_c_gives_the_same_file_as_one_uninterrupted_run(reference: dict, study: Path, tmp_path: Path):
    out = tmp_path / "r.parquet"
    part = Path(str(out) + ".part")
    proc = xmig_popen("sweep", study, "--out", out, "-j", "1")
    try:
        _wait_rows(part, 5, proc)
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stdout
    partial = read_results(out, "parquet")       # a valid file with the runs finished so far
    assert 5 <= len(partial) < 24 and "--resume" in stdout
    r = xmig("sweep", study, "--out", out, "--resume", "-j", "2")
    assert r.returncode == 0, r.stderr
    assert f"{len(partial)} kept from before, {24 - len(partial)} run now" in r.stdout
    assert read_results(out, "parquet") == read_results(reference["parquet"], "parquet")
    pq = pytest.importorskip("pyarrow.parquet")
    assert pq.read_schema(out).remove_metadata() == pq.read_schema(reference["parquet"]).remove_metadata()


def test_a_local_worker_killed_mid_sweep_is_replaced(reference: dict, study: Path, tmp_path: Path):
    out = tmp_path / "r.csv"
    proc = xmig_popen("sweep", study, "--out", out, "-j", "2")
    try:
        _wait_rows(Path(str(out) + ".part"), 3, proc)
        workers = _children(proc.pid)
        assert workers
        os.kill(workers[0], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert read_results(out, "csv") == read_results(reference["csv"], "csv")


def test_resume_refuses_another_sweeps_results(study: Path, tmp_path: Path):
    out = tmp_path / "r.csv"
    with out.open("w", newline="") as fh:
        csv.writer(fh).writerows([["link.latency", "outcome"], ["0.001", "completed"]])
    r = xmig("sweep", study, "--out", out, "--resume")
    assert r.returncode == 2
    assert "no column for the axes" in one_error_line(r.stderr)


@pytest.mark.parametrize("suffix", ["parquet", "part"])
def test_resume_refuses_results_of_a_sweep_over_another_base(tmp_path: Path, suffix: str):
    """Two sweeps with the same axes over different base scenarios: --resume of the
    second must not take the first's rows as its own."""
    (tmp_path / "a.yaml").write_text(TINY)
    (tmp_path / "b.yaml").write_text(TINY.replace("rate: 4MiB/s", "rate: 6MiB/s"))
    (tmp_path / "s.yaml").write_text("base: a.yaml\naxes:\n  seed: [1, 2]\n")
    out = tmp_path / "r.parquet"
    assert xmig("sweep", tmp_path / "s.yaml", "--out", out, "-j", "1").returncode == 0
    if suffix == "part":                   # the first sweep was cut short: only its part file is left
        part = out.with_name(out.name + ".part")
        part.write_text(json.dumps({"xmig_sweep_part": 1, "axes": ["seed"],
                                    "base": load_sweep(tmp_path / "s.yaml").base_digest}) + "\n"
                        + "\n".join(json.dumps(r) for r in read_results(out, "parquet")) + "\n")
        out.unlink()
    (tmp_path / "s.yaml").write_text("base: b.yaml\naxes:\n  seed: [1, 2]\n")
    r = xmig("sweep", tmp_path / "s.yaml", "--out", out, "-j", "1", "--resume")
    assert r.returncode == 2, r.stderr
    assert "a sweep over another base scenario" in r.stderr and len(r.stderr.strip().splitlines()) == 1
