"""The P2M/log-dirty fix (98fccdf0ac) at each call site, in both behaviours."""

import numpy as np
import pytest

from hypervisor.abi import P2MType, ShadowOp

from tests.hv_helpers import ScriptedGuest, a, clean, make_hv, peek  # noqa: F401


BOTH = pytest.mark.parametrize("behaviour", ["fixed", "pre-fix"])


def dirty(hv, pages=1 << 16):
    return peek(hv, pages).bitmap.pfns().tolist()


@BOTH
def test_remove_marks_clean_only_when_fixed(behaviour):
    hv = make_hv(behaviour)
    hv.guest_write(a(3, 4), a(11, 12))
    assert dirty(hv) == [3, 4] and hv.stats.dirty_count == 2
    res = hv.decrease_reservation(a(3))
    assert res.rc == 1
    if behaviour == "fixed":
        assert dirty(hv) == [4] and hv.stats.dirty_count == 1 and hv.stats.marks_clean == 1
    else:
        assert dirty(hv) == [3, 4] and hv.stats.dirty_count == 2 and hv.stats.marks_clean == 0
    assert hv.p2m_types(a(3))[0] == P2MType.invalid


@BOTH
def test_populate_marks_dirty_only_when_fixed(behaviour):
    hv = make_hv(behaviour)
    clean(hv)
    res = hv.populate_physmap(a(100, 101))
    assert res.rc == 2 and res.done.tolist() == [100, 101]
    assert dirty(hv) == ([100, 101] if behaviour == "fixed" else [])
    assert hv.stats.marks_dirty == (2 if behaviour == "fixed" else 0)


@BOTH
def test_prefix_new_entry_writes_unlogged_until_clean(behaviour):
    hv = make_hv(behaviour)
    clean(hv)
    hv.populate_physmap(a(200))
    assert hv.p2m_types(a(200))[0] == P2MType.ram_rw          # fresh entries are rw in both
    clean(hv)                                                 # fixed: reports 200; both re-protect
    hv.populate_physmap(a(201))
    hv.guest_write(a(201), a(7))
    bm = clean(hv).bitmap.pfns().tolist()
    assert bm == ([201] if behaviour == "fixed" else [])      # pre-fix: write went unlogged
    hv.guest_write(a(201), a(8))                              # after CLEAN: logged in both
    assert clean(hv).bitmap.pfns().tolist() == [201]


@BOTH
def test_add_to_physmap_cleans_source_and_dirties_destination_only_when_fixed(behaviour):
    hv = make_hv(behaviour)
    hv.guest_write(a(5), a(55))
    clean(hv)
    hv.guest_write(a(5), a(56))                               # 5 dirty this round
    res = hv.add_to_physmap(5, 300)                           # 300 was a hole
    assert res.rc == 0
    assert hv.read_pages(a(300))[0].tolist() == [56]
    assert hv.p2m_types(a(5, 300)).tolist() == [P2MType.invalid, P2MType.ram_rw]
    assert dirty(hv) == ([300] if behaviour == "fixed" else [5])


@BOTH
def test_add_to_physmap_old_destination_cleaned_only_when_fixed(behaviour):
    hv = make_hv(behaviour)
    free0 = hv.stats.host_free_frames
    hv.guest_write(a(6, 7), a(1, 2))                          # both dirty
    res = hv.add_to_physmap(6, 7)                             # 7's own frame goes back to the host
    assert res.rc == 0 and hv.stats.host_free_frames == free0 + 1
    assert hv.read_pages(a(7))[0].tolist() == [1]
    # fixed: 6 cleaned, 7 cleaned then re-dirtied by the add; pre-fix: both stay dirty
    assert dirty(hv) == ([7] if behaviour == "fixed" else [6, 7])
    assert hv.stats.marks_clean == (2 if behaviour == "fixed" else 0)


@BOTH
def test_set_typed_p2m_entry_over_ram_orphans_the_frame_and_cleans_only_when_fixed(behaviour):
    """p2m.c's set_typed_p2m_entry over RAM drops the old frame's M2P entry but does not
    free it: the frame stays the domain's, like remove_from_physmap's."""
    hv = make_hv(behaviour)
    free0 = hv.stats.host_free_frames
    hv.guest_write(a(9), a(1))
    res = hv.set_typed_p2m_entry(9, P2MType.mmio_direct)
    assert res.rc == 0 and hv.p2m_types(a(9))[0] == P2MType.mmio_direct
    assert hv.stats.host_free_frames == free0 and hv.stats.orphaned_frames == 1
    assert dirty(hv) == ([] if behaviour == "fixed" else [9])
    assert hv.getpageframeinfo3(hv.now, a(9))[0] >> 28 == 0xF


