"""Following pages through a migration: the whole-run page ledger and one page's story.

Both are consumers of the event stream (live or read back from ``--record``), like the
app and the report. They mirror no Xen file; they tell, in Xen's terms, what the
seed patch 98fccdf0ac changes for a page: which P2M call site
(``p2m_remove_page``, ``set_typed_p2m_entry``, ``pod_decrease_reservation``,
``guest_physmap_add_entry``) touched its log-dirty bit, whether a CLEAN handed it to the
saver, what getpageframeinfo3 said, in which pass it was sent, and how it ended up at
the destination.

``PageLedger`` counts what the fix is about for every page (cheap: numpy over the op's
and the batch's own arrays, nothing when pre-fix left nothing behind). ``PageStory``
writes one line per event touching a tracked GFN (``xmig run --track GFN``;
``xmig explain run.events --gfn GFN``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hypervisor.abi import PFINFO_HAS_DATA, POD_DEMAND_POPULATE, MemoryOpKind, PFInfo

from migrate.events import (BatchSent, Event, MemoryOp, PageFate, PassEnded, PassPhase, PassStarted, Phase,
                            PhaseChanged, RunStarted, TrackedFinal, TrackedWrites)

_EMPTY = np.empty(0, dtype=np.int64)
#: At most this many GFNs are followed one by one (each costs a line per event touching it).
MAX_TRACKED = 1024


class _GfnSet:
    """A set of GFNs: a sorted array with a live mask (membership and removal by
    searchsorted) plus a small unsorted tail of recent additions, folded into the
    sorted part only when it has grown to half its size (amortised n log n)."""

    def __init__(self) -> None:
        self._gfns = _EMPTY
        self._live = np.empty(0, dtype=bool)
        self._tail = _EMPTY
        self._nlive = 0

    def add(self, gfns: np.ndarray) -> None:
        if gfns.size:
            self._tail = np.concatenate((self._tail, np.asarray(gfns, dtype=np.int64)))
            if self._tail.size > max(4096, self._nlive // 2):
                self._fold()

    def _fold(self) -> None:
        self._gfns = np.unique(np.concatenate((self._gfns[self._live], self._tail)))
        self._live = np.ones(self._gfns.size, dtype=bool)
        self._tail = _EMPTY
        self._nlive = int(self._gfns.size)

    def __bool__(self) -> bool:
        return bool(self._nlive or self._tail.size)

    def drop(self, gfns: np.ndarray) -> int:
        """Remove ``gfns`` (unique) from the set; how many of them were in it."""
        n = 0
        if self._tail.size and gfns.size:
            hit = np.isin(self._tail, gfns)
            if hit.any():
                n += int(np.unique(self._tail[hit]).size)
                self._tail = self._tail[~hit]
        if self._nlive and gfns.size:
            idx = np.searchsorted(self._gfns, gfns)
            idx[idx == self._gfns.size] = 0
            hit = np.unique(idx[self._gfns[idx] == gfns])
            hit = hit[self._live[hit]]
            if hit.size:
                self._live[hit] = False
                self._nlive -= int(hit.size)
                n += int(hit.size)
        return n

    def count(self) -> int:
        if self._tail.size:
            self._fold()
        return self._nlive


class PageLedger:
    """Whole-run counts of what pre-fix leaves behind and what became of it.

    * ``leftover_bits``: GFNs removed from the P2M whose dirty bit stayed set (pre-fix);
      ``leftover_sent_as_xtab``: of those, how many the saver then queried and sent as
      XTAB (the wasted work); ``leftover_pending``: bits still set at the end.
    * ``unmarked_additions``: GFNs added to the P2M without a dirty bit (pre-fix);
      ``unmarked_sent``: of those, how many were sent later anyway (written after a
      CLEAN re-protected them); ``unmarked_never_sent``: the rest (missing or stale at
      the destination unless a pass had already sent the same contents).
    * ``cleared_by_fix`` / ``set_by_fix``: the bits the fix flipped, per call site.
    * ``xtab_last_pass``: XTAB entries of the last pass that was not VERIFY.
    """

    def __init__(self) -> None:
        self.leftover_bits = self.leftover_sent_as_xtab = 0
        self.unmarked_additions = self.unmarked_sent = 0
        self.cleared: dict[str, int] = {}
        self.set: dict[str, int] = {}
        self.xtab_last_pass = 0
        self._leftover = _GfnSet()
        self._unmarked = _GfnSet()

    def __call__(self, ev: Event) -> None:
        if isinstance(ev, BatchSent):
            if (self._leftover or self._unmarked) and ev.pfns.size:
                pfns = np.asarray(ev.pfns, dtype=np.int64)
                data = PFINFO_HAS_DATA[np.asarray(ev.nibbles, dtype=np.uint8)]
                if self._leftover:
                    self.leftover_sent_as_xtab += self._leftover.drop(pfns[~data])
                if self._unmarked:
                    self.unmarked_sent += self._unmarked.drop(pfns[data])
        elif isinstance(ev, MemoryOp):
            left, unmarked = ev.left_behind()
            self.leftover_bits += left
            self.unmarked_additions += unmarked
            for s in ev.sites:
                if s.cleared:
                    self.cleared[s.site] = self.cleared.get(s.site, 0) + int(s.cleared)
                if s.set and s.site != POD_DEMAND_POPULATE:
                    self.set[s.site] = self.set.get(s.site, 0) + int(s.set)
                if s.change == "add" and self._leftover:
                    # back in the P2M: no longer a leftover; a new page to be sent
                    self._leftover.drop(s.gfns)
                if s.leftover.size:
                    self._leftover.add(s.leftover)
                if s.unmarked.size:
                    self._unmarked.add(s.unmarked)
                elif s.change == "remove" and self._unmarked:
                    self._unmarked.drop(s.gfns)
        elif isinstance(ev, PassEnded) and ev.stats.phase != PassPhase.VERIFY:
            self.xtab_last_pass = int(ev.stats.xtab_sent)

    on_event = __call__

    def as_dict(self) -> dict[str, Any]:
        return {"leftover_bits": self.leftover_bits,
                "leftover_sent_as_xtab": self.leftover_sent_as_xtab,
                "leftover_pending": self._leftover.count(),
                "unmarked_additions": self.unmarked_additions,
                "unmarked_sent": self.unmarked_sent,
                "unmarked_never_sent": self._unmarked.count(),
                "cleared_by_fix": dict(sorted(self.cleared.items())),
                "set_by_fix": dict(sorted(self.set.items())),
                "xtab_last_pass": self.xtab_last_pass}


# ----------------------------------------------------------------------------- one page

_OP_WORDS = {MemoryOpKind.DECREASE_RESERVATION: "balloon inflate (decrease_reservation)",
             MemoryOpKind.POPULATE_PHYSMAP: "balloon deflate (populate_physmap)",
             MemoryOpKind.ADD_TO_PHYSMAP: "add_to_physmap",
             MemoryOpKind.REMOVE_FROM_PHYSMAP: "remove_from_physmap",
             MemoryOpKind.SET_TYPED_P2M_ENTRY: "set_typed_p2m_entry",
             MemoryOpKind.POD_POPULATE: "PoD demand populate",
             MemoryOpKind.MAP_MMIO_REGIONS: "MMIO mapped over it (XEN_DOMCTL_memory_mapping)",
             MemoryOpKind.UNMAP_MMIO_REGIONS: "MMIO unmapped (XEN_DOMCTL_memory_mapping)",
             MemoryOpKind.ACQUIRE_RESOURCE: "foreign frame mapped over it (acquire_resource)"}

#: Each fate a tracked GFN can meet (migrate.events.TrackedFinal), in words.
_FINAL_WORDS = {
    PageFate.OK: "destination: ok, the destination holds the source's last contents",
    PageFate.MISSING: "destination: MISSING, RAM at the source but never populated at the destination",
    PageFate.STALE: "destination: STALE, the destination holds older contents than the source",
    PageFate.EXTRA: "destination: extra, populated at the destination but not RAM at the source "
                    "(restore never unpopulates)",
    PageFate.ABSENT: "destination: absent at both ends (not RAM at the source, never sent with data)",
}
FINAL_STATES = frozenset(PageFate)
#: How a line names the pass a page is in.
_PASS_WORDS = {PassPhase.LIVE: "pass", PassPhase.FINAL: "final pass", PassPhase.VERIFY: "VERIFY pass",
               PassPhase.CHECKPOINT: "checkpoint"}


def _in_runs(runs: np.ndarray, gfn: int) -> bool:
    r = np.asarray(runs, dtype=np.int64).reshape(-1, 2)
    return bool(((r[:, 0] <= gfn) & (gfn < r[:, 1])).any())


class PageStory:
    """One line per event that touches one of ``gfns``: ``lines[gfn]`` is a list of
    ``(t, text)`` in event order. Costs nothing per event beyond an ``np.isin`` of the
    event's own array against the (small) tracked array."""

    def __init__(self, gfns) -> None:
        self.gfns = np.unique(np.asarray(list(gfns), dtype=np.int64))
        self.lines: dict[int, list[tuple[float, str]]] = {int(g): [] for g in self.gfns}
        self._pass = 0
        self._phase = PassPhase.LIVE
        self._bitmap_pass: dict[int, int] = {}

    def _say(self, gfn: int, t: float, text: str) -> None:
        self.lines[gfn].append((float(t), text))

    def _hits(self, arr) -> np.ndarray:
        a = np.asarray(arr, dtype=np.int64)
        if a.size == 0 or self.gfns.size == 0:
            return _EMPTY
        return self.gfns[np.isin(self.gfns, a)]

    def __call__(self, ev: Event) -> None:
        if self.gfns.size == 0:
            return
        if isinstance(ev, BatchSent):
            self._batch(ev)
        elif isinstance(ev, TrackedWrites):
            for i, g in enumerate(np.asarray(ev.gfns, dtype=np.int64).tolist()):
                if g in self.lines:
                    self._writes(g, ev, i)
        elif isinstance(ev, MemoryOp):
            for s in ev.sites:
                for g in self._hits(s.gfns).tolist():
                    self._site(g, ev, s)
        elif isinstance(ev, PassStarted):
            self._pass, self._phase = int(ev.iteration), ev.phase
            what = _PASS_WORDS[ev.phase]
            if ev.pfns is None:
                for g in self.gfns.tolist():
                    self._say(g, ev.t, f"{what} {ev.iteration} walks every PFN below p2m_size, this one included")
            else:
                for g in self._hits(ev.pfns).tolist():
                    self._say(g, ev.t, f"CLEAN returned its dirty bit: queued for {what} {ev.iteration}")
        elif isinstance(ev, RunStarted):
            for g in self.gfns.tolist():
                if _in_runs(ev.ballooned, g):
                    state = "ballooned out (not in the P2M)"
                elif _in_runs(ev.populated, g):
                    state = "RAM in the P2M"
                elif _in_runs(ev.special, g):
                    state = "a special page of the domain builder (populated, not the guest's RAM)"
                else:
                    state = "a hole (never populated)"
                self._say(g, ev.t, f"migration starts ({ev.behaviour}): GFN {g:#x} is {state}")
        elif isinstance(ev, PhaseChanged) and ev.phase == Phase.SUSPENDED:
            for g in self.gfns.tolist():
                self._say(g, ev.t, "the domain is suspended: no more writes")
        elif isinstance(ev, TrackedFinal):
            for g, st in zip(np.asarray(ev.gfns, dtype=np.int64).tolist(), ev.states):
                if g in self.lines:
                    self._say(g, ev.t, _FINAL_WORDS[st])

    on_event = __call__

    def _writes(self, g: int, ev: TrackedWrites, i: int) -> None:
        n = int(ev.writes[i])
        a, b = float(ev.first_s[i]), float(ev.last_s[i])
        span = f"at t={a:.6f} s" if n == 1 else f"{n} times, t={a:.6f}..{b:.6f} s"
        logged = float(ev.logged_s[i])
        if np.isnan(logged):
            how = "no write fault (its entry was already ram_rw): no new dirty bit"
        else:
            how = f"the write at t={logged:.6f} s faulted on ram_logdirty: dirty bit set, entry back to ram_rw"
        self._say(g, b, f"guest writes it {span}; {how}")

    def _site(self, g: int, ev: MemoryOp, s) -> None:
        op = _OP_WORDS[ev.op]
        was = bool(np.isin(g, s.dirty))
        if s.site == POD_DEMAND_POPULATE:
            self._say(g, ev.t, f"{op}: P2M add from the PoD cache (p2m_pod_demand_populate), "
                               "marked dirty in both behaviours")
            return
        if s.change == "remove":
            if not was:
                bit = "its dirty bit was clear"
            elif s.fixed:
                bit = f"its dirty bit was set: {s.site} clears it (the fix)"
            else:
                bit = (f"its dirty bit was set and stays set ({s.site} is pre-fix): "
                       "the next CLEAN hands it to the saver, which will find no page (XTAB)")
            self._say(g, ev.t, f"{op}: P2M remove by {s.site}; {bit}")
        else:
            if s.fixed:
                bit = ("already dirty" if was else
                       f"{s.site} marks it dirty (the fix): the next CLEAN returns it")
            elif was:
                bit = "not marked by the add (pre-fix), but its dirty bit was already set"
            else:
                bit = (f"NOT marked dirty ({s.site} is pre-fix): a fresh ram_rw entry, its writes "
                       "go unlogged until the next CLEAN")
            self._say(g, ev.t, f"{op}: P2M add by {s.site}; {bit}")

    def _batch(self, ev: BatchSent) -> None:
        where = _PASS_WORDS[self._phase]
        if ev.hole is not None:
            lo, hi = int(ev.hole[0]), int(ev.hole[1])
            for g in self.gfns[(self.gfns >= lo) & (self.gfns < hi)].tolist():
                self._say(g, ev.t, f"{where} {ev.iteration}: walked in a never-mapped range, sent as XTAB")
        pfns = np.asarray(ev.pfns, dtype=np.int64)
        if pfns.size == 0:
            return
        hit = np.isin(pfns, self.gfns)
        if not hit.any():
            return
        when = ev.batch_times()
        for i in np.flatnonzero(hit).tolist():
            g, nib = int(pfns[i]), int(ev.nibbles[i])
            try:
                name = PFInfo(nib).name
            except ValueError:
                name = f"type {nib:#x}"
            if PFINFO_HAS_DATA[nib]:
                text = f"{where} {ev.iteration}: type query {name}, sent with its contents"
            else:
                text = f"{where} {ev.iteration}: type query {name}, sent as a PFN word only (no data)"
            self._say(g, float(when[i]), text)

    def text(self, gfn: int) -> str:
        """The story as text, one line per event, virtual time first."""
        return "\n".join(f"t={t:10.6f} s  {line}" for t, line in self.lines[int(gfn)])


__all__ = ["FINAL_STATES", "MAX_TRACKED", "PageLedger", "PageStory"]
