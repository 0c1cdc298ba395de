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

Each frame is one ``migrate.codec.wire`` frame (the MQTT codec: a JSON tree, numpy arrays as
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
import os
import stat
import struct
import types
import typing
import zlib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np

from hypervisor.abi import MAX_BATCH_SIZE, MAX_GFN

from migrate import events as _events
from migrate.codec import wire
from migrate.codec.names import EVENT_LOG_NAMES
from migrate.events.track import FINAL_STATES, MAX_TRACKED

MAGIC = b"XMIGEVTS"
FORMAT_VERSION = 2      # 2: typed balloon events (BalloonTarget, ...) replace GuestNote
_FILE_HEAD = struct.Struct("<8sHHI")
_REC_HEAD = struct.Struct("<III")
#: A header longer than this is refused (the scenario's text is the big part).
MAX_HEADER_BYTES = 16 << 20
#: A single frame longer than this is refused (a 1024-PFN batch is ~20 KiB).
MAX_FRAME_BYTES = 256 << 20
#: No array in a frame may expand (from its [start, end) runs) to more elements.
MAX_ARRAY_ELEMENTS = 1 << 27

#: The dataclasses a frame may hold: the events and the values they carry.
_ALLOWED = EVENT_LOG_NAMES


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
        from migrate.codec.jsonable import jsonable  # numpy scalars and arrays as JSON, as in reports

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
        """The GFNs the run followed: its RunStarted event's (the header repeats them)."""
        for ev in self.events:
            if isinstance(ev, _events.RunStarted):
                return tuple(int(g) for g in ev.tracked)
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


#: Fields holding GFNs or PFNs: integer arrays of non-negative frame numbers.
_FRAME_ARRAYS = frozenset({"pfns", "gfns", "dirty", "leftover", "unmarked", "populated", "ballooned"})
_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _fits(v: Any, tp: Any) -> bool:
    """Whether a decoded value has the type a field of the events declares."""
    if tp is Any:
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(v, a) for a in args)
    if tp is type(None):
        return v is None
    if tp is bool:
        return isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if tp is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if tp is str:
        return isinstance(v, str)
    if tp is np.ndarray:
        return isinstance(v, np.ndarray) and v.dtype.kind in "biuf"
    if origin is dict:
        return isinstance(v, dict)
    if origin is list:
        return isinstance(v, list) and all(_fits(x, args[0]) for x in v)
    if origin is tuple:
        if not isinstance(v, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(x, args[0]) for x in v)
        return len(v) == len(args) and all(_fits(x, a) for x, a in zip(v, args))
    if dataclasses.is_dataclass(tp):
        return isinstance(v, tp)
    return isinstance(v, tp)


def _check_fields(obj: Any, where: str) -> None:
    for name, tp in _hints(type(obj)).items():
        v = getattr(obj, name)
        if not _fits(v, tp):
            want = tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")
            raise ValueError(f"{where}.{name}: expected {want.replace('hypervisor.abi.', '')[:60]}, "
                             f"found {type(v).__name__}")
        if name in _FRAME_ARRAYS and isinstance(v, np.ndarray) and v.size:
            if v.dtype.kind not in "iu" or int(v.min()) < 0 or int(v.max()) > MAX_GFN:
                raise ValueError(f"{where}.{name}: expected frame numbers from 0 to {MAX_GFN:#x}")
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            _check_fields(v, f"{where}.{name}")
        elif isinstance(v, tuple):
            for i, x in enumerate(v):
                if dataclasses.is_dataclass(x):
                    _check_fields(x, f"{where}.{name}[{i}]")


def _same_length(where: str, **arrays) -> None:
    sizes = {k: len(a) for k, a in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"{where}: expected " + ", ".join(sizes) + " of one length, found "
                         + ", ".join(map(str, sizes.values())))


