"""P2M, M2P and the host frame allocator (hypervisor/p2m.py, frames.py)."""

import numpy as np
import pytest

from hypervisor.abi import ENOMEM, INVALID_MFN, MAX_GFN, P2MType, XenError
from hypervisor.frames import HostFrames
from hypervisor.chunked import ChunkedArray
from hypervisor.p2m import M2P, P2M
from hypervisor.runs import CHUNK


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
    # one entry at a time (a write fault): the type changes, the MFN stays
    p2m.change_type(np.array([1, 8]), P2MType.ram_logdirty, P2MType.ram_rw)
    assert p2m.get(np.array([1, 2, 8]))[0].tolist() == [P2MType.ram_rw, P2MType.ram_logdirty, P2MType.ram_rw]
    assert p2m.get(np.array([1, 8]))[1].tolist() == [1, 8]
    assert p2m.type_counts[P2MType.ram_logdirty] == 6 and p2m.type_counts[P2MType.ram_rw] == 2


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


def test_m2p_holds_every_gfn_in_4_bytes_with_a_high_part_only_beyond_2_32():
    from hypervisor.abi import MAX_GFN
    from hypervisor.p2m import M2P_LOW_MAX, M2P

    m2p = M2P()
    m2p.set(np.arange(4), np.array([0, M2P_LOW_MAX, 3, 5]))
    assert m2p.high.nrows == 0                      # nothing beyond 2^32 - 2: no high part
    assert m2p.nbytes < 2 * (1 << 18) * 4           # one chunk of uint32 (+ directory)
    big = [M2P_LOW_MAX + 1, 1 << 32, MAX_GFN]
    m2p.set(np.array([10, 11, 12]), np.array(big))
    m2p.set(np.array([13]), -1)
    assert m2p.get(np.arange(14)).tolist() == [0, M2P_LOW_MAX, 3, 5] + [-1] * 6 + big + [-1]
    # Overwriting a high entry with a small GFN or invalid drops its high part.
    m2p.set(np.array([10, 11]), np.array([7, -1]))
    m2p.set(np.array([12]), 9)
    assert m2p.get(np.array([10, 11, 12])).tolist() == [7, -1, 9]
    m2p.set(np.array([12]), MAX_GFN)
    assert m2p.get(np.array([12])).tolist() == [MAX_GFN]
    for bad in (MAX_GFN + 1, -2):
        with pytest.raises(ValueError, match="M2P"):
            m2p.set(np.array([1]), bad)
        with pytest.raises(ValueError, match="M2P"):
            m2p.set(np.array([1, 2]), np.array([0, bad]))


def test_restorer_populated_set_is_one_bit_per_pfn():
    from migrate.toolstack.pfnset import PfnSet

    s = PfnSet()
    a = np.array([0, 1, 7, 8, 32767, 32768, 1 << 39], dtype=np.int64)
    s.add(a)
    s.add(np.array([5, 6], dtype=np.int64))
    assert s.count == 9
    assert s.contains(np.array([0, 2, 5, 6, 7, 9, 32767, 32768, 32769, 1 << 39])).tolist() == \
        [True, False, True, True, True, False, True, True, False, True]
    assert s.to_array().tolist() == sorted(a.tolist() + [5, 6])
    assert sum(leaf.nbytes for leaf in s._leaves.values()) == 3 * 4096


def test_linear_chunked_array_matches_a_plain_array_and_stays_compact_for_runs():
    from hypervisor.linear_chunked import LinearChunkedArray

    size = 3 * CHUNK
    a = LinearChunkedArray(np.uint32, INVALID_MFN)
    ref = np.full(size, INVALID_MFN, dtype=np.uint32)

    def put(idx, vals):
        idx = np.asarray(idx, dtype=np.int64)
        a.set(idx, vals)
        ref[idx] = vals

    # A builder's run over two chunks, in slices, then shrunk from the top (a balloon)
    # and grown back with the same frames: still runs, no rows.
    for lo in range(1000, 1000 + CHUNK + 5000, 4096):
        hi = min(lo + 4096, 1000 + CHUNK + 5000)
        put(np.arange(lo, hi), np.arange(lo, hi) + 77)
    put(np.arange(CHUNK + 5000, CHUNK + 6000)[::-1], INVALID_MFN)
    put(np.arange(1000, 1010), INVALID_MFN)
    put(np.arange(CHUNK + 5500, CHUNK + 6000), np.arange(CHUNK + 5500, CHUNK + 6000) + 77)  # a gap: row
    assert a.nrows == 1 and a.nruns == 2
    # A restore's steps in the third chunk: grown upwards, then downwards, still one run;
    # a step leaving a gap turns the chunk into a row.
    c2 = 2 * CHUNK
    for lo, hi in ((c2 + 100, c2 + 1124), (c2 + 1124, c2 + 2148), (c2 + 50, c2 + 100)):
        put(np.arange(lo, hi), np.arange(lo, hi) + 9)
    assert a.nrows == 1 and a.nruns == 3
    put(np.arange(c2 + 3000, c2 + 3010), np.arange(c2 + 3000, c2 + 3010) + 9)
    assert a.nrows == 2
    idx = np.arange(size)
    assert (a.get(idx) == ref).all() and (a.get(idx[::-1]) == ref[::-1]).all()
    # Random scattered sets, some rewriting the run's own values, some breaking it.
    rng = np.random.default_rng(7)
    for _ in range(40):
        i = rng.choice(size, 300, replace=False)
        kind = rng.integers(3)
        v = (i + 77) if kind == 0 else (np.full(i.size, INVALID_MFN) if kind == 1 else rng.integers(0, 1 << 31, i.size))
        put(i, v.astype(np.uint32))
        probe = rng.choice(size, 2000, replace=False)
        assert (a.get(probe) == ref[probe]).all()
    assert (a.get(idx) == ref).all()
    assert (a.get(np.array([5 * CHUNK, 1 << 39])) == INVALID_MFN).all()


