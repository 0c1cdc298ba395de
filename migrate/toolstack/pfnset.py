"""The restorer's set of populated PFNs: Xen's ``populated_pfns`` bitmap.

Mirrors ``pfn_is_populated`` / ``pfn_set_populated`` in ``tools/libs/guest/xg_sr_restore.c``,
which keep one bit per PFN the restore has populated (so ``populate_pfns`` asks Xen only
for PFNs it has not populated yet). Held as 32768-bit leaves, as the log-dirty tree's
leaves are, so a sparse 2^40 PFN space costs only the leaves it touches.
"""

from __future__ import annotations

import numpy as np

from hypervisor.runs import chunk_pieces


class PfnSet:
    """A sparse set of PFNs held as 32768-bit leaves (like the log-dirty tree's
    leaves: one bit per PFN, 4 KiB per leaf), so a sparse 2^40 PFN space costs only
    the leaves it touches and a dense one 1/8 byte per PFN."""

    SHIFT = 15
    MASK = (1 << SHIFT) - 1

    def __init__(self) -> None:
        self._leaves: dict[int, np.ndarray] = {}    # leaf key -> 4096 uint8, bit i = PFN i
        self.count = 0

    def _groups(self, pfns: np.ndarray, ascending: bool = False):
        """``(leaf key, positions)`` for each leaf the PFNs touch; for ascending PFNs
        (the stream's order) the positions are slices, found without a sort (and with
        no per-PFN work when the caller knows them strictly ``ascending``)."""
        if ascending:
            for h, a, b in chunk_pieces(pfns, self.SHIFT):
                yield h, slice(a, b)
            return
        hi = pfns >> self.SHIFT
        h0, h1 = int(hi[0]), int(hi[-1])
        if h0 == h1 and (pfns.size < 3 or bool((hi == h0).all())):
            yield h0, slice(0, pfns.size)
            return
        if h0 <= h1 and bool((hi[1:] >= hi[:-1]).all()):
            cuts = (np.flatnonzero(hi[1:] != hi[:-1]) + 1).tolist()
            for a, b in zip([0] + cuts, cuts + [pfns.size]):
                yield int(hi[a]), slice(a, b)
            return
        for h in np.unique(hi).tolist():
            yield h, hi == h

    def contains(self, pfns: np.ndarray, ascending: bool = False) -> np.ndarray:
        """Per-PFN membership (``ascending``: the caller knows ``pfns`` strictly increasing)."""
        out = np.zeros(pfns.shape, dtype=bool)
        if pfns.size == 0 or not self._leaves:
            return out
        for h, sel in self._groups(pfns, ascending):
            leaf = self._leaves.get(h)
            if leaf is None:
                continue
            off = self._offsets(pfns, sel, ascending)
            if isinstance(off, slice):
                # A run: only the bytes holding its bits are looked at and unpacked.
                a, b = off.start >> 3, (off.stop + 7) >> 3
                if leaf[a:b].any():       # (none: a run of a restore's new pages)
                    out[sel] = np.unpackbits(leaf[a:b], bitorder="little").view(bool)[
                        off.start - 8 * a:off.stop - 8 * a]
                continue
            out[sel] = np.unpackbits(leaf, bitorder="little").view(bool)[off]
        return out

    def _offsets(self, pfns: np.ndarray, sel, ascending: bool = False):
        """The in-leaf offsets of ``pfns[sel]``: a slice when they are one ascending run
        (a restore group's usual shape), else an index array."""
        if isinstance(sel, slice):
            p = pfns[sel]
            a, b = int(p[0]), int(p[-1])
            # Strictly increasing and spanning size - 1: exactly the run [a, b].
            if b - a == p.size - 1 and (ascending or p.size < 2 or bool((p[1:] > p[:-1]).all())):
                return slice(a & self.MASK, (b & self.MASK) + 1)
        return pfns[sel] & self.MASK

    def add(self, pfns: np.ndarray, ascending: bool = False) -> None:
        """Add PFNs known to be absent and unique (``ascending``: and strictly increasing)."""
        if pfns.size == 0:
            return
        for h, sel in self._groups(pfns, ascending):
            leaf = self._leaves.get(h)
            if leaf is None:
                leaf = self._leaves[h] = np.zeros((1 << self.SHIFT) // 8, dtype=np.uint8)
            off = self._offsets(pfns, sel, ascending)
            if isinstance(off, slice):
                # A run: its whole bytes set outright, the bytes at its two ends by mask.
                a, b = off.start, off.stop
                if (a >> 3) == ((b - 1) >> 3):
                    leaf[a >> 3] |= ((1 << (b - a)) - 1) << (a & 7)
                    continue
                leaf[(a + 7) >> 3:b >> 3] = 0xFF
                if a & 7:
                    leaf[a >> 3] |= (0xFF << (a & 7)) & 0xFF
                if b & 7:
                    leaf[b >> 3] |= (1 << (b & 7)) - 1
                continue
            bits = np.zeros(1 << self.SHIFT, dtype=bool)
            bits[off] = True
            leaf |= np.packbits(bits, bitorder="little")
        self.count += int(pfns.size)

    def to_array(self) -> np.ndarray:
        parts = [np.flatnonzero(np.unpackbits(self._leaves[h], bitorder="little")) + (h << self.SHIFT)
                 for h in sorted(self._leaves)]
        return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, dtype=np.int64)
