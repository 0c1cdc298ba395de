"""The simulator against the analytic precopy model (``migrate.toolstack.analytic``).

At the default 10 ms guest tick, with writes carrying their own times
(``guest.write_timing: continuous``), every round's volume and the downtime agree with
the model within 2 % for uniform and sequential writers at λ = 0.2, 0.4 and 0.8 under
the ``xen`` and ``downtime`` policies; with ``write_timing: tick`` (all of a tick's
writes at its start, the model before) short rounds are off by 10-100 %.

Sizes, so that noise stays well inside 2 %: a 1 GiB flat guest (N = 262,144 pages) on
a 10 Gbit/s link; the policies' parameters are chosen so the smallest compared round
holds about 2,000 pages or more. Writes per interval are exact to one page (each tick's
writes are spread evenly, with jitter), so the only randomness is the uniform writer's
collisions: about ``(wT)^2 / 2N`` pages, about 8 at 2,000 writes, with a standard
deviation near 3 pages (0.15 % of the round). The sequential writer has none. Every
decision the policy takes on a dirty count is at least 5 % away from flipping in the
model (asserted), so the simulator cannot stop one round earlier or later on noise.

``python -m tests.toolstack.test_analytic`` prints the table in
``docs/architecture.md`` ("Against the analytic model").
"""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from migrate.toolstack.link import LinkModel, page_data_record_bytes
from migrate.run.predict import predict
from migrate.toolstack.analytic import ModelError, Writer, pass_time
from migrate.run.runner import RunOptions, run_scenario
from migrate.run.scenario import parse_scenario

BANDWIDTH = 10e9 / 8          # bytes/s: 10Gbit/s
TOLERANCE = 0.02

#: (λ, policy, policy_params): parameters that keep every compared round large and
#: every decision clear of its threshold (see the module docstring).
POLICIES = [
    (0.2, "xen", {"max_iterations": 3}),
    (0.4, "xen", {"max_iterations": 5}),
    (0.8, "xen", {"max_iterations": 5}),
    (0.2, "downtime", {"downtime_limit": "300ms"}),
    (0.4, "downtime", {"downtime_limit": "200ms"}),
    (0.8, "downtime", {"downtime_limit": "150ms"}),
]
CASES = [(lam, kind, policy, params) for lam, policy, params in POLICIES for kind in ("uniform", "sequential")]


def model_scenario(lam: float, kind: str, policy: str, params: dict, timing: str = "continuous"):
    """A 1 GiB flat guest whose one writer dirties λ x the link's bandwidth."""
    rate = lam * BANDWIDTH / 4096
    return parse_scenario({
        "name": f"model-{kind}-{lam}", "seed": 3,
        "guest": {"memory": "1GiB", "layout": {"kind": "compact", "holes": []}, "write_timing": timing,
                  "workloads": [{"kind": kind, "rate": f"{rate:.3f}pages/s"}]},
        "link": {"bandwidth": "10Gbit/s", "latency": "1ms"},
        "migration": {"start": "100ms", "policy": policy, "policy_params": params},
    })


def compare(sc):
    """``(round errors, downtime error, model, simulated save)``: relative errors of the
    simulator's pages per round and downtime against the model."""
    res = asyncio.run(run_scenario(sc, RunOptions(verify=False)))
    m = predict(sc)
    save = res.save
    errs = [(r.pages_sent - p.pages_sent) / p.pages_sent for r, p in zip(save.rounds, m.rounds)]
    if len(save.rounds) != len(m.rounds):
        errs.append(math.inf)       # a round more or fewer: no agreement
    down = (save.totals.downtime_s - m.downtime_s) / m.downtime_s
    return errs, down, m, save


@pytest.mark.parametrize("lam,kind,policy,params", CASES, ids=[f"{c[2]}-{c[1]}-{c[0]}" for c in CASES])
def test_every_round_and_the_downtime_follow_the_analytic_model(lam, kind, policy, params):
    sc = model_scenario(lam, kind, policy, params)
    errs, down, m, save = compare(sc)
    assert min(m.margins) >= 0.05, "a decision the model takes near its threshold: choose other parameters"
    assert min(r.pages_sent for r in m.rounds) >= 1900
    assert [r.phase for r in save.rounds] == [r.phase for r in m.rounds]
    assert max(abs(e) for e in errs) < TOLERANCE, [f"{e:+.2%}" for e in errs]
    # What each CLEAN reported, and when the rounds ran.
    for r, p in zip(save.rounds[1:], m.rounds[1:]):
        assert r.dirty_count == pytest.approx(p.dirty_count, rel=TOLERANCE)
        assert r.end_s - r.start_s == pytest.approx(p.end_s - p.start_s, rel=TOLERANCE)
    assert abs(down) < TOLERANCE, f"downtime {save.totals.downtime_s:.6f} s, model {m.downtime_s:.6f} s"
    assert save.totals.total_time_s == pytest.approx(m.total_time_s, rel=TOLERANCE)


