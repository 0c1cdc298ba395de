"""A recorded run: the event stream on disk (``xmig run --record run.events``).

Xen has no such file; ``xl migrate`` only logs text. This is xmig's own format, so a
run can be replayed, explained page by page and compared on another machine. The file
is the very stream the app, the report and the plots consume live::

    b"XMIGEVTS" | u16 format version | u16 0 | u32 header length | header (JSON, UTF-8)
    | zero padding to 8
    then one record per event:
    u32 stored length | u32 frame length | u32 CRC-32 of the stored bytes
    | stored bytes (the frame, zlib-deflated) | zero padding to 8
    and, when the recorder closed cleanly, an end record: u32 0 | u32 0 | u32 0

Each frame is one ``migrate.codec.wire`` frame (the MQTT codec: a JSON tree, numpy arrays as
raw little-endian blobs, no pickle), so reading a file never runs code from it. The
reader accepts only the event dataclasses of ``migrate.events`` (and the values they
hold), checks every length against what is left of the file before reading it, caps
the size of any array a frame expands, and counts what every record's arrays will take
against one budget for the whole log (half the memory the machine has available), so a
hostile file costs bounded memory and ends in one line, never in a MemoryError. A
length that cannot be right (over the record limit, or past the end of a file that
ends with its end record) is reported as damage at its offset, not as a cut recording.
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
import zlib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np

from hypervisor.abi import MAX_GFN

from migrate import events as _events
from migrate.codec import wire
from migrate.codec.names import EVENT_LOG_NAMES
from migrate.events.track import MAX_TRACKED
from migrate.events.validate import check_event, check_run

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
#: What one event costs in memory besides its arrays (the dataclass and its small values).
EVENT_OVERHEAD = 2048

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
        #: Why the recording stopped early (a full disk...), or None: the run goes on
        #: without it and the caller names the file and the reason.
        self.error: str | None = None

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
        try:
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
        except OSError as exc:
            self._stop(exc)

    on_event = __call__

    def _stop(self, exc: OSError) -> None:
        """A write failed: stop recording. A file holding no whole event is removed;
        one that does is kept, readable as a recording cut short."""
        fh, self._fh = self._fh, None
        try:
            fh.close()
        except OSError:
            pass
        kept = self._head_written and self.events > 1
        if not kept:
            try:
                self.path.unlink()
            except OSError:
                pass
        self.error = (f"cannot write {self.path}: {exc.strerror or exc}; "
                      + (f"the recording stops after about {self.events - 1} events (xmig replay reads "
                         "it as cut short)" if kept else "the partial file was removed"))

    def close(self) -> None:
        if self._fh is None:
            return
        try:
            if not self._head_written:
                self._write_header()
            self._fh.write(_REC_HEAD.pack(0, 0, 0))
            self._fh.close()
        except OSError as exc:
            self._stop(exc)
            return
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


def memory_budget() -> int:
    """How many bytes a whole log may take once read: half of the memory the machine
    has available now, and half of what the process's address-space limit
    (``ulimit -v``) leaves. Every record's arrays are counted against it from their
    declared shapes before anything is expanded, so a small file of highly compressible
    records is refused in one line instead of ending in a MemoryError."""
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            avail = 8 << 30
    budget = avail // 2
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            used = 0
            with open("/proc/self/status", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("VmSize:"):
                        used = int(line.split()[1]) * 1024
                        break
            budget = min(budget, max(0, soft - used) // 2)
    except (ImportError, OSError, ValueError, IndexError):
        pass
    return max(budget, 64 << 20)


def _check_tree(v: Any, offsets: list, frame: memoryview, base: int) -> int:
    """Refuse, before decoding, a frame naming a type outside the events or holding an
    array whose runs expand beyond MAX_ARRAY_ELEMENTS. Returns the bytes its arrays
    take once expanded (from their declared shapes)."""
    total = 0
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
                total += math.prod(int(d) for d in sh) * dt.itemsize
            stack.extend(y for k, y in x.items() if k not in ("$a", "dt", "sh", "runs", "bytes"))
    return total


def _decode(frame: bytes, budget: "_Budget | None" = None) -> _events.Event:
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
    expands = _check_tree(head.get("v"), offsets, buf, end + _pad(end))
    if budget is not None:
        budget.spend(expands + EVENT_OVERHEAD)
    ev = wire.decode(frame, versions=wire.READABLE_VERSIONS)
    if not isinstance(ev, _events.Event):
        raise ValueError(f"record holds a {type(ev).__name__}, not an event")
    return ev


class _OverBudget(Exception):
    """The log's events would take more memory than ``memory_budget`` allows."""


