"""The log-dirty tree: Xen's ``xen/arch/x86/mm/paging.c`` with its exact geometry.

Mirrors ``paging_mark_pfn_dirty`` / ``paging_mark_pfn_clean`` (``set_pfn_logdirty``),
``paging_log_dirty_op`` (CLEAN and PEEK) and ``paging_free_log_dirty_bitmap`` (OFF),
with the index macros of ``asm/paging.h``:

* 4 levels; interior nodes have 512 entries, a leaf (L1) is a 4 KiB page of 32768 bits;
* ``L1_LOGDIRTY_IDX`` = PFN bits 0-14, ``L2`` = bits 15-23, ``L3`` = bits 24-32,
  ``L4`` = bits 33-41: one leaf covers 2^15 PFNs, one L2 node 2^24, one L3 node 2^33,
  the top (L4) node 2^42.

The tree is sparse, as Xen's is: nodes are allocated lazily on the first mark below
them, from a bounded node pool (Xen's paging pool). A mark that cannot allocate a
node gives up silently and counts one ``failed_allocs``; the next CLEAN/PEEK then fails
with ENOMEM without clearing anything. Marking clean never allocates. CLEAN zeroes the
leaves it walks and frees no node; only OFF (:meth:`LogDirtyTree.free`) drops the tree.

Storage: leaves live in one 2-D ``uint64`` pool (``slot x 512`` words); a leaf key is
``pfn >> 15`` and maps to its slot through a sorted key array (``searchsorted``) or, when
the keys span a small range, a direct lookup table. Interior nodes are sets of keys
(``pfn >> 24`` for L2 nodes, ``pfn >> 33`` for L3 nodes, a flag for the top node):
they hold no bits of their own, only the tree's shape and node counts.

All operations take numpy arrays of PFNs and are vectorised; loops run per leaf at most.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .abi import ENOMEM, ShadowStats, XenError
from .runs import sorted_unique

#: PAGE_SHIFT + 3: bits of PFN indexed inside one leaf.
L1_SHIFT = 15
#: PAGETABLE_ORDER: bits of index per interior level.
NODE_ORDER = 9
LOGDIRTY_NODE_ENTRIES = 1 << NODE_ORDER
LEAF_BITS = 1 << L1_SHIFT
LEAF_WORDS = LEAF_BITS // 64
L2_SHIFT = L1_SHIFT                      # L2_LOGDIRTY_IDX = (pfn >> 15) & 511
L3_SHIFT = L1_SHIFT + NODE_ORDER         # 24
L4_SHIFT = L1_SHIFT + 2 * NODE_ORDER     # 33
#: The top node covers 2^42 PFNs; paging_log_dirty_op lowers ``pages`` to this.
TREE_PFNS = 1 << (L4_SHIFT + NODE_ORDER)

_UINT32_MAX = 0xFFFFFFFF
#: Leaf-key ranges up to this size get a direct lookup table instead of searchsorted.
_LUT_MAX = 1 << 20
_ONE = np.uint64(1)


def _saturate32(v: int) -> int:
    # 17e91570c5 "x86/paging: deal with log-dirty stats overflow": copied out saturated.
    return min(int(v), _UINT32_MAX)


def _unique_small(keys: np.ndarray) -> np.ndarray:
    """Sorted unique values of a non-negative int64 array; a presence table when the
    range is small (much faster than a sort for 1e6 keys over a few hundred values)."""
    if keys.size == 0:
        return keys.astype(np.int64)
    lo = int(keys.min())
    hi = int(keys.max())
    if hi - lo <= 4 * keys.size + 1024 and hi - lo < (1 << 24):
        present = np.zeros(hi - lo + 1, dtype=bool)
        present[keys - lo] = True
        return np.flatnonzero(present).astype(np.int64) + lo
    return sorted_unique(keys)


def _as_pfns(pfns) -> np.ndarray:
    a = np.asarray(pfns)
    if a.dtype != np.int64:
        a = a.astype(np.int64)
    return a.reshape(-1)


def _bit_positions(flat: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Sorted PFNs of the set bits of leaf words ``flat`` (rows of 512 words per key).

    Word-skip scan, then lowest-set-bit extraction: each round peels one bit off every
    word still non-zero and writes it at the word's next output position, so the output
    comes out sorted with no sort (rounds = the densest word's popcount).
    """
    nzw = np.flatnonzero(flat != 0)
    if nzw.size == 0:
        return np.empty(0, dtype=np.int64)
    w = flat[nzw]
    cnt = np.bitwise_count(w).astype(np.int64)
    start = np.cumsum(cnt) - cnt
    out = np.empty(int(start[-1] + cnt[-1]), dtype=np.int64)
    base = (keys[nzw >> NODE_ORDER] << L1_SHIFT) | ((nzw & (LEAF_WORDS - 1)) << 6)
    one = np.uint64(1)
    while w.size:
        low = w & (~w + one)
        # A power of two converts to float64 exactly; frexp's exponent is its bit index + 1.
        out[start] = base + (np.frexp(low.astype(np.float64))[1] - 1)
        w ^= low
        keep = w != 0
        if not keep.all():
            w, start, base = w[keep], start[keep], base[keep]
        start += 1
    return out


