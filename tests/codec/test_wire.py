"""The wire codec gives the peer exactly what was sent: every message type, arrays as blobs."""

from __future__ import annotations

import dataclasses
import struct

import numpy as np
import pytest

from hypervisor.abi import (AddToPhysmap, DecreaseReservation, DomainLayout, HypercallResult, MemoryWrites,
                            PFInfo, PopulatePhysmap, RemoveFromPhysmap, SetTypedEntry, ShadowOp, ShadowStats,
                            XenError, EINVAL, ENOMEM)
from migrate import events as ev
from migrate.codec import wire
from migrate.toolstack.control import SourceInfo


def same(a, b) -> bool:
    """Deep equality that compares numpy arrays by dtype, shape and values."""
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, np.generic):
        return type(a) is type(b) and a == b
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(same(getattr(a, f.name), getattr(b, f.name))
                                           for f in dataclasses.fields(a))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return isinstance(b, float) and (a == b or (a != a and b != b))
    return type(a) is type(b) and a == b


G = np.array([5, 7, 0x10_0000, 0xFFFF_FFFF_FF], dtype=np.int64)
T = np.array([1, 2**64 - 1, 0, 12345], dtype=np.uint64)
RUNS = np.array([[0, 0xA0], [0x100, 0x4000]], dtype=np.int64)
STATS = ev.RoundStats(iteration=2, phase="live", start_s=1.25, end_s=3.5, dirty_count=77, pfns_walked=1024,
                      pages_sent=1000, xtab_sent=24, bytes=4_100_000, batches=1, balloon_out=512, balloon_in=0)

MESSAGES = {
    "MemoryWrites": MemoryWrites(t=1.01, gfns=G, tokens=T),
    "DecreaseReservation": DecreaseReservation(t=3.0, gfns=G),
    "PopulatePhysmap": PopulatePhysmap(t=10.0, gfns=G, pod=True),
    "AddToPhysmap": AddToPhysmap(t=0.5, src=1, dst=2),
    "RemoveFromPhysmap": RemoveFromPhysmap(t=0.5, gfn=0xFEE00),
    "SetTypedEntry": SetTypedEntry(t=0.25, gfn=0xF0000, p2m_type=5),
    "HypercallResult": HypercallResult(rc=-22, done=G[:2]),
    "ShadowStats": ShadowStats(fault_count=3, dirty_count=0xFFFFFFFF),
    "DomainLayout": DomainLayout(ram_gfns=np.arange(100_000, dtype=np.int64), ram_tokens=np.arange(100_000, dtype=np.uint64),
                                 pod_gfns=G, pod_cache_pages=7, mmio_gfns=np.empty(0, dtype=np.int64)),
    "SourceInfo": SourceInfo(p2m_size=0x40000, guest_pages=262144, populated=RUNS, ballooned=RUNS[:0], ram_pages=9),
    "RunStarted": ev.RunStarted(t=1.0, scenario="balloon", seed=1, behaviour="pre-fix", policy="xen",
                                policy_params={"max_iterations": 5, "dirty_threshold": 50}, guest_pages=262144,
                                populated=RUNS, ballooned=RUNS[:1]),
    "SaveSetup": ev.SaveSetup(t=1.0, p2m_size=0x40000),
    "PhaseChanged": ev.PhaseChanged(t=2.0, phase="suspended", detail="Domain now suspended"),
    "PassStarted": ev.PassStarted(t=2.0, iteration=1, phase="live", entries=5, dirty_count=5, pfns=None),
    "PassStarted+pfns": ev.PassStarted(t=2.0, iteration=2, phase="live", entries=4, dirty_count=4, pfns=G),
    "BatchSent": ev.BatchSent(t=2.5, iteration=1, pfns=G, nibbles=np.array([0, 15, 13, 14], dtype=np.uint8),
                              walked=4, entries=4, bytes=8192),
    "PassEnded": ev.PassEnded(t=3.5, stats=STATS),
    "CleanDone": ev.CleanDone(t=3.5, iteration=1, op="CLEAN", final=False, dirty_count=9, fault_count=1, pages=4),
    "MemoryOp": ev.MemoryOp(t=3.0, op="decrease_reservation", nr=512, rc=512, gfns=G),
    "BalloonTarget": ev.BalloonTarget(t=3.0, current_pages=262144, target_pages=196608, previous_pages=262144,
                                      scheduled_at=3.0, reason="schedule"),
    "BalloonMoved": ev.BalloonMoved(t=3.0, current_pages=261632, target_pages=196608, direction="inflate",
                                    pages=512, batches=1),
    "BalloonReached": ev.BalloonReached(t=3.5, current_pages=196608, target_pages=196608),
    "BalloonStalled": ev.BalloonStalled(t=3.0, current_pages=1, target_pages=2, op="populate_physmap",
                                        requested=1, done=0, rc=None, reason="host out of memory"),
    "CountersSampled": ev.CountersSampled(t=4.0, counters={"marks_dirty": 10, "logdirty_nodes": 3}),
    "VerifyDone": ev.VerifyDone(t=9.0, stats=ev.VerifyStats(ok=False, missing_pages=1, stale_pages=2, extra_pages=0,
                                                            missing_sample=[5], stale_sample=[6, 7])),
    "MigrationFinished": ev.MigrationFinished(t=9.0, outcome="aborted", message="hypervisor did not answer within 5 s"),
}


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_every_message_type_round_trips(name):
    msg = MESSAGES[name]
    assert same(wire.roundtrip(msg), msg)


