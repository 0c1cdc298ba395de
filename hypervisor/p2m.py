"""The P2M (guest frame -> machine frame, with p2m types) and the M2P.

Mirrors ``xen/arch/x86/mm/p2m.c``'s view of a domain's physmap: one entry per GFN
holding a ``p2m_type_t`` and an MFN (``p2m_set_entry`` / ``p2m_get_entry``), and the
machine-to-physical table that ``set_gpfn_from_mfn`` keeps in step on every add,
remove and replace (``INVALID_M2P_ENTRY`` when a frame is in no physmap). The
``max_mapped_pfn`` high-water mark is what ``domain_get_maximum_gpfn`` reports; like
Xen's, it never goes down.

GFNs reach 2^40 - 1 and guests are dense (256 GiB = 64 Mi pages) or sparse (1 GiB plus
one page near 2^32), so both tables are :class:`ChunkedArray`: a directory indexed by
``index >> CHUNK_BITS`` naming rows of a growable 2-D pool; an absent chunk reads as
the default (p2m_invalid / INVALID_MFN / INVALID_M2P_ENTRY). Every get and set is
vectorised over numpy index arrays.

Memory per page:
* P2M: 5 bytes per GFN (1 byte type + 4 bytes MFN) in every touched 2^18-GFN chunk,
  plus a 4-byte directory entry per chunk up to the highest chunk touched (16 MiB per
  table for a GFN near 2^40, 64 KiB for one near 2^32);
* M2P: 4 bytes per MFN (uint32 GFN, 0xFFFFFFFF invalid), chunked the same way over
  MFNs; a GFN beyond 2^32 - 2 adds a 2-byte high part in its chunk only
  (``frames.py`` adds 8 bytes per MFN for the content token: 12 bytes/MFN in all).
"""

from __future__ import annotations

import numpy as np

from .logdirty import sorted_unique
from .abi import INVALID_M2P_ENTRY, INVALID_MFN, IS_RAM, MAX_GFN, P2MType

CHUNK_BITS = 18
CHUNK = 1 << CHUNK_BITS
_CHUNK_MASK = CHUNK - 1


def _unique_chunks(chunk: np.ndarray) -> np.ndarray:
    if chunk.size == 0:
        return chunk
    lo, hi = int(chunk.min()), int(chunk.max())
    if lo == hi:
        return np.array([lo], dtype=np.int64)
    if hi - lo < (1 << 22):
        present = np.zeros(hi - lo + 1, dtype=bool)
        present[chunk - lo] = True
        return np.flatnonzero(present) + lo
    return sorted_unique(chunk)


