"""Tables of integers held as runs where they are runs: the P2M's MFNs and the M2P.

Xen's P2M maps a contiguous guest range onto contiguous machine memory with superpage
entries (``xen/arch/x86/mm/p2m-pt.c``, ``p2m_set_entry`` with order 9 or 18) rather
than one 4 KiB entry per page. A :class:`LinearChunkedArray` does the same per chunk:
a chunk whose entries are one contiguous run ``value = base + offset`` over an offset
range (what the domain builder and a restore in PFN order make) is held as that base
and range, 24 bytes for the chunk; a chunk turns into a per-entry row only when a set
breaks the run.
"""

from __future__ import annotations

import numpy as np

from .chunked import _CHUNK_MASK, ChunkedArray
from .runs import CHUNK, CHUNK_BITS, chunk_pieces


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
