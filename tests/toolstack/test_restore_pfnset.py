"""The restorer's populated-PFN set told its PFNs are strictly increasing (a restore
group's ``want`` and ``new``) finds their leaves by searching for the leaf boundaries
instead of looking at every PFN: it answers and holds exactly what it does untold."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migrate.toolstack.pfnset import PfnSet


@st.composite
def increasing_pfns(draw):
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.sampled_from([0, 32760, 1 << 20, 1 << 39, draw(st.integers(0, 1 << 22))]))
        step = draw(st.sampled_from([1, 1, 3, 40000]))       # runs, gaps, one PFN a leaf
        n = draw(st.integers(1, 70000 if step < 100 else 30))
        parts.append(start + step * np.arange(n, dtype=np.int64))
    return np.unique(np.concatenate(parts))


@settings(max_examples=30, deadline=None)
@given(increasing_pfns(), increasing_pfns(), st.integers(0, 2**32))
def test_told_ascending_the_set_answers_and_holds_what_it_does_untold(first, query, seed):
    rng = np.random.default_rng(seed)
    told, untold = PfnSet(), PfnSet()
    some = first[rng.random(first.size) < 0.7]
    told.add(some, ascending=True)
    untold.add(some)
    assert np.array_equal(told.to_array(), some) and told.count == untold.count == some.size
    assert np.array_equal(told.contains(query, ascending=True), untold.contains(query))
    assert np.array_equal(untold.contains(query), np.isin(query, some))
    rest = first[~np.isin(first, some)]
    told.add(rest, ascending=True)
    untold.add(rest)
    assert np.array_equal(told.to_array(), untold.to_array())
    assert np.array_equal(told.contains(query, ascending=True), np.isin(query, first))


@pytest.mark.parametrize("xtab_every", [0, 7, 1 << 30])
def test_a_run_of_records_restores_what_the_records_one_by_one_restore(xtab_every):
    # Groups whose entries are all kept are gathered as slices of the run; with XTAB
    # entries among them, by mask: either way the destination ends as it does when
    # every record is applied on its own.
    from hypervisor.abi import DomainLayout
    from hypervisor.domain import Hypervisor
    from hypervisor.runs import CHUNK
    from migrate.toolstack.restore import Restorer
    from hypervisor.abi import PFInfo

    pfns = np.concatenate([np.arange(0, 150 * 1024), np.arange(CHUNK + 5, CHUNK + 5 + 3000)])
    nib = np.zeros(pfns.size, dtype=np.uint8)
    if xtab_every:
        nib[::xtab_every] = PFInfo.XTAB
    tokens = np.arange(1, int(np.count_nonzero(nib == 0)) + 1, dtype=np.uint64)
    states = []
    for one_by_one in (False, True):
        hv = Hypervisor(host_frames=1 << 20, record_events=False)
        hv.build(DomainLayout(ram_gfns=np.empty(0, dtype=np.int64)))
        r = Restorer(hv, on_record=(lambda rec: None) if one_by_one else None)
        r.apply_page_data_run(pfns, nib, tokens)
        r.flush()
        g, t = hv.snapshot()
        states.append((g, t, r.result.pages_written, r.result.pages_populated, r.result.xtab_skipped))
    (g1, t1, *c1), (g2, t2, *c2) = states
    assert np.array_equal(g1, g2) and np.array_equal(t1, t2) and c1 == c2
    assert np.array_equal(g1, pfns[nib == 0]) and np.array_equal(t1, tokens)


def test_entries_left_pending_after_a_run_hold_none_of_the_runs_arrays():
    # The groups flushed inside the call may be slices of the run; what waits for the
    # next flush is copied, so a pass's arrays are not kept alive until then.
    from hypervisor.abi import DomainLayout
    from hypervisor.domain import Hypervisor
    from migrate.toolstack.restore import APPLY_GROUP, Restorer

    pfns = np.arange(0, APPLY_GROUP + 5 * 1024)
    nib = np.zeros(pfns.size, dtype=np.uint8)
    tokens = np.arange(1, pfns.size + 1, dtype=np.uint64)
    hv = Hypervisor(host_frames=1 << 20, record_events=False)
    hv.build(DomainLayout(ram_gfns=np.empty(0, dtype=np.int64)))
    r = Restorer(hv)
    r.apply_page_data_run(pfns, nib, tokens)
    assert r.result.pages_written == APPLY_GROUP and len(r._pending) == 1
    for part, whole in zip(r._pending[0], (pfns, nib, tokens)):
        assert part.size == 5 * 1024 and not np.shares_memory(part, whole)
    r.flush()
    g, t = hv.snapshot()
    assert np.array_equal(g, pfns) and np.array_equal(t, tokens)
