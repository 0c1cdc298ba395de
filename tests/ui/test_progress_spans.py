"""A run with nothing to pace (no pacer: long spans, one BatchSent per up to 32 batches)
prints the same progress lines as a paced one (one BatchSent per batch): each step mark
is stated at the batch that crossed it, with that batch's time."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from migrate.cli.migration import pacer_for
from migrate.events import BatchSent, EventBus
from migrate.run.runner import RunOptions, run_scenario
from migrate.run.scenario import load_scenario
from migrate.ui.playback import Pacer
from migrate.ui.progress import PlainProgress

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def progress_lines(name: str, behaviour: str, pacer) -> tuple[str, int, int]:
    bus, out = EventBus(), io.StringIO()
    progress = PlainProgress(out)
    bus.subscribe(progress)
    batch_events = multi = 0

    def count(ev) -> None:
        nonlocal batch_events, multi
        if isinstance(ev, BatchSent):
            batch_events += 1
            multi += ev.ends is not None

    bus.subscribe(count)
    asyncio.run(run_scenario(load_scenario(EXAMPLES / name), RunOptions(behaviour=behaviour), bus=bus,
                             pacer=pacer))
    progress.close()
    return out.getvalue(), batch_events, multi


@pytest.mark.parametrize("behaviour", ["fixed", "pre-fix"])
def test_unpaced_run_prints_the_paced_runs_step_marks(behaviour):
    paced, paced_events, _ = progress_lines("webserver.yaml", behaviour, Pacer(None))
    unpaced, unpaced_events, multi = progress_lines("webserver.yaml", behaviour, None)
    assert multi and unpaced_events < paced_events      # the marks fell inside multi-batch events
    assert "pages (25%)" in paced and unpaced == paced


def test_the_command_line_paces_only_when_asked_or_recording():
    assert pacer_for(None) is None
    assert isinstance(pacer_for(None, detail=True), Pacer)      # --record, --track
    assert pacer_for(0.5).speed == 0.5
