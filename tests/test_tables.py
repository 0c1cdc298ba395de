"""Class tables over arrays (hypervisor/tables.py): exactly the plain gather."""

import numpy as np
import pytest

from hypervisor import abi
from hypervisor.tables import batch_totals, lookup

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


def test_lookup_past_the_table_raises_like_the_gather():
    with pytest.raises(IndexError):
        lookup(abi.PFINFO_KNOWN, np.full(5000, 16, dtype=np.uint8))


@pytest.mark.parametrize("n", [1, 1023, 1024, 1025, 5 * 1024, 5 * 1024 + 7])
def test_batch_totals_count_each_batch(n):
    mask = np.random.default_rng(n).random(n) < 0.7
    want = np.add.reduceat(mask, np.arange(0, n, 1024), dtype=np.int64)
    assert batch_totals(mask, 1024).tolist() == want.tolist()
