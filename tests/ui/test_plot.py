"""--plot draws pages per pass and the GFN map over passes into a PNG."""

from __future__ import annotations

import sys

import pytest

from migrate.ui.model import RunView
from migrate.ui.gfnmap import GfnMapRecorder
from migrate.ui.plot import PlotError, write_plot

from .test_gfnmap import make_events

pytest.importorskip("matplotlib")


def run_dict(behaviour: str) -> dict:
    view = RunView()
    rec = GfnMapRecorder(view.gfnmap)        # share the app's map
    for ev in make_events(behaviour):
        view(ev)
        rec(ev)
    s = view.state
    return {"scenario": s.scenario, "behaviour": s.behaviour, "policy": {"name": s.policy},
            "rounds": [r.as_dict() for r in s.rounds], "gfn_map": rec.as_list()}


def test_compare_plot_is_a_non_empty_png(tmp_path):
    out = write_plot(tmp_path / "cmp.png", [run_dict("fixed"), run_dict("pre-fix")])
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000


def test_plot_without_gfn_map_draws_the_bars_only(tmp_path):
    run = run_dict("fixed")
    del run["gfn_map"]
    run["label"] = "fixed, xen"
    out = write_plot(tmp_path / "bars.png", [run])
    assert out.stat().st_size > 1000


def test_nothing_to_plot_is_an_error(tmp_path):
    with pytest.raises(PlotError, match="no runs"):
        write_plot(tmp_path / "x.png", [])


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(PlotError, match=r"pip install 'xmig\[plot\]'"):
        write_plot(tmp_path / "x.png", [run_dict("fixed")])


def test_a_sparse_guest_s_later_passes_stay_visible_on_a_log_axis():
    """sparse-16tib.yaml: pass 1 walks 2^32 PFNs (nearly all XTAB), pass 2 sends a few
    hundred pages; on a linear axis pass 2 would be drawn at zero height."""
    from migrate.ui.plot import pages_scale

    sparse = {"rounds": [{"pages_sent": 262144, "xtab_sent": (1 << 32) - 262144},
                         {"pages_sent": 310, "xtab_sent": 0}, {"pages_sent": 40, "xtab_sent": 0}]}
    even = {"rounds": [{"pages_sent": 262144, "xtab_sent": 96}, {"pages_sent": 47518, "xtab_sent": 3357},
                       {"pages_sent": 18631, "xtab_sent": 0}, {"pages_sent": 0, "xtab_sent": 0}]}
    assert pages_scale([sparse]) == "log"
    assert pages_scale([even]) == "linear"
    assert pages_scale([{"rounds": []}]) == "linear"
