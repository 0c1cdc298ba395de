"""``xmig compare``: the same scenario and seed under fixed and pre-fix (or two
policies), side by side: the question Xen's P2M/log-dirty fix answers (the four call
sites of ``p2m.c`` that mark a removed GFN clean and an added GFN dirty)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from migrate.cli.checks import (ALLOW_POLICY_OPT, _allowed, _check_behaviour, _check_outputs, _check_plot_possible,
                                _check_policy, _check_seed, _load, _parse_bandwidth, _save_outputs, _write_plot)
from migrate.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UsageError, _default_speed, _guard
from migrate.cli.migration import one_run


def compare(
    guest: Path = typer.Option(..., "--guest", "-g", help="Scenario file (YAML)."),
    seed: Optional[int] = typer.Option(None, help="Override the scenario's seed (both runs use it)."),
    policy: Optional[str] = typer.Option(None, help="Compare policies instead, e.g. --policy xen,downtime (behaviour from the scenario or --behaviour)."),
    behaviour: Optional[str] = typer.Option(None, "--behaviour", "-b", help="With --policy A,B: the behaviour for both runs."),
    bandwidth: Optional[str] = typer.Option(None, help="Link bandwidth, e.g. 1Gbit/s."),
    report: Optional[Path] = typer.Option(None, help="Write both reports into one JSON file."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Write both runs' per-pass tables as one CSV."),
    plot: Optional[Path] = typer.Option(None, help="Draw both runs side by side (PNG)."),
    speed: Optional[str] = typer.Option(None, help="In the app: virtual seconds per wall second (default 0.4), or 'max'."),
    guided: bool = typer.Option(False, "--guided", help="In the app: pause at every event of interest of either run."),
    no_dashboard: bool = typer.Option(False, "--no-dashboard", help="Only the table at the end, no live side-by-side app."),
    allow_policy: Optional[list[str]] = ALLOW_POLICY_OPT,
) -> None:
    """Run the scenario under fixed and pre-fix (or two policies) with one seed, side by side:
    live on one virtual clock in a terminal, then the table."""
    from rich.console import Console

    from migrate.run.outputs import jsonable, write_json
    from migrate.run.report import SCHEMA_VERSION, build_report, write_csv
    from migrate.run.runner import RunOptions

    scenario = _load(guest)
    bw = _parse_bandwidth(bandwidth)
    _check_behaviour(behaviour)
    _check_seed(seed)
    allowed = _allowed(allow_policy)
    from migrate.run.scenario import check_scenario_policy

    check_scenario_policy(scenario, guest, policy, allowed)
    _check_outputs(guest, scenario, report=report, csv=csv, plot=plot)
    _check_plot_possible(plot)
    if policy:
        names = [p.strip() for p in policy.split(",") if p.strip()]
        if len(names) < 2:
            raise UsageError("--policy: give two or more policies separated by commas, e.g. xen,downtime")
        for n in names:
            _check_policy(n, allowed)
        variants = [RunOptions(behaviour=behaviour, policy=n, bandwidth=bw, seed=seed, allow_policies=allowed)
                    for n in names]
        labels = names
    else:
        variants = [RunOptions(behaviour=b, bandwidth=bw, seed=seed, allow_policies=allowed)
                    for b in ("fixed", "pre-fix")]
        labels = ["fixed", "pre-fix"]
    console = Console()
    reps = []
    live = None
    if console.is_terminal and not no_dashboard:
        from migrate.ui.gfnmap import GfnMapRecorder
        from migrate.ui.commands import interactive_compare

        recs = [GfnMapRecorder() if plot is not None else None for _ in variants]
        results = interactive_compare(scenario, variants, labels, speed=_default_speed(speed, True), guided=guided,
                                      listeners=[[r] if r is not None else [] for r in recs])
        live = iter([(r, r is None or r.save.outcome == "aborted", rec) for r, rec in zip(results, recs)])
    interrupted = False
    for opts in variants:
        if live is not None:
            result, interrupted, recorder = next(live)
        else:
            result, interrupted, recorder = one_run(scenario, opts, dashboard=False, speed=None, console=console,
                                                    record_map=plot is not None, quiet=True)
        if result is not None:
            rep = build_report(result)
            if recorder is not None:
                rep["gfn_map"] = recorder.as_list()
            if interrupted:
                rep["outcome"] = "aborted"
            reps.append(rep)
        if interrupted:
            # as ``run`` does: the runs so far (the aborted one says so) still go to
            # --report and --csv; the table needs every run, so it is left out
            console.print("xmig: interrupted: the migration was aborted and the source domain resumed",
                          markup=False, soft_wrap=True)
            break
    if not interrupted:
        console.print(_compare_table(labels, reps))
    both = {"schema_version": SCHEMA_VERSION, "compare": labels, "runs": reps}
    _save_outputs({"--report": (report, lambda p: write_json(p, both)),
                   "--csv": (csv, lambda p: write_csv(p, reps)),
                   "--plot": (None if interrupted else plot, lambda p: _write_plot(p, reps))},
                  dump=lambda: json.dumps(both, indent=2, default=jsonable) + "\n")
    if interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    raise typer.Exit(EXIT_OK if all(r["outcome"] == "completed" for r in reps) else EXIT_FAILED)


def _compare_table(labels: list[str], reps: list[dict[str, Any]]):
    from rich.table import Table

    t = Table(title=f"xmig compare: {reps[0]['scenario']} (seed {reps[0]['seed']})")
    t.add_column("")
    for label in labels:
        t.add_column(label, justify="right")

    def row(name, fn):
        t.add_row(name, *[fn(r) for r in reps])

    def v(r, k):
        return "-" if r["verify"] is None else f"{r['verify'][k]:,}"

    row("behaviour", lambda r: r["behaviour"])
    row("policy", lambda r: r["policy"]["name"])
    row("outcome", lambda r: r["outcome"])
    row("passes (live + final)", lambda r: f"{r['totals']['iterations']} + 1")
    row("data pages sent", lambda r: f"{r['totals']['pages_sent']:,}")
    row("XTAB entries", lambda r: f"{r['totals']['xtab_sent']:,}")
    row("  of which after pass 1", lambda r: f"{sum(x['xtab_sent'] for x in r['rounds'][1:] if x['phase'] != 'verify'):,}")
    row("stream bytes", lambda r: f"{r['totals']['bytes']:,}")
    row("total time (virtual s)", lambda r: f"{r['totals']['total_time_s']:.3f}")
    row("downtime (virtual ms)", lambda r: f"{r['totals']['downtime_s'] * 1000:.1f}")
    def pages(r, k):
        n = (r.get("pages") or {}).get(k)
        return "-" if n is None else f"{n:,}"

    # the app's compare rows of the same names show these same report numbers
    row("leftover bits", lambda r: pages(r, "leftover_bits"))
    row("lost additions", lambda r: pages(r, "unmarked_additions"))
    row("missing pages", lambda r: v(r, "missing_pages"))
    row("stale pages", lambda r: v(r, "stale_pages"))
    row("extra pages", lambda r: v(r, "extra_pages"))
    row("verdict", lambda r: "OK" if r["outcome"] == "completed" and r["verify"] and r["verify"]["ok"]
        else ("FAILED" if r["outcome"] != "completed" else "DIVERGED"))
    from migrate.ui.compare import cheaper_because_skipped

    note = cheaper_because_skipped(labels, reps)
    if note:
        t.caption, t.caption_justify = note, "left"
    return t



def register(app: typer.Typer) -> None:
    """Add ``compare`` to the ``xmig`` app."""
    app.command()(_guard(compare))
