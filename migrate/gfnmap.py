"""The GFN map: the guest's address space [0, p2m_size) folded into a grid of cells.

It mirrors nothing in Xen directly; it is the picture of what ``xg_sr_save.c`` does to
the P2M over a save: which GFNs are RAM and sent, which are dirty and wait for the next
pass, which the balloon driver gave back (``XENMEM_decrease_reservation``) and which the
saver still visited and listed as ``XTAB`` (the wasted work of the pre-fix log-dirty
behaviour). It is built only from the event stream (``migrate/events.py``).

Per-PFN model (``p2m_size <= dense_limit``, default 2^26 = 64 MiB of uint8): each PFN is
one byte, a *base* (unpopulated / RAM / ballooned) plus two flags:

- ``pending``: RAM not yet sent in this migration, or a PFN in the current pass's dirty
  bitmap (``PassStarted.pfns``; every PFN for pass 1, where ``pfns`` is None);
- ``xtab``: listed without data (XTAB, BROKEN or XALLOC nibble) by the current or the
  last finished pass. It is cleared when the next pass starts, so ``xtab`` always means
  "the engine visited this in its latest pass and had nothing to send" and a region the
  fixed hypervisor keeps clean falls back to ``ballooned`` after pass 1.

Displayed PFN states, in priority order (highest first): ``xtab`` > ``pending`` >
``ballooned`` > ``sent`` > ``unpopulated``. A cell shows, by default, the highest-priority
state any of its PFNs is in (``mode="priority"``: one visited ballooned page is enough to
light a cell, which is what makes the pre-fix waste visible), or the state most of its
PFNs are in (``mode="majority"``, ties to the higher priority).

Sparse huge guests (``p2m_size > dense_limit``, e.g. 2^32 for a 16 TiB address space)
keep only per-cell counts, updated approximately from the same events: O(cells) memory,
never O(p2m_size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hypervisor.abi import PFINFO_HAS_DATA

from .events import BatchSent, Event, MemoryOp, PassEnded, PassStarted, RunStarted, SaveSetup

# displayed states: the value is also the priority
UNPOPULATED = 0
SENT = 1
BALLOONED = 2
PENDING = 3
XTAB = 4
NSTATES = 5
STATE_NAMES = ("unpopulated", "sent", "ballooned", "pending", "xtab")


@dataclass(frozen=True, slots=True)
class LegendEntry:
    state: int
    name: str
    glyph: str          # distinct glyphs keep the map readable without colour
    colour: str         # rich colour
    rgb: str            # matplotlib colour
    meaning: str


LEGEND: tuple[LegendEntry, ...] = (
    LegendEntry(XTAB, "xtab", "X", "bright_red", "#d62728", "visited, sent as XTAB (no data)"),
    LegendEntry(PENDING, "pending", "▒", "yellow", "#f2b701", "dirty / not yet sent"),
    LegendEntry(BALLOONED, "ballooned", "░", "medium_purple1", "#8e63c7", "ballooned out"),
    LegendEntry(SENT, "sent", "█", "green", "#2ca02c", "sent, clean"),
    LegendEntry(UNPOPULATED, "unpopulated", "·", "grey35", "#d9d9d9", "never populated / hole"),
)
LEGEND_BY_STATE = {e.state: e for e in LEGEND}

# per-PFN byte: base in bits 0..1, flags above
_B_UNPOP, _B_RAM, _B_BALLOON = 0, 1, 2
_BASE_MASK = 0x3
_F_PENDING = 0x4
_F_XTAB = 0x8

_DISPLAY = np.zeros(16, dtype=np.uint8)
for _v in range(16):
    _b = _v & _BASE_MASK
    _DISPLAY[_v] = (XTAB if _v & _F_XTAB else PENDING if _v & _F_PENDING
                    else BALLOONED if _b == _B_BALLOON else SENT if _b == _B_RAM else UNPOPULATED)
# what an XTAB listing leaves as base: RAM we did not see leave becomes a hole
_AFTER_XTAB = np.array([(_B_UNPOP if (v & _BASE_MASK) == _B_RAM else v & _BASE_MASK) | _F_XTAB
                        for v in range(16)], dtype=np.uint8)
_NO_DATA = ~PFINFO_HAS_DATA            # XTAB, BROKEN, XALLOC and reserved

DENSE_LIMIT = 1 << 26


def _pow2_at_least(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


class GfnMap:
    """Event listener folding per-PFN migration state into ``cells()``."""

    legend = LEGEND
    state_names = STATE_NAMES

    def __init__(self, p2m_size: int | None = None, *, columns: int = 64, max_cells: int = 1024,
                 dense_limit: int = DENSE_LIMIT, mode: str = "priority",
                 track_verify: bool = False):
        if mode not in ("priority", "majority"):
            raise ValueError(f"GfnMap mode must be 'priority' or 'majority', not {mode!r}")
        self.columns = int(columns)
        self.max_cells = int(max_cells)
        self.dense_limit = int(dense_limit)
        self.mode = mode
        self.track_verify = track_verify
        self._populated = np.empty((0, 2), dtype=np.int64)
        self._ballooned = np.empty((0, 2), dtype=np.int64)
        self._in_ignored_pass = False
        self.iteration = 0
        self.phase = ""
        self.p2m_size = 0
        self._setup(int(p2m_size) if p2m_size else 0)

    # ------------------------------------------------------------------ geometry

    def _setup(self, p2m_size: int) -> None:
        self.p2m_size = p2m_size
        self.cell_pfns = _pow2_at_least(-(-max(p2m_size, 1) // self.max_cells))
        self.ncells = -(-p2m_size // self.cell_pfns) if p2m_size else 0
        self.rows = -(-self.ncells // self.columns) if self.ncells else 0
        self.dense = p2m_size <= self.dense_limit
        n = self.ncells
        self._sizes = np.full(n, self.cell_pfns, dtype=np.int64)
        if n:
            self._sizes[-1] = p2m_size - (n - 1) * self.cell_pfns
        self._counts = np.zeros((n, NSTATES), dtype=np.int64)
        self._counts[:, UNPOPULATED] = self._sizes
        self._stale = np.zeros(n, dtype=bool)
        if self.dense:
            self._state = np.zeros(n * self.cell_pfns, dtype=np.uint8)
        else:
            self._state = None
            self._ram = np.zeros(n, dtype=np.int64)
            self._balloon = np.zeros(n, dtype=np.int64)
            self._pending = np.zeros(n, dtype=np.int64)
            self._xtab = np.zeros(n, dtype=np.int64)
        self._apply_runs(self._populated, _B_RAM | _F_PENDING)
        self._apply_runs(self._ballooned, _B_BALLOON)

    def cell_of(self, pfn) -> Any:
        return np.asarray(pfn, dtype=np.int64) // self.cell_pfns

    def cell_span(self, cell: int) -> tuple[int, int]:
        lo = int(cell) * self.cell_pfns
        return lo, min(lo + self.cell_pfns, self.p2m_size)

    # ------------------------------------------------------------------ events

    def __call__(self, ev: Event) -> None:
        if isinstance(ev, BatchSent):
            if not self._in_ignored_pass:
                self._on_batch(np.asarray(ev.pfns, dtype=np.int64), np.asarray(ev.nibbles, dtype=np.uint8))
                if ev.hole is not None:
                    self._on_hole(int(ev.hole[0]), int(ev.hole[1]))
        elif isinstance(ev, MemoryOp):
            if ev.rc > 0 and ev.op in ("decrease_reservation", "populate_physmap"):
                gfns = np.asarray(ev.gfns, dtype=np.int64)[: ev.rc]
                if ev.op == "decrease_reservation":
                    self._set(gfns, _B_BALLOON, ram_delta=-1, balloon_delta=+1)
                else:
                    self._set(gfns, _B_RAM | _F_PENDING, ram_delta=+1, balloon_delta=-1)
        elif isinstance(ev, PassStarted):
            self._in_ignored_pass = ev.phase == "verify" and not self.track_verify
            if not self._in_ignored_pass:
                self.iteration, self.phase = ev.iteration, ev.phase
                self._on_pass_started(ev.pfns)
        elif isinstance(ev, RunStarted):
            self._populated = _runs(ev.populated)
            self._ballooned = _runs(ev.ballooned)
            if self.p2m_size == 0:
                ends = [r[:, 1].max() for r in (self._populated, self._ballooned) if r.size]
                self._setup(int(max(ends)) if ends else 0)
            else:
                self._setup(self.p2m_size)
        elif isinstance(ev, SaveSetup):
            if int(ev.p2m_size) != self.p2m_size:
                self._resize(int(ev.p2m_size))

    on_event = __call__

    def _resize(self, p2m_size: int) -> None:
        old, old_size = self._state, self.p2m_size
        self._setup(p2m_size)
        if old is not None and self.dense:
            # keep what MemoryOps changed before setup; runs were re-applied by _setup
            n = min(old_size, p2m_size)
            self._state[:n] = old[:n]
            self._stale[:] = True

    def _clip(self, pfns: np.ndarray) -> np.ndarray:
        if pfns.size and (pfns.min() < 0 or pfns.max() >= self.p2m_size):
            pfns = pfns[(pfns >= 0) & (pfns < self.p2m_size)]
        return pfns

    def _touch(self, pfns: np.ndarray) -> None:
        if pfns.size:
            self._stale[pfns // self.cell_pfns] = True

    def _apply_runs(self, runs: np.ndarray, value: int) -> None:
        for lo, hi in runs:
            lo, hi = max(int(lo), 0), min(int(hi), self.p2m_size)
            if lo >= hi:
                continue
            if self.dense:
                self._state[lo:hi] = value
                self._stale[lo // self.cell_pfns:(hi - 1) // self.cell_pfns + 1] = True
            else:
                per = self._per_cell_range(lo, hi)
                if value & _BASE_MASK == _B_RAM:
                    self._ram += per
                    self._pending += per
                else:
                    self._balloon += per

    def _per_cell_range(self, lo: int, hi: int) -> np.ndarray:
        starts = np.arange(self.ncells, dtype=np.int64) * self.cell_pfns
        return np.clip(np.minimum(starts + self._sizes, hi) - np.maximum(starts, lo), 0, None)

    def _bincount(self, pfns: np.ndarray) -> np.ndarray:
        return np.bincount(pfns // self.cell_pfns, minlength=self.ncells)[: self.ncells]

    def _set(self, gfns: np.ndarray, value: int, *, ram_delta: int, balloon_delta: int) -> None:
        gfns = self._clip(gfns)
        if not gfns.size:
            return
        if self.dense:
            self._state[gfns] = value
            self._touch(gfns)
        else:
            per = self._bincount(gfns)
            self._ram = np.clip(self._ram + ram_delta * per, 0, self._sizes)
            self._balloon = np.clip(self._balloon + balloon_delta * per, 0, self._sizes)
            if value & _F_PENDING:
                self._pending = np.minimum(self._pending + per, self._sizes)

    def _on_pass_started(self, pfns: np.ndarray | None) -> None:
        if self.dense:
            st = self._state
            if pfns is None:
                np.bitwise_and(st, ~np.uint8(_F_XTAB), out=st)
                np.bitwise_or(st[: self.p2m_size], np.uint8(_F_PENDING), out=st[: self.p2m_size])
                # every PFN is now pending: no recount needed
                self._counts[:] = 0
                self._counts[:, PENDING] = self._sizes
                self._stale[:] = False
            else:
                # recount only the cells that held XTAB and the cells this bitmap touches
                had_xtab = self.counts()[:, XTAB] > 0
                if had_xtab.any():
                    np.bitwise_and(st, ~np.uint8(_F_XTAB), out=st)
                    self._stale |= had_xtab
                pfns = self._clip(np.asarray(pfns, dtype=np.int64))
                st[pfns] |= np.uint8(_F_PENDING)     # repeated PFNs set the same bit: safe
                self._touch(pfns)
        else:
            self._xtab[:] = 0
            if pfns is None:
                self._pending[:] = self._sizes
            else:
                pfns = self._clip(np.asarray(pfns, dtype=np.int64))
                self._pending = np.minimum(self._pending + self._bincount(pfns), self._sizes)

    def _on_batch(self, pfns: np.ndarray, nibbles: np.ndarray) -> None:
        keep = (pfns >= 0) & (pfns < self.p2m_size)
        if not keep.all():
            pfns, nibbles = pfns[keep], nibbles[keep]
        if not pfns.size:
            return
        nodata = _NO_DATA[nibbles & 0xF]
        if self.dense:
            st = self._state
            st[pfns[~nodata]] = _B_RAM
            xp = pfns[nodata]
            if xp.size:
                st[xp] = _AFTER_XTAB[st[xp]]
            self._touch(pfns)
        else:
            self._pending = np.clip(self._pending - self._bincount(pfns), 0, None)
            if nodata.any():
                self._xtab = np.minimum(self._xtab + self._bincount(pfns[nodata]), self._sizes)

    def _on_hole(self, lo: int, hi: int) -> None:
        """A never-mapped range the engine walked in bulk: every PFN went out as XTAB."""
        lo, hi = max(lo, 0), min(hi, self.p2m_size)
        if lo >= hi:
            return
        if self.dense:
            st = self._state
            st[lo:hi] = _AFTER_XTAB[st[lo:hi]]
            self._stale[lo // self.cell_pfns:(hi - 1) // self.cell_pfns + 1] = True
        else:
            per = self._per_cell_range(lo, hi)
            self._pending = np.clip(self._pending - per, 0, None)
            self._xtab = np.minimum(self._xtab + per, self._sizes)

    # ------------------------------------------------------------------ views

    def counts(self) -> np.ndarray:
        """(ncells, 5) PFNs per displayed state (approximate for sparse huge guests)."""
        if self.dense:
            idx = np.flatnonzero(self._stale)
            if idx.size:
                rows = self._state.reshape(self.ncells, self.cell_pfns)
                # chunk the refresh so a full recompute never holds more than ~16 MiB
                step = max(1, (1 << 24) // self.cell_pfns)
                for lo in range(0, idx.size, step):
                    sel = idx[lo:lo + step]
                    disp = _DISPLAY[rows[sel]]
                    for s in range(NSTATES):
                        self._counts[sel, s] = np.count_nonzero(disp == s, axis=1)
                pad = self.ncells * self.cell_pfns - self.p2m_size
                if pad and self._stale[-1]:
                    self._counts[-1, UNPOPULATED] -= pad
                self._stale[:] = False
            return self._counts
        c = self._counts
        c[:, XTAB] = self._xtab
        c[:, PENDING] = np.minimum(self._pending, self._sizes - self._xtab)
        c[:, BALLOONED] = np.minimum(self._balloon, self._sizes - c[:, XTAB] - c[:, PENDING])
        c[:, SENT] = np.clip(self._ram - c[:, PENDING], 0, None)
        c[:, SENT] = np.minimum(c[:, SENT], self._sizes - c[:, XTAB] - c[:, PENDING] - c[:, BALLOONED])
        c[:, UNPOPULATED] = self._sizes - c[:, 1:].sum(axis=1)
        return c

    def cells(self) -> np.ndarray:
        """One int8 displayed state per cell (see the module docstring for the rule)."""
        c = self.counts()
        if not self.ncells:
            return np.zeros(0, dtype=np.int8)
        if self.mode == "priority":
            present = c > 0
            # highest state index with a nonzero count
            return (NSTATES - 1 - np.argmax(present[:, ::-1], axis=1)).astype(np.int8)
        return (NSTATES - 1 - np.argmax(c[:, ::-1], axis=1)).astype(np.int8)

    def grid(self) -> np.ndarray:
        """cells() as (rows, columns); -1 pads the last row."""
        out = np.full(self.rows * self.columns, -1, dtype=np.int8)
        out[: self.ncells] = self.cells()
        return out.reshape(self.rows, self.columns)

    def states(self, pfns) -> np.ndarray:
        """Displayed state of individual PFNs (per-PFN model only)."""
        if not self.dense:
            raise ValueError("per-PFN states are not kept for p2m_size above the dense limit")
        return _DISPLAY[self._state[np.asarray(pfns, dtype=np.int64)]].astype(np.int8)

    def totals(self) -> dict[str, int]:
        """PFNs per displayed state over the whole map."""
        c = self.counts().sum(axis=0)
        return {name: int(c[i]) for i, name in enumerate(STATE_NAMES)}

    def geometry(self) -> dict[str, int]:
        return {"p2m_size": self.p2m_size, "cell_pfns": self.cell_pfns, "ncells": self.ncells,
                "columns": self.columns, "rows": self.rows}


def _runs(a) -> np.ndarray:
    a = np.asarray(a if a is not None else (), dtype=np.int64)
    return a.reshape(-1, 2) if a.size else np.empty((0, 2), dtype=np.int64)


class GfnMapRecorder:
    """Snapshots ``GfnMap.cells()`` at every ``PassEnded`` for the plot's map-over-passes.

    Pass an existing map (e.g. the dashboard's) to share its memory: the recorder then
    only snapshots and the map must be subscribed to the bus *before* the recorder. With
    no map it makes and feeds its own.
    """

    def __init__(self, gfnmap: GfnMap | None = None, **gfnmap_kwargs):
        self.owns_map = gfnmap is None
        self.gfnmap = gfnmap if gfnmap is not None else GfnMap(**gfnmap_kwargs)
        self.snapshots: list[dict[str, Any]] = []

    def __call__(self, ev: Event) -> None:
        if self.owns_map:
            self.gfnmap(ev)
        if isinstance(ev, PassEnded):
            st = ev.stats
            if st.phase == "verify" and not self.gfnmap.track_verify:
                return
            self.snapshots.append({"iteration": int(st.iteration), "phase": st.phase,
                                   "t": float(ev.t), "cells": self.gfnmap.cells().copy()})

    on_event = __call__

    def as_list(self) -> dict[str, Any]:
        """JSON-ready: geometry, legend and one row of cell states per pass.

        Put it in a run's dict under ``"gfn_map"`` for ``plot.write_plot``.
        """
        return {**self.gfnmap.geometry(), "mode": self.gfnmap.mode,
                "states": list(STATE_NAMES),
                "passes": [{"iteration": s["iteration"], "phase": s["phase"], "t": s["t"],
                            "cells": [int(x) for x in s["cells"]]} for s in self.snapshots]}
