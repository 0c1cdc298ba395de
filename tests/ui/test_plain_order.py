"""Plain progress lines (piped / --no-dashboard): virtual-time order, Xen's loop
counter explained, the VERIFY pass's effect on the verdict explained, no wrapping."""

from __future__ import annotations

import asyncio
import io
import re

import pytest

from migrate.events import EventBus
from migrate.ui.progress import PlainProgress, print_summary
from migrate.run.report import build_report
from migrate.run.runner import RunOptions, run_scenario
from migrate.run.scenario import load_scenario


def plain(example, **opts):
    bus, out = EventBus(), io.StringIO()
    progress = PlainProgress(out)
    bus.subscribe(progress)
    res = asyncio.run(run_scenario(load_scenario(f"examples/{example}.yaml"), RunOptions(**opts), bus=bus))
    progress.close()
    return out.getvalue().splitlines(), res


@pytest.fixture(scope="module")
def balloon_verify():
    return plain("balloon", behaviour="pre-fix", verify=True)


def test_balloon_lines_and_pass_ends_come_in_virtual_time_order(balloon_verify):
    lines, res = balloon_verify
    ends = {r.iteration: r.end_s for r in res.save.rounds}
    stamps = []
    for line in lines:
        m = re.search(r"t=([0-9.]+) s", line)
        if m:
            stamps.append(float(m.group(1)))
        m = re.match(r"xc: progress: Frames iteration (\d+)[^:]*: \d+/\d+ pages,", line)
        if m:
            stamps.append(round(ends[int(m.group(1))], 3))
    assert stamps == sorted(stamps)
    # the new target is announced before the hypercalls that reach it
    i = next(k for k, s in enumerate(lines) if "target 196608 pages" in s)
    assert "decrease_reservation" in lines[i + 1]
    # balloon ops served while pass 3 was ending (the guest runs on at the next CLEAN)
    j = next(k for k, s in enumerate(lines) if s.startswith("xmig: balloon: t=9.540"))
    assert lines[j + 1].startswith("xc: progress: Frames iteration 3 of 5:")


def test_a_turn_of_xens_loop_that_sent_nothing_is_explained():
    lines, _ = plain("idle", behaviour="fixed")
    k = next(k for k, s in enumerate(lines) if s.startswith("xmig: iteration 2 sent nothing"))
    assert "CLEAN after pass 1 found no dirty pages" in lines[k]
    assert lines[k + 1].startswith("xc: progress: Frames iteration 3 (final)")


def test_verify_says_where_the_missing_pages_went(balloon_verify):
    """pre-fix balloon.yaml ends with 42,576 missing pages; the VERIFY pass populates
    them (zeroed, compared, not copied), so 10,258 show as stale and the rest match."""
    lines, res = balloon_verify
    assert res.verify.missing_pages == 0 and res.verify.stale_pages == 10258
    assert res.restore["pages_populated_by_verify"] == 42576
    note = next(s for s in lines if s.startswith("xmig: verify: the VERIFY pass populated"))
    assert "populated 42576 pages no earlier pass sent" in note and "saw 10258 mismatching" in note


def test_plain_summary_never_wraps_a_row(balloon_verify):
    _, res = balloon_verify
    out = io.StringIO()
    print_summary(build_report(res), out)
    text = out.getvalue()
    totals = [s for s in text.splitlines() if s.startswith("totals:")]
    assert len(totals) == 1 and totals[0].endswith("downtime 9.348 s")
    assert len(totals[0]) > 80 and all(s == s.rstrip() for s in text.splitlines())


def test_a_per_site_behaviour_is_stated_in_the_output_and_the_report():
    sites = {"p2m_remove_page": "fixed", "set_typed_p2m_entry": "pre-fix",
             "pod_decrease_reservation": "pre-fix", "guest_physmap_add_entry": "pre-fix"}
    sc = load_scenario("examples/balloon.yaml")
    sc = sc.model_copy(update={"migration": sc.migration.model_copy(update={"xen_behaviour": sites})})
    bus, out = EventBus(), io.StringIO()
    progress = PlainProgress(out)
    bus.subscribe(progress)
    res = asyncio.run(run_scenario(sc, RunOptions(), bus=bus))
    progress.close()
    lines = out.getvalue().splitlines()
    assert "behaviour mixed" in lines[0]
    assert lines[1] == ("xmig: call sites: p2m_remove_page fixed, set_typed_p2m_entry pre-fix, "
                        "pod_decrease_reservation pre-fix, guest_physmap_add_entry pre-fix")
    rep = build_report(res)
    assert rep["behaviour"] == "mixed" and rep["xen_behaviour_sites"] == sites
    # the removal site alone: pass 2's XTAB leftovers are gone, the additions still lost
    assert rep["pages"]["cleared_by_fix"] == {"p2m_remove_page": 3357}
    assert rep["totals"]["xtab_sent"] == 847856 and rep["verify"]["missing_pages"] == 42540