class _Budget:
    """Bytes left for the events of one log (``memory_budget``), spent record by record."""

    def __init__(self, limit: int):
        self.limit, self.spent = int(limit), 0

    def spend(self, n: int) -> None:
        self.spent += int(n)
        if self.spent > self.limit:
            raise _OverBudget(f"the events read so far expand to {self.spent / (1 << 20):,.0f} MiB in memory, "
                              f"more than this machine allows a recording ({self.limit / (1 << 20):,.0f} MiB: "
                              "half of the memory available to this process); read it on a machine "
                              "with more memory")


def _ends_with_end_record(fh: BinaryIO, size: int, first: int) -> bool:
    """Whether the file closes with the recorder's end record (three zero words at its
    very end, past the header): then a record claiming to run past the end is damage
    inside the file, not a recording cut short."""
    if size - _REC_HEAD.size < first:
        return False
    here = fh.tell()
    fh.seek(size - _REC_HEAD.size)
    tail = fh.read(_REC_HEAD.size)
    fh.seek(here)
    return tail == bytes(_REC_HEAD.size)


def iter_event_log(path: str | Path, *, budget: int | None = None
                   ) -> tuple[dict[str, Any], Iterator[tuple[int, _events.Event | None]]]:
    """``(header, records)``: records yields ``(offset, event)`` and finally
    ``(offset, None)`` for the end record. ``budget``: the bytes all the events read
    may take in memory (``memory_budget()`` by default). Raises EventLogError."""
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
    closed = _ends_with_end_record(fh, size, pos)
    fh.seek(pos)
    spend = _Budget(memory_budget() if budget is None else budget)

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
                if n > MAX_FRAME_BYTES or raw_n > MAX_FRAME_BYTES:
                    # the recorder never writes such a length: damage, wherever the file ends
                    raise EventLogError(p, pos, f"damaged record header: it claims {max(n, raw_n)} bytes, "
                                                f"over the {MAX_FRAME_BYTES} a record may hold")
                if n > left:
                    if closed:
                        raise EventLogError(p, pos, f"damaged record header: a record of {n} bytes would run "
                                                    f"past the end of the file ({left} bytes left), which "
                                                    "ends with its end record")
                    raise EventLogError(p, pos, f"record of {n} bytes runs past the end of the file "
                                                f"({left} bytes left: the recording was cut short)")
                stored = fh.read(n)
                if zlib.crc32(stored) != crc:
                    raise EventLogError(p, pos, "record checksum mismatch (the file is corrupt)")
                try:
                    # the frame itself is held while it is decoded
                    spend.spend(raw_n)
                    # max_length bounds what a hostile stored block can expand to.
                    unz = zlib.decompressobj()
                    frame = unz.decompress(stored, raw_n)
                    if len(frame) != raw_n or unz.unconsumed_tail or not unz.eof:
                        raise ValueError("record does not unpack to its stated length")
                    spend.spent -= raw_n
                    ev = _decode(frame, spend)
                    del frame
                    check_event(ev)
                except _OverBudget as exc:
                    raise EventLogError(p, pos, str(exc)) from None
                except MemoryError:
                    raise EventLogError(p, pos, "out of memory while reading this record; read the "
                                                "recording on a machine with more memory") from None
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
        if not (partial and "cut short" in exc.what):
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
