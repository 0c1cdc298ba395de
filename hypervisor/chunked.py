"""Sparse, growable tables over GFNs or MFNs: the storage behind the P2M and the M2P.

Stands in for the page-table tree ``xen/arch/x86/mm/p2m-pt.c`` keeps per domain (and
the M2P's flat table): GFNs reach 2^40 - 1 and guests are dense (256 GiB = 64 Mi
pages) or sparse (1 GiB plus one page near 2^32), so a :class:`ChunkedArray` is a
directory indexed by ``index >> CHUNK_BITS`` naming rows of a growable 2-D pool; an
absent chunk reads as the default (p2m_invalid / INVALID_MFN / INVALID_M2P_ENTRY), as
a missing page-table page reads as an empty entry. Every get and set is vectorised
over numpy index arrays.

Pools live in anonymous mappings that grow in place (``mremap``), so growing a table
never holds two copies of it, and capacity not yet used costs no memory.
"""

from __future__ import annotations

import mmap

import numpy as np

from .runs import CHUNK, CHUNK_BITS, chunk_pieces, is_ascending, is_run, unique_chunks

_CHUNK_MASK = CHUNK - 1
#: Entries a large ``get`` reads per step (512 KiB of int64 indices: cache-sized).
GET_BLOCK = 1 << 16

#: madvise(2) MADV_POPULATE_WRITE (Linux 5.14); None once the kernel has refused it.
_POPULATE_WRITE: int | None = getattr(mmap, "MADV_POPULATE_WRITE", 23)
#: A new row's part written whole is faulted in at once from this size on.
PREFAULT_MIN_BYTES = 1 << 16


