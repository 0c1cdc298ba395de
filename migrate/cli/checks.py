"""What ``xmig run`` and ``xmig compare`` check before a migration starts, and how they
write its results: the scenario (and whether this machine can hold its guest), option
values, output targets; each mistake one line naming the option (exit 2), as ``xl``
refuses a bad ``xl migrate`` before it contacts the destination."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from migrate.cli.common import EXIT_USAGE, UsageError, _err_console


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
    from migrate.run import outputs

    outputs.check_targets(named, inputs)


def _save_outputs(items: dict[str, Any], dump) -> None:
    """Write the results; when a write fails say where they went instead, exit 2."""
    from migrate.run import outputs

    problems = outputs.write_results({k: v for k, v in items.items() if v[0] is not None}, dump=dump)
    for line in problems:
        _err_console().print(f"xmig: error: {line}", markup=False, soft_wrap=True)
    if problems:
        raise typer.Exit(EXIT_USAGE)



def _write_plot(path: Path, reps: list[dict[str, Any]]) -> None:
    from migrate.ui.plot import PlotError, write_plot

    try:
        write_plot(path, reps)
    except PlotError as exc:
        raise UsageError(f"--plot: {exc}") from None

