"""Populate-on-demand: the PoD cache and the PoD half of decrease_reservation.

Mirrors ``xen/arch/x86/mm/p2m-pod.c``. A PoD guest boots with more GFNs than frames:
its GFNs are ``p2m_populate_on_demand`` entries (``pod.entry_count`` of them, here the
P2M's PoD entry count), backed by a cache of reserved frames (``pod.count``). The first
access to a PoD GFN (a guest write, or the toolstack's getpageframeinfo3 with
P2M_ALLOC) takes a frame from the cache, maps it ``p2m_ram_rw`` and marks the GFN dirty
(``p2m_pod_demand_populate``; that marking predates the seed patch, so both behaviours
do it). The balloon driver gives PoD entries back through decrease_reservation, which
first runs ``p2m_pod_decrease_reservation``: PoD entries in the range just become
invalid, and while the cache is short of the outstanding entries
(``entry_count > count``, whatever the range holds) real RAM pages in the range are
stolen into the cache (marked clean with the fix); a cache left larger than the
outstanding entries is trimmed to them (``out_entry_check``). ``memory.py`` applies the
plan computed here.

Not modelled: the zero-page sweep (``p2m_pod_zero_check`` / emergency sweep); an empty
cache at demand-populate time, where Xen crashes the domain, is counted instead.
"""

from __future__ import annotations

import numpy as np

from .abi import IS_POD, IS_RAM


class PoDCache:
    """``p2m->pod``'s cache of frames reserved for PoD entries (LIFO)."""

    def __init__(self):
        self._stack = np.empty(0, dtype=np.int64)

    @property
    def count(self) -> int:
        return int(self._stack.size)

    def add(self, mfns) -> None:
        """p2m_pod_cache_add."""
        self._stack = np.concatenate([self._stack, np.asarray(mfns, dtype=np.int64).reshape(-1)])

    def take(self, n: int) -> np.ndarray:
        """p2m_pod_cache_get for ``n`` frames (the caller checks ``count``)."""
        n = int(n)
        out = self._stack[self._stack.size - n:][::-1].copy() if n else np.empty(0, np.int64)
        self._stack = self._stack[: self._stack.size - n]
        return out


def decrease_plan(types: np.ndarray, entry_count: int, cache_count: int) -> tuple[np.ndarray, np.ndarray]:
    """What ``p2m_pod_decrease_reservation`` handles, extent by extent, for a run of
    order-0 extents with p2m types ``types`` (unique GFNs, in request order).

    Returns ``(is_pod, steal)`` bool masks. Per extent Xen computes
    ``steal_for_cache = entry_count > count`` before acting: a PoD entry lowers
    entry_count, a stolen RAM page raises count, so the deficit ``entry_count - count``
    drops by one at every PoD entry and every RAM page until it reaches zero; RAM pages
    met while it is still positive are stolen. With no PoD entries nothing is handled.
    """
    is_pod = IS_POD[types]
    if entry_count <= 0:
        return np.zeros(types.size, dtype=bool), np.zeros(types.size, dtype=bool)
    is_ram = IS_RAM[types]
    step = (is_pod | is_ram).astype(np.int64)
    before = np.cumsum(step) - step
    steal = is_ram & ((entry_count - cache_count) - before > 0)
    return is_pod, steal