class DirtyBitmap:
    """The bitmap a CLEAN or PEEK copies out over ``[0, pages)``, held sparsely.

    ``keys`` are sorted leaf keys (``pfn >> 15``) and ``words[i]`` the 512 uint64 words
    of leaf ``keys[i]``; leaves absent from ``keys`` are all zero (Xen writes zeros where
    any level of the tree is missing). Bits at or above ``pages`` are never held.
    """

    __slots__ = ("pages", "keys", "words")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, pages: int, keys: np.ndarray | None = None, words: np.ndarray | None = None):
        self.pages = int(pages)
        if keys is None:
            keys = np.empty(0, dtype=np.int64)
            words = np.empty((0, LEAF_WORDS), dtype=np.uint64)
        self.keys = np.asarray(keys, dtype=np.int64)
        self.words = np.asarray(words, dtype=np.uint64).reshape(-1, LEAF_WORDS)

    @classmethod
    def from_pfns(cls, pages: int, pfns) -> DirtyBitmap:
        """A bitmap with exactly ``pfns`` (those below ``pages``) set."""
        p = _as_pfns(pfns)
        p = p[(p >= 0) & (p < pages)]
        keys = _unique_small(p >> L1_SHIFT)
        words = np.zeros((keys.size, LEAF_WORDS), dtype=np.uint64)
        if p.size:
            row = np.searchsorted(keys, p >> L1_SHIFT)
            np.bitwise_or.at(words.reshape(-1), row * LEAF_WORDS + ((p & (LEAF_BITS - 1)) >> 6),
                             _ONE << (p & 63).astype(np.uint64))
        return cls(pages, keys, words)

    def pfns(self) -> np.ndarray:
        """Sorted int64 PFNs whose bit is set (all below ``pages``)."""
        if self.keys.size == 0:
            return np.empty(0, dtype=np.int64)
        return _bit_positions(self.words.reshape(-1), self.keys)

    def count(self) -> int:
        """Number of set bits (all below ``pages``)."""
        return int(np.bitwise_count(self.words).sum()) if self.keys.size else 0

    def test(self, pfns) -> np.ndarray:
        """Per-PFN bool: is its bit set? (PFNs outside ``[0, pages)`` read as clear.)"""
        p = _as_pfns(pfns)
        out = np.zeros(p.size, dtype=bool)
        if self.keys.size == 0 or p.size == 0:
            return out
        ok = (p >= 0) & (p < self.pages)
        lk = p >> L1_SHIFT
        pos = np.minimum(np.searchsorted(self.keys, lk), self.keys.size - 1)
        ok &= self.keys[pos] == lk
        q = p[ok]
        w = self.words[pos[ok], (q & (LEAF_BITS - 1)) >> 6]
        out[ok] = ((w >> (q & 63).astype(np.uint64)) & _ONE).astype(bool)
        return out

    def to_bytes(self) -> bytes:
        """Xen's packed bitmap: LSB-first, ``ceil(pages / 8)`` bytes (for small ranges)."""
        nbytes = (self.pages + 7) >> 3
        out = np.zeros(nbytes, dtype=np.uint8)
        leaf_bytes = LEAF_BITS // 8
        for key, row in zip(self.keys.tolist(), self.words):
            start = key * leaf_bytes
            if start >= nbytes:
                break
            b = row.astype("<u8").view(np.uint8)
            n = min(leaf_bytes, nbytes - start)
            out[start:start + n] = b[:n]
        return out.tobytes()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DirtyBitmap):
            return NotImplemented
        return self.pages == other.pages and np.array_equal(self.pfns(), other.pfns())

    def __repr__(self) -> str:
        return f"DirtyBitmap(pages={self.pages}, count={self.count()})"


