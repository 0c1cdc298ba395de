"""``xmig`` as a user runs it: ``python -m migrate ARGS`` as a real process, its output piped.

The one place the tests start the command line as a subprocess (the ``xmig`` fixture of
``tests/conftest.py`` hands out ``xmig``). The environment is the piped kind a script
sees: the variables that make rich treat a pipe as a terminal are dropped, output is
unbuffered, lines are 100 columns, and no policy module is allowed unless a test says so
(``env_extra={"XMIG_ALLOW_POLICY": ...}``). Stdin is empty unless ``input`` is given, so
a command that wrongly waits for input fails instead of hanging on the test's terminal.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Rich decides "terminal or not" from these too; kept out so output is the piped kind.
TTY_ENV = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "CLICOLOR_FORCE")


def xmig_env(**extra: str) -> dict[str, str]:
    """The environment of an ``xmig`` subprocess (``extra`` added last)."""
    env = {k: v for k, v in os.environ.items() if k not in TTY_ENV and k != "XMIG_ALLOW_POLICY"}
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "100"
    env.update(extra)
    return env


def xmig_command(*args) -> list[str]:
    return [sys.executable, "-m", "migrate", *map(str, args)]


def xmig(*args, cwd: Path | str | None = None, timeout: float = 120, env_extra: dict | None = None,
         input: str | None = None) -> subprocess.CompletedProcess:
    """Run ``xmig ARGS`` to its end (from the repository's root unless ``cwd``); text
    stdout and stderr kept apart. ``timeout`` only bounds a hang, it asserts nothing."""
    stdin = {} if input is not None else {"stdin": subprocess.DEVNULL}
    return subprocess.run(xmig_command(*args), capture_output=True, text=True, timeout=timeout,
                          env=xmig_env(**(env_extra or {})), cwd=cwd or ROOT, input=input, **stdin)


def xmig_popen(*args, cwd: Path | str | None = None, env_extra: dict | None = None, **kw) -> subprocess.Popen:
    """Start ``xmig ARGS`` and return at once (stdout and stderr piped as text unless
    ``kw`` says otherwise); the caller waits for it or kills it."""
    opts = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "stdin": subprocess.DEVNULL}
    opts.update(kw)
    return subprocess.Popen(xmig_command(*args), env=xmig_env(**(env_extra or {})), cwd=cwd or ROOT, **opts)


def one_error_line(stderr: str) -> str:
    """The whole of stderr must be one ``xmig: error:`` line, without a traceback."""
    assert "Traceback" not in stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("xmig: error: "), stderr
    return lines[0]


def usage_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    """Bad input: exit 2, and stderr one ``xmig: error:`` line naming every needle."""
    assert res.returncode == 2, (res.returncode, res.stdout[-500:], res.stderr[-2000:])
    assert "Traceback" not in res.stdout
    line = one_error_line(res.stderr)
    for n in needles:
        assert n in line, line
    return line
