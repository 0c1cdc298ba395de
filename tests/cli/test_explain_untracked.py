"""``xmig explain`` for a GFN nobody tracked: the event log carries the verify's missing
and stale sets (``VerifySets``, runs), so explain tells "missing" or "stale" for the
GFNs the report's verify counts, not "unknown"."""

from __future__ import annotations

import json

from tests.xmig_process import xmig

MISSING_LINE = "destination: MISSING, the verify lists it"
STALE_LINE = "destination: STALE, the verify lists it"
NEITHER_LINE = "destination: not missing and not stale"


def test_an_untracked_missing_gfn_is_explained_as_missing(recorded_run):
    rep = recorded_run.report_json()
    assert rep["verify"]["missing_pages"] == 42576
    untracked = [g for g in rep["verify"]["missing_sample"] if g != recorded_run.tracked]
    for g in untracked[:3] + [hex(untracked[-1])]:
        out = xmig("explain", recorded_run.events, "--gfn", g)
        assert out.returncode == 0, out.stderr
        assert "unknown (record with --track" not in out.stdout
        assert out.stdout.rstrip().splitlines()[-1].endswith(MISSING_LINE + " (RAM at the source, never "
                                                             "populated at the destination)"), out.stdout
    # a GFN the balloon never touched: sent in pass 1, the verify found it alike
    out = xmig("explain", recorded_run.events, "--gfn", "5")
    assert NEITHER_LINE in out.stdout.splitlines()[-1]


def test_an_untracked_stale_gfn_is_explained_as_stale(tmp_path):
    events, report = tmp_path / "s.events", tmp_path / "s.json"
    run = xmig("run", "--guest", "examples/balloon-stale.yaml", "-b", "pre-fix", "--no-dashboard",
               "--record", events, "--report", report)
    assert run.returncode == 1, run.stderr
    v = json.loads(report.read_text())["verify"]
    assert v["stale_pages"] > 0 and v["missing_pages"] > 0
    out = xmig("explain", events, "--gfn", v["stale_sample"][0])
    assert out.stdout.rstrip().splitlines()[-1].split("  ", 1)[1].startswith(STALE_LINE), out.stdout
    out = xmig("explain", events, "--gfn", v["missing_sample"][-1])
    assert MISSING_LINE in out.stdout.rstrip().splitlines()[-1]
