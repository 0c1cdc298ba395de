"""``Guest.write_window`` and the MQTT ``RemoteGuest`` built on it (write-ahead windows,
speculated balloon hypercalls) give the hypervisor exactly the ops of ``Guest.run``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from guest.guest import Guest
from hypervisor.abi import MemoryWrites
from hypervisor.domain import Hypervisor
from migrate import actors
from migrate.actors.messages import GuestLayout
from migrate.run.scenario import load_scenario

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def balloon_guest_config():
    return load_scenario(EXAMPLES / "balloon.yaml").guest


def op_key(op):
    arrays = tuple(np.asarray(getattr(op, f)).tolist() for f in ("gfns", "tokens", "sizes") if hasattr(op, f))
    return (type(op).__name__, float(op.t), arrays)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_windows_rebuild_the_writes_of_run(seed):
    """Balloon-free spans: the writes of ``run`` over any slicing (with skipped ticks)
    are the window's writes of the ticks that ran."""
    cfg = balloon_guest_config()
    a, b = Guest(cfg, seed), Guest(cfg, seed)
    rng = np.random.default_rng(seed)
    # [0, 3 s) has no balloon activity (the first target is at 3 s = tick 300).
    k_to, nk = b.window_end(0, 1000)
    assert (k_to, nk) == (300, 300)
    times, gfns, tokens = b.write_window(0, k_to)
    assert b._next_tick == 300 and times.size and np.all(np.diff(times) >= 0)
    assert times[0] >= 0 and times[-1] < 3.0
    t = 0.0
    while t < 2.99:
        t0 = t + (rng.uniform(0, 0.05) if rng.random() < 0.2 else 0.0)      # sometimes skip time
        t1 = min(2.99, t0 + rng.uniform(0.001, 0.2))
        first = a._tick_at_or_after(t0)
        # A tick that started in the skipped time writes from t0 on; later ticks wholly.
        lo = min(t0, first * a.tick) if first - 1 >= a._next_tick else max(a._next_tick, first) * a.tick
        k1 = a._tick_at_or_after(t1)
        ops = list(a.run(t0, t1))
        sel = (times >= lo) & (times < k1 * a.tick)
        if not sel.any():
            assert ops == []
        else:
            (op,) = ops
            assert isinstance(op, MemoryWrites)
            assert op.t == max(times[sel][-1], t0)
            assert np.array_equal(op.gfns, gfns[sel]) and np.array_equal(op.tokens, tokens[sel])
            assert np.array_equal(op.times, times[sel])
        t = t1
    with pytest.raises(ValueError, match="balloon driver acts"):
        Guest(cfg, seed).write_window(0, 301)


def _remote_guest(cfg, seed):
    """A RemoteGuest served by a GuestActor in this thread (no transport)."""
    class Sc:
        name = "balloon"
        guest = cfg

    async def make():
        return actors.GuestActor(Sc(), transport=None)

    actor = asyncio.run(make())
    actor.guest = Guest(cfg, seed)
    calls = []

    def call(method, args):
        calls.append(method)
        if method == "layout":
            return GuestLayout(actor.guest.layout(), actor.guest.tick, actor.guest.next_tick)
        return actors.hypervisor._drive(actor._handle(method, args))

    return actors.RemoteGuest(call), calls


def _hypervisor(guest, layout, host_extra):
    hv = Hypervisor(host_frames=layout.ram_gfns.size + host_extra)
    hv.build(layout)
    hv.attach_guest(guest)
    rec = []
    apply = hv.sched.apply

    def recording(op):
        res = apply(op)
        rec.append((op_key(op), None if res is None else [(int(r.rc), np.asarray(r.done).tolist())
                                                          for r in (res if isinstance(res, list) else [res])]))
        return res

    hv.sched.apply = recording      # what the scheduler serves while it runs the guest
    return hv, rec


@pytest.mark.parametrize("seed,starve", [(1, False), (2, False), (3, True), (4, True)])
def test_remote_guest_gives_the_hypervisor_the_ops_of_run(seed, starve):
    """Random spans, pauses (skipped ticks, a balloon target inside them) and, with
    ``starve``, a host that runs out of frames mid-deflate (a speculated hypercall that
    Xen does not do in full): same ops, same results, same events, same memory."""
    cfg = balloon_guest_config()
    local = Guest(cfg, seed)
    remote, calls = _remote_guest(cfg, seed)
    hv_a, rec_a = _hypervisor(local, local.layout(), 4096)
    hv_b, rec_b = _hypervisor(remote, remote.layout(), 4096)
    rng = np.random.default_rng(seed)
    t, stolen = 0.0, False
    ev_a, ev_b = [], []
    while t < 11.0:
        if starve and not stolen and t > 6.0:
            for hv in (hv_a, hv_b):
                hv.frames.alloc(hv.frames.free_frames - 700)     # deflate stalls after 700 pages
            stolen = True
        step = rng.uniform(0.001, 0.06) if rng.random() < 0.9 else rng.uniform(0.1, 0.6)
        paused = rng.random() < 0.15
        for hv in (hv_a, hv_b):
            if paused:
                hv.pause(t)
            hv.advance_to(t + step)
            if paused:
                hv.unpause(t + step)
        ev_a += local.drain_events()
        ev_b += remote.drain_events()
        assert len(rec_a) == len(rec_b) and rec_a == rec_b, f"ops differ by t = {t + step}"
        t += step
    assert ev_a == ev_b and any(e.kind == "balloon_deflate" for e in ev_a)
    assert any(e.kind == "balloon_stalled" for e in ev_a) == starve
    if starve:
        assert "spec_sync" in calls or "spec_miss" in calls
    assert np.array_equal(hv_a.snapshot()[1], hv_b.snapshot()[1])
    assert remote.rpcs < len(rec_a)          # fewer round trips than ops


