"""The pass table at any width: every number shown is the report's, exactly or as an
honest abbreviation (262240 may read 262k, never 26224), and the table fits."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from migrate.ui.passfit import abbrev, fit_pass_table, parse_abbrev

from .test_app import recorded

MIB = 1 << 20


@pytest.mark.parametrize("n, shown", [(0, "0"), (9999, "9999"), (10000, "10.0k"), (47495, "47.5k"),
                                      (262240, "262k"), (999_960, "1.00M"), (1048576, "1.05M"),
                                      (4294967296, "4.29G")])
def test_abbreviations_round_and_keep_their_unit(n, shown):
    assert abbrev(n) == shown
    v, half = parse_abbrev(shown)
    assert abs(v - n) <= half


def test_every_abbreviation_stands_for_its_number():
    for n in list(range(0, 200_000, 997)) + [10 ** k - 1 for k in range(1, 13)] + [10 ** k for k in range(13)]:
        v, half = parse_abbrev(abbrev(n))
        assert abs(v - n) <= half + 1e-9, n


def report_rows(result) -> dict[int, dict]:
    return {r.iteration: r.as_dict() for r in result.save.rounds}


def table_cells(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    head = lines[0].replace("time s", "time_s").replace("bal -/+", "bal").split()
    # pass rows start with their number; "… N earlier passes not shown" (wrapped or not) does not
    rows = [ln.split() for ln in lines[2:] if ln.split()[0].isdigit()]
    return head, rows


KEYS = {"dirty_count": "dirty_count", "dirty": "dirty_count", "walked": "pfns_walked", "data": "pages_sent",
        "XTAB": "xtab_sent"}


def check_row(head: list[str], cells: list[str], want: dict) -> None:
    """Every number in ``cells`` is ``want``'s, exactly or within its abbreviation."""
    assert len(cells) == len(head)
    for name, cell in zip(head, cells):
        if name == "#":
            assert int(cell) == want["iteration"]
        elif name == "phase":
            assert cell == want["phase"]
        elif name in KEYS:
            v, half = parse_abbrev(cell)
            assert abs(v - want[KEYS[name]]) <= half, (name, cell, want[KEYS[name]])
        elif name == "MiB":
            v, half = parse_abbrev(cell)
            assert abs(v - want["bytes"] / MIB) <= half + 1e-9, (name, cell)
        elif name in ("s", "time_s"):
            v, half = parse_abbrev(cell)
            assert abs(v - (want["end_s"] - want["start_s"])) <= half + 1e-9
        elif name == "bal":
            a, b = cell.split("/")
            for part, key in ((a, "balloon_out"), (b, "balloon_in")):
                v, half = parse_abbrev(part)
                assert abs(v - want[key]) <= half


@pytest.mark.parametrize("width", [12, 14, 20, 30, 40, 50, 56, 62, 70, 76, 90, 110, 150])
def test_the_table_fits_every_width_and_each_number_is_the_reports(width):
    _, result = recorded("balloon.yaml", "pre-fix")
    want = report_rows(result)
    con = Console(record=True, width=width, file=io.StringIO())
    con.print(fit_pass_table(result.save.rounds, width=width))
    text = con.export_text()
    assert max(len(ln.rstrip()) for ln in text.splitlines()) <= width
    head, rows = table_cells(text)
    assert len(rows) == len(want)
    for cells in rows:
        check_row(head, cells, want[int(cells[0])])
