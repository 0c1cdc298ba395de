"""What one run's panels read: the run's state, the GFN map, the captions.

All three are folded from the event stream (``migrate/events/types.py``) and nothing else, in
one order: the map first, then the run's one fold (``migrate/events/fold.py``), then the
narrator (which reads both). A run started with ``--track GFN`` names its tracked GFNs in its
``RunStarted``; from then on a ``PageStory`` (``migrate/events/track.py``, the same one
``xmig explain`` tells) follows them for the story panel. A replay folds the same events
into a fresh ``RunView`` to seek.
"""

from __future__ import annotations

from migrate.events import BatchSent, Event, MemoryOp, PassPhase, PassStarted, RunStarted, SaveSetup, VerifyDone
from migrate.events.fold import RunFold, RunState
from migrate.ui.gfnmap import GfnMap
from migrate.events.track import PageStory
from migrate.ui.narration import Caption, Narrator


#: The events ``GfnMap`` folds (``gfnmap.GfnMap.__call__``); no other moves the map.
_MAP_EVENTS = (BatchSent, MemoryOp, PassStarted, RunStarted, SaveSetup, VerifyDone)


class RunView:
    """One run, as the app shows it."""

    def __init__(self, label: str = ""):
        self.label = label
        # fine cells: a big terminal draws them all, a small one pools them
        self.gfnmap = GfnMap(max_cells=4096)
        self.run = RunFold(pages=False)      # the panels draw no page ledger
        self.narrator = Narrator(self.gfnmap, self.run.state)
        self.story: PageStory | None = None     # the tracked GFNs' stories (--track)
        self.events_seen = 0
        self.version = 0           # bumped on every event: panels redraw when it moved
        self.map_version = 0       # bumped on the events the GFN map folds (its panel's key)

    @property
    def state(self) -> RunState:
        return self.run.state

    def feed(self, ev: Event) -> Caption | None:
        if isinstance(ev, RunStarted) and ev.tracked:
            self.story = PageStory(ev.tracked)
        if self.story is not None:
            self.story(ev)
        self.gfnmap(ev)
        if isinstance(ev, _MAP_EVENTS):
            self.map_version += 1
        self.run(ev)
        self.events_seen += 1
        self.version += 1
        return self.narrator(ev)

    __call__ = feed

    @property
    def caption(self) -> Caption | None:
        return self.narrator.last

    def story_lines(self) -> list[tuple[float, int, str]]:
        """Every tracked GFN's story so far, ``(t, gfn, text)`` in event order."""
        if self.story is None:
            return []
        out = [(t, g, text) for g, lines in self.story.lines.items() for t, text in lines]
        if len(self.story.lines) > 1:
            out.sort(key=lambda x: x[0])      # stable: one event's lines keep their order
        return out


def pass_starts(events: list[Event]) -> dict[int, int]:
    """Index in ``events`` of each live or final pass's ``PassStarted`` (for seeking)."""
    out: dict[int, int] = {}
    for i, ev in enumerate(events):
        if isinstance(ev, PassStarted) and ev.phase != PassPhase.VERIFY:
            out.setdefault(int(ev.iteration), i)
    return out


__all__ = ["RunView", "pass_starts"]
