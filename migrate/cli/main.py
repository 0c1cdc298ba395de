"""The ``xmig`` command line: what ``xl migrate`` / ``xl migrate-receive`` are to Xen.

Exit codes: 0 migrated and verified; 1 the migration failed or aborted, or the
destination has missing or stale pages (or, for ``inspect``, the stream is malformed);
2 bad input (scenario file, option, unreachable peer, port in use); 130 interrupted.

The commands live one group per module beside this one (run, compare, stream, broker,
teach, sweep); each imports what its command needs when it runs, so ``xmig --help``
loads none of the simulator.
"""

from __future__ import annotations

import json
import sys

import typer

from migrate.cli import broker as cli_broker
from migrate.cli import compare as cli_compare
from migrate.cli import examples as cli_examples
from migrate.cli import run as cli_run
from migrate.cli import serve as cli_serve
from migrate.cli import stream as cli_stream
from migrate.cli import sweep as cli_sweep
from migrate.cli import teach as cli_teach
from migrate.cli.common import EXIT_INTERRUPTED, _state
from migrate.cli.checks import _short


class _OneLineErrors(typer.core.TyperGroup):
    """typer's own usage errors (a missing option, a bad integer, an unknown command)
    as one line ``xmig: error: ...`` with exit 2, like every other bad input, instead of
    a boxed multi-line panel."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:   # typer >= 0.17 carries its own copy of click
            from typer import _click as click
        except ImportError:
            import click

        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.ClickException as e:
            if type(e).__name__ == "NoArgsIsHelpError":     # bare `xmig`: the help, as before
                click.echo(e.ctx.get_help() if e.ctx is not None else e.format_message())
            else:
                ctx = getattr(e, "ctx", None)
                where = ctx.command_path if ctx is not None else "xmig"
                msg = " ".join(e.format_message().split())
                click.echo(f"xmig: error: {_short(msg, 200)} (see '{where} --help')", err=True)
            rv = e.exit_code
        except typer.Abort:
            click.echo("xmig: interrupted", err=True)
            rv = EXIT_INTERRUPTED
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv

app = typer.Typer(
    cls=_OneLineErrors,
    name="xmig",
    help=(
        "xmig: watch Xen live-migrate a guest, and see the P2M/log-dirty fix at work.\n\n"
        "A simulated Xen (P2M, M2P, log-dirty tree) runs a simulated guest that writes memory "
        "and balloons; a toolstack runs Xen's precopy loop and writes a real migration-stream-v2 "
        "image; the destination restores it and is checked page by page.\n\n"
        "Start with:  xmig run --guest examples/balloon.yaml\n"
        "Then:        xmig compare --guest examples/balloon.yaml\n\n"
        "Exit codes: 0 migrated and verified; 1 the migration failed or aborted, the destination "
        "has missing or stale pages, or (inspect) the stream is malformed; 2 bad input (scenario "
        "file, option, unit, unreachable peer, port in use), one line, no traceback unless --debug; "
        "130 interrupted (Ctrl-C aborts the migration and the source resumes)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show a traceback on errors.")) -> None:
    _state["debug"] = debug


# One module per command group; the order here is the order ``xmig --help`` lists them.
cli_run.register(app)          # ``xmig run``
cli_compare.register(app)      # ``xmig compare``
cli_stream.register(app)       # ``xmig receive``, ``xmig inspect``


@app.command()
def schema() -> None:
    """Print the scenario file's JSON Schema (for editors)."""
    from migrate.run.scenario import scenario_json_schema

    typer.echo(json.dumps(scenario_json_schema(), indent=2))



# ``xmig hypervisor``, ``xmig guest`` and ``xmig watch`` (the MQTT actors).
cli_broker.register(app)
cli_teach.register(app)
cli_sweep.register(app)  # ``xmig sweep`` (parameter studies)
cli_examples.register(app)  # ``xmig examples`` (the shipped scenarios)
cli_serve.register(app)     # ``xmig serve`` (the app in web browsers)


def main() -> None:
    from migrate.heap import keep_freed_arrays
    from migrate.cli.common import reader_went_away, stop_signals_interrupt

    stop_signals_interrupt()     # SIGTERM and SIGHUP act as Ctrl-C from the first moment

    keep_freed_arrays()          # every xmig process: the run, the actors, a sweep's workers
    try:
        app()
    except BrokenPipeError:      # a command that printed before its own guard could see it
        try:
            reader_went_away()
        except typer.Exit as done:
            sys.exit(done.exit_code)


if __name__ == "__main__":
    main()
