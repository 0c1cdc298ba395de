"""Class tables applied to arrays of P2M types or PFINFO type nibbles.

``hypervisor.abi`` holds Xen's classifications as 16-entry tables (``IS_RAM``,
``IS_MAPPABLE``, ``PFINFO_OF_TYPE``, ``PFINFO_HAS_DATA`` ...), read as
``table[types]``. Over the millions of entries of a span or a restore, that gather
costs ~20x a vectorised comparison, and such arrays hold one to a few distinct values
(every entry ram_logdirty or NOTAB, a few ballooned out). :func:`lookup` gives exactly
``table[x]`` and, for a large uint8 ``x`` spanning a few values, builds it from
comparisons instead. :func:`batch_totals` and :func:`stable_order` are the other two
array steps the hot paths share (a count per batch, a stable order of int keys), and
:func:`run_array` / :func:`known_run` let a run of PFNs or frames made in one place be
known as one wherever it goes, without a pass over it to find out.
"""

from __future__ import annotations

import weakref

import numpy as np

#: Below this many entries the plain gather is as cheap.
_SMALL = 4096
#: Widest value range built from comparisons (one pass per value in the range).
_SPREAD = 6


def lookup(table: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``table[x]`` (a new array) for a small 1-D table and an array of indices."""
    x = np.asarray(x)
    if x.size < _SMALL or x.dtype != np.uint8:
        return table[x]
    v = uniform_byte(x)
    if v is not None and v < table.size:     # (an index past the table raises below, as the gather does)
        return np.full(x.shape, table[v], dtype=table.dtype)
    lo, hi = int(x.min()), int(x.max())
    if hi >= table.size or hi - lo > _SPREAD:
        return table[x]                  # (an index past the table raises as the gather does)
    if lo == hi:
        return np.full(x.shape, table[lo], dtype=table.dtype)
    if table.dtype == bool:
        vals = table[lo:hi + 1]
        pick = np.flatnonzero(vals if vals.sum() * 2 <= vals.size else ~vals) + lo
        out = np.zeros(x.shape, dtype=bool)
        for v in pick.tolist():
            out |= x == v
        if pick.size and not table[pick[0]]:
            np.logical_not(out, out=out)
        elif not pick.size and table[lo]:
            out[...] = True
        return out
    out = np.full(x.shape, table[lo], dtype=table.dtype)
    for v in range(lo + 1, hi + 1):
        if table[v] != table[lo]:
            if table.dtype == np.uint8:
                add_where(out, x == v, int(table[v]) - int(table[lo]))
            else:
                np.copyto(out, table[v], where=x == v)
    return out


def uniform_byte(x: np.ndarray) -> int | None:
    """The value every entry of a non-empty uint8 array holds, or None: eight entries a
    uint64 word compared at once (a span's type nibbles are mostly all one value, and
    the min and max that would tell cost two whole passes)."""
    flat = x.reshape(-1)
    if flat.size == 0:
        return None
    v = int(flat[0])
    head = flat.size & ~7 if flat.flags.c_contiguous else 0
    if head and not bool((flat[:head].view(np.uint64) == np.uint64(v * 0x0101010101010101)).all()):
        return None
    return v if bool((flat[head:] == v).all()) else None


def add_where(a: np.ndarray, mask: np.ndarray, delta: int) -> None:
    """``a[mask] += delta`` for a uint8 ``a`` (wrapping, so ``delta`` may be negative)
    and a bool ``mask`` of its shape (a temporary: its bytes are used up), as two plain
    passes: the mask's 0/1 bytes times the delta, added. ``np.copyto(..., where=)``
    over the same bytes is several times slower."""
    m = mask.view(np.uint8)
    m *= np.uint8(delta & 0xFF)
    a += m


def batch_totals(mask: np.ndarray, batch: int) -> np.ndarray:
    """int64 count of True entries of a bool array per ``batch`` entries (the last
    batch may be shorter): ``np.add.reduceat(mask, range(0, n, batch))`` without
    its per-entry casts."""
    n = mask.size
    full = n // batch
    out = np.empty(-(-n // batch), dtype=np.int64)
    head = mask[:full * batch]
    if full and batch % 8 == 0 and batch <= 8 * 255 and head.flags.c_contiguous:
        # Eight flags (0/1 bytes) a uint64 word: a batch's words summed hold, byte by
        # byte, the count of each lane (at most batch / 8, so no carry crosses a
        # byte); the lanes' sum is the batch's count. One pass over n / 8 words.
        lanes = head.view(np.uint64).reshape(full, batch // 8).sum(axis=1, dtype=np.uint64)
        out[:full] = lanes.view(np.uint8).reshape(full, 8).sum(axis=1, dtype=np.int64)
    else:
        out[:full] = np.count_nonzero(head.reshape(full, batch), axis=1)
    if full < out.size:
        out[full] = np.count_nonzero(mask[full * batch:])
    return out


#: From this many entries a stable order is built by radix passes (below, one sort).
_RADIX_MIN = 1 << 16


def stable_order(g: np.ndarray) -> np.ndarray:
    """``np.argsort(g, kind="stable")`` for non-negative int64 ``g``: large arrays by
    least-significant-digit radix passes over 16-bit digits (numpy sorts uint16 keys
    stably by radix, in linear time), small ones by packing (value, position) into one
    int64 for a plain sort; the stable argsort where neither fits."""
    n = g.size
    if n < 2:
        return np.arange(n, dtype=np.int64)
    top = int(g.max())
    if int(g.min()) < 0:
        return np.argsort(g, kind="stable")
    if n < _RADIX_MIN:
        ib = (n - 1).bit_length()
        if top.bit_length() + ib <= 63:
            return np.sort((g << ib) | np.arange(n, dtype=np.int64)) & ((1 << ib) - 1)
        return np.argsort(g, kind="stable")
    order = np.argsort((g & 0xFFFF).astype(np.uint16), kind="stable")
    shift = 16
    while top >> shift:
        digit = ((g[order] >> shift) & 0xFFFF).astype(np.uint16)
        order = order[np.argsort(digit, kind="stable")]
        shift += 16
    return order


#: Arrays made by run_array, by id (weak: an entry goes with its array).
_RUNS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def run_array(lo: int, n: int) -> np.ndarray:
    """``np.arange(lo, lo + n)`` (int64), read-only, and known as a run: a send_all
    pass's batches, a build step's GFNs, fresh frames. ``known_run`` answers for it and
    for every increasing slice of it in O(1), where finding out costs a pass over the
    array (the tables' run paths, the restore's order checks ask at every step). Being
    read-only, neither it nor a view of it can ever stop being a run."""
    a = np.arange(lo, lo + n, dtype=np.int64)
    a.flags.writeable = False
    _RUNS[id(a)] = a
    return a


def known_run(x: np.ndarray) -> bool:
    """True when ``x`` is ``run_array`` output or a contiguous, increasing 1-D slice of
    it: then ``x`` is ``arange(x[0], x[0] + x.size)``. False says nothing (the caller
    checks the array itself)."""
    owner = x if x.base is None else x.base
    return (_RUNS.get(id(owner)) is owner and x.ndim == 1 and x.dtype == np.int64
            and (x.size < 2 or x.strides[0] == 8))
