"""CHECKPOINT records: the checkpointed (Remus) stream, its restore, and Xen's verifier.

A restore is told its stream is checkpointed (``xc_domain_restore``'s ``stream_type``);
a plain one refuses CHECKPOINT (xg_sr_restore.c ``handle_checkpoint``). After the first
CHECKPOINT the restore holds every record until the next one (``buffer_all_records``)
and drops what it holds when the stream ends (``remus_failover``).

Xen's own checker, ``verify-stream-v2`` from Debian's ``xen-utils-4.17``, must accept
the streams xmig writes, plain and checkpointed. The ``xen_verifier`` fixture fetches
the package's files into a cache (``apt-get download`` + ``dpkg -x``, never an
install) when they are missing, and fails with what to do when it cannot.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from hypervisor.abi import PFInfo
from migrate.run.runner import RunOptions, run_scenario
from migrate.run.scenario import parse_scenario
from migrate.stream.format import RecType, StreamError
from migrate.stream.parser import StreamParser
from migrate.stream.sinks import CallbackSink
from migrate.stream.writer import StreamWriter
from migrate.toolstack.restore import Restorer
from tests.toolstack.test_checkpoint import SMALL
from tests.toolstack.test_restore import empty_dest

PACKAGE = "xen-utils-4.17"
#: Where the package's files are kept between sessions (XMIG_XEN_UTILS overrides).
CACHE = Path(os.environ.get("XMIG_XEN_UTILS", Path.home() / ".cache" / "xmig" / PACKAGE))
VERIFIER = "usr/lib/xen-4.17/bin/verify-stream-v2"
PYLIB = "usr/lib/xen-4.17/lib/python"


def _stream(*, checkpoints: int) -> bytes:
    """Headers, pages 1-2, then ``checkpoints`` CHECKPOINTs each after one more page
    (3, 4, ...), then page 100 and END: page 100 is after the last CHECKPOINT."""
    chunks: list[bytes] = []
    w = StreamWriter(CallbackSink(chunks.append))
    w.write_image_header()
    w.write_domain_header()
    w.write_static_data()
    w.write_page_data([1, 2], [PFInfo.NOTAB, PFInfo.NOTAB], [11, 12])
    w.write_end_of_checkpoint()
    for k in range(checkpoints):
        w.write_checkpoint()
        w.write_page_data([3 + k], [PFInfo.NOTAB], [13 + k])
        w.write_end_of_checkpoint()
    w.write_end()
    w.close()
    return b"".join(chunks)


def test_a_plain_stream_refuses_a_checkpoint_record():
    p = StreamParser()
    with pytest.raises(StreamError, match="found checkpoint in a non-checkpointed stream"):
        p.feed(_stream(checkpoints=1))
    r = Restorer(empty_dest())
    with pytest.raises(StreamError):
        r.feed(_stream(checkpoints=1))


def test_a_checkpointed_stream_parses_with_its_records_repeated():
    p = StreamParser(checkpointed=True)
    recs = p.feed(_stream(checkpoints=3))
    p.close()
    names = [r.name for r in recs]
    assert names.count("CHECKPOINT") == 3 and names.count("X86_TSC_INFO") == 4 and names[-1] == "END"


def test_the_backup_applies_each_checkpoint_at_its_record_and_drops_the_rest():
    hv = empty_dest()
    r = Restorer(hv, checkpointed=True)
    res = r.feed(_stream(checkpoints=2)) and r.finish()
    assert res.ok and res.checkpoints == 2
    # Pages 1, 2 (live phase) and 3 (before the second CHECKPOINT) are applied; page 4
    # came after the last CHECKPOINT and was dropped with its tail records.
    gfns, tokens = hv.snapshot(0, 16)
    assert np.asarray(gfns).tolist() == [1, 2, 3] and np.asarray(tokens).tolist() == [11, 12, 13]
    assert res.records_discarded == 4          # PAGE_DATA, X86_TSC_INFO, HVM_CONTEXT, HVM_PARAMS
    assert res.as_dict()["records_discarded"] == 4


def test_a_broken_off_checkpointed_stream_fails_over_to_the_last_checkpoint():
    data = _stream(checkpoints=2)
    cut = data[: len(data) - 8 - 1]            # END lost and a byte of the record before it
    hv = empty_dest()
    r = Restorer(hv, checkpointed=True)
    r.feed(cut)
    res = r.finish()
    assert res.ok and res.checkpoints == 2
    assert np.asarray(hv.snapshot(0, 16)[0]).tolist() == [1, 2, 3]


def test_records_given_structured_are_held_alike():
    """The in-process path (no stream bytes) holds and applies the same records."""
    hv = empty_dest()
    r = Restorer(hv, checkpointed=True)
    parsed = StreamParser(checkpointed=True).feed(_stream(checkpoints=2))
    for rec in parsed:
        r.apply(rec)
    assert r.finish().ok
    assert np.asarray(hv.snapshot(0, 16)[0]).tolist() == [1, 2, 3]


def test_a_plain_restore_result_has_no_checkpoint_fields():
    assert "checkpoints" not in Restorer(empty_dest()).result.as_dict()


# ------------------------------------------------------------------ Xen's verifier

def _extract(deb: Path, into: Path) -> None:
    tmp = Path(tempfile.mkdtemp(dir=into.parent))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True, capture_output=True)
    if into.exists():
        shutil.rmtree(into)
    tmp.rename(into)


def _download() -> subprocess.CompletedProcess:
    """``apt-get download`` the package into the cache's folder; on a fresh machine
    whose package lists are empty, ``apt-get update`` first (CI runs as root)."""
    got = subprocess.run(["apt-get", "download", PACKAGE], cwd=CACHE.parent, capture_output=True, text=True)
    if got.returncode != 0 and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
        got = subprocess.run(["apt-get", "download", PACKAGE], cwd=CACHE.parent, capture_output=True, text=True)
    return got


@pytest.fixture(scope="session")
def xen_verifier() -> tuple[Path, Path]:
    """(verify-stream-v2, its PYTHONPATH), from the cache, else from the package fetched
    with ``apt-get download`` and unpacked with ``dpkg-deb -x`` (no install)."""
    if not (CACHE / VERIFIER).exists():
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        deb = next(iter(sorted(glob.glob(str(CACHE.parent / f"{PACKAGE}_*.deb")))), None)
        if deb is None:
            got = _download()
            deb = next(iter(sorted(glob.glob(str(CACHE.parent / f"{PACKAGE}_*.deb")))), None)
            if deb is None:
                pytest.fail(f"Xen's stream verifier is not in {CACHE} and `apt-get download {PACKAGE}` failed "
                            f"({got.stderr.strip()[-300:]}); fetch the .deb into {CACHE.parent} (or point "
                            "XMIG_XEN_UTILS at a directory holding the unpacked package)")
        _extract(Path(deb), CACHE)
    return CACHE / VERIFIER, CACHE / PYLIB


def _xen_verify(verifier: tuple[Path, Path], stream: Path) -> subprocess.CompletedProcess:
    script, pylib = verifier
    env = {**os.environ, "PYTHONPATH": str(pylib)}
    return subprocess.run([sys.executable, str(script), "-i", str(stream), "-f", "libxc", "-v"],
                          env=env, capture_output=True, text=True, timeout=300)


def _write(tmp_path: Path, checkpoint: dict | None) -> Path:
    mig = {"start": "1s"} if checkpoint is None else {"start": "1s", "checkpoint": checkpoint}
    sc = parse_scenario({**SMALL, "migration": {**mig, "xen_behaviour": "pre-fix"}})
    path = tmp_path / ("remus" if checkpoint else "plain")
    result = asyncio.run(run_scenario(sc, RunOptions(stream=str(path))))
    assert result.stream["sha256"]
    return path


def test_xens_verifier_accepts_a_plain_and_a_checkpointed_stream(tmp_path, xen_verifier):
    """verify-stream-v2 is not told a stream is checkpointed (its libxc format has no
    flag for it: the stream type is the toolstack's knowledge): it accepts empty
    CHECKPOINT records anywhere and reads on to END."""
    plain = _xen_verify(xen_verifier, _write(tmp_path, None))
    assert plain.returncode == 0, plain.stderr
    assert "Checkpoint" not in plain.stdout and plain.stdout.rstrip().endswith("End, length 0")
    remus = _xen_verify(xen_verifier, _write(tmp_path, {"interval": "200ms", "failover": "4s"}))
    assert remus.returncode == 0, remus.stderr
    out = remus.stdout
    assert out.count("Libxc Record: Checkpoint, length 0") >= 5
    # Each checkpoint's tail records, then perhaps those of one still in flight.
    assert out.count("Libxc Record: TSC info") - out.count("Libxc Record: Checkpoint") in (0, 1)
    assert out.rstrip().endswith("End, length 0")


def test_xens_verifier_refuses_a_corrupt_checkpoint_record(tmp_path, xen_verifier):
    """The check has teeth: a CHECKPOINT with a body is refused."""
    data = bytearray(_stream(checkpoints=1))
    rec = RecType.CHECKPOINT.to_bytes(4, "little") + bytes(4)
    at = data.index(rec)
    data[at + 4:at + 8] = (8).to_bytes(4, "little")
    data[at + 8:at + 8] = bytes(8)
    path = tmp_path / "bad"
    path.write_bytes(bytes(data))
    res = _xen_verify(xen_verifier, path)
    assert res.returncode == 1 and "Checkpoint record with non-zero length" in res.stderr
