"""One run of a sweep, as every engine executes it: the sweep's axis values applied
to the base scenario, validated by ``migrate.run.scenario``, run by the same in-process
runner as ``xmig run`` (``runner.run_scenario``) and summarised from the same report
(``report.build_report``), so a row holds what ``xmig run`` would report for those
values. Any failure (a combination the scenario rules refuse, a policy that will not
load, an exception in the run) becomes a row with its error, never an exception that
ends the sweep.
"""

from __future__ import annotations

import asyncio
import traceback
from typing import Any

from migrate.sweep.results import row_from_report

# The base scenario of the sweep this worker process serves (set once per process by
# ``init_worker`` so a local pool does not pickle it with every run).
_BASE: dict[str, Any] = {}


def init_worker(base: dict[str, Any], source: str, axes: list[str], quiet_sigint: bool = True) -> None:
    """Pool initializer: remember the sweep's base; leave Ctrl-C to the parent, which
    stops the sweep and writes what has finished."""
    import signal

    if quiet_sigint:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # a closed terminal is the parent's to handle too; SIGTERM is how it stops us
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _BASE.clear()
    _BASE.update(base=base, source=source, axes=axes)


def run_point_here(key: str, values: tuple) -> dict[str, Any]:
    """Run one point with the base given to ``init_worker``."""
    return run_point(_BASE["base"], _BASE["source"], _BASE["axes"], key, values)


def run_point(base: dict[str, Any], source: str, axes: list[str], key: str, values) -> dict[str, Any]:
    """Run the scenario ``base`` with ``axes[i] = values[i]``; return the row's outcome
    columns plus ``key`` (the run's identity, see ``spec.run_key``)."""
    from migrate.run.report import build_report
    from migrate.run.runner import run_scenario
    from migrate.run.scenario import ScenarioError, parse_scenario
    from migrate.sweep.spec import SweepError, apply_values

    try:
        data = apply_values(base, list(zip(axes, values)))
        scenario = parse_scenario(data, source)
    except (ScenarioError, SweepError) as e:
        return {"key": key, **row_from_report(None, outcome="invalid", error=str(e))}
    try:
        # the user policies enabled for this process: the sweep's --allow-policy reaches
        # local workers through $XMIG_ALLOW_POLICY; a Dask worker's own environment says
        from migrate.run.runner import RunOptions
        from migrate.toolstack.policy import allowed_policies

        result = asyncio.run(run_scenario(scenario, RunOptions(allow_policies=allowed_policies())))
    except Exception as e:  # a run that breaks is a row with its error, not a crashed sweep
        last = traceback.extract_tb(e.__traceback__)[-1:] if e.__traceback__ else []
        where = f" (at {last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno})" if last else ""
        return {"key": key, **row_from_report(None, outcome="error",
                                              error=f"{type(e).__name__}: {e}{where}",
                                              seed=scenario.seed, behaviour=scenario.migration.xen_behaviour,
                                              policy=scenario.migration.policy)}
    return {"key": key, **row_from_report(build_report(result))}