def test_built_domain_holds_mfns_and_m2p_as_runs():
    from tests.hv_helpers import make_hv

    hv = make_hv(ram=range(0, 3 * CHUNK + 100), host_frames=4 * CHUNK, enable=False)
    assert hv.p2m.mfns.nrows == 0 and hv.m2p.low.nrows == 0
    g = np.arange(0, 3 * CHUNK + 100)
    m = hv.p2m.mfns.get(g).astype(np.int64)
    assert (hv.m2p.get(m) == g).all() and (hv.p2m.mfns.get(g[::7]) == m[::7]).all()
    assert hv.p2m.mfns.nbytes + hv.m2p.nbytes < 1024


def test_restorer_populated_set_answers_alike_in_any_order():
    from migrate.toolstack.pfnset import PfnSet

    rng = np.random.default_rng(5)
    pfns = np.unique(rng.integers(0, 1 << 17, 3000))
    s = PfnSet()
    s.add(rng.permutation(pfns[::2]))                     # unsorted, across leaves
    s.add(pfns[1::2][:100])                               # ascending, across leaves
    s.add(np.arange(40000, 40010, dtype=np.int64)[np.isin(np.arange(40000, 40010), pfns, invert=True)])
    want = set(pfns[::2].tolist()) | set(pfns[1::2][:100].tolist()) | \
        (set(range(40000, 40010)) - set(pfns.tolist()))
    q = rng.integers(0, 1 << 17, 5000)
    for query in (q, np.sort(q), np.sort(q)[::-1].copy(), np.arange(39990, 40020, dtype=np.int64)):
        assert s.contains(query).tolist() == [int(x) in want for x in query.tolist()]
    assert s.to_array().tolist() == sorted(want)
    assert s.count == len(want)


def test_linear_chunked_array_long_runs_stay_runs_only_when_they_join():
    from hypervisor.linear_chunked import LinearChunkedArray

    size = 4 * CHUNK
    a = LinearChunkedArray(np.uint32, INVALID_MFN)
    ref = np.full(size, INVALID_MFN, dtype=np.uint32)

    def put(lo, hi, base):
        idx = np.arange(lo, hi, dtype=np.int64)
        vals = idx + base if np.ndim(base) == 0 else base
        a.set(idx, vals)
        ref[idx] = vals

    put(100, CHUNK + 9000, 5)                   # a new run over two chunks
    put(CHUNK + 9000, CHUNK + 20000, 5)         # grown at its end
    put(CHUNK + 15000, CHUNK + 30000, 5)        # overlapping, same base: joined
    put(50, 6000, 5)                            # overlapping its start
    assert a.nrows == 0 and a.nruns == 2
    put(CHUNK + 40000, CHUNK + 50000, 5)        # same base, a gap: the chunk gets a row
    put(2 * CHUNK + 10, 2 * CHUNK + 6000, 1)
    put(2 * CHUNK + 6000, 2 * CHUNK + 12000, 2)  # another base: a row
    assert a.nrows == 2
    put(3 * CHUNK, 3 * CHUNK + 8000, int(INVALID_MFN) - (3 * CHUNK + 7999))  # a run ending in the default
    put(3 * CHUNK + 9000, 3 * CHUNK + 9000 + 5000, np.arange(5000, dtype=np.uint32)[::-1])
    a.set(np.arange(20, 30, dtype=np.int64), INVALID_MFN)  # cleared in the middle: a row
    ref[20:30] = INVALID_MFN
    idx = np.arange(size, dtype=np.int64)
    assert (a.get(idx) == ref).all()
    assert (a.get(idx[::-3]) == ref[::-3]).all()