def test_hypervisor_and_guest_events_round_trip():
    from guest.events import BalloonDirection, BalloonPagesMoved, BalloonStall
    from hypervisor.abi import (DomainStateChanged, LogDirtyOp, LogDirtyOpServed, MemoryOpKind, MemoryOpServed,
                                SchedOp, TrackedWritesSeen)

    for msg in (MemoryOpServed(t=1.5, kind=MemoryOpKind.POPULATE_PHYSMAP, nr=512, rc=512, gfns=G),
                DomainStateChanged(t=1.5, kind=SchedOp.SUSPEND),
                LogDirtyOpServed(t=2.0, kind=LogDirtyOp.CLEAN, pages=1 << 20, rc=77),
                TrackedWritesSeen(t=2.5, gfns=G[:3], writes=np.ones(3, np.int64), first_s=np.zeros(3),
                                  last_s=np.ones(3), logged_s=np.array([0.5, 1.0, 0.75])),
                BalloonPagesMoved(t=3.0, current_pages=200000, target_pages=100000,
                                  direction=BalloonDirection.INFLATE, pages=512, batches=2),
                BalloonStall(t=3.5, current_pages=1, target_pages=2, op=MemoryOpKind.POPULATE_PHYSMAP,
                             requested=5, done=1, rc=None, reason="no ballooned pages left")):
        assert same(wire.roundtrip(msg), msg)


def test_shadow_op_result_carries_the_bitmap_as_pfns():
    from hypervisor.abi import ShadowOpResult
    from hypervisor.logdirty import DirtyBitmap

    pfns = np.array([0, 3, 64, 32767, 32768, 0x3FFFF], dtype=np.int64)
    res = ShadowOpResult(pages=0x40000, stats=ShadowStats(fault_count=1, dirty_count=6),
                         bitmap=DirtyBitmap.from_pfns(0x40000, pfns))
    got = wire.roundtrip(res)
    assert type(got) is ShadowOpResult and got.pages == 0x40000 and got.stats == res.stats
    assert np.array_equal(got.bitmap.pfns(), pfns) and got.bitmap.count() == 6 and got.bitmap.pages == 0x40000
    assert got.bitmap.to_bytes() == res.bitmap.to_bytes()[: len(got.bitmap.to_bytes())]
    assert wire.roundtrip(ShadowOpResult(pages=0, stats=res.stats, bitmap=None)).bitmap is None


def test_xen_error_keeps_errno_and_message():
    err = wire.roundtrip(XenError(ENOMEM, "log-dirty node pool exhausted"))
    assert isinstance(err, XenError) and err.errno == ENOMEM
    assert str(err) == str(XenError(ENOMEM, "log-dirty node pool exhausted"))
    assert wire.roundtrip({"x": XenError(EINVAL, "a: b")})["x"].errno == EINVAL


def test_enums_tuples_and_odd_dicts_survive():
    msg = {"op": ShadowOp.CLEAN, "pfinfo": PFInfo.XTAB, "pair": (np.arange(3), np.zeros(2, np.int32)),
           "intkeys": {1: "a", 2: "b"}, "dollar": {"$a": 1}, "empty": {}, "big": 2**64 - 1, "neg": -(2**63),
           "f": 0.1 + 0.2, "inf": float("inf"), "bytes": b"\x00\x01", "scalar": np.uint32(7)}
    got = wire.roundtrip(msg)
    assert same(got, msg)
    assert got["op"] is ShadowOp.CLEAN and got["pfinfo"] is PFInfo.XTAB


