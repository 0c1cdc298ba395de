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
