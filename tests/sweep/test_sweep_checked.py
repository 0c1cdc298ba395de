"""``xmig sweep`` checked where a user meets it: a ``--scheduler`` that is not a Dask
scheduler is one line in seconds; ``--resume`` refuses rows the sweep could not have
written; SIGTERM and SIGHUP end a sweep as Ctrl-C does (a valid OUT, no part file, no
worker left behind); ``--allow-policy`` enables a user policy for the workers; a sweep
that takes a while to plan says so."""

from __future__ import annotations

import http.server
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from migrate.sweep.results import read_results
from tests.sweep.test_sweep import SWEEP, TINY, _children, _wait_rows, xmig
from tests.xmig_process import xmig_env as _env
from tests.xmig_process import usage_error as one_error_line


@pytest.fixture
def study(tmp_path: Path) -> Path:
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    return tmp_path / "sweep.yaml"


# --------------------------------------------------------------------------- --scheduler

@pytest.fixture
def silent_listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s.getsockname()[1]
    s.close()


@pytest.fixture
def http_server():
    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_port
    httpd.shutdown()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("where, words", [
    ("silent", ("sent no greeting", "not a Dask scheduler")),
    ("http", ("sent no greeting", "not a Dask scheduler")),
    ("tls-closed", ("cannot reach the Dask scheduler",)),
    ("tls-silent", ("no TLS answer", "not a Dask scheduler")),
    ("tls-http", ("does not speak TLS",)),
])
def test_a_scheduler_address_that_is_no_scheduler_is_one_line(study, silent_listener, http_server, where, words):
    address = {"silent": f"tcp://127.0.0.1:{silent_listener}", "http": f"tcp://127.0.0.1:{http_server}",
               "tls-closed": f"tls://127.0.0.1:{_closed_port()}", "tls-silent": f"tls://127.0.0.1:{silent_listener}",
               "tls-http": f"tls://127.0.0.1:{http_server}"}[where]
    res = xmig("sweep", study, "--out", study.parent / "r.csv", "--scheduler", address, timeout=60)
    one_error_line(res, "--scheduler", address, *words)   # within the probe's few seconds (no hang)
    assert not (study.parent / "r.csv").exists()


# --------------------------------------------------------------------------- --resume

def _part(out: Path, *rows: dict) -> None:
    lines = [{"xmig_sweep_part": 1, "axes": ["guest.balloon.schedule[1].at", "migration.xen_behaviour", "seed"]}]
    Path(str(out) + ".part").write_text("".join(json.dumps(r) + "\n" for r in lines + list(rows)))


GOOD = {"guest.balloon.schedule[1].at": 1.1, "migration.xen_behaviour": "fixed", "seed": 1, "behaviour": "fixed",
        "policy": "xen", "outcome": "completed", "ok": True, "missing": 0}


@pytest.mark.parametrize("forged, words", [
    ({"missing": -12345}, ("line 2", "missing: expected a count", "-12345")),
    ({"data_pages": "abc"}, ("line 2", "data_pages: expected a count", "found a string")),
    ({"seed": 999}, ("line 2", "not a run of this sweep")),
    ({"outcome": "hacked"}, ("line 2", "outcome: expected one of completed")),
    ({"downtime_s": float("nan")}, ("line 2", "downtime_s: expected a finite number")),
    ({"payload": 1}, ("line 2", "'payload' is not an axis of this sweep")),
])
def test_resume_refuses_a_forged_or_foreign_row_naming_file_and_line(study, forged, words):
    out = study.parent / "r.csv"
    _part(out, {**GOOD, **forged})
    res = xmig("sweep", study, "--out", out, "--resume", timeout=60)
    one_error_line(res, "r.csv.part", *words, "--resume")
    assert not out.exists()


def test_resume_keeps_a_genuine_row_and_runs_the_rest(study):
    out = study.parent / "r.csv"
    _part(out, GOOD)
    res = xmig("sweep", study, "--out", out, "--resume", "-j", "2")
    assert res.returncode == 0, res.stderr
    assert "1 kept from before, 23 run now" in res.stdout


# --------------------------------------------------------------------------- stop signals

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_end_a_sweep_as_ctrl_c_does(study, sig):
    out = study.parent / "r.parquet"
    proc = subprocess.Popen([sys.executable, "-m", "migrate", "sweep", str(study), "--out", str(out), "-j", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            stdin=subprocess.DEVNULL)
    try:
        _wait_rows(Path(str(out) + ".part"), 3, proc)
        workers = _children(proc.pid)
        assert workers
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "--resume" in stdout and "Traceback" not in stderr
    assert 3 <= len(read_results(out, "parquet")) <= 24
    assert not Path(str(out) + ".part").exists()
    for pid in workers:          # stopped, not orphaned (a zombie reaped by init is gone too)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_a_sweep_that_takes_a_while_to_plan_says_so(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "big.yaml").write_text("base: tiny.yaml\naxes:\n  seed: {range: [1, 1000]}\n"
                                       "  migration.start: {from: 1ms, to: 1000ms, step: 1ms}\n")
    proc = subprocess.Popen([sys.executable, "-m", "migrate", "sweep", "big.yaml", "--out", "r.csv", "-j", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path,
                            stdin=subprocess.DEVNULL)
    try:
        line = proc.stderr.readline()
        assert line.startswith("xmig sweep: planning: ") and "1,000,000 runs" in line, line
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr


# --------------------------------------------------------------------------- --allow-policy

def test_allow_policy_enables_a_user_policy_for_the_sweeps_workers(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "mypol.py").write_text("def stop_now(stats):\n    return 1\n")
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "s.yaml").write_text("base: tiny.yaml\naxes:\n  migration.policy: [xen, 'mypol:stop_now']\n")
    env = {**_env(), "PYTHONPATH": str(lib)}
    env.pop("XMIG_ALLOW_POLICY", None)
    run = lambda *a: subprocess.run([sys.executable, "-m", "migrate", "sweep", "s.yaml", "--out", "r.csv", *a],  # noqa: E731
                                    capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    one_error_line(run(), "mypol:stop_now", "--allow-policy")
    res = run("--allow-policy", "mypol:stop_now", "-j", "2")
    assert res.returncode == 0, res.stderr
    rows = read_results(tmp_path / "r.csv", "csv")
    assert [(r["policy"], r["outcome"]) for r in rows] == [("xen", "completed"), ("mypol:stop_now", "completed")]
    assert rows[1]["iterations"] == 1
