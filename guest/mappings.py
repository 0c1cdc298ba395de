"""Mappings placed over the guest's GFNs while it runs: an MMIO BAR or foreign frames.

Two ways a running HVM domain gets a special P2M entry over what was its RAM, both
through ``set_typed_p2m_entry`` (``xen/arch/x86/mm/p2m.c``), one of the four places
seed patch 98fccdf0ac marks a GFN clean:

* ``kind: mmio``: the device model maps a passed-through device's BAR with
  XEN_DOMCTL_memory_mapping (``xen/common/domctl.c`` -> ``map_mmio_regions`` ->
  ``set_mmio_p2m_entry``, type ``p2m_mmio_direct``) and unmaps it later
  (``unmap_mmio_regions`` -> ``clear_mmio_p2m_entry``);
* ``kind: foreign``: the domain, acting as a backend or device model itself, maps
  another domain's frames into its own physmap with XENMEM_acquire_resource
  (``xen/common/memory.c``: ``set_foreign_p2m_entry``, type ``p2m_map_foreign``) and
  drops them with XENMEM_remove_from_physmap.

Either way the RAM page that was at a GFN is the guest's no more: it stops writing
there, and unmapping leaves a hole, not the RAM (neither Xen function gives it back).
The driver here yields one ``MemoryMapping`` / ``ForeignMapping`` op per scheduled
change, at the first tick at or after its time, after the balloon driver's turn in that
tick; like the balloon driver it catches up at the next tick that runs when its time
fell in skipped time (a paused or suspended domain). It only imports the hypervisor's
ABI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Generator

import numpy as np

from hypervisor.abi import ForeignMapping, HypercallResult, MemoryMapping

from .config import GuestConfig
from .layout import GuestLayout

_OPS = {"mmio": MemoryMapping, "foreign": ForeignMapping}


@dataclass(frozen=True)
class MappingChange:
    """One scheduled change: at tick ``tick`` (time ``at``), map (``add``) or unmap
    ``nr`` GFNs from ``first_gfn`` as ``kind``."""

    tick: int
    at: float
    kind: str
    first_gfn: int
    nr: int
    add: bool


def mapping_changes(cfg: GuestConfig) -> list[MappingChange]:
    """The scenario's ``mappings`` as changes in time order (a map before an unmap due
    in the same tick; otherwise the file's order)."""
    out = []
    for m in cfg.mappings:
        first, nr = int(m.gfns.first), int(m.gfns.stop - m.gfns.first)
        out.append(MappingChange(_tick(m.at, cfg.tick), float(m.at), m.kind, first, nr, True))
        if m.until is not None:
            out.append(MappingChange(_tick(m.until, cfg.tick), float(m.until), m.kind, first, nr, False))
    return sorted(out, key=lambda c: (c.tick, not c.add))


def _tick(at: float, tick: float) -> int:
    return int(math.ceil(at / tick - 1e-9))


class Mappings:
    """The schedule of mappings and the guest's RAM they took (``owned`` is the
    guest's one bool per RAM page, shared with the balloon driver)."""

    STATE = ("_next", "lost")

    def __init__(self, cfg: GuestConfig, layout: GuestLayout, owned: np.ndarray):
        self.layout = layout
        self.owned = owned
        self.changes = mapping_changes(cfg)
        self._next = 0
        #: RAM pages a mapping took (the guest owns them no more).
        self.lost = 0

    def snapshot(self) -> dict:
        return {name: getattr(self, name) for name in self.STATE}

    def restore(self, snap: dict) -> None:
        for name in self.STATE:
            setattr(self, name, snap[name])

    def next_active_tick(self, k: int) -> int | None:
        """The first tick ``>= k`` at which a change is due (None: none left)."""
        if self._next < len(self.changes):
            return max(k, self.changes[self._next].tick)
        return None

    def step(self, k: int, t: float) -> Generator:
        """The changes due by tick ``k``, made at ``t``: yields one op each and expects
        its ``HypercallResult``. RAM pages under a new mapping leave the guest."""
        while self._next < len(self.changes) and self.changes[self._next].tick <= k:
            c = self.changes[self._next]
            self._next += 1
            res: HypercallResult = yield _OPS[c.kind](t, c.first_gfn, c.nr, c.add)
            if c.add and res is not None and np.asarray(res.done).size:
                pages = self.layout.gfn_to_page(np.asarray(res.done, dtype=np.int64))
                pages = pages[pages >= 0]
                if pages.size:
                    self.lost += int(np.count_nonzero(self.owned[pages]))
                    self.owned[pages] = False
