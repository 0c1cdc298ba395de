"""Hypervisor surface: Xen's errors and return conventions, domctls, scheduling."""

import numpy as np
import pytest

from hypervisor.abi import (E2BIG, EBUSY, EINVAL, ENOENT, ENOMEM, EPERM, SHADOW_LOGDIRTY_FINAL, DecreaseReservation,
                            DomainLayout, MemoryWrites, P2MType, PopulatePhysmap, ShadowOp, XenError)
from hypervisor.domain import Hypervisor

from tests.hv_helpers import ScriptedGuest, a, clean, make_hv, peek  # noqa: F401


def state_of(hv):
    g, tok = hv.snapshot()
    s = hv.stats
    return (g.tolist(), tok.tolist(), hv.p2m_types(np.arange(128)).tolist(), s.dirty_count,
            s.host_free_frames, s.logdirty_nodes, s.pod_entries, s.pod_cache_pages)


def test_decrease_on_invalid_gfn_stops_and_leaves_it_unchanged():
    hv = make_hv()
    before = state_of(hv)
    res = hv.decrease_reservation(a(100, 1))
    assert res.rc == 0 and res.done.size == 0 and state_of(hv) == before
    res = hv.decrease_reservation(a(1, 2, 100, 3))
    assert res.rc == 2 and res.done.tolist() == [1, 2]
    assert hv.p2m_types(a(1, 2, 3)).tolist() == [P2MType.invalid, P2MType.invalid, P2MType.ram_logdirty]


def test_a_short_memory_op_says_why_on_its_result():
    hv = make_hv(mmio_gfns=a(70))
    assert hv.decrease_reservation(a(1, 2)).errno == 0
    assert hv.decrease_reservation(a(3, 100)).errno == ENOENT      # a hole
    assert hv.decrease_reservation(a(70)).errno == EPERM           # a special entry
    assert hv.populate_physmap(a(70)).errno == EBUSY
    assert hv.populate_physmap(a(1, 4), pod=True).errno == EBUSY      # 4 is RAM
    assert hv.add_to_physmap(100, 4).errno == EINVAL


def test_a_hypercall_event_carries_the_time_it_was_served_at():
    hv = make_hv()
    hv.drain_events()
    hv.decrease_reservation(a(1), t=0.25)
    hv.populate_physmap(a(1))                      # no time given: the domain's clock
    assert [(e.kind, e.t) for e in hv.drain_events()] == [("decrease_reservation", 0.25),
                                                          ("populate_physmap", hv.now)]


def test_decrease_repeated_gfn_stops_at_the_repeat():
    hv = make_hv()
    res = hv.decrease_reservation(a(1, 2, 1, 3))
    assert res.rc == 2 and hv.p2m_types(a(3))[0] != P2MType.invalid


def test_decrease_on_mmio_is_refused():
    hv = make_hv(mmio_gfns=a(70))
    assert hv.decrease_reservation(a(70)).rc == 0
    assert hv.p2m_types(a(70))[0] == P2MType.mmio_direct


def test_populate_beyond_host_limit_stops_with_extents_done():
    hv = make_hv(host_frames=66)                       # 64 RAM + 2 free
    before_types = hv.p2m_types(a(100, 101, 102))
    res = hv.populate_physmap(a(100, 101, 102))
    assert res.rc == 2 and res.done.tolist() == [100, 101]
    assert hv.p2m_types(a(102))[0] == before_types[2] == P2MType.invalid
    assert hv.stats.host_free_frames == 0
    with pytest.raises(XenError) as e:
        hv.populate_physmap_exact(a(103))
    assert e.value.errno == ENOMEM


def test_populate_over_special_entry_stops():
    hv = make_hv(mmio_gfns=a(80))
    res = hv.populate_physmap(a(81, 80, 82))
    assert res.rc == 1 and hv.p2m_types(a(80, 82)).tolist() == [P2MType.mmio_direct, P2MType.invalid]


def test_pod_populate_refuses_ram_and_adds_entries():
    hv = make_hv()
    res = hv.populate_physmap(a(90, 91, 5, 92), pod=True)
    assert res.rc == 2 and hv.stats.pod_entries == 2
    assert hv.stats.marks_dirty == 0


def test_getpageframeinfo3_1025_pfns_is_refused_without_state_change():
    hv = make_hv(pod_gfns=a(100, 101), pod_cache_pages=2)
    before = state_of(hv)
    with pytest.raises(XenError) as e:
        hv.getpageframeinfo3(0.0, np.arange(1025) % 128)
    assert e.value.errno == E2BIG
    assert state_of(hv) == before                      # the PoD entries were not populated


