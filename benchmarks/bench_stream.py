"""Stream writer throughput: PAGE_DATA written to a file vs a plain memory copy.

Issue 4's benchmark: MiB/s of PAGE_DATA (tokens expanded to 4 KiB pages, batches of
1024 PFNs, as the engine calls ``write_page_data``) written through ``FileSink`` into
a temporary directory, against ``np.copyto`` of the same number of bytes measured in
the same run. The ratio writer / copy should be at least 0.3. For context it also
measures the kernel's own ceiling for that path: ``os.write`` of the same number of
bytes from one 4 MiB buffer (no page expansion at all) into a file in the same folder.

Each measurement is the best of ``repeats`` runs after one warm-up run (the first
touch of fresh memory in a VM costs far more than the steady state); the file is
removed between runs so every run allocates page cache as a real save does.

Run: ``python benchmarks/bench_stream.py [MiB]``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from migrate.stream.sinks import FileSink, NullSink  # noqa: E402
from migrate.stream.writer import StreamWriter  # noqa: E402

GOAL_RATIO = 0.3


def _write_stream(path: str | None, pfns, nibbles, tokens, batch: int = 1024) -> tuple[float, int]:
    sink = NullSink() if path is None else FileSink(path)
    t0 = time.perf_counter()
    w = StreamWriter(sink)
    w.write_image_header()
    w.write_domain_header()
    w.write_static_data()
    for s in range(0, pfns.size, batch):
        w.write_page_data(pfns[s:s + batch], nibbles[s:s + batch], tokens[s:s + batch])
    w.write_end_of_checkpoint()
    w.write_end()
    w.close()
    return time.perf_counter() - t0, w.page_data_bytes


def _raw_write(path: str, nbytes: int) -> float:
    """os.write of ``nbytes`` from one 4 MiB buffer: the file path's own ceiling."""
    buf = np.ones(4 << 20, dtype=np.uint8)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    t0 = time.perf_counter()
    try:
        for _ in range(nbytes // buf.size):
            os.write(fd, buf)
    finally:
        os.close(fd)
    dt = time.perf_counter() - t0
    os.unlink(path)
    return dt


def run(mib: int = 256, repeats: int = 5) -> list[dict]:
    pages = (mib << 20) // 4096
    rng = np.random.default_rng(0)
    pfns = np.arange(pages, dtype=np.int64)
    nibbles = np.zeros(pages, dtype=np.uint8)
    tokens = rng.integers(1, 1 << 63, pages, dtype=np.uint64)
    nbytes = pages * 4096

    with tempfile.TemporaryDirectory(prefix="xmig-bench-") as d:
        path = os.path.join(d, "bench.xmig")
        times = []
        for i in range(repeats + 1):
            dt, pd_bytes = _write_stream(path, pfns, nibbles, tokens)
            os.unlink(path)
            if i:
                times.append(dt)
        raw_times = []
        for i in range(repeats + 1):
            dt = _raw_write(os.path.join(d, "raw.bin"), pages * 4096)
            if i:
                raw_times.append(dt)
    writer_s = min(times)
    raw_s = min(raw_times)

    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.zeros(nbytes, dtype=np.uint8)
    copy_times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        if i:
            copy_times.append(time.perf_counter() - t0)
    copy_s = min(copy_times)
    del src, dst

    null_s, _ = _write_stream(None, pfns, nibbles, tokens)

    writer_mibs = pd_bytes / writer_s / (1 << 20)
    copy_mibs = nbytes / copy_s / (1 << 20)
    return [
        {"name": "stream_writer_file", "mib": mib, "seconds": writer_s, "mib_per_s": writer_mibs},
        {"name": "memcpy_np_copyto", "mib": mib, "seconds": copy_s, "mib_per_s": copy_mibs},
        {"name": "os_write_ceiling", "mib": mib, "seconds": raw_s, "mib_per_s": nbytes / raw_s / (1 << 20)},
        {"name": "stream_writer_null_sink", "mib": mib, "seconds": null_s,
         "mib_per_s": pd_bytes / null_s / (1 << 20)},
        {"name": "ratio_writer_vs_memcpy", "value": writer_mibs / copy_mibs, "goal": GOAL_RATIO,
         "ok": writer_mibs / copy_mibs >= GOAL_RATIO},
    ]


def main(argv: list[str]) -> int:
    mib = int(argv[1]) if len(argv) > 1 else 256
    rows = run(mib)
    for r in rows:
        if "mib_per_s" in r:
            print(f"{r['name']:<26} {r['mib']:>5} MiB  {r['seconds'] * 1e3:9.1f} ms  {r['mib_per_s']:10.0f} MiB/s")
        else:
            print(f"{r['name']:<26} {r['value']:.3f} (goal >= {r['goal']}): {'ok' if r['ok'] else 'BELOW GOAL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
