"""Fixtures shared by the tests of every package.

- ``xmig``: the command line as a real process (``tests/xmig_process.py``).
- ``recorded_run``: one ``xmig run --record`` of ``examples/balloon.yaml`` under pre-fix
  (it misses pages, so replay, explain and the report all have something to say), made
  once per session and shared read-only.
- ``small_hv``: a freshly built 64-GFN domain with log-dirty on (``tests/hv_helpers.py``).
- ``mqtt_broker``: a real Mosquitto per test (``tests/mqtt_broker.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.hv_helpers import make_hv
from tests.mqtt_broker import mqtt_broker  # noqa: F401  (a real Mosquitto per test)
from tests.xmig_process import xmig as run_xmig


@pytest.fixture
def xmig():
    """``xmig(*args, cwd=..., timeout=..., env_extra=..., input=...)`` -> CompletedProcess."""
    return run_xmig


@dataclass(frozen=True)
class RecordedRun:
    """What one ``xmig run --no-dashboard --record --report --track`` left behind."""

    scenario: str        # as given to --guest, relative to the repository's root
    behaviour: str
    tracked: int         # the GFN given to --track
    events: Path         # the --record event log
    report: Path         # the --report JSON
    stdout: str          # the plain progress lines and the summary
    returncode: int

    def report_json(self) -> dict:
        return json.loads(self.report.read_text())


@pytest.fixture(scope="session")
def recorded_run(tmp_path_factory) -> RecordedRun:
    """``examples/balloon.yaml`` under pre-fix with GFN 196704 (0x30060, ballooned out and
    back, so pre-fix leaves it missing) tracked. Tests must not write to its files."""
    folder = tmp_path_factory.mktemp("recorded")
    events, report = folder / "balloon.pre-fix.events", folder / "balloon.pre-fix.json"
    scenario, behaviour, tracked = "examples/balloon.yaml", "pre-fix", 196704
    res = run_xmig("run", "--guest", scenario, "-b", behaviour, "--no-dashboard", "--record", events,
                   "--track", tracked, "--report", report)
    assert res.returncode == 1, res.stderr          # pre-fix: the destination misses pages
    return RecordedRun(scenario, behaviour, tracked, events, report, res.stdout, res.returncode)


@pytest.fixture
def small_hv():
    """A 64-GFN HVM domain on 1000 host frames, fixed behaviour, log-dirty enabled."""
    return make_hv()


@pytest.fixture
def full_disk(tmp_path):
    """A folder on a tiny tmpfs with no room left (one file, ``filler``, holds it all):
    what a full disk looks like to xmig. Skips where a tmpfs cannot be mounted."""
    import os
    import subprocess

    mnt = tmp_path / "full"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"x" * 512):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
