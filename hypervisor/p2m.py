"""The P2M (guest frame -> machine frame, with p2m types) and the M2P.

Mirrors ``xen/arch/x86/mm/p2m.c``'s view of a domain's physmap: one entry per GFN
holding a ``p2m_type_t`` and an MFN (``p2m_set_entry`` / ``p2m_get_entry``), and the
machine-to-physical table that ``set_gpfn_from_mfn`` keeps in step on every add,
remove and replace (``INVALID_M2P_ENTRY`` when a frame is in no physmap). The
``max_mapped_pfn`` high-water mark is what ``domain_get_maximum_gpfn`` reports; like
Xen's, it never goes down.

Both tables are sparse chunked arrays (``chunked.py``: a directory of 2^18-entry
chunks, an absent chunk reading as p2m_invalid / INVALID_MFN / INVALID_M2P_ENTRY); the
P2M's MFNs and the M2P hold a chunk that is one run of frames as that run
(``linear_chunked.py``), as Xen's superpage mappings do.

Memory per page:
* P2M: 1 byte per GFN for the type in every touched 2^18-GFN chunk; 4 bytes per GFN
  for the MFN only in chunks that are not one run (0 for a freshly built guest); plus a
  4-byte directory entry per chunk up to the highest chunk touched (16 MiB per table
  for a GFN near 2^40, 64 KiB for one near 2^32);
* M2P: the same for MFNs -> GFNs (4 bytes per MFN, uint32 GFN, 0xFFFFFFFF invalid, in
  chunks that are not one run); a GFN beyond 2^32 - 2 adds a 2-byte high part in its
  chunk only (``frames.py`` adds 8 bytes per MFN for the content token).
"""

from __future__ import annotations

import numpy as np

from .abi import INVALID_M2P_ENTRY, INVALID_MFN, IS_RAM, MAX_GFN, P2MType
from .chunked import ChunkedArray
from .linear_chunked import LinearChunkedArray
from .runs import CHUNK, run_start
from .tables import add_where, lookup, run_array, uniform_byte

__all__ = ["P2M", "M2P", "M2P_LOW_MAX"]

#: GFNs per ``P2M.touched`` flag: a saver's batch (MAX_BATCH_SIZE, 1024).
BLOCK_BITS = 10


