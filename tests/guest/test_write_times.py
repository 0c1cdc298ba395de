"""Writes carry their own times: what a hypervisor call sees of a real guest mid-tick.

A guest's tick writes over ``[k*tick, (k+1)*tick)`` (``write_timing: continuous``); the
scheduler applies exactly the writes before each call's time, and the writes whose time
falls while the vCPUs are held (suspended, a CLEAN walk) never happen, including those
of a tick that started while they were held, before the moment they run again. The
reference is a second guest of the same seed asked for its writes directly
(``Guest.write_window``)."""

from __future__ import annotations

import numpy as np
import pytest

from guest import Guest, GuestConfig
from hypervisor.abi import ShadowOp
from hypervisor.domain import Hypervisor

TICK = 0.01
CFG = GuestConfig.model_validate({"memory": "64MiB", "layout": {"kind": "compact", "holes": []},
                                  "workloads": [{"kind": "uniform", "rate": "20000pages/s"}]})
P2M = CFG.memory_pages


def setup(seed=5):
    g = Guest(CFG, seed)
    hv = Hypervisor(host_frames=P2M + 4096)
    hv.build(g.layout())
    hv.attach_guest(g)
    hv.shadow_op(0.0, ShadowOp.ENABLE_LOGDIRTY)
    times, gfns, tokens = Guest(CFG, seed).write_window(0, 100)     # ticks [0, 1 s)
    return hv, (times, gfns, tokens)


def dirty(hv, t):
    """The GFNs the log-dirty bitmap holds at ``t`` (PEEK, no walk time)."""
    return hv.shadow_op(t, ShadowOp.PEEK, pages=P2M).bitmap.pfns()


def written(ref, *spans):
    times, gfns, _ = ref
    sel = np.zeros(times.size, dtype=bool)
    for a, b in spans:
        sel |= (times >= a) & (times < b)
    return np.unique(gfns[sel])


def test_the_writes_are_spread_over_each_tick_in_time_order():
    times, gfns, _ = setup()[1]
    assert np.all(np.diff(times) >= 0)
    ticks = np.floor(times / TICK).astype(np.int64)
    assert np.bincount(ticks).tolist() == [200] * 100                 # 20000 pages/s
    frac = times / TICK - ticks
    assert frac.min() < 0.01 and frac.max() > 0.99                     # not at the tick's start


def test_tick_timing_stamps_every_write_at_its_tick_start():
    cfg = CFG.model_copy(update={"write_timing": "tick"})
    times, _, _ = Guest(cfg, 5).write_window(0, 10)
    assert np.array_equal(times, np.repeat(np.arange(10) * TICK, 200))


@pytest.mark.parametrize("t", [0.0731, 0.25, 0.4999])
def test_a_call_mid_tick_sees_exactly_the_writes_before_it(t):
    hv, ref = setup()
    times, gfns, tokens = ref
    assert np.array_equal(dirty(hv, t), written(ref, (0, t)))
    # The contents are the last write before t to each page.
    before = times < t
    last = {}
    for g, k in zip(gfns[before].tolist(), tokens[before].tolist()):
        last[g] = k
    probe = np.array(sorted(last)[:512], dtype=np.int64)
    got, err = hv.map_foreign(t, probe)
    assert not np.any(err) and got.tolist() == [last[g] for g in probe.tolist()]
    # The rest of the tick waits, in time order, for a later call.
    p_times, p_gfns, _ = hv.sched.pending_writes()
    k_end = np.ceil(t / TICK - 1e-9) * TICK
    rest = (times >= t) & (times < k_end)
    assert np.array_equal(p_times, times[rest]) and np.array_equal(p_gfns, gfns[rest])


def test_a_suspend_mid_tick_drops_the_later_writes_and_a_resume_mid_tick_runs_from_then():
    hv, ref = setup()
    hv.advance_to(0.1)
    hv.suspend(0.1234)
    hv.advance_to(0.1288)                   # same tick: its writes after 0.1234 never happen
    hv.advance_to(0.3)
    assert np.array_equal(dirty(hv, 0.3), written(ref, (0, 0.1234)))
    # Resumed mid-tick: that tick started while suspended and writes from 0.3456 on.
    hv.resume(0.3456)
    hv.advance_to(0.5)
    assert np.array_equal(dirty(hv, 0.5), written(ref, (0, 0.1234), (0.3456, 0.5)))


@pytest.mark.parametrize("via_generate", [False, True])
def test_a_clean_walk_drops_the_writes_in_its_window(via_generate):
    """A CLEAN at 0.2055 holds the domain for 9 ms, across the start of tick 21: the
    writes in [0.2055, 0.2145) never happen, tick 21's later ones do. A span that asks
    for the pending writes at once (``generate``) sees the same."""
    hv, ref = setup()
    walk_until = 0.2055 + 0.009
    hv.shadow_op(0.2055, ShadowOp.CLEAN, pages=P2M, walk_s=0.009)
    if via_generate:
        hv.sched.generate(0.3)
        p_times, _, _ = hv.sched.pending_writes()
        times = ref[0]
        assert p_times.size and p_times[0] >= walk_until
        assert np.array_equal(p_times, times[(times >= walk_until) & (times < 0.3)])
    assert np.array_equal(dirty(hv, 0.3), written(ref, (walk_until, 0.3)))
