"""One plain-words caption for each event that matters, with its numbers from the events.

What a teacher would say over ``xl migrate``'s progress lines: the save loop of
``tools/libs/guest/xg_sr_save.c`` (pass 1 sends every PFN; each later pass sends what
the CLEAN of the log-dirty bitmap returned; suspend; the final pass), and the two call
sites the P2M/log-dirty fix changes: ``p2m_remove_page`` (a GFN that leaves the P2M is
marked clean) and ``guest_physmap_add_entry`` (a GFN that joins it is marked dirty),
both in ``xen/arch/x86/mm/p2m.c``.

A ``Narrator`` is a listener that reads the same ``GfnMap`` the screen draws (it must be
fed after the map), so a caption never states a number the map does not show, and asks
the run's state (``migrate/events/fold.py``, fed before it) whether each call site runs
the fixed code: a run whose sites are mixed is told site by site.
``Caption.interesting`` marks the moments ``--guided`` stops at and ``n`` steps to (and the
playback holds on screen to be read); ``Caption.sites`` names the call sites of the patch
whose work the moment shows, found from the hypervisor's own account of each memory op
(``MemoryOp.sites``: each ``LogDirtyEffect.site``), for the patch panel (``patch.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from migrate.events import (BalloonMoved, BalloonNote, BalloonTarget, BatchSent, Event, MemoryOp, MigrationFinished,
                      Outcome, PassEnded, PassPhase, PassStarted, Phase, PhaseChanged, RunStarted, VerifyDone)
from migrate.events.fold import RunFold, RunState
from migrate.ui.gfnmap import GfnMap
from migrate.ui.xtab import XtabTeller
from hypervisor.abi import FixSite, XenBehaviour

PAGE = 4096
_FIX_SITES = frozenset(FixSite)
#: The mapping scenes' operations (set_typed_p2m_entry and its undoing), in words.
_MAPPING_OPS = {"map_mmio_regions": "XEN_DOMCTL_memory_mapping (MMIO BAR)",
                "unmap_mmio_regions": "XEN_DOMCTL_memory_mapping (unmap)",
                "acquire_resource": "XENMEM_acquire_resource (foreign frames)"}
_MAPPED = ("map_mmio_regions", "acquire_resource")


@dataclass(frozen=True, slots=True)
class Caption:
    t: float
    text: str
    interesting: bool = False
    slow: bool = False          # a short moment the playback shows in slow motion
    sites: tuple[str, ...] = ()  # the patch's call sites whose work this moment shows

    def line(self) -> str:
        return f"t={self.t:.2f} s {self.text}"


def _size(pages: int) -> str:
    b = pages * PAGE
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= div:
            v = b / div
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{b} B"


def _tally() -> dict[str, Any]:
    return {"gfns": 0, "dirty": 0, "cleared": 0, "set": 0, "leftover": 0, "unmarked": 0, "sites": set(),
            "done": 0}


class Narrator:
    """Event listener turning the stream into ``Caption``s (``captions``, newest last)."""

    _steal_told: int | None = None     # the balloon move whose PoD steal was told (its id)

    def __init__(self, gfnmap: GfnMap, run: RunState | None = None, *, keep: int = 200):
        self.gfnmap = gfnmap
        # the run's state, fed before the narrator (RunView does); without one, our own
        self._own = RunFold(pages=False) if run is None else None
        self.run = run if run is not None else self._own.state
        self.captions: list[Caption] = []
        self.keep = keep
        self._move: dict[str, Any] | None = None     # the balloon move in progress
        self._tally = {True: _tally(), False: _tally()}   # call-site effects: removals, additions
        self._removed_since_pass = 0
        self._added_since_pass = 0
        self._xtab = XtabTeller(gfnmap)   # which XTAB a batch shows: holes, balloon gaps, leftover bits
        self._walk_all = False          # this pass walks every PFN (pass 1)
        self._iteration = 0
        # the call sites that acted, per change ("remove" / "add"): in the latest memory
        # op that went through them, and since the current pass started
        self._acted: dict[str, tuple[str, ...]] = {}
        self._acted_in_pass: dict[str, None] = {}

    def __call__(self, ev: Event) -> Caption | None:
        if self._own is not None:
            self._own(ev)
        move = self._move
        self._see_sites(ev)
        cap = self._caption(ev)
        if cap is not None and cap.interesting:
            sites = self._acting(ev, move)
            if sites:
                cap = replace(cap, sites=sites)
        if isinstance(ev, PassStarted):
            self._acted_in_pass.clear()
        if cap is not None:
            self.captions.append(cap)
            if len(self.captions) > self.keep:
                del self.captions[: len(self.captions) - self.keep]
        return cap

    on_event = __call__

    def _fixed(self, site: str) -> bool:
        """Is this call site fixed in this run? The run's own per-site mapping says."""
        return self.run.is_fixed(site)

    @property
    def last(self) -> Caption | None:
        return self.captions[-1] if self.captions else None

    # ------------------------------------------------------------------ the sites that acted

    def _see_sites(self, ev: Event) -> None:
        if not isinstance(ev, MemoryOp):
            return
        acted: dict[str, dict[str, None]] = {}
        for eff in getattr(ev, "sites", ()):
            if eff.site in _FIX_SITES and eff.gfns.size:
                acted.setdefault(eff.change, {})[eff.site] = None
                self._acted_in_pass[eff.site] = None
        for change, sites in acted.items():
            self._acted[change] = tuple(sites)

    def _acting(self, ev: Event, move: dict[str, Any] | None) -> tuple[str, ...]:
        """Which call sites' work an interesting moment shows: the balloon's moves the
        site its direction goes through; a pass, the sites that acted before it; the
        XTAB of a later pass, the removing site that left the bits; a diverged
        destination, the adding site."""
        removed = self._acted.get("remove", ())
        added = self._acted.get("add", ())
        if isinstance(ev, BalloonTarget):
            out = int(ev.target_pages) < int(ev.current_pages)
            return (removed or (FixSite.P2M_REMOVE_PAGE.value,)) if out else \
                (added or (FixSite.GUEST_PHYSMAP_ADD_ENTRY.value,))
        if isinstance(ev, (MemoryOp, BalloonMoved)) and move is not None:
            return removed if move["out"] else added
        if isinstance(ev, PassStarted):
            return tuple(self._acted_in_pass)
        if isinstance(ev, (BatchSent, PassEnded)):
            it = ev.iteration if isinstance(ev, BatchSent) else ev.stats.iteration
            return removed if it > 1 else ()
        if isinstance(ev, VerifyDone) and not ev.stats.ok:
            return added
        return ()

    # ------------------------------------------------------------------ rules

    def _caption(self, ev: Event) -> Caption | None:
        t = float(ev.t)
        if isinstance(ev, BatchSent):
            return self._batch(ev)
        if isinstance(ev, MemoryOp):
            # tallied per direction until the move is done: the guest's note of its last
            # step and the hypervisor's events of that step may come in either order. Only
            # the balloon's own calls count (a PoD demand-populate is the hypervisor's act).
            balloon_call = ev.op in ("decrease_reservation", "populate_physmap")
            if balloon_call and ev.rc > 0:
                self._tally[ev.op == "decrease_reservation"]["done"] += int(ev.rc)
            for eff in (getattr(ev, "sites", ()) if balloon_call else ()):
                tally = self._tally[eff.change == "remove"]
                tally["gfns"] += int(eff.gfns.size)
                tally["dirty"] += int(eff.dirty.size)
                tally["cleared"] += int(eff.cleared)
                tally["set"] += int(eff.set)
                tally["leftover"] += int(eff.leftover.size)
                tally["unmarked"] += int(eff.unmarked.size)
                tally["sites"].add(eff.site)
            if ev.rc > 0 and ev.op == "decrease_reservation":
                self._removed_since_pass += int(ev.rc)
            elif ev.rc > 0 and ev.op == "populate_physmap":
                self._added_since_pass += int(ev.rc)
            if ev.op in _MAPPING_OPS:
                return self._mapping(ev)
            return self._move_done(float(ev.t)) or self._pod_steal(ev)
        if isinstance(ev, BalloonNote):
            return self._balloon(ev)
        if isinstance(ev, PassStarted):
            return self._pass_started(ev)
        if isinstance(ev, PassEnded):
            st = ev.stats
            if st.phase == PassPhase.VERIFY:
                return None
            dur = st.end_s - st.start_s
            text = (f"pass {st.iteration} done: {st.pages_sent:,} data pages, {st.xtab_sent:,} XTAB "
                    f"entries, {st.bytes / (1 << 20):.1f} MiB in {dur:.2f} s")
            if st.xtab_sent and st.iteration > 1:
                text += f" ({st.xtab_sent:,} GFNs queried for nothing)"
            return Caption(t, text, interesting=bool(st.xtab_sent and st.iteration > 1))
        if isinstance(ev, PhaseChanged) and ev.phase == Phase.SUSPENDED:
            # the saver's own words for it ("Domain now suspended") say no more than this
            return Caption(t, "the policy ends the live passes: the domain is suspended, "
                              "downtime starts", interesting=True)
        if isinstance(ev, PhaseChanged) and ev.phase in (Phase.CHECKPOINT, Phase.FAILOVER):
            return _replication(ev)
        if isinstance(ev, RunStarted):
            runs = np.asarray(ev.populated, dtype=np.int64).reshape(-1, 2)
            pod = int((runs[:, 1] - runs[:, 0]).sum()) - int(ev.guest_pages)
            pages = f"{ev.guest_pages:,} RAM pages" + (
                f" and {pod:,} populate-on-demand entries" if pod > 0 else "")
            how = str(ev.behaviour)
            if how == XenBehaviour.MIXED:
                how += ": " + ", ".join(f"{site} {b}" for site, b in ev.sites.items())
            return Caption(t, f"migration of '{ev.scenario}' starts ({how}): "
                              f"{pages}; pass 1 sends every PFN", interesting=True)
        if isinstance(ev, VerifyDone):
            return self._verify(ev)
        if isinstance(ev, MigrationFinished) and ev.outcome != Outcome.COMPLETED:
            return Caption(t, f"migration {ev.outcome}: {ev.message}", interesting=True)
        return None

    def _mapping(self, ev: MemoryOp) -> Caption | None:
        """An MMIO BAR or foreign frames mapped over RAM (set_typed_p2m_entry), or off."""
        gfns = np.asarray(ev.gfns, dtype=np.int64)
        if ev.rc < 0 or not gfns.size:
            return Caption(float(ev.t), f"{_MAPPING_OPS[ev.op]} refused (rc={ev.rc}) after {gfns.size:,} GFNs")
        where = f"GFNs {int(gfns[0]):#x}-{int(gfns[-1]):#x}"
        if ev.op not in _MAPPED:
            return Caption(float(ev.t), f"{_MAPPING_OPS[ev.op]} takes the mapping off {where}: they are holes "
                                        "now (the RAM does not come back; no mark either way)")
        typed = [e for e in ev.sites if e.site == FixSite.SET_TYPED_P2M_ENTRY]
        ram = sum(int(e.gfns.size) for e in typed)
        text = (f"{_MAPPING_OPS[ev.op]} maps {_size(gfns.size)} over {where}: set_typed_p2m_entry replaces "
                f"{ram:,} RAM entries, which the saver now finds XTAB")
        if typed and self._fixed(FixSite.SET_TYPED_P2M_ENTRY):
            text += f"; the fix marks them clean ({sum(int(e.cleared) for e in typed):,} dirty bits cleared)"
        elif typed:
            left = sum(int(e.leftover.size) for e in typed)
            text += f"; pre-fix {left:,} dirty bits stay, and the next CLEAN hands them to the saver"
        return Caption(float(ev.t), text, interesting=True, slow=True)

    def _pod_steal(self, ev: MemoryOp) -> Caption | None:
        """Once per balloon move: the PoD cache steals the RAM an inflate hands back."""
        stolen = [e for e in getattr(ev, "sites", ()) if e.site == FixSite.POD_DECREASE_RESERVATION]
        if not stolen or self._steal_told == id(self._move):
            return None
        self._steal_told = id(self._move)
        how = ("the fix marks each stolen GFN clean" if self._fixed(FixSite.POD_DECREASE_RESERVATION)
               else "pre-fix a stolen GFN's dirty bit stays, to be sent as XTAB")
        return Caption(float(ev.t), "the PoD cache is short of its entries (entry_count > count): "
                                    "p2m_pod_decrease_reservation steals the RAM the balloon hands back into "
                                    f"the cache instead of freeing it; {how}", interesting=True, slow=True)

    def _balloon(self, ev: BalloonNote) -> Caption | None:
        t = float(ev.t)
        if isinstance(ev, BalloonTarget):
            delta = int(ev.target_pages) - int(ev.current_pages)
            if not delta:
                return None
            self._move = {"out": delta < 0, "pages": 0, "ops": 0, "target": int(ev.target_pages)}
            if delta < 0:
                fix = ("fixed: any of them that are dirty are marked clean"
                       if self._fixed(FixSite.P2M_REMOVE_PAGE)
                       else "pre-fix: the dirty bits of those already dirtied stay set")
                text = (f"balloon inflates {_size(-delta)}: decrease_reservation removes "
                        f"{-delta:,} GFNs from the P2M. {fix}")
            else:
                fix = ("fixed: each one is marked dirty, so the next pass sends it"
                       if self._fixed(FixSite.GUEST_PHYSMAP_ADD_ENTRY)
                       else "pre-fix: none is marked dirty, and writes to them go unlogged "
                            "until the next CLEAN")
                text = (f"balloon deflates {_size(delta)}: populate_physmap adds {delta:,} "
                        f"GFNs back. {fix}")
            return Caption(t, text, interesting=True)
        if isinstance(ev, BalloonMoved) and self._move is not None:
            # the guest's own account of each step of the move (pages, hypercalls)
            self._move["pages"] += int(ev.pages)
            self._move["ops"] += int(ev.batches)
            if int(ev.current_pages) == self._move["target"]:
                self._move["noted"] = True
                return self._move_done(t)
        return None

    def _move_done(self, t: float) -> Caption | None:
        """The balloon move's caption, once the guest said it is done and the hypervisor's
        call-site effects of all its pages have arrived (when it reports them)."""
        m = self._move
        if m is None or not m.get("noted"):
            return None
        tally = self._tally[m["out"]]
        if tally["done"] < m["pages"] or (tally["sites"] and tally["gfns"] < m["pages"]):
            return None           # the hypervisor's events of the last step are still to come
        self._move = None
        m.update(tally)
        self._tally[m["out"]] = _tally()
        verb = "left" if m["out"] else "joined"
        call = "decrease_reservation" if m["out"] else "populate_physmap"
        text = f"balloon done: {m['pages']:,} GFNs {verb} the P2M ({call})"
        site = "/".join(sorted(m["sites"]))
        if m["out"] and m["sites"]:
            if m["leftover"]:
                text += (f". {site}, pre-fix: {m['dirty']:,} were dirty and {m['leftover']:,} "
                         "keep their bits: the next pass sends them as XTAB")
            else:
                text += f". {site}, fixed: {m['dirty']:,} were dirty and are marked clean"
        elif m["sites"]:
            if m["unmarked"]:
                text += (f". {site}, pre-fix: {m['unmarked']:,} get no dirty bit: lost unless "
                         "written after the next CLEAN")
            else:
                # a move spanning a CLEAN has had part of its GFNs listed already
                text += (f". {site}, fixed: {m['set']:,} dirty bits set: the first CLEAN after "
                         "each addition lists it")
        return Caption(t, text, interesting=bool(m["sites"]))

    def _pass_started(self, ev: PassStarted) -> Caption | None:
        t = float(ev.t)
        self._iteration = int(ev.iteration)
        self._xtab.pass_started()
        self._walk_all = ev.pfns is None
        removed, added = self._removed_since_pass, self._added_since_pass
        self._removed_since_pass = self._added_since_pass = 0
        if ev.phase == PassPhase.VERIFY:
            return Caption(t, "VERIFY pass: everything is sent again while the domain is suspended")
        if ev.pfns is None:
            return None           # pass 1: said when the run started
        ps = self.gfnmap.pass_start
        head = ("final pass" if ev.phase == PassPhase.FINAL else f"pass {ev.iteration}")
        parts = [f"{head}: the CLEAN gave dirty_count {ev.dirty_count:,}"]
        interesting = ev.phase == PassPhase.FINAL
        left, lost, listed = ps.get("leftover", 0), ps.get("added_lost", 0), ps.get("added_listed", 0)
        if left:
            parts.append(f"{left:,} of them are not in the P2M (bits the balloon left set, pre-fix): "
                         f"{left:,} XTAB entries to come")
            interesting = True
        elif removed and self._fixed(FixSite.P2M_REMOVE_PAGE):
            parts.append(f"none of the {removed:,} ballooned GFNs is listed: the fix cleaned their bits")
            interesting = True
        if lost:
            parts.append(f"{lost:,} GFNs added by populate_physmap are not listed: never marked "
                         "dirty (pre-fix)")
            interesting = True
        elif listed and added:
            if self._fixed(FixSite.GUEST_PHYSMAP_ADD_ENTRY):
                parts.append(f"the {listed:,} GFNs populate_physmap added are listed: the fix marked "
                             "them dirty")
            elif not self._fixed(FixSite.P2M_REMOVE_PAGE):
                # pre-fix: the addition sets no bit; the bit these carry was set before the
                # balloon took them and p2m_remove_page left it set
                parts.append(f"the {listed:,} GFNs populate_physmap added are listed, though pre-fix "
                             "did not mark them: each kept the dirty bit it had when the balloon "
                             "took it (pre-fix)")
            else:
                parts.append(f"the {listed:,} GFNs populate_physmap added are listed, though pre-fix "
                             "did not mark them")
            interesting = True
        return Caption(t, ". ".join(parts), interesting=interesting)

    def _batch(self, ev: BatchSent) -> Caption | None:
        said = self._xtab.caption(ev, self._walk_all, self._fixed)
        if said is None:
            return None
        kind, text = said     # a layout hole is every run's background: told, not stopped at
        return Caption(float(ev.t), text, interesting=kind != "hole", slow=kind != "hole")

    def _verify(self, ev: VerifyDone) -> Caption:
        v = ev.stats
        t = float(ev.t)
        if v.ok:
            return Caption(t, "the destination matches the source as it stood at suspend", interesting=True)
        bits = [f"{v.missing_pages:,} missing", f"{v.stale_pages:,} stale"]
        why = ("GFNs populate_physmap added were never marked dirty, so no pass sent their "
               "new contents")
        return Caption(t, f"the destination DIVERGED: {', '.join(bits)}: {why}", interesting=True)


__all__ = ["Caption", "Narrator"]


def _replication(ev: PhaseChanged) -> Caption:
    """A checkpointed (Remus) stream's commit, or its failover (``toolstack/checkpoint.py``)."""
    if ev.phase == Phase.FAILOVER:
        return Caption(float(ev.t), f"failover: {ev.detail}; the backup is checked against the primary "
                                    "as it stood at that checkpoint", interesting=True)
    behind = "missing" in ev.detail
    return Caption(float(ev.t), f"{ev.detail}: the primary was paused, sent what it dirtied and a CHECKPOINT "
                                "record, and runs again; the backup applied the checkpoint's records at once",
                   interesting=behind)
