"""The simulated guest at scale (guest/guest.py) against a numpy floor.

A 256 GiB guest with a 1 GiB/s uniform writer and a balloon step that gives back
1 GiB, run for one virtual second through its op generator (the hypervisor answers
every hypercall as done). The floor, measured in the same run: allocate the guest's
owned-page bitmap and draw as many random page numbers as the guest wrote. This is
the timing that used to be a ``< 5 s`` assertion in tests/test_guest_balloon.py.
Run: ``python benchmarks/bench_guest.py``; a suite runner imports :func:`run`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from guest.config import GuestConfig  # noqa: E402
from guest.guest import Guest  # noqa: E402
from hypervisor.abi import MemoryWrites, all_done  # noqa: E402

GOAL_RATIO = 10.0


def _drive(g: Guest, t1: float) -> int:
    written = 0
    gen = g.run(0, t1)
    res = None
    while True:
        try:
            op = gen.send(res)
        except StopIteration:
            return written
        if isinstance(op, MemoryWrites):
            written += int(op.gfns.size)
            res = None
        else:
            res = all_done(op)


def bench_256gib_guest(repeats: int = 7) -> dict:
    c = GuestConfig.model_validate({"memory": "256GiB", "workloads": [{"kind": "uniform", "rate": "1GiB/s"}],
                                    "balloon": {"schedule": [{"at": "0.5s", "target": "-1GiB"}]}})
    best, written = float("inf"), 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        g = Guest(c, 1)
        written = _drive(g, 1.0)
        best = min(best, time.perf_counter() - t0)
    pages = c.memory_pages

    def floor() -> float:
        t0 = time.perf_counter()
        owned = np.ones(pages, dtype=bool)
        np.random.default_rng(1).integers(0, pages, written, dtype=np.int64)
        owned[: 1 << 18] = False
        return time.perf_counter() - t0

    base = min(floor() for _ in range(repeats))
    return {"name": "256 GiB guest, 1 s of writes + a 1 GiB balloon step", "pages": pages, "n": written,
            "seconds": best, "baseline_seconds": base, "ratio": best / base, "goal_ratio": GOAL_RATIO}


def run() -> list[dict]:
    return [bench_256gib_guest()]


def main() -> int:
    r = bench_256gib_guest()
    verdict = "ok" if r["ratio"] <= r["goal_ratio"] else "MISSED"
    print(f"{r['name']}: {r['seconds']:.3f} s, floor {r['baseline_seconds']:.3f} s, "
          f"ratio {r['ratio']:.1f} (goal <= {r['goal_ratio']:.0f}x) {verdict}")
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
