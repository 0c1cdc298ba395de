"""The log-dirty marks a P2M change makes: the one home of seed patch 98fccdf0ac.

98fccdf0ac ("x86/mm: update log-dirty bitmap when manipulating P2M") adds a
``paging_mark_pfn_clean`` where a GFN leaves the P2M (``p2m_remove_page`` and
``set_typed_p2m_entry`` in ``xen/arch/x86/mm/p2m.c``, ``p2m_pod_decrease_reservation``
in ``xen/arch/x86/mm/p2m-pod.c``) and a ``paging_mark_pfn_dirty`` where one enters it
(``guest_physmap_add_entry``, p2m.c). Each site is ``fixed`` or ``pre-fix`` on its own
(``Domain.fixed``). :func:`remove` and :func:`add` make a site's mark for a set of GFNs
(nothing without log-dirty mode, as ``paging_mark_pfn_*`` does nothing then), whether
memory.c serves one call or a run of calls at once; the returned :class:`SiteMark`
says what the site did, as one call's ``LogDirtyEffect`` (:meth:`SiteMark.effect`) or
as each call's of a run (:meth:`SiteMark.split`). The marks outside the patch
(``paging_mark_pfn_dirty`` from a HAP write fault, a PoD demand populate and a
writable foreign mapping, ``xen/arch/x86/mm/paging.c``) are :func:`mark_dirty`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .abi import POD_DEMAND_POPULATE, FixSite, LogDirtyEffect

_EMPTY = np.empty(0, dtype=np.int64)
REMOVE = "remove"
ADD = "add"


@dataclass(frozen=True, slots=True)
class SiteMark:
    """What one call site did for ``gfns`` (in op order): ``was`` marks those whose bit
    was set when it ran (None: nobody reads it, so it was not looked at); ``flipped``
    the bits its mark changed (0 when the site is pre-fix or log-dirty mode is off)."""

    site: str
    change: str
    fixed: bool
    gfns: np.ndarray
    was: np.ndarray | None
    flipped: int
    marking: bool          # the fix's mark was made (fixed, in log-dirty mode)

    def effect(self) -> LogDirtyEffect:
        """The site's effect as one call's record (its own copy of the GFNs)."""
        return self._effect(self.gfns.copy(), _EMPTY if self.was is None else self.gfns[self.was], self.flipped,
                            None if self.was is None else self.gfns[~self.was])

    def _effect(self, gfns: np.ndarray, dirty: np.ndarray, flipped: int,
                clean: np.ndarray | None) -> LogDirtyEffect:
        if self.change == REMOVE:
            # Without the fix the bits of the removed GFNs stay: the saver's next CLEAN
            # hands them over, and it sends them as XTAB.
            return LogDirtyEffect(self.site, REMOVE, self.fixed, gfns, dirty, flipped, 0,
                                  _EMPTY if self.fixed else dirty, _EMPTY)
        # Without the fix an added GFN not already dirty stays unmarked.
        unmarked = clean if not self.fixed and clean is not None else _EMPTY
        return LogDirtyEffect(self.site, ADD, self.fixed, gfns, dirty, 0, flipped, _EMPTY, unmarked)

    def split(self, g: np.ndarray, starts: list[int], ends: list[int]) -> list[LogDirtyEffect]:
        """The effect of each call ``g[a:e]`` of a run served at once, as :meth:`effect`
        gives it for the call served alone (``g``: a copy of ``gfns`` whose slices the
        effects share; with an unbounded node pool a mark flips every bit it can, so a
        call's flips are its GFNs whose bit was clear (add) or set (remove))."""
        cw = [0] * (len(starts) + 1)     # bits set before each call's first extent
        dg, cg = _EMPTY, None
        if self.was is not None:
            full = [a for a, e in zip(starts, ends) if e > a]   # (only the last may be empty)
            if full:
                cw[1:len(full) + 1] = np.cumsum(np.add.reduceat(self.was, full, dtype=np.int64)).tolist()
                cw[len(full) + 1:] = cw[len(full):len(full) + 1] * (len(starts) - len(full))
            dg = g[self.was]
            cg = g[~self.was] if not (self.fixed or self.change == REMOVE) else None
        out = []
        for a, e, ca, ce in zip(starts, ends, cw[:-1], cw[1:]):
            dirty = _EMPTY if self.was is None else dg[ca:ce]
            if self.change == REMOVE:
                flipped = ce - ca if self.marking else 0
            else:
                flipped = (e - a) - (ce - ca) if self.marking else 0
            clean = cg[a - ca:e - ce] if cg is not None else None
            out.append(self._effect(g[a:e], dirty, flipped, clean))
        return out


def _dirty_now(d, gfns: np.ndarray) -> np.ndarray | None:
    """Per-GFN "bit set now", when an effect record needs it (None otherwise)."""
    if not (d.trace.record and d.log_dirty_enabled and gfns.size):
        return None
    return d.logdirty.is_dirty(gfns)


def _mark(d, gfns: np.ndarray, site: FixSite, change: str) -> SiteMark:
    """The one mark both directions make: when ``site`` is fixed and log-dirty is on,
    flip the bits of ``gfns`` (clean on REMOVE, dirty on ADD) and count the flips."""
    fixed = d.fixed[site]
    was = _dirty_now(d, gfns)
    marking = fixed and d.log_dirty_enabled
    n = 0
    if marking and gfns.size:
        if change == REMOVE:
            n = d.logdirty.mark_clean(gfns)
            d.marks_clean += n
        else:
            n = d.logdirty.mark_dirty(gfns)
            d.marks_dirty += n
    return SiteMark(FixSite(site).value, change, fixed, gfns, was, n, marking)


def remove(d, gfns: np.ndarray, site: FixSite) -> SiteMark:
    """``gfns`` leave the P2M at ``site``: with the fix, paging_mark_pfn_clean each
    (next to set_gpfn_from_mfn(INVALID_M2P_ENTRY)). Never allocates a tree node."""
    return _mark(d, gfns, site, REMOVE)


def add(d, gfns: np.ndarray, site: FixSite = FixSite.GUEST_PHYSMAP_ADD_ENTRY) -> SiteMark:
    """``gfns`` enter the P2M at ``site`` (p2m_add_page): with the fix,
    paging_mark_pfn_dirty each. Call it once the entries are set."""
    return _mark(d, gfns, site, ADD)


def removed(d, gfns: np.ndarray, site: FixSite) -> None:
    """One call's removal at ``site``: the mark, and its effect recorded for the call."""
    mark = remove(d, gfns, site)
    if d.trace.record:
        d.trace.effect(mark.effect())


def added(d, gfns: np.ndarray, site: FixSite = FixSite.GUEST_PHYSMAP_ADD_ENTRY) -> None:
    """One call's addition at ``site``: the mark, and its effect recorded for the call."""
    mark = add(d, gfns, site)
    if d.trace.record:
        d.trace.effect(mark.effect())


def mark_dirty(d, gfns: np.ndarray) -> int:
    """paging_mark_pfn_dirty outside the patch: nothing unless in log-dirty mode."""
    n = 0
    if d.log_dirty_enabled and gfns.size:
        n = d.logdirty.mark_dirty(gfns)
        d.marks_dirty += n
    return n


def pod_populated(d, gfns: np.ndarray) -> None:
    """p2m_pod_demand_populate marks each GFN it backs dirty, in both behaviours (the
    code before the patch already did)."""
    dirty = _EMPTY if (was := _dirty_now(d, gfns)) is None else gfns[was]
    n = mark_dirty(d, gfns)
    d.trace.effect(LogDirtyEffect(POD_DEMAND_POPULATE, ADD, True, gfns.copy(), dirty, 0, n))