class P2M:
    """Per-GFN p2m type (uint8) and MFN (uint32), with a per-type entry histogram."""

    def __init__(self):
        self.types = ChunkedArray(np.uint8, P2MType.invalid)
        self.mfns = LinearChunkedArray(np.uint32, INVALID_MFN)
        #: Entries per p2m type (p2m_invalid's count is relative: default entries are not held).
        self.type_counts = np.zeros(16, dtype=np.int64)
        self.max_mapped_pfn = -1
        #: One flag per block of BLOCK GFNs (a saver's batch): has any entry in it ever
        #: been set? A block never set is all XTAB to a saver, which may walk it in bulk
        #: (``ever_set_runs``); finer than the tables' 2^18-GFN chunks, so the gap between
        #: a guest's RAM and libxc's special pages is such a walk, not batch after batch.
        self.touched = ChunkedArray(np.uint8, 0)

    def get(self, gfns) -> tuple[np.ndarray, np.ndarray]:
        """p2m_get_entry over an array: ``(types uint8, mfns uint32)``; GFNs outside
        ``[0, MAX_GFN]`` read as p2m_invalid."""
        g = np.asarray(gfns, dtype=np.int64).reshape(-1)
        g0 = self._in_range_run(g)
        if g0 is not None:                         # a run: each table reads its slices
            return self.types.get_run(g0, g.size), self.mfns.get_run(g0, g.size)
        if g.size and (int(g.min()) < 0 or int(g.max()) > MAX_GFN):
            bad = (g < 0) | (g > MAX_GFN)
            t = np.full(g.size, P2MType.invalid, dtype=np.uint8)
            m = np.full(g.size, INVALID_MFN, dtype=np.uint32)
            ok = ~bad
            t[ok] = self.types.get(g[ok])
            m[ok] = self.mfns.get(g[ok])
            return t, m
        return self.types.get(g), self.mfns.get(g)

    @staticmethod
    def _in_range_run(g: np.ndarray) -> int | None:
        """``run_start(g)`` for a run inside ``[0, MAX_GFN]`` (checked once for both tables)."""
        g0 = run_start(g)
        return g0 if g0 is not None and g0 >= 0 and g0 + g.size - 1 <= MAX_GFN else None

    def get_types(self, gfns) -> np.ndarray:
        g = np.asarray(gfns, dtype=np.int64).reshape(-1)
        g0 = self._in_range_run(g)
        if g0 is not None:
            return self.types.get_run(g0, g.size)
        if g.size and (int(g.min()) < 0 or int(g.max()) > MAX_GFN):
            bad = (g < 0) | (g > MAX_GFN)
            t = np.full(g.size, P2MType.invalid, dtype=np.uint8)
            t[~bad] = self.types.get(g[~bad])
            return t
        return self.types.get(g)

    def set(self, gfns, types, mfns, old: np.ndarray | None = None) -> None:
        """p2m_set_entry over unique, in-range GFNs (``old``: their current types, when
        the caller has just read them)."""
        g = np.asarray(gfns, dtype=np.int64).reshape(-1)
        if g.size == 0:
            return
        if old is None:
            old = self.types.get(g)
        self._uncount(old)
        self._touch(g)
        if np.ndim(types) == 0:                    # one type for all (every caller here)
            t = int(types)
            self.type_counts[t] += g.size
            self.types.set(g, self.types.dtype.type(t))
            self.mfns.set(g, mfns)
            if t != P2MType.invalid:
                self.max_mapped_pfn = max(self.max_mapped_pfn, int(g.max()))
            return
        new = np.broadcast_to(np.asarray(types, dtype=np.uint8), g.shape)
        self.type_counts += np.bincount(new, minlength=16)
        self.types.set(g, new)
        self.mfns.set(g, mfns)
        mapped = g[new != P2MType.invalid]
        if mapped.size:
            self.max_mapped_pfn = max(self.max_mapped_pfn, int(mapped.max()))

    def set_run(self, g0: int, n: int, t: int, m0: int, old: np.ndarray | None = None) -> None:
        """``set(arange(g0, g0 + n), t, arange(m0, m0 + n), old)``: a run of GFNs mapped
        to a run of frames (a build step, a restore group), with no per-GFN arrays."""
        if n == 0:
            return
        self._uncount(self.types.get_run(g0, n) if old is None else old)
        t = int(t)
        self.type_counts[t] += n
        b0 = g0 >> BLOCK_BITS
        self.touched.set_run(b0, ((g0 + n - 1) >> BLOCK_BITS) - b0 + 1, 1)
        self.types.set_run(g0, n, t)
        self.mfns.set_linear(g0, n, m0)
        if t != P2MType.invalid:
            self.max_mapped_pfn = max(self.max_mapped_pfn, g0 + n - 1)

    def _touch(self, g: np.ndarray) -> None:
        b = g >> BLOCK_BITS
        if b.size > 1:
            if (b[1:] >= b[:-1]).all():        # ascending (almost every caller): no sort
                b = b[np.concatenate(([True], b[1:] != b[:-1]))]
            else:
                b = np.unique(b)
        self.touched.set(b, 1)

    def ever_set_runs(self, lo: int, hi: int) -> np.ndarray:
        """``(k, 2)`` GFN runs within [lo, hi), in whole blocks (clipped to [lo, hi)),
        outside which no entry has ever been set."""
        if hi <= lo:
            return np.empty((0, 2), dtype=np.int64)
        b_lo, b_hi = lo >> BLOCK_BITS, ((hi - 1) >> BLOCK_BITS) + 1
        parts = []
        for base, row in self.touched.chunks(b_lo, b_hi):
            idx = np.flatnonzero(row) + base
            idx = idx[(idx >= b_lo) & (idx < b_hi)]
            if idx.size:
                parts.append(idx)
        if not parts:
            return np.empty((0, 2), dtype=np.int64)
        idx = np.concatenate(parts)
        breaks = np.flatnonzero(np.diff(idx) != 1) + 1
        starts = np.concatenate(([idx[0]], idx[breaks])) << BLOCK_BITS
        ends = (np.concatenate((idx[breaks - 1], [idx[-1]])) + 1) << BLOCK_BITS
        return np.stack([np.maximum(starts, lo), np.minimum(ends, hi)], axis=1).astype(np.int64)

    def _uncount(self, old: np.ndarray) -> None:
        """Take entries of the types ``old`` out of the histogram."""
        o0 = int(old[0])
        if int(old.min()) == o0 == int(old.max()):   # one old type (a build step, a balloon op)
            self.type_counts[o0] -= old.size
        else:
            self.type_counts -= np.bincount(old, minlength=16)

    def change_type(self, gfns, ot: P2MType, nt: P2MType) -> None:
        """p2m_change_type_one over unique GFNs that are all of type ``ot``: they become
        ``nt`` and keep their MFNs (so the MFN table is not touched)."""
        g = np.asarray(gfns, dtype=np.int64).reshape(-1)
        if g.size == 0:
            return
        self.type_counts[int(ot)] -= g.size
        self.type_counts[int(nt)] += g.size
        self.types.set(g, self.types.dtype.type(int(nt)))

    def change_type_global(self, ot: P2MType, nt: P2MType) -> None:
        """p2m_change_entry_type_global: every ``ot`` entry becomes ``nt``."""
        # A row at a time: each row's mask stays in cache (one pass over the whole
        # table's mask would be a fresh, page-faulting array as big as the table).
        for row in self.types.rows_in_use():
            add_where(row, row == np.uint8(ot), int(nt) - int(ot))
        self.type_counts[nt] += self.type_counts[ot]
        self.type_counts[ot] = 0

    def gfns_where(self, table: np.ndarray, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Sorted GFNs in [lo, hi) whose type is in a 16-entry bool class table
        (abi.IS_RAM, ...)."""
        top = MAX_GFN + 1 if hi is None else hi
        parts = []
        for base, row in self.types.chunks(lo, hi):
            a, b = max(lo - base, 0), min(top - base, CHUNK)   # only the part in [lo, hi)
            if b <= a:
                continue
            seg = row[a:b]
            t0 = uniform_byte(seg)                     # (types are uint8)
            if t0 is not None:
                # One type over the whole part (a guest's RAM, all of it ballooned out):
                # all of it or none, with no per-entry mask.
                if table[t0]:
                    parts.append(run_array(base + a, b - a))
                continue
            part = np.flatnonzero(lookup(table, seg)).astype(np.int64, copy=False)
            part += base + a
            parts.append(part)
        if not parts:
            return np.empty(0, dtype=np.int64)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def ram_count(self) -> int:
        return int(self.type_counts[IS_RAM].sum())


#: Largest GFN an M2P entry holds in its 32-bit word alone; larger GFNs (guest-physical
#: addresses at or beyond 16 TiB) also take a high part, see :class:`M2P`.
M2P_LOW_MAX = 0xFFFFFFFE
_M2P_LOW_INVALID = np.uint32(0xFFFFFFFF)


class M2P:
    """The machine-to-physical table: per-MFN GFN, INVALID_M2P_ENTRY (-1) when unmapped.

    Held as 4 bytes per MFN: a uint32 word with 0xFFFFFFFF for INVALID_M2P_ENTRY (Xen's
    own value for a 32-bit M2P entry). A GFN above :data:`M2P_LOW_MAX` (the P2M reaches
    2^40 - 1) keeps its low 32 bits there and ``(gfn >> 32) + 1`` in a uint16 ``high``
    table whose chunks exist only where such GFNs were ever stored, so a guest below
    16 TiB of guest-physical space pays nothing for it.
    """

    def __init__(self):
        self.low = LinearChunkedArray(np.uint32, _M2P_LOW_INVALID)
        self.high = ChunkedArray(np.uint16, 0)

    def get(self, mfns) -> np.ndarray:
        """int64 GFNs, -1 where unmapped."""
        m = np.asarray(mfns, dtype=np.int64)
        low = self.low.get(m).astype(np.int64)
        out = np.where(low == int(_M2P_LOW_INVALID), INVALID_M2P_ENTRY, low)
        if self.high.nrows:
            hi = self.high.get(m).astype(np.int64)
            big = hi > 0
            out[big] = ((hi[big] - 1) << 32) | low[big]
        return out

    def set(self, mfns, gfns) -> None:
        """set_gpfn_from_mfn over unique MFNs (gfns in [0, MAX_GFN] or -1)."""
        m = np.asarray(mfns, dtype=np.int64).reshape(-1)
        if m.size == 0:
            return
        g = np.asarray(gfns, dtype=np.int64)
        if g.ndim == 0:
            v = int(g)
            if v != INVALID_M2P_ENTRY and not 0 <= v <= MAX_GFN:
                raise ValueError(f"M2P entry must be a GFN in [0, {MAX_GFN:#x}] or -1: {v}")
            if v <= M2P_LOW_MAX:
                self.low.set(m, _M2P_LOW_INVALID if v < 0 else v)
                self._clear_high(m)
                return
            g = np.full(m.size, v, dtype=np.int64)
        g = np.broadcast_to(g.reshape(-1), m.shape)
        if g.size:
            lo, hi = int(g.min()), int(g.max())
            if lo < INVALID_M2P_ENTRY or hi > MAX_GFN or (lo < 0 and bool(((g < 0) & (g != -1)).any())):
                raise ValueError(f"M2P entries must be GFNs in [0, {MAX_GFN:#x}] or -1: {lo}..{hi}")
            if lo >= 0 and hi <= M2P_LOW_MAX:      # the usual case: all fit the low word
                self.low.set(m, g.astype(np.uint32))
                self._clear_high(m)
                return
        else:
            hi = -1
        self.low.set(m, np.where(g < 0, np.int64(_M2P_LOW_INVALID), g & 0xFFFFFFFF).astype(np.uint32))
        if hi > M2P_LOW_MAX:
            big = g > M2P_LOW_MAX
            self.high.set(m[big], ((g[big] >> 32) + 1).astype(np.uint16))
            self._clear_high(m[~big])
        else:
            self._clear_high(m)

    def set_run(self, m0: int, n: int, g0: int) -> None:
        """``set(arange(m0, m0 + n), arange(g0, g0 + n))`` with no per-frame arrays where
        the GFNs fit the low word and no high part was ever stored."""
        if n and 0 <= g0 and g0 + n - 1 <= M2P_LOW_MAX and not self.high.nrows:
            self.low.set_linear(m0, n, g0)
        elif n:
            self.set(np.arange(m0, m0 + n, dtype=np.int64), np.arange(g0, g0 + n, dtype=np.int64))

    def _clear_high(self, m: np.ndarray) -> None:
        if self.high.nrows:
            self.high.set(m[self.high.present(m)], 0)

    @property
    def nbytes(self) -> int:
        return self.low.nbytes + self.high.nbytes
