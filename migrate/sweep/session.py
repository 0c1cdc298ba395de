"""One sweep from start to finish: what is left to run, where each finished row goes,
and the canonical results file at the end.

Nothing is lost: each row is appended to ``OUT.part`` the moment its run finishes; on
completion, on Ctrl-C, or when the engine fails, every row so far is written to ``OUT``
in canonical order (a valid Parquet or CSV file) and the part file is removed. With
``resume`` the rows already in ``OUT`` and ``OUT.part`` are kept and their runs skipped,
so an interrupted sweep resumed gives the same ``OUT`` as one never interrupted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from migrate.sweep.results import (ResultsError, PartWriter, check_row, part_path, read_part_lines, read_results,
                                   results_base, write_results)
from migrate.sweep.spec import Point, SweepPlan, Ticker, run_key

Engine = Callable[[list[Point]], Iterator[dict[str, Any]]]
# Outcomes that say nothing about the scenario (the run never got to run): --resume runs
# them again.
RETRY_OUTCOMES = ("lost",)


@dataclass(slots=True)
class SweepOutcome:
    total: int
    skipped: int = 0                 # already in the results (--resume)
    ran: int = 0
    failed: int = 0                  # runs that did not complete (of those run now)
    interrupted: bool = False
    error: str | None = None         # the engine stopped (a scheduler lost): rows so far are kept
    wall_s: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.interrupted and self.skipped + self.ran == self.total


class Progress:
    """What a session reports to: overridden by the CLI's progress bar."""

    def planning(self, text: str) -> None:
        """A line about the work before the first run (a big sweep takes a while to plan)."""

    def start(self, total: int, done: int) -> None: ...

    def advance(self, row: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def _resumed_rows(plan: SweepPlan, out: Path, fmt: str, keys: set[str]) -> dict[str, dict[str, Any]]:
    """The rows already done in ``out`` and its part file, each checked: one of this
    sweep's points (``keys``) and a row xmig could have written (``check_row``); a
    forged or foreign row is refused with its file and line, never run around."""
    axes = plan.axis_names
    part = part_path(out)
    part_axes, part_lines, part_base = read_part_lines(part)
    if part_axes is not None and list(part_axes) != axes:
        raise ResultsError(f"{part_path(out)}: its axes ({', '.join(part_axes)}) are not this sweep's "
                           f"({', '.join(axes)}); remove it or use another --out")
    for where, base in ((part_path(out), part_base), (out, results_base(out, fmt))):
        if base is not None and base != plan.base_digest:
            raise ResultsError(f"{where}: it holds the results of a sweep over another base scenario "
                               f"(digest {base}, this one {plan.base_digest}); use another --out, or run "
                               "without --resume to replace it")
    done: dict[str, dict[str, Any]] = {}
    file_rows = read_results(out, fmt)
    if file_rows:
        missing = [a for a in axes if a not in file_rows[0]]
        if missing:
            raise ResultsError(f"{out}: it has no column for the axes {', '.join(missing)}: it holds another "
                               "sweep's results; use another --out, or run without --resume to replace it")
    first_line = 2 if fmt == "csv" else 1      # a CSV file's line 1 is its header
    numbered = [(out, f"{'line' if fmt == 'csv' else 'row'} {i + first_line}", r) for i, r in enumerate(file_rows)]
    numbered += [(part, f"line {n}", r) for n, r in part_lines]
    for where, line, r in numbered:       # the part file is newer: its rows win
        r = {k: v for k, v in r.items() if k != "key"}
        key = run_key([r.get(a) for a in axes])
        try:
            check_row(r, axes)
            if key not in keys:
                raise ValueError(f"its axis values ({', '.join(axes)}) are not a run of this sweep")
        except ValueError as e:
            raise ResultsError(f"{where}: {line}: {e}; it was not written by this sweep: remove that "
                               "row, use another --out, or run without --resume to start over") from None
        if r.get("outcome") in RETRY_OUTCOMES:
            continue
        done[key] = r
    return done


def run_sweep(plan: SweepPlan, out: Path, fmt: str, engine: Engine, *, resume: bool = False,
              progress: Progress | None = None, meta: dict[str, Any] | None = None) -> SweepOutcome:
    """Run every point of ``plan`` not already done; write ``out``. Ctrl-C
    (``KeyboardInterrupt``) or a broken engine stops the sweep and still writes ``out``;
    the outcome says ``interrupted`` (and ``error`` for an engine)."""
    progress = progress or Progress()
    axes = plan.axis_names
    tick = Ticker(progress.planning)
    points = plan.points(tick)
    keyed: dict[str, Point] = {}
    for i, p in enumerate(points):
        keyed[p.key()] = p
        if not i & 0xFFFF:
            tick(f"naming {len(points):,} runs: {i:,} done")
    done = _resumed_rows(plan, out, fmt, keyed.keys()) if resume else {}
    todo = [p for k, p in keyed.items() if k not in done]
    by_key = {k: p for k, p in keyed.items() if k not in done}
    result = SweepOutcome(total=len(points), skipped=len(keyed.keys() & done.keys()))
    part = part_path(out)
    writer = PartWriter(part, axes, append=resume, base=plan.base_digest)
    t0 = time.perf_counter()
    progress.start(result.total, result.skipped)
    try:
        for row in engine(todo):
            p = by_key[row.pop("key")]
            full = {**dict(zip(axes, p.columns)), **{k: v for k, v in row.items() if k not in axes}}
            writer.add(full)
            done[p.key()] = full
            result.ran += 1
            result.failed += full["outcome"] != "completed"
            progress.advance(full)
    except KeyboardInterrupt:
        result.interrupted = True
    except Exception as e:  # the engine itself broke (runs never raise): keep what finished
        result.interrupted = True
        result.error = f"{type(e).__name__}: {e}".strip()
    finally:
        writer.close()
        progress.close()
        result.wall_s = time.perf_counter() - t0
        result.rows = canonical_rows(plan, points, done)
        write_results(out, fmt, axes, result.rows, meta={"sweep": plan.name, "file": plan.file,
                                                         "axes": axes, "units": plan.units,
                                                         "base": plan.base_digest, **(meta or {})})
        part.unlink(missing_ok=True)
    return result


def canonical_rows(plan: SweepPlan, points: list[Point], done: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows in the sweep's order (its points' product order); rows of a resumed
    file that this sweep no longer has come after, ordered by their axis values."""
    axes = plan.axis_names
    out = []
    for p in points:
        r = done.get(p.key())
        if r is not None:
            out.append({**r, **dict(zip(axes, p.columns))})
    keys = {p.key() for p in points}
    out.extend(done[k] for k in sorted(done.keys() - keys))
    return out
