"""Stepping back over a live run: the run as it stood at each event of interest.

A replay can re-fold its recorded events to any pass (``app.py``'s seek); a live run
(``xmig run``) or a watched one (``xmig watch``) has no file to re-read, so the app keeps
a ``History``: at each event of interest (the moments ``--guided`` stops at: the
balloon's moves through the patch's call sites, a pass's CLEAN, suspend, verify) and at
each pass's start, one snapshot of the run's whole view (the GFN map, the run's fold,
the captions), pickled and compressed. Never per page or per batch: balloon.yaml keeps
about 15 of them, ~30 KiB each.

``[`` and ``]`` step over them (``Stepping``): the run pauses (the engine waits on the
playback, as for space) and the screen draws the snapshot: map, pass table, caption and
patch as they were. ``]`` past the newest snapshot, space or ``n`` return to the live
view and the run goes on.
"""

from __future__ import annotations

import pickle
import zlib
from dataclasses import dataclass
from typing import Any, Protocol

from rich.text import Text

from migrate.events import Event, PassPhase, PassStarted
from migrate.ui.model import RunView
from migrate.ui.narration import Caption

#: Oldest snapshots are dropped beyond this many (a long checkpointed run).
KEEP = 256


@dataclass(frozen=True, slots=True)
class Step:
    """One snapshot: when, what was said, the view's version, the view itself (packed)."""

    t: float
    label: str
    version: int
    packed: bytes

    def view(self) -> RunView:
        return pickle.loads(zlib.decompress(self.packed))


class History:
    """The snapshots of one run's view, oldest first."""

    def __init__(self, keep: int = KEEP):
        self.keep = keep
        self.steps: list[Step] = []

    def __len__(self) -> int:
        return len(self.steps)

    def worth_keeping(self, ev: Event, cap: Caption | None) -> bool:
        if cap is not None and cap.interesting:
            return True
        return isinstance(ev, PassStarted) and ev.phase != PassPhase.VERIFY

    def take(self, view: RunView, ev: Event, cap: Caption | None) -> Step | None:
        """After ``view`` folded ``ev`` (which told ``cap``): keep a snapshot if it is
        an event of interest or a pass's start."""
        if not self.worth_keeping(ev, cap):
            return None
        if self.steps and self.steps[-1].version == view.version:
            return None
        label = cap.text if cap is not None else f"pass {ev.iteration} starts"
        step = Step(float(ev.t), label, view.version, zlib.compress(pickle.dumps(view, pickle.HIGHEST_PROTOCOL), 1))
        self.steps.append(step)
        if len(self.steps) > self.keep:
            del self.steps[: len(self.steps) - self.keep]
        return step

    def nbytes(self) -> int:
        return sum(len(s.packed) for s in self.steps)


class StepHost(Protocol):
    """What stepping asks of the app (``XmigApp``)."""

    views: list[RunView]
    paused: bool

    @property
    def main(self) -> Any: ...          # the mode's screen: ``set_view``

    def action_toggle_pause(self) -> None: ...

    def changed(self, *, status: bool = False) -> None: ...


class Stepping:
    """``[`` / ``]`` over a live run's ``History`` (run 0's view)."""

    def __init__(self, host: StepHost, *, enabled: bool = True):
        self.host = host
        self.enabled = enabled
        self.history = History()
        self.at: int | None = None          # the step shown; None: the live view
        self._live: RunView | None = None

    @property
    def browsing(self) -> bool:
        return self.at is not None

    def fed(self, idx: int, ev: Event, cap: Caption | None) -> None:
        """The app folded ``ev`` into run ``idx``'s view."""
        if self.enabled and idx == 0:
            self.history.take(self.host.views[0], ev, cap)

    def step(self, d: int) -> None:
        """``d`` = -1: one step back (pausing the run); +1: one forward, past the newest
        back to the live view (resuming it)."""
        steps = self.history.steps
        if not self.enabled or not steps:
            return
        if self.at is None:
            if d > 0:
                return
            live = self.host.views[0]
            at = len(steps) - 1
            shown = live.caption.text if live.caption is not None else None
            if at > 0 and (steps[at].version == live.version or steps[at].label == shown):
                at -= 1                     # the newest is the moment the screen shows already
            if not self.host.paused:
                self.host.action_toggle_pause()
            self._live = live
            self._show(at)
            return
        at = self.at + d
        if at >= len(steps):
            if self.host.paused:
                self.host.action_toggle_pause()     # resumes, and on_play shows the live view
            self.live()
            return
        self._show(max(at, 0))

    def _show(self, at: int) -> None:
        self.at = at
        self.host.main.set_view(self.history.steps[at].view())
        self.host.changed(status=True)

    def live(self) -> None:
        """Back to the live view (``]`` past the newest, or the run resumed)."""
        if self.at is None:
            return
        self.at = None
        self.host.main.set_view(self._live if self._live is not None else self.host.views[0])
        self._live = None
        self.host.changed(status=True)

    def status(self, short: bool = False) -> Text:
        t = Text()
        if self.at is None:
            return t
        step = self.history.steps[self.at]
        t.append(f" STEP {self.at + 1}/{len(self.history)} t={step.t:.2f} s ", style="bold black on magenta")
        if not short:
            t.append(" [ back, ] forth (past the newest: live) ", style="dim")
        return t


__all__ = ["History", "KEEP", "Step", "StepHost", "Stepping"]
