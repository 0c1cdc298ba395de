"""Event logs read in bounded memory, tried with ``xmig replay``: a small file whose
records expand to gigabytes ends in one line (exit 2) naming the record's offset, never
a MemoryError; a length that cannot be right inside a complete log is named as damage
at its offset, while a log really cut short still replays what it holds."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from migrate import events as E
from migrate.codec import wire
from migrate.events import log as el
from tests.xmig_process import ROOT, usage_error as assert_usage_error, xmig

BALLOON = ROOT / "examples" / "balloon.yaml"

ROOT = Path(__file__).resolve().parents[2]


def _bomb(path: Path, elements: int, records: int) -> Path:
    """``records`` copies of one MemoryOp whose GFN array is ``elements`` long but
    travels as a few [start, end) runs: a few KiB on disk, ``8 * elements`` bytes each
    once read."""
    frame = wire.encode(E.MemoryOp(t=0.0, op="populate_physmap", nr=1, rc=1,
                                   gfns=np.arange(elements, dtype=np.int64)))
    stored = zlib.compress(frame, 9)
    raw = json.dumps({"format": "xmig-events"}).encode()
    with open(path, "wb") as f:
        f.write(el._FILE_HEAD.pack(el.MAGIC, el.FORMAT_VERSION, 0, len(raw)) + raw + b"\0" * el._pad(len(raw)))
        for _ in range(records):
            f.write(el._REC_HEAD.pack(len(stored), len(frame), zlib.crc32(stored)) + stored
                    + b"\0" * el._pad(len(stored)))
        f.write(el._REC_HEAD.pack(0, 0, 0))
    return path


def _limited(limit: int):
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


def test_records_expanding_past_what_the_process_may_use_are_one_line_not_a_memoryerror(tmp_path):
    log = _bomb(tmp_path / "bomb.events", 1 << 22, 40)        # 40 x 32 MiB from ~16 KiB
    assert log.stat().st_size < 64 << 10
    p = subprocess.run([sys.executable, "-m", "migrate", "replay", str(log), "--no-dashboard"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT, stdin=subprocess.DEVNULL,
                       preexec_fn=_limited(1 << 30),
                       env={"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                            "PYTHONPATH": str(ROOT)})
    assert_usage_error(p, "bomb.events: byte ", "MiB in memory", "more than this machine allows")
    assert "MemoryError" not in p.stderr


def test_the_budget_counts_declared_sizes_before_expanding(tmp_path):
    log = _bomb(tmp_path / "bomb.events", 1 << 20, 8)         # 8 MiB per record
    with pytest.raises(el.EventLogError, match=r"byte \d+: the events read so far expand to"):
        header, records = el.iter_event_log(log, budget=20 << 20)
        for _ in records:
            pass
    header, records = el.iter_event_log(log, budget=200 << 20)
    assert sum(ev is not None for _off, ev in records) == 8


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bounds")
    path = d / "run.events"
    p = xmig("run", "-g", BALLOON, "--record", path, "--no-dashboard")
    assert p.returncode == 0, p.stderr
    return path


def _offsets(path: Path) -> list[int]:
    _header, records = el.iter_event_log(path)
    return [off for off, ev in records if ev is not None]


@pytest.mark.parametrize("length", [0xFFFFFFFF, "past-end"])
def test_a_damaged_length_inside_a_complete_log_is_damage_at_its_offset(recorded, tmp_path, length):
    data = bytearray(recorded.read_bytes())
    off = _offsets(recorded)[3]
    n = 0xFFFFFFFF if length != "past-end" else len(data) - off          # under the cap, past the end
    struct.pack_into("<I", data, off, n)
    bad = tmp_path / "damaged.events"
    bad.write_bytes(bytes(data))
    for cmd in (["replay", bad, "--no-dashboard"], ["explain", bad, "--gfn", "0x1000"]):
        res = xmig(*cmd)
        assert_usage_error(res, f"damaged.events: byte {off}: damaged record header")
        assert "cut short" not in res.stderr


def test_a_log_really_cut_short_still_replays_what_it_holds(recorded, tmp_path):
    data = recorded.read_bytes()
    off = _offsets(recorded)[-2]
    cut = tmp_path / "cut.events"
    cut.write_bytes(data[:off + 20])                       # inside a record, no end record
    p = xmig("explain", cut, "--gfn", "0x1000")
    assert p.returncode == 0, p.stderr
    assert "the recording was cut short" in p.stdout