@pytest.mark.parametrize("kind", ["uniform", "sequential"])
def test_the_stopped_switchover_follows_the_model_too(kind):
    """``switchover: stopped`` suspends at the decision and sends the held set paused:
    one live pass fewer, and that set is the downtime."""
    lam, policy, params = POLICIES[4]
    sc = model_scenario(lam, kind, policy, params)
    sc = sc.model_copy(update={"migration": sc.migration.model_copy(update={"switchover": "stopped"})})
    errs, down, m, save = compare(sc)
    assert min(m.margins) >= 0.05 and m.rounds[-1].phase == "final"
    assert len(m.rounds) == len(predict(model_scenario(lam, kind, policy, params)).rounds) - 1
    assert max(abs(e) for e in errs) < TOLERANCE and abs(down) < TOLERANCE
    # The paused pass's dirty_count: the final CLEAN's plus the held set (as Xen adds
    # nr_deferred_pages), in the model as in the engine.
    assert save.rounds[-1].dirty_count == pytest.approx(m.rounds[-1].dirty_count, rel=TOLERANCE)
    assert save.rounds[-1].dirty_count >= save.rounds[-1].pages_sent


@pytest.mark.parametrize("kind", ["uniform", "sequential"])
def test_tick_stamped_writes_are_what_missed_the_model(kind):
    """The same save with every write of a tick at its start: the short last rounds
    (tens of ms, a few ticks) and the downtime are off by far more than 2 %; spreading
    the writes in time is what brought them in."""
    lam, policy, params = POLICIES[1]
    errs, down, _, _ = compare(model_scenario(lam, kind, policy, params, timing="tick"))
    assert max(abs(e) for e in errs) > 0.08 and abs(down) > 0.08, ([f"{e:+.2%}" for e in errs], down)


def test_the_distinct_pages_curves():
    u, s = Writer("uniform", 1000.0, 4096), Writer("sequential", 1000.0, 4096)
    assert u.distinct(0) == s.distinct(0) == 0
    assert u.distinct(1.0) == pytest.approx(4096 * (1 - math.exp(-1000 / 4096)))
    assert u.distinct(1e6) == pytest.approx(4096)
    assert s.distinct(2.0) == 2000 and s.distinct(10.0) == 4096


def test_a_pass_costs_what_the_engine_charges_batch_by_batch():
    """``pass_time`` is the engine's own timing (``LinkModel.next_batch_time`` per
    batch of a PAGE_DATA record) for whole pages and for a pass with XTAB entries."""
    link = LinkModel(bandwidth=BANDWIDTH, latency=0.001)
    for pfns, data in ((2500, 2500), (3000, 2100), (1024, 1024)):
        t, nbytes = 0.0, 0
        for lo in range(0, pfns, 1024):
            c = min(1024, pfns - lo)
            d = int(np.clip(data - lo, 0, c))
            b = page_data_record_bytes(c, d)
            t = link.next_batch_time(t, b, d, mapped=d > 0)
            nbytes += b
        secs, model_bytes = pass_time(link, pfns, data)
        assert secs == pytest.approx(t, rel=1e-12) and model_bytes == nbytes


def test_scenarios_outside_the_model_are_refused():
    sc = parse_scenario({"name": "b", "guest": {"memory": "64MiB", "workloads": [{"kind": "hotset", "rate": 100}]}})
    with pytest.raises(ModelError, match="uniform or sequential"):
        predict(sc)
    sc = parse_scenario({"name": "b", "guest": {"memory": "64MiB", "workloads": [{"kind": "uniform", "rate": 100}],
                                                "balloon": {"schedule": [{"at": "1s", "target": "-8MiB"}]}}})
    with pytest.raises(ModelError, match="balloon"):
        predict(sc)


def table() -> str:
    """The table in docs/architecture.md: worst round error and downtime error per case,
    under both write timings."""
    lines = ["| λ | writer | policy | rounds | worst round, continuous | downtime, continuous "
             "| worst round, tick | downtime, tick |", "|---|---|---|---|---|---|---|---|"]
    for lam, kind, policy, params in CASES:
        cells = []
        for timing in ("continuous", "tick"):
            errs, down, m, _ = compare(model_scenario(lam, kind, policy, params, timing))
            worst = max(errs, key=abs)
            cells += ["a round missing" if math.isinf(worst) else f"{worst:+.1%}", f"{down:+.1%}"]
        lines.append(f"| {lam} | {kind} | {policy} {', '.join(f'{k}={v}' for k, v in params.items())} "
                     f"| {len(m.rounds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