@dataclass(frozen=True, slots=True)
class NodeCounts:
    """Tree pages held per level (Xen's ``allocs`` is their sum)."""

    l4: int
    l3: int
    l2: int
    l1: int

    @property
    def total(self) -> int:
        return self.l4 + self.l3 + self.l2 + self.l1


class LogDirtyTree:
    """Xen's per-domain log-dirty tree (``struct log_dirty_domain``).

    ``pool_pages`` bounds the node pages the tree may hold (None: unbounded), standing
    for the HAP/shadow paging pool the nodes come from.
    """

    def __init__(self, pool_pages: int | None = None):
        self.pool_pages = pool_pages
        self.dirty_count = 0
        self.fault_count = 0          # shadow-only in Xen; HAP never bumps it
        self.failed_allocs = 0
        self.nodes_peak = 0
        self._reset_tree()

    # ------------------------------------------------------------------ shape

    def _reset_tree(self) -> None:
        self._top = False
        self._l3: set[int] = set()
        self._l2: set[int] = set()
        self._keys = np.empty(0, dtype=np.int64)     # sorted leaf keys
        self._slots = np.empty(0, dtype=np.int64)    # slot of each sorted key
        self._words = np.zeros((0, LEAF_WORDS), dtype=np.uint64)
        self._nleaves = 0
        self._lut: np.ndarray | None = None
        self._lut_lo = 0

    @property
    def nodes(self) -> int:
        """Tree pages currently held (Xen's ``log_dirty.allocs``)."""
        return int(self._top) + len(self._l3) + len(self._l2) + self._nleaves

    def node_counts(self) -> NodeCounts:
        return NodeCounts(int(self._top), len(self._l3), len(self._l2), self._nleaves)

    def leaf_keys(self) -> np.ndarray:
        """Sorted keys (``pfn >> 15``) of the allocated leaves."""
        return self._keys.copy()

    @property
    def allocated(self) -> bool:
        return self._top

    def _pool_free(self) -> float:
        return float("inf") if self.pool_pages is None else self.pool_pages - self.nodes

    # ------------------------------------------------------------------ lookup

    def _rebuild_index(self) -> None:
        order = np.argsort(self._keys, kind="stable")
        self._keys = self._keys[order]
        self._slots = self._slots[order]
        if self._keys.size and int(self._keys[-1] - self._keys[0]) < _LUT_MAX:
            lo = int(self._keys[0])
            lut = np.full(int(self._keys[-1]) - lo + 1, -1, dtype=np.int64)
            lut[self._keys - lo] = self._slots
            self._lut, self._lut_lo = lut, lo
        else:
            self._lut = None

    def _slots_for(self, lk: np.ndarray) -> np.ndarray:
        """Slot of each leaf key, -1 where the leaf is not allocated."""
        if self._keys.size == 0:
            return np.full(lk.size, -1, dtype=np.int64)
        if self._lut is not None:
            idx = lk - self._lut_lo
            if lk.size and int(idx.min()) >= 0 and int(idx.max()) < self._lut.size:
                return self._lut[idx]
            inside = (idx >= 0) & (idx < self._lut.size)
            out = np.full(lk.size, -1, dtype=np.int64)
            out[inside] = self._lut[idx[inside]]
            return out
        pos = np.minimum(np.searchsorted(self._keys, lk), self._keys.size - 1)
        return np.where(self._keys[pos] == lk, self._slots[pos], -1)

    # ------------------------------------------------------------------ allocation

    def _take_node(self) -> bool:
        # paging_new_log_dirty_page: the failure is counted by the caller per mark.
        return self._pool_free() >= 1

    def _alloc_leaves(self, missing: np.ndarray, lk: np.ndarray) -> None:
        """Allocate the paths down to the ``missing`` leaf keys (sorted, unique).

        When the pool cannot hold them all, allocate in the order the PFNs come (each
        mark walks top -> L3 -> L2 -> leaf and keeps what it allocated before failing).
        """
        miss = missing.tolist()
        new_l3 = {k >> (2 * NODE_ORDER) for k in miss} - self._l3
        new_l2 = {k >> NODE_ORDER for k in miss} - self._l2
        need = int(not self._top) + len(new_l3) + len(new_l2) + len(miss)
        if need <= self._pool_free():
            self._top = True
            self._l3 |= new_l3
            self._l2 |= new_l2
            ok = miss
        else:
            order = np.argsort(lk, kind="stable")
            sk = lk[order]
            head = np.ones(sk.size, dtype=bool)
            head[1:] = sk[1:] != sk[:-1]
            keys, first = sk[head], order[head]      # each key's first occurrence
            sel = np.isin(keys, missing)
            order = np.argsort(first[sel], kind="stable")
            ok = []
            for k in keys[sel][order].tolist():
                if not self._top:
                    if not self._take_node():
                        break
                    self._top = True
                k3, k2 = k >> (2 * NODE_ORDER), k >> NODE_ORDER
                if k3 not in self._l3:
                    if not self._take_node():
                        break
                    self._l3.add(k3)
                if k2 not in self._l2:
                    if not self._take_node():
                        break
                    self._l2.add(k2)
                if not self._take_node():
                    break
                ok.append(k)
                self._nleaves += 1  # reserve it now so _pool_free sees it
            self._nleaves -= len(ok)
        if ok:
            n = len(ok)
            start = self._nleaves
            if start + n > self._words.shape[0]:
                cap = max(start + n, 2 * self._words.shape[0], 8)
                grown = np.zeros((cap, LEAF_WORDS), dtype=np.uint64)
                grown[:start] = self._words[:start]
                self._words = grown
            else:
                self._words[start:start + n] = 0   # a new leaf is zeroed
            self._keys = np.concatenate([self._keys, np.asarray(ok, dtype=np.int64)])
            self._slots = np.concatenate([self._slots, np.arange(start, start + n, dtype=np.int64)])
            self._nleaves += n
            self._rebuild_index()
        self.nodes_peak = max(self.nodes_peak, self.nodes)

    # ------------------------------------------------------------------ marking

    @staticmethod
    def _check(pfns) -> tuple[np.ndarray, int, int]:
        """The PFNs as int64 with their bounds ``(p, lo, hi)`` (0, -1 when empty)."""
        p = _as_pfns(pfns)
        if not p.size:
            return p, 0, -1
        lo, hi = int(p.min()), int(p.max())
        if lo < 0 or hi >= TREE_PFNS:
            raise ValueError(f"PFN outside the log-dirty tree's 2^42 range: {lo}..{hi}")
        return p, lo, hi

    def _ensure_leaves(self, p: np.ndarray, ukeys: np.ndarray, allocate: bool) -> np.ndarray:
        """Slots of the unique leaf keys ``ukeys`` of PFNs ``p`` (-1 where absent).

        With ``allocate`` (marking dirty) missing paths are allocated first; the PFNs
        whose leaf still cannot be had each count one ``failed_allocs``."""
        uslots = self._slots_for(ukeys)
        if allocate and (uslots < 0).any():
            lk = p >> L1_SHIFT
            self._alloc_leaves(ukeys[uslots < 0], lk)
            uslots = self._slots_for(ukeys)
            failed = ukeys[uslots < 0]
            if failed.size:
                self.failed_allocs += int(np.count_nonzero(np.isin(lk, failed)))
        return uslots

    def _apply(self, slots: np.ndarray, rows: np.ndarray, set_bits: bool) -> int:
        """OR (or AND-NOT) packed leaf ``rows`` into leaves ``slots`` (unique); returns
        the bits that flipped, by popcount before/after (test-and-set semantics: a PFN
        repeated in one call flips its bit once)."""
        if slots.size == 0:
            return 0
        lo, hi = int(slots.min()), int(slots.max())
        if hi - lo + 1 == slots.size and (slots.size == 1 or bool((np.diff(slots) == 1).all())):
            leaves = self._words[lo:hi + 1]           # a view: update in place
            before = int(np.bitwise_count(leaves).sum())
            if set_bits:
                leaves |= rows
            else:
                leaves &= ~rows
        else:
            leaves = self._words[slots]
            before = int(np.bitwise_count(leaves).sum())
            if set_bits:
                leaves |= rows
            else:
                leaves &= ~rows
            self._words[slots] = leaves
        after = int(np.bitwise_count(leaves).sum())
        return after - before if set_bits else before - after

    def _set(self, p: np.ndarray, lo: int, hi: int, set_bits: bool) -> int:
        """Set (or clear) the bits of PFNs ``p``, which lie in [``lo``, ``hi``]."""
        klo = lo >> L1_SHIFT
        khi = hi >> L1_SHIFT
        span = khi - klo + 1
        if (p.size * 16 >= span * LEAF_BITS or hi - lo < p.size) and span <= 4096:
            # Dense (or one short run, as a balloon op's: its leaves are few): build the
            # request as packed leaves over [klo, khi] (plain bool assignment is safe
            # with repeated PFNs), then OR / AND-NOT whole words.
            bools = np.zeros(span * LEAF_BITS, dtype=bool)
            bools[p - (klo << L1_SHIFT)] = True
            packed = np.packbits(bools, bitorder="little").view("<u8").reshape(span, LEAF_WORDS)
            rows = np.flatnonzero(packed.any(axis=1))
            uslots = self._ensure_leaves(p, rows + klo, set_bits)
            ok = uslots >= 0
            return self._apply(uslots[ok], packed[rows[ok]].astype(np.uint64, copy=False), set_bits)
        # Sparse: per-word updates with ufunc.at.
        lk = p >> L1_SHIFT
        ukeys = _unique_small(lk)
        uslots = self._ensure_leaves(p, ukeys, set_bits)
        if (uslots < 0).all():
            return 0
        slots = self._slots_for(lk)
        ok = slots >= 0
        if not ok.all():
            p, slots = p[ok], slots[ok]
        touched = np.sort(uslots[uslots >= 0])
        before = int(np.bitwise_count(self._words[touched]).sum())
        flat = self._words.reshape(-1)
        widx = (slots << NODE_ORDER) | ((p & (LEAF_BITS - 1)) >> 6)
        bits = _ONE << (p & 63).astype(np.uint64)
        # Never ``flat[widx] |= bits``: repeated word indices would lose bits.
        if set_bits:
            np.bitwise_or.at(flat, widx, bits)
        else:
            np.bitwise_and.at(flat, widx, ~bits)
        after = int(np.bitwise_count(self._words[touched]).sum())
        return after - before if set_bits else before - after

    def mark_dirty(self, pfns) -> int:
        """paging_mark_pfn_dirty over an array; returns the number of bits newly set.

        Allocates missing nodes; marks whose path cannot be allocated are dropped and
        each counts one ``failed_allocs``.
        """
        p, lo, hi = self._check(pfns)
        if p.size == 0:
            return 0
        n = self._set(p, lo, hi, True)
        self.dirty_count += n
        return n

    def mark_clean(self, pfns) -> int:
        """paging_mark_pfn_clean over an array; returns the number of bits cleared.

        Never allocates: a PFN whose leaf (or any level above it) is missing is already
        clear, so nothing happens for it.
        """
        p, lo, hi = self._check(pfns)
        if p.size == 0 or self._nleaves == 0:
            return 0
        n = self._set(p, lo, hi, False)
        self.dirty_count -= n
        return n

    def is_dirty(self, pfns) -> np.ndarray:
        """paging_mfn_is_dirty by PFN: per-PFN bool, read-only."""
        p, lo, hi = self._check(pfns)
        if p.size > 4096 and hi - lo == p.size - 1:
            # n distinct PFNs spanning n - 1 (a balloon op's run, either way up): the
            # leaves' bits over [lo, hi] unpacked, with no per-PFN word lookups.
            if int(p[0]) == lo and bool((p[1:] > p[:-1]).all()):
                return self._run_bits(lo, p.size)
            if int(p[0]) == hi and bool((p[1:] < p[:-1]).all()):
                return self._run_bits(lo, p.size)[::-1].copy()
        slots = self._slots_for(p >> L1_SHIFT)
        out = np.zeros(p.size, dtype=bool)
        ok = slots >= 0
        q = p[ok]
        w = self._words[slots[ok], (q & (LEAF_BITS - 1)) >> 6]
        out[ok] = ((w >> (q & 63).astype(np.uint64)) & _ONE).astype(bool)
        return out

    def _run_bits(self, lo: int, n: int) -> np.ndarray:
        """Per-PFN bool for PFNs ``lo .. lo + n - 1``: their leaves' words unpacked (bit
        ``i`` of word ``w`` is the leaf's PFN ``64 w + i``; absent leaves read clear)."""
        k0 = lo >> L1_SHIFT
        slots = self._slots_for(np.arange(k0, ((lo + n - 1) >> L1_SHIFT) + 1, dtype=np.int64))
        words = np.zeros((slots.size, LEAF_WORDS), dtype="<u8")
        ok = slots >= 0
        if ok.any():
            words[ok] = self._words[slots[ok]]
        off = lo - (k0 << L1_SHIFT)
        return np.unpackbits(words.view(np.uint8), bitorder="little").view(bool)[off:off + n]

    def set_bits(self) -> int:
        """Bits set anywhere in the tree (can differ from ``dirty_count``: OFF frees the
        bits but keeps the count, CLEAN of a short range keeps bits beyond it)."""
        return int(np.bitwise_count(self._words[: self._nleaves]).sum())

    # ------------------------------------------------------------------ domctl side

    def stats(self) -> ShadowStats:
        return ShadowStats(fault_count=_saturate32(self.fault_count),
                           dirty_count=_saturate32(self.dirty_count))

    def _op(self, pages: int, clean: bool, want_bitmap: bool) -> tuple[DirtyBitmap | None, ShadowStats]:
        # paging_log_dirty_op: stats are filled before the walk.
        stats = self.stats()
        if self.failed_allocs:
            raise XenError(ENOMEM, f"log-dirty tree lost {self.failed_allocs} marks to failed "
                                   "node allocations (paging pool exhausted); turn log-dirty off "
                                   "and on again, or give the pool more pages")
        pages = min(int(pages), TREE_PFNS)
        # Leaves walked: those starting below ``pages``. Xen copies each, zeros where absent.
        n = int(np.searchsorted(self._keys, (pages + LEAF_BITS - 1) >> L1_SHIFT))
        walked = self._slots[:n]
        bitmap = None
        if want_bitmap:
            rows = self._words[walked]
            keys = self._keys[:n]
            keep = rows.any(axis=1)
            if not keep.all():
                rows, keys = rows[keep], keys[keep]
            if keys.size and (int(keys[-1]) + 1) << L1_SHIFT > pages:
                # The last leaf straddles ``pages``: hold no bits at or beyond it.
                lim = pages - (int(keys[-1]) << L1_SHIFT)
                tail = rows[-1]
                tail[(lim + 63) >> 6:] = 0
                if lim & 63:
                    tail[lim >> 6] &= (_ONE << np.uint64(lim & 63)) - _ONE
            bitmap = DirtyBitmap(pages, keys, rows)
        if clean:
            # clear_page() on each walked leaf (the whole page, also bits beyond ``pages``);
            # no node is freed.
            self._words[walked] = 0
            self.dirty_count = 0
            self.fault_count = 0
        return bitmap, stats

    def clean(self, pages: int, want_bitmap: bool = True) -> tuple[DirtyBitmap | None, ShadowStats]:
        """XEN_DOMCTL_SHADOW_OP_CLEAN: copy ``[0, pages)`` out and zero the walked leaves."""
        return self._op(pages, True, want_bitmap)

    def peek(self, pages: int, want_bitmap: bool = True) -> tuple[DirtyBitmap | None, ShadowStats]:
        """XEN_DOMCTL_SHADOW_OP_PEEK: copy ``[0, pages)`` out, change nothing."""
        return self._op(pages, False, want_bitmap)

    def free(self) -> None:
        """paging_free_log_dirty_bitmap (OFF / teardown): drop every node, reset
        ``failed_allocs``. ``dirty_count`` is left alone, as in Xen."""
        self._reset_tree()
        self.failed_allocs = 0