class ChunkedArray:
    """A sparse 1-D array over ``[0, 2^40)`` stored in 2^CHUNK_BITS-entry chunks."""

    def __init__(self, dtype, default):
        self.dtype = np.dtype(dtype)
        self.default = self.dtype.type(default)
        self.directory = np.empty(0, dtype=np.int32)   # chunk number -> pool row, -1 absent
        self.pool = np.empty((0, CHUNK), dtype=self.dtype)
        self.nrows = 0
        self._map: mmap.mmap | None = None

    def _grow_pool(self, cap: int) -> None:
        """Room for ``cap`` rows. The rows live in an anonymous mapping resized in place
        (``mremap``): no second copy while growing, and untouched capacity costs nothing.
        If a view of the old pool is still held somewhere the mapping cannot move, and
        the rows are copied into a new one instead."""
        size = cap * CHUNK * self.dtype.itemsize
        self.pool = None
        if self._map is not None:
            try:
                self._map.resize(size)
                self.pool = np.frombuffer(self._map, dtype=self.dtype).reshape(cap, CHUNK)
                return
            except BufferError:
                pass
        new = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if self._map is not None and self.nrows:
            n = self.nrows * CHUNK
            np.frombuffer(new, dtype=self.dtype, count=n)[:] = np.frombuffer(self._map, dtype=self.dtype, count=n)
        self._map = new
        self.pool = np.frombuffer(self._map, dtype=self.dtype).reshape(cap, CHUNK)

    def _rows(self, chunk: np.ndarray) -> np.ndarray:
        d = self.directory
        if chunk.size and int(chunk.max()) < d.size:
            return d[chunk]
        out = np.full(chunk.size, -1, dtype=np.int64)
        inside = chunk < d.size
        out[inside] = d[chunk[inside]]
        return out

    #: Is the index array one large contiguous increasing run (``runs.is_run``)?
    _run = staticmethod(is_run)

    def _forward(self, idx: np.ndarray, values) -> tuple[np.ndarray, np.ndarray]:
        """``(idx, values)`` for a set, the values broadcast to the indices; reversed
        when ``idx`` is a large strictly decreasing array (the balloon's highest-first
        GFNs and their frames): a set of unique indices may go in reverse, and then
        takes the run and chunk-slice paths."""
        vals = np.broadcast_to(np.asarray(values, dtype=self.dtype), idx.shape)
        if idx.size > 4096 and int(idx[-1]) < int(idx[0]) and bool((idx[1:] < idx[:-1]).all()):
            return idx[::-1], vals[::-1]
        return idx, vals

    #: Is it a large strictly increasing array (``runs.is_ascending``)?
    _ascending = staticmethod(is_ascending)

    def _slices(self, start: int, n: int):
        """(chunk, offset in chunk, position in run, length) pieces of a run."""
        pos = 0
        while pos < n:
            i = start + pos
            c, off = i >> CHUNK_BITS, i & _CHUNK_MASK
            k = min(CHUNK - off, n - pos)
            yield c, off, pos, k
            pos += k

    def _get_run(self, idx: np.ndarray) -> np.ndarray:
        """``get`` of one contiguous run."""
        return self.get_run(int(idx[0]), idx.size)

    def get_run(self, start: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """Entries ``[start, start + n)`` (``get`` of that run), a chunk's slice at a
        time, into ``out`` when given."""
        d = self.directory
        c0, c1 = start >> CHUNK_BITS, (start + n - 1) >> CHUNK_BITS
        if c1 < d.size and bool((d[c0:c1 + 1] >= 0).all()):   # all rows: every entry is read
            if out is None:
                out = np.empty(n, dtype=self.dtype)
        elif out is None:
            out = np.full(n, self.default, dtype=self.dtype)
        else:
            out[:] = self.default
        for c, off, pos, k in self._slices(start, n):
            if c < d.size and d[c] != -1:
                self._read_slice(out[pos:pos + k], int(d[c]), off)
        return out

    def _read_slice(self, out: np.ndarray, r: int, off: int) -> None:
        out[:] = self.pool[r, off:off + out.size]

    def _get_pieces(self, idx: np.ndarray) -> np.ndarray:
        """``get`` of a strictly increasing ``idx``, a chunk's part at a time."""
        d = self.directory
        out = np.empty(idx.size, dtype=self.dtype)
        for c, a, b in chunk_pieces(idx):
            self._read_piece(out[a:b], int(d[c]) if c < d.size else -1, idx[a:b] & _CHUNK_MASK)
        return out

    def _read_piece(self, out: np.ndarray, r: int, off: np.ndarray) -> None:
        """Entries at the increasing offsets ``off`` of the chunk whose directory entry is ``r``."""
        if r >= 0:
            np.take(self.pool[r], off, out=out)
        else:
            out[:] = self.default

    def _get_blocks(self, idx: np.ndarray) -> np.ndarray | None:
        """``get`` of a large index array that is not one run, GET_BLOCK entries at a
        time (None when it is small): each block's temporaries stay in cache, where
        the whole array's would each be a fresh, page-faulting pass over memory."""
        if idx.size <= GET_BLOCK:
            return None
        out = np.empty(idx.size, dtype=self.dtype)
        for a in range(0, idx.size, GET_BLOCK):
            out[a:a + GET_BLOCK] = self.get(idx[a:a + GET_BLOCK])
        return out

    def get(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if self._run(idx):
            return self._get_run(idx)
        out = self._get_blocks(idx)
        if out is not None:
            return out
        if self._ascending(idx):
            return self._get_pieces(idx)
        rows = self._rows(idx >> CHUNK_BITS)
        flat = self.pool.reshape(-1)
        if rows.size and int(rows.min()) >= 0:
            return flat[(rows << CHUNK_BITS) | (idx & _CHUNK_MASK)]
        out = np.full(idx.size, self.default, dtype=self.dtype)
        ok = rows >= 0
        out[ok] = flat[(rows[ok] << CHUNK_BITS) | (idx[ok] & _CHUNK_MASK)]
        return out

    def _ensure_directory(self, top: int) -> None:
        if top >= self.directory.size:
            grown = np.full(max(top + 1, 2 * self.directory.size), -1, dtype=np.int32)
            grown[: self.directory.size] = self.directory
            self.directory = grown

    def _alloc_rows(self, missing: np.ndarray) -> None:
        """Give each chunk of ``missing`` a pool row holding the default."""
        need = self.nrows + missing.size
        if need > self.pool.shape[0]:
            self._grow_pool(max(need, 2 * self.pool.shape[0], 4))
        # Rows past nrows were never written, and an anonymous mapping reads as zeros:
        # a zero default (content tokens) needs no fill (nor the page touch it costs).
        if self.default != 0 or self._map is None:
            self._prefault(self.nrows, 0, (need - self.nrows) * CHUNK)    # (rows are adjacent)
            self.pool[self.nrows:need] = self.default
        self.directory[missing] = np.arange(self.nrows, need)
        self.nrows = need

    def _ensure(self, chunks: np.ndarray) -> None:
        if chunks.size == 0:
            return
        self._ensure_directory(int(chunks.max()))
        missing = chunks[self.directory[chunks] < 0]
        if missing.size:
            self._alloc_rows(missing)

    def set(self, idx: np.ndarray, values) -> None:
        """``a[idx] = values``; with repeated indices the result is unspecified, so
        callers pass unique indices."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            return
        self._set(*self._forward(idx, values))

    def _set(self, idx: np.ndarray, vals: np.ndarray) -> None:
        """``set`` of a non-empty ``idx`` (never large and decreasing), values broadcast."""
        if self._run(idx):
            self.put_run(int(idx[0]), vals)
            return
        c0, c1 = int(idx.min()) >> CHUNK_BITS, int(idx.max()) >> CHUNK_BITS
        if c0 == c1:                               # one chunk (a balloon op, a batch)
            self._ensure(np.array([c0], dtype=np.int64))
            self.pool[self.directory[c0], idx & _CHUNK_MASK] = vals
            return
        if self._ascending(idx):                   # a chunk's part at a time
            pieces = list(chunk_pieces(idx))
            self._ensure(np.array([c for c, _, _ in pieces], dtype=np.int64))
            for c, a, b in pieces:
                self.pool[self.directory[c], idx[a:b] & _CHUNK_MASK] = vals[a:b]
            return
        chunk = idx >> CHUNK_BITS
        self._ensure(unique_chunks(chunk))
        rows = self.directory[chunk].astype(np.int64)
        self.pool.reshape(-1)[(rows << CHUNK_BITS) | (idx & _CHUNK_MASK)] = vals

    def set_run(self, start: int, n: int, value) -> None:
        """``set(arange(start, start + n), value)`` for one value, with no index array."""
        v = self.dtype.type(value)
        for _, row in self.row_slices(start, n):
            row[:] = v

    def put_run(self, start: int, vals: np.ndarray) -> None:
        """``set(arange(start, start + len(vals)), vals)``, a chunk's slice at a time."""
        for pos, row in self.row_slices(start, vals.size):
            row[:] = vals[pos:pos + row.size]

    def row_slices(self, start: int, n: int):
        """``(position, view)`` pieces of entries ``[start, start + n)``, in order, each a
        writable view of its chunk's row (rows are allocated first): a run set where
        it is made, with no array of the run's values."""
        fresh = self.nrows                     # rows from here on are allocated by this call
        self._ensure(np.arange(start >> CHUNK_BITS, ((start + n - 1) >> CHUNK_BITS) + 1))
        for c, off, pos, k in self._slices(start, n):
            r = int(self.directory[c])
            if r >= fresh:
                self._prefault(r, off, k)
            yield pos, self.pool[r, off:off + k]

    def _prefault(self, r: int, off: int, k: int) -> None:
        """Fault in, in one call, the pages of entries ``[off, off + k)`` of the new row
        ``r`` (and on, into the rows after it) that the caller is about to write whole
        (madvise MADV_POPULATE_WRITE):
        a guest's or a restore's token table written page by page would take one
        fault per 4 KiB. Kernels without it (before Linux 5.14) fault as they go."""
        global _POPULATE_WRITE
        size = self.dtype.itemsize
        if self._map is None or _POPULATE_WRITE is None or k * size < PREFAULT_MIN_BYTES:
            return
        a = (r * CHUNK + off) * size
        lo, hi = -(-a // mmap.PAGESIZE) * mmap.PAGESIZE, (a + k * size) // mmap.PAGESIZE * mmap.PAGESIZE
        try:
            self._map.madvise(_POPULATE_WRITE, lo, hi - lo)
        except (OSError, ValueError):
            _POPULATE_WRITE = None

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
        present = np.flatnonzero(d != -1) + c0
        if present.size == 0:
            return np.empty((0, 2), dtype=np.int64)
        breaks = np.flatnonzero(np.diff(present) != 1) + 1
        starts = np.concatenate(([present[0]], present[breaks])) << CHUNK_BITS
        ends = (np.concatenate((present[breaks - 1], [present[-1]])) + 1) << CHUNK_BITS
        return np.stack([np.maximum(starts, lo), np.minimum(ends, hi)], axis=1).astype(np.int64)

    def present(self, idx: np.ndarray) -> np.ndarray:
        """Per-index bool: is its chunk allocated?"""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        return self._rows(idx >> CHUNK_BITS) != -1

    def rows_in_use(self) -> np.ndarray:
        """The pool rows in use, as one 2-D view (for whole-table updates)."""
        return self.pool[: self.nrows]

    @property
    def nbytes(self) -> int:
        return self.nrows * CHUNK * self.dtype.itemsize + self.directory.nbytes