def test_increasing_sets_and_gets_across_chunks_match_a_plain_array():
    # The builder's slice over a hole and the restorer's groups: large strictly
    # increasing index arrays spanning chunks, with gaps, are set and read a chunk's
    # part at a time; the result is what a plain array holds, and a chunk whose part
    # is one run with one base stays a run.
    from hypervisor.linear_chunked import LinearChunkedArray

    size = 4 * CHUNK
    lin = LinearChunkedArray(np.uint32, INVALID_MFN)
    types = ChunkedArray(np.uint8, P2MType.invalid)
    ref_l = np.full(size, INVALID_MFN, dtype=np.int64)
    ref_t = np.full(size, P2MType.invalid, dtype=np.int64)
    rng = np.random.default_rng(11)
    # A VGA-like hole in chunk 0, then a run across chunks 0..2 (chunks 1 and 2 stay runs).
    g = np.concatenate([np.arange(160), np.arange(256, 2 * CHUNK + 5000)])
    m = np.arange(g.size, dtype=np.int64)
    lin.set(g, m)
    types.set(g, np.uint8(P2MType.ram_rw))
    ref_l[g], ref_t[g] = m, P2MType.ram_rw
    assert lin.nrows == 1 and lin.nruns == 2
    for _ in range(30):
        lo = int(rng.integers(0, size - 10000))
        idx = np.arange(lo, min(size, lo + int(rng.integers(5000, 2 * CHUNK))))
        idx = idx[rng.random(idx.size) < rng.choice([0.5, 0.97, 1.0])]
        kind = rng.integers(3)
        v = idx + 3 if kind == 0 else (rng.integers(0, 1 << 31, idx.size) if kind == 1
                                       else np.where(rng.random(idx.size) < 0.5, INVALID_MFN, idx + 3))
        lin.set(idx, v)
        t = rng.integers(0, 16, idx.size).astype(np.uint8)
        types.set(idx, t)
        ref_l[idx], ref_t[idx] = v, t
        probe = np.flatnonzero(rng.random(size) < 0.05)
        assert (lin.get(probe) == ref_l[probe]).all() and (types.get(probe) == ref_t[probe]).all()
    every = np.arange(size)
    assert (lin.get(every) == ref_l).all() and (types.get(every) == ref_t).all()


def test_decreasing_sets_match_a_plain_array_and_keep_runs():
    # The balloon hands GFNs back highest first: a large strictly decreasing set goes
    # in reverse (same entries), so an unmap from the top of a run keeps the run.
    from hypervisor.linear_chunked import LinearChunkedArray

    size = 3 * CHUNK
    lin = LinearChunkedArray(np.uint32, INVALID_MFN)
    types = ChunkedArray(np.uint8, P2MType.invalid)
    g = np.arange(size, dtype=np.int64)
    lin.set(g, g + 7)
    types.set(g, np.uint8(P2MType.ram_rw))
    ref_l, ref_t = g + 7, np.full(size, P2MType.ram_rw, dtype=np.int64)
    top = np.arange(size - 1, size - CHUNK // 2 - 1, -1, dtype=np.int64)   # the top half chunk, highest first
    lin.set(top, INVALID_MFN)
    types.set(top, np.uint8(P2MType.invalid))
    ref_l[top], ref_t[top] = INVALID_MFN, P2MType.invalid
    assert lin.nrows == 0                       # still runs: the top of the last one went
    rng = np.random.default_rng(5)
    for _ in range(10):
        hi = int(rng.integers(10000, size))
        idx = np.arange(hi, hi - int(rng.integers(5000, hi)), -1, dtype=np.int64)
        idx = idx[rng.random(idx.size) < rng.choice([0.6, 1.0])]
        v = rng.integers(0, 1 << 31, idx.size)
        t = rng.integers(0, 16, idx.size).astype(np.uint8)
        lin.set(idx, v)
        types.set(idx, t)
        ref_l[idx], ref_t[idx] = v, t
    every = np.arange(size)
    assert (lin.get(every) == ref_l).all() and (types.get(every) == ref_t).all()


def test_ever_set_runs_are_whole_blocks_that_outlive_a_removal():
    """A saver may walk in bulk only where no entry was ever set: a removed GFN keeps its
    1024-GFN block marked (the guest may populate it again), never-touched blocks do not."""
    p = P2M()
    p.set_run(0, 0x20, P2MType.ram_rw, 100)                       # block 0
    p.set(np.array([0xFEFF0, 0xFEFFF]), P2MType.ram_rw, np.array([7, 8]))   # block 0x3fb
    p.set(np.array([0x5000]), P2MType.ram_rw, np.array([9]))       # block 0x14 ...
    p.set(np.array([0x5000]), P2MType.invalid, np.array([INVALID_MFN]))  # ... then removed
    assert p.ever_set_runs(0, 0xFF000).tolist() == [[0, 0x400], [0x5000, 0x5400], [0xFEC00, 0xFF000]]
    assert p.ever_set_runs(0x10, 0x5100).tolist() == [[0x10, 0x400], [0x5000, 0x5100]]
    assert p.ever_set_runs(0x400, 0x5000).size == 0
