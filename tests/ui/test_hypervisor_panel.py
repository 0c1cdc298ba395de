"""The hypervisor panel's ``dirty_count`` follows Xen's: a completed CLEAN zeroes it
(``paging_log_dirty_op``, xen/arch/x86/mm/paging.c), so right after a CLEAN the panel
says 0, not the count the last sample read before it. Driven through the app's pilot."""

from __future__ import annotations

import asyncio
import re

import pytest

from migrate.events import CleanDone, CleanOp, CountersSampled
from migrate.ui.app import XmigApp
from tests.ui.test_app import prefix_run, until  # noqa: F401 (a fixture)


def _dirty_count(text: str) -> int:
    m = re.search(r"dirty_count\s+([0-9,]+)", text)
    assert m, text
    return int(m.group(1).replace(",", ""))


@pytest.mark.parametrize("size", [(80, 24), (200, 60)])
async def test_the_panel_shows_dirty_count_0_right_after_a_clean(size, prefix_run):
    events, _ = prefix_run
    first_clean = next(i for i, ev in enumerate(events)
                       if isinstance(ev, CleanDone) and ev.op == CleanOp.CLEAN and not ev.final)
    before = [ev for ev in events[:first_clean] if isinstance(ev, CountersSampled)][-1]
    assert before.counters["dirty_count"] > 0      # the sample the panel held before the fix
    upto = first_clean + 1
    hold = asyncio.Event()

    async def watch(listener):
        for ev in events[:upto]:
            listener(ev)
            await asyncio.sleep(0)
        await hold.wait()
        return "held"

    app = XmigApp.for_watch(watch)
    async with app.run_test(size=size) as pilot:
        await until(pilot, lambda: app.views[0].events_seen == upto)
        if size[0] < 120:
            await pilot.press("d")                 # details: balloon and hypervisor
            await pilot.pause(0.1)
        text = app.query_one("#hv").plain()
        assert _dirty_count(text) == 0
        assert f"dirty {events[first_clean].dirty_count}" in text     # what the CLEAN returned
        hold.set()
        await pilot.press("q")
