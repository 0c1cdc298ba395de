"""``VerifySets``: the verify's missing and stale GFNs as runs in the event stream, bounded
(at most ``MAX_VERIFY_RUNS`` runs a set), checked against ``VerifyDone`` when read."""

from __future__ import annotations

import numpy as np
import pytest

from migrate.events import PageFate, VerifyDone, VerifySets, VerifyStats
from migrate.events.validate import check_event, check_run
from migrate.toolstack import verify as verify_mod
from migrate.toolstack.verify import VerifyAccumulator


def _acc(src: np.ndarray, dst: np.ndarray, changed: np.ndarray, step: int = 1000) -> VerifyAccumulator:
    """Both sides window by window; ``changed`` GFNs hold other contents at the destination."""
    acc = VerifyAccumulator()
    top = int(max(src.max(initial=0), dst.max(initial=0))) + 1
    for a in range(0, top, step):
        sg = src[(src >= a) & (src < a + step)]
        dg = dst[(dst >= a) & (dst < a + step)]
        dt = np.where(np.isin(dg, changed), 2, 1).astype(np.uint64)
        acc.add(sg, np.ones(sg.size, dtype=np.uint64), dg, dt)
    return acc


def test_the_sets_hold_exactly_the_pages_the_verify_counts_as_runs():
    src = np.arange(0, 5000, dtype=np.int64)
    missing = np.r_[np.arange(990, 1010), np.arange(3000, 3003)]          # one run across a window edge
    dst = np.setdiff1d(src, missing)
    stale = np.array([7, 8, 9, 2500], dtype=np.int64)
    acc = _acc(src, dst, stale)
    sets, st = acc.sets(4.0), acc.result()
    assert sets.missing.tolist() == [[990, 1010], [3000, 3003]]
    assert sets.stale.tolist() == [[7, 10], [2500, 2501]]
    assert (st.missing_pages, st.stale_pages) == (23, 4)
    assert sets.fate(1000) is PageFate.MISSING and sets.fate(8) is PageFate.STALE
    assert sets.fate(1010) is PageFate.OK and sets.fate(0) is PageFate.OK
    check_event(sets)
    check_run({}, [_started(), VerifyDone(t=4.0, stats=st), sets])


def test_nothing_missing_or_stale_publishes_no_sets():
    src = np.arange(100, dtype=np.int64)
    assert _acc(src, src, np.empty(0, dtype=np.int64)).sets(1.0) is None


def test_a_set_of_too_many_runs_is_cut_and_says_it_does_not_know_past_the_cut(monkeypatch):
    monkeypatch.setattr(verify_mod, "MAX_VERIFY_RUNS", 3)
    src = np.arange(0, 100, dtype=np.int64)
    missing = np.arange(0, 100, 10, dtype=np.int64)                      # 10 runs of one GFN
    acc = _acc(src, np.setdiff1d(src, missing), np.empty(0, dtype=np.int64), step=25)
    sets = acc.sets(1.0)
    assert sets.missing.tolist() == [[0, 1], [10, 11], [20, 21]] and not sets.missing_complete
    assert sets.fate(10) is PageFate.MISSING
    assert sets.fate(15) is PageFate.OK                    # before the cut: known
    assert sets.fate(30) is None and sets.fate(31) is None  # past it: unknown
    check_run({}, [_started(), VerifyDone(t=1.0, stats=acc.result()), sets])


def _started():
    from migrate.events import RunStarted

    return RunStarted(t=0.0, scenario="s", seed=1, behaviour="pre-fix", policy="xen", policy_params={},
                      guest_pages=100, populated=np.empty((0, 2), dtype=np.int64),
                      ballooned=np.empty((0, 2), dtype=np.int64), sites={}, tracked=())


@pytest.mark.parametrize("missing,why", [
    (np.array([[5, 3]]), "sorted, disjoint, non-empty"),
    (np.array([[1, 4], [3, 6]]), "sorted, disjoint, non-empty"),
    (np.array([1, 2, 3]), "k x 2"),
])
def test_a_forged_set_is_refused(missing, why):
    with pytest.raises(ValueError, match=why):
        check_event(VerifySets(t=1.0, missing=missing, stale=np.empty((0, 2), dtype=np.int64)))


def test_sets_that_disagree_with_verify_done_are_refused():
    stats = VerifyStats(ok=False, missing_pages=2, stale_pages=0, extra_pages=0)
    sets = VerifySets(t=1.0, missing=np.array([[1, 4]]), stale=np.empty((0, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="holds 3 GFNs but VerifyDone counts 2 missing"):
        check_run({}, [_started(), VerifyDone(t=1.0, stats=stats), sets])
