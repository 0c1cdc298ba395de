"""``xmig compare``'s "leftover bits" and "lost additions" rows are the report's
``pages.leftover_bits`` and ``pages.unmarked_additions``, the whole run's counts; they
used to count the map's glyphs, which show what is pending now and end at 0 | 0."""

from __future__ import annotations

import json

from tests.xmig_process import xmig


def _row(stdout: str, name: str) -> list[int]:
    line = next(ln for ln in stdout.splitlines() if ln.strip("│ ").startswith(name))
    cells = [c.strip() for c in line.strip().strip("│").split("│")]
    return [int(c.replace(",", "")) for c in cells[1:]]


def test_compare_rows_equal_the_reports_page_counts(tmp_path):
    out = xmig("compare", "--guest", "examples/balloon.yaml", "--no-dashboard", "--report", tmp_path / "c.json")
    assert out.returncode == 0, out.stderr       # both runs completed
    runs = json.loads((tmp_path / "c.json").read_text())["runs"]
    assert [r["behaviour"] for r in runs] == ["fixed", "pre-fix"]
    assert _row(out.stdout, "leftover bits") == [r["pages"]["leftover_bits"] for r in runs] == [0, 3357]
    assert _row(out.stdout, "lost additions") == [r["pages"]["unmarked_additions"] for r in runs] == [0, 65536]
    # the same scenario and seed run alone reports the same counts
    alone = xmig("run", "--guest", "examples/balloon.yaml", "--behaviour", "pre-fix", "--no-dashboard",
                 "--report", tmp_path / "r.json")
    assert alone.returncode == 1, alone.stderr
    pages = json.loads((tmp_path / "r.json").read_text())["pages"]
    assert (pages["leftover_bits"], pages["unmarked_additions"]) == (3357, 65536)
