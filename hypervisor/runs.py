"""Runs and sorted sets of frame numbers: the array helpers the hypervisor's tables and
the toolstack share.

Xen works on ranges wherever it can: the P2M maps contiguous guest memory with
superpage entries (``xen/arch/x86/mm/p2m-pt.c``), ``xg_sr_restore.c`` populates a
batch's PFNs in one ``populate_physmap`` call, a saver's pass walks ``[0, p2m_size)``.
These helpers find such runs in numpy arrays (or cut arrays at the 2^CHUNK_BITS
boundaries of the P2M's tables) without a per-page loop, and answer the few
set questions memory.c's extent loops ask (the first repeat, the last write to a
GFN). They hold no state; ``tables.py`` holds the class tables and ``run_array``.
"""

from __future__ import annotations

import numpy as np

from .tables import known_run, stable_order

#: The P2M's and M2P's tables hold 2^CHUNK_BITS entries per chunk (``chunked.py``); a
#: restore cuts its groups at the same boundaries.
CHUNK_BITS = 18
CHUNK = 1 << CHUNK_BITS
#: Below this size an array is never treated as a run (the general paths are as fast).
RUN_MIN = 4096


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """Sorted unique values by sort + neighbour compare (numpy 2.x's hash-based
    ``np.unique`` is several times slower on large int64 arrays)."""
    s = np.sort(a.reshape(-1))
    if s.size < 2:
        return s
    keep = np.empty(s.size, dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def unique_chunks(chunk: np.ndarray) -> np.ndarray:
    """Sorted unique chunk numbers (a presence table when they span few chunks)."""
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


def is_run(idx: np.ndarray) -> bool:
    """Is ``idx`` one large contiguous increasing run (the builder's and scans' shape)?"""
    n = idx.size
    if n <= RUN_MIN:
        return False
    if known_run(idx):
        return True
    # n integers spanning n - 1 and strictly increasing are exactly a run.
    return int(idx[-1]) - int(idx[0]) == n - 1 and bool((idx[1:] > idx[:-1]).all())


def is_ascending(idx: np.ndarray) -> bool:
    """Is ``idx`` a large strictly increasing array (a restore group, a build slice
    with a hole, a scan): then each chunk's part of it is one slice of positions."""
    if idx.size <= RUN_MIN:
        return False
    return known_run(idx) or (int(idx[-1]) > int(idx[0]) and bool((idx[1:] > idx[:-1]).all()))


def run_start(idx: np.ndarray) -> int | None:
    """``idx[0]`` when ``idx`` is one large contiguous increasing run (the tables' run
    paths take it), else None."""
    return int(idx[0]) if is_run(idx) else None


def monotone(g: np.ndarray) -> int:
    """1 if ``g`` is strictly increasing, -1 if strictly decreasing, else 0 (so unique:
    the balloon's and the restore's runs skip the sort that finds repeats)."""
    if g.size < 2:
        return 1
    d = g[1:] > g[:-1]
    if d.all():
        return 1
    if not d.any() and bool((g[1:] < g[:-1]).all()):
        return -1
    return 0


def first_repeat(g: np.ndarray) -> int:
    """Index of the first element equal to an earlier one (``len(g)`` if none)."""
    if g.size < 2 or monotone(g):
        return g.size
    order = stable_order(g)
    s = g[order]
    rep = np.flatnonzero(s[1:] == s[:-1])
    return int(order[rep + 1].min()) if rep.size else g.size


def first_true(mask: np.ndarray) -> int:
    """Index of the first True in ``mask`` (``len(mask)`` if none)."""
    i = np.flatnonzero(mask)
    return int(i[0]) if i.size else mask.size


def last_wins(g: np.ndarray, tok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique GFNs (sorted) with the token of each one's last occurrence."""
    if g.size < 2 or bool((g[1:] > g[:-1]).all()):
        return g, tok
    order = stable_order(g)
    s = g[order]
    last = np.ones(s.size, dtype=bool)
    last[:-1] = s[1:] != s[:-1]
    return s[last], tok[order[last]]


def gfn_runs(gfns: np.ndarray) -> np.ndarray:
    """GFNs -> sorted (k, 2) int64 [start, end) runs (sorts only when it must)."""
    gfns = np.asarray(gfns, dtype=np.int64).reshape(-1)
    if gfns.size == 0:
        return np.empty((0, 2), dtype=np.int64)
    step = np.diff(gfns)
    if (step <= 0).any():
        gfns = np.unique(gfns)
        step = np.diff(gfns)
    breaks = np.flatnonzero(step != 1) + 1
    starts = np.concatenate(([gfns[0]], gfns[breaks]))
    ends = np.concatenate((gfns[breaks - 1], [gfns[-1]])) + 1
    return np.stack([starts, ends], axis=1)


def merge_runs(*runs: np.ndarray) -> np.ndarray:
    """Union of several (k, 2) run lists, as sorted, coalesced runs."""
    r = np.concatenate([np.asarray(x, dtype=np.int64).reshape(-1, 2) for x in runs])
    if r.shape[0] == 0:
        return r
    r = r[np.argsort(r[:, 0], kind="stable")]
    reach = np.maximum.accumulate(r[:, 1])
    new = np.ones(r.shape[0], dtype=bool)
    new[1:] = r[1:, 0] > reach[:-1]
    idx = np.flatnonzero(new)
    return np.stack([r[idx, 0], reach[np.append(idx[1:] - 1, r.shape[0] - 1)]], axis=1)
