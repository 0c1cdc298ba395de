"""The analytic model's prediction for a scenario file: the bridge from a ``Scenario``
(the run layer) to ``migrate.toolstack.analytic`` (which knows only writers, links and
policies). ``python -m tests.toolstack.test_analytic`` prints the comparison."""

from __future__ import annotations

from migrate.run.runner import RunOptions, run_settings
from migrate.toolstack.analytic import ModelError, ModelResult, Writer, precopy
from migrate.toolstack.policy import Policy, make_policy


def predict(scenario, *, policy: Policy | None = None) -> ModelResult:
    """The model's prediction for a scenario (``migrate.run.scenario.Scenario``) in its
    scope: a flat guest without balloon or PoD, and one uniform or wrapping sequential
    workload running through the whole save."""
    g = scenario.guest
    if g.pod or g.balloon.schedule or len(g.workloads) != 1:
        raise ModelError("the model needs a guest without PoD or balloon steps and exactly one workload")
    w = g.workloads[0]
    if w.kind not in ("uniform", "sequential") or (w.kind == "sequential" and not w.wrap):
        raise ModelError("the model's workload is uniform or sequential with wrap")
    mig = scenario.migration
    if w.start > mig.start or w.stop is not None:
        raise ModelError("the model's workload writes through the whole save (start before it, no stop)")
    from guest.layout import GuestLayout

    lay = GuestLayout(g.layout, g.maxmem_pages)
    pages = lay.nr_pages
    p2m_size = int(lay.ram_gfns()[-1]) + 1
    if p2m_size != pages or lay.mmio_gfns().size or lay.special.size:
        raise ModelError("the model needs a flat guest (layout: {kind: compact, holes: []}): RAM pages "
                         "0..N-1 and no special pages")
    settings = run_settings(scenario, RunOptions())      # the link and policy a run uses
    if policy is None:
        policy = make_policy(settings.policy, settings.policy_params, p2m_size=p2m_size)
    from guest.config import resolve_region

    lo, hi = resolve_region(w.region, pages)
    return precopy(Writer(w.kind, float(w.rate), hi - lo), p2m_size, settings.link, policy,
                   t_start=float(mig.start), switchover=mig.switchover)
