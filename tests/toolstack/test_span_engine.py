"""The span engine gives exactly what the per-batch reference gives.

``migration.engine: span`` (the default) asks the hypervisor for a whole run of batches
between two guest hypercalls at once (``hypervisor/span.py``); ``reference`` makes the
saver's two calls of every batch one by one. For every example (``test_golden_examples``
holds both engines to the same pins), for uniform writers at several λ, and for a
hypothesis-generated set of small scenarios with balloons, PoD, deadlines, verify and
both switch-overs, the stream is byte-identical and the report identical.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migrate.events import BatchSent, EventBus
from migrate.run.outputs import jsonable
from migrate.run.runner import RunOptions, run_scenario
from migrate.run.scenario import parse_scenario
from migrate.run.report import build_report

from tests.run.test_golden_examples import HASH_TARGET, _hash_sink_factory


def _run(spec: dict, engine: str, *, behaviour: str | None = None, track=(), bus=None) -> tuple[dict, int]:
    """(report less wall and target, batches served by spans) of ``spec`` under ``engine``."""
    import hypervisor.domain as dom
    from migrate.run import runner

    spec = json.loads(json.dumps(spec))
    spec.setdefault("migration", {})["engine"] = engine
    sc = parse_scenario(spec)
    served = [0]
    original_serve, original_sink = dom.serve_span, runner.open_sink

    def counting(*a, **k):
        res = original_serve(*a, **k)
        served[0] += res.batches
        STOPS.add(res.stop)
        return res

    dom.serve_span, runner.open_sink = counting, _hash_sink_factory()
    try:
        res = asyncio.run(run_scenario(sc, RunOptions(behaviour=behaviour, stream=HASH_TARGET,
                                                      track=tuple(track)), bus=bus))
    finally:
        dom.serve_span, runner.open_sink = original_serve, original_sink
    rep = json.loads(json.dumps(build_report(res), default=jsonable))
    rep.pop("wall", None)
    rep.get("stream", {}).pop("target", None)
    return rep, served[0]


#: Why the spans of the runs so far stopped (SpanServed.stop).
STOPS: set[str] = set()


def _same(spec: dict, **kw) -> int:
    ref, n_ref = _run(spec, "reference", **kw)
    spn, n_span = _run(spec, "span", **kw)
    assert n_ref == 0
    assert spn.get("stream", {}).get("sha256") == ref.get("stream", {}).get("sha256")
    assert spn == ref
    return n_span


def _uniform(lam: float, policy: str) -> dict:
    """A 64 MiB guest whose uniform writer dirties at λ times the link's page rate."""
    bandwidth = 256 * 2**20          # bytes/s
    rate = int(lam * bandwidth / 4096)
    params = {"downtime_limit": "30ms"} if policy == "downtime" else {}
    return {"name": f"lambda-{lam}", "seed": 5,
            "guest": {"memory": "64MiB", "layout": "compact",       # flat: every pass is batches
                      "workloads": [{"kind": "uniform", "rate": f"{rate}pages/s"}]},
            "link": {"bandwidth": f"{bandwidth}B/s"},
            "migration": {"start": "50ms", "policy": policy, "policy_params": params}}


@pytest.mark.parametrize("policy", ["xen", "downtime"])
@pytest.mark.parametrize("lam", [0.2, 0.4, 0.8])
def test_uniform_writers_give_the_reference_stream_and_report(lam, policy):
    served = _same(_uniform(lam, policy))
    assert served > 0, "no batch went through a span"


def test_tracked_pages_tell_the_same_story():
    spec = {"name": "track", "seed": 2,
            "guest": {"memory": "32MiB", "workloads": [{"kind": "hotset", "rate": "16MiB/s", "hot_fraction": 0.1,
                                                        "hot_share": 0.9}],
                      "balloon": {"schedule": [{"at": "150ms", "target": "-4MiB"}, {"at": "400ms", "target": "+4MiB"}]}},
            "link": {"bandwidth": "200Mbit/s"}, "migration": {"start": "100ms"}}
    _same(spec, behaviour="pre-fix", track=[5, 77, 200, 3000, 7000, 8100])


