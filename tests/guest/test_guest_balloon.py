"""The balloon driver: inflate/deflate in batches, feedback from Xen, PoD boot."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guest import Guest, GuestConfig
from hypervisor.abi import (DecreaseReservation, DecreaseReservationRun, HypercallResult, MemoryWrites,
                            PopulatePhysmap, PopulatePhysmapRun, all_done)


class StrictDriver:
    """Plays the hypervisor's part and checks the guest never misbehaves: it releases
    only pages it holds, never twice, populates only pages it gave back, and never
    writes a page it does not hold. ``populate_limit`` caps how many pages Xen can
    still populate (host memory)."""

    def __init__(self, guest, populate_limit=None, decrease_limit=None):
        self.g = guest
        lay = guest.layout()
        ram = np.asarray(lay.ram_gfns)
        self.held = np.zeros(int(max(ram.max(initial=0), lay.pod_gfns.max(initial=0))) + 1, dtype=bool)
        self.held[ram] = True
        self.held[lay.pod_gfns] = True
        self.populate_limit = populate_limit
        self.decrease_limit = decrease_limit
        self.ops = []

    def answer(self, op):
        if isinstance(op, MemoryWrites):
            assert self.held[op.gfns].all(), "wrote a GFN the guest does not hold"
            assert np.all(op.tokens != 0)
            return None
        if isinstance(op, (DecreaseReservationRun, PopulatePhysmapRun)):
            # A run of calls: served one by one, up to the first that does not finish
            # (each call is recorded in ``ops`` as the single hypercall it is).
            assert op.sizes.sum() == op.gfns.size and (op.sizes > 0).all()
            out, a = [], 0
            for size in op.sizes.tolist():
                call = (DecreaseReservation(op.t, op.gfns[a:a + size]) if isinstance(op, DecreaseReservationRun)
                        else PopulatePhysmap(op.t, op.gfns[a:a + size], op.pod))
                self.ops.append(call)
                out.append(self.answer(call))
                a += size
                if out[-1].rc < size:
                    break
            return out
        g = op.gfns
        assert np.unique(g).size == g.size, "a GFN twice in one hypercall"
        assert g.size <= self.g.config.balloon.batch_pages
        if isinstance(op, DecreaseReservation):
            assert self.held[g].all(), "released a page the guest does not hold"
            n = g.size if self.decrease_limit is None else min(g.size, self.decrease_limit)
            if self.decrease_limit is not None:
                self.decrease_limit -= n
            self.held[g[:n]] = False
            return HypercallResult(rc=n, done=g[:n])
        assert isinstance(op, PopulatePhysmap) and not op.pod
        assert not self.held[g].any(), "populated a page the guest already holds"
        n = g.size if self.populate_limit is None else min(g.size, self.populate_limit)
        if self.populate_limit is not None:
            self.populate_limit -= n
        self.held[g[:n]] = True
        return HypercallResult(rc=n, done=g[:n])

    def run(self, t0, t1):
        gen = self.g.run(t0, t1)
        res = None
        while True:
            try:
                op = gen.send(res)
            except StopIteration:
                return
            if not isinstance(op, (DecreaseReservationRun, PopulatePhysmapRun)):
                self.ops.append(op)
            res = self.answer(op)


def make(balloon, memory="64MiB", workloads=None, **kw):
    c = GuestConfig.model_validate({"memory": memory, "layout": {"holes": [{"start": 0xA0, "end": 0x100}]},
                                    "workloads": workloads if workloads is not None else
                                    [{"kind": "uniform", "rate": 20000}], "balloon": balloon, **kw})
    return Guest(c, 5)


def test_inflate_releases_owned_pages_in_batches_and_reaches_the_target():
    g = make({"batch_pages": 100, "schedule": [{"at": "0.5s", "target": "48MiB"}]})
    d = StrictDriver(g)
    d.run(0, 1)
    dec = [o for o in d.ops if isinstance(o, DecreaseReservation)]
    assert sum(o.gfns.size for o in dec) == 4096 and max(o.gfns.size for o in dec) == 100
    assert all(o.t == 0.5 for o in dec)
    assert g.current_pages == g.target_pages == 12288 == int(g.owned.sum())
    released = np.concatenate([o.gfns for o in dec])
    assert np.unique(released).size == released.size
    assert np.array_equal(np.sort(released), g.ballooned_gfns())
    kinds = [e.kind for e in g.drain_events()]
    assert kinds == ["balloon_target", "balloon_inflate", "balloon_reached"]


def test_deflate_restores_the_target_and_the_guest_writes_returned_pages():
    g = make({"schedule": [{"at": "0.2s", "target": "-16MiB"}, {"at": "1s", "target": "+16MiB"}],
              "reuse_share": 0.5, "reuse_within": "200ms"}, workloads=[])
    d = StrictDriver(g)
    d.run(0, 2)
    assert g.current_pages == 16384 and g.owned.all() and g.ballooned_gfns().size == 0
    pop = np.concatenate([o.gfns for o in d.ops if isinstance(o, PopulatePhysmap)])
    assert pop.size == 4096
    w = [o for o in d.ops if isinstance(o, MemoryWrites)]
    reused = np.concatenate([o.gfns for o in w])
    assert np.isin(reused, pop).all() and all(1.0 <= o.t < 1.2 for o in w)
    assert reused.size == pytest.approx(2048, rel=0.1) and np.unique(reused).size == reused.size


def test_writes_never_touch_ballooned_out_gfns_while_the_balloon_moves():
    g = make({"rate": "40MiB/s", "batch_pages": 256,
              "schedule": [{"at": "0.1s", "target": "32MiB"}, {"at": "1.5s", "target": "56MiB"},
                           {"at": "2s", "target": "8MiB"}, {"at": "2.7s", "target": "64MiB"}]},
             workloads=[{"kind": "uniform", "rate": 30000}, {"kind": "sequential", "rate": 9000}])
    d = StrictDriver(g)             # asserts on every write
    for a in np.arange(0, 4, 0.13):
        d.run(a, a + 0.13)
    assert g.stats.writes_dropped > 0          # it really did filter
    assert g.current_pages == 16384


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 16384), st.sampled_from([None, 64.0, 2000.0])), min_size=1, max_size=5))
def test_any_schedule_keeps_the_invariants(steps):
    schedule = [{"at": 0.3 * (i + 1), "target": f"{pages}pages"} for i, (pages, _) in enumerate(steps)]
    rate = steps[0][1]
    g = make({"schedule": schedule, "rate": rate, "region": {"start": 0}}, workloads=[{"kind": "uniform", "rate": 5000}])
    d = StrictDriver(g)
    d.run(0, 0.3 * len(steps) + 0.25)
    assert int(g.owned.sum()) == g.current_pages == int(d.held[g.map.ram_gfns()].sum())
    if rate is None:
        assert g.current_pages == steps[-1][0]


def test_failed_populate_leaves_the_balloon_where_it_is_and_says_so():
    g = make({"batch_pages": 512, "schedule": [{"at": "0.1s", "target": "-8MiB"}, {"at": "0.5s", "target": "+8MiB"},
                                               {"at": "1s", "target": "64MiB"}]}, workloads=[])
    d = StrictDriver(g, populate_limit=700)
    d.run(0, 0.9)
    assert g.current_pages == 16384 - 2048 + 700
    stalls = [e for e in g.drain_events() if e.kind == "balloon_stalled"]
    assert len(stalls) == 1
    assert stalls[0].op == "populate_physmap" and stalls[0].requested == 512
    assert stalls[0].done == 188 and stalls[0].rc == 188
    n_pop = sum(isinstance(o, PopulatePhysmap) for o in d.ops)
    d.run(0.9, 0.99)                       # stalled: no retry until a new target
    assert sum(isinstance(o, PopulatePhysmap) for o in d.ops) == n_pop
    d.populate_limit = None
    d.run(0.99, 1.1)                       # the next target moves it again
    assert g.current_pages == 16384 and g.owned.all()


def test_failed_decrease_keeps_the_pages_xen_did_not_take():
    g = make({"schedule": [{"at": "0.1s", "target": "-8MiB"}]}, workloads=[])
    d = StrictDriver(g, decrease_limit=600)
    d.run(0, 0.5)
    assert g.current_pages == 16384 - 600 and int(g.owned.sum()) == 16384 - 600
    ev = [e for e in g.drain_events() if e.kind == "balloon_stalled"]
    assert ev[0].op == "decrease_reservation" and ev[0].done == 88


def test_inflate_takes_pages_from_its_region_only():
    g = make({"region": {"start": "25%", "size": "25%"}, "schedule": [{"at": 0, "target": "-32MiB"}]}, workloads=[])
    d = StrictDriver(g)
    d.run(0, 0.1)
    assert g.current_pages == 16384 - 4096                  # the region held only 16 MiB
    gone = np.flatnonzero(~g.owned)
    assert gone.min() == 4096 and gone.max() == 8191
    assert [e.reason for e in g.drain_events() if e.kind == "balloon_stalled"][0].startswith(
        "no owned pages left")


def test_skipped_spans_catch_up_on_the_schedule_at_the_next_tick():
    g = make({"schedule": [{"at": "1s", "target": "-4MiB"}, {"at": "2s", "target": "-4MiB"}]}, workloads=[])
    d = StrictDriver(g)
    d.run(0, 0.5)
    d.run(3.0, 3.5)                      # paused over [0.5, 3): both steps land at 3.0
    ev = g.drain_events()
    assert [(e.t, e.kind) for e in ev][:2] == [(3.0, "balloon_target"), (3.0, "balloon_target")]
    assert g.current_pages == 16384 - 2048
    assert all(o.t >= 3.0 for o in d.ops)


def test_pod_boot_inflates_to_memory_before_the_first_write():
    c = GuestConfig.model_validate({"memory": "32MiB", "maxmem": "64MiB", "workloads": [{"kind": "uniform", "rate": 50000}],
                                    "balloon": {"rate": "1MiB/s"}})
    g = Guest(c, 1)
    lay = g.layout()
    assert lay.ram_gfns.size == 0 and lay.pod_gfns.size == 16384 and lay.pod_cache_pages == 8192
    d = StrictDriver(g)
    d.run(0.0, 1.0)
    first_write = next(i for i, o in enumerate(d.ops) if isinstance(o, MemoryWrites))
    assert all(isinstance(o, DecreaseReservation) for o in d.ops[:first_write])
    assert sum(o.gfns.size for o in d.ops[:first_write]) == 8192          # not rate limited
    assert g.current_pages == 8192
    touched = np.unique(np.concatenate([o.gfns for o in d.ops if isinstance(o, MemoryWrites)]))
    assert touched.size <= lay.pod_cache_pages
    assert g.drain_events()[0].reason.startswith("boot")


def test_a_256gib_guest_stays_compact():
    # How quick it is: benchmarks/bench_guest.py (a ratio against a numpy floor).
    c = GuestConfig.model_validate({"memory": "256GiB", "workloads": [{"kind": "uniform", "rate": "1GiB/s"}],
                                    "balloon": {"schedule": [{"at": "0.5s", "target": "-1GiB"}]}})
    g = Guest(c, 1)
    assert g.owned.nbytes == 64 << 20
    ops = []
    gen = g.run(0, 1.0)
    res = None
    while True:
        try:
            op = gen.send(res)
        except StopIteration:
            break
        ops.append(op)
        res = all_done(op)
    assert g.current_pages == (255 << 30) >> 12
    assert sum(o.gfns.size for o in ops if isinstance(o, MemoryWrites)) > 200000


def test_with_the_real_hypervisor_p2m_matches_the_guest_view():
    from hypervisor import domain

    g = make({"rate": "64MiB/s", "schedule": [{"at": "0.3s", "target": "40MiB"}, {"at": "1.2s", "target": "+8MiB"}]})
    hv = domain.Hypervisor(host_frames=20000, behaviour="fixed")
    hv.build(g.layout())
    hv.attach_guest(g)
    hv.advance_to(2.0)
    # the builder's special pages (libxc's layout) are RAM in the P2M but not the guest's
    ram = hv.ram_gfns()
    assert np.array_equal(ram[-16:], g.map.special)
    assert np.array_equal(np.sort(ram[:-16]), g.owned_gfns())
    assert g.current_pages == 12288


def test_with_the_real_hypervisor_pod_boot_stays_within_the_cache():
    from hypervisor import domain

    c = GuestConfig.model_validate({"memory": "32MiB", "maxmem": "64MiB",
                                    "workloads": [{"kind": "uniform", "rate": 20000}]})
    g = Guest(c, 1)
    hv = domain.Hypervisor(host_frames=20000, behaviour="fixed")
    hv.build(g.layout())
    hv.attach_guest(g)
    hv.advance_to(2.0)
    assert g.current_pages == 8192
    special = g.map.special.size      # populated beside the PoD target, not from the cache
    assert special == 16
    assert hv.stats.pod_failures == 0 and hv.ram_gfns().size - special + hv.stats.pod_entries == 8192


def test_balloon_snapshot_holds_everything_the_driver_changes():
    """A balloon driver restored from its snapshot is the driver at the snapshot: every
    attribute outside ``Balloon.STATE`` is the same object after a run as before it."""
    g = make({"rate": "64MiB/s", "schedule": [{"at": "0.3s", "target": "40MiB"}, {"at": "1.2s", "target": "+8MiB"}]})
    drv = StrictDriver(g)
    b = g.balloon
    fixed = {k: v for k, v in vars(b).items() if k not in b.STATE}
    snap = b.snapshot()
    before = {k: (v.copy() if isinstance(v, np.ndarray) else repr(v)) for k, v in snap.items()}
    drv.run(0, 1.0)
    assert b.current != snap["current"] and b.stats != snap["stats"]
    assert {k: v for k, v in vars(b).items() if k not in b.STATE}.keys() == fixed.keys()
    assert all(vars(b)[k] is v for k, v in fixed.items())
    b.restore(snap)
    for k, v in before.items():
        now = getattr(b, k)
        assert (np.array_equal(now, v) if isinstance(v, np.ndarray) else repr(now) == v), k
