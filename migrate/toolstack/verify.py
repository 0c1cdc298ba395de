"""Check the destination against the source as it stood at suspend.

Xen's own check is the VERIFY pass (``verify_frames`` in xg_sr_save.c, memcmp on the
restore side); this goes further and compares whole address spaces, so the three
outcomes of the P2M/log-dirty bug are counted separately:
missing (RAM at the source, never populated at the destination: an added GFN never
marked dirty), stale (populated at both, contents differ: a page sent, then changed
unlogged), and extra (populated at the destination but ballooned out at the source:
the restore side never unpopulates, see ``xg_sr_restore.c``). Besides the counts, the
missing and stale GFNs themselves are kept as runs (bounded) for the event log's
``VerifySets``, so a page nobody tracked can still be explained.
"""

from __future__ import annotations

import hashlib

import numpy as np

from hypervisor.runs import gfn_runs
from hypervisor.tables import known_run

from migrate.events import MAX_VERIFY_RUNS, PageFate, VerifySets, VerifyStats

SAMPLE = 16
#: The fates a whole-domain check counts (a page at both ends with the same contents
#: is the rest: ``PageFate.OK``).
_COUNTED = (PageFate.MISSING, PageFate.STALE, PageFate.EXTRA)
#: Bytes of a window's digest (BLAKE2b): a chance match of different windows is ~2^-128.
DIGEST_BYTES = 16


def snapshot_digest(gfns: np.ndarray, tokens: np.ndarray) -> bytes:
    """A digest of one window of a domain (``Hypervisor.snapshot``: its RAM GFNs and
    their contents, sorted by GFN): equal windows give equal digests, so the verify step
    fetches a remote source's contents only where its digest differs."""
    # SHA-256: the fastest collision-resistant hash hashlib has where the CPU helps it
    # (SHA-NI: about twice BLAKE2b's speed); fed the arrays' buffers, not copies.
    h = hashlib.sha256(np.ascontiguousarray(gfns, dtype="<i8"))
    h.update(np.ascontiguousarray(tokens, dtype="<u8"))
    return h.digest()[:DIGEST_BYTES]


def _increasing(g: np.ndarray) -> bool:
    return g.size < 2 or known_run(g) or not bool((g[1:] <= g[:-1]).any())


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    """``np.array_equal`` of two GFN arrays; two known runs (a window of RAM that is one
    run on both sides, the usual case) are equal by their ends."""
    if a.size != b.size:
        return False
    if a.size and known_run(a) and known_run(b):
        return int(a[0]) == int(b[0])
    return bool(np.array_equal(a, b))


class VerifyAccumulator:
    """Compares the two address spaces range by range, so a guest of hundreds of GiB
    never needs both whole snapshots in memory at once."""

    def __init__(self) -> None:
        self.counts: dict[PageFate, int] = dict.fromkeys(_COUNTED, 0)
        self.samples: dict[PageFate, list[int]] = {fate: [] for fate in _COUNTED}
        # The missing and stale GFNs as runs (the ranges come in increasing GFN order),
        # at most MAX_VERIFY_RUNS of each: the event log's VerifySets.
        self._runs: dict[PageFate, _RunList] = {PageFate.MISSING: _RunList(), PageFate.STALE: _RunList()}

    def _note(self, fate: PageFate, gfns: np.ndarray) -> None:
        self.counts[fate] += int(gfns.size)
        room = SAMPLE - len(self.samples[fate])
        if room > 0 and gfns.size:
            self.samples[fate].extend(int(x) for x in gfns[:room])
        if fate in self._runs and gfns.size:
            self._runs[fate].add(gfns)

    def add(self, sg, st, dg, dt) -> None:
        """One GFN range of both sides; each side sorted by GFN, unique."""
        sg = np.asarray(sg, dtype=np.int64)
        dg = np.asarray(dg, dtype=np.int64)
        st = np.asarray(st, dtype=np.uint64)
        dt = np.asarray(dt, dtype=np.uint64)
        # Both sides alike and in order (the usual case): one order check does for both.
        same = _equal(sg, dg)
        if not (same and _increasing(sg)):
            if not _increasing(sg):
                o = np.argsort(sg, kind="stable")
                sg, st = sg[o], st[o]
            if not _increasing(dg):
                o = np.argsort(dg, kind="stable")
                dg, dt = dg[o], dt[o]
            same = _equal(sg, dg)
        if same:
            # Both sides populated alike: only contents can differ.
            self._note(PageFate.STALE, sg[st != dt])
            return
        pos = np.searchsorted(dg, sg)
        inside = pos < dg.size
        found = np.zeros(sg.size, dtype=bool)
        found[inside] = dg[pos[inside]] == sg[inside]
        self._note(PageFate.MISSING, sg[~found])
        stale = found.copy()
        stale[found] = dt[pos[found]] != st[found]
        self._note(PageFate.STALE, sg[stale])
        matched = np.zeros(dg.size, dtype=bool)
        matched[pos[found]] = True
        self._note(PageFate.EXTRA, dg[~matched])

    def sets(self, t: float) -> VerifySets | None:
        """The missing and stale sets as a ``VerifySets`` event at ``t``; None when both
        are empty (nothing to tell that ``VerifyDone``'s counts do not)."""
        m, st = self._runs[PageFate.MISSING], self._runs[PageFate.STALE]
        if not (m.parts or st.parts):
            return None
        return VerifySets(t=t, missing=m.array(), stale=st.array(), missing_complete=m.complete,
                          stale_complete=st.complete)

    def result(self) -> VerifyStats:
        n, sample = self.counts, self.samples
        return VerifyStats(ok=n[PageFate.MISSING] == 0 and n[PageFate.STALE] == 0,
                           missing_pages=n[PageFate.MISSING], stale_pages=n[PageFate.STALE],
                           extra_pages=n[PageFate.EXTRA], missing_sample=list(sample[PageFate.MISSING]),
                           stale_sample=list(sample[PageFate.STALE]), extra_sample=list(sample[PageFate.EXTRA]))


class _RunList:
    """Sorted GFNs, added in increasing order, kept as at most MAX_VERIFY_RUNS
    ``[start, end)`` runs; a run that continues the last one joins it."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.n = 0
        self.complete = True

    def add(self, gfns: np.ndarray) -> None:
        if not self.complete:
            return
        runs = gfn_runs(gfns)
        if self.parts and runs.shape[0] and int(self.parts[-1][-1, 1]) == int(runs[0, 0]):
            last = self.parts[-1].copy()
            last[-1, 1] = runs[0, 1]
            self.parts[-1] = last
            runs = runs[1:]
        room = MAX_VERIFY_RUNS - self.n
        if runs.shape[0] > room:
            runs = runs[:room]
            self.complete = False
        if runs.shape[0]:
            self.parts.append(runs)
            self.n += int(runs.shape[0])

    def array(self) -> np.ndarray:
        if not self.parts:
            return np.empty((0, 2), dtype=np.int64)
        return np.concatenate(self.parts)
