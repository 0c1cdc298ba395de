"""The wire codec of the MQTT transport: one self-describing binary frame per message.

Xen has no such thing (libxenctrl calls are in-process); this is what lets the three
actors of the project card talk through a broker. A frame is::

    b"XMIG" | u8 protocol version | u8 flags (0) | u16 reserved | u32 header length
    | JSON header (UTF-8) | padding to 8 | blob 0 | padding | blob 1 | ...

The JSON header holds the message's tree of values; numpy arrays are not JSON lists
but references to raw little-endian blobs (dtype + shape), so a PAGE_DATA token array
of 1024 pages is 8 KiB of uint64. Long sorted integer
arrays made of a few contiguous runs (boot layouts, dirty bitmaps) travel as their
``[start, end)`` runs instead, and other 64-bit integer arrays whose values all fit in
32 bits (GFNs, PFNs) as 32-bit ones (``"nw"``), widened back on arrival.

Tags inside the tree (a JSON object whose single reserved key starts with ``$``):
``$a`` array, ``$s`` numpy scalar, ``$t`` tuple, ``$m`` dict with non-string keys,
``$e`` enum member that is not a string (an IntEnum: ``ShadowOp``, ``PFInfo``...),
``$c`` dataclass instance (by registered name), ``$x`` an exception (XenError keeps
its errno), ``$bm`` a DirtyBitmap (rebuilt as ``WireBitmap``).

Enums whose members are strings (``StrEnum``: an event's phase, outcome, op kind...)
carry no tag: a member is written as its plain string, as the field was before it had
an enum, and the dataclass that holds it turns the string back into the member in its
``__post_init__`` (``migrate.events.types``). So typing a field never changes a frame
or an event log, and frames and logs written before the enum decode to it. (A bare
string enum outside a dataclass decodes as its string.)
No pickle and no import: decoding never runs code from the peer; dataclasses and enums
are looked up in one table (``names.WIRE_NAMES``) of the project's message types by their stable names, and a frame
naming any other type is refused. A frame never allocates more than the bytes that
carried it justify: a plain array's blob is exactly its size, a run ``[start, end)``
stands for at most ``MAX_RUN`` elements (longer runs are sent as several), and one
frame decodes to at most ``MAX_DECODED_BYTES`` of arrays (``FrameTooLarge`` otherwise).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import struct
from typing import Any

import numpy as np

from hypervisor.abi import XenError

from migrate.codec import names


def _left_out(f: dataclasses.Field, x: Any) -> bool:
    """A field added after frames were recorded carries ``metadata={"wire": "when_set"}``
    and is left out of a frame while empty (its default), so a frame an earlier xmig
    wrote encodes again to the same bytes; decoding fills in the default."""
    if f.metadata.get("wire") != "when_set":
        return False
    return x is None or (np.size(x) == 0 if isinstance(x, np.ndarray) else len(x) == 0)

#: Bumped whenever a frame or a message changes incompatibly; both peers must agree.
#: (2: narrowed integer arrays; spans served ahead and speculated guest windows.)
PROTOCOL_VERSION = 2
#: Versions whose frames ``decode`` can read when asked to: a v1 frame is a v2 frame
#: without narrowed arrays, so an event log recorded by an earlier xmig still replays
#: (peers on a broker must speak PROTOCOL_VERSION itself).
READABLE_VERSIONS = (1, 2)
MAGIC = b"XMIG"
_HEAD = struct.Struct("<4sBBHI")
#: Arrays longer than this are checked for a compact run encoding.
RUNS_MIN_ELEMENTS = 4096
#: 64-bit integer arrays this long or longer whose values fit in 32 bits travel narrowed.
NARROW_MIN_ELEMENTS = 256
#: Most elements one ``[start, end)`` run may stand for (the encoder splits longer runs),
#: so a run of 16 bytes never decodes to more than 512 KiB of int64.
MAX_RUN = 1 << 16
#: Most bytes of arrays one frame may decode to (the largest honest message, a pass's
#: PFNs of a guest at the 16 Mi-page bitmap limit, is 128 MiB of int64).
MAX_DECODED_BYTES = 1 << 28
#: Deepest nesting of a frame's tree (the project's messages nest a handful of levels).
MAX_DEPTH = 64
#: dtype kinds an array on the wire may have: booleans, integers and floats.
_DTYPE_KINDS = "biuf"


class WireError(ValueError):
    """A frame that cannot be decoded (wrong magic, protocol version, unknown type)."""


class FrameTooLarge(WireError):
    """A frame whose arrays would decode to more than its bytes justify."""


class WireBitmap:
    """A DirtyBitmap as the toolstack receives it: the PFNs of the set bits below ``pages``."""

    __slots__ = ("pages", "_pfns")

    def __init__(self, pages: int, pfns: np.ndarray):
        self.pages = int(pages)
        self._pfns = np.asarray(pfns, dtype=np.int64)

    def pfns(self) -> np.ndarray:
        return self._pfns

    def count(self) -> int:
        return int(self._pfns.size)

    def to_bytes(self) -> bytes:
        """Xen's LSB-first bitmap of ``pages`` bits."""
        bits = np.zeros(((self.pages + 63) // 64) * 64, dtype=np.uint8)
        bits[self._pfns] = 1
        return np.packbits(bits, bitorder="little").tobytes()[: (self.pages + 7) // 8]

    def __eq__(self, other: object) -> bool:
        if not hasattr(other, "pfns") or not hasattr(other, "pages"):
            return NotImplemented
        return self.pages == int(other.pages) and np.array_equal(self._pfns, other.pfns())

    def __repr__(self) -> str:
        return f"WireBitmap(pages={self.pages}, count={self.count()})"


# ----------------------------------------------------------------------------- registry

#: wire name -> class, and back; filled from ``names.WIRE_NAMES`` on first use.
_TYPES: dict[str, type] = {}
_NAMES: dict[type, str] = {}


def _table() -> dict[str, type]:
    if not _TYPES:
        table = names.load_table()
        _NAMES.update({cls: name for name, cls in table.items()})
        _TYPES.update(table)
    return _TYPES


def type_name(cls: type) -> str:
    """The stable name a frame gives ``cls`` (``names.WIRE_NAMES``)."""
    _table()
    name = _NAMES.get(cls)
    if name is None:
        raise TypeError(f"{cls.__module__}.{cls.__qualname__} is not a registered message type "
                        "(add it to migrate/codec/names.py)")
    return name


def _lookup(name: str) -> type:
    cls = _table().get(name) if isinstance(name, str) else None
    if cls is None:
        # Never imported: a frame naming a module must not make the receiver run it.
        raise WireError(f"unknown type {str(name)[:80]!r} in a frame")
    return cls


# ----------------------------------------------------------------------------- encode


def _as_runs(a: np.ndarray) -> np.ndarray | None:
    """``(k, 2)`` runs of at most ``MAX_RUN`` elements when ``a`` is strictly increasing
    and runs save at least half."""
    if a.ndim != 1 or a.size < RUNS_MIN_ELEMENTS or a.dtype.kind not in "iu":
        return None
    if (a[1:64] <= a[:63]).any():
        return None            # not increasing (most arrays tell at once)
    d = np.diff(a)
    if (d <= 0).any():
        return None
    breaks = np.flatnonzero(d != 1) + 1
    if breaks.size * 4 > a.size:
        return None
    starts = np.concatenate(([a[0]], a[breaks]))
    ends = np.concatenate((a[breaks - 1], [a[-1]])) + 1
    lengths = (ends - starts).astype(np.int64)
    if (lengths > MAX_RUN).any():
        # Cut each run into pieces of MAX_RUN (the decoder refuses longer ones).
        pieces = (lengths + MAX_RUN - 1) // MAX_RUN
        idx = np.repeat(np.arange(starts.size), pieces)
        first = np.cumsum(pieces) - pieces
        starts = starts[idx] + ((np.arange(idx.size) - first[idx]) * MAX_RUN).astype(a.dtype)
        ends = np.minimum(starts + a.dtype.type(MAX_RUN), ends[idx])
    return np.stack([starts, ends], axis=1).astype(a.dtype)


class _Encoder:
    def __init__(self) -> None:
        self.blobs: list[bytes] = []

    def blob(self, a: np.ndarray) -> int:
        self.blobs.append(np.ascontiguousarray(a).tobytes())
        return len(self.blobs) - 1

    def array(self, a: np.ndarray) -> dict:
        if a.dtype.hasobject:
            raise TypeError("object arrays cannot go on the wire")
        le = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        a = a.astype(le, copy=False)
        runs = _as_runs(a)
        if runs is not None:
            return {"$a": self.blob(runs), "dt": a.dtype.str, "sh": list(a.shape), "runs": True}
        if a.dtype.kind in "iu" and a.dtype.itemsize == 8 and a.size >= NARROW_MIN_ELEMENTS:
            # 64-bit integers that all fit in 32 bits (GFNs, PFNs) travel in 4 bytes each.
            if int(a.min()) >= 0 and int(a.max()) <= 0xFFFFFFFF:
                return {"$a": self.blob(a.astype("<u4")), "dt": a.dtype.str, "sh": list(a.shape), "nw": "<u4"}
        return {"$a": self.blob(a), "dt": a.dtype.str, "sh": list(a.shape)}

    def value(self, v: Any) -> Any:
        if v is None or isinstance(v, bool):
            return v
        if isinstance(v, str):
            # A StrEnum member too: its plain string (its dataclass coerces it back).
            return v.value if isinstance(v, enum.Enum) else v
        if isinstance(v, enum.Enum):
            return {"$e": type_name(type(v)), "v": v.value}
        if isinstance(v, int):
            return int(v)
        if isinstance(v, float):
            return float(v)
        if isinstance(v, np.ndarray):
            return self.array(v)
        if isinstance(v, np.generic):
            return {"$s": v.dtype.str, "v": v.item()}
        if isinstance(v, (list, tuple)):
            items = [self.value(x) for x in v]
            return {"$t": items} if isinstance(v, tuple) else items
        if isinstance(v, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in v):
                return {k: self.value(x) for k, x in v.items()}
            return {"$m": [[self.value(k), self.value(x)] for k, x in v.items()]}
        if isinstance(v, (bytes, bytearray)):
            return {"$a": self.blob(np.frombuffer(bytes(v), dtype=np.uint8)), "dt": "|u1", "sh": [len(v)],
                    "bytes": True}
        if isinstance(v, XenError):
            return {"$x": "XenError", "errno": int(v.errno), "msg": _xen_message(v)}
        if isinstance(v, BaseException):
            return {"$x": type(v).__name__, "msg": str(v)}
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            cls = type(v)
            name = type_name(cls)
            return {"$c": name, "f": {f.name: self.value(x) for f in dataclasses.fields(v)
                                      if not _left_out(f, x := getattr(v, f.name))}}
        if callable(getattr(v, "pfns", None)) and hasattr(v, "pages"):
            return {"$bm": int(v.pages), "pfns": self.array(np.asarray(v.pfns(), dtype=np.int64))}
        raise TypeError(f"cannot put a {type(v).__name__} on the wire")


def _xen_message(exc: XenError) -> str:
    import errno as _errno

    text = str(exc)
    prefix = f"{_errno.errorcode.get(exc.errno, str(exc.errno))}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def encode(msg: Any) -> bytes:
    """One frame holding ``msg`` (any tree of the supported values)."""
    enc = _Encoder()
    tree = enc.value(msg)
    offsets = []
    pos = 0
    for b in enc.blobs:
        offsets.append([pos, len(b)])
        pos += (len(b) + 7) & ~7
    header = json.dumps({"v": tree, "b": offsets}, separators=(",", ":"), allow_nan=True).encode()
    pad_h = (-(_HEAD.size + len(header))) % 8
    parts = [_HEAD.pack(MAGIC, PROTOCOL_VERSION, 0, 0, len(header)), header, b"\0" * pad_h]
    for b in enc.blobs:
        parts.append(b)
        parts.append(b"\0" * ((-len(b)) % 8))
    return b"".join(parts)


# ----------------------------------------------------------------------------- decode


def _dtype(text: Any) -> np.dtype:
    try:
        dt = np.dtype(text) if isinstance(text, str) and len(text) <= 8 else None
    except TypeError:
        dt = None
    if dt is None or dt.kind not in _DTYPE_KINDS or dt.itemsize > 8:
        raise WireError(f"array dtype {str(text)[:20]!r} is not one the wire carries")
    return dt


def _shape(sh: Any) -> tuple[int, ...]:
    if not isinstance(sh, list) or len(sh) > 8 or not all(type(x) is int and x >= 0 for x in sh):
        raise WireError(f"bad array shape {str(sh)[:40]}")
    return tuple(sh)


class _Decoder:
    def __init__(self, buf: memoryview, base: int, offsets: list[list[int]]):
        self.buf = buf
        self.base = base
        self.offsets = offsets
        self.budget = MAX_DECODED_BYTES

    def _spend(self, nbytes: int) -> None:
        self.budget -= nbytes
        if self.budget < 0:
            raise FrameTooLarge(f"a frame's arrays would take more than {MAX_DECODED_BYTES} bytes")

    def array(self, d: dict) -> np.ndarray:
        idx = d["$a"]
        try:
            off, n = self.offsets[idx]
            off, n = int(off), int(n)
        except (IndexError, TypeError, ValueError):
            raise WireError(f"array blob {str(idx)[:20]!r} missing from the frame") from None
        dt = _dtype(d["dt"])
        start = self.base + off
        if off < 0 or n < 0 or start + n > len(self.buf):
            raise WireError("truncated frame")
        raw = self.buf[start:start + n]
        if d.get("bytes"):
            self._spend(n)
            return bytes(raw)
        shape = _shape(d["sh"])
        count = math.prod(shape)
        if d.get("runs"):
            if n % (2 * dt.itemsize) or dt.kind not in "iu" or len(shape) != 1:
                raise WireError("bad run-encoded array")
            runs = np.frombuffer(raw, dtype=dt).reshape(-1, 2).astype(np.int64)
            lengths = runs[:, 1] - runs[:, 0]
            # Each run non-empty and at most MAX_RUN long, runs in increasing order: the
            # array is then bounded by the bytes that carried it.
            if runs.size and ((lengths <= 0).any() or (lengths > MAX_RUN).any()
                              or (runs[1:, 0] < runs[:-1, 1]).any()):
                raise WireError("bad runs in a run-encoded array")
            total = int(lengths.sum())
            if total != count:
                raise WireError("run-encoded array does not match its shape")
            self._spend(total * dt.itemsize)
            if total == 0:
                return np.empty(0, dtype=dt)
            out = np.ones(total, dtype=dt)
            out[0] = runs[0, 0]
            ends = np.cumsum(lengths)[:-1]
            out[ends] = runs[1:, 0] - runs[:-1, 1] + 1
            return np.cumsum(out, dtype=dt)
        if "nw" in d:
            nw = _dtype(d["nw"])
            if nw.kind not in "iu" or dt.kind not in "iu" or nw.itemsize >= dt.itemsize or count * nw.itemsize != n:
                raise WireError("bad narrowed array")
            self._spend(count * dt.itemsize)
            return np.frombuffer(raw, dtype=nw, count=count).reshape(shape).astype(dt)
        if count * dt.itemsize != n:
            raise WireError("array blob size does not match its shape")
        self._spend(n)
        # A copy: receivers own their arrays (frombuffer over bytes would be read-only).
        return np.frombuffer(raw, dtype=dt, count=count).reshape(shape).copy()

    def value(self, v: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise WireError(f"a frame nests deeper than {MAX_DEPTH} levels")
        d = depth + 1
        if isinstance(v, list):
            return [self.value(x, d) for x in v]
        if not isinstance(v, dict):
            return v
        if not v or not next(iter(v)).startswith("$"):
            return {k: self.value(x, d) for k, x in v.items()}
        if "$a" in v:
            return self.array(v)
        if "$t" in v:
            return tuple(self.value(x, d) for x in v["$t"])
        if "$s" in v:
            return _dtype(v["$s"]).type(v["v"])
        if "$m" in v:
            return {self.value(k, d): self.value(x, d) for k, x in v["$m"]}
        if "$e" in v:
            cls = _lookup(v["$e"])
            if not (isinstance(cls, type) and issubclass(cls, enum.Enum)):
                raise WireError(f"{str(v['$e'])[:80]} is not an enum")
            return cls(v["v"])
        if "$bm" in v:
            pages = v["$bm"]
            pfns = self.array(v["pfns"])
            if (type(pages) is not int or not 0 <= pages < 1 << 52 or pfns.ndim != 1
                    or (pfns.size and (int(pfns.min()) < 0 or int(pfns.max()) >= pages))):
                raise WireError("bad dirty bitmap in a frame")
            return WireBitmap(pages, pfns)
        if "$x" in v:
            if v["$x"] == "XenError":
                return XenError(int(v["errno"]), str(v["msg"]))
            return RemoteError(f"{str(v['$x'])[:80]}: {v['msg']}")
        if "$c" in v:
            cls = _lookup(v["$c"])
            if not dataclasses.is_dataclass(cls):
                raise WireError(f"{str(v['$c'])[:80]} is not a dataclass")
            fields = {k: self.value(x, d) for k, x in v["f"].items()}
            init = {f.name: fields.pop(f.name) for f in dataclasses.fields(cls) if f.init and f.name in fields}
            known = {f.name for f in dataclasses.fields(cls)}
            if not set(fields) <= known:
                raise WireError(f"{v['$c']} has no field {sorted(set(fields) - known)[0][:40]!r}")
            obj = cls(**init)
            for k, x in fields.items():
                object.__setattr__(obj, k, x)
            return obj
        raise WireError(f"unknown tag {next(iter(v))[:20]!r} in a frame")


class RemoteError(Exception):
    """An exception raised by the peer that has no richer mapping (its type and message)."""


def decode(frame: bytes | bytearray | memoryview, *, versions: tuple[int, ...] = (PROTOCOL_VERSION,)) -> Any:
    """The message in ``frame`` (of one of the protocol ``versions``); raises WireError
    for a malformed or foreign frame."""
    buf = memoryview(frame)
    if len(buf) < _HEAD.size:
        raise WireError("frame shorter than its header")
    magic, version, _flags, _res, hlen = _HEAD.unpack_from(buf, 0)
    if magic != MAGIC:
        raise WireError("not an xmig frame (bad magic)")
    if version not in versions:
        raise WireError(f"peer speaks xmig wire protocol v{version}, this xmig speaks v{PROTOCOL_VERSION}: "
                        "run the same xmig version on every actor")
    end = _HEAD.size + hlen
    if end > len(buf):
        raise WireError("truncated frame header")
    try:
        head = json.loads(bytes(buf[_HEAD.size:end]))
    except (ValueError, RecursionError) as exc:
        raise WireError(f"bad frame header: {str(exc)[:80]}") from None
    if not isinstance(head, dict) or not isinstance(head.get("b", []), list):
        raise WireError("bad frame header: not an xmig message")
    base = end + ((-end) % 8)
    dec = _Decoder(buf, base, head.get("b", []))
    try:
        return dec.value(head["v"])
    except WireError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError) as exc:
        raise WireError(f"malformed frame: {str(exc)[:80]}") from None


def roundtrip(msg: Any) -> Any:
    """``decode(encode(msg))``: what the peer would see (used by the in-process transport's
    codec check and the tests)."""
    return decode(encode(msg))


__all__ = ["PROTOCOL_VERSION", "WireError", "FrameTooLarge", "WireBitmap", "RemoteError", "encode", "decode", "roundtrip",
           "type_name"]
