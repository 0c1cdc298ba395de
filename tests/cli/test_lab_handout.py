"""docs/lab.md states what the commands it asks students to type print today: the
test re-runs docs/make_lab.py (real xmig processes in a scratch folder) and fails, with
the first lines that differ, when the page is out of date."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_lab_handout_numbers_are_what_the_runs_give():
    res = subprocess.run([sys.executable, str(ROOT / "docs" / "make_lab.py"), "--check"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_handout_says_how_to_refresh_it():
    head = (ROOT / "docs" / "lab.md").read_text().splitlines()[:3]
    assert any("python docs/make_lab.py" in line for line in head)
