"""What every ``xmig`` command shares: exit codes, the one-line error for bad input,
and ``_guard``, which turns a user's mistake into that line (exit 2) and a traceback
only with ``--debug``. The command modules import this, never each other."""

from __future__ import annotations

import sys
from typing import Any

import typer
from rich.console import Console

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


from migrate.errors import UsageError  # noqa: E402,F401  (one line, exit code 2)


_state: dict[str, Any] = {"debug": False}


def _err_console() -> Console:
    # Error lines quote what the user typed: never read them as rich markup or emoji
    # codes (``:two:`` stays as typed).
    return Console(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)


def stop_signals_interrupt() -> None:
    """From start-up on, SIGTERM and SIGHUP stop any command as Ctrl-C does (a
    KeyboardInterrupt: one line and exit 130, or the command's own clean stop), instead
    of killing it by the default action mid-way. A running migration, receive or actor
    installs its own handlers on its event loop (``outputs.stop_on_signals``)."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, interrupt)


def recording_failed(recorder, option: str = "--record") -> bool:
    """Whether an ``EventRecorder`` had to stop (a full disk): then one line naming the
    option, the file and what became of it (the run itself went on)."""
    if recorder is None or recorder.error is None:
        return False
    _err_console().print(f"xmig: error: {option}: {recorder.error}")
    return True


def check_seconds(value: float, option: str = "--timeout") -> float:
    """A number of seconds given on the command line: positive and finite (``nan`` and
    ``inf`` are refused in one line, never carried into a timer)."""
    import math

    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"{option}: expected a positive, finite number of seconds, found {value}")
    return value


def _fail_usage(message: str) -> None:
    _err_console().print(f"xmig: error: {message}", markup=False)
    raise typer.Exit(EXIT_USAGE)


def _debug_traceback() -> None:
    """With --debug, print the traceback of the exception being handled (the exit code
    stays the same as without --debug)."""
    if _state["debug"]:
        import traceback

        traceback.print_exc(file=sys.stderr)


#: Exit status when the reader of our output went away (128 + SIGPIPE, as a shell reports it).
EXIT_BROKEN_PIPE = 141


def reader_went_away() -> None:
    """Output piped into ``head`` and the like: the reader closed the pipe, which is no
    error of the user's. Stop quietly (no traceback, no error line); point stdout at
    /dev/null so the interpreter's last flush does not fail again."""
    import os

    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
    except OSError:
        pass
    raise typer.Exit(EXIT_BROKEN_PIPE)


def _guard(fn):
    """Turn user errors into one line and exit 2; tracebacks only with --debug."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from guest.workloads import TraceError

        from migrate.run.outputs import OutputError
        from migrate.toolstack.policy import PolicyError
        from migrate.run.scenario import ScenarioError
        from migrate.stream import StreamError

        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            # Ctrl-C outside a migration (loading, writing outputs, a receive waiting
            # for its sender): nothing to abort, so one line and 130.
            _debug_traceback()
            _err_console().print("xmig: interrupted", markup=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except (UsageError, ScenarioError, PolicyError, StreamError, OutputError, TraceError) as exc:
            _debug_traceback()
            _fail_usage(str(exc))
        except BrokenPipeError:
            reader_went_away()
        except OSError as exc:
            _debug_traceback()
            _fail_usage(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))

    return wrapper


# ---- what the run, compare and replay commands share

def _parse_speed(speed: str) -> float | None:
    from migrate.toolstack.policy import short

    if speed == "max":
        return None
    try:
        value = float(speed)
    except ValueError:
        raise UsageError(f"--speed: expected a number (virtual seconds per wall second) or 'max', found {short(str(speed), 40)!r}") from None
    if not value > 0:   # also rejects nan
        raise UsageError(f"--speed: expected a positive number or 'max', found {short(str(speed), 40)!r}")
    return value


def _default_speed(speed: str | None, interactive: bool) -> float | None:
    if speed is not None:
        return _parse_speed(speed)
    if interactive:
        from migrate.ui.playback import default_tty_speed

        return default_tty_speed()
    return None


def _print_summary(console: Console, rep: dict[str, Any]) -> None:
    """The run's summary (passes, totals, verdict) after the app closes; plain text (no
    escape codes) when piped."""
    if console.is_terminal:
        from migrate.ui.progress import render_summary

        console.print(render_summary(rep))
    else:
        from migrate.ui.progress import print_summary

        print_summary(rep, file=sys.stdout)
