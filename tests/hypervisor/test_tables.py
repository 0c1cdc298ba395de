"""Class tables over arrays (hypervisor/tables.py): exactly the plain gather."""

import numpy as np
import pytest

from hypervisor import abi
from hypervisor.tables import batch_totals, lookup, uniform_byte

TABLES = [abi.IS_RAM, abi.IS_POD, abi.IS_MAPPABLE, abi.IS_GUEST_WRITABLE, abi.PFINFO_OF_TYPE,
          abi.PFINFO_HAS_DATA, abi.PFINFO_KNOWN, abi.PFINFO_POPULATE, np.ones(16, dtype=bool)]


@pytest.mark.parametrize("table", TABLES, ids=range(len(TABLES)))
def test_lookup_is_the_gather_for_every_spread_of_values(table):
    rng = np.random.default_rng(3)
    for lo, hi, n in ((0, 0, 9000), (2, 2, 10), (0, 1, 5000), (1, 6, 70000), (0, 15, 8000), (9, 15, 4097)):
        x = rng.integers(lo, hi + 1, n).astype(np.uint8)
        got, want = lookup(table, x), table[x]
        assert got.dtype == want.dtype and got.shape == want.shape and (got == want).all()
        got[:1] = got[:1]                         # a new, writable array like the gather's


@pytest.mark.parametrize("n", [1, 7, 8, 9, 4096, 70001])
def test_uniform_byte_finds_one_value_held_everywhere_and_nothing_else(n):
    for v in (0, 1, 15, 255):
        x = np.full(n, v, dtype=np.uint8)
        assert uniform_byte(x) == v
        for i in {0, n // 2, n - 1} if n > 1 else ():      # one odd entry anywhere (head, words, tail)
            y = x.copy()
            y[i] ^= 1
            assert uniform_byte(y) is None
    z = np.zeros(2 * n, dtype=np.uint8)
    z[1::2] = 3
    assert uniform_byte(z[::2]) == 0                        # strided: no word view
    assert uniform_byte(np.empty(0, dtype=np.uint8)) is None


def test_lookup_past_the_table_raises_like_the_gather():
    with pytest.raises(IndexError):
        lookup(abi.PFINFO_KNOWN, np.full(5000, 16, dtype=np.uint8))


@pytest.mark.parametrize("n", [1, 1023, 1024, 1025, 5 * 1024, 5 * 1024 + 7])
def test_batch_totals_count_each_batch(n):
    mask = np.random.default_rng(n).random(n) < 0.7
    want = np.add.reduceat(mask, np.arange(0, n, 1024), dtype=np.int64)
    assert batch_totals(mask, 1024).tolist() == want.tolist()


@pytest.mark.parametrize("batch", [8, 16, 24, 1024, 2040, 2048, 7, 1000])
@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
def test_batch_totals_by_words_count_as_the_plain_count_does(batch, share):
    # Batches of a multiple of 8 flags up to 2040 are counted eight flags a word (up
    # to 255 a byte lane: a full batch of 2040 fills each lane exactly); the rest,
    # and masks that are not contiguous, flag by flag.
    rng = np.random.default_rng(batch)
    for n in (batch, 5 * batch, 5 * batch + 3, 3, 0):
        mask = rng.random(n) < share
        want = [int(np.count_nonzero(mask[a:a + batch])) for a in range(0, n, batch)]
        assert batch_totals(mask, batch).tolist() == want
        strided = np.repeat(mask, 2)[::2]
        assert batch_totals(strided, batch).tolist() == want
        shifted = np.concatenate([[True] * 3, mask])[3:]       # not on an 8-byte boundary
        assert batch_totals(shifted, batch).tolist() == want


def test_add_where_adds_a_wrapping_delta_where_the_mask_is_set():
    from hypervisor.tables import add_where

    rng = np.random.default_rng(4)
    for delta in (1, -1, 7, -200, 255, 0):
        a = rng.integers(0, 256, 10000).astype(np.uint8)
        mask = rng.random(a.size) < 0.3
        want = a.copy()
        want[mask] = (want[mask].astype(np.int64) + delta) % 256
        add_where(a, mask.copy(), delta)
        assert np.array_equal(a, want)


def test_global_type_change_turns_every_entry_of_one_type_and_no_other():
    from hypervisor.abi import P2MType
    from hypervisor.p2m import P2M

    p2m = P2M()
    g = np.arange(0, 600000)
    kinds = np.array([P2MType.ram_rw, P2MType.ram_logdirty, P2MType.mmio_direct], dtype=np.uint8)
    t = kinds[np.random.default_rng(2).integers(0, 3, g.size)]
    for k in kinds:
        p2m.set(g[t == k], k, g[t == k] + 5)
    for ot, nt in ((P2MType.ram_rw, P2MType.ram_logdirty), (P2MType.ram_logdirty, P2MType.ram_rw)):
        before = p2m.get_types(g)
        p2m.change_type_global(ot, nt)
        want = np.where(before == ot, np.uint8(nt), before)
        assert np.array_equal(p2m.get_types(g), want)
        assert p2m.type_counts[ot] == 0 and p2m.type_counts[nt] == int(np.count_nonzero(want == nt))
