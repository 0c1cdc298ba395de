"""The ``xmig`` command line, through typer's runner and as real subprocesses.

Every command (run, compare, receive, inspect, schema) is exercised both ways. Scenarios
are tiny (32 MiB guests starting at 100 ms) so a run takes a fraction of a second;
``examples/balloon.yaml`` is used only where the fix itself must show (compare, and the
pre-fix verification failure).
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from migrate.cli.main import app

from tests.xmig_process import ROOT, TTY_ENV, one_error_line, xmig, xmig_popen

BALLOON = ROOT / "examples" / "balloon.yaml"


SMALL = """\
name: small
seed: 3
guest:
  memory: 32MiB
  workloads:
    - {kind: uniform, rate: 8MiB/s}
migration:
  start: 100ms
"""

# 32 MiB over a 50 Mbit/s link: ~6.5 virtual seconds, ~3 wall seconds at --speed 2.
SLOW = """\
name: slow
guest:
  memory: 32MiB
  workloads:
    - {kind: uniform, rate: 1MiB/s}
link:
  bandwidth: 50Mbit/s
migration:
  start: 100ms
"""

# ~4 wall seconds flat out (--speed max): Ctrl-C must not wait for the end of it.
# Long enough in wall time at --speed max that a Ctrl-C lands mid-save (a run with
# nothing to pace walks whole passes in a few spans: 4 GiB now ends within ~0.3 s).
BIG = """\
name: big
guest:
  memory: 32GiB
  workloads:
    - {kind: uniform, rate: 64MiB/s}
migration:
  start: 100ms
"""

# Aborted by its own deadline during pass 1: a failed migration.
DEADLINE = """\
name: deadline
guest:
  memory: 32MiB
migration:
  start: 100ms
  deadline: 50ms
"""


# --------------------------------------------------------------------------- helpers


def cli(*args: str, cwd: Path | None = None):
    """Invoke the app in-process; stdout and stderr are kept apart."""
    runner = CliRunner()
    env = {k: None for k in TTY_ENV}
    if cwd is None:
        return runner.invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return runner.invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)
    finally:
        os.chdir(old)


def stop(proc: subprocess.Popen) -> None:
    """Kill a subprocess this test started (and reap it), if it is still running."""
    if proc.poll() is None:
        proc.kill()
    try:
        proc.communicate(timeout=5)
    except (subprocess.TimeoutExpired, ValueError):
        pass


def closed_port() -> tuple[socket.socket, int]:
    """A loopback port that refuses connections: bound (so nobody else takes it) but not
    listening. The caller closes the socket."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def without_wall(rep: dict) -> dict:
    return {k: v for k, v in rep.items() if k != "wall"}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("scenarios")
    (d / "small.yaml").write_text(SMALL)
    (d / "slow.yaml").write_text(SLOW)
    (d / "big.yaml").write_text(BIG)
    (d / "deadline.yaml").write_text(DEADLINE)
    (d / "malformed.yaml").write_text("guest:\n  memory: [32MiB\n")
    (d / "unknown.yaml").write_text("guest:\n  memroy: 32MiB\n")
    (d / "badunit.yaml").write_text("guest:\n  memory: 32MiB\nlink:\n  bandwidth: 1Gbits\n")
    return d


@pytest.fixture(scope="module")
def full_run(files, tmp_path_factory):
    """One in-process ``xmig run`` with every output: report, CSV, plot and stream file."""
    out = tmp_path_factory.mktemp("full")
    res = cli("run", "--guest", files / "small.yaml", "--report", out / "r.json", "--csv", out / "r.csv",
              "--plot", out / "r.png", "--stream", out / "s.xmig")
    return res, out


# --------------------------------------------------------------------------- run