@BOTH
def test_remove_from_physmap_cleans_only_when_fixed(behaviour):
    hv = make_hv(behaviour)
    hv.guest_write(a(10), a(1))
    assert hv.remove_from_physmap(10).rc == 0
    assert dirty(hv) == ([] if behaviour == "fixed" else [10])
    assert hv.stats.orphaned_frames == 1                      # the page stays the domain's


@BOTH
def test_pod_cache_steal_cleans_only_when_fixed(behaviour):
    hv = make_hv(behaviour, ram=range(0, 8), pod_gfns=np.arange(100, 110), pod_cache_pages=2)
    hv.guest_write(a(1, 2, 3), a(1, 2, 3))
    # 10 PoD entries, 2 cache pages: RAM handed back is stolen into the cache
    res = hv.decrease_reservation(a(1, 2))
    assert res.rc == 2
    s = hv.stats
    assert s.pod_cache_pages == 4 and s.pod_entries == 10
    assert dirty(hv) == ([3] if behaviour == "fixed" else [1, 2, 3])


@BOTH
def test_pod_demand_populate_marks_dirty_in_both(behaviour):
    hv = make_hv(behaviour, ram=range(0, 8), pod_gfns=np.arange(100, 110), pod_cache_pages=5)
    clean(hv)
    hv.guest_write(a(101), a(9))                              # first touch of a PoD entry
    info = hv.getpageframeinfo3(hv.now, a(102, 103))          # P2M_ALLOC populates too
    assert (info >> 28).tolist() == [0, 0]
    assert dirty(hv) == [101, 102, 103]
    s = hv.stats
    assert s.pod_entries == 7 and s.pod_cache_pages == 2
    assert hv.read_pages(a(101, 102))[0].tolist() == [9, 0]
    kinds = [e.kind for e in hv.drain_events()]
    assert kinds.count("pod_populate") == 2


@BOTH
def test_marking_only_while_log_dirty_enabled(behaviour):
    hv = make_hv(behaviour, enable=False)
    hv.guest_write(a(1), a(1))
    hv.populate_physmap(a(500))
    hv.decrease_reservation(a(2))
    s = hv.stats
    assert s.marks_dirty == 0 and s.marks_clean == 0 and s.logdirty_nodes == 0


def test_removed_then_readded_gfn_is_dirty_again_when_fixed():
    # 6.1: dirty_count counts only still-mapped GFNs, except remove + re-add re-marks.
    hv = make_hv("fixed")
    hv.guest_write(a(4), a(1))
    hv.decrease_reservation(a(4))
    assert hv.stats.dirty_count == 0
    hv.populate_physmap(a(4))
    assert dirty(hv) == [4] and hv.stats.dirty_count == 1
    assert hv.read_pages(a(4))[0].tolist() == [0]             # a new, scrubbed page


def test_behaviours_differ_only_in_marking():
    def script(hv):
        hv.guest_write(a(1, 2, 3), a(1, 2, 3))
        hv.decrease_reservation(a(2))
        hv.populate_physmap(a(70, 2))
        hv.add_to_physmap(3, 71)
        hv.guest_write(a(70, 71, 2), a(4, 5, 6))
        clean(hv)
        return hv.snapshot(), hv.p2m_types(np.arange(80)), hv.stats.host_free_frames

    (g1, t1), ty1, f1 = script(make_hv("fixed"))
    (g2, t2), ty2, f2 = script(make_hv("pre-fix"))
    assert g1.tolist() == g2.tolist() and t1.tolist() == t2.tolist()
    assert ty1.tolist() == ty2.tolist() and f1 == f2


def test_off_turns_logdirty_back_to_rw_and_frees_tree():
    hv = make_hv("fixed")
    hv.guest_write(a(1), a(1))
    assert hv.stats.logdirty_nodes == 4
    hv.shadow_op(1.0, ShadowOp.OFF)
    s = hv.stats
    assert s.logdirty_nodes == 0 and not s.log_dirty_enabled and s.dirty_count == 1
    assert set(hv.p2m_types(np.arange(64)).tolist()) == {P2MType.ram_rw}
