"""The README and the manual are real: every scenario they show loads, every sweep they
show plans, the `xmig explain` transcript is the one the real command prints, every link
between them leads somewhere, and the README's test command is the one CI runs."""

import re
from pathlib import Path

import pytest

from migrate.run.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]


def _blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", path.read_text(encoding="utf-8"), flags=re.S | re.M)


def _is_sweep(text: str) -> bool:
    return re.search(r"^base:", text, flags=re.M) is not None


SCENARIOS = [pytest.param(b, id=f"{p.name}-{i}") for p in PAGES
             for i, b in enumerate(_blocks(p, "yaml")) if not _is_sweep(b)]
SWEEPS = [pytest.param(b, id=f"{p.name}-{i}") for p in PAGES
          for i, b in enumerate(_blocks(p, "yaml")) if _is_sweep(b)]


def test_the_readme_is_a_five_minute_read_with_scenarios_and_a_manual():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) < 200
    assert _blocks(README, "yaml"), "the README shows no scenario"
    assert len(SCENARIOS) >= 4 and SWEEPS


@pytest.mark.parametrize("text", SCENARIOS)
def test_every_scenario_in_the_readme_and_the_manual_loads(text, tmp_path):
    (tmp_path / "writes.csv").write_text("time_s,gfn\n0.5,10\n1.0,11\n")
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    scenario = load_scenario(path)
    assert scenario.guest.memory > 0


@pytest.mark.parametrize("text", SWEEPS)
def test_every_sweep_in_the_manual_plans_more_than_one_run(text, tmp_path):
    from migrate.sweep.spec import load_sweep

    (tmp_path / "balloon.yaml").write_bytes((ROOT / "examples" / "balloon.yaml").read_bytes())
    (tmp_path / "study.yaml").write_text(text)
    assert len(load_sweep(tmp_path / "study.yaml")) > 1


def test_the_quick_start_and_the_test_command_are_the_ones_ci_runs():
    sh = _blocks(README, "sh")
    quick, tests = sh[0].strip(), sh[1].strip()
    assert quick.startswith("python3 -m venv .venv") and quick.endswith("xmig run --guest examples/balloon.yaml")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert any(line.startswith(tests) for line in ci), f"{tests!r} is not in .ci/run"


def test_the_explain_transcript_is_the_pinned_one():
    """The walk-through's `xmig explain` transcript is the one tests/events/test_track.py
    checks against the real command, so the manual cannot drift when the numbers move."""
    from tests.events.test_track import BALLOON_PREFIX

    page = (ROOT / "docs" / "walkthrough.md").read_text(encoding="utf-8")
    block = re.search(r"```text\n\$ xmig run --guest examples/balloon.yaml -b pre-fix --record run.events"
                      r".*?\n\$ xmig explain run.events --gfn 0x30060\n(.*?)```", page, flags=re.S)
    assert block, "the walk-through's explain example is gone"
    assert block.group(1).rstrip("\n") == BALLOON_PREFIX


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_leads_to_a_file(page):
    text = page.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    broken = []
    for target in targets:
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert not broken, f"{page.name}: links to nothing: {broken}"


def test_the_manuals_navigation_lists_every_page_and_only_pages_that_exist():
    nav = re.findall(r":\s*(\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(encoding="utf-8"), flags=re.M)
    assert sorted(nav) == sorted(p.name for p in DOCS)