def _drive(gen, stop_after=None):
    """The ops of a guest run, each hypercall answered as the guest expects; closed
    after ``stop_after`` ops when given (the hypervisor stopping the guest midway)."""
    from hypervisor.abi import all_done

    out, res = [], None
    try:
        op = next(gen)
        while True:
            out.append(op_key(op))
            if stop_after is not None and len(out) >= stop_after:
                gen.close()
                return out
            res = None if isinstance(op, MemoryWrites) else all_done(op)
            op = gen.send(res)
    except StopIteration:
        return out


@pytest.mark.parametrize("seed", [1, 5, 9])
def test_a_run_stopped_midway_in_a_speculated_window_leaves_the_guest_as_run_would(seed):
    """The hypervisor closes a run mid-window (spec_sync "stop"): the guest actor takes
    back what it ran past that op, and later runs give the same ops as Guest.run."""
    cfg = balloon_guest_config()
    local = Guest(cfg, seed)
    remote, calls = _remote_guest(cfg, seed)
    assert local.layout().ram_gfns.size == remote.layout().ram_gfns.size
    rng = np.random.default_rng(seed)
    t, stops = 2.9, 0
    while t < 3.8:                       # the inflate starts at 3 s: hypercalls every tick
        t1 = t + rng.uniform(0.005, 0.05)
        stop = int(rng.integers(1, 4)) if rng.random() < 0.3 else None
        a = _drive(local.run(t, t1), stop)
        b = _drive(remote.run(t, t1), stop)
        assert a == b, f"ops differ in [{t}, {t1})"
        stops += stop is not None and len(a) >= stop
        t = t1
    assert stops and "spec_sync" in calls and calls.count("go") < 20
    assert [(e.t, e.kind) for e in local.drain_events()] == [(e.t, e.kind) for e in remote.drain_events()]


def _window_key(reply):
    if isinstance(reply, list):
        return [_window_key(r) for r in reply]
    arrays = tuple(np.asarray(getattr(reply, f)).tolist() for f in ("times", "gfns", "tokens") if hasattr(reply, f))
    steps = [(j, [op_key(op) for op in ops]) for j, ops in getattr(reply, "steps", [])]
    evs = [(e.t, e.kind) for e in getattr(reply, "events", []) + getattr(reply, "spec_events", [])]
    return (type(reply).__name__, getattr(reply, "first", None), getattr(reply, "end", None), arrays, steps, evs,
            getattr(reply, "next_tick", None))


@pytest.mark.parametrize("seed", [1, 4])
async def test_the_window_worked_out_ahead_is_the_one_go_would_answer(seed):
    """While the hypervisor serves from a window the guest actor works out the next
    one; a go from its first tick gets it, any other request (a go elsewhere, a replay)
    finds the guest as it was before it: the same answers as an actor that never
    looks ahead."""
    from hypervisor.abi import all_done
    from migrate.actors.guest import WINDOW_TICKS

    cfg = balloon_guest_config()

    class Sc:
        name = "balloon"
        guest = cfg

    actors_ = [actors.GuestActor(Sc(), transport=None, look_ahead=la) for la in (True, False)]
    for a in actors_:
        a.guest = Guest(cfg, seed)
        a.guest.layout()
    rng = np.random.default_rng(seed)

    async def both(method, args):
        out = [await a._handle(method, dict(args)) for a in actors_]
        assert _window_key(out[0]) == _window_key(out[1]), (method, args)
        return out[0]

    reply = await both("go", {"t0": 0.0, "t1": 0.5, "max_ticks": WINDOW_TICKS})
    looked = 0
    while reply is not None and getattr(reply, "end", 0) * cfg.tick < 11.0:
        looked += actors_[0]._ahead is not None
        k = reply.end
        r = rng.random()
        if r < 0.6:          # the usual next go: from the window's end
            t0 = k * cfg.tick - rng.uniform(0, 0.02)
            reply = await both("go", {"t0": max(t0, 0.0), "t1": k * cfg.tick + 0.05, "max_ticks": WINDOW_TICKS})
        elif r < 0.8 and getattr(reply, "steps", None):
            # a speculated window left midway: replay its first call, then a go after it
            await both("spec_sync", {"log": [], "then": "none", "results": [], "n": 0})
            t0 = actors_[1].guest.next_tick * cfg.tick
            reply = await both("go", {"t0": t0, "t1": t0 + 0.05, "max_ticks": WINDOW_TICKS})
        else:                # a go past a pause (ticks skipped)
            t0 = (k + int(rng.integers(1, 30))) * cfg.tick + rng.uniform(0, 0.01)
            reply = await both("go", {"t0": t0, "t1": t0 + 0.05, "max_ticks": WINDOW_TICKS})
        if not hasattr(reply, "end"):
            break
    assert looked > 5
    a, b = (x.guest for x in actors_)
    assert a.next_tick == b.next_tick and np.array_equal(a.owned, b.owned)
