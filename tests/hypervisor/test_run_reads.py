"""Runs read whole: the log-dirty tree answers a run of PFNs (a balloon op's, either way
up) from its leaves' unpacked words, and the balloon driver picks the pages to give
back in windows sized to the request; both give exactly what the per-entry ways give."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypervisor.logdirty import LEAF_BITS, LogDirtyTree

from tests.guest.test_guest_balloon import make


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 5 * LEAF_BITS), st.integers(4097, 3 * LEAF_BITS),
       st.sampled_from([0.0, 0.01, 0.5, 1.0]))
def test_is_dirty_of_a_run_reads_as_pfn_by_pfn(seed, lo, n, share):
    rng = np.random.default_rng(seed)
    tree = LogDirtyTree()
    span = np.arange(0, 6 * LEAF_BITS)
    marked = span[rng.random(span.size) < share]
    marked = marked[(marked >> 15) % 3 != 1]                 # some leaves never allocated
    tree.mark_dirty(marked)
    run = np.arange(lo, lo + n)
    want = np.isin(run, marked)
    shuffled = rng.permutation(n)                           # the per-PFN path
    per_pfn = np.empty(n, dtype=bool)
    per_pfn[shuffled] = tree.is_dirty(run[shuffled])
    assert np.array_equal(per_pfn, want)
    assert np.array_equal(tree.is_dirty(run), want)
    down = tree.is_dirty(run[::-1].copy())
    assert np.array_equal(down, want[::-1]) and down.flags.c_contiguous


@pytest.mark.parametrize("owned_share", [1.0, 0.9, 0.3, 0.01])
@pytest.mark.parametrize("n", [1, 700, 5000, 20000])
def test_inflate_picks_the_highest_owned_pages_below_its_hint(owned_share, n):
    b = make({"schedule": []}, memory="128MiB", workloads=[]).balloon
    rng = np.random.default_rng(n)
    b.owned[:] = rng.random(b.owned.size) < owned_share
    b._hint = b.rhi - 777
    below = np.flatnonzero(b.owned[b.rlo:b._hint])[::-1] + b.rlo
    assert np.array_equal(b._pick_inflate(n), below[:n])