def test_without_a_pacer_the_view_hears_from_the_engine_at_least_every_32_batches():
    bus = EventBus()
    seen: list[BatchSent] = []
    bus.subscribe(lambda ev: seen.append(ev) if isinstance(ev, BatchSent) and ev.hole is None else None)
    _run(_uniform(0.4, "xen"), "span", bus=bus)
    assert seen
    per_event = [-(-ev.pfns.size // 1024) for ev in seen]
    assert max(per_event) <= 32
    assert max(per_event) > 1          # the engine did send runs of batches at once
    # and the events tile each pass: walked grows by each event's PFNs
    for a, b in zip(seen, seen[1:]):
        if a.iteration == b.iteration:
            assert b.walked == a.walked + b.pfns.size


def test_spans_stop_at_pod_entries_pod_writes_balloon_hypercalls_and_the_deadline():
    """A PoD guest whose writers touch unpopulated entries, a balloon that moves during
    the save and a deadline that cuts it: every reason a span stops comes up, and the
    result is still the reference's."""
    STOPS.clear()
    balloon = {"schedule": [{"at": "80ms", "target": "12MiB"}, {"at": "500ms", "target": "16MiB"}],
               "batch_pages": 64, "rate": "64MiB/s"}
    spec = {"name": "stops", "seed": 4,
            "guest": {"memory": "16MiB", "workloads": [{"kind": "uniform", "rate": "8MiB/s"}], "balloon": balloon},
            "link": {"bandwidth": "400Mbit/s"}, "migration": {"start": "40ms", "deadline": "250ms"}}
    _same(spec, behaviour="fixed")
    assert {"hypercall", "deadline"} <= STOPS, STOPS
    STOPS.clear()
    spec = {"name": "stops-pod", "seed": 4,
            "guest": {"memory": "16MiB", "maxmem": "24MiB",     # PoD boot
                      # the first half populated before the save, the second touched during it
                      "workloads": [{"kind": "sequential", "rate": "64MiB/s", "region": {"start": 0, "size": "50%"}},
                                    {"kind": "once", "rate": "4MiB/s", "region": {"start": "50%", "size": "50%"}}]},
            "link": {"bandwidth": "400Mbit/s"}, "migration": {"start": "400ms"}}
    _same(spec, behaviour="pre-fix")
    assert {"pod", "write"} <= STOPS, STOPS


_sizes = st.sampled_from([8, 12, 16, 24])


@st.composite
def small_scenarios(draw) -> dict:
    """A small guest: RAM or PoD boot, one or two writers, a balloon that moves out and
    back (possibly while the save runs), a link slow enough for a few passes."""
    mem = draw(_sizes)
    pod = draw(st.booleans())
    maxmem = mem + draw(st.sampled_from([4, 8])) if pod else mem
    kinds = draw(st.lists(st.sampled_from(["uniform", "hotset", "sequential", "once"]), min_size=1, max_size=2))
    workloads = []
    for kind in kinds:
        w = {"kind": kind, "rate": f"{draw(st.integers(1, 24))}MiB/s"}
        if kind == "hotset":
            w.update(hot_fraction=0.2, hot_share=0.8)
        workloads.append(w)
    steps = []
    t = draw(st.integers(50, 250))
    for _ in range(draw(st.integers(0, 3))):
        steps.append({"at": f"{t}ms", "target": f"{draw(st.integers(mem // 2, maxmem))}MiB"})
        t += draw(st.integers(20, 300))
    guest = {"memory": f"{mem}MiB", "maxmem": f"{maxmem}MiB", "workloads": workloads,
             "tick": draw(st.sampled_from(["10ms", "4ms"]))}
    if steps:
        guest["balloon"] = {"schedule": steps, "batch_pages": draw(st.sampled_from([64, 256])),
                            "rate": draw(st.sampled_from(["32MiB/s", "256MiB/s"]))}
    migration = {"start": f"{draw(st.integers(20, 200))}ms",
                 "switchover": draw(st.sampled_from(["live", "stopped"])),
                 "verify": draw(st.booleans())}
    if draw(st.booleans()):
        migration["deadline"] = f"{draw(st.integers(100, 900))}ms"
    if draw(st.booleans()):
        migration["tolerate_vanished"] = True
    return {"name": "h", "seed": draw(st.integers(1, 1000)), "guest": guest,
            "link": {"bandwidth": f"{draw(st.sampled_from([100, 200, 400]))}Mbit/s"},
            "migration": migration}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(spec=small_scenarios(), behaviour=st.sampled_from(["fixed", "pre-fix"]))
def test_small_scenarios_with_balloons_and_pod_give_the_reference_stream_and_report(spec, behaviour):
    _same(spec, behaviour=behaviour)


class _FlatOut:
    """A pacer that never waits (a live view at full speed)."""

    async def pace(self, t: float) -> None:
        return None


def test_with_a_pacer_the_view_sees_what_the_reference_shows():
    """A live view paces the engine: spans are then at most 32 batches and end where the
    counters are sampled, so the view gets one BatchSent per batch and the same counter
    samples as the per-batch reference, at the same times."""
    from migrate.events import CountersSampled

    spec = json.loads(json.dumps(_uniform(0.4, "xen")))
    spec["guest"]["balloon"] = {"schedule": [{"at": "80ms", "target": "48MiB"}]}
    seen = {}
    for engine in ("reference", "span"):
        spec["migration"]["engine"] = engine
        bus = EventBus()
        evs: list = []
        bus.subscribe(lambda ev: evs.append(ev) if isinstance(ev, (BatchSent, CountersSampled)) else None)
        asyncio.run(run_scenario(parse_scenario(spec), RunOptions(), bus=bus, pacer=_FlatOut()))
        seen[engine] = [(type(e).__name__, e.t, e.pfns.size if isinstance(e, BatchSent) else dict(e.counters))
                        for e in evs]
    assert seen["span"] == seen["reference"]
