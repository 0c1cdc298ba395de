"""ChunkedArray row writes fault a new row's written part in at once (MADV_POPULATE_WRITE)."""

import numpy as np

import hypervisor.chunked as p2m
from hypervisor.chunked import ChunkedArray
from hypervisor.runs import CHUNK


def test_a_run_written_into_new_rows_prefaults_exactly_their_written_parts(monkeypatch):
    a = ChunkedArray(np.uint64, 0)
    a.put_run(0, np.arange(1, 101, dtype=np.uint64))            # row 0: old from now on
    calls = []
    real = ChunkedArray._prefault
    monkeypatch.setattr(ChunkedArray, "_prefault", lambda self, r, off, k: (calls.append((r, off, k)),
                                                                             real(self, r, off, k)))
    start = 50
    vals = np.arange(7, 7 + 2 * CHUNK + 10, dtype=np.uint64)
    a.put_run(start, vals)                                     # rows 0 (old), 1 and 2 (new)
    assert calls == [(1, 0, CHUNK), (2, 0, start + vals.size - 2 * CHUNK)]
    assert np.array_equal(a.get_run(start, vals.size), vals)
    assert np.array_equal(a.get_run(0, 50), np.arange(1, 51, dtype=np.uint64))
    assert p2m._POPULATE_WRITE is not None                      # this kernel took it


def test_prefault_leaves_small_parts_and_tables_without_a_mapping_alone(monkeypatch):
    seen = []

    class Map:
        def madvise(self, *args):
            seen.append(args)

    a = ChunkedArray(np.uint64, 0)
    a.put_run(0, np.ones(10, dtype=np.uint64))
    real_map = a._map
    a._map = Map()
    a._prefault(0, 0, p2m.PREFAULT_MIN_BYTES // 8 - 1)          # too small: written as it goes
    assert seen == []
    a._prefault(0, 3, CHUNK - 3)                                # page-aligned inside the part
    (opt, lo, length), = seen
    assert lo % 4096 == 0 and length % 4096 == 0 and lo >= 3 * 8 and lo + length <= CHUNK * 8
    a._map = real_map


def test_new_rows_filled_with_a_nonzero_default_are_prefaulted_together_first(monkeypatch):
    calls = []
    real = ChunkedArray._prefault
    monkeypatch.setattr(ChunkedArray, "_prefault", lambda self, r, off, k: (calls.append((r, off, k)),
                                                                             real(self, r, off, k)))
    a = ChunkedArray(np.uint8, 7)
    a.set(np.array([5, CHUNK + 5, 2 * CHUNK + 5]), np.uint8(1))      # three new rows
    assert calls == [(0, 0, 3 * CHUNK)]
    assert int(a.get(np.array([6]))[0]) == 7 and int(a.get(np.array([CHUNK + 5]))[0]) == 1
