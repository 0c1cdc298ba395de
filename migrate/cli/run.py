"""``xmig run``: one migration of a scenario, checked page by page at the destination,
as ``xl migrate`` is one save and one restore (tools/xl/xl_migrate.c)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from migrate.cli import broker as cli_broker
from migrate.cli.checks import (ALLOW_POLICY_OPT, _allowed, _check_behaviour, _check_outputs, _check_plot_possible,
                                _check_policy, _check_seed, _check_stream_target, _load, _parse_bandwidth,
                                _save_outputs, _write_plot)
from migrate.cli.common import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError, _default_speed,
                                _guard, _print_summary, check_seconds, recording_failed)
from migrate.cli.migration import collect_after_start_up, one_run

RUN_HELP = (
    "Run one migration of the scenario and check the destination, e.g. "
    "xmig run --guest examples/balloon.yaml --behaviour pre-fix --report run.json\n\n"
    "Exit codes: 0 completed and verified; 1 the migration failed, or the destination has missing "
    "or stale pages; 2 bad input; 130 interrupted (Ctrl-C: the migration is aborted, the source "
    "domain resumes, the report says aborted)."
)


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
    from rich.console import Console

    from migrate.cli import teach as cli_teach
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
        result, interrupted, recorder = one_run(scenario, opts, dashboard=use_dash, speed=pace, console=console,
                                                record_map=plot is not None, remote=remote, listeners=listeners,
                                                guided=guided, detail=record is not None or bool(tracked))
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



def register(app: typer.Typer) -> None:
    """Add ``run`` to the ``xmig`` app."""
    app.command(short_help="Run one migration of the scenario and check the destination.",
                help=RUN_HELP)(_guard(collect_after_start_up(run)))
