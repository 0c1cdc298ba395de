"""A recorded run: the event stream on disk (``xmig run --record run.events``).

Xen has no such file; ``xl migrate`` only logs text. This is xmig's own format, so a
run can be replayed, explained page by page and compared on another machine. The file
is the very stream the dashboard, the report and the plots consume live::

    b"XMIGEVTS" | u16 format version | u16 0 | u32 header length | header (JSON, UTF-8)
    | zero padding to 8
    then one record per event:
    u32 stored length | u32 frame length | u32 CRC-32 of the stored bytes
    | stored bytes (the frame, zlib-deflated) | zero padding to 8
    and, when the recorder closed cleanly, an end record: u32 0 | u32 0 | u32 0

Each frame is one ``migrate.transport.wire`` frame (the MQTT codec: a JSON tree, numpy arrays as
raw little-endian blobs, no pickle), so reading a file never runs code from it. The
reader accepts only the event dataclasses of ``migrate.events`` (and the values they
hold), checks every length against what is left of the file before reading it, and
caps the size of any array a frame expands, so a hostile file costs bounded memory.
The header names the format and xmig versions, the scenario, seed, behaviour, policy,
the tracked GFNs and the scenario's own text, so a run can be re-run anywhere.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np

from . import events as _events
from .transport import wire

MAGIC = b"XMIGEVTS"
FORMAT_VERSION = 1
_FILE_HEAD = struct.Struct("<8sHHI")
_REC_HEAD = struct.Struct("<III")
#: A header longer than this is refused (the scenario's text is the big part).
MAX_HEADER_BYTES = 16 << 20
#: A single frame longer than this is refused (a 1024-PFN batch is ~20 KiB).
MAX_FRAME_BYTES = 256 << 20
#: No array in a frame may expand (from its [start, end) runs) to more elements.
MAX_ARRAY_ELEMENTS = 1 << 27

#: The dataclasses a frame may hold: the events and the values they carry.
_ALLOWED = frozenset(
    wire.type_name(obj) for obj in list(vars(_events).values())
    if isinstance(obj, type) and dataclasses.is_dataclass(obj)
    and obj.__module__ in (_events.__name__, "hypervisor.abi"))


class EventLogError(ValueError):
    """An event log that cannot be read: names the file and the byte offset."""

    def __init__(self, path: str | Path, offset: int, what: str):
        self.path, self.offset, self.what = str(path), int(offset), what
        super().__init__(f"{path}: byte {offset}: {what}")


def xmig_version() -> str:
    try:
        return metadata.version("xmig")
    except metadata.PackageNotFoundError:      # running from a source tree
        return "unknown"


def _pad(n: int) -> int:
    return (-n) % 8


class EventRecorder:
    """A bus listener writing each event as it comes (flushed, so a crash loses at most
    the event being written); ``close()`` adds the end record.

    ``header`` is the caller's description of the run (scenario_text, scenario_file,
    anything else JSON can hold). The run's own facts (scenario, seed, behaviour,
    per-site behaviour, policy, tracked GFNs) are taken from its RunStarted event, so
    the header is written when that first event arrives (or at ``close()`` if none
    came: a run that failed before starting)."""

    def __init__(self, path: str | Path, header: dict[str, Any] | None = None):
        self.path = Path(path)
        self._header = {"format": "xmig-events", "format_version": FORMAT_VERSION,
                        "xmig_version": xmig_version(), "wire_protocol": wire.PROTOCOL_VERSION,
                        **(header or {})}
        self._fh: BinaryIO | None = self.path.open("wb")
        self._pending: list[_events.Event] = []
        self._head_written = False
        self.events = 0

    @property
    def header(self) -> dict[str, Any]:
        return dict(self._header)

    def _write_header(self) -> None:
        from .report import jsonable    # numpy scalars and arrays as JSON, as in reports

        raw = json.dumps(self._header, separators=(",", ":"), default=jsonable).encode()
        if len(raw) > MAX_HEADER_BYTES:
            raise ValueError(f"event log header of {len(raw)} bytes is over {MAX_HEADER_BYTES}")
        self._fh.write(_FILE_HEAD.pack(MAGIC, FORMAT_VERSION, 0, len(raw)) + raw + b"\0" * _pad(len(raw)))
        self._head_written = True
        for ev in self._pending:
            self._write(ev)
        self._pending = []

    def _write(self, ev: _events.Event) -> None:
        frame = wire.encode(ev)
        stored = zlib.compress(frame, 1)
        self._fh.write(_REC_HEAD.pack(len(stored), len(frame), zlib.crc32(stored)) + stored
                       + b"\0" * _pad(len(stored)))
        self.events += 1

    def __call__(self, ev: _events.Event) -> None:
        if self._fh is None:
            return
        if not self._head_written:
            if not isinstance(ev, _events.RunStarted):
                self._pending.append(ev)
                return
            self._header.update(scenario=ev.scenario, seed=int(ev.seed), behaviour=ev.behaviour,
                                sites=dict(ev.sites), policy=ev.policy, policy_params=ev.policy_params,
                                tracked=[int(g) for g in ev.tracked])
            self._write_header()
        self._write(ev)
        self._fh.flush()

    on_event = __call__

    def close(self) -> None:
        if self._fh is None:
            return
        if not self._head_written:
            self._write_header()
        self._fh.write(_REC_HEAD.pack(0, 0, 0))
        self._fh.close()
        self._fh = None

    def __enter__(self) -> EventRecorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(slots=True)
class EventLog:
    """A read event log: ``header`` (dict), ``events`` (the published dataclasses, in
    order) and ``complete`` (False when the file ends without its end record: the
    recorder was interrupted, and ``events`` holds everything written until then)."""

    path: str
    header: dict[str, Any]
    events: list[_events.Event] = field(default_factory=list)
    complete: bool = False

    @property
    def tracked(self) -> tuple[int, ...]:
        return tuple(int(g) for g in self.header.get("tracked") or ())


def _check_tree(v: Any, offsets: list, frame: memoryview, base: int) -> None:
    """Refuse, before decoding, a frame naming a type outside the events or holding an
    array whose runs expand beyond MAX_ARRAY_ELEMENTS."""
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, list):
            stack.extend(x)
        elif isinstance(x, dict):
            if "$c" in x and x["$c"] not in _ALLOWED:
                raise ValueError(f"type {x['$c']!r} is not an xmig event")
            if "$a" in x:
                dt = np.dtype(x.get("dt", "|u1"))
                if dt.hasobject:
                    raise ValueError("object arrays are refused")
                if x.get("runs"):
                    off, n = offsets[int(x["$a"])]
                    if base + off + n > len(frame) or n % (2 * dt.itemsize):
                        raise ValueError("array runs outside the frame")
                    runs = np.frombuffer(frame[base + off:base + off + n], dtype=dt).reshape(-1, 2)
                    lengths = runs[:, 1].astype(np.float64) - runs[:, 0].astype(np.float64)
                    if (lengths < 0).any() or float(lengths.sum()) > MAX_ARRAY_ELEMENTS:
                        raise ValueError(f"an array expands beyond {MAX_ARRAY_ELEMENTS} elements")
                sh = x.get("sh", [])
                if not isinstance(sh, list) or math.prod(int(d) for d in sh) > MAX_ARRAY_ELEMENTS \
                        or any(int(d) < 0 for d in sh):
                    raise ValueError("array shape out of bounds")
            stack.extend(y for k, y in x.items() if k not in ("$a", "dt", "sh", "runs", "bytes"))


def _decode(frame: bytes) -> _events.Event:
    buf = memoryview(frame)
    if len(buf) < 12:
        raise ValueError("frame shorter than its header")
    magic, version, _f, _r, hlen = struct.unpack_from("<4sBBHI", buf, 0)
    if magic != wire.MAGIC:
        raise ValueError("not an xmig frame")
    if version != wire.PROTOCOL_VERSION:
        raise ValueError(f"frame of wire protocol v{version}; this xmig reads v{wire.PROTOCOL_VERSION}")
    end = 12 + hlen
    if end > len(buf):
        raise ValueError("frame header longer than the frame")
    head = json.loads(bytes(buf[12:end]))
    offsets = head.get("b", [])
    if not isinstance(offsets, list) or not all(
            isinstance(o, list) and len(o) == 2 and all(isinstance(i, int) and i >= 0 for i in o)
            for o in offsets):
        raise ValueError("bad blob table")
    _check_tree(head.get("v"), offsets, buf, end + _pad(end))
    ev = wire.decode(frame)
    if not isinstance(ev, _events.Event):
        raise ValueError(f"record holds a {type(ev).__name__}, not an event")
    return ev


def iter_event_log(path: str | Path) -> tuple[dict[str, Any], Iterator[tuple[int, _events.Event | None]]]:
    """``(header, records)``: records yields ``(offset, event)`` and finally
    ``(offset, None)`` for the end record. Raises EventLogError."""
    p = Path(path)
    try:
        fh = p.open("rb")
    except OSError as exc:
        raise EventLogError(p, 0, f"cannot open: {exc.strerror or exc}") from None
    size = p.stat().st_size
    head = fh.read(_FILE_HEAD.size)
    if len(head) < _FILE_HEAD.size or head[:8] != MAGIC:
        fh.close()
        raise EventLogError(p, 0, "not an xmig event log (expected it to start with XMIGEVTS; "
                                  "record one with xmig run --record FILE)")
    _magic, version, _res, hlen = _FILE_HEAD.unpack(head)
    if version != FORMAT_VERSION:
        fh.close()
        raise EventLogError(p, 8, f"event log format v{version}; this xmig reads v{FORMAT_VERSION}")
    if hlen > min(MAX_HEADER_BYTES, size - _FILE_HEAD.size):
        fh.close()
        raise EventLogError(p, 12, f"header length {hlen} runs past the end of the file ({size} bytes)")
    try:
        header = json.loads(fh.read(hlen))
        if not isinstance(header, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        fh.close()
        raise EventLogError(p, _FILE_HEAD.size, f"bad header: {exc}") from None
    pos = _FILE_HEAD.size + hlen + _pad(hlen)
    fh.seek(pos)

    def records():
        nonlocal pos
        with fh:
            while True:
                rh = fh.read(_REC_HEAD.size)
                if not rh:
                    return
                if len(rh) < _REC_HEAD.size:
                    raise EventLogError(p, pos, "truncated record header (the recording was cut short)")
                n, raw_n, crc = _REC_HEAD.unpack(rh)
                if n == 0:
                    yield pos, None
                    if fh.read(1):
                        raise EventLogError(p, pos + _REC_HEAD.size, "data after the end record")
                    return
                left = size - pos - _REC_HEAD.size
                if n > min(left, MAX_FRAME_BYTES):
                    raise EventLogError(p, pos, f"record of {n} bytes runs past the end of the file "
                                                f"({left} bytes left)")
                if raw_n > MAX_FRAME_BYTES:
                    raise EventLogError(p, pos, f"record claims {raw_n} bytes unpacked, over {MAX_FRAME_BYTES}")
                stored = fh.read(n)
                if zlib.crc32(stored) != crc:
                    raise EventLogError(p, pos, "record checksum mismatch (the file is corrupt)")
                try:
                    # max_length bounds what a hostile stored block can expand to.
                    unz = zlib.decompressobj()
                    frame = unz.decompress(stored, raw_n)
                    if len(frame) != raw_n or unz.unconsumed_tail or not unz.eof:
                        raise ValueError("record does not unpack to its stated length")
                    ev = _decode(frame)
                except (ValueError, KeyError, TypeError, IndexError, zlib.error) as exc:
                    raise EventLogError(p, pos, f"bad record: {exc}") from None
                yield pos, ev
                fh.seek(_pad(n), 1)
                pos += _REC_HEAD.size + n + _pad(n)

    return header, records()


def read_event_log(path: str | Path, *, partial: bool = False) -> EventLog:
    """Read a whole event log. A file cut short (no end record, or a truncated last
    record) raises EventLogError unless ``partial``: then the events before the cut
    are returned with ``complete`` False."""
    header, records = iter_event_log(path)
    log = EventLog(path=str(path), header=header)
    try:
        for _off, ev in records:
            if ev is None:
                log.complete = True
            else:
                log.events.append(ev)
    except EventLogError as exc:
        if not (partial and ("cut short" in exc.what or "past the end" in exc.what)):
            raise
        return log
    if not log.complete and not partial:
        raise EventLogError(path, Path(path).stat().st_size,
                            "no end record: the recording was cut short (read it with partial=True)")
    return log


def same_value(a: Any, b: Any) -> bool:
    """Field-by-field equality of events (numpy arrays compared by dtype kind and value)."""
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(same_value(getattr(a, f.name), getattr(b, f.name))
                                           for f in dataclasses.fields(a))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            return False
        return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


__all__ = ["EventLog", "EventLogError", "EventRecorder", "FORMAT_VERSION", "iter_event_log",
           "read_event_log", "same_value"]