def test_run_prints_xen_style_progress_and_no_escape_codes(full_run):
    res, _ = full_run
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.stdout
    assert "xc: info: Saving domain 1, type x86 HVM" in res.stdout
    assert re.search(r"^xc: progress: Frames iteration 1 of 5: 1044480/1044480 pages", res.stdout, re.M)
    assert re.search(r"^xc: progress: Frames iteration \d+ \(final\)", res.stdout, re.M)
    assert "xc: progress: Domain now suspended" in res.stdout
    assert "xmig: verify: OK, missing 0, stale 0, extra 0" in res.stdout
    assert "xmig: migration completed" in res.stdout
    assert res.stderr == ""


def test_run_report_fields_match_the_engines_stats(full_run, files):
    import asyncio

    from migrate.run.report import build_report
    from migrate.run.runner import RunOptions, run_scenario
    from migrate.run.scenario import load_scenario

    res, out = full_run
    rep = json.loads((out / "r.json").read_text())
    assert rep["schema_version"] == 1
    assert (rep["scenario"], rep["seed"], rep["behaviour"]) == ("small", 3, "fixed")
    assert rep["policy"] == {"name": "xen", "params": {"max_iterations": 5, "dirty_threshold": 50}}
    assert rep["outcome"] == "completed" and rep["error"] is None

    rounds = rep["rounds"]
    live = [r for r in rounds if r["phase"] == "live"]
    final = [r for r in rounds if r["phase"] == "final"]
    assert len(final) == 1 and rounds[-1] is final[0]
    assert [r["iteration"] for r in rounds] == list(range(1, len(rounds) + 1))
    t = rep["totals"]
    assert t["iterations"] == len(live)
    assert t["pages_sent"] == sum(r["pages_sent"] for r in live + final)
    assert t["xtab_sent"] == sum(r["xtab_sent"] for r in live + final)
    assert t["broken_sent"] == sum(r["broken_sent"] for r in live + final)
    # The stream also carries headers and static records, outside any pass.
    assert sum(r["bytes"] for r in rounds) < t["bytes"] == rep["stream"]["bytes"]
    assert rounds[0]["pfns_walked"] == rounds[0]["dirty_count"] == rep["p2m_size"]
    assert t["total_time_s"] == pytest.approx(rep["timeline"]["end_s"] - rep["timeline"]["start_s"], abs=1e-6)
    assert 0 < t["downtime_s"] < t["total_time_s"]
    for k in ("marks_dirty", "marks_clean", "logdirty_nodes_peak", "failed_allocs"):
        assert isinstance(rep["hypervisor"][k], int)
    assert rep["verify"]["ok"] is True
    assert rep["verify"]["missing_pages"] == rep["verify"]["stale_pages"] == rep["verify"]["extra_pages"] == 0
    assert re.fullmatch(r"[0-9a-f]{64}", rep["stream"]["sha256"])
    assert rep["restore"]["complete"] is True
    assert rep["restore"]["pages_written"] == t["pages_sent"]
    assert rep["gfn_map"]                      # recorded for --plot

    # The same numbers as the engine gives for the same scenario and seed, run directly.
    result = asyncio.run(run_scenario(load_scenario(files / "small.yaml"),
                                      RunOptions(stream=str(out / "direct.xmig"))))
    (out / "direct.xmig").unlink()
    direct = build_report(result)
    assert direct["rounds"] == rounds
    assert direct["totals"] == t
    assert direct["hypervisor"] == rep["hypervisor"]
    assert direct["verify"] == rep["verify"]
    assert direct["stream"]["sha256"] == rep["stream"]["sha256"]
    assert result.save.totals.pages_sent == t["pages_sent"]
    assert len(result.save.rounds) == len(rounds)