def test_arrays_travel_as_binary_blobs_not_json_lists():
    pfns = np.random.default_rng(1).integers(0, 2**40, size=1024, dtype=np.int64)
    frame = wire.encode({"pfns": pfns})
    assert len(frame) < pfns.nbytes + 200
    assert pfns.tobytes() in frame
    assert same(wire.decode(frame)["pfns"], pfns)


def test_contiguous_pfn_runs_are_sent_compactly():
    pfns = np.concatenate([np.arange(0, 200_000), np.arange(300_000, 400_000)]).astype(np.int64)
    frame = wire.encode(pfns)
    assert len(frame) < 1000
    assert same(wire.decode(frame), pfns)
    shuffled = pfns[::-1].copy()          # not increasing: sent raw
    assert same(wire.roundtrip(shuffled), shuffled)


def test_64_bit_integers_that_fit_in_32_bits_travel_in_4_bytes_each():
    rng = np.random.default_rng(2)
    gfns = rng.integers(0, 1 << 32, size=4096, dtype=np.int64)            # GFNs of writes: random
    frame = wire.encode({"g": gfns, "u": gfns.astype(np.uint64), "t": np.arange(4096, dtype=np.uint64) << 40})
    assert len(frame) < 4096 * (4 + 4 + 8) + 400
    back = wire.decode(frame)
    assert same(back["g"], gfns) and same(back["u"], gfns.astype(np.uint64))
    assert same(back["t"], np.arange(4096, dtype=np.uint64) << 40)
    for wide in (gfns - (1 << 31) - 5, gfns + (1 << 32)):               # negative, or past 32 bits: 8 bytes
        assert len(wire.encode(wide)) > wide.nbytes and same(wire.roundtrip(wide), wide)
    two_d = gfns.reshape(64, 64)
    assert same(wire.roundtrip(two_d), two_d)


def test_non_native_and_2d_arrays_round_trip():
    a = np.arange(12, dtype=">u4").reshape(3, 4)
    got = wire.roundtrip(a)
    assert got.shape == (3, 4) and np.array_equal(got, a)
    assert wire.roundtrip(np.empty((0, 2), dtype=np.int64)).shape == (0, 2)


def test_decoded_arrays_are_writable():
    a = wire.roundtrip(np.arange(5))
    a[0] = 9
    assert a[0] == 9


def test_every_frame_carries_the_protocol_version():
    frame = bytearray(wire.encode({"m": "max_gpfn"}))
    assert frame[:4] == b"XMIG" and frame[4] == wire.PROTOCOL_VERSION
    frame[4] = wire.PROTOCOL_VERSION + 1
    with pytest.raises(wire.WireError, match="protocol v"):
        wire.decode(bytes(frame))


@pytest.mark.parametrize("frame", [b"", b"XMIG", b"NOPE" + bytes(8), struct.pack("<4sBBHI", b"XMIG", 1, 0, 0, 99) + b"{}"])
def test_malformed_frames_are_refused(frame):
    with pytest.raises(wire.WireError):
        wire.decode(frame)


def _frame(header: bytes) -> bytes:
    return struct.pack("<4sBBHI", b"XMIG", wire.PROTOCOL_VERSION, 0, 0, len(header)) + header


@pytest.mark.parametrize("tree", [b'{"$c":"os.system","f":{}}', b'{"$c":"subprocess.Popen","f":{}}',
                                  b'{"$e":"builtins.object","v":1}', b'{"$c":"migrate.wire.encode","f":{}}',
                                  b'{"$zz":1}'])
def test_foreign_types_are_never_built_from_a_frame(tree):
    with pytest.raises(wire.WireError):
        wire.decode(_frame(b'{"v":' + tree + b',"b":[]}'))


def test_only_project_values_can_be_sent():
    with pytest.raises(TypeError):
        wire.encode(object())
    with pytest.raises(TypeError):
        wire.encode(np.array([object()]))


def test_a_frame_naming_a_module_never_imports_it():
    # The attack: a frame naming migrate.__main__ made the receiver import it (and run
    # the CLI). Only registered message types decode; nothing is ever imported.
    import sys

    for name in ("migrate.__main__", "tests.cli.test_cli", "guest.balloon._Step"):
        mod = name if name.count(".") == 1 else name.rsplit(".", 1)[0]
        before = mod in sys.modules
        for tag in ("$c", "$e"):
            with pytest.raises(wire.WireError, match="unknown type"):
                wire.decode(_frame(b'{"v":{"' + tag.encode() + b'":"' + name.encode() + b'.X","f":{},"v":1},"b":[]}'))
        assert (mod in sys.modules) == before, f"decoding imported {mod}"


