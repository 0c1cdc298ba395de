"""The goal of issue 25: every number the app, ``compare``, ``watch`` and ``explain``
show equals the JSON report's. ``examples/balloon.yaml`` under both behaviours is run
once as a user runs it (``xmig run --report --record``); then each surface is read
where users read it and held to that report: the plain lines and summary, the app
replaying and watching the recording (Textual's pilot, 80x24 and 200x60), ``xmig
compare`` (a real process) and ``xmig explain`` (a real process)."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from migrate.events import VerifySets
from migrate.events.log import read_event_log
from migrate.ui.app import XmigApp
from tests.ui.test_app import until
from tests.xmig_process import xmig

MIB = 1 << 20


@dataclass
class Recorded:
    behaviour: str
    report: dict
    events: Path
    stdout: str


@pytest.fixture(scope="module", params=["fixed", "pre-fix"])
def recorded(request, tmp_path_factory) -> Recorded:
    d = tmp_path_factory.mktemp(f"numbers-{request.param}")
    out = xmig("run", "--guest", "examples/balloon.yaml", "-b", request.param, "--no-dashboard",
               "--report", d / "r.json", "--record", d / "r.events")
    assert out.returncode == (0 if request.param == "fixed" else 1), out.stderr
    return Recorded(request.param, json.loads((d / "r.json").read_text()), d / "r.events", out.stdout)


def _num(text: str) -> int:
    return int(text.replace(",", ""))


def check_pass_table(text: str, rounds: list[dict]) -> int:
    """Every row the pass table shows (any width: columns by their header) equals the
    report's pass of that number; returns how many rows it checked."""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    head = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("#"))
    names = re.split(r"\s{2,}", lines[head].strip())
    by_iter = {r["iteration"]: r for r in rounds}
    checked = 0
    for ln in lines[head + 1:]:
        cells = ln.split()
        if not cells or not cells[0].isdigit() or len(cells) != len(names):
            continue
        r = by_iter[int(cells[0])]
        for name, cell in zip(names, cells):
            if name in ("dirty", "dirty_count"):
                assert _num(cell) == r["dirty_count"], (name, ln)
            elif name == "walked":
                assert _num(cell) == r["pfns_walked"], (name, ln)
            elif name == "data":
                assert _num(cell) == r["pages_sent"], (name, ln)
            elif name == "XTAB":
                assert _num(cell) == r["xtab_sent"], (name, ln)
            elif name == "MiB":
                decimals = len(cell.partition(".")[2])
                assert abs(float(cell) - r["bytes"] / MIB) <= 0.5 * 10 ** -decimals + 1e-9, (name, ln)
            elif name in ("s", "time s"):
                decimals = len(cell.partition(".")[2])
                assert abs(float(cell) - (r["end_s"] - r["start_s"])) <= 0.5 * 10 ** -decimals + 1e-9, (name, ln)
            elif name == "bal -/+":
                assert cell == f"{r['balloon_out']}/{r['balloon_in']}", (name, ln)
            elif name == "phase":
                assert cell == r["phase"], ln
        checked += 1
    return checked


def test_the_plain_lines_and_the_summary_are_the_reports(recorded):
    rep, out = recorded.report, recorded.stdout
    assert check_pass_table(out, rep["rounds"]) == len(rep["rounds"])
    t = rep["totals"]
    assert (f"totals: {t['iterations']} live passes, {t['pages_sent']} data pages, {t['xtab_sent']} XTAB, "
            f"{t['bytes'] / MIB:.2f} MiB, total {t['total_time_s']:.3f} s, downtime {t['downtime_s']:.3f} s") in out
    v = rep["verify"]
    assert f"missing {v['missing_pages']}, stale {v['stale_pages']}, extra {v['extra_pages']}" in out
    # the final pass's progress line: its PFNs, data and XTAB as the report counts them
    last = rep["rounds"][-1]
    assert (f"Frames iteration {last['iteration']} (final): {last['pfns_walked']}/{last['pfns_walked']} pages, "
            f"{last['pages_sent']} data, {last['xtab_sent']} XTAB") in out
    replay = xmig("replay", recorded.events, "--no-dashboard")
    assert replay.stdout == out


