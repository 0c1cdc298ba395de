"""The ``xmig`` command line: what ``xl migrate`` / ``xl migrate-receive`` are to Xen.

Exit codes: 0 migrated and verified; 1 the migration failed or aborted, or the
destination has missing or stale pages (or, for ``inspect``, the stream is malformed);
2 bad input (scenario file, option, unreachable peer, port in use); 130 interrupted.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from migrate.run import outputs
from migrate.cli import broker as cli_broker
from migrate.cli import examples as cli_examples
from migrate.cli import sweep as cli_sweep
from migrate.cli import teach as cli_teach
from migrate.cli.common import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError, _default_speed,
                         _err_console, _guard, _print_summary, _state, check_seconds, recording_failed)

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


# --------------------------------------------------------------------------- helpers


def _load(guest: Path):
    from migrate.run.runner import memory_shortfall
    from migrate.run.scenario import load_scenario

    scenario = load_scenario(guest)
    why = memory_shortfall(scenario)
    if why is not None:
        field = "guest.maxmem" if scenario.guest.maxmem != scenario.guest.memory else "guest.memory"
        raise UsageError(f"{guest}: {field}: expected {why}")
    return scenario


def _parse_bandwidth(text: Optional[str]) -> Optional[float]:
    if text is None:
        return None
    from guest.units import parse_bandwidth

    try:
        return float(parse_bandwidth(text))
    except ValueError as exc:
        raise UsageError(f"--bandwidth: {exc}") from None


def _check_behaviour(b: Optional[str]) -> Optional[str]:
    if b is not None and b not in ("fixed", "pre-fix"):
        raise UsageError(f"--behaviour: expected 'fixed' or 'pre-fix', found {_short(b)!r}")
    return b


def _check_seed(seed: Optional[int]) -> Optional[int]:
    # The same range as a scenario file's seed: (scenario.py, Scenario.seed).
    if seed is not None and not 0 <= seed <= (1 << 63) - 1:
        raise UsageError(f"--seed: expected an integer from 0 to 2^63-1, found {_short(seed)}")
    return seed


ALLOW_POLICY_OPT = typer.Option(
    None, "--allow-policy", metavar="MODULE:FUNCTION",
    help="Enable your own policy function (repeatable), e.g. --allow-policy mypkg.policies:mine. "
         "A scenario file may name only built-in policies and the ones enabled here or in "
         "$XMIG_ALLOW_POLICY; nothing else is imported.")


def _allowed(allow_policy: Optional[list[str]]) -> frozenset[str]:
    from migrate.toolstack.policy import PolicyError, allowed_policies

    try:
        return allowed_policies(allow_policy or ())
    except PolicyError as exc:
        raise UsageError(str(exc)) from None


def _check_policy(name: Optional[str], allowed: frozenset[str] = frozenset()) -> None:
    if name is None:
        return
    from migrate.toolstack.policy import PolicyError, make_policy

    try:
        make_policy(name, {}, p2m_size=1, allowed=allowed)
    except PolicyError as exc:
        raise UsageError(f"--policy: {exc}") from None


def _check_stream_target(stream: Optional[str]) -> None:
    if stream is None:
        return
    if stream.startswith("tcp://"):
        host, sep, port = stream[len("tcp://"):].rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise UsageError(f"--stream: bad target {_short(stream)!r}: expected tcp://HOST:PORT "
                             "(an 'xmig receive --listen HOST:PORT'), e.g. tcp://127.0.0.1:8002")
        return
    if "://" in stream:
        raise UsageError(f"--stream: expected a file path or tcp://HOST:PORT, found {_short(stream)!r}")


def _check_plot_possible(plot: Optional[Path]) -> None:
    """--plot needs matplotlib (an optional extra): say so before the run, not after it."""
    if plot is None:
        return
    from migrate.ui.plot import PlotError, load_matplotlib

    try:
        load_matplotlib()
    except PlotError as exc:
        raise UsageError(f"--plot: {exc}") from None


async def _run_with_interrupt(coro_fn):
    """Run ``coro_fn()`` so that Ctrl-C, SIGTERM or SIGHUP cancels it (the engine then
    aborts cleanly, resumes the source domain and removes a half-written stream file)
    instead of killing the process mid-stream."""
    task = asyncio.ensure_future(coro_fn())
    interrupted = {"yes": False}

    def on_stop() -> None:
        interrupted["yes"] = True
        task.cancel()

    with outputs.stop_on_signals(on_stop):
        result = await task
        for _ in range(3):       # a stop signal delivered just before the end still counts:
            await asyncio.sleep(0)   # the loop reads it, then calls on_stop, one turn each
    return result, interrupted["yes"]


def _short(text: Any, limit: int = 40) -> str:
    from migrate.toolstack.policy import short

    return short(str(text), limit)


def _check_outputs(guest: Path, scenario, **targets: Any) -> None:
    """Every output target, before the run: a regular file or a new one, each its own
    file, none of them the scenario or a trace it reads."""
    inputs: dict[str, Any] = {"the scenario file": guest}
    for i, w in enumerate(scenario.guest.workloads):
        if getattr(w, "path", None):
            inputs[f"the trace of guest.workloads[{i}]"] = w.path
    named = {f"--{k}": v for k, v in targets.items()}
    stream = named.get("--stream")
    if stream is not None and str(stream).startswith("tcp://"):
        named.pop("--stream")
    outputs.check_targets(named, inputs)


def _save_outputs(items: dict[str, Any], dump) -> None:
    """Write the results; when a write fails say where they went instead, exit 2."""
    problems = outputs.write_results({k: v for k, v in items.items() if v[0] is not None}, dump=dump)
    for line in problems:
        _err_console().print(f"xmig: error: {line}", markup=False, soft_wrap=True)
    if problems:
        raise typer.Exit(EXIT_USAGE)


def _runner_for(remote: Optional[dict[str, Any]]):
    """``run(scenario, opts, *, bus, pacer)``: in this process, or driving the actors of
    ``remote`` (broker settings) over MQTT."""
    if remote is None:
        from migrate.run.runner import run_scenario

        return run_scenario
    from migrate.cli.broker import remote_run

    async def run(scenario, opts, *, bus, pacer):
        return await remote_run(scenario, opts, remote["broker"], remote["run_id"], bus, pacer,
                                username=remote["username"], password=remote["password"],
                                tls_ca=remote["tls_ca"], tls_insecure=remote["tls_insecure"],
                                timeout=remote["timeout"], key_file=remote["key_file"],
                                insecure=remote["insecure"])
    return run


def _one_run(scenario, opts, *, dashboard: bool, speed: Optional[float], console: Console, record_map: bool,
             quiet: bool = False, remote: Optional[dict[str, Any]] = None, listeners=(),
             guided: bool = False):
    """One migration with its live view: the interactive app on a terminal, Xen-style
    progress lines otherwise (nothing with ``quiet``). ``remote`` holds the broker settings
    when the hypervisor and the guest are ``xmig hypervisor`` / ``xmig guest`` processes;
    ``listeners`` are subscribed to the run's events too.
    Returns (result, interrupted, recorder)."""
    run = _runner_for(remote)
    if dashboard:
        from migrate.ui.commands import interactive_run

        return interactive_run(scenario, opts, speed=speed, guided=guided, record_map=record_map, run=run,
                               listeners=listeners)
    from migrate.ui.playback import Pacer
    from migrate.events import EventBus
    from migrate.ui.gfnmap import GfnMapRecorder
    from migrate.ui.progress import PlainProgress

    bus = EventBus()
    pacer = Pacer(speed)
    progress = recorder = None
    if not quiet:
        progress = PlainProgress(sys.stdout)
        bus.subscribe(progress)
    if record_map:
        recorder = GfnMapRecorder()
        bus.subscribe(recorder)
    for fn in listeners:
        bus.subscribe(fn)

    async def go():
        return await run(scenario, opts, bus=bus, pacer=pacer)

    try:
        result, interrupted = asyncio.run(_run_with_interrupt(go))
    finally:
        if progress is not None:
            progress.close()
    return result, interrupted, recorder


# --------------------------------------------------------------------------- commands


@app.command(short_help="Run one migration of the scenario and check the destination.", help=(
    "Run one migration of the scenario and check the destination, e.g. "
    "xmig run --guest examples/balloon.yaml --behaviour pre-fix --report run.json\n\n"
    "Exit codes: 0 completed and verified; 1 the migration failed, or the destination has missing "
    "or stale pages; 2 bad input; 130 interrupted (Ctrl-C: the migration is aborted, the source "
    "domain resumes, the report says aborted)."
))
@_guard
def run(
    guest: Path = typer.Option(..., "--guest", "-g", help="Scenario file (YAML), e.g. examples/balloon.yaml."),
    seed: Optional[int] = typer.Option(None, help="Override the scenario's seed."),
    behaviour: Optional[str] = typer.Option(None, "--behaviour", "-b", help="fixed (with the P2M/log-dirty fix) or pre-fix (Xen before it)."),
    policy: Optional[str] = typer.Option(None, help="xen, xen-legacy, downtime, or a dotted path pkg.mod:func."),
    bandwidth: Optional[str] = typer.Option(None, help="Link bandwidth, e.g. 1Gbit/s or 100MiB/s."),
    stream: Optional[str] = typer.Option(None, help="Write the migration stream to FILE or tcp://HOST:PORT (an 'xmig receive')."),
    verify: Optional[bool] = typer.Option(None, "--verify/--no-verify", help="Add Xen's VERIFY pass (resend everything while suspended, memcmp at the destination)."),
    report: Optional[Path] = typer.Option(None, help="Write the JSON report here."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Write the per-pass table as CSV here."),
    plot: Optional[Path] = typer.Option(None, help="Draw pages sent per pass and the GFN map over passes (PNG; needs matplotlib)."),
    speed: Optional[str] = typer.Option(None, help="Virtual seconds per wall second (e.g. 0.5), or 'max'. Default: 0.4 in the interactive app (examples/balloon.yaml lasts ~30 s), max otherwise."),
    guided: bool = typer.Option(False, "--guided", help="In the app: pause at every event of interest (a balloon move, a pass that meets its GFNs, the verdict) until a key is pressed."),
    no_dashboard: bool = typer.Option(False, "--no-dashboard", help="Plain progress lines instead of the interactive app."),
    broker: Optional[str] = typer.Option(None, "--broker", help="mqtt://HOST:PORT: drive the 'xmig hypervisor' and 'xmig guest' of --run over this broker instead of running them in this process."),
    run_id: Optional[str] = typer.Option(None, "--run", help="With --broker: the run id the actors were started with."),
    username: Optional[str] = cli_broker.USERNAME_OPT,
    password: Optional[str] = cli_broker.PASSWORD_OPT,
    tls_ca: Optional[Path] = cli_broker.TLS_CA_OPT,
    tls_insecure: bool = cli_broker.TLS_INSECURE_OPT,
    timeout: float = cli_broker.TIMEOUT_OPT,
    allow_policy: Optional[list[str]] = ALLOW_POLICY_OPT,
    record: Optional[Path] = typer.Option(None, "--record", help="Write every event of the run to FILE (replay it with xmig replay FILE, explain a page with xmig explain FILE --gfn N)."),
    track: list[str] = typer.Option([], "--track", help="Follow this GFN (repeatable; decimal or 0x-hex): its whole story is printed at the end and kept in --record."),
    key_file: Optional[Path] = cli_broker.KEY_FILE_OPT,
    insecure: bool = cli_broker.INSECURE_OPT,
) -> None:
    """Run one migration of the scenario and check the destination (help text above)."""
    from migrate.cli.teach import parse_gfn
    from migrate.run.outputs import jsonable, write_json
    from migrate.run.report import build_report, write_csv
    from migrate.run.runner import RunOptions

    check_seconds(timeout)
    scenario = _load(guest)
    allowed = _allowed(allow_policy)
    from migrate.events.track import MAX_TRACKED

    if len(track) > MAX_TRACKED:
        raise UsageError(f"--track: at most {MAX_TRACKED} GFNs can be followed in one run, found {len(track)}")
    tracked = tuple(parse_gfn(g, "--track") for g in track)
    opts = RunOptions(behaviour=_check_behaviour(behaviour), policy=policy, bandwidth=_parse_bandwidth(bandwidth),
                      stream=stream, verify=verify, seed=_check_seed(seed), allow_policies=allowed,
                      track=tracked)
    _check_policy(policy, allowed)
    from migrate.run.scenario import check_scenario_policy

    check_scenario_policy(scenario, guest, policy, allowed)
    _check_stream_target(stream)
    _check_outputs(guest, scenario, report=report, csv=csv, plot=plot, stream=stream, record=record)
    _check_plot_possible(plot)
    remote = None
    if broker is not None or run_id is not None:
        if broker is None or run_id is None:
            raise UsageError("--broker and --run go together: the broker URL and the run id the "
                             "'xmig hypervisor' and 'xmig guest' processes were started with")
        if tracked:
            raise UsageError("--track needs the hypervisor in this process; it cannot follow a GFN "
                             "through 'xmig hypervisor' over a broker yet")
        remote = {"broker": broker, "run_id": run_id, "username": username, "password": password,
                  "tls_ca": tls_ca, "tls_insecure": tls_insecure, "timeout": timeout, "key_file": key_file,
                  "insecure": insecure}
    console = Console()
    use_dash = console.is_terminal and not no_dashboard
    pace = _default_speed(speed, use_dash)
    listeners, events_log, story = [], None, None
    if record is not None:
        from migrate.events.log import EventRecorder

        events_log = EventRecorder(record, {"scenario_file": str(guest),
                                            "scenario_text": guest.read_text(encoding="utf-8")})
        listeners.append(events_log)
    if tracked:
        from migrate.events.track import PageStory

        story = PageStory(tracked)
        listeners.append(story)
    try:
        result, interrupted, recorder = _one_run(scenario, opts, dashboard=use_dash, speed=pace, console=console,
                                                 record_map=plot is not None, remote=remote, listeners=listeners,
                                                 guided=guided)
    finally:
        if events_log is not None:
            events_log.close()
    rep = build_report(result)
    if recorder is not None:
        rep["gfn_map"] = recorder.as_list()
    if interrupted and rep["outcome"] == "completed":
        # Ctrl-C landed after the save had finished: nothing was aborted, say so.
        interrupted_msg = "xmig: interrupted after the migration had completed"
    elif interrupted:
        rep["outcome"] = "aborted"
        interrupted_msg = ("xmig: interrupted: the migration was aborted and the source domain resumed "
                           "(it keeps running on the source host)")
    _print_summary(console, rep)
    if interrupted:
        console.print(interrupted_msg, markup=False, soft_wrap=True)
    if story is not None:
        cli_teach.print_stories(console, story)
    record_failed = recording_failed(events_log)
    _save_outputs({"--report": (report, lambda p: write_json(p, rep)),
                   "--csv": (csv, lambda p: write_csv(p, [rep])),
                   "--plot": (plot, lambda p: _write_plot(p, [rep]))},
                  dump=lambda: json.dumps(rep, indent=2, default=jsonable) + "\n")
    if interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    if record_failed:
        raise typer.Exit(EXIT_USAGE)
    raise typer.Exit(EXIT_OK if result.ok else EXIT_FAILED)


def _write_plot(path: Path, reps: list[dict[str, Any]]) -> None:
    from migrate.ui.plot import PlotError, write_plot

    try:
        write_plot(path, reps)
    except PlotError as exc:
        raise UsageError(f"--plot: {exc}") from None


@app.command()
@_guard
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
            result, interrupted, recorder = _one_run(scenario, opts, dashboard=False, speed=None, console=console,
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


@app.command()
@_guard
def receive(
    listen: str = typer.Option(..., "--listen", help="HOST:PORT to accept one migration stream on, e.g. 127.0.0.1:8002."),
    report: Optional[Path] = typer.Option(None, help="Write the restore result as JSON here."),
    host_memory: str = typer.Option("64GiB", help="Destination host memory (frames the restore may populate)."),
    timeout: float = typer.Option(600.0, help="Give up (exit 1) when the whole receive, waiting for the sender included, takes longer than this many seconds."),
) -> None:
    """The destination side: accept one stream over TCP and restore it (xl migrate-receive).

    Exit codes: 0 restored; 1 the restore failed, timed out, or the VERIFY pass found pages
    that differ; 2 bad input; 130 interrupted (Ctrl-C, SIGTERM, SIGHUP; the report says so)."""
    from hypervisor.abi import DomainLayout
    from hypervisor.domain import Hypervisor

    from migrate.toolstack.restore import receive_tcp
    from guest.units import parse_size

    host, sep, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]          # [::1]:8002
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen: expected HOST:PORT like 127.0.0.1:8002 (port 0-65535), found {_short(listen)!r}")
    if not 0 < timeout < 1e9:
        raise UsageError(f"--timeout: expected a positive number of seconds, found {timeout!r}")
    outputs.check_targets({"--report": report}, inputs={})
    from migrate.run.outputs import write_json
    try:
        frames = int(parse_size(host_memory)) // 4096
    except ValueError as exc:
        raise UsageError(f"--host-memory: {exc}") from None
    if not 0 < frames <= 1 << 40 - 12:
        raise UsageError(f"--host-memory: expected a size from 4KiB to 1TiB, found {_short(host_memory)!r}")
    dst = Hypervisor(host_frames=frames, behaviour="fixed", record_events=False)
    import numpy as np

    dst.build(DomainLayout(ram_gfns=np.empty(0, dtype=np.int64)))
    console = Console()

    def ready(bound_host: str, bound_port: int) -> None:
        # Printed once the socket is listening (not before: a sender that starts on
        # this line must find the port open), with the real port when 0 was asked.
        console.print(f"migration target: Ready to receive domain on {bound_host}:{bound_port}.", markup=False)
        sys.stdout.flush()

    async def go():
        stop = asyncio.Event()
        with outputs.stop_on_signals(stop.set):
            res = await receive_tcp(host, int(port), dst, on_listen=ready, timeout=timeout, stop=stop)
        return res, stop.is_set()

    result, interrupted = asyncio.run(go())
    data = result.as_dict()
    gfns, _tokens = dst.snapshot()
    data["populated_pages"] = int(gfns.size)
    if report is not None:
        _save_outputs({"--report": (report, lambda p: write_json(p, data))},
                      dump=lambda: json.dumps(data, indent=2) + "\n")
    err = _err_console()
    if interrupted:
        err.print(f"xmig: interrupted: the receive stopped after {data['bytes_received']} bytes "
                  f"({data['populated_pages']} pages populated)", markup=False)
        raise typer.Exit(EXIT_INTERRUPTED)
    if not result.complete:
        err.print(f"migration target: restore failed: {result.error}", markup=False)
        raise typer.Exit(EXIT_FAILED)
    if result.verify_mismatches:
        err.print(f"migration target: destination diverged: {result.verify_mismatches} pages differ from "
                  f"the source in the VERIFY pass (first: {', '.join(hex(p) for p in result.verify_mismatch_pfns[:4])})",
                  markup=False)
        raise typer.Exit(EXIT_FAILED)
    console.print(f"migration target: Transfer complete: {data['populated_pages']} pages populated.", markup=False)
    raise typer.Exit(EXIT_OK)


@app.command()
@_guard
def inspect(
    stream: Path = typer.Argument(..., help="A migration stream file written by 'xmig run --stream FILE'."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Summarise and validate a migration stream v2 file (exit 1 if malformed)."""
    from migrate.stream import summarise_stream

    if not stream.exists():
        raise UsageError(f"{stream}: no such file")
    if stream.is_dir():
        raise UsageError(f"{stream}: is a folder, expected a stream file")
    from guest.inputs import InputError, check_input

    try:      # /dev/zero or a FIFO would never end; the parser bounds what a file holds
        check_input(stream, 1 << 62, "stream file")
    except InputError as e:
        raise UsageError(f"{stream}: {e}") from None
    summary = summarise_stream(stream)
    data = summary.as_dict() if hasattr(summary, "as_dict") else dict(vars(summary))
    console = Console()
    if as_json:
        console.print_json(json.dumps(data, default=str))
    else:
        from rich.table import Table

        t = Table(title=f"{stream}")
        t.add_column("record")
        t.add_column("count", justify="right")
        for name, n in data.get("records_by_type", {}).items():
            t.add_row(str(name), str(n))
        console.print(t)
        p = Table(title="PAGE_DATA entries by type")
        p.add_column("type")
        p.add_column("entries", justify="right")
        for name, n in data.get("pages_by_type", {}).items():
            p.add_row(str(name), str(n))
        console.print(p)
        if data.get("pfn_min") is None:
            console.print(f"PFN range: none (no PAGE_DATA); bytes: {data.get('total_bytes')}", markup=False)
        else:
            console.print(f"PFN range: {data['pfn_min']:#x} .. {data['pfn_max']:#x}; "
                          f"data pages: {data.get('data_pages')}; bytes: {data.get('total_bytes')}", markup=False)
        console.print("valid" if data.get("valid") else f"INVALID: {data.get('error')}", markup=False,
                      soft_wrap=True)
    if not data.get("valid"):
        _err_console().print(f"xmig: {stream}: malformed migration stream: {data.get('error')}", markup=False)
    raise typer.Exit(EXIT_OK if data.get("valid") else EXIT_FAILED)


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
