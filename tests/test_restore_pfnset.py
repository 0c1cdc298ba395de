"""The restorer's populated-PFN set told its PFNs are strictly increasing (a restore
group's ``want`` and ``new``) finds their leaves by searching for the leaf boundaries
instead of looking at every PFN: it answers and holds exactly what it does untold."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from migrate.restore import _PfnSet


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
    told, untold = _PfnSet(), _PfnSet()
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
