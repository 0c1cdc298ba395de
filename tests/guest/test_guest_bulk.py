"""The guest's bulk paths do what the general ones do: a balloon step whose calls all
finish is taken as one group (not call by call), its reuse writes' RNG streams are
seeded in bulk (``guest.keyed_rng``), and the guest's writes are ordered and merged
without a full sort; each gives the same numbers, state, events and writes as the
path it short-cuts."""


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import guest.balloon as balloon_mod
import guest.keyed_rng as keyed_rng
from guest import Guest, GuestConfig
from guest.balloon import Balloon
from hypervisor.abi import ShadowOp
from hypervisor.domain import Hypervisor

from tests.hv_helpers import plain as _plain




@settings(max_examples=40, deadline=None)
@given(prefix=st.lists(st.integers(0, (1 << 64) - 1), min_size=0, max_size=5),
       keys=st.lists(st.integers(0, (1 << 32) - 1), min_size=1, max_size=6))
def test_keyed_rngs_draw_what_default_rng_draws(prefix, keys):
    keys = keys * keyed_rng.BULK_MIN                     # enough keys for the bulk seeding
    # The bulk seeding itself (not the fallback) gives numpy's states.
    want = [np.random.PCG64(np.random.SeedSequence([*prefix, k])).state["state"] for k in keys]
    assert keyed_rng._pcg64_states(prefix, np.asarray(keys, dtype=np.int64)) == [(w["state"], w["inc"]) for w in want]
    assert keyed_rng._verified()
    for k, rng in zip(keys, keyed_rng.keyed_rngs(prefix, keys)):
        assert np.array_equal(rng.random(7), np.random.default_rng([*prefix, k]).random(7))


def test_keyed_rngs_fall_back_where_they_cannot_follow_numpy(monkeypatch):
    monkeypatch.setattr(keyed_rng, "BULK_MIN", 1)
    keys = [3, 1 << 40]                        # a key of two words: one generator per key
    got = [r.random(3) for r in keyed_rng.keyed_rngs([9], keys)]
    assert all(np.array_equal(g, np.random.default_rng([9, k]).random(3)) for g, k in zip(got, keys))
    monkeypatch.setattr(keyed_rng, "_VERIFIED", False)     # a numpy that seeds otherwise
    got = [r.random(3) for r in keyed_rng.keyed_rngs([9], [5, 6])]
    assert all(np.array_equal(g, np.random.default_rng([9, k]).random(3)) for g, k in zip(got, [5, 6]))
    with pytest.raises(ValueError):
        list(keyed_rng.keyed_rngs([-1], [1]))


def _one_rng_per_key(prefix, keys):
    for k in keys:
        yield np.random.default_rng([*prefix, k])


def _balloon_state(g: Guest):
    b = g.balloon
    b._merge_reuse()
    # What lets Guest._merge skip its ownership filter: nothing ballooned out means
    # every page owned.
    assert b.ballooned == np.count_nonzero(~g.owned)
    stack = np.concatenate(b._stack).tolist() if b._stack else []
    return (g.owned.tolist(), b.current, b._hint, b._stack_n, stack, dict(b.stats),
            b._reuse_due.tolist(), b._reuse_pages.tolist())


def _run(general: bool, monkeypatch, balloon: dict, leave_free: int | None = None):
    """A guest with a balloon against the real hypervisor; ``general``: every run
    taken call by call and every RNG built with default_rng; ``leave_free``: at 0.4 s
    another domain takes all but that many of the host's free frames."""
    with monkeypatch.context() as m:
        if general:
            m.setattr(Balloon, "_all_done", staticmethod(lambda op, bounds, results: False))
            m.setattr(balloon_mod, "keyed_rngs", _one_rng_per_key)
        c = GuestConfig.model_validate({"memory": "64MiB", "workloads": [{"kind": "hotset", "rate": 20000}],
                                        "balloon": balloon})
        g = Guest(c, 3)
        hv = Hypervisor(host_frames=17000, behaviour="fixed")
        hv.build(g.layout())
        hv.shadow_op(0.0, ShadowOp.ENABLE_LOGDIRTY)
        hv.attach_guest(g)
        states = []
        for t in np.arange(0.1, 2.0, 0.1):
            hv.advance_to(float(t))
            if leave_free is not None and abs(t - 0.4) < 1e-9:
                hv.frames.alloc(hv.frames.free_frames - leave_free)
            states.append(_balloon_state(g))
        ev = [_plain(e) for e in hv.drain_events()]
        snap = hv.snapshot()
        return states, ev, g.events, snap[0].tolist(), snap[1].tolist()


