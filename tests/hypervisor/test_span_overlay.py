"""The span's overlay (``hypervisor.span._overlay``): each data PFN gets the last write
made to it before its batch's map, whatever the shape of the span's PFNs (one run,
ascending with gaps, in no order); checked against the write-by-write definition."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hypervisor.span import _overlay
from hypervisor.tables import run_array


def reference(tokens, dp, maps, dpb, wt, wg, wtok):
    out = tokens.copy()
    batch_of = np.repeat(np.arange(dpb.size), dpb)
    for i, p in enumerate(dp.tolist()):
        for j in range(wt.size):                     # writes in time order: the last one wins
            if wg[j] == p and wt[j] < maps[batch_of[i]]:
                out[i] = wtok[j]
    return out


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from(["run", "known run", "gaps", "shuffled"]), st.integers(1, 300),
       st.integers(0, 400))
def test_overlay_takes_each_pfns_last_write_before_its_map(seed, shape, n, nw):
    rng = np.random.default_rng(seed)
    base = int(rng.integers(0, 1 << 30))
    if shape == "run":
        dp = np.arange(base, base + n)
    elif shape == "known run":
        dp = run_array(base - 7, n + 7)[7:]          # a slice of the engine's batches
    else:
        dp = np.sort(rng.choice(np.arange(base, base + 3 * n), n, replace=False))
        if shape == "shuffled":
            dp = rng.permutation(dp)
    cuts = np.sort(rng.integers(0, n + 1, 3))
    dpb = np.diff(np.concatenate([[0], cuts, [n]]))
    maps = np.cumsum(rng.random(dpb.size))
    wt = np.sort(rng.random(nw) * (maps[-1] + 0.5))
    wg = rng.integers(base - 5, base + 3 * n + 5, nw)
    wtok = rng.integers(1, 1 << 60, nw).astype(np.uint64)
    tokens = rng.integers(1, 1 << 60, n).astype(np.uint64)
    want = reference(tokens, dp, maps, dpb, wt, wg, wtok)
    got = _overlay(tokens.copy(), dp, maps, dpb, wt, wg, wtok)
    assert np.array_equal(got, want)


def reference_by_write(tokens, dp, maps, dpb, wt, wg, wtok):
    """The same definition, write by write (fast enough for spans of full batches)."""
    out = tokens.copy()
    batch_of = np.repeat(np.arange(dpb.size), dpb)
    where = {int(p): i for i, p in enumerate(dp.tolist())}
    for j in range(wt.size):                         # in time order: the last one wins
        i = where.get(int(wg[j]))
        if i is not None and wt[j] < maps[batch_of[i]]:
            out[i] = wtok[j]
    return out


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 4), st.integers(1, 1024), st.integers(0, 3000), st.booleans())
def test_overlay_of_a_run_of_full_batches_takes_each_pfns_last_write_before_its_map(seed, full, tail, nw, known):
    rng = np.random.default_rng(seed)
    n = full * 1024 + tail
    base = int(rng.integers(0, 1 << 30))
    dp = run_array(base, n) if known else np.arange(base, base + n)
    dpb = np.array([1024] * full + [tail])
    maps = np.cumsum(rng.random(dpb.size))
    wt = np.sort(rng.random(nw) * (maps[-1] + 0.5))
    wg = rng.integers(base - 50, base + n + 50, nw)
    wg[: nw // 3] = rng.integers(base, base + 40, nw // 3)   # some PFNs written many times
    wtok = rng.integers(1, 1 << 60, nw).astype(np.uint64)
    tokens = rng.integers(1, 1 << 60, n).astype(np.uint64)
    want = reference_by_write(tokens, dp, maps, dpb, wt, wg, wtok)
    assert np.array_equal(_overlay(tokens.copy(), dp, maps, dpb, wt, wg, wtok), want)
