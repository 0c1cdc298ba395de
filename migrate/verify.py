"""Check the destination against the source as it stood at suspend.

Xen's own check is the VERIFY pass (``verify_frames`` in xg_sr_save.c, memcmp on the
restore side); this goes further and compares whole address spaces, so the three
outcomes of the P2M/log-dirty bug are counted separately:
missing (RAM at the source, never populated at the destination: reference 6.2 (i)),
stale (populated at both, contents differ: 6.2 (ii)-(iv)), and extra (populated at the
destination but ballooned out at the source: the restore side never unpopulates, 5.7).
"""

from __future__ import annotations

import numpy as np

from .events import VerifyStats

SAMPLE = 16


def compare_memory(src_gfns: np.ndarray, src_tokens: np.ndarray,
                   dst_gfns: np.ndarray, dst_tokens: np.ndarray) -> VerifyStats:
    """Compare two (sorted-or-not) GFN -> content-token maps, vectorised."""
    src_gfns = np.asarray(src_gfns, dtype=np.int64)
    dst_gfns = np.asarray(dst_gfns, dtype=np.int64)
    so = np.argsort(src_gfns, kind="stable")
    do = np.argsort(dst_gfns, kind="stable")
    sg, st = src_gfns[so], np.asarray(src_tokens, dtype=np.uint64)[so]
    dg, dt = dst_gfns[do], np.asarray(dst_tokens, dtype=np.uint64)[do]
    common, si, di = np.intersect1d(sg, dg, assume_unique=True, return_indices=True)
    missing = np.setdiff1d(sg, dg, assume_unique=True)
    extra = np.setdiff1d(dg, sg, assume_unique=True)
    stale = common[st[si] != dt[di]]
    return VerifyStats(
        ok=bool(missing.size == 0 and stale.size == 0),
        missing_pages=int(missing.size), stale_pages=int(stale.size), extra_pages=int(extra.size),
        missing_sample=[int(x) for x in missing[:SAMPLE]],
        stale_sample=[int(x) for x in stale[:SAMPLE]],
        extra_sample=[int(x) for x in extra[:SAMPLE]],
    )