@pytest.mark.parametrize("balloon", [
    {"batch_pages": 64, "schedule": [{"at": "0.2s", "target": "40MiB"}, {"at": "0.9s", "target": "+20MiB"}]},
    {"batch_pages": 7, "rate": "16MiB/s", "reuse_share": 0.9,
     "schedule": [{"at": "0.1s", "target": "60MiB"}, {"at": "0.5s", "target": "64MiB"}]},
])
def test_a_balloon_step_in_bulk_matches_the_call_by_call_path(monkeypatch, balloon):
    bulk, general = _run(False, monkeypatch, balloon), _run(True, monkeypatch, balloon)
    assert bulk[1] and any(e[0] == "MemoryOpServed" and e[2] == "populate_physmap" for e in bulk[1])
    assert bulk == general


def test_a_run_xen_stops_short_takes_the_general_path_and_matches(monkeypatch):
    # The host runs short of frames: the deflate's populate stops part-way.
    balloon = {"batch_pages": 100, "schedule": [{"at": "0.2s", "target": "32MiB"}, {"at": "0.5s", "target": "64MiB"}]}
    bulk, general = _run(False, monkeypatch, balloon, 1234), _run(True, monkeypatch, balloon, 1234)
    assert any(e.kind == "balloon_stalled" for e in bulk[2])
    assert bulk == general


@settings(max_examples=60, deadline=None)
@given(ticks=st.lists(st.integers(0, 400), min_size=0, max_size=300), seed=st.integers(0, 2**32 - 1),
       ties=st.booleans(), big=st.booleans())
def test_time_order_is_the_stable_argsort_of_the_times(ticks, seed, ties, big):
    from guest.workloads import time_order, times_in_ticks
    rng = np.random.default_rng(seed)
    k = np.sort(np.asarray(ticks, dtype=np.int64))
    frac = rng.integers(0, 4, k.size) / 4.0 if ties else rng.random(k.size)     # ties: equal times
    t = times_in_ticks(k, frac, 0.01)[rng.permutation(k.size)]
    if big:                                   # the radix passes (from 2**16 entries)
        t = np.tile(t, 70_000 // max(t.size, 1) + 1)[:70_000] if t.size else t
    assert np.array_equal(time_order(t), np.argsort(t, kind="stable"))
    neg = np.concatenate([t, [-0.0, -1.0, 0.0]])
    assert np.array_equal(time_order(neg), np.argsort(neg, kind="stable"))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**64 - 1), key=st.integers(0, 0xFFFF), n=st.integers(0, 200),
       tick=st.sampled_from([0.01, 0.001, 0.0137, 1.0]))
def test_the_in_place_hashes_and_times_are_the_expressions_written_out(seed, key, n, tick):
    """write_tokens, hashed_fracs and times_in_ticks work in place; these are their
    formulas as plain expressions (fresh temporaries at every step)."""
    from hypervisor.content import splitmix64
    from guest.workloads import _KEY_MUL, _TICK_MUL, TIME_KEY, hashed_fracs, seed_key, times_in_ticks, write_tokens
    rng = np.random.default_rng(seed % 1000)
    gfns = rng.integers(0, 1 << 40, n)
    ticks = np.sort(rng.integers(0, 1 << 20, n))
    frac = rng.random(n)
    frac[: n // 4] = np.nextafter(1.0, 0.0)              # the clamp before a tick's end
    with np.errstate(over="ignore"):
        s = splitmix64(np.uint64(seed_key(seed)) ^ np.uint64(0x5EED))
        x = splitmix64(gfns.astype(np.uint64) ^ s)
        x = x + (ticks.astype(np.uint64) + np.uint64(1)) * _TICK_MUL
        want = splitmix64(x + np.uint64(key + 1) * _KEY_MUL)
        want[want == 0] = 1
        s = splitmix64(np.uint64(seed_key(seed)) ^ np.uint64(TIME_KEY))
        x = splitmix64(gfns.astype(np.uint64) ^ s)
        x = splitmix64(x + (ticks.astype(np.uint64) + np.uint64(key + 1)) * _TICK_MUL)
        want_frac = (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    start = ticks.astype(np.float64) * tick
    want_t = np.minimum(start + frac * tick, np.nextafter(start + tick, -np.inf))
    assert np.array_equal(write_tokens(seed, gfns, ticks, key), want)
    assert np.array_equal(hashed_fracs(seed, gfns, ticks, key), want_frac)
    assert np.array_equal(times_in_ticks(ticks, frac, tick), want_t)