def test_run_twice_with_one_seed_differs_only_in_wall(files, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert cli("run", "--guest", files / "small.yaml", "--seed", "7", "--report", a).exit_code == 0
    assert cli("run", "--guest", files / "small.yaml", "--seed", "7", "--report", b).exit_code == 0
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ra["seed"] == 7 and "seconds" in ra["wall"]
    assert without_wall(ra) == without_wall(rb)


def test_run_csv_has_one_row_per_pass(full_run):
    _, out = full_run
    rows = list(csv.DictReader((out / "r.csv").open()))
    rep = json.loads((out / "r.json").read_text())
    assert len(rows) == len(rep["rounds"]) >= 2
    assert [int(r["pages_sent"]) for r in rows] == [r["pages_sent"] for r in rep["rounds"]]
    assert rows[-1]["phase"] == "final"


def test_run_plot_is_a_non_empty_png(full_run):
    _, out = full_run
    data = (out / "r.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_run_subprocess_piped_then_inspect_the_stream(files, tmp_path):
    stream = tmp_path / "s.xmig"
    r = xmig("run", "--guest", files / "small.yaml", "--stream", stream, "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout
    assert "xc: progress: Frames iteration 1 of 5" in r.stdout
    assert "Traceback" not in r.stderr
    rep = json.loads((tmp_path / "r.json").read_text())

    i = xmig("inspect", stream)
    assert i.returncode == 0, i.stderr
    assert "\x1b" not in i.stdout
    # The records table has a PAGE_DATA row with the count the writer reported.
    assert re.search(rf"PAGE_DATA\s*\S?\s*{rep['stream']['records']['PAGE_DATA']}\b", i.stdout)
    assert re.search(r"XTAB\s*\S?\s*1036272\b", i.stdout)   # 0xFF000 - 8192 RAM - 16 special
    assert "valid" in i.stdout and "INVALID" not in i.stdout
    stream.unlink()


def test_inspect_json_agrees_with_the_report(full_run):
    _, out = full_run
    rep = json.loads((out / "r.json").read_text())
    res = cli("inspect", "--json", out / "s.xmig")
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    assert data["valid"] is True
    assert data["records_by_type"] == rep["stream"]["records"]
    assert data["data_pages"] == rep["totals"]["pages_sent"]
    assert data["pages_by_type"]["XTAB"] == rep["totals"]["xtab_sent"]
    assert (data["pfn_min"], data["pfn_max"]) == (0, rep["p2m_size"] - 1)


@pytest.mark.parametrize("damage", ["truncated", "no-end", "corrupt-page", "bad-header"])
def test_inspect_malformed_stream_exits_1_with_a_clear_message(full_run, tmp_path, damage):
    _, out = full_run
    data = bytearray((out / "s.xmig").read_bytes())
    if damage == "truncated":
        data = data[:1_000_000]
        expect = "truncated"
    elif damage == "no-end":
        data = data[:-8]
        expect = "no END record"
    elif damage == "corrupt-page":
        data[500_000] ^= 0xFF
        expect = "corrupt page"
    else:
        data[:8] = b"garbage!"
        expect = "bad image header"
    bad = tmp_path / f"{damage}.xmig"
    bad.write_bytes(bytes(data))
    res = cli("inspect", bad)
    bad.unlink()                     # 36 MB each: do not leave them in pytest's tmp
    assert res.exit_code == 1
    assert "Traceback" not in res.output
    assert re.search(rf"^INVALID: .*{expect}", res.stdout, re.M)
    line = res.stderr.strip()
    assert "\n" not in line and line.startswith(f"xmig: {bad}: malformed migration stream: ")
    assert expect in line


def test_inspect_subprocess_on_a_truncated_stream(full_run, tmp_path):
    _, out = full_run
    bad = tmp_path / "cut.xmig"
    bad.write_bytes((out / "s.xmig").read_bytes()[:300_000])
    r = xmig("inspect", bad)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "stream truncated in record" in r.stderr and "malformed migration stream" in r.stderr


# --------------------------------------------------------------------------- exit 1


def test_prefix_balloon_exits_1_on_missing_pages(tmp_path):
    rep_path = tmp_path / "pf.json"
    res = cli("run", "--guest", BALLOON, "--behaviour", "pre-fix", "--report", rep_path)
    assert res.exit_code == 1
    assert "Traceback" not in res.output
    rep = json.loads(rep_path.read_text())
    assert rep["outcome"] == "completed" and rep["verify"]["ok"] is False
    assert rep["verify"]["missing_pages"] + rep["verify"]["stale_pages"] > 0
    assert "xmig: verify: FAILED" in res.stdout


def test_failed_migration_exits_1_subprocess(files, tmp_path):
    r = xmig("run", "--guest", files / "deadline.yaml", "--report", tmp_path / "d.json")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "xc: error: Save failed: deadline" in r.stdout
    rep = json.loads((tmp_path / "d.json").read_text())
    assert rep["outcome"] != "completed" and "deadline" in rep["error"]
    assert rep["verify"] is None


# --------------------------------------------------------------------------- compare


def test_compare_balloon_fixed_beats_prefix_subprocess(tmp_path):
    rep_path = tmp_path / "cmp.json"
    r = xmig("compare", "--guest", BALLOON, "--report", rep_path)
    assert r.returncode == 0, r.stderr
    assert "XTAB entries" in r.stdout and "missing pages" in r.stdout
    data = json.loads(rep_path.read_text())
    assert data["schema_version"] == 1 and data["compare"] == ["fixed", "pre-fix"]
    fixed, prefix = data["runs"]
    assert (fixed["behaviour"], prefix["behaviour"]) == ("fixed", "pre-fix")
    assert fixed["seed"] == prefix["seed"]
    assert fixed["totals"]["xtab_sent"] < prefix["totals"]["xtab_sent"]
    assert fixed["verify"]["missing_pages"] == fixed["verify"]["stale_pages"] == 0
    assert fixed["verify"]["ok"] is True
    assert prefix["verify"]["missing_pages"] + prefix["verify"]["stale_pages"] > 0
    # XTAB entries after pass 1 are the wasted work the fix removes.
    assert sum(r["xtab_sent"] for r in prefix["rounds"][1:]) > sum(r["xtab_sent"] for r in fixed["rounds"][1:])


def test_compare_policies_in_process_with_csv(files, tmp_path):
    out = tmp_path / "cmp.csv"
    res = cli("compare", "--guest", files / "small.yaml", "--policy", "xen,downtime", "--csv", out)
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.stdout
    rows = list(csv.DictReader(out.open()))
    assert {r["policy"] for r in rows} == {"xen", "downtime"}
    assert all(r["behaviour"] == "fixed" for r in rows)


# --------------------------------------------------------------------------- errors


ERRORS = [
    # (id, args (FILES is replaced by the scenarios folder), words the one line must contain)
    ("missing-file", ["run", "--guest", "FILES/nope.yaml"], ["nope.yaml", "no such file"]),
    ("malformed-yaml", ["run", "--guest", "FILES/malformed.yaml"], ["malformed.yaml", "valid YAML"]),
    ("unknown-key", ["run", "--guest", "FILES/unknown.yaml"], ["guest.memroy", "did you mean 'memory'"]),
    ("bad-unit-in-file", ["run", "--guest", "FILES/badunit.yaml"], ["link.bandwidth", "1Gbit/s", "'1Gbits'"]),
    ("bad-unit-option", ["run", "--guest", "FILES/small.yaml", "--bandwidth", "1Gbits"],
     ["--bandwidth", "1Gbit/s", "'1Gbits'"]),
    ("unknown-policy", ["run", "--guest", "FILES/small.yaml", "--policy", "fastest"],
     ["unknown policy 'fastest'", "xen", "downtime"]),
    ("bad-behaviour", ["run", "--guest", "FILES/small.yaml", "--behaviour", "sorta"],
     ["--behaviour", "'fixed' or 'pre-fix'", "'sorta'"]),
    ("negative-seed", ["run", "--guest", "FILES/small.yaml", "--seed", "-5"], ["--seed", "found -5"]),
    ("bad-speed", ["run", "--guest", "FILES/small.yaml", "--speed", "fast"], ["--speed", "'max'", "'fast'"]),
    ("zero-speed", ["run", "--guest", "FILES/small.yaml", "--speed", "0"], ["--speed", "positive"]),
    ("nan-speed", ["run", "--guest", "FILES/small.yaml", "--speed", "nan"], ["--speed", "positive"]),
    ("report-no-folder", ["run", "--guest", "FILES/small.yaml", "--report", "FILES/nodir/r.json"],
     ["--report", "nodir", "does not exist"]),
    ("report-is-folder", ["run", "--guest", "FILES/small.yaml", "--report", "FILES"], ["--report", "is a folder"]),
    ("stream-no-folder", ["run", "--guest", "FILES/small.yaml", "--stream", "FILES/nodir/s.xmig"],
     ["--stream", "does not exist"]),
    ("bad-tcp-target", ["run", "--guest", "FILES/small.yaml", "--stream", "tcp://nohostport"],
     ["--stream", "tcp://nohostport", "tcp://HOST:PORT"]),
    ("tcp-port-range", ["run", "--guest", "FILES/small.yaml", "--stream", "tcp://127.0.0.1:70000"],
     ["--stream", "tcp://HOST:PORT"]),
    ("compare-one-policy", ["compare", "--guest", "FILES/small.yaml", "--policy", "xen"],
     ["--policy", "two or more"]),
    ("compare-missing-file", ["compare", "--guest", "FILES/nope.yaml"], ["nope.yaml", "no such file"]),
    ("listen-no-port", ["receive", "--listen", "localhost"], ["--listen", "HOST:PORT", "'localhost'"]),
    ("listen-bad-port", ["receive", "--listen", "127.0.0.1:http"], ["--listen", "HOST:PORT"]),
    ("listen-port-range", ["receive", "--listen", "127.0.0.1:99999"], ["--listen", "0-65535"]),
    ("host-memory", ["receive", "--listen", "127.0.0.1:0", "--host-memory", "lots"], ["--host-memory", "'lots'"]),
    ("inspect-missing", ["inspect", "FILES/nope.xmig"], ["nope.xmig", "no such file"]),
]


@pytest.mark.parametrize("args,words", [(a, w) for _, a, w in ERRORS], ids=[i for i, _, _ in ERRORS])
def test_bad_input_is_one_line_exit_2(files, args, words):
    res = cli(*[a.replace("FILES", str(files)) for a in args])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    line = one_error_line(res.stderr)
    for w in words:
        assert w in line, line
    assert res.stdout == ""     # caught before anything ran


def test_plot_without_matplotlib_fails_before_the_run(files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    res = cli("run", "--guest", files / "small.yaml", "--plot", tmp_path / "p.png")
    assert res.exit_code == 2
    assert "pip install 'xmig[plot]'" in one_error_line(res.stderr)
    assert res.stdout == "" and not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("args", [["run"], ["run", "--guest", "x.yaml", "--bogus"], ["run", "--guest", "x.yaml",
                                  "--seed", "abc"], ["frobnicate"]], ids=["no-guest", "bad-option", "bad-int", "bad-cmd"])
def test_usage_errors_from_typer_exit_2(args):
    res = cli(*args)
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    assert "--help" in res.stderr


def test_unreachable_tcp_peer_exit_2(files):
    sock, port = closed_port()
    try:
        res = cli("run", "--guest", files / "small.yaml", "--stream", f"tcp://127.0.0.1:{port}")
    finally:
        sock.close()
    assert res.exit_code == 2
    line = one_error_line(res.stderr)
    assert f"tcp://127.0.0.1:{port}" in line and "connection refused" in line


def test_unreachable_tcp_peer_subprocess(files):
    sock, port = closed_port()
    try:
        r = xmig("run", "--guest", files / "small.yaml", "--stream", f"tcp://127.0.0.1:{port}")
    finally:
        sock.close()
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert f"cannot connect to tcp://127.0.0.1:{port}" in line


def test_receive_port_in_use_exit_2_and_no_ready_line():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        res = cli("receive", "--listen", f"127.0.0.1:{port}")
    finally:
        holder.close()
    assert res.exit_code == 2
    line = one_error_line(res.stderr)
    assert f"127.0.0.1:{port}" in line and "address already in use" in line
    assert "Ready" not in res.stdout     # it never listened, so it must not say it is ready


def test_missing_scenario_subprocess(files):
    r = xmig("run", "--guest", files / "nope.yaml")
    assert r.returncode == 2
    assert "no such file" in one_error_line(r.stderr)
    assert r.stdout == ""


def test_debug_shows_the_traceback_and_keeps_exit_2(files):
    res = cli("--debug", "run", "--guest", files / "nope.yaml")
    assert res.exit_code == 2
    assert "Traceback" in res.stderr and "ScenarioError" in res.stderr
    assert res.stderr.rstrip().splitlines()[-1].startswith("xmig: error: ")
    # and the flag does not stick to the next invocation
    res = cli("run", "--guest", files / "nope.yaml")
    assert "Traceback" not in res.stderr


# --------------------------------------------------------------------------- receive


def test_receive_and_run_over_tcp_subprocesses(files, tmp_path):
    port = free_port()
    dest_json, src_json = tmp_path / "dest.json", tmp_path / "src.json"
    receiver = xmig_popen("receive", "--listen", f"127.0.0.1:{port}", "--report", dest_json, "--timeout", "20")
    try:
        ready = receiver.stdout.readline()     # printed once the socket listens
        assert f"Ready to receive domain on 127.0.0.1:{port}" in ready, (ready, receiver.stderr.read())
        r = xmig("run", "--guest", files / "small.yaml", "--stream", f"tcp://127.0.0.1:{port}",
                 "--report", src_json, timeout=30)
        assert r.returncode == 0, r.stderr
        out, err = receiver.communicate(timeout=20)
    finally:
        stop(receiver)
    assert receiver.returncode == 0, err
    assert "Transfer complete" in out and "Traceback" not in err
    dest, src = json.loads(dest_json.read_text()), json.loads(src_json.read_text())
    assert dest["complete"] is True and dest["error"] is None
    assert dest["bytes_received"] == src["stream"]["bytes"]
    assert dest["pages_written"] == src["totals"]["pages_sent"]
    assert dest["populated_pages"] == src["destination"]["populated_pages"]


def test_receive_times_out_without_a_sender():
    res = cli("receive", "--listen", "127.0.0.1:0", "--timeout", "0.3")
    assert res.exit_code == 1
    assert re.match(r"migration target: Ready to receive domain on 127\.0\.0\.1:\d+\.", res.stdout)
    assert ":0." not in res.stdout.splitlines()[0]      # the real port, not 0
    assert "no sender connected within 0.3 s" in res.stderr      # errors go to stderr


# --------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_while_receive_waits_exits_130():
    proc = xmig_popen("receive", "--listen", "127.0.0.1:0", start_new_session=True)
    try:
        assert "Ready to receive domain" in proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        stop(proc)
    assert proc.returncode == 130
    assert err.strip().startswith("xmig: interrupted") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("scenario,speed,wait", [("slow", "2", 0.6), ("big", "max", 0.2)], ids=["speed-2", "speed-max"])
def test_ctrl_c_aborts_the_migration_and_the_source_resumes(files, tmp_path, scenario, speed, wait):
    rep_path = tmp_path / "ab.json"
    proc = xmig_popen("run", "--guest", files / f"{scenario}.yaml", "--no-dashboard", "--speed", speed,
                 "--report", rep_path, start_new_session=True)
    try:
        # Wait until the migration is under way (the signal handler is in place by then).
        first = proc.stdout.readline()
        assert first.startswith(f"xmig: scenario {scenario}"), first
        time.sleep(wait)
        assert proc.poll() is None, "the run ended before Ctrl-C: make the scenario longer"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
        assert time.monotonic() - t0 < 1.5, "Ctrl-C took effect only when the run ended"
    finally:
        stop(proc)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "Traceback" not in out
    assert "xc: error: Save failed: interrupted by the user" in out
    assert "the migration was aborted and the source domain resumed" in out
    rep = json.loads(rep_path.read_text())
    assert rep["outcome"] == "aborted"
    assert rep["verify"] is None


# --------------------------------------------------------------------------- schema and help


def test_schema_in_process_and_subprocess():
    res = cli("schema")
    assert res.exit_code == 0
    schema = json.loads(res.stdout)
    assert "guest" in schema["properties"] and "guest" in schema.get("required", [])
    r = xmig("schema")
    assert r.returncode == 0 and json.loads(r.stdout) == schema
    assert json.loads((ROOT / "migrate" / "run" / "scenario.schema.json").read_text()) == schema


def _flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


def test_help_teaches_subprocess():
    r = xmig("--help")
    assert r.returncode == 0
    text = _flat(r.stdout)
    assert "xmig run --guest examples/balloon.yaml" in text
    assert "xmig compare --guest examples/balloon.yaml" in text
    for cmd in ("run", "compare", "receive", "inspect", "schema"):
        assert re.search(rf"\b{cmd}\b", text)
    assert "Exit codes" in text and "130" in text


def test_run_help_teaches():
    res = cli("run", "--help")
    assert res.exit_code == 0
    text = _flat(res.stdout)
    assert "examples/balloon.yaml" in text
    assert "Exit codes: 0 completed and verified; 1" in text
    assert "2 bad input" in text and "130 interrupted" in text
    for opt in ("--guest", "--behaviour", "--policy", "--bandwidth", "--stream", "--report", "--csv",
                "--plot", "--speed", "--no-dashboard"):
        assert opt in text


@pytest.mark.parametrize("migration,needle", [
    ("{policy: qemu}", "migration.policy: unknown policy 'qemu'"),
    ("{policy_params: {max_iter: 3}}", "migration.policy_params.max_iter: policy xen: unknown parameter(s) max_iter"),
])
def test_a_bad_policy_in_the_scenario_names_the_file_and_field(tmp_path, migration, needle):
    from typer.testing import CliRunner

    from migrate.cli.main import app

    path = tmp_path / "p.yaml"
    path.write_text(f"guest: {{memory: 32MiB}}\nmigration: {migration}\n")
    res = CliRunner().invoke(app, ["run", "--guest", str(path), "--no-dashboard"])
    assert res.exit_code == 2
    assert f"{path}: {needle}" in res.output
    assert "Traceback" not in res.output


def test_unsupported_stream_scheme_and_inspecting_a_folder_are_usage_errors(tmp_path):
    from typer.testing import CliRunner

    from migrate.cli.main import app

    path = tmp_path / "ok.yaml"
    path.write_text("guest: {memory: 32MiB}\n")
    res = CliRunner().invoke(app, ["run", "--guest", str(path), "--stream", "ftp://x"])
    assert res.exit_code == 2 and "expected a file path or tcp://HOST:PORT" in res.output
    res = CliRunner().invoke(app, ["inspect", str(tmp_path)])
    assert res.exit_code == 2 and "is a folder" in res.output


def test_a_host_beyond_32_bit_mfns_is_a_usage_error(tmp_path):
    """MFNs are 32 bits (0xFFFFFFFF is INVALID_MFN): a host of 2^32 frames or more is
    refused up front, naming the field, not with a traceback from the frame allocator."""
    for body, field in (("guest: {memory: 1GiB, host_memory: 16TiB}\n", "guest.host_memory"),
                        ("guest: {memory: 16TiB}\n", "guest.memory"),
                        ("guest: {memory: 1GiB, maxmem: 16TiB}\n", "guest.maxmem")):
        path = tmp_path / "big.yaml"
        path.write_text(body)
        res = xmig("run", "--guest", path, "--no-dashboard")
        assert res.returncode == 2, res.stderr
        assert res.stderr.startswith("xmig: error:") and field in res.stderr
        assert "32 bits" in res.stderr and "Traceback" not in res.stderr
    path.write_text("guest: {memory: 1GiB, host_memory: 16383GiB}\n")   # 2^32 - 2^18 frames: fits
    from migrate.run.scenario import load_scenario

    assert load_scenario(path).guest.host_memory == 16383 << 30
