"""Hostile input to the newer commands, tried where a user meets it: ``xmig replay`` and
``xmig explain`` on shared event logs, ``xmig sweep`` on shared sweep files. Every bad
input must end in one line ``xmig: error: ...`` naming the file, exit 2, no traceback,
bounded time and memory, and never a faked verdict."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from migrate.events import log as el
from migrate import events as E
from migrate.codec import wire

from tests.xmig_process import ROOT, usage_error, xmig

BALLOON = ROOT / "examples" / "balloon.yaml"
TRACKED = 196704


@pytest.fixture(scope="module")
def recorded(recorded_run):
    """A pre-fix balloon run (it misses pages) recorded with one tracked GFN."""
    assert recorded_run.tracked == TRACKED
    return recorded_run.events, el.read_event_log(recorded_run.events)


def _write(path, header, events, raw_frames=()):
    with open(path, "wb") as f:
        raw = header if isinstance(header, bytes) else json.dumps(header).encode()
        f.write(el._FILE_HEAD.pack(el.MAGIC, el.FORMAT_VERSION, 0, len(raw)) + raw + b"\0" * el._pad(len(raw)))
        for fr in [wire.encode(e) for e in events] + list(raw_frames):
            st = zlib.compress(fr, 1)
            f.write(el._REC_HEAD.pack(len(st), len(fr), zlib.crc32(st)) + st + b"\0" * el._pad(len(st)))
        f.write(el._REC_HEAD.pack(0, 0, 0))
    return path


def _first(evs, cls):
    return next(i for i, e in enumerate(evs) if isinstance(e, cls))


def _edit(evs, cls, **kw):
    evs = list(evs)
    i = _first(evs, cls)
    evs[i] = dataclasses.replace(evs[i], **kw)
    return evs


def _batch_with_tracked(evs):
    return next(i for i, e in enumerate(evs) if isinstance(e, E.BatchSent) and TRACKED in e.pfns)


def _mutations():
    """name -> (header, events) builders over the recorded log, and the words the error names."""
    def nibbles(h, evs):
        evs = list(evs)
        i = _batch_with_tracked(evs)
        evs[i] = dataclasses.replace(evs[i], nibbles=np.full_like(evs[i].nibbles, 200))
        return h, evs

    def stats_str(h, evs):
        i = _first(evs, E.PassEnded)
        return h, _edit(evs, E.PassEnded, stats=dataclasses.replace(evs[i].stats, pages_sent="lots"))

    return {
        # a forged verdict: VERIFY says OK while the tracked page's final state says missing
        "verify_forged_ok": (lambda h, evs: (h, _edit(evs, E.VerifyDone, stats=E.VerifyStats(True, 0, 0, 0))),
                             ("inconsistent recording", "TrackedFinal")),
        "verify_ok_but_counts_missing": (lambda h, evs: (h, _edit(evs, E.VerifyDone, stats=E.VerifyStats(True, 5, 0, 0))),
                                         ("VerifyDone.stats.ok",)),
        "header_claims_fixed": (lambda h, evs: ({**h, "behaviour": "fixed"}, evs), ("header: behaviour",)),
        "runstarted_claims_fixed": (lambda h, evs: (h, _edit(evs, E.RunStarted, behaviour="fixed")),
                                    ("header: behaviour",)),
        "summary_claims_fixed": (lambda h, evs: (h, _edit(evs, E.RunSummary, behaviour="fixed")),
                                 ("RunSummary.behaviour",)),
        "events_reversed": (lambda h, evs: (h, list(reversed(evs))), ("after MigrationFinished",)),
        "two_runs": (lambda h, evs: (h, evs + evs), ("a second RunStarted",)),
        "no_run_started": (lambda h, evs: (h, evs[1:]), ("without the run's RunStarted",)),
        "header_tracked_strings": (lambda h, evs: ({**h, "tracked": ["abc"]}, evs), ("header: tracked",)),
        "header_tracked_2_64": (lambda h, evs: ({**h, "tracked": [2 ** 64]}, evs), ("header: tracked",)),
        "header_tracked_million": (lambda h, evs: ({**h, "tracked": list(range(10 ** 6))}, evs),
                                   ("header: tracked",)),
        "header_nested_deep": (lambda h, evs: (b"[" * 100000 + b"]" * 100000, evs), ("bad header",)),
        "nibble_out_of_range": (nibbles, ("BatchSent.nibbles",)),
        "roundstats_string": (stats_str, ("PassEnded.stats.pages_sent",)),
        "summary_totals_none": (lambda h, evs: (h, _edit(evs, E.RunSummary, totals=None)), ("RunSummary.totals",)),
        "memop_rc_string": (lambda h, evs: (h, _edit(evs, E.MemoryOp, rc="x")), ("MemoryOp.rc",)),
        "tracked_writes_short": (lambda h, evs: (h, _edit(evs, E.TrackedWrites, writes=np.empty(0, np.int64))),
                                 ("TrackedWrites",)),
        "populated_not_runs": (lambda h, evs: (h, _edit(evs, E.RunStarted, populated=np.arange(7))),
                               ("RunStarted.populated",)),
        "time_nan": (lambda h, evs: (h, _edit(evs, E.PhaseChanged, t=float("nan"))), ("finite time",)),
        # the verify's sets must hold what VerifyDone counts, as sorted disjoint runs
        "verify_sets_short": (lambda h, evs: (h, _edit(evs, E.VerifySets, missing=np.array([[0, 1]]))),
                              ("VerifySets.missing holds 1 GFNs",)),
        "verify_sets_overlap": (lambda h, evs: (h, _edit(evs, E.VerifySets, missing=np.array([[0, 5], [3, 9]]))),
                                ("VerifySets.missing", "sorted, disjoint")),
        "verify_sets_twice": (lambda h, evs: (h, evs[:_first(evs, E.VerifySets) + 1] + evs[_first(evs, E.VerifySets):]),
                              ("a second VerifySets",)),
    }


@pytest.mark.parametrize("name", sorted(_mutations()))
def test_edited_recording_is_refused_not_replayed(recorded, tmp_path, name):
    _path, log = recorded
    build, words = _mutations()[name]
    header, events = build(dict(log.header), list(log.events))
    bad = _write(tmp_path / f"{name}.events", header, events)
    p = xmig("replay", "--no-dashboard", bad, timeout=30)
    usage_error(p, str(bad), *words)


def test_explain_refuses_a_forged_verdict_and_a_deep_frame(recorded, tmp_path):
    _path, log = recorded
    forged = _write(tmp_path / "f.events", log.header,
                    _edit(log.events, E.VerifyDone, stats=E.VerifyStats(True, 0, 0, 0)))
    usage_error(xmig("explain", forged, "--gfn", TRACKED), "TrackedFinal")
    head = b'{"v":' + b"[" * 100000 + b"]" * 100000 + b',"b":[]}'
    frame = wire.MAGIC + struct.pack("<BBHI", wire.PROTOCOL_VERSION, 0, 0, len(head)) + head
    deep = _write(tmp_path / "d.events", log.header, log.events[:1], raw_frames=[frame])
    usage_error(xmig("explain", deep, "--gfn", TRACKED), "bad record")


def test_the_untouched_recording_still_replays_with_its_verdict(recorded):
    path, _log = recorded
    p = xmig("replay", "--no-dashboard", path)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "verify: FAILED, missing" in p.stdout


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_a_device_or_a_directory_is_refused_at_once(tmp_path):
    fifo = tmp_path / "run.events"
    os.mkfifo(fifo)
    for target, what in ((fifo, "a FIFO"), (Path("/dev/zero"), "a device"), (tmp_path, "a directory")):
        p = xmig("replay", "--no-dashboard", target, timeout=20)
        usage_error(p, str(target), what)


# ----------------------------------------------------------------------------- sweep files

def _sweep(tmp_path, text, name="s.yaml"):
    (tmp_path / "balloon.yaml").write_text(BALLOON.read_text())
    f = tmp_path / name
    f.write_text(text)
    return f


BOMB = ("base: balloon.yaml\naxes:\n  seed: [&a [1,2,3,4,5,6,7,8,9], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a], "
        "&c [*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c], &e [*d,*d,*d,*d,*d,*d,*d,*d,*d], "
        "&f [*e,*e,*e,*e,*e,*e,*e,*e,*e], [*f,*f,*f,*f,*f,*f,*f,*f,*f]]\n")


@pytest.mark.parametrize("text, words", [
    (BOMB, ("YAML values once aliases are expanded",)),
    ("base: balloon.yaml\naxes:\n  seed: {range: [0, 1000000000000]}\n", ("axes.seed", "more than a sweep can run")),
    ("base: /dev/zero\naxes:\n  seed: [1, 2]\n", ("base:", "a device node")),
])
def test_hostile_sweep_file_is_refused_in_one_line(tmp_path, text, words):
    f = _sweep(tmp_path, text)
    p = xmig("sweep", f, "--out", tmp_path / "r.csv", timeout=30)
    usage_error(p, str(f), *words)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_sweep_refuses_fifos_for_the_sweep_file_its_base_and_its_part_file(tmp_path):
    os.mkfifo(tmp_path / "fifo.yaml")
    usage_error(xmig("sweep", tmp_path / "fifo.yaml", "--out", tmp_path / "r.csv", timeout=20), "a FIFO")
    f = _sweep(tmp_path, "base: fifo.yaml\naxes:\n  seed: [1, 2]\n")
    usage_error(xmig("sweep", f, "--out", tmp_path / "r.csv", timeout=20), "base:", "a FIFO")
    f = _sweep(tmp_path, "base: balloon.yaml\naxes:\n  seed: [1]\n")
    os.mkfifo(tmp_path / "r.csv.part")
    usage_error(xmig("sweep", f, "--out", tmp_path / "r.csv", "--resume", timeout=20), "r.csv.part", "a FIFO")


def test_sweep_out_never_overwrites_the_base_scenario(tmp_path):
    f = _sweep(tmp_path, "base: balloon.yaml\naxes:\n  seed: [1]\n")
    base = tmp_path / "balloon.yaml"
    before = base.read_bytes()
    p = xmig("sweep", f, "--out", base, "--format", "csv")
    usage_error(p, "--out", "the base scenario")
    assert base.read_bytes() == before


def test_resume_skips_garbage_lines_and_names_bad_axes_in_a_part_file(tmp_path):
    f = _sweep(tmp_path, "base: balloon.yaml\naxes:\n  seed: [1]\n")
    out = tmp_path / "r.csv"
    part = tmp_path / "r.csv.part"
    part.write_bytes(b'{"xmig_sweep_part":1,"axes":5}\n')
    usage_error(xmig("sweep", f, "--out", out, "--resume"), "r.csv.part", "axes")
    part.write_bytes(b'garbage\x00\xff{{{\n5\n[1]\n')
    p = xmig("sweep", f, "--out", out, "--resume")
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert out.read_text().count("\n") == 2      # header and the one run
