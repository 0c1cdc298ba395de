"""Log-dirty tree benchmarks (hypervisor/logdirty.py) against a dense-bitmap baseline.

(1) mark 1,000,000 random PFNs dirty in a 16 GiB guest (4 Mi PFNs), fresh tree each run;
(2) CLEAN over 64 GiB (16 Mi PFNs) with 1 % of PFNs dirty, including ``bitmap.pfns()``.

The baseline, measured in the same run over the same range: ``np.zeros`` of a bool map,
set the bits, ``np.packbits`` (LSB first). Each figure is the best of several repeats.
Run: ``python benchmarks/bench_logdirty.py``; a suite runner imports :func:`run`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypervisor.logdirty import LogDirtyTree  # noqa: E402

GOAL_RATIO = 5.0


def _best(fn, setup=None, repeats: int = 7) -> float:
    best = float("inf")
    for _ in range(repeats):
        arg = setup() if setup else None
        t0 = time.perf_counter()
        fn(arg)
        best = min(best, time.perf_counter() - t0)
    return best


def _baseline(pages: int, pfns: np.ndarray) -> float:
    def go(_):
        bits = np.zeros(pages, dtype=bool)
        bits[pfns] = True
        np.packbits(bits, bitorder="little")
    return _best(go)


def bench_mark(seed: int = 1) -> dict:
    pages = 4 << 20                        # 16 GiB guest
    pfns = np.random.default_rng(seed).integers(0, pages, 1_000_000, dtype=np.int64)

    def go(tree):
        tree.mark_dirty(pfns)
    t = _best(go, setup=LogDirtyTree)
    tree = LogDirtyTree()
    tree.mark_dirty(pfns)
    assert tree.dirty_count == np.unique(pfns).size
    base = _baseline(pages, pfns)
    return {"name": "mark 1e6 random PFNs dirty (16 GiB guest)", "pages": pages, "n": int(pfns.size),
            "seconds": t, "baseline_seconds": base, "ratio": t / base, "goal_ratio": GOAL_RATIO}


def bench_clean(seed: int = 2) -> dict:
    pages = 16 << 20                       # 64 GiB range
    dirty = np.random.default_rng(seed).choice(pages, pages // 100, replace=False).astype(np.int64)

    def setup():
        tree = LogDirtyTree()
        tree.mark_dirty(dirty)
        return tree

    def go(tree):
        bitmap, _ = tree.clean(pages)
        bitmap.pfns()
    t = _best(go, setup=setup)
    bm, st = setup().clean(pages)
    assert st.dirty_count == dirty.size and np.array_equal(bm.pfns(), np.sort(dirty))
    base = _baseline(pages, dirty)
    return {"name": "CLEAN 64 GiB range, 1% dirty, + pfns()", "pages": pages, "n": int(dirty.size),
            "seconds": t, "baseline_seconds": base, "ratio": t / base, "goal_ratio": GOAL_RATIO}


def run() -> list[dict]:
    return [bench_mark(), bench_clean()]


def main() -> int:
    rows = run()
    print(f"{'benchmark':44s} {'ms':>9s} {'baseline ms':>12s} {'ratio':>7s}  goal")
    for r in rows:
        ok = "ok" if r["ratio"] <= r["goal_ratio"] else "MISSED"
        print(f"{r['name']:44s} {r['seconds'] * 1e3:9.2f} {r['baseline_seconds'] * 1e3:12.2f} "
              f"{r['ratio']:7.2f}  <= {r['goal_ratio']:.0f}x {ok}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
