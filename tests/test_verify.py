"""The whole-domain check (migrate/verify.py): missing, stale and extra pages are
counted alike whether both sides hold the same GFNs or not, sorted or not."""

from __future__ import annotations

import numpy as np

from migrate.verify import VerifyAccumulator


def _counts(*parts):
    acc = VerifyAccumulator()
    for p in parts:
        acc.add(*p)
    r = acc.result()
    return r.ok, r.missing_pages, r.stale_pages, r.extra_pages, r.missing_sample, r.stale_sample, r.extra_sample


def test_same_gfns_on_both_sides_count_only_stale_pages():
    g = np.arange(100, 140, dtype=np.int64)
    st = np.arange(40, dtype=np.uint64)
    dt = st.copy()
    dt[[3, 7, 39]] += 1
    assert _counts((g, st, g, dt)) == (False, 0, 3, 0, [], [103, 107, 139], [])
    assert _counts((g, st, g.copy(), st.copy())) == (True, 0, 0, 0, [], [], [])


def test_different_gfns_count_missing_stale_and_extra_in_any_order():
    sg = np.array([1, 2, 3, 5, 8], dtype=np.int64)
    st = np.array([10, 20, 30, 50, 80], dtype=np.uint64)
    dg = np.array([2, 3, 4, 8], dtype=np.int64)
    dt = np.array([20, 31, 40, 80], dtype=np.uint64)
    want = (False, 2, 1, 1, [1, 5], [3], [4])
    assert _counts((sg, st, dg, dt)) == want
    o, p = np.array([4, 0, 3, 1, 2]), np.array([3, 1, 0, 2])
    assert _counts((sg[o], st[o], dg[p], dt[p])) == want
    # Same length, different GFNs: not mistaken for the same set.
    assert _counts((sg[:4], st[:4], dg, dt))[:4] == (False, 2, 1, 2)


async def test_the_verdict_does_not_depend_on_the_snapshot_windows(monkeypatch):
    """runner._verify compares the two sides a window of GFNs at a time (1 MiB of GFNs
    in process, 16 MiB over a transport, ``RemoteDomain.snapshot_span``): a pre-fix
    balloon run's missing, stale and extra counts and samples come out the same with
    windows of 4 Ki GFNs or of a whole 1 GiB guest."""
    from pathlib import Path

    from migrate import runner
    from migrate.runner import RunOptions, run_scenario
    from migrate.scenario import load_scenario

    sc = load_scenario(Path(__file__).resolve().parent.parent / "examples" / "balloon.yaml")
    verdicts = []
    for span in (1 << 12, 1 << 18):
        monkeypatch.setattr(runner, "VERIFY_SPAN", span)
        res = await run_scenario(sc, RunOptions(behaviour="pre-fix"))
        verdicts.append(res.verify)
    assert verdicts[0] == verdicts[1] and verdicts[0].missing_pages > 0 and verdicts[0].missing_sample
