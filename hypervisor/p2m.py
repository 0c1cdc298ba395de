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

The P2M's MFNs and the M2P are :class:`LinearChunkedArray`: a chunk whose entries are
one contiguous run ``value = base + offset`` over an offset range (what the domain
builder and a restore in PFN order make, like the superpage mappings Xen's P2M holds
for contiguous memory) is held as that base and range, 24 bytes for the chunk; a chunk
turns into a per-entry row only when a set breaks the run.

Memory per page:
* P2M: 1 byte per GFN for the type in every touched 2^18-GFN chunk; 4 bytes per GFN
  for the MFN only in chunks that are not one run (0 for a freshly built guest); plus a
  4-byte directory entry per chunk up to the highest chunk touched (16 MiB per table
  for a GFN near 2^40, 64 KiB for one near 2^32);
* M2P: the same for MFNs -> GFNs (4 bytes per MFN, uint32 GFN, 0xFFFFFFFF invalid, in
  chunks that are not one run); a GFN beyond 2^32 - 2 adds a 2-byte high part in its
  chunk only (``frames.py`` adds 8 bytes per MFN for the content token).

Pools live in anonymous mappings that grow in place (``mremap``), so growing a table
never holds two copies of it, and capacity not yet used costs no memory.
"""

from __future__ import annotations

import mmap

import numpy as np

from .logdirty import sorted_unique
from .abi import INVALID_M2P_ENTRY, INVALID_MFN, IS_RAM, MAX_GFN, P2MType
from .tables import add_where, known_run, lookup, run_array, uniform_byte

CHUNK_BITS = 18
CHUNK = 1 << CHUNK_BITS
_CHUNK_MASK = CHUNK - 1
#: Entries a large ``get`` reads per step (512 KiB of int64 indices: cache-sized).
GET_BLOCK = 1 << 16


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


def chunk_pieces(idx: np.ndarray, bits: int = CHUNK_BITS):
    """``(chunk, a, b)``: positions ``[a, b)`` of the increasing ``idx`` that fall in
    ``chunk`` (of ``2^bits`` indices), for every chunk they touch, in order (no sort, no
    per-entry chunk numbers: one search for the chunk boundaries). Indices spread over
    far more chunks than they could fill (a sparse guest, a hostile stream) are cut
    where their chunk number changes instead, so the work never depends on the spread."""
    c0, c1 = int(idx[0]) >> bits, int(idx[-1]) >> bits
    if c1 - c0 > 64 + (idx.size >> 12):
        chunk = idx >> bits
        cuts = (np.flatnonzero(chunk[1:] != chunk[:-1]) + 1).tolist()
        for a, b in zip([0] + cuts, cuts + [idx.size]):
            yield int(chunk[a]), a, b
        return
    cuts = np.searchsorted(idx, np.arange(c0 + 1, c1 + 1, dtype=np.int64) << bits).tolist()
    for c, a, b in zip(range(c0, c1 + 1), [0] + cuts, cuts + [idx.size]):
        if b > a:
            yield c, a, b


def run_start(idx: np.ndarray) -> int | None:
    """``idx[0]`` when ``idx`` is one large contiguous increasing run (the tables' run
    paths take it; see ``ChunkedArray._run``), else None."""
    return int(idx[0]) if ChunkedArray._run(idx) else None


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

    @staticmethod
    def _run(idx: np.ndarray) -> bool:
        """Is ``idx`` one contiguous increasing run (the builder's and scans' shape)?"""
        n = idx.size
        if n <= 4096:
            return False
        if known_run(idx):
            return True
        # n integers spanning n - 1 and strictly increasing are exactly a run.
        return int(idx[-1]) - int(idx[0]) == n - 1 and bool((idx[1:] > idx[:-1]).all())

    def _forward(self, idx: np.ndarray, values) -> tuple[np.ndarray, np.ndarray]:
        """``(idx, values)`` for a set, the values broadcast to the indices; reversed
        when ``idx`` is a large strictly decreasing array (the balloon's highest-first
        GFNs and their frames): a set of unique indices may go in reverse, and then
        takes the run and chunk-slice paths."""
        vals = np.broadcast_to(np.asarray(values, dtype=self.dtype), idx.shape)
        if idx.size > 4096 and int(idx[-1]) < int(idx[0]) and bool((idx[1:] < idx[:-1]).all()):
            return idx[::-1], vals[::-1]
        return idx, vals

    @staticmethod
    def _ascending(idx: np.ndarray) -> bool:
        """Is ``idx`` a large strictly increasing array (a restore group, a build slice
        with a hole, a scan): then each chunk's part of it is one slice of positions."""
        if idx.size <= 4096:
            return False
        return known_run(idx) or (int(idx[-1]) > int(idx[0]) and bool((idx[1:] > idx[:-1]).all()))

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
        self._ensure(_unique_chunks(chunk))
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


