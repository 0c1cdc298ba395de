"""The GFN map: the guest's address space [0, p2m_size) folded into a grid of cells.

It mirrors nothing in Xen directly; it is the picture of what ``xg_sr_save.c`` does to
the P2M over a save: which GFNs are RAM and sent, which are dirty and wait for the next
pass, which the balloon driver gave back (``XENMEM_decrease_reservation``) and which the
saver still visited and listed as ``XTAB`` (the wasted work of the pre-fix log-dirty
behaviour). It is built only from the event stream (``migrate/events/types.py``).

Per-PFN model (``p2m_size <= dense_limit``, default 2^26 = 64 MiB of uint8): each PFN is
one byte, a *base* (unpopulated / RAM / ballooned) plus flags, and shows exactly one of
these states (they never overlap):

- ``sent``: sent, and no newer copy is owed;
- ``dirty``: in the current pass's list (every RAM PFN in pass 1, ``PassStarted.pfns``
  after) and not reached yet, or added by ``populate_physmap`` and waiting for the bitmap
  of the next pass;
- ``ballooned``: given back by ``decrease_reservation``, not in the P2M;
- ``xtab``: listed without data (XTAB, BROKEN, XALLOC) by the current or the last
  finished pass; it gives way when the next pass starts;
- ``leftover``: not in the P2M, yet its dirty bit is set: the next bitmap lists it
  (pre-fix: ``p2m_remove_page`` did not clear the bit), so a pass will query it and send
  XTAB. Known from ``PassStarted.pfns`` (or from the balloon event, when it says);
- ``lost``: added to the P2M and never marked dirty: the bitmap taken after the add did
  not list it (pre-fix: ``guest_physmap_add_entry`` did not set the bit);
- after ``VerifyDone``, the destination: ``missing`` (RAM at the source, never sent) and
  ``stale`` (sent before it was added back with new contents).

A cell shows, by default, one of its PFNs' states chosen so that along the map each
state's cells are in proportion to its PFNs (``mode="share"``, ``share_states``: 3,357
leftover bits in a 65,536-GFN balloon region light about 5 % of its cells, and a cell
never shows a state none of its PFNs is in). ``mode="priority"`` gives the
highest-priority state any of its PFNs is in (priority = the state's number: one visited
page lights a cell, which overstates), ``mode="majority"`` the state most of its PFNs
are in (ties to the higher priority).

Sparse huge guests (``p2m_size > dense_limit``, e.g. 2^32 for a 16 TiB address space)
keep only per-cell counts, updated approximately from the same events: O(cells) memory,
never O(p2m_size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hypervisor.abi import PFINFO_HAS_DATA

from migrate.events import (BatchSent, Event, MemoryOp, PassEnded, PassStarted, RunStarted, SaveSetup,
                      VerifyDone)
from migrate.ui.pooling import share_states

#: MemoryOps whose GFNs leave RAM through set_typed_p2m_entry (p2m.c).
_TYPED_OVER_RAM = ("map_mmio_regions", "acquire_resource")

# displayed states: the value is also the priority a cell uses to pick its colour
UNPOPULATED = 0
SENT = 1
BALLOONED = 2
PENDING = 3          # "dirty": in this pass's list (or added since), not sent yet
XTAB = 4
LEFTOVER = 5         # a dirty bit on a GFN that is not in the P2M (pre-fix)
LOST = 6             # in the P2M but never marked dirty (pre-fix)
MISSING = 7          # after the end: RAM at the source, never sent
STALE = 8            # after the end: the destination holds an older copy
NSTATES = 9
STATE_NAMES = ("unpopulated", "sent", "ballooned", "dirty", "xtab", "leftover", "lost",
               "missing", "stale")


@dataclass(frozen=True, slots=True)
class LegendEntry:
    state: int
    name: str
    glyph: str          # distinct glyphs keep the map readable without colour
    colour: str         # rich colour
    rgb: str            # matplotlib colour
    meaning: str


LEGEND: tuple[LegendEntry, ...] = (
    LegendEntry(STALE, "stale", "S", "bold bright_magenta", "#e377c2",
                "at the destination with an older copy than the source's"),
    LegendEntry(MISSING, "missing", "M", "bold bright_white on red", "#7f0000",
                "RAM at the source, never sent: absent at the destination"),
    LegendEntry(LOST, "lost", "L", "bold orange1", "#ff7f0e",
                "in the P2M but never marked dirty (pre-fix: an addition the saver will not see)"),
    LegendEntry(LEFTOVER, "leftover", "!", "bold yellow", "#bcbd22",
                "dirty bit on a GFN not in the P2M (pre-fix: will be sent as XTAB)"),
    LegendEntry(XTAB, "xtab", "X", "bright_red", "#d62728", "visited as XTAB in this pass (no data)"),
    LegendEntry(PENDING, "dirty", "▒", "dark_orange3", "#f2b701", "dirty or unsent, waiting for its pass"),
    LegendEntry(BALLOONED, "ballooned", "░", "medium_purple1", "#8e63c7", "ballooned out (not in the P2M)"),
    LegendEntry(SENT, "sent", "█", "green", "#2ca02c", "sent and current"),
    LegendEntry(UNPOPULATED, "unpopulated", "·", "grey35", "#d9d9d9", "never populated / hole"),
)
LEGEND_BY_STATE = {e.state: e for e in LEGEND}

# per-PFN byte: base in bits 0..1, flags above
_B_UNPOP, _B_RAM, _B_BALLOON = 0, 1, 2
_BASE_MASK = 0x3
_F_PENDING = 0x04     # in the current pass's list (or added since), not reached yet
_F_XTAB = 0x08        # listed without data by the current or last finished pass
_F_SENT = 0x10        # the destination holds some copy (restore never unpopulates)
_F_ADDED = 0x20       # populated since its last copy was sent (a later copy is owed)
_F_LOST = 0x40        # added, and the bitmap taken after the add did not list it
_F_LEFTOVER = 0x80    # not in the P2M, but its dirty bit is set


def _display(v: int, finished: bool) -> int:
    base = v & _BASE_MASK
    if finished:
        # the destination as the verify saw it: only RAM at the source can be wrong
        if base == _B_RAM:
            return MISSING if not v & _F_SENT else STALE if v & _F_ADDED else SENT
        return BALLOONED if base == _B_BALLOON else UNPOPULATED
    if v & _F_LEFTOVER:
        return LEFTOVER
    if v & _F_XTAB:
        return XTAB
    if v & _F_LOST:
        return LOST
    if v & _F_PENDING:
        return PENDING
    return BALLOONED if base == _B_BALLOON else SENT if base == _B_RAM else UNPOPULATED


_DISPLAY = np.array([_display(v, False) for v in range(256)], dtype=np.uint8)
_DISPLAY_END = np.array([_display(v, True) for v in range(256)], dtype=np.uint8)
# what an XTAB listing leaves: RAM we did not see leave becomes a hole; the listing
# consumes the pass's entry and any leftover bit (the CLEAN took it), and keeps _F_SENT
_AFTER_XTAB = np.array([(_B_UNPOP if (v & _BASE_MASK) == _B_RAM else v & _BASE_MASK)
                        | (v & (_F_SENT | _F_ADDED)) | _F_XTAB for v in range(256)], dtype=np.uint8)
_NO_DATA = ~PFINFO_HAS_DATA            # XTAB, BROKEN, XALLOC and reserved

DENSE_LIMIT = 1 << 26


def _pow2_at_least(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


class GfnMap:
    """Event listener folding per-PFN migration state into ``cells()``."""

    legend = LEGEND
    state_names = STATE_NAMES

    def __init__(self, p2m_size: int | None = None, *, columns: int = 64, max_cells: int = 1024,
                 dense_limit: int = DENSE_LIMIT, mode: str = "share",
                 track_verify: bool = False):
        if mode not in ("share", "priority", "majority"):
            raise ValueError(f"GfnMap mode must be 'share', 'priority' or 'majority', not {mode!r}")
        self.columns = int(columns)
        self.max_cells = int(max_cells)
        self.dense_limit = int(dense_limit)
        self.mode = mode
        self.track_verify = track_verify
        self._populated = np.empty((0, 2), dtype=np.int64)
        self._ballooned = np.empty((0, 2), dtype=np.int64)
        self._in_ignored_pass = False
        self.finished = False
        self.verify = None
        # what the latest bitmap said about the balloon's GFNs (for captions)
        self.pass_start: dict[str, int] = {}
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
        # cells whose counts moved since fine_counts last looked (see there)
        self._changed = np.ones(n, dtype=bool)
        self._fine: np.ndarray | None = None
        self._fine_g = 0
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
                sites = bool(getattr(ev, "sites", ()))
                if ev.op == "decrease_reservation":
                    self._removed(gfns, np.asarray(ev.leftover, dtype=np.int64) if sites else None)
                else:
                    self._added(gfns, np.asarray(ev.unmarked, dtype=np.int64) if sites else None)
            elif ev.op in _TYPED_OVER_RAM:
                # An MMIO or foreign mapping: the GFNs it changed (all of them, or those
                # before the one it refused) leave RAM as a balloon's do.
                self._removed(np.asarray(ev.gfns, dtype=np.int64), np.asarray(ev.leftover, dtype=np.int64))
        elif isinstance(ev, PassStarted):
            self._in_ignored_pass = ev.phase == "verify" and not self.track_verify
            if not self._in_ignored_pass:
                self.iteration, self.phase = ev.iteration, ev.phase
                self._on_pass_started(ev.pfns)
        elif isinstance(ev, VerifyDone):
            # From here the map shows the destination: missing and stale pages.
            self.finished = True
            self.verify = ev.stats
            self._stale[:] = True
        elif isinstance(ev, RunStarted):
            # the builder's special pages (libxc's layout) are populated RAM the saver sends
            self._populated = np.vstack([_runs(ev.populated), _runs(ev.special)])
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

    def _sparse_move(self, gfns: np.ndarray, *, ram_delta: int, balloon_delta: int, pending: bool) -> None:
        per = self._bincount(gfns)
        self._ram = np.clip(self._ram + ram_delta * per, 0, self._sizes)
        self._balloon = np.clip(self._balloon + balloon_delta * per, 0, self._sizes)
        if pending:
            self._pending = np.minimum(self._pending + per, self._sizes)

    def _removed(self, gfns: np.ndarray, left_dirty: np.ndarray | None) -> None:
        """decrease_reservation: the GFNs leave the P2M. The destination keeps any copy
        already sent; ``left_dirty`` (pre-fix) are those whose dirty bit stays set."""
        gfns = self._clip(gfns)
        if not gfns.size:
            return
        if not self.dense:
            self._sparse_move(gfns, ram_delta=-1, balloon_delta=+1, pending=False)
            return
        st = self._state
        st[gfns] = (st[gfns] & np.uint8(_F_SENT)) | np.uint8(_B_BALLOON)
        if left_dirty is not None and left_dirty.size:
            left_dirty = self._clip(left_dirty)
            st[left_dirty] |= np.uint8(_F_LEFTOVER)
        self._touch(gfns)

    def _added(self, gfns: np.ndarray, never_marked: np.ndarray | None) -> None:
        """populate_physmap: the GFNs join the P2M with new contents, so a copy is owed.
        Fixed Xen marks them dirty (the next bitmap lists them); pre-fix does not, which
        ``never_marked`` says at once when the event carries it, and the next pass's
        bitmap says otherwise (see ``_on_pass_started``)."""
        gfns = self._clip(gfns)
        if not gfns.size:
            return
        if not self.dense:
            self._sparse_move(gfns, ram_delta=+1, balloon_delta=-1, pending=True)
            return
        st = self._state
        st[gfns] = (st[gfns] & np.uint8(_F_SENT)) | np.uint8(_B_RAM | _F_PENDING | _F_ADDED)
        if never_marked is not None and never_marked.size:
            nm = self._clip(never_marked)
            st[nm] = (st[nm] & ~np.uint8(_F_PENDING)) | np.uint8(_F_LOST)
        self._touch(gfns)

    def _on_pass_started(self, pfns: np.ndarray | None) -> None:
        if not self.dense:
            self._xtab[:] = 0
            if pfns is None:
                self._pending[:] = self._ram
            else:
                pfns = self._clip(np.asarray(pfns, dtype=np.int64))
                self._pending = np.minimum(self._pending + self._bincount(pfns), self._sizes)
            return
        st = self._state
        # The last pass's XTAB listings and leftover bits give way to this pass's list.
        np.bitwise_and(st, ~np.uint8(_F_XTAB | _F_LEFTOVER), out=st)
        if pfns is None:
            # pass 1 lists every PFN below p2m_size: all RAM waits for it
            ram = (st & _BASE_MASK) == _B_RAM
            st[ram] |= np.uint8(_F_PENDING)
            self._stale[:] = True
            return
        # Additions still waiting were not in the bitmap this pass was cut from: lost.
        waiting = np.flatnonzero((st & (_F_ADDED | _F_PENDING)) == (_F_ADDED | _F_PENDING))
        pfns = self._clip(np.asarray(pfns, dtype=np.int64))
        listed = np.zeros(waiting.size, dtype=bool)
        if waiting.size and pfns.size:
            listed = np.isin(waiting, pfns)
        lost = waiting[~listed]
        if lost.size:
            st[lost] = (st[lost] & ~np.uint8(_F_PENDING)) | np.uint8(_F_LOST)
        in_p2m = (st[pfns] & _BASE_MASK) == _B_RAM
        ram, gone = pfns[in_p2m], pfns[~in_p2m]
        self.pass_start = {"listed": int(pfns.size), "leftover": int(gone.size),
                           "added_listed": int(listed.sum()), "added_lost": int(lost.size)}
        st[ram] = (st[ram] & ~np.uint8(_F_LOST)) | np.uint8(_F_PENDING)
        st[gone] |= np.uint8(_F_LEFTOVER)        # a dirty bit on a GFN not in the P2M
        self._stale[:] = True

    def _on_batch(self, pfns: np.ndarray, nibbles: np.ndarray) -> None:
        keep = (pfns >= 0) & (pfns < self.p2m_size)
        if not keep.all():
            pfns, nibbles = pfns[keep], nibbles[keep]
        if not pfns.size:
            return
        nodata = _NO_DATA[nibbles & 0xF]
        if self.dense:
            st = self._state
            st[pfns[~nodata]] = _B_RAM | _F_SENT
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
            # a hole holds no RAM, so only what lies outside it can still be owed
            self._pending = np.minimum(self._pending, self._sizes - per)
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
                    disp = (_DISPLAY_END if self.finished else _DISPLAY)[rows[sel]]
                    for s in range(NSTATES):
                        self._counts[sel, s] = np.count_nonzero(disp == s, axis=1)
                pad = self.ncells * self.cell_pfns - self.p2m_size
                if pad and self._stale[-1]:
                    self._counts[-1, UNPOPULATED] -= pad
                self._changed |= self._stale
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
        if self.mode == "share":
            return share_states(c)
        if self.mode == "priority":
            present = c > 0
            # highest state index with a nonzero count
            return (NSTATES - 1 - np.argmax(present[:, ::-1], axis=1)).astype(np.int8)
        return (NSTATES - 1 - np.argmax(c[:, ::-1], axis=1)).astype(np.int8)

    def cells_binned(self, k: int) -> np.ndarray:
        """``cells()`` for cells ``k`` times as wide (``k`` adjacent cells pooled), by the
        same rule: how a small terminal draws the same map with fewer cells."""
        c = self.counts()
        if k <= 1 or not self.ncells:
            return self.cells()
        pad = (-self.ncells) % k
        if pad:
            c = np.vstack([c, np.zeros((pad, NSTATES), dtype=c.dtype)])
        c = c.reshape(-1, k, NSTATES).sum(axis=1)
        if self.mode == "share":
            return share_states(c)
        if self.mode == "priority":
            return (NSTATES - 1 - np.argmax((c > 0)[:, ::-1], axis=1)).astype(np.int8)
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
        lut = _DISPLAY_END if self.finished else _DISPLAY
        return lut[self._state[np.asarray(pfns, dtype=np.int64)]].astype(np.int8)

    def fine_counts(self, g: int) -> np.ndarray:
        """(ncells * cell_pfns / g, NSTATES) PFNs per state in blocks of ``g`` PFNs
        (``g`` divides ``cell_pfns``; per-PFN model), kept between calls and refreshed
        only for the cells that changed: what lets the screen pool glyphs of any
        multiple of ``g`` GFNs without a pass over every PFN per frame. PFNs past
        ``p2m_size`` count as unpopulated."""
        if not self.dense:
            raise ValueError("per-PFN states are not kept for p2m_size above the dense limit")
        self.counts()                                   # flushes the stale cells into _changed
        k = self.cell_pfns // g
        if self._fine is None or self._fine_g != g:
            self._fine = np.zeros((self.ncells * k, NSTATES), dtype=np.int64)
            self._fine_g = g
            self._changed[:] = True
        changed = np.flatnonzero(self._changed)
        self._changed[:] = False
        lut = _DISPLAY_END if self.finished else _DISPLAY
        step = max(1, (1 << 22) // self.cell_pfns)      # at most ~4 Mi PFNs at a time
        for at in range(0, changed.size, step):
            sel = changed[at:at + step]
            disp = lut[self._state.reshape(self.ncells, self.cell_pfns)[sel]].reshape(-1, g).astype(np.int64)
            disp += (np.arange(disp.shape[0], dtype=np.int64) * NSTATES)[:, None]
            cnt = np.bincount(disp.ravel(), minlength=disp.shape[0] * NSTATES).reshape(-1, NSTATES)
            self._fine[(sel[:, None] * k + np.arange(k)).ravel()] = cnt
        return self._fine

    def states_range(self, lo: int, hi: int) -> np.ndarray:
        """Displayed state of the PFNs in [lo, hi) (per-PFN model only)."""
        if not self.dense:
            raise ValueError("per-PFN states are not kept for p2m_size above the dense limit")
        return (_DISPLAY_END if self.finished else _DISPLAY)[self._state[lo:hi]]

    def totals(self) -> dict[str, int]:
        """PFNs per displayed state over the whole map.

        After the end, missing and stale are the verify's own counts. The map places
        every missing page, and every stale page whose newer copy was still owed; a
        page added under pre-fix, sent, then written before the next CLEAN (the write
        went unlogged) is stale too, but no event says which of them were written, so
        those stay drawn as sent and ``unplaced_stale`` counts them."""
        c = self.counts().sum(axis=0)
        out = {name: int(c[i]) for i, name in enumerate(STATE_NAMES)}
        if self.finished and self.verify is not None:
            extra = self.unplaced_stale
            out["stale"] += extra
            out["sent"] -= extra
        return out

    @property
    def unplaced_stale(self) -> int:
        if not (self.finished and self.verify is not None):
            return 0
        placed = int(self.counts()[:, STALE].sum())
        return max(int(self.verify.stale_pages) - placed, 0)

    def holes(self) -> np.ndarray:
        """(k, 2) [lo, hi) runs of ``[0, p2m_size)`` neither populated nor ballooned at
        the run's start (``RunStarted``): the guest layout's holes (libxc's
        ``meminit_hvm`` leaves the VGA hole, the MMIO hole, the gap below the special
        pages), which the saver lists as XTAB in pass 1."""
        return gaps(np.vstack([self._populated, self._ballooned]), self.p2m_size)

    def geometry(self) -> dict[str, int]:
        return {"p2m_size": self.p2m_size, "cell_pfns": self.cell_pfns, "ncells": self.ncells,
                "columns": self.columns, "rows": self.rows}


def gaps(runs: np.ndarray, size: int) -> np.ndarray:
    """(k, 2) [lo, hi) runs of ``[0, size)`` that no run of ``runs`` covers."""
    if not size:
        return np.empty((0, 2), dtype=np.int64)
    out, at = [], 0
    for lo, hi in runs[np.argsort(runs[:, 0], kind="stable")].tolist():
        if lo > at:
            out.append((at, min(lo, size)))
        at = max(at, hi)
    if at < size:
        out.append((at, size))
    return np.array([x for x in out if x[1] > x[0]], dtype=np.int64).reshape(-1, 2)


def _runs(a) -> np.ndarray:
    a = np.asarray(a if a is not None else (), dtype=np.int64)
    return a.reshape(-1, 2) if a.size else np.empty((0, 2), dtype=np.int64)


class GfnMapRecorder:
    """Snapshots ``GfnMap.cells()`` at every ``PassEnded`` for the plot's map-over-passes.

    Pass an existing map (e.g. the app's) to share its memory: the recorder then
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
        if isinstance(ev, VerifyDone):
            # one more row: the destination as the verify found it (missing, stale)
            last = self.snapshots[-1]["iteration"] if self.snapshots else 0
            self.snapshots.append({"iteration": int(last) + 1, "phase": "destination",
                                   "t": float(ev.t), "cells": self.gfnmap.cells().copy()})
        elif isinstance(ev, PassEnded):
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