def test_getpageframeinfo3_types():
    hv = make_hv(pod_gfns=a(100), pod_cache_pages=1, mmio_gfns=a(70))
    hv.p2m.set(a(71), P2MType.ram_broken, 5000)
    hv.p2m.set(a(72), P2MType.grant_map_rw, 5001)
    hv.set_typed_p2m_entry(73, P2MType.map_foreign)
    hv.p2m.set(a(74), P2MType.ram_ro, 5002)
    info = hv.getpageframeinfo3(0.0, a(0, 70, 71, 72, 73, 74, 100, 99, 1 << 41)) >> 28
    assert info.tolist() == [0x0, 0xF, 0xD, 0xF, 0xF, 0x0, 0x0, 0xF, 0xF]


def test_map_foreign_per_page_errors():
    hv = make_hv(ram=range(4), host_frames=10, ram_tokens=np.array([11, 12, 13, 14], dtype=np.uint64))
    hv.decrease_reservation(a(2))
    tok, err = hv.map_foreign(0.0, a(0, 2, 3, 50))
    assert tok.tolist() == [11, 0, 14, 0] and err.tolist() == [0, -EINVAL, 0, -EINVAL]


def test_shadow_op_errors():
    hv = make_hv()
    with pytest.raises(XenError) as e:
        hv.shadow_op(0.0, ShadowOp.ENABLE_LOGDIRTY)
    assert e.value.errno == EINVAL
    with pytest.raises(XenError):
        hv.shadow_op(0.0, ShadowOp.CLEAN, mode=2, pages=10)
    with pytest.raises(XenError):
        hv.shadow_op(0.0, 99)
    r = hv.shadow_op(0.0, ShadowOp.CLEAN, mode=SHADOW_LOGDIRTY_FINAL, pages=10, want_bitmap=False)
    assert r.bitmap is None and r.pages == 10


def test_enable_turns_rw_to_logdirty_first_write_faults_once():
    hv = make_hv(enable=False)
    hv.guest_write(a(1), a(1))
    hv.shadow_op(0.0, ShadowOp.ENABLE_LOGDIRTY)
    assert hv.stats.logdirty_nodes == 0                # no tree at enable time
    assert set(hv.p2m_types(np.arange(64)).tolist()) == {P2MType.ram_logdirty}
    hv.guest_write(a(1, 1, 2), a(5, 6, 7))
    hv.guest_write(a(1), a(8))
    s = hv.stats
    assert s.write_faults == 2 and s.marks_dirty == 2 and s.dirty_count == 2
    assert hv.p2m_types(a(1, 2, 3)).tolist() == [P2MType.ram_rw, P2MType.ram_rw, P2MType.ram_logdirty]
    assert hv.read_pages(a(1, 2))[0].tolist() == [8, 7]
    r = clean(hv)
    assert r.bitmap.pfns().tolist() == [1, 2] and r.stats.dirty_count == 2
    assert hv.p2m_types(a(1))[0] == P2MType.ram_logdirty     # CLEAN re-protects


def test_writes_to_non_ram_are_dropped_and_counted():
    hv = make_hv(mmio_gfns=a(70))
    hv.p2m.set(a(71), P2MType.ram_ro, 999)
    hv.guest_write(a(70, 71, 72, 1), a(1, 2, 3, 4))
    s = hv.stats
    assert s.dropped_writes == 3 and s.write_faults == 1 and s.dirty_count == 1


def test_logdirty_pool_exhaustion_fails_clean_with_enomem_until_off():
    hv = make_hv(pool=4, ram=list(range(64)) + [40000])
    hv.guest_write(a(1), a(1))
    hv.guest_write(a(40000), a(2))                     # needs a second leaf: pool is full
    s = hv.stats
    assert s.failed_allocs == 1 and s.logdirty_nodes == 4
    with pytest.raises(XenError) as e:
        clean(hv)
    assert e.value.errno == ENOMEM and hv.stats.dirty_count == 1
    hv.shadow_op(hv.now, ShadowOp.OFF)
    hv.shadow_op(hv.now, ShadowOp.ENABLE_LOGDIRTY)
    assert hv.stats.failed_allocs == 0
    clean(hv)


def test_max_gpfn_and_sparse_guest():
    hv = make_hv(ram=list(range(16)) + [(1 << 32) - 2])
    assert hv.max_gpfn() == (1 << 32) - 2
    hv.guest_write(a((1 << 32) - 2), a(3))
    assert hv.stats.logdirty_nodes == 4
    r = hv.shadow_op(0.0, ShadowOp.PEEK, pages=hv.max_gpfn() + 1)
    assert r.bitmap.pfns().tolist() == [(1 << 32) - 2]


