"""``xmig sweep FILE --out results.parquet``: a parameter study of many migrations.

The sweep file (``migrate.sweep.spec``) names a base scenario and the axes to move it
along; every combination runs through the same in-process runner as ``xmig run``, on
local worker processes or on a Dask cluster (``migrate.sweep.engines``), and lands as
one row in the results (``migrate.sweep.results``). ``register(app)`` adds the command.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

SWEEP_HELP = (
    "Run a parameter study: every combination of a sweep file's axes, one migration each, "
    "one row per run in a Parquet or CSV file.\n\n"
    "Example: xmig sweep examples/sweeps/balloon-deflate-sweep.yaml --out deflate.parquet "
    "--summary guest.balloon.schedule[1].at --plot deflate.png\n\n"
    "Runs go to local worker processes (--workers, default: one per core), or to a Dask "
    "cluster with --scheduler tcp://HOST:8786 (started with 'dask scheduler --port 8786' and "
    "'dask worker tcp://HOST:8786 --nworkers 2 --nthreads 1' on machines where xmig is "
    "installed). Rows are appended to OUT.part as runs finish; OUT is written in the sweep's "
    "order at the end, or when interrupted (Ctrl-C, SIGTERM, SIGHUP). --resume skips runs already "
    "in OUT or OUT.part (after checking every row is one of this sweep's runs). A run that fails (a combination the scenario rules refuse, an aborted "
    "migration) is a row with its error.\n\n"
    "Exit codes: 0 every run completed (pre-fix divergence is a result, not a failure); 1 some "
    "run did not complete (see its error column); 2 bad input (sweep file, option, "
    "unreachable scheduler), one line; 130 interrupted (OUT holds the runs finished so far)."
)


class _Bar:
    """Runs done, failed, rate and ETA: a rich bar on a terminal, a plain line every few
    seconds otherwise (no escape codes in logs)."""

    PLAIN_EVERY = 5.0

    def __init__(self, console, label: str):
        self.console = console
        self.label = label
        self.failed = 0
        self.done = 0
        self.total = 0
        self._bar = None
        self._task = None
        self._t0 = 0.0
        self._last = 0.0
        self._ran = 0

    def planning(self, text: str) -> None:
        print(f"xmig sweep: planning: {text}", file=sys.stderr, flush=True)

    def start(self, total: int, done: int) -> None:
        self.total, self.done, self._t0 = total, done, time.perf_counter()
        self._last = self._t0
        if self.console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("runs, [red]{task.fields[failed]}[/] failed,"),
                                 TextColumn("{task.fields[rate]} runs/s,"), TextColumn("ETA"),
                                 TimeRemainingColumn(), TimeElapsedColumn(), console=self.console)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=total, completed=done, failed=0, rate="-")
        else:
            self._line(force=True)

    def _rate(self) -> float:
        el = time.perf_counter() - self._t0
        return self._ran / el if el > 0 else 0.0

    def advance(self, row: dict[str, Any]) -> None:
        self.done += 1
        self._ran += 1
        self.failed += row.get("outcome") != "completed"
        if self._bar is not None:
            self._bar.update(self._task, advance=1, failed=self.failed, rate=f"{self._rate():.1f}")
        else:
            self._line()

    def _line(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last < self.PLAIN_EVERY and self.done < self.total:
            return
        self._last = now
        rate = self._rate()
        left = self.total - self.done
        eta = f"{left / rate:.0f}s" if rate > 0 else "-"
        print(f"xmig sweep: {self.done}/{self.total} runs, {self.failed} failed, {rate:.1f} runs/s, ETA {eta}",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self.done < self.total:
            self._line(force=True)


def register(app: typer.Typer) -> None:
    """Add ``sweep`` to the ``xmig`` app."""
    from migrate.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UsageError, _guard

    @app.command(short_help="Run a parameter study (many migrations) and write one row per run.",
                 help=SWEEP_HELP)
    @_guard
    def sweep(
        file: Path = typer.Argument(..., help="Sweep file (YAML): base scenario and axes; see examples/sweeps/."),
        out: Path = typer.Option(..., "--out", "-o", help="Results file: .parquet or .csv (one row per run)."),
        fmt: Optional[str] = typer.Option(None, "--format", help="parquet or csv (default: from --out's extension)."),
        workers: Optional[int] = typer.Option(None, "--workers", "-j", help="Local worker processes (default: one per core)."),
        scheduler: Optional[str] = typer.Option(None, "--scheduler", help="tcp://HOST:8786: run on this Dask distributed cluster instead."),
        resume: bool = typer.Option(False, "--resume", help="Keep the runs already in OUT (and OUT.part) and run only the rest."),
        summary: Optional[str] = typer.Option(None, "--summary", help="Print METRIC grouped by this axis: mean, min, max, 95% interval."),
        metric: str = typer.Option("missing", "--metric", help="The outcome --summary and --plot show (missing, stale, data_pages, downtime_s, ...)."),
        plot: Optional[Path] = typer.Option(None, "--plot", help="Draw METRIC against the --summary axis (or the first axis), one line per behaviour or policy (PNG; needs matplotlib)."),
        allow_policy: Optional[list[str]] = typer.Option(
            None, "--allow-policy", metavar="MODULE:FUNCTION",
            help="Enable your own policy function for the sweep's runs (repeatable), as xmig run does; "
                 "local workers inherit it, Dask workers need $XMIG_ALLOW_POLICY set where they run."),
    ) -> None:
        from rich.console import Console

        from migrate.sweep import engines, results, session, spec, stats
        from migrate.toolstack.policy import ALLOW_ENV, PolicyError, allowed_policies

        bar = _Bar(Console(stderr=True), str(file))
        try:
            try:
                allowed = allowed_policies(allow_policy or ())
            except PolicyError as exc:
                raise UsageError(str(exc)) from None
            plan = spec.load_sweep(file, allowed=allowed, tick=spec.Ticker(bar.planning))
            bar.label = plan.name
            if allowed:
                os.environ[ALLOW_ENV] = ",".join(sorted(allowed))   # inherited by the local workers
            form = results.format_of(out, fmt)
            if form == "parquet":
                results.require_parquet()
            from migrate.run.outputs import OutputError, check_targets

            try:
                check_targets({"--out": out, "--out's part file": results.part_path(Path(out)), "--plot": plot},
                              {"the sweep file": file, "the base scenario": Path(plan.base_source)})
            except OutputError as exc:
                raise UsageError(str(exc)) from None
            if plot is not None:
                from migrate.ui.plot import PlotError, load_matplotlib

                try:
                    load_matplotlib()
                except PlotError as exc:
                    raise UsageError(f"--plot: {exc}") from None
            axis = summary or (plan.axis_names[0] if plan.axis_names else "behaviour")
            stats.check([], axis, metric, plan.axis_names)
            if workers is not None and workers < 1:
                raise UsageError(f"--workers: expected 1 or more, found {workers}")
            if scheduler is not None and workers is not None:
                raise UsageError("--workers is for local runs; a Dask cluster has the workers its "
                                 "'dask worker' processes started")
            if scheduler is not None:
                from migrate.sweep.scheduler import SchedulerError, check_scheduler

                try:
                    check_scheduler(scheduler)            # not a scheduler: one line in seconds
                except SchedulerError as exc:
                    raise UsageError(str(exc)) from None
                try:
                    engines.dask_client(scheduler).close()    # unreachable: one line now, not later
                except engines.EngineError:
                    raise
                except Exception as exc:   # dask's own (a tls:// address without TLS settings...)
                    raise UsageError(f"--scheduler: {scheduler}: {type(exc).__name__}: "
                                     f"{' '.join(str(exc).split())[:160]}") from None
                engine = lambda pts: engines.dask_rows(plan, pts, scheduler)  # noqa: E731
            else:
                n = workers or engines.default_workers()
                engine = lambda pts: engines.local_rows(plan, pts, n)  # noqa: E731
            # piped: wide enough that the summary table never wraps its numbers
            console = Console() if Console().is_terminal else Console(width=200)
            outcome = session.run_sweep(plan, out, form, engine, resume=resume, progress=bar)
        except (spec.SweepError, results.ResultsError, engines.EngineError, stats.StatsError) as exc:
            raise UsageError(str(exc)) from None
        failed = sum(r.get("outcome") != "completed" for r in outcome.rows)
        console.print(f"xmig sweep: {len(outcome.rows)} of {outcome.total} runs in {out} "
                      f"({outcome.skipped} kept from before, {outcome.ran} run now in {outcome.wall_s:.1f}s, "
                      f"{failed} not completed)", markup=False, emoji=False, soft_wrap=True)
        if outcome.error:
            from migrate.cli.common import _err_console

            _err_console().print(f"xmig: error: the sweep stopped: {outcome.error}; {out} holds the "
                                 f"{len(outcome.rows)} runs finished so far; --resume continues", markup=False)
            raise typer.Exit(EXIT_FAILED)
        if outcome.interrupted:
            console.print(f"xmig: interrupted: {out} holds the {len(outcome.rows)} runs finished so far; "
                          "run again with --resume to finish the sweep", markup=False, emoji=False, soft_wrap=True)
            raise typer.Exit(EXIT_INTERRUPTED)
        if summary is not None:
            console.print(stats.summary_table(outcome.rows, axis, metric))
        if plot is not None:
            from migrate.ui.plot import PlotError

            try:
                stats.write_plot(plot, outcome.rows, axis, metric, unit=plan.units.get(axis, ""),
                                 title=f"{plan.name}: {metric} by {axis}")
            except PlotError as exc:
                raise UsageError(f"--plot: {exc}") from None
        raise typer.Exit(EXIT_OK if failed == 0 else EXIT_FAILED)
