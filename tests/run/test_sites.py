"""examples/sites/: each example shows one call site of 98fccdf0ac on its own.

For each example the run is made four ways: every site pre-fix, every site fixed, only
its site fixed, and every site fixed but its own. Switching its site alone must remove
the symptom (wasted XTAB for a removal site, missing or stale pages for the addition
site) that the other three sites, fixed, leave; the numbers come from the reports, not
from constants, so a change to the guest layout moves them without breaking the claim.
"""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path

import pytest

from hypervisor.abi import FIX_SITES

ROOT = Path(__file__).resolve().parents[2]
#: example -> the call site it shows, and whether that site removes (True) or adds.
SITES = {"remove-page": ("p2m_remove_page", True), "set-typed": ("set_typed_p2m_entry", True),
         "pod-steal": ("pod_decrease_reservation", True), "physmap-add": ("guest_physmap_add_entry", False)}


def behaviours(site: str) -> dict[str, object]:
    return {"pre-fix": "pre-fix", "fixed": "fixed",
            "only": {s: "fixed" if s == site else "pre-fix" for s in FIX_SITES},
            "others": {s: "pre-fix" if s == site else "fixed" for s in FIX_SITES}}


@functools.lru_cache(maxsize=None)
def report(name: str, how: str) -> dict:
    from migrate.run.outputs import jsonable
    from migrate.run.report import build_report
    from migrate.run.runner import RunOptions, run_scenario
    from migrate.run.scenario import load_scenario

    scenario = load_scenario(ROOT / "examples" / "sites" / f"{name}.yaml")
    res = asyncio.run(run_scenario(scenario, RunOptions(behaviour=behaviours(SITES[name][0])[how])))
    return json.loads(json.dumps(build_report(res), default=jsonable))


def symptom(rep: dict, removal: bool) -> dict[str, int]:
    p = rep["pages"]
    if removal:
        return {"leftover_bits": p["leftover_bits"], "wasted_xtab": p["leftover_sent_as_xtab"]}
    return {"unmarked_additions": p["unmarked_additions"],
            "missing_or_stale": rep["verify"]["missing_pages"] + rep["verify"]["stale_pages"]}


@pytest.mark.parametrize("name", sorted(SITES))
def test_fixing_its_site_alone_removes_the_symptom_the_other_sites_leave(name):
    site, removal = SITES[name]
    pre, only, others = (symptom(report(name, h), removal) for h in ("pre-fix", "only", "others"))
    assert all(v > 0 for v in pre.values()), pre
    assert others == pre                                   # the other three sites fixed: no help
    assert all(v == 0 for v in only.values()), only        # this one fixed: gone
    assert symptom(report(name, "fixed"), removal) == only


@pytest.mark.parametrize("name", sorted(SITES))
def test_only_its_site_flips_bits_and_as_many_as_the_symptom_counts(name):
    site, removal = SITES[name]
    key = "cleared_by_fix" if removal else "set_by_fix"
    pre = symptom(report(name, "pre-fix"), removal)
    for how in ("only", "fixed"):
        pages = report(name, how)["pages"]
        assert pages[key] == {site: pre["leftover_bits" if removal else "unmarked_additions"]}
        assert pages["set_by_fix" if removal else "cleared_by_fix"] == {}
    assert report(name, "others")["pages"][key] == {}
    assert report(name, "pre-fix")["pages"][key] == {}


def test_pod_steal_gives_its_ram_back_through_the_pod_cache_never_p2m_remove_page():
    """p2m-pod.c: while entry_count > count, every populated page the inflate hands back
    is stolen into the cache; none reaches guest_remove_page."""
    rep = report("pod-steal", "fixed")
    assert "p2m_remove_page" not in rep["pages"]["cleared_by_fix"]
    assert rep["verify"]["ok"] and rep["hypervisor"]["pod_entries"] == 0


def test_set_typed_turns_its_gfns_into_xtab_in_both_behaviours():
    """The BAR's GFNs are XTAB whoever is fixed; only the leftover bits make pass 2 send
    them again."""
    pre, fixed = report("set-typed", "pre-fix"), report("set-typed", "fixed")
    assert pre["rounds"][0]["xtab_sent"] == fixed["rounds"][0]["xtab_sent"] > 0
    assert pre["totals"]["xtab_sent"] - fixed["totals"]["xtab_sent"] == pre["pages"]["leftover_sent_as_xtab"]


@pytest.mark.parametrize("name", ["set-typed", "pod-steal"])
def test_the_per_batch_reference_engine_gives_the_span_engines_report(name):
    """A mapping and a late PoD balloon end a span as any hypercall does: the per-batch
    reference saver gives the same report."""
    from migrate.run.outputs import jsonable
    from migrate.run.report import build_report
    from migrate.run.runner import RunOptions, run_scenario
    from migrate.run.scenario import load_scenario

    sc = load_scenario(ROOT / "examples" / "sites" / f"{name}.yaml")
    sc = sc.model_copy(update={"migration": sc.migration.model_copy(update={"engine": "reference"})})
    rep = json.loads(json.dumps(build_report(asyncio.run(run_scenario(sc, RunOptions(behaviour="pre-fix")))),
                                default=jsonable))
    want = dict(report(name, "pre-fix"))
    rep.pop("wall", None)
    want.pop("wall", None)
    assert rep == want


# ----------------------------------------------------------------------------- the README's table

README_ROWS = {"remove-page": "balloon inflate", "set-typed": "MMIO BAR over RAM", "pod-steal": "PoD cache steals RAM",
               "physmap-add": "balloon deflate"}


def table_numbers(name: str) -> tuple[int, int, int]:
    """The README's three numbers for an example: its symptom under pre-fix, with its
    site alone fixed, and fixed."""
    removal = SITES[name][1]
    key = "wasted_xtab" if removal else "missing_or_stale"
    return tuple(symptom(report(name, how), removal)[key] for how in ("pre-fix", "only", "fixed"))


def table_row(name: str) -> str:
    site, removal = SITES[name]
    what = "XTAB resent for GFNs gone" if removal else "pages missing or stale at the destination"
    nums = " | ".join(f"{n:,}" for n in table_numbers(name))
    return f"| `sites/{name}.yaml` ({README_ROWS[name]}) | {what} (`{site}`) | {nums} |"


def test_the_readme_table_of_the_four_call_sites_gives_the_reports_numbers():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in SITES:
        assert table_row(name) in text, f"regenerate with: python -m tests.run.test_sites --table\n{table_row(name)}"


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--table"]:
        sys.exit("usage: python -m tests.run.test_sites --table")
    for n in ("remove-page", "set-typed", "pod-steal", "physmap-add"):
        print(table_row(n))
