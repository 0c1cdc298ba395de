"""Slides from a recorded run without a terminal: ``xmig replay run.events --export DIR
--at pass:2`` (the key ``s`` of the live app is ``migrate/ui/slides.py``).

Xen has no counterpart. A moment names a point of the save as ``xg_sr_save.c`` walks it
(the end of a pass of ``send_memory_live``, the suspend of ``suspend_and_send_dirty``)
or of the guest (the balloon driver's inflate and deflate, ``decrease_reservation`` and
``populate_physmap`` in ``memory.c``), or a virtual time. A frame is the app's own
screen, drawn by Textual's headless driver at the size asked, after the events up to
that moment were folded into a fresh ``RunView``, the way a replay seeks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from migrate.events import (BalloonDirection, BalloonMoved, BalloonReached, BalloonStalled, BalloonTarget, Event,
                            PassEnded, PassPhase, Phase, PhaseChanged)

#: The named moments ``--at`` knows, with what each one is.
NAMED = {
    "inflate": "the balloon has finished inflating (the guest gave pages back)",
    "deflate": "the balloon has finished deflating (the guest got pages back)",
    "switchover": "the domain is suspended (the last pass starts)",
    "end": "the end of the recording",
}
MOMENT_HELP = ("pass:N (end of pass N), t:SECONDS (virtual time), "
               + ", ".join(NAMED) + " (inflate:2 and deflate:2 for the second one)")

_SIZE = re.compile(r"^(\d+)x(\d+)$")


@dataclass(frozen=True)
class Moment:
    """One ``--at`` value: a kind (``pass``, ``t`` or a named moment) and its number."""

    kind: str
    value: float = 1

    @property
    def label(self) -> str:
        """The frame's file name stem: pass2, t12.5s, inflate, inflate2, end."""
        if self.kind == "pass":
            return f"pass{int(self.value)}"
        if self.kind == "t":
            return f"t{self.value:g}s"
        return self.kind if self.value == 1 else f"{self.kind}{int(self.value)}"


def parse_moment(text: str) -> Moment:
    """``pass:2``, ``t:9.3``, ``inflate``, ``deflate:2``, ``switchover``, ``end``;
    anything else is a ``ValueError`` naming what is expected."""
    name, _, arg = text.strip().partition(":")
    name = name.lower()
    try:
        if name == "pass" and arg and int(arg) >= 1:
            return Moment("pass", int(arg))
        if name == "t" and arg and float(arg) >= 0:
            return Moment("t", float(arg))
        if name in NAMED and (not arg or (name in ("inflate", "deflate") and int(arg) >= 1)):
            return Moment(name, int(arg) if arg else 1)
    except ValueError:
        pass
    raise ValueError(f"--at: expected {MOMENT_HELP}; found {text!r}")


def parse_size(text: str) -> tuple[int, int]:
    """``80x24`` -> (80, 24); at least 20x8, at most 400x200."""
    m = _SIZE.match(text.strip().lower())
    if m is None or not (20 <= int(m[1]) <= 400 and 8 <= int(m[2]) <= 200):
        raise ValueError(f"--size: expected COLUMNSxROWS from 20x8 to 400x200 (e.g. 80x24), found {text!r}")
    return int(m[1]), int(m[2])


def _balloon_ends(events: list[Event], direction: BalloonDirection) -> list[int]:
    """Index of the event where each inflate (or deflate) of the balloon finished: the
    driver reached or gave up on its target, or a new target came first."""
    ends, moving, last = [], False, -1
    for i, ev in enumerate(events):
        if isinstance(ev, BalloonMoved):
            if ev.direction == direction:
                moving, last = True, i
            elif moving:
                ends.append(last)
                moving = False
        elif moving and isinstance(ev, (BalloonReached, BalloonStalled)):
            ends.append(i)
            moving = False
        elif moving and isinstance(ev, BalloonTarget):
            ends.append(last)
            moving = False
    if moving:
        ends.append(last)
    return ends


def moment_index(events: list[Event], m: Moment) -> int:
    """How many events a frame at ``m`` shows; a ``ValueError`` saying what the
    recording has when it has no such moment."""
    if m.kind == "end":
        return len(events)
    if m.kind == "t":
        last_t = max((float(ev.t) for ev in events), default=0.0)
        if m.value > last_t:
            raise ValueError(f"--at t:{m.value:g}: the recording ends at t={last_t:g} s")
        return next((i for i, ev in enumerate(events) if float(ev.t) > m.value), len(events))
    if m.kind == "pass":
        ends = {int(ev.stats.iteration): i for i, ev in enumerate(events)
                if isinstance(ev, PassEnded) and ev.stats.phase != PassPhase.VERIFY}
        if int(m.value) not in ends:
            have = f"passes 1 to {max(ends)}" if ends else "no finished pass"
            raise ValueError(f"--at pass:{int(m.value)}: the recording has {have}")
        return ends[int(m.value)] + 1
    if m.kind == "switchover":
        for i, ev in enumerate(events):
            if isinstance(ev, PhaseChanged) and ev.phase == Phase.SUSPENDED:
                return i + 1
        raise ValueError("--at switchover: the domain was never suspended in this recording")
    ends = _balloon_ends(events, BalloonDirection(m.kind))
    n = int(m.value)
    if n > len(ends):
        raise ValueError(f"--at {m.kind}{'' if n == 1 else f':{n}'}: the recording has "
                         f"{len(ends) or 'no'} balloon {m.kind}{'' if len(ends) == 1 else 's'}")
    return ends[n - 1] + 1


async def export_frames(events: list[Event], moments: list[Moment], sizes: list[tuple[int, int]],
                        out_dir: Path, *, text: bool = True) -> list[Path]:
    """Draw the replay's screen at each moment and size, headless; write
    ``LABEL-WxH.svg`` (and ``.txt``, the panels' text) into ``out_dir``. The moments
    must exist in ``events`` (``moment_index`` checks them first)."""
    from migrate.ui.app import Replay, XmigApp
    from migrate.ui.model import RunView

    stops = sorted(((moment_index(events, m), m) for m in moments), key=lambda x: x[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for w, h in sizes:
        app = XmigApp([RunView("")], [], mode="replay", replay=Replay(list(events)))
        async with app.run_test(size=(w, h)) as pilot:
            view, fed = app.views[0], 0
            for stop, m in stops:
                for ev in events[fed:stop]:
                    view.feed(ev)
                fed = max(fed, stop)
                app.replay.cursor = stop
                app.done = stop >= len(events)
                app.status_seq += 1
                app.main.redraw()
                await pilot.pause()
                base = f"{m.label}-{w}x{h}"
                svg = out_dir / f"{base}.svg"
                svg.write_text(app.export_screenshot(title=f"xmig replay at {m.label}"), encoding="utf-8")
                written.append(svg)
                if text:
                    txt = out_dir / f"{base}.txt"
                    txt.write_text(app.screen_text() + "\n", encoding="utf-8")
                    written.append(txt)
            await pilot.press("q")
    return written


__all__ = ["MOMENT_HELP", "Moment", "NAMED", "export_frames", "moment_index", "parse_moment", "parse_size"]
