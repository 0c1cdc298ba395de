"""Write workloads: determinism across slicing and seeds, and their statistics over long runs."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guest import Guest, GuestConfig
from hypervisor.abi import MemoryWrites, all_done

N = 16384          # pages of a 64 MiB guest laid out flat (no holes: GFN == page index)


def guest(workloads, memory="64MiB", seed=1, **kw):
    c = GuestConfig.model_validate({"memory": memory, "layout": {"holes": []}, "workloads": workloads, **kw})
    return Guest(c, seed)


def drive(g, spans):
    """A tiny stand-in for the hypervisor: every hypercall fully succeeds."""
    ops = []
    for t0, t1 in spans:
        gen = g.run(t0, t1)
        res = None
        while True:
            try:
                op = gen.send(res)
            except StopIteration:
                break
            if isinstance(op, MemoryWrites):
                # Each write at its own time, from t0 on, in a tick that started before t1.
                assert t0 <= op.times[0] and np.all(np.diff(op.times) >= 0)
                assert op.t == max(op.times[-1], t0) and op.times[-1] < t1 + g.tick
            else:
                assert t0 <= op.t < t1
            ops.append(op)
            res = all_done(op)
    return ops


def writes(ops):
    w = [o for o in ops if isinstance(o, MemoryWrites)]
    if not w:
        return np.empty(0, np.int64), np.empty(0, np.uint64)
    return np.concatenate([o.gfns for o in w]), np.concatenate([o.tokens for o in w])


def canonical(ops):
    """Ops with consecutive MemoryWrites merged: what slicing must not change."""
    out = []
    for o in ops:
        if isinstance(o, MemoryWrites):
            if out and out[-1][0] == "W":
                out[-1] = ("W", np.concatenate([out[-1][1], o.gfns]), np.concatenate([out[-1][2], o.tokens]))
            else:
                out.append(("W", o.gfns, o.tokens))
        else:
            out.append((type(o).__name__, o.t, o.gfns))
    return out


def same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x[0] == y[0]
        if x[0] == "W":
            assert np.array_equal(x[1], y[1]) and np.array_equal(x[2], y[2])
        else:
            assert x[1] == pytest.approx(y[1]) and np.array_equal(x[2], y[2])


MIX = [{"kind": "uniform", "rate": 3000}, {"kind": "hotset", "rate": 2000, "region": {"start": "25%", "size": "50%"}},
       {"kind": "zipf", "rate": 1500}, {"kind": "sequential", "rate": 4000, "region": {"size": "10%"}},
       {"kind": "once", "rate": 800, "start": "0.5s"}]
BALLOON = {"rate": "64MiB/s", "schedule": [{"at": "0.7s", "target": "-16MiB"}, {"at": "2.2s", "target": "+8MiB"}]}


@settings(max_examples=12, deadline=None)
@given(st.lists(st.floats(min_value=0.001, max_value=2.999, allow_nan=False), max_size=12))
def test_running_to_t_in_one_call_or_many_gives_the_same_ops(cuts):
    whole = canonical(drive(guest(MIX, balloon=BALLOON), [(0.0, 3.0)]))
    points = [0.0] + sorted(set(cuts)) + [3.0]
    sliced = canonical(drive(guest(MIX, balloon=BALLOON), list(zip(points[:-1], points[1:]))))
    same(whole, sliced)


def test_tick_by_tick_equals_one_call():
    a = canonical(drive(guest(MIX, balloon=BALLOON), [(0.0, 2.5)]))
    ts = np.round(np.arange(0, 2.5001, 0.01), 10)
    b = canonical(drive(guest(MIX, balloon=BALLOON), list(zip(ts[:-1], ts[1:]))))
    same(a, b)


def test_a_different_seed_writes_differently():
    a, ta = writes(drive(guest(MIX, seed=1), [(0, 1)]))
    b, tb = writes(drive(guest(MIX, seed=2), [(0, 1)]))
    assert a.size == b.size and not np.array_equal(a, b) and not np.array_equal(ta, tb)


def test_tokens_are_nonzero_and_unique_per_write():
    g = guest([{"kind": "sequential", "rate": 50000}])
    gfns, tokens = writes(drive(g, [(0, 1)]))
    assert gfns.size == 50000 and np.all(tokens != 0)
    assert np.unique(tokens).size == tokens.size
    init = dict(zip(np.asarray(g.layout().ram_gfns).tolist(), np.asarray(g.layout().ram_tokens).tolist()))
    assert not np.any(tokens[:1000] == np.array([init[x] for x in gfns[:1000].tolist()], dtype=np.uint64))


def test_writes_between_hypercalls_come_as_one_batch_per_span():
    ops = drive(guest(MIX), [(0.0, 2.0)])
    assert len(ops) == 1 and isinstance(ops[0], MemoryWrites)
    assert ops[0].gfns.dtype == np.int64 and ops[0].tokens.dtype == np.uint64
    assert 1.99 <= ops[0].t < 2.0        # its last write, in the last tick


def test_paused_spans_write_nothing():
    g = guest([{"kind": "uniform", "rate": 1000}])
    ops = drive(g, [(0.0, 1.0), (3.0, 4.0)])
    assert 0.99 <= ops[0].t < 1.0 and 3.99 <= ops[1].t < 4.0
    assert sum(o.gfns.size for o in ops) == 2000
    assert g.stats.ticks_skipped == 200


def test_uniform_distinct_pages_follow_the_saturation_curve():
    rate, secs = 10000, 5
    gfns, _ = writes(drive(guest([{"kind": "uniform", "rate": rate}]), [(0, secs)]))
    w = rate * secs
    assert gfns.size == w
    expected = N * (1 - np.exp(-w / N))
    assert np.unique(gfns).size == pytest.approx(expected, rel=0.02)


def test_uniform_stays_in_its_region_and_rate_in_mib():
    gfns, _ = writes(drive(guest([{"kind": "uniform", "rate": "4MiB/s", "region": {"start": "16MiB", "size": "8MiB"}}]),
                           [(0, 2)]))
    assert gfns.size == 2048 and gfns.min() >= 4096 and gfns.max() < 6144


def test_hotset_share_lands_in_the_hot_region():
    gfns, _ = writes(drive(guest([{"kind": "hotset", "rate": 20000, "hot_fraction": 0.1, "hot_share": 0.8}]), [(0, 3)]))
    hot = gfns < int(round(0.1 * N))
    assert hot.mean() == pytest.approx(0.8, abs=0.01)
    cold_n, cold_w = N - N // 10, int((~hot).sum())           # the rest is uniform over the cold part
    assert np.unique(gfns[~hot]).size == pytest.approx(cold_n * (1 - np.exp(-cold_w / cold_n)), rel=0.03)


@pytest.mark.parametrize("s", [0.99, 1.4])
def test_zipf_rank_frequency_slope_is_minus_the_exponent(s):
    gfns, _ = writes(drive(guest([{"kind": "zipf", "rate": 100000, "exponent": s}]), [(0, 3)]))
    freq = np.sort(np.bincount(gfns, minlength=N))[::-1].astype(float)
    ranks = np.arange(1, freq.size + 1)
    sel = (ranks >= 5) & (ranks <= 300)
    slope = np.polyfit(np.log(ranks[sel]), np.log(freq[sel]), 1)[0]
    assert slope == pytest.approx(-s, abs=0.08)


def test_sequential_sweeps_and_wraps():
    gfns, _ = writes(drive(guest([{"kind": "sequential", "rate": 2000, "region": {"start": "4KiB", "size": "4MiB"}}]),
                           [(0, 1.5)]))
    assert gfns.size == 3000
    assert np.array_equal(gfns, 1 + np.arange(3000) % 1024)


def test_sequential_without_wrap_stops_at_the_end():
    gfns, _ = writes(drive(guest([{"kind": "sequential", "rate": 2000, "wrap": False, "region": {"size": "4MiB"}}]),
                           [(0, 1.5)]))
    assert np.array_equal(gfns, np.arange(1024))


def test_once_writes_each_page_exactly_once_then_stops():
    g = guest([{"kind": "once", "rate": 20000, "region": {"start": "50%"}}])
    gfns, _ = writes(drive(g, [(0, 0.2), (0.2, 3)]))
    assert gfns.size == N // 2 and np.array_equal(np.sort(gfns), np.arange(N // 2, N))
    assert not np.array_equal(gfns, np.sort(gfns))          # a scattered order
    assert writes(drive(g, [(3, 5)]))[0].size == 0


def test_start_and_stop_bound_a_workload():
    gfns, _ = writes(drive(guest([{"kind": "uniform", "rate": 1000, "start": "1s", "stop": "1.5s"}]), [(0, 1)]))
    assert gfns.size == 0
    ops = drive(guest([{"kind": "uniform", "rate": 1000, "start": "1s", "stop": "1.5s"}]), [(0, 3)])
    assert sum(o.gfns.size for o in ops) == 500


@pytest.mark.parametrize("fmt", ["csv", "npz"])
def test_trace_replays_at_the_right_ticks(tmp_path, fmt):
    t = np.array([0.0, 0.004, 0.5, 1.25, 1.25])
    gfn = np.array([3, 0x10, 7, 100, 3])
    if fmt == "csv":
        p = tmp_path / "w.csv"
        p.write_text("time_s,gfn\n# a comment\n" + "".join(f"{a},{hex(b)}\n" for a, b in zip(t, gfn)))
    else:
        p = tmp_path / "w.npz"
        np.savez(p, time_s=t, gfn=gfn)
    g = guest([{"kind": "trace", "path": str(p)}])
    ops = drive(g, [(0, 0.5), (0.5, 1.3), (1.3, 2)])
    # Continuous timing: each row at its recorded time.
    assert [(o.t, o.gfns.tolist()) for o in ops] == [(0.004, [3, 16]), (pytest.approx(1.25), [7, 100, 3])]
    assert np.concatenate([o.times for o in ops]).tolist() == pytest.approx(t.tolist())
    # Tick timing: each row at its tick's start.
    g = guest([{"kind": "trace", "path": str(p)}], write_timing="tick")
    ops = drive(g, [(0, 0.5), (0.5, 1.3), (1.3, 2)])
    assert [(o.t, o.gfns.tolist()) for o in ops] == [(0.0, [3, 16]), (pytest.approx(1.25), [7, 100, 3])]
    assert np.concatenate([o.times for o in ops]).tolist() == pytest.approx([0, 0, 0.5, 1.25, 1.25])


def test_trace_with_a_gfn_outside_ram_is_refused(tmp_path):
    p = tmp_path / "w.npz"
    np.savez(p, time_s=np.array([0.1]), gfn=np.array([1 << 30]))
    with pytest.raises(ValueError, match="expected GFNs of guest RAM"):
        guest([{"kind": "trace", "path": str(p)}])
