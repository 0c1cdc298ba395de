"""Spans served ahead over a transport (``HypervisorActor._serve_spans``, ``RemoteDomain``)
and page contents sent as their difference from the boot contents (``BootElided``): a
remote run makes far fewer round trips and moves far fewer bytes, and its report is the
embedded run's."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from guest.workloads import initial_tokens
from migrate import actors
from migrate.actors.messages import BootElided, Served
from migrate.actors.toolstack import RemoteDomain
from migrate.toolstack.control import SPAN_FIRST, SPAN_MAX, PassPlan, SpanAt, Stretch, next_span_ask
from migrate.errors import TransportError
from migrate.events import EventBus
from migrate.toolstack.link import LinkModel
from migrate.run.runner import RunOptions, run_scenario
from migrate.run.scenario import load_scenario, parse_scenario
from migrate.codec import wire
from migrate.run.report import build_report
from hypervisor.span import SpanServed

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def comparable(result) -> dict:
    rep = json.loads(json.dumps(build_report(result), default=str))
    rep.pop("wall", None)
    return rep


async def _remote(sc, opts, *, codec: bool = True):
    """``remote_run`` over in-process actors; (result, RemoteDomain, methods called on
    the hypervisor, bytes of the hypervisor's replies)."""
    ts, hvt, gt = actors.in_process_actors(codec=codec)
    calls: list[str] = []
    replied = [0]
    call = ts.call

    async def counting(actor, method, args=None):
        calls.append(method)
        reply = await call(actor, method, args)
        if codec:
            replied[0] += len(wire.encode(reply))
        return reply

    ts.call = counting
    domains: list = []
    init = RemoteDomain.__init__

    def keep(self, *a, **k):
        init(self, *a, **k)
        domains.append(self)

    RemoteDomain.__init__ = keep
    try:
        hv = asyncio.ensure_future(actors.serve_hypervisor(hvt))
        g = asyncio.ensure_future(actors.serve_guest(sc, gt))
        res = await actors.remote_run(sc, opts, transport=ts)
        assert await asyncio.wait_for(hv, 5) == "released" and await asyncio.wait_for(g, 5) == "released"
    finally:
        RemoteDomain.__init__ = init
    return res, domains[0], calls, replied[0]


def test_next_span_ask_doubles_while_served_whole_and_restarts_from_what_was():
    assert next_span_ask(64, 64) == 128
    assert next_span_ask(SPAN_MAX, SPAN_MAX) == SPAN_MAX
    assert next_span_ask(512, 3) == SPAN_FIRST
    assert next_span_ask(512, 100) == 200
    assert next_span_ask(SPAN_MAX, SPAN_MAX - 1) == SPAN_MAX
    assert next_span_ask(512, 512, cap=512) == 512 and next_span_ask(256, 256, cap=512) == 512


def test_span_cap_keeps_a_small_guests_spans_short_and_a_large_guests_long():
    from migrate.toolstack.control import SPAN_CAP_MIN, span_cap

    gib = 1 << 18                                   # PFNs a GiB
    assert span_cap(0) == span_cap(gib) == span_cap(16 * gib) == SPAN_CAP_MIN == 512
    assert span_cap(16 * gib + 96) == 512           # (the benchmark's 16 GiB guest, a little over)
    assert span_cap(32 * gib) == 1024
    assert span_cap(64 * gib) == span_cap(1 << 40) == SPAN_MAX
    caps = [span_cap(n) for n in range(0, 80 * gib, gib // 4)]
    assert caps == sorted(caps) and all(c & (c - 1) == 0 for c in caps)   # growing powers of two


async def test_a_balloon_moving_is_served_in_a_few_round_trips_with_the_same_report():
    """balloon.yaml: each batch while the balloon moves ends a span (the guest's next
    hypercall is a tick away); served ahead, 41 span round trips become a handful."""
    sc = load_scenario(EXAMPLES / "balloon.yaml")
    emb = await run_scenario(sc, RunOptions())
    rem, control, calls, _ = await _remote(sc, RunOptions())
    assert comparable(rem) == comparable(emb)
    spans = sum(r.batches for r in rem.save.rounds if r.phase != "verify")
    n_span_calls = calls.count("serve_span")
    # Pass 1 walks the hole of libxc's layout (above RAM's last block, 0x40000-0x403ff,
    # up to the special pages' block, 0xfec00-0xfefff) in bulk: no span serves those.
    hole_batches = (0xFEC00 - 0x40400) // 1024
    assert control.span_batches == spans - hole_batches
    assert n_span_calls <= 10, calls


@pytest.mark.parametrize("name", ["pod-boot", "webserver", "idle"])
async def test_spans_ahead_keep_the_report_of_other_guests(name):
    sc = load_scenario(EXAMPLES / f"{name}.yaml")
    for codec in (True, False):
        emb = await run_scenario(sc, RunOptions())
        rem, control, _, _ = await _remote(sc, RunOptions(), codec=codec)
        assert comparable(rem) == comparable(emb), (name, codec)


async def test_a_first_pass_of_boot_contents_crosses_as_bits():
    """A 4 GiB guest that writes little: its first pass sends a bit, not 8 bytes, for
    each page still holding its boot contents; the report is the embedded run's."""
    spec = {"name": "boot", "seed": 3, "guest": {"memory": "4GiB",
            "workloads": [{"kind": "uniform", "rate": "4MiB/s"}]},
            "link": {"bandwidth": "40Gbit/s"}, "migration": {"start": "1s"}}
    sc = parse_scenario(spec)
    emb = await run_scenario(sc, RunOptions())
    rem, _, _, replied = await _remote(sc, RunOptions())
    assert comparable(rem) == comparable(emb)
    sent = sum(r.pages_sent for r in emb.save.rounds)
    assert sent > 1 << 20
    assert replied < sent * 8 // 4          # a quarter of the tokens' bytes, all replies included


def test_boot_elided_round_trips_and_refuses_what_does_not_add_up():
    rng = np.random.default_rng(5)
    gfns = np.sort(rng.choice(1 << 20, 10_000, replace=False)).astype(np.int64)
    tokens = initial_tokens(9, gfns)
    written = rng.random(gfns.size) < 0.3
    tokens[written] = rng.integers(2, 1 << 62, int(written.sum()), dtype=np.int64).astype(np.uint64)
    el = BootElided.elide(9, gfns, tokens)
    assert isinstance(el, BootElided) and el.rest.size == int(written.sum())
    back = wire.roundtrip(el)
    assert np.array_equal(back.expand(gfns), tokens)
    # Few pages at their boot contents, or few pages: sent as they are.
    assert BootElided.elide(9, gfns, tokens + np.uint64(1)) is not None
    assert isinstance(BootElided.elide(9, gfns, tokens + np.uint64(1)), np.ndarray)
    assert isinstance(BootElided.elide(9, gfns[:100], tokens[:100]), np.ndarray)
    with pytest.raises(ValueError, match="for 9999 data PFNs"):
        el.expand(gfns[:-1])
    bad = BootElided(el.seed, el.count, el.boot, el.rest[:-1])
    with pytest.raises(ValueError, match="do not add up"):
        bad.expand(gfns)


class _Script:
    """A transport whose hypervisor answers serve_span from a script."""

    client_id = "ts-test"
    timeout = 1.0

    def __init__(self, replies):
        self.replies = list(replies)
        self.requests: list[dict] = []

    async def call(self, actor, method, args=None):
        self.requests.append(dict(args))
        return self.replies.pop(0)


def _served(t, batches, stop, t_end, at=None):
    pfns = batches * 1024
    return Served(t=t, result=SpanServed(batches, pfns, np.zeros(pfns, np.uint8), np.empty(0, np.uint64),
                                         np.linspace(t, t_end, batches + 1), stop), at=at)


async def test_remote_domain_answers_from_ahead_only_the_span_the_engine_asks_for():
    stretch = Stretch(lo=0, hi=1024 * 200)
    plan = PassPlan(1, (stretch,), LinkModel(1.25e8))
    first = _served(1.0, 2, "hypercall", 1.5)
    first.ahead = [_served(1.5, 3, "pod", 2.0, at=(2, SPAN_FIRST))]
    script = _Script([first])
    dom = RemoteDomain(script, EventBus())
    s1 = await dom.serve_span(1.0, stretch.batches(0, SPAN_FIRST), plan, SpanAt(stretch, 0))
    assert s1.batches == 2 and script.requests[0]["stretch"] is stretch
    assert script.requests[0]["at"] == (1, 0, SPAN_FIRST)
    # The next span comes from ahead (no request); it stopped on PoD, so nothing is asked ahead.
    s2 = await dom.serve_span(1.5, stretch.batches(2, SPAN_FIRST), plan, SpanAt(stretch, 2))
    assert s2.batches == 3 and len(script.requests) == 1 and dom._next is None
    # A span ahead that is not the one asked for is an error, not a silent answer.
    first = _served(2.0, 1, "hypercall", 2.1)
    first.ahead = [_served(2.1, 1, "pod", 2.2, at=(6, SPAN_FIRST))]
    script.replies.append(first)
    await dom.serve_span(2.0, stretch.batches(5, SPAN_FIRST), plan, SpanAt(stretch, 5))
    assert "stretch" not in script.requests[1]           # the hypervisor holds it already
    with pytest.raises(TransportError, match="another span"):
        await dom.serve_span(2.1, stretch.batches(6, 2 * SPAN_FIRST), plan, SpanAt(stretch, 6))


async def test_the_span_after_those_ahead_is_requested_before_the_engine_asks():
    stretch = Stretch(lo=0, hi=1024 * 500)
    plan = PassPlan(1, (stretch,), LinkModel(1.25e8))
    first = _served(1.0, SPAN_FIRST, "plan", 1.5)
    nxt = _served(1.5, 2 * SPAN_FIRST, "plan", 2.0)
    script = _Script([first, nxt])
    dom = RemoteDomain(script, EventBus())
    await dom.serve_span(1.0, stretch.batches(0, SPAN_FIRST), plan, SpanAt(stretch, 0))
    await asyncio.sleep(0)
    # Served whole: the engine asks twice as many from batch 64 at t=1.5; already out.
    assert len(script.requests) == 2 and script.requests[1]["at"] == (1, SPAN_FIRST, 2 * SPAN_FIRST)
    assert script.requests[1]["t"] == 1.5
    script.replies.append(_served(2.0, 5, "pod", 2.1))
    s2 = await dom.serve_span(1.5, stretch.batches(SPAN_FIRST, 2 * SPAN_FIRST), plan, SpanAt(stretch, SPAN_FIRST))
    assert s2.batches == 2 * SPAN_FIRST
    await asyncio.sleep(0)
    assert script.requests[2]["at"] == (1, 3 * SPAN_FIRST, 4 * SPAN_FIRST)
    # A save cut short: the span asked ahead is forgotten, and a new request goes out.
    script.replies += [Served(t=3.0, result=77), _served(3.0, 1, "pod", 3.1)]
    assert await dom.max_gpfn(3.0) == 77
    await dom.serve_span(3.0, stretch.batches(400, 4), plan, SpanAt(stretch, 400))
    assert dom._next is None and script.requests[-1]["at"] == (1, 400, 4)


async def test_the_hypervisor_actor_refuses_a_bad_span_request():
    sc = load_scenario(EXAMPLES / "idle.yaml")
    ts, hvt, gt = actors.in_process_actors()
    hv = asyncio.ensure_future(actors.serve_hypervisor(hvt))
    g = asyncio.ensure_future(actors.serve_guest(sc, gt))
    await ts.claim()
    src = actors.RemoteSource(ts, sc, behaviour="fixed", seed=1, bus=EventBus(), host_frames=1 << 20,
                              publish_events=False)
    await src.setup(1.0)
    link = LinkModel(1.25e8)
    base = {"t": 1.0, "link": link, "deadline": None}
    for extra, words in (({"at": (7, 0, 1)}, "stretch 7 was never sent"),
                         ({"at": (1, 0, 1), "stretch": Stretch(lo=5, hi=2)}, "a bad stretch"),
                         ({"at": (1, 0, SPAN_MAX + 1), "stretch": Stretch(lo=0, hi=1 << 30)}, "not in a stretch"),
                         ({"at": "x"}, "'at' must be"),
                         ({"at": (1, 0, 1), "stretch": Stretch(lo=0, hi=1 << 20), "span_max": 1 << 20},
                          "span_max must be"),
                         ({"at": (1, 0, 1), "stretch": Stretch(lo=0, hi=1 << 20), "span_max": "512"},
                          "span_max must be"),
                         ({"at": (1, 0, 600), "stretch": Stretch(lo=0, hi=1 << 20), "span_max": 512},
                          "not in a stretch")):
        with pytest.raises(Exception, match=words):
            await src.control._call("serve_span", {**base, **extra})
    await src.close()
    assert await asyncio.wait_for(hv, 5) == "released"
    g.cancel()


async def test_a_malformed_span_ahead_or_elided_contents_is_an_error_not_a_crash():
    stretch = Stretch(lo=0, hi=1024 * 100)
    plan = PassPlan(1, (stretch,), LinkModel(1.25e8))
    for bad in (Served(t=1.5, at=("x", 1)), Served(t=1.5), "junk"):
        first = _served(1.0, 2, "hypercall", 1.5)
        first.ahead = [bad]
        dom = RemoteDomain(_Script([first]), EventBus())
        with pytest.raises(TransportError, match="bad span ahead"):
            await dom.serve_span(1.0, stretch.batches(0, SPAN_FIRST), plan, SpanAt(stretch, 0))
    first = _served(1.0, 1, "pod", 1.5)
    first.result.nibbles[:] = 0                   # every PFN a data page
    first.result.tokens = BootElided(1 << 70, 1024, np.zeros(128, np.uint8), np.empty(0, np.uint64))
    dom = RemoteDomain(_Script([first]), EventBus())
    with pytest.raises(TransportError, match="bad elided contents"):
        await dom.serve_span(1.0, stretch.batches(0, SPAN_FIRST), plan, SpanAt(stretch, 0))


def test_a_malformed_speculated_window_from_the_guest_is_refused():
    from migrate.actors.messages import GuestLayout, WriteWindow
    from guest.guest import Guest

    cfg = load_scenario(EXAMPLES / "balloon.yaml").guest
    g = Guest(cfg, 1)
    layout = g.layout()
    for steps in ([(301, [])], [("300", [])], [(300, [], 1)]):
        replies = [GuestLayout(layout, g.tick, 300),
                   WriteWindow(300, 310, np.empty(0), np.empty(0, np.int64), np.empty(0, np.uint64), [], 310, steps)]
        remote = actors.RemoteGuest(lambda method, args: replies.pop(0))
        remote.layout()
        with pytest.raises(TransportError, match="speculated window"):
            list(remote.run(3.0, 3.05))


async def test_a_paced_run_asks_span_by_span_and_keeps_the_report():
    """With a live view pacing the run, spans end at the counters' sampling points, not
    as next_span_ask says: nothing is served ahead, and the report is the same."""

    class Pacer:
        async def pace(self, now):
            return None

    sc = load_scenario(EXAMPLES / "balloon.yaml")
    emb = await run_scenario(sc, RunOptions())
    ts, hvt, gt = actors.in_process_actors()
    sent: list[dict] = []
    call = ts.call

    async def spy(actor, method, args=None):
        if method == "serve_span":
            sent.append(dict(args))
        return await call(actor, method, args)

    ts.call = spy
    hv = asyncio.ensure_future(actors.serve_hypervisor(hvt))
    g = asyncio.ensure_future(actors.serve_guest(sc, gt))
    rem = await actors.remote_run(sc, RunOptions(), transport=ts, pacer=Pacer())
    assert await asyncio.wait_for(hv, 5) == "released" and await asyncio.wait_for(g, 5) == "released"
    assert comparable(rem) == comparable(emb)
    assert sent and all("at" not in a and "pfns" in a for a in sent)