class ChunkedArray:
    """A sparse 1-D array over ``[0, 2^40)`` stored in 2^CHUNK_BITS-entry chunks."""

    def __init__(self, dtype, default):
        self.dtype = np.dtype(dtype)
        self.default = self.dtype.type(default)
        self.directory = np.empty(0, dtype=np.int32)   # chunk number -> pool row, -1 absent
        self.pool = np.empty((0, CHUNK), dtype=self.dtype)
        self.nrows = 0

    def _rows(self, chunk: np.ndarray) -> np.ndarray:
        d = self.directory
        if chunk.size and int(chunk.max()) < d.size:
            return d[chunk]
        out = np.full(chunk.size, -1, dtype=np.int64)
        inside = chunk < d.size
        out[inside] = d[chunk[inside]]
        return out

    @staticmethod
    def _run(idx: np.ndarray) -> bool:
        """Is ``idx`` one contiguous increasing run (the builder's and scans' shape)?"""
        n = idx.size
        return n > 4096 and int(idx[-1]) - int(idx[0]) == n - 1 and bool((np.diff(idx) == 1).all())

    def _slices(self, start: int, n: int):
        """(chunk, offset in chunk, position in run, length) pieces of a run."""
        pos = 0
        while pos < n:
            i = start + pos
            c, off = i >> CHUNK_BITS, i & _CHUNK_MASK
            k = min(CHUNK - off, n - pos)
            yield c, off, pos, k
            pos += k

    def get(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if self._run(idx):
            out = np.full(idx.size, self.default, dtype=self.dtype)
            d = self.directory
            for c, off, pos, k in self._slices(int(idx[0]), idx.size):
                if c < d.size and d[c] >= 0:
                    out[pos:pos + k] = self.pool[d[c], off:off + k]
            return out
        rows = self._rows(idx >> CHUNK_BITS)
        flat = self.pool.reshape(-1)
        if rows.size and int(rows.min()) >= 0:
            return flat[(rows << CHUNK_BITS) | (idx & _CHUNK_MASK)]
        out = np.full(idx.size, self.default, dtype=self.dtype)
        ok = rows >= 0
        out[ok] = flat[(rows[ok] << CHUNK_BITS) | (idx[ok] & _CHUNK_MASK)]
        return out

    def _ensure(self, chunks: np.ndarray) -> None:
        if chunks.size == 0:
            return
        top = int(chunks.max())
        if top >= self.directory.size:
            grown = np.full(max(top + 1, 2 * self.directory.size), -1, dtype=np.int32)
            grown[: self.directory.size] = self.directory
            self.directory = grown
        missing = chunks[self.directory[chunks] < 0]
        if missing.size == 0:
            return
        need = self.nrows + missing.size
        if need > self.pool.shape[0]:
            cap = max(need, 2 * self.pool.shape[0], 4)
            grown = np.empty((cap, CHUNK), dtype=self.dtype)
            grown[: self.nrows] = self.pool[: self.nrows]
            self.pool = grown
        self.pool[self.nrows:need] = self.default
        self.directory[missing] = np.arange(self.nrows, need)
        self.nrows = need

    def set(self, idx: np.ndarray, values) -> None:
        """``a[idx] = values``; with repeated indices the result is unspecified, so
        callers pass unique indices."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            return
        if self._run(idx):
            start, n = int(idx[0]), idx.size
            self._ensure(np.arange(start >> CHUNK_BITS, ((start + n - 1) >> CHUNK_BITS) + 1))
            vals = np.broadcast_to(np.asarray(values, dtype=self.dtype), (n,))
            for c, off, pos, k in self._slices(start, n):
                self.pool[self.directory[c], off:off + k] = vals[pos:pos + k]
            return
        chunk = idx >> CHUNK_BITS
        self._ensure(_unique_chunks(chunk))
        rows = self.directory[chunk].astype(np.int64)
        self.pool.reshape(-1)[(rows << CHUNK_BITS) | (idx & _CHUNK_MASK)] = values

    def chunks(self, lo: int = 0, hi: int | None = None):
        """Yield ``(base_index, row_view)`` for every allocated chunk overlapping
        [lo, hi), in index order (whole chunks: callers trim)."""
        d = self.directory
        c0 = lo >> CHUNK_BITS
        c1 = d.size if hi is None else min(d.size, ((hi - 1) >> CHUNK_BITS) + 1)
        for c in (np.flatnonzero(d[c0:c1] >= 0) + c0).tolist():
            yield c << CHUNK_BITS, self.pool[d[c]]

    def present_runs(self, lo: int, hi: int) -> np.ndarray:
        """``(k, 2)`` [start, end) index runs within [lo, hi) covered by allocated chunks.
        Chunks are never freed, so everything outside these runs has always held the
        default value."""
        if hi <= lo:
            return np.empty((0, 2), dtype=np.int64)
        c0, c1 = lo >> CHUNK_BITS, ((hi - 1) >> CHUNK_BITS) + 1
        d = self.directory[c0:min(c1, self.directory.size)]
        present = np.flatnonzero(d >= 0) + c0
        if present.size == 0:
            return np.empty((0, 2), dtype=np.int64)
        breaks = np.flatnonzero(np.diff(present) != 1) + 1
        starts = np.concatenate(([present[0]], present[breaks])) << CHUNK_BITS
        ends = (np.concatenate((present[breaks - 1], [present[-1]])) + 1) << CHUNK_BITS
        return np.stack([np.maximum(starts, lo), np.minimum(ends, hi)], axis=1).astype(np.int64)

    def present(self, idx: np.ndarray) -> np.ndarray:
        """Per-index bool: is its chunk allocated?"""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        return self._rows(idx >> CHUNK_BITS) >= 0

    def rows_in_use(self) -> np.ndarray:
        """The pool rows in use, as one 2-D view (for whole-table updates)."""
        return self.pool[: self.nrows]

    @property
    def nbytes(self) -> int:
        return self.nrows * CHUNK * self.dtype.itemsize + self.directory.nbytes


class P2M:
    """Per-GFN p2m type (uint8) and MFN (uint32), with a per-type entry histogram."""

    def __init__(self):
        self.types = ChunkedArray(np.uint8, P2MType.invalid)
        self.mfns = ChunkedArray(np.uint32, INVALID_MFN)
        #: Entries per p2m type (p2m_invalid's count is relative: default entries are not held).
        self.type_counts = np.zeros(16, dtype=np.int64)
        self.max_mapped_pfn = -1

    def get(self, gfns) -> tuple[np.ndarray, np.ndarray]:
        """p2m_get_entry over an array: ``(types uint8, mfns uint32)``; GFNs outside
        ``[0, MAX_GFN]`` read as p2m_invalid."""
        g = np.asarray(gfns, dtype=np.int64).reshape(-1)
        bad = (g < 0) | (g > MAX_GFN)
        if bad.any():
            t = np.full(g.size, P2MType.invalid, dtype=np.uint8)
            m = np.full(g.size, INVALID_MFN, dtype=np.uint32)
            ok = ~bad
            t[ok] = self.types.get(g[ok])
            m[ok] = self.mfns.get(g[ok])
            return t, m
        return self.types.get(g), self.mfns.get(g)

    def get_types(self, gfns) -> np.ndarray:
        g = np.asarray(gfns, dtype=np.int64).reshape(-1)
        bad = (g < 0) | (g > MAX_GFN)
        if bad.any():
            t = np.full(g.size, P2MType.invalid, dtype=np.uint8)
            t[~bad] = self.types.get(g[~bad])
            return t
        return self.types.get(g)

    def set(self, gfns, types, mfns) -> None:
        """p2m_set_entry over unique, in-range GFNs."""
        g = np.asarray(gfns, dtype=np.int64).reshape(-1)
        if g.size == 0:
            return
        old = self.types.get(g)
        self.type_counts -= np.bincount(old, minlength=16)
        new = np.broadcast_to(np.asarray(types, dtype=np.uint8), g.shape)
        self.type_counts += np.bincount(new, minlength=16)
        self.types.set(g, new)
        self.mfns.set(g, mfns)
        mapped = g[new != P2MType.invalid]
        if mapped.size:
            self.max_mapped_pfn = max(self.max_mapped_pfn, int(mapped.max()))

    def change_type_global(self, ot: P2MType, nt: P2MType) -> None:
        """p2m_change_entry_type_global: every ``ot`` entry becomes ``nt``."""
        rows = self.types.rows_in_use()
        rows[rows == ot] = nt
        self.type_counts[nt] += self.type_counts[ot]
        self.type_counts[ot] = 0

    def gfns_where(self, table: np.ndarray, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Sorted GFNs in [lo, hi) whose type is in a 16-entry bool class table
        (abi.IS_RAM, ...)."""
        top = MAX_GFN + 1 if hi is None else hi
        parts = []
        for base, row in self.types.chunks(lo, hi):
            a, b = max(lo - base, 0), min(top - base, CHUNK)   # only the part in [lo, hi)
            parts.append(np.flatnonzero(table[row[a:b]]) + (base + a))
        if not parts:
            return np.empty(0, dtype=np.int64)
        return np.concatenate(parts).astype(np.int64, copy=False)

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
        self.low = ChunkedArray(np.uint32, _M2P_LOW_INVALID)
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
        else:
            hi = -1
        self.low.set(m, np.where(g < 0, np.int64(_M2P_LOW_INVALID), g & 0xFFFFFFFF).astype(np.uint32))
        if hi > M2P_LOW_MAX:
            big = g > M2P_LOW_MAX
            self.high.set(m[big], ((g[big] >> 32) + 1).astype(np.uint16))
            self._clear_high(m[~big])
        else:
            self._clear_high(m)

    def _clear_high(self, m: np.ndarray) -> None:
        if self.high.nrows:
            self.high.set(m[self.high.present(m)], 0)

    @property
    def nbytes(self) -> int:
        return self.low.nbytes + self.high.nbytes