class LinearChunkedArray(ChunkedArray):
    """A :class:`ChunkedArray` of integers that holds a chunk whose entries form one
    run, ``a[i] = base + (i & (CHUNK - 1))`` for offsets in ``[lo, hi)`` and the default
    elsewhere, as three numbers instead of a row, the way Xen's P2M maps a contiguous
    guest range with superpage entries rather than 4 KiB ones. A set that keeps the run
    (extends it at either end, shrinks it from either end, or rewrites what it holds)
    keeps it compact; any other set gives the chunk a row (``_densify``), for good.

    The directory says which: a row number (>= 0), -1 (absent), or ``-2 - slot`` for a
    run whose base and range are ``_base[slot]``, ``_lo[slot]``, ``_hi[slot]``. Reads and
    writes stay vectorised: whole batches are gathered or checked at once; only the
    chunks a set actually changes are visited one at a time."""

    def __init__(self, dtype, default):
        super().__init__(dtype, default)
        if self.dtype.kind not in "iu":
            raise TypeError("a linear chunked array holds integers")
        self._base = np.zeros(0, dtype=np.int64)
        self._lo = np.zeros(0, dtype=np.int64)
        self._hi = np.zeros(0, dtype=np.int64)
        self.nruns = 0

    # ------------------------------------------------------------------ reads
    def _linear_values(self, rows: np.ndarray, off: np.ndarray) -> np.ndarray:
        """Values at offsets ``off`` of run chunks (``rows`` <= -2), as the dtype."""
        s = -2 - rows
        v = self._base[s] + off
        outside = (off - self._lo[s]).view(np.uint64) >= (self._hi[s] - self._lo[s]).view(np.uint64)
        if outside.any():
            v[outside] = int(self.default)
        return v.astype(self.dtype)

    def _read_slice(self, out: np.ndarray, r: int, off: int) -> None:
        if r >= 0:
            return super()._read_slice(out, r, off)
        s = -2 - r
        a, b = max(off, int(self._lo[s])), min(off + out.size, int(self._hi[s]))
        if b > a:
            out[a - off:b - off] = np.arange(a, b, dtype=np.int64) + int(self._base[s])

    def _read_piece(self, out: np.ndarray, r: int, off: np.ndarray) -> None:
        if r >= -1:
            return super()._read_piece(out, r, off)
        s = -2 - r
        lo, hi, base = int(self._lo[s]), int(self._hi[s]), int(self._base[s])
        if lo <= int(off[0]) and int(off[-1]) < hi:          # all inside the run
            np.add(off, base, out=out, casting="unsafe")
            return
        v = off + base
        v[(off < lo) | (off >= hi)] = int(self.default)
        out[:] = v

    def run_value(self, idx: np.ndarray) -> int | None:
        """``get(idx)[0]`` when ``idx`` is one contiguous run (as ``_run`` finds) whose
        entries hold consecutive values (all inside run chunks that continue each
        other): then ``get(idx)`` is ``arange(v, v + idx.size)``, known without it."""
        return self.run_value_of(int(idx[0]), idx.size) if self._run(idx) else None

    def run_value_of(self, start: int, n: int) -> int | None:
        """``run_value`` of ``arange(start, start + n)`` (``start >= 0``), with no index
        array (a caller that knows its indices are that run): the chunks the run
        covers are checked at once, each a run chunk holding the piece, all with one
        ``base - chunk start`` (so the values continue from chunk to chunk)."""
        if n <= 4096 or start < 0:          # the sizes run_value takes as a run
            return None
        c0, c1 = start >> CHUNK_BITS, (start + n - 1) >> CHUNK_BITS
        if c1 >= self.directory.size:
            return None
        rows = self.directory[c0:c1 + 1].astype(np.int64)
        if int(rows.max()) > -2:
            return None
        s = -2 - rows
        base = np.arange(c0, c1 + 1, dtype=np.int64) << CHUNK_BITS
        off_a = np.maximum(base, start) - base
        off_b = np.minimum(base + CHUNK, start + n) - base
        shift = self._base[s] - base
        if not (bool((self._lo[s] <= off_a).all()) and bool((off_b <= self._hi[s]).all())
                and int(shift.min()) == int(shift.max())):
            return None
        return int(shift[0]) + start

    def get(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if self._run(idx):
            return self._get_run(idx)
        if idx.size == 0:
            return np.empty(0, dtype=self.dtype)
        out = self._get_blocks(idx)
        if out is not None:
            return out
        i0, i1 = int(idx.min()), int(idx.max())
        c = i0 >> CHUNK_BITS
        if c == i1 >> CHUNK_BITS and c < self.directory.size and self.directory[c] <= -2:
            s = -2 - int(self.directory[c])        # one run chunk (a balloon op, a batch)
            if self._lo[s] <= (i0 & _CHUNK_MASK) and (i1 & _CHUNK_MASK) < self._hi[s]:
                return ((idx & _CHUNK_MASK) + int(self._base[s])).astype(self.dtype)
        if self._ascending(idx):
            return self._get_pieces(idx)
        rows = self._rows(idx >> CHUNK_BITS)
        off = idx & _CHUNK_MASK
        if int(rows.max()) <= -2:                  # all in runs: the usual case
            return self._linear_values(rows, off)
        flat = self.pool.reshape(-1)
        if int(rows.min()) >= 0:                   # all in rows
            return flat[(rows << CHUNK_BITS) | off]
        out = np.full(idx.size, self.default, dtype=self.dtype)
        dense = rows >= 0
        out[dense] = flat[(rows[dense] << CHUNK_BITS) | off[dense]]
        lin = rows <= -2
        if lin.any():
            out[lin] = self._linear_values(rows[lin], off[lin])
        return out

    # ------------------------------------------------------------------ writes
    def row_slices(self, start: int, n: int):
        raise TypeError("a linear chunked array keeps runs without rows: use set()")

    def set_linear(self, start: int, n: int, v0: int) -> None:
        """``set(arange(start, start + n), arange(v0, v0 + n))`` (the builder's and the
        restore's steps: fresh frames for a run of GFNs, and back), with neither array
        where the run path below takes it."""
        if n > 4096 and 0 <= v0 and v0 + n - 1 <= np.iinfo(self.dtype).max \
                and not v0 <= int(self.default) <= v0 + n - 1:
            self._linear_run(start, n, v0)
        elif n:
            self.set(np.arange(start, start + n, dtype=np.int64), np.arange(v0, v0 + n, dtype=np.int64))

    def _linear_run(self, start: int, n: int, v0: int, vals: np.ndarray | None = None) -> None:
        """Entries ``[start, start + n)`` become ``v0, v0 + 1, ...`` (``vals``, when the
        caller holds them; the default is not among them): each chunk's piece is one
        base, kept a run where the chunk stays one (``_extend_run``)."""
        self._ensure_directory((start + n - 1) >> CHUNK_BITS)
        for c, off, pos, k in self._slices(start, n):
            if not self._extend_run(c, off, off + k, v0 + pos - off):
                v = (vals[pos:pos + k] if vals is not None
                     else np.arange(v0 + pos, v0 + pos + k, dtype=np.int64).astype(self.dtype))
                self._set_chunk(c, np.arange(off, off + k, dtype=np.int64), v)

    def _set(self, idx: np.ndarray, vals: np.ndarray) -> None:
        """``ChunkedArray.set``'s step for run chunks: runs kept where the set keeps them."""
        if self._run(idx):
            start, n = int(idx[0]), idx.size
            v0, v1 = int(vals[0]), int(vals[-1])
            # A run of values onto a run of indices (the builder's and the restore's
            # steps): each chunk's piece is one base, checked without per-entry work.
            if (vals.strides[0] != 0 and v1 - v0 == n - 1 and not v0 <= int(self.default) <= v1
                    and bool((vals[1:] > vals[:-1]).all())):
                return self._linear_run(start, n, v0, vals)
            self._ensure_directory((start + n - 1) >> CHUNK_BITS)
            for c, off, pos, k in self._slices(start, n):
                self._set_chunk(c, np.arange(off, off + k, dtype=np.int64), vals[pos:pos + k])
            return
        if self._ascending(idx) and (int(idx[0]) ^ int(idx[-1])) >> CHUNK_BITS:
            # Several chunks, a slice of positions each: each chunk's part is set as
            # the general path below sets it (writes that change nothing change
            # nothing in _set_chunk either).
            self._ensure_directory(int(idx[-1]) >> CHUNK_BITS)
            for c, a, b in chunk_pieces(idx):
                self._set_chunk(c, idx[a:b] & _CHUNK_MASK, vals[a:b])
            return
        chunk = idx >> CHUNK_BITS
        c0, c1 = int(chunk.min()), int(chunk.max())
        self._ensure_directory(c1)
        off = idx & _CHUNK_MASK
        if c0 == c1:                               # one chunk (a batch, a restore step)
            return self._set_chunk(c0, off, vals)
        rows = self.directory[chunk].astype(np.int64)
        if int(rows.max()) <= -2 and (self._linear_values(rows, off) == vals).all():
            return                                 # runs rewritten with their own values
        # Writes that change nothing (a run rewritten with its own values, the default
        # into an absent chunk) are dropped; writes into rows go straight in.
        same = np.zeros(idx.size, dtype=bool)
        lin = rows <= -2
        if lin.any():
            same[lin] = self._linear_values(rows[lin], off[lin]) == vals[lin]
        same |= (rows == -1) & (vals == self.default)
        dense = rows >= 0
        if dense.any():
            self.pool.reshape(-1)[(rows[dense] << CHUNK_BITS) | off[dense]] = vals[dense]
        rest = np.flatnonzero(~same & ~dense)
        if rest.size == 0:
            return
        rc = chunk[rest]
        order = np.argsort(rc, kind="stable")
        rest, rc = rest[order], rc[order]
        cuts = np.flatnonzero(np.diff(rc)) + 1
        for part in np.split(rest, cuts):
            self._set_chunk(int(chunk[part[0]]), off[part], vals[part])

    def _set_chunk(self, c: int, off: np.ndarray, v: np.ndarray) -> None:
        """Set offsets ``off`` (unique) of chunk ``c`` to ``v``, keeping it a run if the
        result is one."""
        r = int(self.directory[c])
        if r >= 0:
            self.pool[r, off] = v
            return
        if r == -1:
            base, lo, hi = 0, 0, 0
        else:
            s = -2 - r
            base, lo, hi = int(self._base[s]), int(self._lo[s]), int(self._hi[s])
        if v.size and v.strides[0] == 0 and v[0] == self.default:
            # One value, the default, for all (an unmap): only entries in [lo, hi) go,
            # and the run survives if they are one block at one of its ends.
            a, b = int(off.min()), int(off.max()) + 1
            if lo <= a and b <= hi:
                if b - a != off.size or (a != lo and b != hi):
                    return self._densify(c, off, v)
                lo, hi = (b, hi) if a == lo else (lo, a)
                return self._store_run(c, r, base, lo, hi)
        vi = v.astype(np.int64)
        keep = vi != int(self.default)
        if keep.all():                             # the usual case: nothing cleared
            bases = vi - off
            if hi == lo:
                base = int(bases[0])
            if not (bases == base).all():
                return self._densify(c, off, v)
            a, b = int(off.min()), int(off.max()) + 1
            if hi == lo or b == lo or a == hi:     # a new run, or one grown at an end
                if b - a != off.size:
                    return self._densify(c, off, v)
                lo, hi = (a, b) if hi == lo else (min(a, lo), max(b, hi))
                return self._store_run(c, r, base, lo, hi)
        gone = off[~keep]
        gone = gone[(gone >= lo) & (gone < hi)]
        if gone.size:                              # entries cleared: only an end may go
            a, b = int(gone.min()), int(gone.max()) + 1
            if b - a != gone.size or (a != lo and b != hi):
                return self._densify(c, off, v)
            lo, hi = (b, hi) if a == lo else (lo, a)
        put = off[keep]
        if put.size:
            bases = vi[keep] - put
            if hi == lo:
                base = int(bases[0])
            if not (bases == base).all():
                return self._densify(c, off, v)
            new = put[(put < lo) | (put >= hi)]
            if new.size:
                a, b = int(new.min()), int(new.max()) + 1
                if hi > lo:
                    a, b = min(a, lo), max(b, hi)
                    if b - a != (hi - lo) + new.size:
                        return self._densify(c, off, v)
                elif b - a != new.size:
                    return self._densify(c, off, v)
                lo, hi = a, b
        self._store_run(c, r, base, lo, hi)

    def _extend_run(self, c: int, a: int, b: int, base: int) -> bool:
        """Set offsets [a, b) of chunk ``c`` to ``base + offset`` (no default among them)
        if the chunk stays one run (``_set_chunk``'s outcome for it); False, changing
        nothing, when it would not (``_set_chunk`` then gives the chunk a row)."""
        r = int(self.directory[c])
        if r >= 0:
            return False
        if r <= -2:
            s = -2 - r
            lo, hi = int(self._lo[s]), int(self._hi[s])
            if hi > lo:
                if base != int(self._base[s]) or max(a, lo) > min(b, hi):
                    return False
                a, b = min(a, lo), max(b, hi)
        self._store_run(c, r, base, a, b)
        return True

    def _store_run(self, c: int, r: int, base: int, lo: int, hi: int) -> None:
        if r == -1:
            if hi == lo:
                return
            r = self._new_run()
            self.directory[c] = r
        s = -2 - r
        self._base[s], self._lo[s], self._hi[s] = base, lo, hi

    def _new_run(self) -> int:
        if self.nruns == self._base.size:
            cap = max(16, 2 * self._base.size)
            self._base, self._lo, self._hi = (np.resize(a, cap) for a in (self._base, self._lo, self._hi))
        self.nruns += 1
        return -2 - (self.nruns - 1)

    def _densify(self, c: int, off: np.ndarray, v: np.ndarray) -> None:
        """Give chunk ``c`` a row holding what its run held, then set ``off`` to ``v``."""
        r = int(self.directory[c])
        chunk = np.array([c], dtype=np.int64)
        self.directory[c] = -1
        self._alloc_rows(chunk)
        row = self.pool[self.directory[c]]
        if r <= -2:
            s = -2 - r
            lo, hi = int(self._lo[s]), int(self._hi[s])
            row[lo:hi] = np.arange(lo, hi, dtype=np.int64) + int(self._base[s])
            self._lo[s] = self._hi[s] = 0          # the slot stays, unused
        row[off] = v

    @property
    def nbytes(self) -> int:
        return super().nbytes + 3 * 8 * self._base.size


class P2M:
    """Per-GFN p2m type (uint8) and MFN (uint32), with a per-type entry histogram."""

    def __init__(self):
        self.types = ChunkedArray(np.uint8, P2MType.invalid)
        self.mfns = LinearChunkedArray(np.uint32, INVALID_MFN)
        #: Entries per p2m type (p2m_invalid's count is relative: default entries are not held).
        self.type_counts = np.zeros(16, dtype=np.int64)
        self.max_mapped_pfn = -1

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
        self.types.set_run(g0, n, t)
        self.mfns.set_linear(g0, n, m0)
        if t != P2MType.invalid:
            self.max_mapped_pfn = max(self.max_mapped_pfn, g0 + n - 1)

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
