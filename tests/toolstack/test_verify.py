"""The whole-domain check (migrate/toolstack/verify.py): missing, stale and extra pages are
counted alike whether both sides hold the same GFNs or not, sorted or not."""

from __future__ import annotations

import numpy as np

from migrate.toolstack.verify import VerifyAccumulator


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


async def test_a_remote_source_sends_contents_only_where_a_window_differs(monkeypatch):
    """Over a transport, runner._verify asks the source for a digest of each window and
    fetches only the windows whose digest differs from the destination's: a pre-fix
    run's verdict with stale pages (counts and samples) is the one that compares every window,
    and far fewer windows cross the wire."""
    from pathlib import Path

    from migrate.toolstack import control as control_mod
    from migrate.run.runner import RunOptions, run_scenario
    from migrate.run.scenario import load_scenario

    sc = load_scenario(Path(__file__).resolve().parents[2] / "examples" / "balloon-stale.yaml")
    full = await run_scenario(sc, RunOptions(behaviour="pre-fix"))
    fetched = []
    snapshot = control_mod.LocalDomain.snapshot

    async def counted(self, t, lo=0, hi=None):
        fetched.append((lo, hi))
        return await snapshot(self, t, lo, hi)

    monkeypatch.setattr(control_mod.LocalDomain, "verify_by_digest", True, raising=False)
    monkeypatch.setattr(control_mod.LocalDomain, "snapshot", counted)
    by_digest = await run_scenario(sc, RunOptions(behaviour="pre-fix"))
    assert by_digest.verify == full.verify and full.verify.stale_pages > 0
    assert 0 < len(fetched) < 4          # the 1 GiB guest is 5 windows; the clean ones stay put


def test_equal_windows_have_equal_digests_and_any_change_shows():
    from migrate.toolstack.verify import snapshot_digest

    g = np.arange(10, 20, dtype=np.int64)
    t = np.arange(1, 11, dtype=np.uint64)
    assert snapshot_digest(g, t) == snapshot_digest(g.copy(), t.copy())
    t2 = t.copy()
    t2[4] ^= 1
    assert snapshot_digest(g, t2) != snapshot_digest(g, t)
    assert snapshot_digest(g[:-1], t[:-1]) != snapshot_digest(g, t)