def check_event(ev: _events.Event) -> None:
    """Refuse an event whose fields do not have the types its dataclass declares, or
    whose arrays disagree with each other: consumers (progress, report, page story)
    may then index and compute on it without further checks. Raises ValueError."""
    name = type(ev).__name__
    _check_fields(ev, name)
    if not math.isfinite(ev.t):
        raise ValueError(f"{name}.t: expected a finite time, found {ev.t}")
    if isinstance(ev, _events.BatchSent):
        _same_length(name, pfns=ev.pfns, nibbles=ev.nibbles)
        if ev.nibbles.size and (ev.nibbles.dtype.kind not in "iu" or int(ev.nibbles.min()) < 0
                                or int(ev.nibbles.max()) > 15):
            raise ValueError(f"{name}.nibbles: expected PFINFO type nibbles 0..15")
        if ev.ends is not None:
            ends = np.asarray(ev.ends)
            n = -(-ev.pfns.size // MAX_BATCH_SIZE)
            if ends.ndim != 1 or ends.size != n or ends.dtype.kind != "f" or not np.isfinite(ends).all() \
                    or (ends.size and (np.diff(ends) < 0).any()) or (ends.size and float(ends[-1]) != ev.t):
                raise ValueError(f"{name}.ends: expected the end time of each of its {n} batches, in order, "
                                 "the last at t")
    elif isinstance(ev, _events.RunStarted):
        for k in ("populated", "ballooned"):
            a = getattr(ev, k)
            if a.size and (a.ndim != 2 or a.shape[1] != 2):
                raise ValueError(f"{name}.{k}: expected [start, end) GFN runs (k x 2), found shape {a.shape}")
        if len(ev.tracked) > MAX_TRACKED or any(not 0 <= g <= MAX_GFN for g in ev.tracked):
            raise ValueError(f"{name}.tracked: expected at most {MAX_TRACKED} GFNs from 0 to {MAX_GFN:#x}")
    elif isinstance(ev, _events.TrackedWrites):
        _same_length(name, gfns=ev.gfns, writes=ev.writes, first_s=ev.first_s, last_s=ev.last_s,
                     logged_s=ev.logged_s)
    elif isinstance(ev, _events.TrackedFinal):
        _same_length(name, gfns=ev.gfns, states=ev.states)
        bad = set(ev.states) - FINAL_STATES
        if bad:
            raise ValueError(f"{name}.states: expected one of {', '.join(sorted(FINAL_STATES))}, "
                             f"found {sorted(bad)[0][:40]!r}")
    elif isinstance(ev, _events.VerifyDone):
        st = ev.stats
        if min(st.missing_pages, st.stale_pages, st.extra_pages) < 0:
            raise ValueError(f"{name}.stats: expected page counts of 0 or more")
        if st.ok != (st.missing_pages == 0 and st.stale_pages == 0):
            raise ValueError(f"{name}.stats.ok: says {st.ok} with {st.missing_pages} missing and "
                             f"{st.stale_pages} stale pages")


#: The facts the recorder copies from RunStarted into the header (EventRecorder.__call__).
_HEADER_FACTS = ("scenario", "seed", "behaviour", "sites", "policy", "policy_params", "tracked")
_ONCE = (_events.RunStarted, _events.VerifyDone, _events.TrackedFinal, _events.RunSummary,
         _events.MigrationFinished)


def _plain(v: Any) -> Any:
    from migrate.codec.jsonable import jsonable

    return json.loads(json.dumps(v, default=jsonable, sort_keys=True))


def check_run(header: dict[str, Any], events: list[_events.Event]) -> None:
    """Refuse a log whose events contradict each other or its header: one run (each of
    RunStarted, VerifyDone, TrackedFinal, RunSummary, MigrationFinished at most once,
    RunStarted before the rest, nothing after MigrationFinished), the header's run
    facts equal to RunStarted's, RunSummary and MigrationFinished agreeing with them,
    and each tracked GFN's final state agreeing with the VERIFY verdict. A recording is
    a claim, not a proof: this catches an edited log, not one forged consistently
    (re-run the header's scenario_text to check that). Raises ValueError."""
    seen: dict[type, int] = {}
    for i, ev in enumerate(events):
        kind = type(ev)
        if kind in _ONCE:
            if kind in seen:
                raise ValueError(f"event {i}: a second {kind.__name__} (event {seen[kind]} was the "
                                 "first); an event log holds one run")
            seen[kind] = i
        if _events.MigrationFinished in seen and i > seen[_events.MigrationFinished]:
            raise ValueError(f"event {i}: {kind.__name__} after MigrationFinished")
    first = {k: events[i] for k, i in seen.items()}
    start = first.get(_events.RunStarted)
    if start is None:
        if len(seen):
            raise ValueError(f"a {next(iter(seen)).__name__} without the run's RunStarted")
        return
    late = [k.__name__ for k, i in seen.items() if i < seen[_events.RunStarted]]
    if late:
        raise ValueError(f"{late[0]} before RunStarted")
    facts = {"scenario": start.scenario, "seed": start.seed, "behaviour": start.behaviour,
             "sites": dict(start.sites), "policy": start.policy, "policy_params": start.policy_params,
             "tracked": [int(g) for g in start.tracked]}
    for k in _HEADER_FACTS:
        if k in header and _plain(header[k]) != _plain(facts[k]):
            raise ValueError(f"header: {k} is {json.dumps(header[k])[:60]} but the run's RunStarted "
                             f"event says {json.dumps(_plain(facts[k]))[:60]}")
    summary = first.get(_events.RunSummary)
    if summary is not None:
        for k in ("scenario", "seed", "behaviour", "policy"):
            if getattr(summary, k) != facts[k]:
                raise ValueError(f"RunSummary.{k} is {getattr(summary, k)!r} but RunStarted says {facts[k]!r}")
        done = first.get(_events.MigrationFinished)
        if done is not None and done.outcome != summary.outcome:
            raise ValueError(f"MigrationFinished.outcome is {done.outcome!r} but RunSummary says "
                             f"{summary.outcome!r}")
    final = first.get(_events.TrackedFinal)
    if final is not None:
        if sorted(int(g) for g in final.gfns) != sorted(facts["tracked"]):
            raise ValueError("TrackedFinal names other GFNs than RunStarted tracked")
        verify = first.get(_events.VerifyDone)
        if verify is not None:
            st = verify.stats
            for state, count in (("missing", st.missing_pages), ("stale", st.stale_pages)):
                n = sum(1 for x in final.states if x == state)
                if n > count:
                    raise ValueError(f"TrackedFinal says {n} tracked GFN(s) {state} but VerifyDone "
                                     f"counts {count} {state} pages")


def _decode(frame: bytes) -> _events.Event:
    buf = memoryview(frame)
    if len(buf) < 12:
        raise ValueError("frame shorter than its header")
    magic, version, _f, _r, hlen = struct.unpack_from("<4sBBHI", buf, 0)
    if magic != wire.MAGIC:
        raise ValueError("not an xmig frame")
    if version not in wire.READABLE_VERSIONS:
        raise ValueError(f"frame of wire protocol v{version}; this xmig reads "
                         f"v{', v'.join(map(str, wire.READABLE_VERSIONS))}")
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
    ev = wire.decode(frame, versions=wire.READABLE_VERSIONS)
    if not isinstance(ev, _events.Event):
        raise ValueError(f"record holds a {type(ev).__name__}, not an event")
    return ev


def iter_event_log(path: str | Path) -> tuple[dict[str, Any], Iterator[tuple[int, _events.Event | None]]]:
    """``(header, records)``: records yields ``(offset, event)`` and finally
    ``(offset, None)`` for the end record. Raises EventLogError."""
    p = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; the type check follows.
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise EventLogError(p, 0, f"cannot open: {exc.strerror or exc}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise EventLogError(p, 0, "expected a regular file written by xmig run --record, found "
                                  + ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO"
                                     if stat.S_ISFIFO(st.st_mode) else "a device or other special file"))
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    fh = os.fdopen(fd, "rb")
    size = st.st_size
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
    except (ValueError, RecursionError) as exc:
        fh.close()
        raise EventLogError(p, _FILE_HEAD.size, f"bad header: {str(exc)[:120]}") from None
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
                    check_event(ev)
                except (ValueError, KeyError, TypeError, IndexError, OverflowError, RecursionError,
                        zlib.error) as exc:
                    raise EventLogError(p, pos, f"bad record: {str(exc)[:200]}") from None
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
        _check_log(log)
        return log
    if not log.complete and not partial:
        raise EventLogError(path, Path(path).stat().st_size,
                            "no end record: the recording was cut short (read it with partial=True)")
    _check_log(log)
    return log


def _check_log(log: EventLog) -> None:
    tracked = log.header.get("tracked", [])
    if not isinstance(tracked, list) or len(tracked) > MAX_TRACKED or not all(
            isinstance(g, int) and not isinstance(g, bool) and 0 <= g <= MAX_GFN for g in tracked):
        raise EventLogError(log.path, _FILE_HEAD.size, f"header: tracked: expected a list of at most "
                                                       f"{MAX_TRACKED} GFNs from 0 to {MAX_GFN:#x}")
    try:
        check_run(log.header, log.events)
    except ValueError as exc:
        raise EventLogError(log.path, _FILE_HEAD.size, f"inconsistent recording: {exc}") from None


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
           "check_event", "check_run", "read_event_log", "same_value"]
