"""Typed entries over RAM (set_typed_p2m_entry through XEN_DOMCTL_memory_mapping and
acquire_resource) and the PoD half of decrease_reservation, against p2m.c / p2m-pod.c."""

import numpy as np
import pytest

from hypervisor.abi import (EINVAL, ENOENT, EPERM, INVALID_M2P_ENTRY, ForeignMapping, MemoryMapping, P2MType,
                            all_done)

from tests.hv_helpers import a, clean, make_hv, peek

BOTH = pytest.mark.parametrize("behaviour", ["fixed", "pre-fix"])


def dirty(hv):
    return peek(hv).bitmap.pfns().tolist()


def pfinfo(hv, gfns):
    return (hv.getpageframeinfo3(hv.now, gfns) >> 28).tolist()


@BOTH
def test_an_mmio_bar_over_ram_turns_its_gfns_into_xtab_and_cleans_them_only_when_fixed(behaviour):
    hv = make_hv(behaviour)
    hv.guest_write(a(8, 9, 12), a(1, 2, 3))
    frames = hv.p2m_mfns(a(8, 9, 10, 11)).astype(np.int64)
    free0 = hv.stats.host_free_frames
    res = hv.memory_mapping(8, 4, True)
    assert res.rc == 0 and res.done.tolist() == [8, 9, 10, 11]
    assert set(hv.p2m_types(a(8, 9, 10, 11)).tolist()) == {P2MType.mmio_direct}
    assert pfinfo(hv, a(8, 11, 12)) == [0xF, 0xF, 0]          # the saver sees XTAB
    # The RAM frames lose their M2P entries but stay the domain's (not freed).
    assert (hv.m2p.get(frames) == INVALID_M2P_ENTRY).all()
    assert hv.stats.host_free_frames == free0 and hv.stats.orphaned_frames == 4
    assert dirty(hv) == ([12] if behaviour == "fixed" else [8, 9, 12])
    assert hv.stats.marks_clean == (2 if behaviour == "fixed" else 0)


@BOTH
def test_unmapping_the_bar_leaves_a_hole_and_marks_nothing(behaviour):
    hv = make_hv(behaviour)
    hv.memory_mapping(8, 4, True)
    clean(hv)
    marks = (hv.stats.marks_clean, hv.stats.marks_dirty)
    res = hv.memory_mapping(8, 4, False)
    assert res.rc == 0 and set(hv.p2m_types(a(8, 9, 10, 11)).tolist()) == {P2MType.invalid}
    assert (hv.stats.marks_clean, hv.stats.marks_dirty) == marks and dirty(hv) == []


def test_unmapping_stops_at_the_first_gfn_that_is_not_mmio():
    hv = make_hv()
    hv.memory_mapping(8, 2, True)
    res = hv.memory_mapping(8, 4, False)                       # GFN 10 is RAM
    assert (res.rc, res.errno, res.done.tolist()) == (-EINVAL, EINVAL, [8, 9])
    assert hv.p2m_types(a(10))[0] == P2MType.ram_logdirty


def test_a_bar_over_another_special_entry_is_refused_there_and_an_identical_one_is_not():
    hv = make_hv()
    assert hv.foreign_mapping(10, 1, True).rc == 0
    res = hv.memory_mapping(8, 4, True)
    assert (res.rc, res.done.tolist()) == (-EPERM, [8, 9])
    assert hv.memory_mapping(8, 2, True).rc == 0              # the same mapping again


def test_a_range_past_the_gfn_space_is_einval():
    hv = make_hv()
    assert hv.memory_mapping(-1, 4, True).rc == -EINVAL
    assert hv.foreign_mapping(0, 0, True).rc == -EINVAL


@BOTH
def test_a_foreign_frame_over_ram_is_xtab_and_its_removal_marks_nothing(behaviour):
    hv = make_hv(behaviour)
    hv.guest_write(a(20, 21), a(5, 6))
    assert hv.foreign_mapping(20, 2, True).rc == 0
    assert hv.p2m_types(a(20, 21)).tolist() == [P2MType.map_foreign] * 2
    assert pfinfo(hv, a(20, 21)) == [0xF, 0xF]
    assert dirty(hv) == ([] if behaviour == "fixed" else [20, 21])
    clean(hv)
    res = hv.foreign_mapping(20, 3, False)                     # GFN 22 is RAM, not foreign
    assert (res.rc, res.done.tolist()) == (-ENOENT, [20, 21])
    assert hv.p2m_types(a(20, 21)).tolist() == [P2MType.invalid] * 2 and dirty(hv) == []


