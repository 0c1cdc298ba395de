"""The interactive side of ``xmig run``, ``compare``, ``watch`` and ``replay``: build the
app for the command, run it in the terminal, hand back what the command reports.

The commands themselves (``migrate/cli/run.py``, ``compare.py``, ``teach.py``,
``broker.py``) keep their options, checks, reports and plain output; they call here
only when a person watches.
"""

from __future__ import annotations

from typing import Callable

from migrate.ui.app import XmigApp, run_app


def interactive_run(scenario, opts, *, speed: float | None, guided: bool = False, record_map: bool = False,
                    run=None, listeners=(), detail: bool = False):
    """One migration in the app (``run(scenario, opts, bus=, pacer=)``, by default in
    this process). Returns (result, interrupted, recorder) like ``cli._one_run``:
    ``interrupted`` when ``q`` aborted a migration still running."""
    from migrate.ui.gfnmap import GfnMapRecorder

    recorder = GfnMapRecorder() if record_map else None
    app = XmigApp.for_run(scenario, opts, speed=speed, guided=guided, run=run, detail=detail,
                          listeners=tuple(listeners) + ((recorder,) if recorder is not None else ()))
    result = run_app(app)[0]
    interrupted = result is not None and result.save.outcome == "aborted"
    return result, interrupted, recorder


def interactive_compare(scenario, variants: list, labels: list[str], *, speed: float | None,
                        guided: bool = False, listeners: list | None = None) -> list:
    """Both runs in the app on one clock; returns their ``RunResult``s (None if quit
    before a run started). ``listeners[i]`` are subscribed to run i's events too."""
    app = XmigApp.for_compare(scenario, variants, labels, speed=speed, guided=guided, listeners=listeners)
    return run_app(app)


def interactive_watch(watch: Callable, *, guided: bool = False) -> str:
    """``watch(listener)``: subscribe and return the outcome (``cli_broker.watch_run``)."""
    app = XmigApp.for_watch(watch, guided=guided)
    out = run_app(app)[0]
    return out if out is not None else "stopped (quit before the run ended)"


def interactive_replay(events: list, *, speed: float | None, guided: bool = False) -> None:
    run_app(XmigApp.for_replay(events, speed=speed, guided=guided))


__all__ = ["interactive_compare", "interactive_replay", "interactive_run", "interactive_watch"]
