"""``xmig hypervisor``, ``xmig guest``, ``xmig watch``, and ``xmig run --broker``'s helper.

The project card's actors as separate processes through an MQTT broker (what the
hosts of a Xen pool are to each other, with the broker standing in for the network):

    xmig keygen --out run.key                # once (mode 0600); give the file to every actor
    xmig hypervisor --broker mqtt://HOST:1883 --run demo --key-file run.key
    xmig guest      --broker mqtt://HOST:1883 --run demo --key-file run.key --guest examples/balloon.yaml
    xmig watch      --broker mqtt://HOST:1883 --run demo --key-file run.key
    xmig run        --broker mqtt://HOST:1883 --run demo --key-file run.key --guest examples/balloon.yaml

``register(app)`` adds ``hypervisor``, ``guest``, ``watch`` and ``keygen``; ``remote_run``
is what ``xmig run`` calls when given ``--broker``. Every actor needs the run key
(``--key-file`` or ``XMIG_RUN_KEY``) or an explicit ``--insecure``. Errors are one line;
exit 2 for bad input or an unreachable broker or peer, 1 when the migration was aborted
under an actor.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from migrate.errors import TransportError
from migrate.transport.limits import DEFAULT_TIMEOUT
from migrate.transport.runkey import KEY_ENV, RunKeyError, load_key, new_key_text
if TYPE_CHECKING:                      # the MQTT client loads when a command connects
    from migrate.transport.mqtt import BrokerConfig
from migrate.cli.common import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError, _err_console, _guard,
                                recording_failed)

BROKER_HELP = "MQTT broker URL: mqtt://HOST:PORT or mqtts://HOST:PORT (TLS)."
RUN_HELP = "Run id: the actors of one migration share it (topics xmig/<run>/...)."

# The connection options every actor command takes, defined once (typer accepts one
# OptionInfo as the default of several commands).
USERNAME_OPT = typer.Option(None, "--username", help="Broker user name.")
PASSWORD_OPT = typer.Option(None, "--password", help="Broker password (or set XMIG_MQTT_PASSWORD).")
TLS_CA_OPT = typer.Option(None, "--tls-ca", help="CA certificate file for mqtts://.")
TLS_INSECURE_OPT = typer.Option(False, "--tls-insecure", help="Do not check the broker's certificate.")
TIMEOUT_OPT = typer.Option(DEFAULT_TIMEOUT, "--timeout",
                           help="Seconds without an answer before a peer counts as lost.")
KEY_FILE_OPT = typer.Option(None, "--key-file", help=(
    "The run key (make one with `xmig keygen --out run.key`); every actor of the run needs the same "
    f"one. Or set {KEY_ENV}. Refused when others may read it (chmod 600; or set XMIG_KEY_LOOSE_OK=1)."))
INSECURE_OPT = typer.Option(False, "--insecure", help=(
    "Run without a run key: anyone on the broker can then fake this run's messages and results."))


def broker_config(broker: str, *, username: Optional[str] = None, password: Optional[str] = None,
                  tls_ca: Optional[Path] = None, tls_insecure: bool = False,
                  timeout: float = DEFAULT_TIMEOUT, key_file: Optional[Path] = None,
                  insecure: bool = False) -> BrokerConfig:
    """The broker options of every command, checked (``TransportError`` when unusable),
    with the run key (``--key-file``, else ``XMIG_RUN_KEY``; none only with ``insecure``).
    An error never quotes a password given in the URL."""
    import math

    from migrate.transport.mqtt import parse_broker_url

    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise TransportError(f"--timeout: expected a positive, finite number of seconds, found {timeout}")
    try:
        key = load_key(key_file, insecure=insecure)
    except RunKeyError as exc:
        raise TransportError(str(exc)) from None
    try:
        return parse_broker_url(broker, username=username, password=password,
                                tls_ca=None if tls_ca is None else str(tls_ca), tls_insecure=tls_insecure,
                                timeout=timeout, key=key, insecure=insecure)
    except TransportError as exc:
        raise TransportError(_without_password(str(exc), broker, password)) from None


def _without_password(message: str, url: str, password: Optional[str]) -> str:
    """``message`` with the user-info of ``url`` (``mqtt://user:PASS@host``) shown as
    ``user:***`` and a ``--password`` value, should it be quoted, as ``***``."""
    head, at, tail = url.rpartition("@")
    if at and ":" in head.partition("://")[2]:
        scheme, sep, info = head.partition("://")
        user = info.partition(":")[0]
        message = message.replace(url, f"{scheme}{sep}{user}:***@{tail}")
    if password and len(password) >= 4:
        message = message.replace(password, "***")
    return message


async def remote_run(scenario, opts, broker: str | BrokerConfig, run_id: str, bus=None, pacer=None, *,
                     username: Optional[str] = None, password: Optional[str] = None,
                     tls_ca: Optional[Path] = None, tls_insecure: bool = False,
                     timeout: float = DEFAULT_TIMEOUT, key_file: Optional[Path] = None, insecure: bool = False):
    """``xmig run --broker URL --run ID``: the toolstack drives the migration against the
    ``xmig hypervisor`` and ``xmig guest`` of that run; every event of ``bus`` is also
    published for ``xmig watch``. Returns the ``RunResult``. A problem before the
    migration starts (broker unreachable, no hypervisor, run id taken) raises
    ``cli.UsageError`` (one line, exit 2); a peer lost mid-run aborts the migration
    (the result says aborted, the hypervisor resumes the source). Messages the
    toolstack dropped (unsigned, forged, replayed...) are counted in the report's
    ``broker`` object and named in one line on stderr."""
    from migrate.actors import remote_run as _remote_run
    from migrate.transport.base import check_run_id
    from migrate.transport.mqtt import BrokerConfig

    try:
        check_run_id(run_id)
        cfg = broker if isinstance(broker, BrokerConfig) else broker_config(
            broker, username=username, password=password, tls_ca=tls_ca, tls_insecure=tls_insecure,
            timeout=timeout, key_file=key_file, insecure=insecure)
        result = await _remote_run(scenario, opts, broker=cfg, run_id=run_id, bus=bus, pacer=pacer)
    except TransportError as exc:
        raise UsageError(str(exc)) from None
    dropped = (getattr(result, "broker", None) or {}).get("dropped") or {}
    if dropped:
        _echo(f"the toolstack dropped {sum(dropped.values())} messages on the broker that were not this "
              f"run's ({', '.join(f'{n} {r}' for r, n in sorted(dropped.items()))}); the result stands on "
              "authenticated messages only")
    return result


def _echo(text: str) -> None:
    print(f"xmig: {text}", file=sys.stderr, flush=True)


#: How long a stopped actor's clean close may take before it is cancelled again.
_RECANCEL_S = 3.0


def _run_main(coro_fn) -> object:
    """asyncio.run with Ctrl-C, SIGTERM or SIGHUP cancelling the task (clean disconnect)."""

    async def main():
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(coro_fn())

        def stop() -> None:
            # On Python 3.11 a cancel that lands as one of aiomqtt's own wait_for calls
            # completes is lost (the actor would go on waiting for a toolstack): until
            # the task ends, cancel it again every few seconds (past a clean close).
            if not task.done():
                task.cancel()
                loop.call_later(_RECANCEL_S, stop)

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            try:
                loop.add_signal_handler(sig, stop)
            except (NotImplementedError, RuntimeError):
                pass
        return await task

    return asyncio.run(main())


@dataclass(frozen=True, slots=True)
class BrokerOptions:
    """The broker options of a broker command, parsed once: where the broker is, how
    to reach it, the run key (``config``), and the run id."""

    config: BrokerConfig
    run: str


def _usage(message: str) -> None:
    _err_console().print(f"xmig: error: {message}", markup=False)
    raise typer.Exit(EXIT_USAGE)


#: The options every broker command takes, declared once (``broker_command`` adds them).
_BROKER_PARAMS = [
    inspect.Parameter("broker_url", inspect.Parameter.KEYWORD_ONLY, annotation=str,
                      default=typer.Option(..., "--broker", help=BROKER_HELP)),
    inspect.Parameter("run", inspect.Parameter.KEYWORD_ONLY, annotation=str,
                      default=typer.Option(..., "--run", help=RUN_HELP)),
    inspect.Parameter("username", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str], default=USERNAME_OPT),
    inspect.Parameter("password", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str], default=PASSWORD_OPT),
    inspect.Parameter("tls_ca", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path], default=TLS_CA_OPT),
    inspect.Parameter("tls_insecure", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=TLS_INSECURE_OPT),
    inspect.Parameter("timeout", inspect.Parameter.KEYWORD_ONLY, annotation=float, default=TIMEOUT_OPT),
    inspect.Parameter("key_file", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path], default=KEY_FILE_OPT),
    inspect.Parameter("insecure", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=INSECURE_OPT),
]


def broker_command(app: typer.Typer):
    """Register ``fn(broker: BrokerOptions, ...)`` as a command of ``app`` that takes the
    broker options (``_BROKER_PARAMS``) besides its own; they are checked and parsed into
    one ``BrokerOptions`` (a bad one: one line, exit 2) before ``fn`` runs."""

    def deco(fn):
        own = [p for p in inspect.signature(fn).parameters.values() if p.name != "broker"]
        names = [p.name for p in _BROKER_PARAMS]

        @functools.wraps(fn)
        def command(**kwargs):
            given = {n: kwargs.pop(n) for n in names}
            return fn(parse_broker_options(**given), **kwargs)

        command.__signature__ = inspect.Signature(
            [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + _BROKER_PARAMS)
        del command.__wrapped__          # typer reads the signature above, not fn's
        return app.command(name=fn.__name__)(_guard(command))

    return deco


def parse_broker_options(*, broker_url: str, run: str, username=None, password=None, tls_ca=None,
                         tls_insecure=False, timeout=DEFAULT_TIMEOUT, key_file=None, insecure=False) -> BrokerOptions:
    from migrate.transport.base import check_run_id

    try:
        check_run_id(run)
        return BrokerOptions(broker_config(broker_url, username=username, password=password, tls_ca=tls_ca,
                                           tls_insecure=tls_insecure, timeout=timeout, key_file=key_file,
                                           insecure=insecure), run)
    except TransportError as exc:
        _usage(str(exc))


def register(app: typer.Typer) -> None:
    """Add ``keygen``, ``hypervisor``, ``guest`` and ``watch`` to the ``xmig`` app."""
    usage = _usage

    @app.command()
    @_guard
    def keygen(
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the key to this new file (mode 0600) instead of stdout."),
    ) -> None:
        """Make a run key: give the same file to every actor of a run (--key-file).

        Anyone holding it can act as any actor of the run, so share it the way you share
        the broker password (not on the broker). A fresh key per class session is best."""
        import os as _os

        text = new_key_text() + "\n"
        if out is None:
            sys.stdout.write(text)
            return
        try:
            fd = _os.open(out, _os.O_WRONLY | _os.O_CREAT | _os.O_EXCL, 0o600)
        except FileExistsError:
            usage(f"--out: {out} exists; choose a new file (a run key is never overwritten)")
        except OSError as exc:
            usage(f"--out: cannot create {out}: {exc.strerror}")
        with _os.fdopen(fd, "w") as f:
            f.write(text)

    @broker_command(app)
    def hypervisor(
        broker: BrokerOptions,
        serve: bool = typer.Option(False, "--serve", help="Serve run after run (a class's hypervisor) until Ctrl-C."),
    ) -> None:
        """The hypervisor actor: holds the source domain, serves the toolstack, schedules the guest.

        Exits 0 when the toolstack releases the domain, 1 when the toolstack is lost
        (after resuming the source domain, as a failed Xen migration does), 2 when the
        broker cannot be reached or the run id already has a hypervisor. With --serve it
        builds a fresh domain for each toolstack that comes, until Ctrl-C."""
        from migrate.actors import run_actor

        try:
            why = _run_main(lambda: run_actor("hypervisor", broker.config, broker.run, echo=_echo, serve=serve))
        except TransportError as exc:
            usage(str(exc))
        except (KeyboardInterrupt, asyncio.CancelledError):
            raise typer.Exit(EXIT_INTERRUPTED)
        raise typer.Exit(EXIT_OK if why == "released" else EXIT_FAILED)

    @broker_command(app)
    def guest(
        broker: BrokerOptions,
        guest: Path = typer.Option(..., "--guest", "-g", help="Scenario file (YAML) whose guest to run."),
        serve: bool = typer.Option(False, "--serve", help="Serve run after run (a fresh guest each time) until Ctrl-C."),
    ) -> None:
        """The guest actor: runs the scenario's workloads and balloon when the hypervisor schedules it.

        Exits 0 when the hypervisor is done with it, 1 when the hypervisor is lost, 2 for
        a bad scenario file, an unreachable broker or a run id that already has a guest.
        With --serve it boots a fresh guest for each run, until Ctrl-C."""
        from migrate.actors import run_actor
        from migrate.run.scenario import load_scenario

        scenario = load_scenario(guest)
        try:
            why = _run_main(lambda: run_actor("guest", broker.config, broker.run, scenario=scenario, echo=_echo,
                                              serve=serve))
        except TransportError as exc:
            usage(str(exc))
        except (KeyboardInterrupt, asyncio.CancelledError):
            raise typer.Exit(EXIT_INTERRUPTED)
        if why != "released":
            _echo(why)
        raise typer.Exit(EXIT_OK if why == "released" else EXIT_FAILED)

    @broker_command(app)
    def watch(
        broker: BrokerOptions,
        no_dashboard: bool = typer.Option(False, "--no-dashboard", help="Plain progress lines and the run's report as a summary instead of the app."),
        record: Optional[Path] = typer.Option(None, "--record", help="Write every event watched to FILE (xmig replay FILE, xmig explain FILE --gfn N)."),
    ) -> None:
        """The teaching app on a migration on the broker, fed only by its event topics
        (piped or --no-dashboard: progress lines, then the run's report rebuilt from them).

        Start it before or during `xmig run --broker` (a watcher that joins late starts
        from the run's sealed snapshot); it ends with the run: exit 0 only if the
        migration completed and the destination was verified equal to the source, every
        event batch from the start having arrived (live or in the snapshot), sealed with
        the run key; 1 if it failed, the destination diverged, events were missed, it ran
        --insecure, or the toolstack was lost; 2 if it cannot watch (no broker, or
        --insecure on a run sealed with a run key)."""
        from rich.console import Console

        cfg, run = broker.config, broker.run
        console = Console()
        recorder = None
        if record is not None:
            from migrate.events.log import EventRecorder
            from migrate.run.outputs import OutputError, check_target

            try:
                check_target(record, "--record")
            except OutputError as exc:
                usage(str(exc))
            recorder = EventRecorder(record, {"watched_run": run, "broker": cfg.display})
        try:
            from migrate.cli.serve import served

            if (console.is_terminal or served()) and not no_dashboard:
                from migrate.ui.commands import interactive_watch  # the teaching app

                outcome = interactive_watch(lambda listener: watch_run(cfg, run, listener=listener, also=recorder))
            else:
                outcome = _run_main(lambda: watch_run(cfg, run, console=console, also=recorder))
        except TransportError as exc:
            usage(str(exc))
        except (KeyboardInterrupt, asyncio.CancelledError):
            raise typer.Exit(EXIT_INTERRUPTED)
        finally:
            if recorder is not None:
                recorder.close()
        if recording_failed(recorder):
            raise typer.Exit(EXIT_USAGE)
        if outcome != "completed":
            _echo(f"run {run!r}: {outcome}")
        raise typer.Exit(EXIT_OK if outcome == "completed" else EXIT_FAILED)


async def watch_run(cfg: BrokerConfig, run_id: str, *, console=None, listener=None,
                    ready: asyncio.Event | None = None, also=None) -> str:
    """Subscribe to the run's events and hand each to ``listener`` (the app's feed);
    with a ``console`` and no listener, print them as progress lines and, at the end,
    the run's summary: its exact report, rebuilt from the events (``RunSummary`` and
    the one fold, ``migrate.events.fold``). Returns the outcome (``completed``...) or
    why the watch stopped.
    ``ready`` is set once subscribed (events published before that are not seen).
    ``also`` (e.g. an ``EventRecorder``) is called with every event too."""
    from migrate.actors import watch
    from migrate.transport.mqtt import connect as mqtt_transport

    progress = None
    if listener is None and console is not None:
        # Piped or --no-dashboard: Xen-style progress lines and a plain summary, as
        # ``xmig run`` prints them (never escape codes, never a squeezed frame).
        from migrate.ui.progress import PlainProgress

        progress = listener = PlainProgress(sys.stdout, pages=True)
    sinks = [fn for fn in (also, listener) if fn is not None]

    def feed(ev) -> None:
        for fn in sinks:
            fn(ev)

    transport = await mqtt_transport(cfg, run_id, "watch")
    if console is not None:
        _echo(f"watching run {run_id!r} at {cfg.display}")
    try:
        await transport.subscribe_events("hypervisor", lambda items: [feed(ev) for ev in items])
        try:
            outcome = await watch(transport, feed, ready=ready)
        finally:
            if progress is not None:
                progress.close()
        if progress is not None:
            print_watched_summary(progress.run)
        return outcome
    finally:
        await transport.close()


def watched_report(fold) -> dict | None:
    """The run's report as the toolstack wrote it (outside ``wall`` and what the run key
    kept out), rebuilt from the events a ``RunFold`` saw; None if its end never came."""
    from migrate.run.report import build_report
    from migrate.run.runner import result_from_fold

    try:
        return build_report(result_from_fold(fold))
    except ValueError:
        return None


def print_watched_summary(fold) -> None:
    from migrate.ui.progress import print_summary

    report = watched_report(fold)
    if report is None:
        print("xmig: watch: the run's summary never arrived; no summary", file=sys.stderr)
    else:
        print_summary(report, file=sys.stdout)


def main() -> None:
    """``python -m migrate.cli.broker hypervisor|guest|watch ...`` (the same commands as
    ``xmig``, for a tree whose ``xmig`` does not register them)."""
    from migrate.cli.common import stop_signals_interrupt

    stop_signals_interrupt()
    app = typer.Typer(name="xmig", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
    register(app)
    app()


if __name__ == "__main__":
    main()


__all__ = ["register", "remote_run", "broker_config", "watch_run", "watched_report", "main"]
