"""The event log (--record): what is read back is what was published live."""

from __future__ import annotations

import asyncio
import dataclasses
import struct
import zlib

import numpy as np
import pytest

from migrate.codec import wire
from migrate.events.log import (MAX_ARRAY_ELEMENTS, EventLogError, EventRecorder, read_event_log,
                              same_value)
from migrate.events import EventBus, MemoryOp, PassEnded, RunStarted
from migrate.run.runner import RunOptions, result_from_events, run_scenario
from migrate.run.scenario import load_scenario

HEADER = {"scenario": "balloon", "seed": 1, "behaviour": "pre-fix", "policy": "xen"}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """balloon.yaml, pre-fix, recorded while a second listener keeps the live events."""
    path = tmp_path_factory.mktemp("log") / "balloon.events"
    sc = load_scenario("examples/balloon.yaml")
    bus, live = EventBus(), []
    bus.subscribe(live.append)
    rec = EventRecorder(path, {"scenario_text": open("examples/balloon.yaml").read()})
    bus.subscribe(rec)
    result = asyncio.run(run_scenario(sc, RunOptions(behaviour="pre-fix"), bus=bus))
    rec.close()
    return path, live, result


def test_recorded_run_reads_back_as_exactly_the_live_events(recorded):
    path, live, _ = recorded
    log = read_event_log(path)
    assert log.complete
    assert len(log.events) == len(live) > 100
    for a, b in zip(live, log.events):
        assert type(a) is type(b)
        assert same_value(a, b), a.kind
    assert log.header["scenario"] == "balloon" and log.header["format_version"] == 2
    assert "balloon:" in log.header["scenario_text"] or "name: balloon" in log.header["scenario_text"]


def test_memory_ops_carry_per_site_effects_through_the_log(recorded):
    path, live, _ = recorded
    ops = [e for e in read_event_log(path).events if isinstance(e, MemoryOp)]
    sites = {s.site for e in ops for s in e.sites}
    assert {"p2m_remove_page", "guest_physmap_add_entry"} <= sites
    # pre-fix: balloon.yaml's 3,357 dirty GFNs ballooned out keep their bits, and
    # all 65,536 GFNs given back are left unmarked.
    assert sum(e.leftover.size for e in ops) == 3357
    assert sum(e.unmarked.size for e in ops) == 65536
    assert sum(s.cleared + s.set for e in ops for s in e.sites) == 0


def test_pass_ended_is_the_pass_as_it_ended(recorded):
    """Balloon ops between two passes count in the pass before: the engine replaces
    that pass's value in its list, and the frozen value PassEnded carried stays what
    the pass was when it ended; the events rebuild the engine's list exactly."""
    path, live, result = recorded
    ended = [e.stats for e in live if isinstance(e, PassEnded)]
    assert [r.iteration for r in ended] == [r.iteration for r in result.save.rounds]
    later = [(a, b) for a, b in zip(ended, result.save.rounds) if a != b]
    assert later, "balloon.yaml balloons between passes"
    for a, b in later:
        assert (b.balloon_out, b.balloon_in) != (a.balloon_out, a.balloon_in)
        assert dataclasses.replace(b, balloon_out=a.balloon_out, balloon_in=a.balloon_in) == a
    assert result_from_events(live).save.rounds == result.save.rounds
    with pytest.raises(dataclasses.FrozenInstanceError):
        ended[0].balloon_out = 0


def _rewrite(path, out, mutate):
    data = bytearray(path.read_bytes())
    mutate(data)
    out.write_bytes(bytes(data))
    return out


