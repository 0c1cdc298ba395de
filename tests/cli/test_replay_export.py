"""``xmig replay --export DIR --at MOMENT``: slides of a recorded run, drawn without a
terminal by the real ``xmig`` process; bad moments and sizes are one line and exit 2."""

from __future__ import annotations

import pytest

from tests.xmig_process import one_error_line


def test_export_writes_svg_and_text_frames_at_each_moment_and_size(xmig, recorded_run, tmp_path):
    out = tmp_path / "slides"
    res = xmig("replay", recorded_run.events, "--export", out, "--at", "pass:2", "--at", "deflate",
               "--at", "end", "--size", "80x24", "--size", "160x50")
    assert res.returncode == 0, res.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{m}-{s}.{ext}" for m in ("pass2", "deflate", "end")
                           for s in ("80x24", "160x50") for ext in ("svg", "txt"))
    assert res.stdout.count("wrote ") == 12
    svg = (out / "pass2-80x24.svg").read_text()
    assert svg.startswith("<svg") and "GFN" in svg
    # the frame at the end of pass 2 states the report's pass-2 numbers
    rnd = recorded_run.report_json()["rounds"][1]
    text = (out / "pass2-80x24.txt").read_text()
    assert f"pass 2 done: {rnd['pages_sent']:,} data pages, {rnd['xtab_sent']:,} XTAB" in text
    assert "finished" in (out / "end-160x50.txt").read_text()


def test_export_at_a_time_and_at_the_switchover(xmig, recorded_run, tmp_path):
    res = xmig("replay", recorded_run.events, "--export", tmp_path, "--at", "t:3.5", "--at", "switchover")
    assert res.returncode == 0, res.stderr
    assert "suspended" in (tmp_path / "switchover-80x24.txt").read_text()
    assert "t=3.4" in (tmp_path / "t3.5s-80x24.txt").read_text()


@pytest.mark.parametrize("args, says", [
    (("--at", "pass:9"), "the recording has passes 1 to 6"),
    (("--at", "inflate:2"), "the recording has 1 balloon inflate"),
    (("--at", "t:99"), "the recording ends at t="),
    (("--at", "middle"), "--at: expected pass:N"),
    (("--at", "pass:0"), "--at: expected pass:N"),
    (("--size", "80by24"), "--size: expected COLUMNSxROWS"),
])
def test_a_bad_moment_or_size_is_one_line_and_exit_2(xmig, recorded_run, tmp_path, args, says):
    res = xmig("replay", recorded_run.events, "--export", tmp_path / "out", *args)
    assert res.returncode == 2
    assert says in one_error_line(res.stderr)
    assert not (tmp_path / "out").exists()          # checked before anything is drawn


def test_at_without_export_is_a_usage_error(xmig, recorded_run):
    res = xmig("replay", recorded_run.events, "--at", "end")
    assert res.returncode == 2
    assert "--export DIR" in one_error_line(res.stderr)


def test_export_into_a_file_is_a_usage_error(xmig, recorded_run, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    res = xmig("replay", recorded_run.events, "--export", f)
    assert res.returncode == 2
    assert "is not a folder" in one_error_line(res.stderr)
