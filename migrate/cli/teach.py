"""``xmig explain`` and ``xmig replay``: reading a recorded run (``xmig run --record``).

Xen has no counterpart; these read the event log (``migrate.events.log``) with the same
consumers a live run feeds: the Xen-style progress lines, the report, and the story of
one page (``migrate.events.track``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

GFN_HELP = "A guest frame number, decimal or 0x-hex (e.g. 196704 or 0x30060)."


def parse_gfn(text: str, option: str = "--gfn") -> int:
    """A GFN from the command line: decimal or 0x-hex, 0 .. 2^40-1 (Xen's MAX_GFN)."""
    from hypervisor.abi import MAX_GFN

    try:
        value = int(text, 0)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_GFN:
        from migrate.cli.common import UsageError

        raise UsageError(f"{option}: expected a GFN from 0 to {MAX_GFN:#x} (decimal or 0x-hex), found {text!r}")
    return value


def read_log(path: Path, *, partial: bool = True):
    """The event log at ``path``; a bad file is a usage error naming file and offset."""
    from migrate.cli.common import UsageError
    from migrate.events.log import EventLogError, read_event_log

    try:
        return read_event_log(path, partial=partial)
    except EventLogError as exc:
        raise UsageError(str(exc)) from None


def explain_text(log, gfn: int) -> str:
    """The life story of ``gfn`` in a read event log, one line per event."""
    from migrate.events.track import PageStory

    from migrate.events import VerifySets

    story = PageStory([gfn])
    sets = None
    for ev in log.events:
        story(ev)
        if isinstance(ev, VerifySets):
            sets = ev
    lines = []
    final = None if gfn in log.tracked else _untracked_final(log.events, sets, gfn)
    if gfn not in log.tracked:
        if final is None:
            lines.append(f"note: GFN {gfn:#x} was not tracked when this run was recorded, so its writes and "
                         "its final state at the destination are unknown (record with --track "
                         f"{gfn})")
        else:
            lines.append(f"note: GFN {gfn:#x} was not tracked when this run was recorded, so its writes are "
                         f"unknown; its final state is the verify's (record with --track {gfn} for more)")
    lines.append(story.text(gfn))
    if final is not None:
        lines.append(final)
    if not log.complete:
        lines.append("note: the recording was cut short; the story ends where it stops")
    return "\n".join(lines)


def export_frames_cli(events: Path, out: Optional[Path], at: list[str], size: list[str]) -> None:
    """``xmig replay --export DIR``: check every moment and size first (one line, exit
    2), then draw the frames headless and name each file written."""
    import asyncio

    from migrate.cli.common import UsageError
    from migrate.ui.export import export_frames, moment_index, parse_moment, parse_size

    if out is None:
        raise UsageError("--at and --size go with --export DIR (the folder the frames are written to)")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--export: {out} exists and is not a folder")
    log = read_log(events)
    try:
        moments = [parse_moment(a) for a in (at or ["end"])]
        sizes = [parse_size(s) for s in (size or ["80x24"])]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for m in moments:
        try:
            moment_index(log.events, m)
        except ValueError as exc:            # a moment this recording does not have
            raise UsageError(f"{events}: {exc}") from None
    try:
        written = asyncio.run(export_frames(log.events, moments, sizes, out))
    except OSError as exc:
        raise UsageError(f"--export: cannot write into {out}: {exc.strerror or exc}") from None
    for path in written:
        print(f"wrote {path}")


#: An untracked GFN's end, as the whole-domain verify saw it (``VerifySets``).
_VERIFY_WORDS = {
    "missing": "destination: MISSING, the verify lists it (RAM at the source, never populated at the destination)",
    "stale": "destination: STALE, the verify lists it (the destination holds older contents than the source)",
    "ok": "destination: not missing and not stale, the verify found it at both ends alike or at neither",
}


def _untracked_final(events, sets, gfn: int) -> str | None:
    """The last line of an untracked GFN's story from the verify's sets (a
    ``VerifySets`` event; with none, a ``VerifyDone`` that found no missing and no stale
    page), or None where the log cannot tell (a recording older than VerifySets, or a
    set cut short before this GFN)."""
    from migrate.events import PageFate, VerifyDone

    done = next((ev for ev in events if isinstance(ev, VerifyDone)), None)
    if done is None:
        return None
    if sets is None:
        clean = done.stats.missing_pages == 0 and done.stats.stale_pages == 0
        fate, t = (PageFate.OK if clean else None), done.t
    else:
        fate, t = sets.fate(gfn), sets.t
    if fate is None:
        return None
    return f"t={t:10.6f} s  {_VERIFY_WORDS[fate.value]}"


def print_stories(console, story) -> None:
    """After a run's summary: the story of each tracked GFN."""
    for g in story.lines:
        console.print(f"\nGFN {g} ({g:#x}):\n{story.text(g)}", markup=False, soft_wrap=True, highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``explain`` and ``replay`` to the ``xmig`` app."""
    from migrate.cli.common import EXIT_FAILED, EXIT_OK, _guard

    @app.command(short_help="Tell what happened to one page in a recorded run.")
    @_guard
    def explain(
        events: Path = typer.Argument(..., help="An event log written by xmig run --record FILE."),
        gfn: str = typer.Option(..., "--gfn", help=GFN_HELP),
    ) -> None:
        """Tell, one line per event with its virtual time, what happened to one GFN: the
        guest's writes, P2M removals and additions and which Xen call site touched its
        log-dirty bit, the CLEANs that returned it, the type query and the pass that sent
        it, and its final state at the destination: for a GFN recorded with --track its
        own, for any other what the whole-domain verify found (missing, stale, or neither).

        Example: xmig run --guest examples/balloon.yaml --behaviour pre-fix
        --record run.events --track 196704; then xmig explain run.events --gfn 196704"""
        g = parse_gfn(gfn)
        log = read_log(events)
        print(explain_text(log, g))

    @app.command(short_help="Play a recorded run again (progress lines and summary).")
    @_guard
    def replay(
        events: Path = typer.Argument(..., help="An event log written by xmig run --record FILE."),
        no_dashboard: bool = typer.Option(False, "--no-dashboard", help="Plain progress lines and the summary, as the live run printed them."),
        speed: Optional[str] = typer.Option(None, help="Virtual seconds per wall second, or 'max'. Default: 0.4 in the interactive app, max otherwise."),
        guided: bool = typer.Option(False, "--guided", help="In the app: pause at every event of interest until a key is pressed."),
        export: Optional[Path] = typer.Option(None, "--export", metavar="DIR", help="Write the app's screen at each --at moment into DIR as SVG (and its text as .txt), without a terminal, then exit."),
        at: list[str] = typer.Option([], "--at", metavar="MOMENT", help="With --export, repeatable: pass:N (end of pass N), t:SECONDS, inflate, deflate, switchover, end (default: end)."),
        size: list[str] = typer.Option([], "--size", metavar="COLSxROWS", help="With --export, repeatable: the screen size of the frames (default 80x24)."),
    ) -> None:
        """Play a recorded run through the same consumers a live run feeds: the same
        progress lines and summary (piped or --no-dashboard), or the dashboard on a
        terminal. Exit code as the live run: 0 completed and verified, 1 otherwise.

        With --export DIR: slides, no terminal needed; e.g. --export slides --at pass:2
        --at deflate --size 80x24 --size 160x50. Exit 0 once every frame is written."""
        from rich.console import Console

        if export is not None or at or size:
            export_frames_cli(events, export, at, size)
            raise typer.Exit(EXIT_OK)

        from migrate.cli.common import _default_speed, _print_summary
        from migrate.events.fold import fold_events
        from migrate.run.report import build_report
        from migrate.run.runner import result_from_fold

        log = read_log(events)
        console = Console()
        from migrate.cli.serve import served

        live = (console.is_terminal or served()) and not no_dashboard
        pace = _default_speed(speed, live)
        if live:
            from migrate.ui.commands import interactive_replay

            interactive_replay(log.events, speed=pace, guided=guided)
            if served():            # xmig serve: stdout is the browser's pipe, no summary
                raise typer.Exit(EXIT_OK)
            fold = fold_events(log.events)
        else:
            from migrate.ui.progress import PlainProgress

            progress = PlainProgress(sys.stdout, pages=True)
            for ev in log.events:
                progress(ev)
            progress.close()
            fold = progress.run            # the lines' fold is the report's too
        try:
            result = result_from_fold(fold)
        except ValueError as exc:
            print(f"xmig: replay: {exc}; no summary", file=sys.stderr)
            raise typer.Exit(EXIT_FAILED) from None
        _print_summary(console, build_report(result))
        if log.tracked:
            from migrate.events.track import PageStory

            story = PageStory(log.tracked)
            for ev in log.events:
                story(ev)
            print_stories(console, story)
        raise typer.Exit(EXIT_OK if result.ok else EXIT_FAILED)


__all__ = ["register", "export_frames_cli", "explain_text", "parse_gfn", "print_stories", "read_log"]
