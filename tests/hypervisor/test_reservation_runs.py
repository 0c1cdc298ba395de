"""A balloon step's run of memory_op calls (``DecreaseReservationRun``,
``PopulatePhysmapRun``) does exactly what the same calls served one by one do: the
same results, events, log-dirty effects and domain state, whichever path serves it."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypervisor.abi import (EBUSY, ENOMEM, DecreaseReservationRun, HypercallResult, MemoryWrites, P2MType,
                            PopulatePhysmapRun, ShadowOp, XenError, all_done)
from hypervisor.domain import Hypervisor

from tests.hv_helpers import a, clean, make_hv, peek
from tests.hv_helpers import plain as _plain


def one_by_one(call, gfns, sizes):
    """The reference: each call on its own, up to the first that does not finish."""
    out, lo = [], 0
    for n in sizes:
        out.append(call(gfns[lo:lo + n]))
        lo += n
        if out[-1].rc != n:
            break
    return out




def events_of(hv):
    return [_plain(e) for e in hv.drain_events()]


def state_of(hv, span=160):
    g, tok = hv.snapshot()
    stats = dataclasses.asdict(hv.stats)
    try:
        bitmap = peek(hv).bitmap.pfns().tolist() if hv.log_dirty_enabled else None
    except XenError as exc:             # a bounded pool that lost marks: PEEK fails
        bitmap = exc.errno
    nxt = hv.frames.alloc(min(8, hv.frames.free_frames)).tolist()     # the allocator's order
    return (g.tolist(), tok.tolist(), hv.p2m_types(np.arange(span)).tolist(), stats, bitmap, nxt,
            hv.m2p.get(np.arange(200)).tolist())


def results_of(results):
    return [(r.rc, r.done.tolist(), r.errno) for r in results]


def twin(seed, behaviour, enable, pool, pod, host_frames, dirty_writes):
    """Two identical domains: RAM 0..119 with a hole, MMIO at 130, PoD entries at
    140..149 (with a cache of 4) when ``pod``; some pages written, then a CLEAN."""
    out = []
    for _ in range(2):
        layout = dict(mmio_gfns=a(130))
        if pod:
            layout.update(pod_gfns=np.arange(140, 150, dtype=np.int64), pod_cache_pages=4)
        hv = make_hv(behaviour, ram=[g for g in range(120) if not 50 <= g < 55], host_frames=host_frames,
                     enable=enable, pool=pool, **layout)
        if enable:
            clean(hv)
        w = np.asarray(dirty_writes, dtype=np.int64)
        if w.size:
            hv.guest_write(w, np.arange(1, w.size + 1, dtype=np.uint64), t=0.1)
        hv.drain_events()
        out.append(hv)
    return out


def gfn_runs():
    """Ascending, descending or shuffled GFNs, with holes, MMIO, PoD, repeats and
    out-of-range values among them now and then."""
    return st.one_of(
        st.builds(lambda lo, n: np.arange(lo, lo + n, dtype=np.int64), st.integers(0, 150), st.integers(1, 60)),
        st.builds(lambda lo, n: np.arange(lo + n - 1, lo - 1, -1, dtype=np.int64), st.integers(0, 150),
                  st.integers(1, 60)),
        st.lists(st.sampled_from([*range(0, 160, 3), 51, 130, 141, -1, 1 << 41]), min_size=1, max_size=50)
        .map(lambda x: np.asarray(x, dtype=np.int64)),
    )


def split(n, cuts):
    """Call sizes adding up to ``n`` from a list of cut points."""
    edges = sorted({c % (n + 1) for c in cuts} | {0, n})
    return [b - a for a, b in zip(edges[:-1], edges[1:])] or [n]


#: A mixed behaviour: the removal site fixed, the add site not (and the rest pre-fix).
MIXED = {"p2m_remove_page": "fixed", "set_typed_p2m_entry": "pre-fix", "pod_decrease_reservation": "pre-fix",
         "guest_physmap_add_entry": "pre-fix"}

domains = dict(seed=st.integers(0, 3), behaviour=st.sampled_from(["fixed", "pre-fix", MIXED]),
               enable=st.booleans(), pool=st.sampled_from([None, None, 5, 6]), pod=st.booleans(),
               host_frames=st.sampled_from([1000, 125, 120]),
               dirty_writes=st.lists(st.integers(0, 119), max_size=30))


@settings(max_examples=120, deadline=None)
@given(gfns=gfn_runs(), cuts=st.lists(st.integers(0, 200), max_size=6), populate=st.booleans(),
       first=st.sampled_from([None, "decrease", "populate"]), **domains)
def test_a_run_does_what_its_calls_do_one_by_one(gfns, cuts, populate, first, seed, behaviour, enable, pool,
                                                 pod, host_frames, dirty_writes):
    run_hv, ref_hv = twin(seed, behaviour, enable, pool, pod, host_frames, dirty_writes)
    for hv in (run_hv, ref_hv):
        # Sometimes start from a balloon already out (so populate has pages to put back).
        if first == "decrease":
            hv.decrease_reservation(np.arange(60, 100, dtype=np.int64), t=0.2)
        elif first == "populate":
            hv.populate_physmap(np.arange(50, 55, dtype=np.int64), t=0.2)
        hv.drain_events()
    sizes = split(gfns.size, cuts)
    if populate:
        got = run_hv.populate_physmap_run(gfns, sizes, t=0.5)
        want = one_by_one(lambda g: ref_hv.populate_physmap(g, t=0.5), gfns, sizes)
    else:
        got = run_hv.decrease_reservation_run(gfns, sizes, t=0.5)
        want = one_by_one(lambda g: ref_hv.decrease_reservation(g, t=0.5), gfns, sizes)
    assert results_of(got) == results_of(want)
    assert events_of(run_hv) == events_of(ref_hv)
    assert state_of(run_hv) == state_of(ref_hv)


@settings(max_examples=100, deadline=None)
@given(lo=st.integers(0, 130), n=st.integers(1, 60), cuts=st.lists(st.integers(0, 200), max_size=6),
       populate=st.booleans(), behaviour=domains["behaviour"], host_frames=domains["host_frames"],
       dirty_writes=domains["dirty_writes"], out=st.integers(0, 60))
def test_the_one_pass_shapes_match_one_by_one(lo, n, cuts, populate, behaviour, host_frames, dirty_writes, out):
    """The shapes the balloon makes (no PoD, log-dirty on, an unbounded pool; inflate
    highest GFN first, deflate ascending), over pages some of which are dirty, some
    ballooned out already (``out`` of them, from 60 up), some holes and MMIO."""
    run_hv, ref_hv = twin(0, behaviour, True, None, False, host_frames, dirty_writes)
    for hv in (run_hv, ref_hv):
        if out:
            hv.decrease_reservation(np.arange(60, 60 + out, dtype=np.int64), t=0.2)
        hv.drain_events()
    sizes = split(n, cuts)
    if populate:
        gfns = np.arange(lo, lo + n, dtype=np.int64)
        got = run_hv.populate_physmap_run(gfns, sizes, t=0.5)
        want = one_by_one(lambda g: ref_hv.populate_physmap(g, t=0.5), gfns, sizes)
    else:
        gfns = np.arange(lo + n - 1, lo - 1, -1, dtype=np.int64)
        got = run_hv.decrease_reservation_run(gfns, sizes, t=0.5)
        want = one_by_one(lambda g: ref_hv.decrease_reservation(g, t=0.5), gfns, sizes)
    assert results_of(got) == results_of(want)
    assert events_of(run_hv) == events_of(ref_hv)
    assert state_of(run_hv) == state_of(ref_hv)


def forbid_single_calls(hv, monkeypatch):
    def refuse(*_, **__):
        raise AssertionError("served one call at a time")
    monkeypatch.setattr(hv, "decrease_reservation", refuse)
    monkeypatch.setattr(hv, "populate_physmap", refuse)


def test_the_balloons_runs_are_served_in_one_pass(monkeypatch):
    hv = make_hv(ram=range(0, 4096), host_frames=5000)
    clean(hv)
    forbid_single_calls(hv, monkeypatch)
    down = np.arange(4095, 1023, -1, dtype=np.int64)                  # inflate: highest first
    res = hv.decrease_reservation_run(down, [512] * 6, t=1.0)
    assert [r.rc for r in res] == [512] * 6 and hv.stats.populated_pages == 1024
    up = np.arange(1024, 4096, dtype=np.int64)                        # deflate: ascending
    res = hv.populate_physmap_run(up, [512] * 6, t=2.0)
    assert [r.rc for r in res] == [512] * 6 and hv.stats.populated_pages == 4096
    ev = hv.drain_events()
    assert [e.kind for e in ev].count("decrease_reservation") == 6
    assert [e.kind for e in ev].count("populate_physmap") == 6
    # With the fix, every GFN put back is dirty (p2m_add_page marks it).
    assert np.isin(up, peek(hv).bitmap.pfns()).all()


def test_a_run_stops_after_the_first_call_xen_does_not_finish():
    hv = make_hv(ram=range(0, 64), host_frames=70)
    hv.decrease_reservation(np.arange(0, 64, dtype=np.int64))
    # 70 frames: 64 back on the free stack + 6 never used; ask for 64 more than that.
    res = hv.populate_physmap_run(np.arange(0, 64, dtype=np.int64), [30, 30, 4], t=1.0)
    assert results_of(res)[:1] == [(30, list(range(30)), 0)]
    assert [(r.rc, r.errno) for r in res] == [(30, 0), (30, 0), (4, 0)]
    res = hv.populate_physmap_run(np.arange(64, 100, dtype=np.int64), [4, 4, 28], t=1.0)
    assert [(r.rc, r.errno) for r in res] == [(4, 0), (2, ENOMEM)]    # 6 frames left: call 2 stops
    res = hv.populate_physmap_run(a(200, 201, 202), [1, 2], t=1.0)
    assert [(r.rc, r.errno) for r in res] == [(0, ENOMEM)]


def test_a_populate_over_a_special_entry_stops_the_run_there():
    hv = make_hv(ram=range(0, 32), mmio_gfns=a(40))
    res = hv.populate_physmap_run(np.arange(36, 44, dtype=np.int64), [2, 2, 2, 2])
    assert [(r.rc, r.errno) for r in res] == [(2, 0), (2, 0), (0, EBUSY)]
    assert hv.p2m_types(a(36, 39, 40)).tolist() == [P2MType.ram_rw, P2MType.ram_rw, P2MType.mmio_direct]


def test_bad_sizes_are_refused():
    hv = make_hv()
    with pytest.raises(ValueError):
        hv.decrease_reservation_run(a(1, 2, 3), [1, 1])
    with pytest.raises(ValueError):
        hv.populate_physmap_run(a(1, 2), [3, -1])


def test_all_done_answers_every_call_in_full():
    run = DecreaseReservationRun(0.0, np.arange(10, dtype=np.int64), np.array([4, 4, 2]))
    res = all_done(run)
    assert [(r.rc, r.done.tolist()) for r in res] == [(4, [0, 1, 2, 3]), (4, [4, 5, 6, 7]), (2, [8, 9])]
    single = all_done(PopulatePhysmapRun(0.0, a(5), np.array([1])))
    assert isinstance(single, list) and len(single) == 1 and single[0].rc == 1
    assert all_done(MemoryWrites(0.0, a(1), np.ones(1, np.uint64))) is None
    assert isinstance(all_done(run)[0], HypercallResult)


def test_a_guest_balloon_through_the_real_hypervisor_matches_one_by_one():
    """A whole guest (driver, writes, reuse) against two hypervisors: one serving its
    runs, one serving each call alone; same results, events and state."""
    from guest import Guest, GuestConfig

    def run(one_at_a_time):
        c = GuestConfig.model_validate({"memory": "64MiB", "workloads": [{"kind": "uniform", "rate": 20000}],
                                        "balloon": {"rate": "64MiB/s", "batch_pages": 300,
                                                    "schedule": [{"at": "0.2s", "target": "40MiB"},
                                                                 {"at": "0.9s", "target": "+20MiB"}]}})
        g = Guest(c, 3)
        hv = Hypervisor(host_frames=17000, behaviour="fixed")
        hv.build(g.layout())
        hv.shadow_op(0.0, ShadowOp.ENABLE_LOGDIRTY)
        hv.attach_guest(g)
        if one_at_a_time:
            hv.decrease_reservation_run = lambda gf, sz, t=None: one_by_one(
                lambda x: hv.decrease_reservation(x, t=t), gf, list(sz))
            hv.populate_physmap_run = lambda gf, sz, pod=False, t=None: one_by_one(
                lambda x: hv.populate_physmap(x, pod=pod, t=t), gf, list(sz))
        for t in np.arange(0.1, 2.0, 0.1):
            hv.advance_to(float(t))
        return events_of(hv), state_of(hv, span=1 << 14), g.current_pages
    got, want = run(False), run(True)
    assert got[2] == (60 << 20) >> 12          # 64 MiB, down to 40, back up by 20
    assert got == want