def test_mapping_over_pod_entries_drops_them_from_entry_count():
    hv = make_hv(ram=range(0, 8), pod_gfns=np.arange(100, 110), pod_cache_pages=10)
    assert hv.memory_mapping(100, 4, True).rc == 0
    assert hv.stats.pod_entries == 6


def test_the_events_name_the_xen_functions():
    hv = make_hv()
    hv.drain_events()
    hv.memory_mapping(8, 2, True)
    hv.memory_mapping(8, 2, False)
    hv.foreign_mapping(30, 1, True)
    hv.foreign_mapping(30, 1, False)
    kinds = [e.kind for e in hv.drain_events() if hasattr(e, "kind") and hasattr(e, "gfns")]
    assert kinds == ["map_mmio_regions", "unmap_mmio_regions", "acquire_resource", "remove_from_physmap"]


def test_the_guest_expects_every_gfn_mapped():
    res = all_done(MemoryMapping(1.0, 8, 3, True))
    assert (res.rc, res.done.tolist()) == (0, [8, 9, 10])
    assert all_done(ForeignMapping(1.0, 8, 1, False)).done.tolist() == [8]


# ------------------------------------------------------------------ p2m-pod.c

@BOTH
def test_a_short_cache_steals_ram_from_a_range_without_pod_entries(behaviour):
    """steal_for_cache is entry_count > count, whatever the range holds: RAM handed
    back is stolen (invalid in the P2M, into the cache) until the cache catches up,
    then freed through p2m_remove_page."""
    hv = make_hv(behaviour, ram=range(0, 8), pod_gfns=np.arange(100, 110), pod_cache_pages=7)
    hv.guest_write(a(1, 2, 3, 4), a(1, 2, 3, 4))
    free0 = hv.stats.host_free_frames
    hv.drain_events()
    res = hv.decrease_reservation(a(1, 2, 3, 4, 5))           # deficit 10 - 7 = 3
    assert res.rc == 5
    s = hv.stats
    assert s.pod_cache_pages == 10 and s.pod_entries == 10
    assert s.host_free_frames == free0 + 2                     # 4 and 5 go back to the host
    assert set(hv.p2m_types(a(1, 2, 3, 4, 5)).tolist()) == {P2MType.invalid}
    (ev,) = [e for e in hv.drain_events() if getattr(e, "kind", None) == "decrease_reservation"]
    by_site = {s.site: s.gfns.tolist() for s in ev.sites}
    assert by_site == {"pod_decrease_reservation": [1, 2, 3], "p2m_remove_page": [4, 5]}
    assert dirty(hv) == ([] if behaviour == "fixed" else [1, 2, 3, 4])


def test_dropping_pod_entries_below_the_cache_trims_the_cache_to_them():
    """out_entry_check: entry_count < count -> p2m_pod_set_cache_target(entry_count),
    the spare cache frames going back to the host."""
    hv = make_hv(ram=range(0, 8), pod_gfns=np.arange(100, 110), pod_cache_pages=10)
    free0 = hv.stats.host_free_frames
    assert hv.decrease_reservation(a(100, 101, 102)).rc == 3
    s = hv.stats
    assert s.pod_entries == 7 and s.pod_cache_pages == 7 and s.host_free_frames == free0 + 3
    assert hv.decrease_reservation(a(3)).rc == 1              # no PoD, no steal: no trim
    assert hv.stats.pod_cache_pages == 7


def test_no_outstanding_pod_entries_means_no_stealing():
    hv = make_hv(ram=range(0, 8))
    hv.guest_write(a(1), a(1))
    hv.drain_events()
    hv.decrease_reservation(a(1))
    (ev,) = [e for e in hv.drain_events() if getattr(e, "kind", None) == "decrease_reservation"]
    assert [s.site for s in ev.sites] == ["p2m_remove_page"]
