"""``hypervisor/marks.py`` is the one home of seed patch 98fccdf0ac's marks: every call
site's mark, on the per-call paths and the run paths alike, is made there, and a run
served at once leaves the bitmap, the counters and the effects the calls served one by
one leave, in both behaviours and with the sites switched one at a time."""

import pathlib
import re

import numpy as np
import pytest

import hypervisor
from hypervisor import marks
from hypervisor.abi import FIX_SITES, FixSite, MemoryOpServed, P2MType

from tests.hv_helpers import a, clean, make_hv
from tests.hv_helpers import plain as _plain

BOTH = pytest.mark.parametrize("behaviour", ["fixed", "pre-fix"])


@pytest.fixture
def sites_seen(monkeypatch):
    """Every (site, change, number of GFNs) marks.remove / marks.add is asked for."""
    seen = []
    real_remove, real_add = marks.remove, marks.add

    def remove(d, gfns, site):
        seen.append((str(site), "remove", int(gfns.size)))
        return real_remove(d, gfns, site)

    def add(d, gfns, site=FixSite.GUEST_PHYSMAP_ADD_ENTRY):
        seen.append((str(site), "add", int(gfns.size)))
        return real_add(d, gfns, site)

    monkeypatch.setattr(marks, "remove", remove)
    monkeypatch.setattr(marks, "add", add)
    return seen




def _bits(hv, pages=1 << 12):
    return hv.logdirty.is_dirty(np.arange(pages, dtype=np.int64)).tolist()


def test_no_module_but_marks_flips_a_bit_for_a_p2m_change():
    """Outside logdirty.py (the tree) and marks.py, no hypervisor module calls the tree's
    mark_clean / mark_dirty: the sites' marks have one home."""
    root = pathlib.Path(hypervisor.__file__).parent
    callers = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py")
                     if re.search(r"logdirty\.mark_(clean|dirty)\(", p.read_text())
                     and p.name not in ("marks.py", "logdirty.py"))
    assert callers == []


@BOTH
def test_each_call_site_marks_through_the_one_module(behaviour, sites_seen):
    hv = make_hv(behaviour, ram=range(0, 64), host_frames=200)
    hv.guest_write(a(1, 2, 3, 5, 9), a(11, 12, 13, 15, 19))
    hv.decrease_reservation(a(1))                                     # guest_remove_page
    hv.remove_from_physmap(2)                                         # p2m_remove_entry
    hv.set_typed_p2m_entry(3, P2MType.mmio_direct)                    # set_typed_p2m_entry over RAM
    hv.populate_physmap(a(100, 101))                                  # p2m_add_page
    hv.add_to_physmap(5, 120)                                         # remove at src, add at dst
    assert sites_seen == [("p2m_remove_page", "remove", 1), ("p2m_remove_page", "remove", 1),
                          ("set_typed_p2m_entry", "remove", 1), ("guest_physmap_add_entry", "add", 2),
                          ("p2m_remove_page", "remove", 1), ("guest_physmap_add_entry", "add", 1)]
    fixed = behaviour == "fixed"
    # Removed GFNs' bits went only with the fix; added ones were set only with it.
    assert [b for g, b in enumerate(_bits(hv, 128)) if g in (1, 2, 3, 5)] == [not fixed] * 4
    assert [_bits(hv, 128)[g] for g in (100, 101, 120)] == [fixed] * 3
    assert hv.stats.marks_clean == (4 if fixed else 0)


@BOTH
def test_pod_cache_stealing_marks_through_the_one_module(behaviour, sites_seen):
    # A PoD guest over target: decrease_reservation steals RAM into the cache.
    hv = make_hv(behaviour, ram=range(0, 32), host_frames=200, pod_gfns=a(*range(32, 48)), pod_cache_pages=4)
    hv.guest_write(a(7, 8), a(1, 2))
    hv.decrease_reservation(a(7, 8))
    assert [s for s in sites_seen if s[1] == "remove"][0][0] == "pod_decrease_reservation"
    assert [_bits(hv, 64)[g] for g in (7, 8)] == [behaviour == "pre-fix"] * 2


