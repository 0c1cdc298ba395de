"""Which XTAB a saver's batch carries, told apart for the narration.

``xg_sr_save.c`` sends a PFN with no data when ``getpageframeinfo3`` types it XTAB
(no RAM behind it). Three different stories give that same record:

* a **hole of the layout** (pass 1 walks every PFN below ``p2m_size``, so it lists
  the GFNs the domain builder never populated: the VGA hole, the gap between the top
  of RAM and libxc's special pages, the MMIO hole), the same under every behaviour;
* a GFN the **balloon gave back** before pass 1 reached it (populated when the run
  started, gone by the time its batch was typed), again the same under every behaviour;
* a later pass's XTAB: a GFN the CLEAN listed although it is no longer in the P2M, a
  dirty bit ``p2m_remove_page`` left set (pre-fix: the leftover bits).

``XtabTeller`` asks the GFN map which GFNs are holes of the layout (``GfnMap.holes``:
from the run's ``RunStarted``, neither populated, special nor ballooned; the one
definition the map draws too) and says which of these a batch shows, once per kind per
pass.
"""

from __future__ import annotations

import numpy as np

from hypervisor.abi import PFINFO_HAS_DATA, FixSite

#: In pass 1, fewer XTAB entries than this in a batch are not worth a word (a small
#: hole such as the VGA hole's 32 PFNs); a bulk-walked hole always is.
PASS1_WORTHY = 512


def _in_runs(runs: np.ndarray, g: np.ndarray) -> np.ndarray:
    if not runs.size:
        return np.zeros(g.size, dtype=bool)
    i = np.searchsorted(runs[:, 0], g, side="right") - 1
    ok = i >= 0
    ic = np.maximum(i, 0)
    return ok & (g < runs[ic, 1])


class XtabTeller:
    """Captions for XTAB entries: layout holes and balloon gaps in a walk of every PFN,
    leftover bits in later passes."""

    def __init__(self, gfnmap) -> None:
        self.gfnmap = gfnmap          # fed the same events first: its holes() are the layout's
        self._told: set[str] = set()

    def pass_started(self) -> None:
        self._told = set()

    def hole_gfns(self, gfns) -> np.ndarray:
        """Which of ``gfns`` are holes of the layout (never populated by the builder)."""
        g = np.asarray(gfns, dtype=np.int64).reshape(-1)
        return _in_runs(self.gfnmap.holes(), g)

    def caption(self, ev, walk_all: bool, fixed) -> tuple[str, str] | None:
        """``(kind, words)`` for a BatchSent ``ev`` (None: nothing new to say this pass);
        kind is ``hole``, ``balloon`` or ``leftover``.
        ``walk_all``: this pass walks every PFN below p2m_size (pass 1);
        ``fixed(site)``: does the run run the fixed code at that site."""
        if ev.hole is not None:           # a never-mapped range walked in bulk
            lo, hi = int(ev.hole[0]), int(ev.hole[1])
            return self._once("hole", f"pass {ev.iteration} walks the layout's hole {lo:#x}-{hi - 1:#x} "
                                      f"({hi - lo:,} PFNs the builder never populated): XTAB, the PFN "
                                      "and no data, under either behaviour")
        nib = np.asarray(ev.nibbles, dtype=np.uint8) & 0xF
        nodata = ~PFINFO_HAS_DATA[nib]
        n = int(np.count_nonzero(nodata))
        if not n:
            return None
        pfns = np.asarray(ev.pfns, dtype=np.int64)[nodata]
        if not walk_all:
            why = ("dirty bits the balloon left set (pre-fix: p2m_remove_page did not clean them)"
                   if not fixed(FixSite.P2M_REMOVE_PAGE) else "GFNs that left the P2M after the CLEAN")
            return self._once("leftover", f"pass {ev.iteration} reaches GFNs not in the P2M (from "
                                          f"{int(pfns[0]):#x}): {why}; getpageframeinfo3 says XTAB, the "
                                          "stream gets the PFN and no data")
        if n < PASS1_WORTHY:
            return None
        hole = self.hole_gfns(pfns)
        if hole.sum() * 2 >= n:
            return self._once("hole", f"pass {ev.iteration} reaches a hole of the layout (from "
                                      f"{int(pfns[hole][0]):#x}): the builder never populated it, so "
                                      "getpageframeinfo3 says XTAB, the PFN and no data, under either "
                                      "behaviour")
        return self._once("balloon", f"pass {ev.iteration} reaches GFNs the balloon gave back (from "
                                     f"{int(pfns[~hole][0]):#x}): getpageframeinfo3 says XTAB, the "
                                     "stream gets the PFN and no data")

    def _once(self, kind: str, text: str) -> tuple[str, str] | None:
        if kind in self._told:
            return None
        self._told.add(kind)
        return kind, text


__all__ = ["XtabTeller", "PASS1_WORTHY"]
