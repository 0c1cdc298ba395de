"""Recordings made by an earlier xmig still replay, and its MQTT frames still decode.

``tests/data/old_recordings`` was written by xmig as it was before the layout moved
(tag ``baseline-pre21``; ``capture.py`` there says how): a ``--record`` log of a 64 MiB
balloon run under pre-fix with one stale GFN tracked, the JSON report, what ``replay``
and ``explain`` printed, and wire frames as the old codec encoded them. Today's code
must read every byte of them the same way.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from migrate.codec import wire
from migrate.events.log import read_event_log, same_value
from migrate.run.report import build_report
from migrate.run.runner import result_from_events
from tests.xmig_process import xmig

DATA = Path(__file__).resolve().parents[1] / "data" / "old_recordings"
LOG = DATA / "small-balloon.pre-fix.events"
TRACKED = 12421      # 0x3085: ballooned out and back, written after; pre-fix leaves it stale


def old_frames() -> list[tuple[dict, bytes]]:
    """(what the frame holds, its bytes) for every frame the old codec wrote."""
    index = json.loads((DATA / "frames.json").read_text())["frames"]
    raw, frames, at = (DATA / "frames.bin").read_bytes(), [], 0
    while at < len(raw):
        (n,) = struct.unpack_from("<I", raw, at)
        frames.append(raw[at + 4:at + 4 + n])
        at += 4 + n
    assert len(frames) == len(index)
    return list(zip(index, frames))


def _id(item) -> str:
    what = item[0]
    return f"events-{what['seq']}" if what["what"] == "events" else f"{what['method']}-{what['what']}"


@pytest.fixture(scope="module")
def old_log():
    return read_event_log(LOG)


def test_the_old_log_replays_line_for_line():
    res = xmig("replay", LOG, "--no-dashboard")
    assert res.returncode == 1, res.stderr            # pre-fix: the destination has stale pages
    assert res.stdout == (DATA / "replay.stdout").read_text()


@pytest.mark.parametrize("gfn,expected", [(str(TRACKED), "explain-12421.stdout"),
                                          ("0x3000", "explain-0x3000.stdout")])
def test_explain_tells_an_old_logs_pages_as_it_did(gfn, expected):
    res = xmig("explain", LOG, "--gfn", gfn)
    assert res.returncode == 0, res.stderr
    assert res.stdout == (DATA / expected).read_text()


def test_the_report_rebuilt_from_the_old_log_is_the_report_it_was_recorded_with(old_log):
    assert old_log.complete and old_log.header["tracked"] == [TRACKED]
    rebuilt = json.loads(json.dumps(build_report(result_from_events(old_log.events))))
    stored = json.loads((DATA / "small-balloon.pre-fix.json").read_text())
    rebuilt.pop("wall"), stored.pop("wall")
    assert rebuilt == stored
    assert stored["verify"]["stale_pages"] == 94 and TRACKED in stored["verify"]["stale_sample"]


@pytest.mark.parametrize("item", old_frames(), ids=_id)
def test_an_old_frame_decodes_and_encodes_again_to_the_same_bytes(item):
    what, frame = item
    value = wire.decode(frame)
    assert wire.encode(value) == frame
    assert isinstance(value, dict)
    if what["what"] == "request":
        assert value["m"] == what["method"]
    elif what["what"] == "reply":
        assert "ok" in value


@pytest.mark.parametrize("item", [i for i in old_frames() if i[0]["what"] == "events"], ids=_id)
def test_an_old_event_batch_decodes_to_the_events_the_log_holds(item, old_log):
    what, frame = item
    batch = wire.decode(frame)
    assert batch["seq"] == what["seq"]
    expected = old_log.events[what["first"]:what["last"]]
    assert [type(e).__name__ for e in batch["events"]] == what["kinds"]
    assert len(batch["events"]) == len(expected)
    for got, want in zip(batch["events"], expected):
        assert same_value(got, want), got.kind


def test_the_old_event_batches_carry_every_kind_of_event_in_the_log(old_log):
    carried = {k for what, _ in old_frames() if what["what"] == "events" for k in what["kinds"]}
    assert carried == {type(e).__name__ for e in old_log.events}