@BOTH
@pytest.mark.parametrize("sizes", [[64, 64, 64], [5, 1, 90, 30], [1] * 12])
def test_a_decrease_run_makes_the_marks_its_calls_make_one_by_one(behaviour, sizes, sites_seen):
    runs = {}
    for one_by_one in (False, True):
        hv = make_hv(behaviour, ram=range(0, 512), host_frames=1000)
        hv.guest_write(a(*range(0, 512, 3)), np.arange(1, 172, dtype=np.uint64))
        gfns = np.arange(400, 400 - sum(sizes), -1, dtype=np.int64)
        del sites_seen[:]
        if one_by_one:
            lo = 0
            for n in sizes:
                hv.decrease_reservation(gfns[lo:lo + n], t=0.5)
                lo += n
        else:
            hv.decrease_reservation_run(gfns, sizes, t=0.5)
        # Per call: one mark per call; the run: one mark for all its extents. Both here.
        assert {s[:2] for s in sites_seen} == {("p2m_remove_page", "remove")}
        assert sum(s[2] for s in sites_seen) == sum(sizes)
        ev = [_plain(e) for e in hv.drain_events() if isinstance(e, MemoryOpServed)]
        runs[one_by_one] = (_bits(hv, 512), hv.stats.marks_clean, hv.stats.dirty_count, ev)
    assert len([s for s in runs[False][3]]) == len(sizes)
    assert runs[False] == runs[True]


@BOTH
@pytest.mark.parametrize("sizes", [[64, 64, 64], [5, 1, 90, 30], [1] * 12])
def test_a_populate_run_makes_the_marks_its_calls_make_one_by_one(behaviour, sizes, sites_seen):
    runs = {}
    for one_by_one in (False, True):
        hv = make_hv(behaviour, ram=range(0, 256), host_frames=1000)
        hv.decrease_reservation(np.arange(100, 300, dtype=np.int64))
        clean(hv)
        hv.guest_write(a(*range(0, 100, 7)), np.arange(1, 16, dtype=np.uint64))
        gfns = np.arange(1000, 1000 + sum(sizes), dtype=np.int64)
        gfns[::4] = np.arange(100, 100 + gfns[::4].size)                  # some over holes left by the balloon
        gfns.sort()
        del sites_seen[:]
        if one_by_one:
            lo = 0
            for n in sizes:
                hv.populate_physmap(gfns[lo:lo + n], t=0.5)
                lo += n
        else:
            hv.populate_physmap_run(gfns, sizes, t=0.5)
        assert {s[:2] for s in sites_seen} == {("guest_physmap_add_entry", "add")}
        assert sum(s[2] for s in sites_seen) == sum(sizes)
        ev = [_plain(e) for e in hv.drain_events() if isinstance(e, MemoryOpServed)]
        runs[one_by_one] = (_bits(hv, 1 << 11), hv.stats.marks_dirty, hv.stats.dirty_count, ev)
    assert runs[False] == runs[True]


@pytest.mark.parametrize("site", FIX_SITES)
def test_one_site_pre_fix_changes_only_that_sites_marks(site):
    """A mapping behaviour switches the sites one at a time; marks.py asks the domain
    which, per site."""
    behaviour = {s: ("pre-fix" if s == site else "fixed") for s in FIX_SITES}
    # One PoD entry and an empty cache: the first page ballooned out is stolen into the
    # cache (p2m-pod.c), the next goes back to the host (guest_remove_page).
    hv = make_hv(behaviour, ram=range(0, 64), host_frames=200, pod_gfns=a(64), pod_cache_pages=0)
    hv.guest_write(a(1, 2, 3), a(11, 12, 13))
    hv.decrease_reservation(a(1))
    hv.decrease_reservation(a(2))
    hv.set_typed_p2m_entry(3, P2MType.mmio_direct)
    hv.populate_physmap(a(100))
    bits = _bits(hv, 128)
    left = {"pod_decrease_reservation": 1, "p2m_remove_page": 2, "set_typed_p2m_entry": 3}
    for s, g in left.items():
        assert bits[g] == (s == site), s     # the pre-fix site alone leaves its bit
    assert bits[100] == (site != "guest_physmap_add_entry")
    effects = [e for ev in hv.drain_events() if isinstance(ev, MemoryOpServed) for e in ev.sites]
    assert {e.site: e.fixed for e in effects if e.site in FIX_SITES} == {s: s != site for s in FIX_SITES}