def test_truncated_log_names_file_and_offset_and_partial_read_keeps_the_prefix(recorded, tmp_path):
    path, live, _ = recorded
    cut = _rewrite(path, tmp_path / "cut.events", lambda d: d.__delitem__(slice(len(d) // 2, None)))
    with pytest.raises(EventLogError) as ei:
        read_event_log(cut)
    assert str(cut) in str(ei.value) and "byte " in str(ei.value)
    part = read_event_log(cut, partial=True)
    assert not part.complete and 0 < len(part.events) < len(live)
    assert all(same_value(a, b) for a, b in zip(live, part.events))


def test_not_an_event_log_and_bit_flips_are_refused(recorded, tmp_path):
    path, _, _ = recorded
    bad = tmp_path / "x.events"
    bad.write_bytes(b"hello world, not a log")
    with pytest.raises(EventLogError, match="byte 0: not an xmig event log"):
        read_event_log(bad)

    def flip(d):
        d[len(d) // 3] ^= 0xFF
    with pytest.raises(EventLogError, match="checksum|bad record"):
        read_event_log(_rewrite(path, tmp_path / "flip.events", flip))


def _one_record_log(tmp_path, frame: bytes, raw_len: int | None = None):
    p = tmp_path / "hostile.events"
    with EventRecorder(p, HEADER):
        pass
    data = p.read_bytes()[:-12]                       # drop the end record
    stored = zlib.compress(frame)
    rec = struct.pack("<III", len(stored), len(frame) if raw_len is None else raw_len, zlib.crc32(stored))
    p.write_bytes(data + rec + stored + b"\0" * ((-len(stored)) % 8) + struct.pack("<III", 0, 0, 0))
    return p


def test_hostile_lengths_are_checked_before_anything_is_allocated(tmp_path):
    p = tmp_path / "huge.events"
    with EventRecorder(p, HEADER):
        pass
    data = p.read_bytes()
    # a record that claims 4 GiB - 1
    p.write_bytes(data[:-12] + struct.pack("<III", 0xFFFFFFF0, 16, 0))
    with pytest.raises(EventLogError, match="damaged record header: it claims 4294967280 bytes"):
        read_event_log(p)
    # a header length past the end
    q = tmp_path / "head.events"
    q.write_bytes(data[:12] + struct.pack("<I", 1 << 30) + data[16:])
    with pytest.raises(EventLogError, match="byte 12: header length"):
        read_event_log(q)


def test_hostile_array_runs_and_foreign_types_are_refused(tmp_path):
    # one run [0, 2^40) would expand to 2^40 int64: refused before decoding
    big = np.arange(0, 8192, dtype=np.int64)
    frame = bytearray(wire.encode(MemoryOp(t=0.0, op="populate_physmap", nr=1, rc=1, gfns=big)))
    runs_at = frame.rfind(struct.pack("<qq", 0, 8192))
    frame[runs_at:runs_at + 16] = struct.pack("<qq", 0, 1 << 40)
    with pytest.raises(EventLogError, match=f"beyond {MAX_ARRAY_ELEMENTS}"):
        read_event_log(_one_record_log(tmp_path, bytes(frame)))
    # a dataclass that is not an event
    from hypervisor.abi import HypercallResult
    frame = wire.encode(HypercallResult(rc=0, done=np.zeros(1, np.int64)))
    with pytest.raises(EventLogError, match="not an xmig event"):
        read_event_log(_one_record_log(tmp_path, frame))
    # a stored block that unpacks to more than it says
    frame = wire.encode(RunStarted(t=0.0, scenario="s", seed=1, behaviour="fixed", policy="xen",
                                   policy_params={}, guest_pages=1, populated=np.zeros((0, 2), np.int64),
                                   ballooned=np.zeros((0, 2), np.int64)))
    with pytest.raises(EventLogError, match="stated length"):
        read_event_log(_one_record_log(tmp_path, frame, raw_len=10))


def test_the_enums_are_written_as_their_plain_strings(recorded, tmp_path):
    """Outcome, pass phase and behaviour are StrEnums in memory and after a log round
    trip; the JSON report and the CSV show the same strings as before they were."""
    import csv
    import json

    from hypervisor.abi import XenBehaviour
    from migrate.events import MigrationFinished, Outcome, PassPhase, Phase, PhaseChanged
    from migrate.run.outputs import write_json
    from migrate.run.report import build_report, write_csv

    path, live, result = recorded
    assert result.save.outcome is Outcome.COMPLETED and result.save.rounds[0].phase is PassPhase.LIVE
    back = read_event_log(path).events
    assert next(e for e in back if isinstance(e, RunStarted)).behaviour is XenBehaviour.PRE_FIX
    assert next(e for e in back if isinstance(e, MigrationFinished)).outcome is Outcome.COMPLETED
    assert {e.phase for e in back if isinstance(e, PhaseChanged)} >= {Phase.SETUP, Phase.SUSPENDED, Phase.DONE}
    rep = build_report(result)
    write_json(tmp_path / "r.json", rep)
    write_csv(tmp_path / "r.csv", [rep])
    text = (tmp_path / "r.json").read_text()
    assert "XenBehaviour" not in text and "Outcome" not in text and "PassPhase" not in text
    data = json.loads(text)
    assert data["behaviour"] == "pre-fix" and data["rounds"][0]["phase"] == "live"
    assert '"completed"' in text
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert rows[0]["behaviour"] == "pre-fix" and rows[0]["phase"] == "live" and rows[-1]["phase"] == "final"


def test_a_log_recorded_with_wire_protocol_v1_still_reads(tmp_path, monkeypatch):
    """Wire v2 only added narrowed integer arrays: a log an earlier xmig recorded (v1
    frames) replays; a frame of a protocol this xmig never spoke is refused."""
    from migrate.events import log as eventlog

    sc = load_scenario("examples/idle.yaml")
    bus, live = EventBus(), []
    bus.subscribe(live.append)
    path = tmp_path / "v1.events"
    versions = set()
    encode = wire.encode

    def v1_encode(msg):
        frame = encode(msg)
        versions.add(frame[4])
        return frame

    monkeypatch.setattr(wire, "PROTOCOL_VERSION", 1)
    monkeypatch.setattr(wire, "NARROW_MIN_ELEMENTS", 1 << 62)          # as v1 wrote them
    monkeypatch.setattr(wire, "encode", v1_encode)
    rec = EventRecorder(path, HEADER)
    bus.subscribe(rec)
    asyncio.run(run_scenario(sc, RunOptions(), bus=bus))
    rec.close()
    monkeypatch.undo()
    assert versions == {1}
    log = read_event_log(path)
    assert log.complete and len(log.events) == len(live) > 10
    assert all(same_value(a, b) for a, b in zip(live, log.events))
    frame = bytearray(wire.encode(live[0]))
    frame[4] = 1
    with pytest.raises(wire.WireError, match="protocol v1"):
        wire.decode(bytes(frame))                  # a peer must speak v2 itself
    assert same_value(eventlog._decode(bytes(frame)), live[0])
    frame[4] = 7
    with pytest.raises(ValueError, match="wire protocol v7"):
        eventlog._decode(bytes(frame))