def _check_screen(app, rep: dict, large: bool) -> None:
    view = app.views[0]
    v, pages = rep["verify"], rep["pages"]
    header = app.query_one("#header").plain()
    if v["ok"]:
        assert "destination VERIFIED" in header
    else:
        assert f"{v['missing_pages']:,} missing, {v['stale_pages']:,} stale" in header.replace("\n", "")
    assert check_pass_table(app.query_one("#table").plain(), rep["rounds"]) >= 2
    legend = app.query_one("#map").plain()
    assert f"sent {pages['destination']['current']:,}" in legend
    assert (f"missing {v['missing_pages']:,}" in legend) == (v["missing_pages"] > 0)
    holes = rep["p2m_size"] - rep["destination"]["source_ram_pages"]
    assert f"hole {holes:,}" in legend
    last = rep["rounds"][-1]
    pane = app.query_one("#pass").plain()
    assert f"{last['pfns_walked']:,}/{last['pfns_walked']:,} PFNs  data {last['pages_sent']:,}  XTAB " \
           f"{last['xtab_sent']:,}" in pane
    # the state every panel reads, number by number
    s = view.state
    assert s.sent_so_far() == {"data": rep["totals"]["pages_sent"], "xtab": rep["totals"]["xtab_sent"],
                               "bytes": sum(r["bytes"] for r in rep["rounds"]), "passes": len(rep["rounds"])}
    assert (s.leftover_bits, s.unmarked_additions) == (pages["leftover_bits"], pages["unmarked_additions"])
    assert s.balloon_during_passes == (sum(r["balloon_out"] for r in rep["rounds"]),
                                       sum(r["balloon_in"] for r in rep["rounds"]))
    if large:
        hv = app.query_one("#hv").plain()
        for k, n in rep["hypervisor"].items():
            if k != "logdirty_nodes_peak":
                assert re.search(rf"^{k}\s+{n}\b", hv, re.M), (k, n, hv)
        assert f"(peak {rep['hypervisor']['logdirty_nodes_peak']})" in hv


@pytest.mark.parametrize("size", [(80, 24), (200, 60)])
async def test_the_app_replaying_and_watching_shows_the_reports_numbers(recorded, size):
    events = read_event_log(recorded.events).events

    async def watch(listener):
        for ev in events:
            listener(ev)
            await asyncio.sleep(0)
        return "completed"

    for app in (XmigApp.for_replay(events, speed=None), XmigApp.for_watch(watch)):
        async with app.run_test(size=size) as pilot:
            await until(pilot, lambda: app.done)
            _check_screen(app, recorded.report, large=size[0] >= 120)
            await pilot.press("q")


def test_compare_shows_each_runs_report(recorded, tmp_path):
    if recorded.behaviour != "pre-fix":
        pytest.skip("one compare covers both behaviours")
    out = xmig("compare", "--guest", "examples/balloon.yaml", "--no-dashboard", "--report", tmp_path / "c.json")
    assert out.returncode == 0, out.stderr
    runs = json.loads((tmp_path / "c.json").read_text())["runs"]
    prefix = runs[1]
    strip = lambda r: {k: v for k, v in r.items() if k not in ("wall",)}      # noqa: E731
    assert strip(prefix) == strip(recorded.report)          # the same scenario and seed: the same report

    def row(name):
        line = next(ln for ln in out.stdout.splitlines() if ln.strip("│ ").startswith(name))
        return [c.strip() for c in line.strip().strip("│").split("│")][1:]

    for name, fn in [("data pages sent", lambda r: f"{r['totals']['pages_sent']:,}"),
                     ("XTAB entries", lambda r: f"{r['totals']['xtab_sent']:,}"),
                     ("stream bytes", lambda r: f"{r['totals']['bytes']:,}"),
                     ("total time (virtual s)", lambda r: f"{r['totals']['total_time_s']:.3f}"),
                     ("downtime (virtual ms)", lambda r: f"{r['totals']['downtime_s'] * 1000:.1f}"),
                     ("leftover bits", lambda r: f"{r['pages']['leftover_bits']:,}"),
                     ("lost additions", lambda r: f"{r['pages']['unmarked_additions']:,}"),
                     ("missing pages", lambda r: f"{r['verify']['missing_pages']:,}"),
                     ("stale pages", lambda r: f"{r['verify']['stale_pages']:,}"),
                     ("extra pages", lambda r: f"{r['verify']['extra_pages']:,}")]:
        assert row(name) == [fn(r) for r in runs], name


def test_explain_tells_each_verified_gfn_as_the_report_counts_it(recorded):
    v = recorded.report["verify"]
    log = read_event_log(recorded.events)
    sets = [ev for ev in log.events if isinstance(ev, VerifySets)]
    if v["missing_pages"] == 0 and v["stale_pages"] == 0:
        assert sets == []
        out = xmig("explain", recorded.events, "--gfn", "0x30060")
        assert "destination: not missing and not stale" in out.stdout.splitlines()[-1]
        return
    (s,) = sets
    assert int((s.missing[:, 1] - s.missing[:, 0]).sum()) == v["missing_pages"]
    assert int((s.stale[:, 1] - s.stale[:, 0]).sum()) == v["stale_pages"]
    for g in v["missing_sample"][:2] + v["missing_sample"][-1:]:
        out = xmig("explain", recorded.events, "--gfn", g)
        assert "destination: MISSING" in out.stdout.splitlines()[-1], out.stdout
    # the passes explain names are the report's passes, at the report's times
    out = xmig("explain", recorded.events, "--gfn", v["missing_sample"][0]).stdout
    times = {r["iteration"]: (r["start_s"], r["end_s"]) for r in recorded.report["rounds"]}
    for t, it in re.findall(r"t=\s*([0-9.]+) s  pass (\d+):", out):
        a, b = times[int(it)]
        assert a - 1e-6 <= float(t) <= b + 1e-6
