"""P2M, M2P and the host frame allocator (hypervisor/p2m.py, frames.py)."""

import numpy as np
import pytest

from hypervisor.abi import ENOMEM, INVALID_MFN, MAX_GFN, P2MType, XenError
from hypervisor.frames import HostFrames
from hypervisor.p2m import CHUNK, M2P, P2M, ChunkedArray


def test_absent_chunks_read_as_default():
    p2m = P2M()
    t, m = p2m.get(np.array([0, 12345, MAX_GFN, -1, MAX_GFN + 1]))
    assert (t == P2MType.invalid).all() and (m == INVALID_MFN).all()


def test_sparse_guest_holds_only_touched_chunks():
    # 1 GiB + one page near 2^32, and one at the top GFN: a few chunks, not a dense table.
    p2m = P2M()
    g = np.concatenate([np.arange(1 << 18), [(1 << 32) - 3, MAX_GFN]])
    p2m.set(g, P2MType.ram_rw, np.arange(g.size, dtype=np.uint32))
    assert p2m.types.nrows == 3
    t, m = p2m.get(np.array([5, (1 << 32) - 3, (1 << 32) - 2, MAX_GFN]))
    assert t.tolist() == [0, 0, 1, 0] and m[[0, 1, 3]].tolist() == [5, 1 << 18, (1 << 18) + 1]
    assert p2m.max_mapped_pfn == MAX_GFN
    assert p2m.types.nbytes + p2m.mfns.nbytes <= 4 * CHUNK * 5 + 2 * 4 * (MAX_GFN >> 18) + 8


def test_type_counts_and_global_type_change():
    p2m = P2M()
    p2m.set(np.arange(10), P2MType.ram_rw, np.arange(10))
    p2m.set(np.array([3, 4]), P2MType.populate_on_demand, INVALID_MFN)
    assert p2m.ram_count() == 8 and p2m.type_counts[P2MType.populate_on_demand] == 2
    p2m.change_type_global(P2MType.ram_rw, P2MType.ram_logdirty)
    assert (p2m.get_types(np.array([0, 3, 9])) == [2, 6, 2]).all()
    assert p2m.type_counts[P2MType.ram_logdirty] == 8 and p2m.type_counts[P2MType.ram_rw] == 0
    assert p2m.gfns_where(np.array([i == 2 for i in range(16)])).tolist() == [0, 1, 2, 5, 6, 7, 8, 9]


def test_max_mapped_pfn_never_lowers():
    p2m = P2M()
    p2m.set(np.array([100]), P2MType.ram_rw, 1)
    p2m.set(np.array([100]), P2MType.invalid, INVALID_MFN)
    assert p2m.max_mapped_pfn == 100


def test_m2p_defaults_invalid():
    m2p = M2P()
    m2p.set(np.array([7]), 42)
    assert m2p.get(np.array([7, 8, 1 << 31])).tolist() == [42, -1, -1]


def test_chunked_array_vectorised_roundtrip():
    a = ChunkedArray(np.uint64, 9)
    idx = np.random.default_rng(1).choice(1 << 22, 5000, replace=False)
    a.set(idx, idx.astype(np.uint64) * 3)
    assert (a.get(idx) == idx.astype(np.uint64) * 3).all()
    assert a.get(np.array([(1 << 30) + 1, 1 << 40]))[0] == 9


def test_frames_allocate_deterministically_and_fail_cleanly():
    f = HostFrames(10)
    a = f.alloc(4)
    assert a.tolist() == [0, 1, 2, 3]
    f.write(a, np.array([5, 6, 7, 8]))
    f.free(np.array([1, 2]))
    b = f.alloc(3)
    assert b.tolist() == [2, 1, 4]                       # most recently freed first
    assert f.read(b).tolist() == [0, 0, 0]               # scrubbed
    with pytest.raises(XenError) as e:
        f.alloc(f.free_frames + 1)
    assert e.value.errno == ENOMEM and f.free_frames == 10 - 5
