"""``xmig examples``: the shipped scenarios are listed and copied out of wherever xmig
is installed (here: the checkout's examples/ folder, through an editable install)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from migrate.cli.examples import catalogue, examples_root
from migrate.cli.main import app
from migrate.run.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]


def xmig(*args: str):
    return CliRunner().invoke(app, list(args))


def test_every_shipped_file_belongs_to_one_listed_example():
    shipped = {p.relative_to(ROOT / "examples").as_posix()
               for p in (ROOT / "examples").rglob("*") if p.is_file()}
    listed = [f for e in catalogue() for f in e.files]
    assert sorted(listed) == sorted(shipped)
    assert examples_root() == ROOT / "examples"


def test_the_listing_names_each_example_with_its_own_first_line():
    result = xmig("examples")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.split() == ["balloon", "the", "canonical", "demo", "of", "the", "P2M/log-dirty", "fix."]
               for line in lines)
    for name in ("balloon-stale", "idle", "webserver", "sweeps/balloon-deflate-sweep", "mosquitto"):
        assert any(line.strip().startswith(name + " ") for line in lines), name
    assert all(e.description for e in catalogue())


def test_copy_everything_into_the_default_folder_and_the_copies_load(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = xmig("examples", "copy")
    assert result.exit_code == 0, result.output
    for example in catalogue():
        for rel in example.files:
            assert (tmp_path / "examples" / rel).read_bytes() == (ROOT / "examples" / rel).read_bytes()
    assert load_scenario(tmp_path / "examples" / "balloon.yaml").guest.memory > 0


def test_a_copied_sweep_brings_the_scenario_it_is_based_on(tmp_path):
    result = xmig("examples", "copy", "balloon-deflate-sweep", str(tmp_path / "study"))
    assert result.exit_code == 0, result.output
    copied = sorted(p.relative_to(tmp_path / "study").as_posix() for p in (tmp_path / "study").rglob("*.yaml"))
    assert copied == ["balloon.yaml", "sweeps/balloon-deflate-sweep.yaml"]
    from migrate.sweep.spec import load_sweep

    assert load_sweep(tmp_path / "study" / "sweeps" / "balloon-deflate-sweep.yaml")


def test_copy_refuses_to_replace_a_file_without_force(tmp_path):
    (tmp_path / "balloon.yaml").write_text("mine\n")
    result = xmig("examples", "copy", "balloon", "idle", str(tmp_path))
    assert result.exit_code == 2
    assert "already exists" in result.output and "--force" in result.output
    assert (tmp_path / "balloon.yaml").read_text() == "mine\n"
    assert not (tmp_path / "idle.yaml").exists()       # nothing copied at all
    result = xmig("examples", "copy", "balloon", str(tmp_path), "--force")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "balloon.yaml").read_bytes() == (ROOT / "examples" / "balloon.yaml").read_bytes()


@pytest.mark.parametrize("args, words", [
    (("nosuch", "out"), "no example named 'nosuch'"),
    (("balloon", "nosuch", "out"), "no example named 'nosuch'"),
])
def test_an_unknown_example_is_one_line_and_exit_2(tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    result = xmig("examples", "copy", *args)
    assert result.exit_code == 2
    assert words in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_copy_into_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    result = xmig("examples", "copy", "idle", str(tmp_path / "afile"))
    assert result.exit_code == 2
    assert "is not a folder" in result.output