def test_destination_populate_write_read():
    hv = Hypervisor(host_frames=10)
    hv.build(DomainLayout(ram_gfns=np.empty(0, dtype=np.int64)))
    hv.populate_physmap_exact(a(3, 5))
    hv.write_pages(a(3, 5, 3), np.array([7, 8, 9], dtype=np.uint64))
    tok, err = hv.read_pages(a(3, 5, 4))
    assert tok.tolist() == [9, 8, 0] and err.tolist() == [0, 0, -EINVAL]
    with pytest.raises(XenError, match="0x4"):
        hv.write_pages(a(4), np.array([1], dtype=np.uint64))


# ---- scheduling -------------------------------------------------------------------


def test_advance_to_runs_guest_and_sends_results():
    guest = ScriptedGuest([MemoryWrites(0.5, a(1, 2), np.array([5, 6], dtype=np.uint64)),
                           DecreaseReservation(1.5, a(2, 999)),
                           PopulatePhysmap(2.5, a(500))])
    hv = make_hv()
    hv.attach_guest(guest)
    hv.advance_to(2.0)
    assert guest.calls == [(0.0, 2.0)] and hv.now == 2.0
    (op1, r1), (op2, r2) = guest.results
    assert r1 is None and r2.rc == 1 and r2.done.tolist() == [2]
    hv.advance_to(1.0)                                 # t <= now: no-op
    hv.advance_to(3.0)
    assert guest.results[-1][1].rc == 1
    ev = [(e.t, e.kind, e.rc) for e in hv.drain_events()]
    assert (1.5, "decrease_reservation", 1) in ev and (2.5, "populate_physmap", 1) in ev
    assert hv.drain_events() == []


def test_paused_suspended_and_walk_window_skip_guest_time():
    guest = ScriptedGuest([MemoryWrites(t, a(1), np.array([int(t * 10) + 1], dtype=np.uint64))
                           for t in (0.5, 1.5, 2.5, 3.5, 4.5, 5.5)])
    hv = make_hv()
    hv.attach_guest(guest)
    hv.pause(1.0)
    hv.pause(1.2)
    hv.unpause(2.0)
    assert hv.state == "paused"
    hv.unpause(2.2)
    assert hv.state == "running"
    with pytest.raises(XenError):
        hv.unpause(2.2)
    hv.shadow_op(2.2, ShadowOp.PEEK, pages=64, walk_s=1.0)   # paused for [2.2, 3.2)
    hv.suspend(4.0)
    hv.advance_to(5.0)
    hv.resume(5.0)
    hv.advance_to(6.0)
    seen = [op.t for op, _ in guest.results]
    assert seen == [0.5, 3.5, 5.5]
    kinds = [e.kind for e in hv.drain_events()]
    assert kinds == ["logdirty_enable", "pause", "pause", "unpause", "unpause", "peek", "suspend", "resume"]


@pytest.mark.parametrize("hi", [8, 5000, 1 << 28, 1 << 40, 1 << 52])
def test_the_last_write_to_a_gfn_wins(hi):
    """guest_write and the restorer's write_pages keep, per GFN, the last token written
    (radix passes, the packed-key sort and the stable argsort all give its order)."""
    from hypervisor.runs import last_wins as _last_wins
    from hypervisor.tables import stable_order as _stable_order

    rng = np.random.default_rng(hi)
    for n in (2, 7, 300, 70000):
        g = rng.integers(0, hi, n)
        assert np.array_equal(_stable_order(g), np.argsort(g, kind="stable"))
    g = rng.integers(-3, 5, 70000)
    assert np.array_equal(_stable_order(g), np.argsort(g, kind="stable"))
    for n in (2, 7, 300, 20000, 70000):
        g = rng.integers(0, hi, n)
        tok = rng.integers(1, 1 << 62, n).astype(np.uint64)
        want = {}
        for gfn, t in zip(g.tolist(), tok.tolist()):
            want[gfn] = t
        ug, ut = _last_wins(g, tok)
        assert ug.tolist() == sorted(want) and ut.tolist() == [want[x] for x in sorted(want)]
    hv = make_hv(ram=range(0, 16))
    hv.guest_write(a(3, 5, 3, 9, 5, 3), np.array([1, 2, 3, 4, 5, 6], dtype=np.uint64))
    g, tok = hv.snapshot()
    assert dict(zip(g.tolist(), tok.tolist()))[3] == 6 and dict(zip(g.tolist(), tok.tolist()))[5] == 5
