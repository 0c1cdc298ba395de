"""tables.run_array / known_run: a run of PFNs made once is known as one where it goes."""

import numpy as np
import pytest

from hypervisor.chunked import ChunkedArray
from hypervisor.runs import run_start
from hypervisor.tables import known_run, run_array


def test_a_run_array_and_its_increasing_slices_are_known_runs():
    a = run_array(1000, 10_000)
    assert np.array_equal(a, np.arange(1000, 11_000))
    for x in (a, a[5:], a[3:7000], a[:1], a[4:4], np.asarray(a, dtype=np.int64).reshape(-1)[10:]):
        assert known_run(x)


def test_anything_else_is_not_known_to_be_a_run():
    a = run_array(0, 10_000)
    others = [a[::-1], a[::2], a.copy(), np.arange(10_000), a + 0, a.astype(np.int32), a.reshape(100, 100)]
    for x in others:
        assert not known_run(x)


def test_a_run_array_cannot_be_written_so_it_stays_a_run():
    a = run_array(0, 100)
    with pytest.raises(ValueError):
        a[3] = 7
    with pytest.raises(ValueError):
        a[10:][0] = 1
    with pytest.raises(ValueError):
        a[10:].flags.writeable = True


def test_the_run_paths_answer_the_same_for_known_and_checked_arrays():
    rng = np.random.default_rng(5)
    run = run_array(77, 20_000)
    cases = [run, run[1:], run[:4096], run[:4097], np.arange(77, 20_077), run[::-1], np.sort(rng.integers(0, 1 << 20, 9000)),
             np.concatenate([run[:5000], run[6000:]]), rng.permutation(run)]
    for x in cases:
        plain = np.array(x)               # the same values, not known as a run: checked
        assert ChunkedArray._run(x) == ChunkedArray._run(plain)
        assert ChunkedArray._ascending(x) == ChunkedArray._ascending(plain)
        assert run_start(x) == run_start(plain)


def test_verify_takes_two_known_runs_as_equal_by_their_ends_and_counts_as_with_plain_arrays():
    from migrate.toolstack.verify import VerifyAccumulator

    rng = np.random.default_rng(9)
    tok = rng.integers(1, 1 << 60, 6000).astype(np.uint64)
    bad = tok.copy()
    bad[[5, 4000]] ^= np.uint64(1)
    cases = [(run_array(100, 5000), run_array(100, 5000)),        # the same window on both sides
             (run_array(100, 5000), run_array(101, 5000)),        # shifted by one: not equal
             (run_array(100, 5000), run_array(100, 4999)),
             (run_array(0, 6000)[1000:], run_array(500, 5500)[500:])]
    for sg, dg in cases:
        got, want = VerifyAccumulator(), VerifyAccumulator()
        got.add(sg, tok[:sg.size], dg, bad[:dg.size])
        want.add(np.array(sg), tok[:sg.size], np.array(dg), bad[:dg.size])
        assert got.result() == want.result()
