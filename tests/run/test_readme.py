"""The README's scenario examples are real: every YAML block in it loads."""

import re
from pathlib import Path

import pytest

from migrate.run.scenario import load_scenario

README = Path(__file__).resolve().parents[2] / "README.md"
# Sweep files (a top-level base:) are loaded by tests/test_sweep.py.
BLOCKS = [b for b in re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S)
          if not re.search(r"^base:", b, flags=re.M)]


def test_the_readme_has_scenario_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("text", BLOCKS)
def test_every_readme_scenario_loads(text, tmp_path):
    (tmp_path / "writes.csv").write_text("time_s,gfn\n0.5,10\n1.0,11\n")
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    scenario = load_scenario(path)
    assert scenario.guest.memory > 0


def test_the_readme_explain_transcript_is_the_pinned_one():
    """The README's `xmig explain` transcript is the one tests/test_track.py checks
    against the real command, so the README cannot drift when the numbers move."""
    from tests.events.test_track import BALLOON_PREFIX

    block = re.search(r"```text\n  \$ xmig run --guest examples/balloon.yaml -b pre-fix --record run.events"
                      r".*?\n  \$ xmig explain run.events --gfn 0x30060\n(.*?)  ```", README.read_text(),
                      flags=re.S)
    assert block, "the README's explain example is gone"
    lines = [line.removeprefix("  ") for line in block.group(1).splitlines()]
    assert "\n".join(lines) == BALLOON_PREFIX
