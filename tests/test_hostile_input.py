"""Hostile input through the real ``xmig`` process: a scenario never runs code, tiny
inputs never take huge memory, outputs never destroy files, and every bad value is one
line ``xmig: error: ...`` with exit 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_TTY_ENV = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "CLICOLOR_FORCE")


def xmig(*args, cwd: Path | None = None, timeout: float = 60, env_extra: dict | None = None,
         input: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in _TTY_ENV and k != "XMIG_ALLOW_POLICY"}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "migrate", *[str(a) for a in args]], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=cwd or ROOT, input=input)


def one_error_line(res: subprocess.CompletedProcess, *needles: str) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xmig: error: "), res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------- policies: no code

@pytest.mark.parametrize("policy,params", [
    ("subprocess:Popen", "{args: 'touch MARKER', shell: true}"),
    ("logging:FileHandler", "{filename: MARKER, mode: w}"),
    ("os:system", "{command: 'touch MARKER'}"),
    ("evilpol:run", "{}"),                       # a .py beside the scenario, in the cwd
])
@pytest.mark.parametrize("command", ["run", "compare"])
def test_a_scenario_naming_code_is_refused_at_load_and_leaves_no_marker(tmp_path, policy, params, command):
    marker = tmp_path / "MARKER"
    (tmp_path / "evilpol.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef run(stats):\n    return 1\n")
    (tmp_path / "evil.yaml").write_text(
        "guest: {memory: 16MiB}\n"
        f"migration: {{start: 10ms, policy: '{policy}', policy_params: {params.replace('MARKER', str(marker))}}}\n")
    res = xmig(command, "--guest", "evil.yaml", cwd=tmp_path)
    one_error_line(res, "evil.yaml: migration.policy: unknown policy", "--allow-policy")
    assert not marker.exists()


def test_an_enabled_class_or_builtin_is_still_never_called(tmp_path):
    marker = tmp_path / "MARKER"
    (tmp_path / "evil.yaml").write_text(
        "guest: {memory: 16MiB}\n"
        f"migration: {{policy: 'subprocess:Popen', policy_params: {{args: 'touch {marker}', shell: true}}}}\n")
    res = xmig("run", "--guest", "evil.yaml", "--allow-policy", "subprocess:Popen", cwd=tmp_path)
    one_error_line(res, "not a Python function")
    assert not marker.exists()


def test_an_enabled_user_policy_runs(tmp_path):
    pkg = tmp_path / "lib"
    pkg.mkdir()
    (pkg / "mypol.py").write_text("def stop_now(stats, params):\n    return 1 if stats.iteration >= params['n'] else 0\n")
    (tmp_path / "ok.yaml").write_text("guest: {memory: 16MiB}\n"
                                      "migration: {start: 10ms, policy: 'mypol:stop_now', policy_params: {n: 1}}\n")
    env = {"PYTHONPATH": str(pkg)}
    res = xmig("run", "--guest", "ok.yaml", "--no-dashboard", "--report", "r.json", cwd=tmp_path, env_extra=env)
    assert res.returncode == 2 and "--allow-policy" in res.stderr
    res = xmig("run", "--guest", "ok.yaml", "--no-dashboard", "--report", "r.json", cwd=tmp_path,
               env_extra={**env, "XMIG_ALLOW_POLICY": "mypol:stop_now"})
    assert res.returncode == 0, res.stderr
    assert '"name": "mypol:stop_now"' in (tmp_path / "r.json").read_text()


# --------------------------------------------------------------------------- outputs never destroy files

SMALL = "name: small\nguest: {memory: 16MiB}\nmigration: {start: 10ms}\n"


@pytest.fixture
def small(tmp_path) -> Path:
    p = tmp_path / "small.yaml"
    p.write_text(SMALL)
    return p


def test_report_onto_a_device_node_is_refused_and_the_node_stays(tmp_path, small):
    import stat

    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, OSError) as e:
        pytest.skip(f"cannot mknod here: {e}")
    res = xmig("run", "--guest", small, "--report", node, "--no-dashboard")
    one_error_line(res, "--report", "is a device node")
    assert stat.S_ISCHR(os.stat(node).st_mode)


def test_stream_or_csv_onto_a_fifo_is_refused(tmp_path, small):
    import stat

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for opt in ("--stream", "--csv"):
        res = xmig("run", "--guest", small, opt, fifo, "--no-dashboard")
        one_error_line(res, opt, "is a FIFO")
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)


@pytest.mark.parametrize("args,needle", [
    (["--report", "SCEN"], "is also the scenario file"),
    (["--report", "x.json", "--csv", "x.json"], "--csv: x.json is also --report"),
    (["--report", "x.json", "--stream", "x.json"], "--stream: x.json is also --report"),
    (["--plot", "x.txt"], "--plot: x.txt: expected an image file name"),
    (["--report", "nodir/x.json"], "does not exist"),
])
def test_outputs_are_checked_before_the_run(tmp_path, small, args, needle):
    args = [str(small) if a == "SCEN" else a for a in args]
    before = small.read_text()
    res = xmig("run", "--guest", small, *args, "--no-dashboard", cwd=tmp_path)
    one_error_line(res, needle)
    assert res.stdout == ""                       # nothing ran
    assert small.read_text() == before
    assert not list(tmp_path.glob(".*"))          # no hidden temporary file


def test_a_hard_link_to_the_scenario_is_the_same_file(tmp_path, small):
    os.link(small, tmp_path / "alias.json")
    res = xmig("compare", "--guest", small, "--report", tmp_path / "alias.json")
    one_error_line(res, "is also the scenario file")
    assert small.read_text() == SMALL


def test_disk_full_after_a_run_keeps_the_results(tmp_path, small):
    mnt = tmp_path / "full"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (the injected-ENOSPC test covers this)")
    try:
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)    # leave no room at all
        try:
            while os.write(fd, b"x" * 512):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        res = xmig("run", "--guest", small, "--report", mnt / "r.json", "--csv", mnt / "r.csv", "--no-dashboard")
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 2 and all(line.startswith("xmig: error: --") for line in lines)
        assert "No space left on device" in lines[0] and "saved to " in lines[0]
        saved = Path(lines[0].split("saved to ")[1].split(" instead")[0])
        try:
            assert '"outcome": "completed"' in saved.read_text()
        finally:
            saved.unlink()
            Path(lines[1].split("saved to ")[1].split(" instead")[0]).unlink()
        assert sorted(p.name for p in mnt.iterdir()) == ["filler"]     # no .tmp left
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_injected_enospc_leaves_no_tmp_and_falls_back(tmp_path, monkeypatch):
    import errno

    from migrate import outputs

    real_fdopen = os.fdopen

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def fdopen(fd, *a, **kw):
        fh = real_fdopen(fd, *a, **kw)
        return Full(fh) if str(tmp_path) in os.readlink(f"/proc/self/fd/{fd}") else fh

    monkeypatch.setattr(outputs.os, "fdopen", fdopen)
    target = tmp_path / "r.json"
    problems = outputs.write_results({"--report": (target, lambda p: outputs.write_json(p, {"a": 1}))})
    assert len(problems) == 1 and "No space left on device" in problems[0]
    saved = Path(problems[0].split("saved to ")[1].split(" instead")[0])
    try:
        assert saved.read_text() == '{\n  "a": 1\n}\n'
    finally:
        saved.unlink()
    assert list(tmp_path.iterdir()) == []


def test_sigterm_stops_a_run_like_ctrl_c(tmp_path):
    import signal

    scen = tmp_path / "slow.yaml"
    scen.write_text("name: slow\nguest: {memory: 256MiB, workloads: [{kind: uniform, rate: 1MiB/s}]}\n"
                    "link: {bandwidth: 50Mbit/s}\nmigration: {start: 100ms}\n")
    env = {k: v for k, v in os.environ.items() if k not in _TTY_ENV}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        proc = subprocess.Popen([sys.executable, "-m", "migrate", "run", "--guest", scen, "--no-dashboard",
                                 "--speed", "4", "--report", tmp_path / "r.json", "--stream", tmp_path / "s.xmig"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
        try:
            assert proc.stdout.readline().startswith("xmig: scenario slow")
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130, (sig, err)
        assert '"outcome": "aborted"' in (tmp_path / "r.json").read_text()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "slow.yaml"]   # no .partial
        (tmp_path / "r.json").unlink()
