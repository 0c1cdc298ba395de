"""The app's compare table (``xmig compare`` in a terminal) shows the report's
``pages.leftover_bits`` and ``pages.unmarked_additions`` for each run, at the end and
(as counts so far) on the way; the map's pending glyphs end at 0 and are not them."""

from __future__ import annotations

from pathlib import Path

import pytest

from migrate.run.report import build_report
from migrate.run.runner import RunOptions
from migrate.run.scenario import load_scenario
from migrate.ui.app import XmigApp
from tests.ui.test_app import until

EX = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("size", [(80, 24), (200, 60)])
async def test_compare_table_rows_equal_each_runs_report(size):
    app = XmigApp.for_compare(load_scenario(EX / "balloon.yaml"), [RunOptions(behaviour=b) for b in ("fixed", "pre-fix")],
                              ["fixed", "pre-fix"], speed=None)
    async with app.run_test(size=size) as pilot:
        await until(pilot, lambda: app.done)
        rows = dict(app.compare.rows())
        maps = [v.gfnmap.totals() for v in app.views]
        await pilot.press("q")
    reports = [build_report(r) for r in app.return_value]
    assert rows["leftover bits"] == [f"{r['pages']['leftover_bits']:,}" for r in reports] == ["0", "3,357"]
    assert rows["lost additions"] == [f"{r['pages']['unmarked_additions']:,}" for r in reports] == ["0", "65,536"]
    assert [m["leftover"] for m in maps] == [0, 0]        # what the rows used to show