def _array_frame(meta: bytes, blob: bytes) -> bytes:
    head = b'{"v":' + meta + b',"b":[[0,' + str(len(blob)).encode() + b']]}'
    frame = _frame(head)
    return frame + bytes((-len(frame)) % 8) + blob


@pytest.mark.parametrize("meta,blob", [
    # 160 bytes that claimed 4 GB: one run of 2**29 int64 PFNs.
    (b'{"$a":0,"dt":"<i8","sh":[536870912],"runs":true}', np.array([[0, 1 << 29]], dtype="<i8").tobytes()),
    # the shape disagreeing with the runs
    (b'{"$a":0,"dt":"<i8","sh":[536870912],"runs":true}', np.array([[0, 10]], dtype="<i8").tobytes()),
    # runs out of order, or empty, or backwards
    (b'{"$a":0,"dt":"<i8","sh":[20],"runs":true}', np.array([[10, 20], [0, 10]], dtype="<i8").tobytes()),
    (b'{"$a":0,"dt":"<i8","sh":[0],"runs":true}', np.array([[5, 5]], dtype="<i8").tobytes()),
    # a plain array whose shape claims more than its blob
    (b'{"$a":0,"dt":"<i8","sh":[1073741824]}', bytes(8)),
    # dtypes the wire never carries
    (b'{"$a":0,"dt":"|V1073741824","sh":[1]}', bytes(8)),
    (b'{"$a":0,"dt":"|O","sh":[1]}', bytes(8)),
    # a narrowed array whose blob does not match, or that would widen into a float or shrink
    (b'{"$a":0,"dt":"<i8","sh":[1073741824],"nw":"<u4"}', bytes(8)),
    (b'{"$a":0,"dt":"<f8","sh":[2],"nw":"<u4"}', bytes(8)),
    (b'{"$a":0,"dt":"<i4","sh":[1],"nw":"<i8"}', bytes(8)),
    # a bitmap whose PFNs lie outside its pages
    (b'{"$bm":4,"pfns":{"$a":0,"dt":"<i8","sh":[1]}}', np.array([9], dtype="<i8").tobytes()),
])
def test_frames_never_decode_to_more_than_their_bytes_justify(meta, blob):
    import resource

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(wire.WireError):
        wire.decode(_array_frame(meta, blob))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 100_000   # KiB: nothing big allocated


def test_long_runs_travel_in_pieces_and_decode_to_the_same_array():
    a = np.concatenate([np.arange(0, 300_000), np.arange(400_000, 410_000)]).astype(np.int64)
    frame = wire.encode(a)
    assert len(frame) < 1024                       # still runs, cut at MAX_RUN
    assert np.array_equal(wire.decode(frame), a)


def test_deep_nesting_is_refused_not_a_recursion_error():
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(wire.WireError):
        wire.decode(_frame(b'{"v":' + deep + b',"b":[]}'))
    with pytest.raises(wire.WireError, match="deeper"):
        wire.decode(_frame(b'{"v":' + b"[" * 200 + b"]" * 200 + b',"b":[]}'))


def test_too_many_arrays_in_one_frame_are_refused(monkeypatch):
    monkeypatch.setattr(wire, "MAX_DECODED_BYTES", 1 << 16)
    ok = wire.encode([np.zeros(4096, dtype=np.int64)])
    wire.decode(ok)
    with pytest.raises(wire.FrameTooLarge):
        wire.decode(wire.encode([np.zeros(4096, dtype=np.int64)] * 3))


def test_a_guest_layout_travels_as_runs_and_a_seed_not_per_page_arrays():
    from guest import Guest, GuestConfig

    lay = Guest(GuestConfig.model_validate({"memory": "1GiB"}), seed=3).layout()
    frame = wire.encode(lay)
    assert len(frame) < 4096                      # 2^18 pages: no per-page GFN or token array
    back = wire.decode(frame)
    assert np.array_equal(np.asarray(back.ram_gfns), np.asarray(lay.ram_gfns))
    assert np.array_equal(np.asarray(back.ram_tokens), np.asarray(lay.ram_tokens))
