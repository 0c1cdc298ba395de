"""The log-dirty tree (hypervisor/logdirty.py): Xen's geometry, counters and CLEAN/PEEK."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hypervisor.abi import ENOMEM, XenError
from hypervisor.logdirty import LEAF_BITS, DirtyBitmap, LogDirtyTree


def levels(tree):
    c = tree.node_counts()
    return (c.l4, c.l3, c.l2, c.l1)


def test_geometry_index_bits_match_paging_h():
    tree = LogDirtyTree()
    tree.mark_dirty([0])
    assert levels(tree) == (1, 1, 1, 1)
    tree.mark_dirty([LEAF_BITS - 1])                 # bits 0-14: same leaf
    assert levels(tree) == (1, 1, 1, 1)
    tree.mark_dirty([1 << 15])                       # bit 15: next leaf, same L2 node
    assert levels(tree) == (1, 1, 1, 2)
    tree.mark_dirty([1 << 24])                       # bit 24: next L2 node, same L3 node
    assert levels(tree) == (1, 1, 2, 3)
    tree.mark_dirty([1 << 33])                       # bit 33: next L3 node
    assert levels(tree) == (1, 2, 3, 4)


def test_sparse_page_at_2_33_plus_5_allocates_one_path():
    tree = LogDirtyTree()
    assert tree.mark_dirty(np.array([(1 << 33) + 5])) == 1
    assert levels(tree) == (1, 1, 1, 1) and tree.nodes == 4
    tree.mark_dirty(np.array([(1 << 40) - 1]))
    assert levels(tree) == (1, 2, 2, 2) and tree.nodes == 7
    bm, _ = tree.peek(1 << 41)
    assert bm.pfns().tolist() == [(1 << 33) + 5, (1 << 40) - 1]


def test_mark_clean_on_unallocated_leaf_changes_nothing():
    # 6.3: no node allocated, tree and dirty_count unchanged.
    tree = LogDirtyTree()
    assert tree.mark_clean(np.array([7, 1 << 30])) == 0
    assert tree.nodes == 0 and tree.dirty_count == 0
    tree.mark_dirty([7])
    assert tree.mark_clean(np.array([1 << 30, 1 << 15])) == 0
    assert tree.nodes == 4 and tree.dirty_count == 1


def test_clean_never_allocates_nodes():
    tree = LogDirtyTree()
    tree.mark_dirty([3])
    before = levels(tree)
    tree.mark_clean(np.arange(0, 1 << 26, 1 << 14))
    assert levels(tree) == before
    assert tree.nodes_peak == 4


def test_mark_dirty_then_clean_same_round_leaf_stays_and_clean_reports_zero():
    # 6.3: dirty_count +1 then -1; the leaf stays allocated; the next CLEAN returns 0.
    tree = LogDirtyTree()
    assert tree.mark_dirty([42]) == 1 and tree.dirty_count == 1
    assert tree.mark_clean([42]) == 1 and tree.dirty_count == 0
    assert tree.nodes == 4
    bm, stats = tree.clean(1000)
    assert stats.dirty_count == 0 and bm.count() == 0 and not bm.test([42])[0]


def test_dirty_count_moves_only_on_real_flips_with_duplicates():
    tree = LogDirtyTree()
    assert tree.mark_dirty(np.array([5, 5, 5, 9])) == 2
    assert tree.mark_dirty(np.array([5, 9])) == 0
    assert tree.dirty_count == 2
    assert tree.mark_clean(np.array([5, 5, 11])) == 1
    assert tree.mark_clean(np.array([5])) == 0
    assert tree.dirty_count == 1
    # dense path with many repeats (1e5 PFNs into one leaf)
    rng = np.random.default_rng(0)
    p = rng.integers(0, 4096, 100_000)
    t2 = LogDirtyTree()
    assert t2.mark_dirty(p) == np.unique(p).size
    assert t2.mark_clean(p[::-1]) == np.unique(p).size and t2.dirty_count == 0


def test_clean_zeroes_counts_keeps_nodes_and_returns_stats_read_before_walk():
    tree = LogDirtyTree()
    tree.mark_dirty(np.array([1, 2, 70000]))
    tree.fault_count = 3
    bm, stats = tree.clean(1 << 17)
    assert (stats.dirty_count, stats.fault_count) == (3, 3)
    assert bm.pfns().tolist() == [1, 2, 70000]
    assert tree.dirty_count == 0 and tree.fault_count == 0
    assert levels(tree) == (1, 1, 1, 2)                  # CLEAN frees no node
    bm2, stats2 = tree.clean(1 << 17)
    assert stats2.dirty_count == 0 and bm2.count() == 0


def test_peek_changes_nothing():
    tree = LogDirtyTree()
    tree.mark_dirty(np.array([10, 20]))
    a, s1 = tree.peek(100)
    b, s2 = tree.peek(100)
    assert a == b and s1 == s2 and tree.dirty_count == 2


def test_bitmap_zeros_where_tree_empty_and_lsb_first_bytes():
    tree = LogDirtyTree()
    tree.mark_dirty(np.array([0, 9, LEAF_BITS * 2 + 3]))
    bm, _ = tree.peek(LEAF_BITS * 3)
    raw = bm.to_bytes()
    assert len(raw) == LEAF_BITS * 3 // 8
    assert raw[0] == 0b1 and raw[1] == 0b10            # bit 9 = byte 1, bit 1
    assert raw[LEAF_BITS // 8: LEAF_BITS * 2 // 8] == bytes(LEAF_BITS // 8)   # absent leaf: zeros
    assert raw[LEAF_BITS * 2 // 8] == 0b1000
    assert DirtyBitmap.from_pfns(LEAF_BITS * 3, [0, 9, LEAF_BITS * 2 + 3]) == bm
    empty, _ = LogDirtyTree().peek(77)
    assert empty.to_bytes() == bytes(10) and empty.pfns().size == 0


def test_gfn_above_pages_counted_but_invisible_in_bitmap():
    # 6.3: counted in dirty_count, but the copy is bounded by pages = p2m_size.
    tree = LogDirtyTree()
    tree.mark_dirty(np.array([5, 100, 1 << 20]))
    bm, stats = tree.clean(100)
    assert stats.dirty_count == 3
    assert bm.pfns().tolist() == [5] and bm.count() == 1 and len(bm.to_bytes()) == 13
    # The walked leaf is cleared whole (clear_page), the leaf past pages keeps its bit.
    assert tree.is_dirty([100, 1 << 20]).tolist() == [False, True]
    assert tree.dirty_count == 0
    assert tree.mark_dirty([1 << 20]) == 0               # no flip: bit still set


def test_pool_exhaustion_counts_failed_allocs_and_clean_fails_enomem():
    tree = LogDirtyTree(pool_pages=5)
    assert tree.mark_dirty([1]) == 1                     # top, L3, L2, leaf: 4 pages
    # a PFN in another L2 node needs L2 + leaf: the L2 node fits, the leaf does not
    got = tree.mark_dirty(np.array([1 << 24, (1 << 24) + 1, 2, 1 << 24]))
    assert got == 1                                      # only PFN 2 (existing leaf)
    assert tree.failed_allocs == 3                       # one per failing mark
    assert tree.nodes == 5 and levels(tree) == (1, 1, 2, 1)
    with pytest.raises(XenError) as e:
        tree.clean(1 << 25)
    assert e.value.errno == ENOMEM
    with pytest.raises(XenError):
        tree.peek(10)
    assert tree.dirty_count == 2 and tree.is_dirty([1, 2]).all()   # nothing cleared
    tree.free()                                          # OFF resets failed_allocs
    assert tree.failed_allocs == 0 and tree.nodes == 0
    tree.clean(10)


def test_pool_exhaustion_allocates_in_pfn_order():
    tree = LogDirtyTree(pool_pages=5)
    # 4 pages for the first path, one more leaf fits: the first-seen new leaf wins
    tree.mark_dirty(np.array([3 << 15, 1 << 15, 0, 3 << 15]))
    keys = tree.leaf_keys().tolist()
    assert keys == [1, 3]
    assert tree.failed_allocs == 1                       # PFN 0's leaf did not fit


def test_off_frees_tree_but_keeps_dirty_count():
    tree = LogDirtyTree()
    tree.mark_dirty(np.array([1, 1 << 33]))
    tree.free()
    assert tree.nodes == 0 and tree.dirty_count == 2     # only a completed CLEAN zeroes it
    assert tree.peek(10)[0].count() == 0
    assert tree.nodes_peak == 7


def test_stats_saturate_at_uint32_max():
    tree = LogDirtyTree()
    tree.dirty_count = 1 << 33
    assert tree.stats().dirty_count == 0xFFFFFFFF


def test_pages_beyond_tree_are_lowered_to_2_42():
    tree = LogDirtyTree()
    bm, _ = tree.peek(1 << 43, want_bitmap=True)
    assert bm.pages == 1 << 42


def test_rejects_pfns_outside_tree():
    with pytest.raises(ValueError):
        LogDirtyTree().mark_dirty([-1])


pfn_space = st.one_of(st.integers(0, 3 * LEAF_BITS), st.sampled_from([(1 << 24) + 7, (1 << 33) + 5]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["dirty", "clean", "CLEAN", "PEEK", "OFF"]),
                          st.lists(pfn_space, max_size=40), st.integers(0, 4 * LEAF_BITS)),
                max_size=12))
def test_tree_matches_set_model(steps):
    tree = LogDirtyTree()
    bits, leaves, count = set(), set(), 0
    for op, pfns, pages in steps:
        p = np.array(pfns, dtype=np.int64)
        if op == "dirty":
            new = set(pfns) - bits
            assert tree.mark_dirty(p) == len(new)
            bits |= set(pfns)
            leaves |= {x >> 15 for x in pfns}
            count += len(new)
        elif op == "clean":
            gone = set(pfns) & bits
            assert tree.mark_clean(p) == len(gone)
            bits -= gone
            count -= len(gone)
        elif op in ("CLEAN", "PEEK"):
            bm, stats = (tree.clean if op == "CLEAN" else tree.peek)(pages)
            assert stats.dirty_count == count
            assert bm.pfns().tolist() == sorted(b for b in bits if b < pages)
            if op == "CLEAN":
                bits = {b for b in bits if (b >> 15) << 15 >= pages}
                count = 0
        else:
            tree.free()
            bits, leaves = set(), set()
        assert tree.dirty_count == count
        assert levels(tree) == ((1 if leaves else 0), len({k >> 18 for k in leaves}),
                                len({k >> 9 for k in leaves}), len(leaves))


@pytest.mark.parametrize("seed", range(4))
def test_dense_and_sparse_paths_agree_with_numpy_model(seed):
    # Dense calls (many PFNs per leaf) take the packed-OR path; leaves allocated out of
    # order make their slots non-contiguous.
    rng = np.random.default_rng(seed)
    span = 6 * LEAF_BITS
    tree = LogDirtyTree()
    ref = np.zeros(span, dtype=bool)
    count = 0
    tree.mark_dirty([5 * LEAF_BITS + 1, 2 * LEAF_BITS])       # slots 0, 1 for leaves 2, 5
    ref[[5 * LEAF_BITS + 1, 2 * LEAF_BITS]] = True
    count = 2
    for i in range(12):
        lo = int(rng.integers(0, span - LEAF_BITS))
        n = int(rng.choice([10, 5000, 60000]))
        p = rng.integers(lo, min(span, lo + int(rng.choice([LEAF_BITS, 3 * LEAF_BITS]))), n)
        if i % 3 == 2:
            flips = np.count_nonzero(ref[np.unique(p)])
            assert tree.mark_clean(p) == flips
            ref[p] = False
            count -= flips
        else:
            flips = np.count_nonzero(~ref[np.unique(p)])
            assert tree.mark_dirty(p) == flips
            ref[p] = True
            count += flips
        assert tree.dirty_count == count
        bm, _ = tree.peek(span)
        assert np.array_equal(bm.pfns(), np.flatnonzero(ref))
        assert tree.is_dirty(np.arange(0, span, 97)).tolist() == ref[::97].tolist()


def test_short_runs_like_balloon_ops_flip_the_bits_a_model_flips():
    # Runs of a few hundred PFNs (a balloon op's), ascending, descending, across a
    # leaf boundary and with a repeat, against a plain bool model.
    tree = LogDirtyTree()
    ref = np.zeros(4 * LEAF_BITS, dtype=bool)
    tree.mark_dirty(np.arange(0, 4 * LEAF_BITS, 3))
    ref[::3] = True
    edge = LEAF_BITS - 200
    for i, run in enumerate([np.arange(edge, edge + 512), np.arange(edge, edge + 512)[::-1],
                             np.arange(3 * LEAF_BITS - 512, 3 * LEAF_BITS)[::-1],
                             np.concatenate([np.arange(100, 611), [300]])]):
        for clean in (True, False, True) if i % 2 else (False, True, False):
            want = np.count_nonzero(ref[np.unique(run)] == clean)
            assert (tree.mark_clean(run) if clean else tree.mark_dirty(run)) == want
            ref[run] = not clean
            assert tree.is_dirty(np.arange(ref.size)).tolist() == ref.tolist()
    assert tree.dirty_count == np.count_nonzero(ref)
