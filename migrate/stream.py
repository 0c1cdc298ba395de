"""Migration stream v2: the writer, the sinks, and a validating incremental reader.

Mirrors Xen's libxenguest stream format, ``docs/specs/libxc-migration-stream.pandoc``
("Revision 3") and ``tools/libs/guest/xg_sr_stream_format.h``: a big-endian image
header (marker, "XENF", version 3), a domain header (x86 HVM, page_shift 12), then
records of an 8-byte header (u32 type, u32 body_length) whose body is padded with
zeros to an 8-byte boundary (the padding is not counted in body_length). Bit 31 of a
record type marks it optional. PAGE_DATA carries ``count`` pfn words (type nibble in
bits 63..60, PFN in bits 51..0) followed by one 4 KiB page for each pfn word whose
type carries data.

The writer (``xg_sr_save.c`` / ``xg_sr_save_x86_hvm.c``) expands each frame's 64-bit
content token to 4 KiB (``hypervisor.content.expand_tokens``) into one reused batch
buffer, so a PAGE_DATA record costs one vectorised XOR and one ``write``. A counting-only
sink (``NullSink``) never expands anything: huge guests cost only arithmetic.

The reader validates as ``xg_sr_restore.c`` does (``read_headers``, ``read_record``,
``handle_page_data``, ``process_record``) and turns every malformed input into a
``StreamError`` naming the record index and byte offset. It is a push parser
(``StreamParser.feed``) so the same code serves a file, a TCP peer and an in-process
``CallbackSink``; it never blocks and so never hangs.
"""

from __future__ import annotations

import errno as _errno
import hashlib
import io
import os
import socket
import struct
import tempfile
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import numpy as np

from hypervisor.abi import (
    MAX_BATCH_SIZE,
    PAGE_SHIFT,
    PAGE_SIZE,
    PFINFO_HAS_DATA,
    PFINFO_KNOWN,
    PFInfo,
)
from hypervisor.content import expand_tokens, pages_to_tokens

# --------------------------------------------------------------------------------------
# Format constants (xg_sr_stream_format.h)
# --------------------------------------------------------------------------------------

IHDR_MARKER = 0xFFFFFFFFFFFFFFFF
IHDR_ID = 0x58454E46  # "XENF"
IHDR_VERSION = 3
IHDR_OPT_BIG_ENDIAN = 1 << 0
IHDR_SIZE = 24
DHDR_SIZE = 16
DHDR_TYPE_X86_PV = 1
DHDR_TYPE_X86_HVM = 2
RHDR_SIZE = 8
REC_ALIGN = 8
#: xg_sr_stream_format.h: "Somewhat arbitrary - 128MB".
REC_LENGTH_MAX = 128 << 20
REC_TYPE_OPTIONAL = 0x80000000

PAGE_DATA_PFN_MASK = 0x000FFFFFFFFFFFFF
PAGE_DATA_TYPE_MASK = 0xF000000000000000
PAGE_DATA_TYPE_SHIFT = 60

_IHDR = struct.Struct(">QIIHHI")
_DHDR = struct.Struct("<IHHII")
_RHDR = struct.Struct("<II")
_TSC = struct.Struct("<IIQII")
_U32PAIR = struct.Struct("<II")
_CPUID_LEAF = struct.Struct("<IIIIII")  # xen_cpuid_leaf_t
_MSR_ENTRY = struct.Struct("<IIQ")      # xen_msr_entry_t


class RecType(IntEnum):
    """REC_TYPE_* (xg_sr_stream_format.h)."""

    END = 0x00
    PAGE_DATA = 0x01
    X86_PV_INFO = 0x02
    X86_PV_P2M_FRAMES = 0x03
    X86_PV_VCPU_BASIC = 0x04
    X86_PV_VCPU_EXTENDED = 0x05
    X86_PV_VCPU_XSAVE = 0x06
    SHARED_INFO = 0x07
    X86_TSC_INFO = 0x08
    HVM_CONTEXT = 0x09
    HVM_PARAMS = 0x0A
    TOOLSTACK = 0x0B
    X86_PV_VCPU_MSRS = 0x0C
    VERIFY = 0x0D
    CHECKPOINT = 0x0E
    CHECKPOINT_DIRTY_PFN_LIST = 0x0F
    STATIC_DATA_END = 0x10
    X86_CPUID_POLICY = 0x11
    X86_MSR_POLICY = 0x12


#: Records an x86 HVM restore handles (xg_sr_restore.c process_record plus
#: xg_sr_restore_x86_hvm.c). Any other known mandatory type is "not handled": fatal.
HVM_HANDLED = frozenset({
    RecType.END, RecType.PAGE_DATA, RecType.VERIFY, RecType.STATIC_DATA_END,
    RecType.X86_TSC_INFO, RecType.HVM_CONTEXT, RecType.HVM_PARAMS,
    RecType.X86_CPUID_POLICY, RecType.X86_MSR_POLICY,
})
_EMPTY_BODY = frozenset({RecType.END, RecType.VERIFY, RecType.STATIC_DATA_END, RecType.CHECKPOINT})

_VALID_TYPES = frozenset(int(t) for t in RecType)


def rec_type_name(rtype: int) -> str:
    """``rec_type_to_str``: the name of a record type, or its hex value when unknown."""
    if rtype in _VALID_TYPES:
        return RecType(rtype).name
    opt = " (optional)" if rtype & REC_TYPE_OPTIONAL else ""
    return f"UNKNOWN_{rtype:#010x}{opt}"


class StreamError(Exception):
    """A stream could not be written or is malformed; ``offset`` and ``record_index``
    locate the problem when known (offset of the record header, index from 0 after
    the two headers)."""

    def __init__(self, message: str, *, offset: int | None = None, record_index: int | None = None):
        self.offset = offset
        self.record_index = record_index
        super().__init__(message)


# --------------------------------------------------------------------------------------
# PFN words
# --------------------------------------------------------------------------------------


def make_pfn_words(pfns: np.ndarray, nibbles: np.ndarray) -> np.ndarray:
    """PAGE_DATA pfn words: ``(nibble << 60) | pfn`` as uint64 (vectorised)."""
    pfns = np.asarray(pfns)
    nibbles = np.asarray(nibbles)
    if pfns.shape != nibbles.shape:
        raise ValueError(f"pfns ({pfns.shape}) and nibbles ({nibbles.shape}) differ in shape")
    if pfns.size and (int(pfns.min()) < 0 or int(pfns.max()) > PAGE_DATA_PFN_MASK):
        raise ValueError("PFN outside the 52-bit PAGE_DATA_PFN_MASK")
    if nibbles.size and int(nibbles.max()) > 0xF:
        raise ValueError("type nibble above 0xF")
    return (nibbles.astype(np.uint64) << np.uint64(PAGE_DATA_TYPE_SHIFT)) | pfns.astype(np.uint64)


def split_pfn_words(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``make_pfn_words``: ``(pfns int64, nibbles uint8)``; bits 59..52 are
    reserved and ignored, as the restore side masks them off."""
    words = np.asarray(words, dtype=np.uint64)
    pfns = (words & np.uint64(PAGE_DATA_PFN_MASK)).astype(np.int64)
    nibbles = (words >> np.uint64(PAGE_DATA_TYPE_SHIFT)).astype(np.uint8)
    return pfns, nibbles


# --------------------------------------------------------------------------------------
# Typed record payloads
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageHeader:
    marker: int = IHDR_MARKER
    id: int = IHDR_ID
    version: int = IHDR_VERSION
    options: int = 0


@dataclass(frozen=True, slots=True)
class DomainHeader:
    type: int = DHDR_TYPE_X86_HVM
    page_shift: int = PAGE_SHIFT
    xen_major: int = 4
    xen_minor: int = 20


@dataclass(frozen=True, slots=True)
class TscInfo:
    """struct xc_sr_rec_x86_tsc_info. ``mode`` 0 is TSC_MODE_DEFAULT."""

    mode: int = 0
    khz: int = 2_400_000
    nsec: int = 0
    incarnation: int = 0

    def pack(self) -> bytes:
        return _TSC.pack(self.mode, self.khz, self.nsec, self.incarnation, 0)

    @classmethod
    def unpack(cls, body: bytes) -> "TscInfo":
        mode, khz, nsec, inc, _res = _TSC.unpack(body)
        return cls(mode, khz, nsec, inc)


def pack_hvm_params(params: Iterable[tuple[int, int]]) -> bytes:
    """struct xc_sr_rec_hvm_params: u32 count, u32 reserved, {u64 index, u64 value}[]."""
    params = list(params)
    arr = np.array(params, dtype="<u8").reshape(-1, 2)
    return _U32PAIR.pack(len(params), 0) + arr.tobytes()


def unpack_hvm_params(body: bytes) -> list[tuple[int, int]]:
    count = _U32PAIR.unpack_from(body, 0)[0]
    arr = np.frombuffer(body, dtype="<u8", count=2 * count, offset=8).reshape(-1, 2)
    return [(int(i), int(v)) for i, v in arr]


# A plausible, fixed CPU policy for an x86 HVM guest (xen_cpuid_leaf_t entries,
# leaf/subleaf ordered as xc_get_cpu_policy serialises them; XEN_CPUID_NO_SUBLEAF
# for leaves without subleaves).
XEN_CPUID_NO_SUBLEAF = 0xFFFFFFFF
_DEFAULT_CPUID = (
    (0x00000000, XEN_CPUID_NO_SUBLEAF, 0x0000000D, 0x756E6547, 0x6C65746E, 0x49656E69),  # GenuineIntel
    (0x00000001, XEN_CPUID_NO_SUBLEAF, 0x000906EA, 0x00010800, 0xF6FA3203, 0x178BFBFF),
    (0x00000007, 0x00000000, 0x00000000, 0x009C27AB, 0x00000000, 0xBC000400),
    (0x0000000D, 0x00000000, 0x00000007, 0x00000340, 0x00000340, 0x00000000),
    (0x0000000D, 0x00000001, 0x0000000F, 0x00000000, 0x00000000, 0x00000000),
    (0x80000000, XEN_CPUID_NO_SUBLEAF, 0x80000008, 0x00000000, 0x00000000, 0x00000000),
    (0x80000001, XEN_CPUID_NO_SUBLEAF, 0x00000000, 0x00000000, 0x00000121, 0x2C100800),
    (0x80000008, XEN_CPUID_NO_SUBLEAF, 0x00003027, 0x00000000, 0x00000000, 0x00000000),
)
_DEFAULT_MSR = (
    (0x000000CE, 0, 0x0000000080000000),  # MSR_INTEL_PLATFORM_INFO: CPUID faulting
    (0x0000010A, 0, 0x000000000000000B),  # MSR_ARCH_CAPABILITIES
)

#: HVM_PARAM_* indices Xen's write_hvm_params sends (xen/include/public/hvm/params.h).
HVM_PARAM_STORE_PFN = 1
HVM_PARAM_IOREQ_PFN = 5
HVM_PARAM_BUFIOREQ_PFN = 6
HVM_PARAM_IDENT_PT = 12
HVM_PARAM_CONSOLE_PFN = 17
HVM_PARAM_ACPI_IOPORTS_LOCATION = 19
HVM_PARAM_NR_IOREQ_SERVER_PAGES = 33


def default_cpuid_policy() -> bytes:
    """A deterministic, plausible X86_CPUID_POLICY body (array of xen_cpuid_leaf_t)."""
    return b"".join(_CPUID_LEAF.pack(*leaf) for leaf in _DEFAULT_CPUID)


def default_msr_policy() -> bytes:
    """A deterministic, plausible X86_MSR_POLICY body (array of xen_msr_entry_t)."""
    return b"".join(_MSR_ENTRY.pack(*e) for e in _DEFAULT_MSR)


def default_hvm_params(max_gpfn: int = 0xFEFFF) -> list[tuple[int, int]]:
    """HVM params a freshly built HVM guest has non-zero (special pages below 4 GiB)."""
    special = 0xFEFF0
    return [
        (HVM_PARAM_STORE_PFN, special + 0x1),
        (HVM_PARAM_IOREQ_PFN, special),
        (HVM_PARAM_BUFIOREQ_PFN, special + 0x2),
        (HVM_PARAM_IDENT_PT, 0xFEFFD000),
        (HVM_PARAM_CONSOLE_PFN, special + 0x3),
        (HVM_PARAM_ACPI_IOPORTS_LOCATION, 1),
        (HVM_PARAM_NR_IOREQ_SERVER_PAGES, 8),
    ]


HVM_SAVE_MAGIC = 0x54381286


def default_hvm_context(nr_vcpus: int = 1, gtsc_khz: int = 2_400_000) -> bytes:
    """A plausible HVM_CONTEXT blob: hvm_save_descriptor-framed HEADER (typecode 1,
    magic 0x54381286, version 1), one zero-filled CPU record (typecode 2) per vCPU,
    and the END descriptor (typecode 0)."""
    out = bytearray()
    hdr = struct.pack("<IIQII", HVM_SAVE_MAGIC, 1, 0, 0x000906EA, gtsc_khz)
    out += struct.pack("<HHI", 1, 0, len(hdr)) + hdr
    cpu_len = 1024  # struct hvm_hw_cpu is ~1 KiB; contents do not matter to the model
    for v in range(nr_vcpus):
        out += struct.pack("<HHI", 2, v, cpu_len) + bytes(cpu_len)
    out += struct.pack("<HHI", 0, 0, 0)
    return bytes(out)


def check_hvm_context(blob: bytes) -> str | None:
    """Why ``blob`` is not a loadable HVM context (None when it is), checking the
    framing Xen's ``hvm_load`` checks when the toolstack calls
    xc_domain_hvm_setcontext: a HEADER descriptor first (typecode 1, magic
    0x54381286), descriptors that fit the blob, and a final END descriptor (typecode 0)
    exactly at its end."""
    n = len(blob)
    if n < 8 + 24:
        return f"HVM context of {n} bytes is too short for its HEADER"
    code, _inst, length = struct.unpack_from("<HHI", blob, 0)
    if code != 1 or length < 24:
        return f"HVM context does not start with a HEADER descriptor (typecode {code}, length {length})"
    magic = struct.unpack_from("<I", blob, 8)[0]
    if magic != HVM_SAVE_MAGIC:
        return f"HVM context HEADER has bad magic {magic:#010x} (expected {HVM_SAVE_MAGIC:#010x})"
    off = 0
    while off + 8 <= n:
        code, _inst, length = struct.unpack_from("<HHI", blob, off)
        if code == 0:
            if length != 0 or off + 8 != n:
                return f"HVM context END descriptor at byte {off} is not the end of the blob ({n} bytes)"
            return None
        off += 8 + length
        if off > n:
            return f"HVM context descriptor (typecode {code}) overruns the blob ({n} bytes)"
    return "HVM context did not end with a null (END) descriptor"


# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class Record:
    """One parsed (or to-be-applied) record.

    For PAGE_DATA, ``body`` is empty and the content is in ``pfns`` (int64),
    ``nibbles`` (uint8 PFInfo type per pfn word) and ``tokens`` (uint64, one per
    data-carrying entry, in order). ``index``/``offset`` locate it in a stream
    (-1 for records built in-process).
    """

    type: int
    body: bytes = b""
    pfns: np.ndarray | None = None
    nibbles: np.ndarray | None = None
    tokens: np.ndarray | None = None
    length: int = 0
    index: int = -1
    offset: int = -1
    corrupt_pfns: np.ndarray | None = None

    @property
    def name(self) -> str:
        return rec_type_name(self.type)

    @classmethod
    def page_data(cls, pfns, nibbles, tokens) -> "Record":
        pfns = np.asarray(pfns, dtype=np.int64).reshape(-1)
        nibbles = np.asarray(nibbles, dtype=np.uint8).reshape(-1)
        tokens = np.asarray(tokens, dtype=np.uint64).reshape(-1)
        n_data = int(np.count_nonzero(PFINFO_HAS_DATA[nibbles & 0xF]))
        return cls(RecType.PAGE_DATA, pfns=pfns, nibbles=nibbles, tokens=tokens,
                   length=8 + 8 * pfns.size + PAGE_SIZE * n_data)

    @classmethod
    def simple(cls, rtype: int, body: bytes = b"") -> "Record":
        return cls(int(rtype), body=bytes(body), length=len(body))

    def tsc_info(self) -> TscInfo:
        return TscInfo.unpack(self.body)

    def hvm_params(self) -> list[tuple[int, int]]:
        return unpack_hvm_params(self.body)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        if self.type != other.type or self.body != other.body:
            return False
        for a, b in ((self.pfns, other.pfns), (self.nibbles, other.nibbles), (self.tokens, other.tokens)):
            if (a is None) != (b is None):
                return False
            if a is not None and not np.array_equal(a, b):
                return False
        return True

    def __repr__(self) -> str:
        if self.type == RecType.PAGE_DATA and self.pfns is not None:
            return f"Record(PAGE_DATA, count={self.pfns.size}, data={0 if self.tokens is None else self.tokens.size}, index={self.index})"
        return f"Record({self.name}, {len(self.body)} bytes, index={self.index})"


def _pad(n: int) -> int:
    return (-n) & (REC_ALIGN - 1)


def check_page_data(pfns: np.ndarray, nibbles: np.ndarray, n_tokens: int | None, *,
                    pfn_limit: int | None = None, where: str = "PAGE_DATA") -> np.ndarray:
    """handle_page_data's checks on decoded pfn words; returns the has-data mask.
    Raises StreamError on count 0, unknown type nibble, PFN past ``pfn_limit`` or a
    token count that does not match the data-carrying entries."""
    if pfns.size < 1:
        raise StreamError(f"{where}: expected at least 1 pfn in PAGE_DATA record")
    if pfns.shape != nibbles.shape:
        raise StreamError(f"{where}: {pfns.size} pfns but {nibbles.size} types")
    bad_pfn = (pfns < 0) | (pfns > PAGE_DATA_PFN_MASK)
    if pfn_limit is not None:
        bad_pfn |= pfns >= pfn_limit
    if bad_pfn.any():
        i = int(np.argmax(bad_pfn))
        lim = f" (limit {pfn_limit:#x})" if pfn_limit is not None else ""
        raise StreamError(f"{where}: pfn {int(pfns[i]):#x} (index {i}) outside domain maximum{lim}")
    nib = nibbles.astype(np.intp)
    bad = (nib > 0xF)
    if not bad.any():
        bad = ~PFINFO_KNOWN[nib]
    if bad.any():
        i = int(np.argmax(bad))
        raise StreamError(f"{where}: unknown or reserved page type {int(nibbles[i]):#x} for pfn "
                          f"{int(pfns[i]):#x} (index {i})")
    has = PFINFO_HAS_DATA[nib]
    if n_tokens is not None:
        n = int(np.count_nonzero(has))
        if n != n_tokens:
            raise StreamError(f"{where}: {n} data-carrying entries but {n_tokens} page tokens")
    return has


# --------------------------------------------------------------------------------------
# Sinks
# --------------------------------------------------------------------------------------


class Sink:
    """Where a stream's bytes go. ``write`` receives a bytes-like object that is only
    valid for the duration of the call (the writer reuses its batch buffer)."""

    #: True when the sink only counts bytes: the writer then never expands pages.
    counting_only = False
    #: True when ``write`` may run on the writer's background thread (it touches no
    #: simulation state), letting page expansion overlap the system call.
    background_ok = False
    #: True when the sink also wants every record in structured form (``put_record``),
    #: e.g. an in-process restore that needs no stream bytes.
    accepts_records = False
    #: sha256 hex digest of the bytes written, when the sink computes one.
    sha256: str | None = None

    def put_record(self, record: "Record") -> None:
        """Receive one record in structured form (only if ``accepts_records``)."""

    def __init__(self) -> None:
        self.bytes_written = 0
        self.closed = False

    def write(self, data) -> None:
        raise NotImplementedError

    def count(self, nbytes: int) -> None:
        """Account for ``nbytes`` without data (counting-only sinks)."""
        raise StreamError(f"{type(self).__name__} needs real bytes")

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class NullSink(Sink):
    """Writes nowhere but counts every byte the stream would have had."""

    counting_only = True

    def write(self, data) -> None:
        self.bytes_written += memoryview(data).nbytes

    def count(self, nbytes: int) -> None:
        self.bytes_written += int(nbytes)


class FileSink(Sink):
    """Writes to a temporary name beside ``path`` and renames it into place on a
    successful ``close``; ``abort`` (or an error) removes it, so a half-written stream
    is never left under the final name."""

    def __init__(self, path: str | os.PathLike, *, fsync: bool = False, hash: bool = False):
        super().__init__()
        self.path = Path(path)
        self._fsync = fsync
        self._hash = hashlib.sha256() if hash else None
        parent = self.path.parent if str(self.path.parent) else Path(".")
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".partial", dir=parent)
        except OSError as e:
            raise StreamError(f"cannot create stream file {self.path}: {e.strerror or e}") from None
        self.tmp_path = Path(tmp)
        self._f: BinaryIO | None = os.fdopen(fd, "wb")

    background_ok = True

    def write(self, data) -> None:
        if self._f is None:
            raise StreamError(f"stream file {self.path} is already closed")
        try:
            self._f.write(data)
        except OSError as e:
            self.abort()
            raise StreamError(f"cannot write stream file {self.path}: {e.strerror or e}") from None
        if self._hash is not None:
            self._hash.update(data)
        self.bytes_written += memoryview(data).nbytes

    def close(self) -> None:
        if self._f is None:
            return
        f, self._f = self._f, None
        try:
            f.flush()
            if self._fsync:
                os.fsync(f.fileno())
            f.close()
            os.replace(self.tmp_path, self.path)
            if self._hash is not None:
                self.sha256 = self._hash.hexdigest()
        except OSError as e:
            self._remove_tmp()
            raise StreamError(f"cannot finish stream file {self.path}: {e.strerror or e}") from None
        self.closed = True

    def abort(self) -> None:
        if self._f is not None:
            f, self._f = self._f, None
            try:
                f.close()
            except OSError:
                pass
            self._remove_tmp()
        self.closed = True

    def _remove_tmp(self) -> None:
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass


class TcpSink(Sink):
    """A blocking TCP connection to a receiver (``xmig receive``). ``timeout`` bounds
    connecting and each send, so a stalled peer gives an error instead of a hang.
    Do not drive it from the event loop that runs the receiver in the same process
    (run the writer in a thread, e.g. ``asyncio.to_thread``)."""

    def __init__(self, host: str, port: int, *, timeout: float | None = 30.0):
        super().__init__()
        self.host, self.port = host, int(port)
        try:
            self._sock: socket.socket | None = socket.create_connection((host, self.port), timeout=timeout)
        except OSError as e:
            raise StreamError(f"cannot connect to tcp://{host}:{port}: {_oserror_text(e)}") from None
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    background_ok = True

    def write(self, data) -> None:
        if self._sock is None:
            raise StreamError(f"connection to tcp://{self.host}:{self.port} is closed")
        try:
            self._sock.sendall(data)
        except OSError as e:
            self.abort()
            raise StreamError(f"connection to tcp://{self.host}:{self.port} lost: {_oserror_text(e)}") from None
        self.bytes_written += memoryview(data).nbytes

    def close(self) -> None:
        if self._sock is None:
            return
        sock, self._sock = self._sock, None
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        sock.close()
        self.closed = True

    def abort(self) -> None:
        if self._sock is not None:
            sock, self._sock = self._sock, None
            sock.close()
        self.closed = True


class TeeSink(Sink):
    """Fans the stream out to several sinks; counting-only if they all are."""

    def __init__(self, *sinks: Sink):
        super().__init__()
        if len(sinks) == 1 and isinstance(sinks[0], (list, tuple)):
            sinks = tuple(sinks[0])
        self.sinks = list(sinks)
        self.counting_only = all(s.counting_only for s in self.sinks)
        self.background_ok = all(s.background_ok or s.counting_only for s in self.sinks)
        self.accepts_records = any(s.accepts_records for s in self.sinks)

    def put_record(self, record: "Record") -> None:
        for s in self.sinks:
            if s.accepts_records:
                s.put_record(record)

    @property
    def sha256(self) -> str | None:  # type: ignore[override]
        return next((s.sha256 for s in self.sinks if s.sha256), None)

    def write(self, data) -> None:
        for s in self.sinks:
            s.write(data)
        self.bytes_written += memoryview(data).nbytes

    def count(self, nbytes: int) -> None:
        for s in self.sinks:
            s.count(nbytes)
        self.bytes_written += int(nbytes)

    def close(self) -> None:
        for s in self.sinks:
            s.close()
        self.closed = True

    def abort(self) -> None:
        for s in self.sinks:
            s.abort()
        self.closed = True


class CallbackSink(Sink):
    """Feeds the bytes to an in-process consumer (e.g. ``Restorer.feed``).
    ``copy=True`` hands the consumer its own ``bytes``; ``copy=False`` hands a
    memoryview valid only during the call (``StreamParser.feed`` copies anyway)."""

    def __init__(self, fn: Callable[[Any], Any], *, copy: bool = True, on_close: Callable[[], Any] | None = None):
        super().__init__()
        self._fn = fn
        self._copy = copy
        self._on_close = on_close

    def write(self, data) -> None:
        self._fn(bytes(data) if self._copy else memoryview(data))
        self.bytes_written += memoryview(data).nbytes

    def close(self) -> None:
        if not self.closed and self._on_close is not None:
            self._on_close()
        self.closed = True


class RecordSink(Sink):
    """Counting-only sink that hands every record, structured, to ``fn`` (e.g.
    ``Restorer.apply``): an in-process restore with no page expansion at all."""

    counting_only = True
    accepts_records = True

    def __init__(self, fn: Callable[["Record"], Any], xtab_run: Callable[[int, int, int], Any] | None = None):
        super().__init__()
        self._fn = fn
        self._xtab_run = xtab_run

    def write(self, data) -> None:
        self.bytes_written += memoryview(data).nbytes

    def count(self, nbytes: int) -> None:
        self.bytes_written += int(nbytes)

    def put_record(self, record: "Record") -> None:
        self._fn(record)

    def put_xtab_run(self, lo: int, hi: int, records: int) -> None:
        """``records`` PAGE_DATA records of XTAB entries for PFNs [lo, hi)."""
        if self._xtab_run is not None:
            self._xtab_run(lo, hi, records)
            return
        step = MAX_BATCH_SIZE
        for a in range(lo, hi, step):
            pfns = np.arange(a, min(a + step, hi), dtype=np.int64)
            self._fn(Record.page_data(pfns, np.full(pfns.size, PFInfo.XTAB, dtype=np.uint8),
                                      np.empty(0, dtype=np.uint64)))


def _oserror_text(e: OSError) -> str:
    if isinstance(e, socket.timeout) or isinstance(e, TimeoutError):
        return "timed out"
    if e.errno == _errno.ECONNREFUSED:
        return "connection refused"
    return e.strerror or str(e) or type(e).__name__


# --------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------


class StreamWriter:
    """Writes a migration v2 stream (x86 HVM) to a ``Sink``, as ``xg_sr_save.c`` does.

    Order of a save: ``write_image_header``, ``write_domain_header``,
    ``write_static_data``, ``write_page_data`` (many), ``write_end_of_checkpoint``,
    optionally ``write_verify`` + ``write_page_data``, ``write_end``, ``close``.
    """

    _BATCH_BYTES = RHDR_SIZE + 8 + 8 * MAX_BATCH_SIZE + PAGE_SIZE * MAX_BATCH_SIZE

    def __init__(self, sink: Sink):
        self.sink = sink
        self.bytes_written = 0
        self.records_written: Counter[RecType] = Counter()
        self.pfns_written = 0          # pfn words in PAGE_DATA records
        self.pages_written = 0         # 4 KiB data pages in PAGE_DATA records
        self.page_data_bytes = 0       # bytes of PAGE_DATA records (headers included)
        self._ended = False
        self._counting = bool(getattr(sink, "counting_only", False))
        self._records = bool(getattr(sink, "accepts_records", False))
        # Two batch buffers: while the background thread writes one, the next batch is
        # expanded into the other (numpy and write() both release the GIL).
        self._background = (not self._counting) and bool(getattr(sink, "background_ok", False))
        self._bufs: list[np.ndarray] = []
        self._pending: list[Future | None] = [None, None]
        self._next = 0
        self._executor: ThreadPoolExecutor | None = None

    # ---- plumbing ----------------------------------------------------------------

    def _emit(self, data) -> None:
        if self._counting:
            self.sink.count(len(data))
        else:
            self.flush()
            self.sink.write(data)
        self.bytes_written += len(data)

    def flush(self) -> None:
        """Wait for background page writes; re-raises the first write error."""
        for i, fut in enumerate(self._pending):
            if fut is not None:
                self._pending[i] = None
                fut.result()

    def _buffer(self) -> tuple[int, np.ndarray]:
        i = self._next
        self._next = (i + 1) % len(self._pending)
        fut = self._pending[i]
        if fut is not None:
            self._pending[i] = None
            fut.result()
        if not self._bufs:
            self._bufs = [np.empty(self._BATCH_BYTES, dtype=np.uint8)
                          for _ in range(len(self._pending) if self._background else 1)]
        return i, self._bufs[i % len(self._bufs)]

    def _submit(self, i: int, view) -> None:
        if self._background:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xmig-stream")
            self._pending[i] = self._executor.submit(self.sink.write, view)
        else:
            self.sink.write(view)

    def _shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def write_record(self, rtype: int, body: bytes = b"") -> int:
        """Write one record (header, body, zero padding); returns its size in bytes.
        Refuses bodies over REC_LENGTH_MAX as ``write_split_record`` does."""
        if self._ended:
            raise StreamError(f"cannot write {rec_type_name(rtype)}: the stream already has its END record")
        body = bytes(body)
        if len(body) > REC_LENGTH_MAX:
            raise StreamError(f"{rec_type_name(rtype)} record body of {len(body)} bytes exceeds "
                              f"REC_LENGTH_MAX ({REC_LENGTH_MAX >> 20} MiB)")
        rec = _RHDR.pack(int(rtype), len(body)) + body + bytes(_pad(len(body)))
        self._emit(rec)
        if self._records:
            self.sink.put_record(Record.simple(rtype, body))
        try:
            self.records_written[RecType(rtype)] += 1
        except ValueError:
            self.records_written[rtype] += 1  # type: ignore[index]
        if rtype == RecType.END:
            self._ended = True
        return len(rec)

    # ---- headers and static data ------------------------------------------------------

    def write_image_header(self) -> None:
        """Image header, big-endian (``htonl``/``htons`` in write_headers)."""
        self._emit(_IHDR.pack(IHDR_MARKER, IHDR_ID, IHDR_VERSION, 0, 0, 0))

    def write_domain_header(self, xen_major: int = 4, xen_minor: int = 20) -> None:
        """Domain header: x86 HVM (type 2), page_shift 12."""
        self._emit(_DHDR.pack(DHDR_TYPE_X86_HVM, PAGE_SHIFT, 0, xen_major, xen_minor))

    def write_static_data(self, cpuid_policy: bytes | None = None, msr_policy: bytes | None = None) -> None:
        """X86_CPUID_POLICY, X86_MSR_POLICY (write_x86_cpu_policy_records), STATIC_DATA_END."""
        cpuid = default_cpuid_policy() if cpuid_policy is None else bytes(cpuid_policy)
        msr = default_msr_policy() if msr_policy is None else bytes(msr_policy)
        if len(cpuid) % _CPUID_LEAF.size:
            raise StreamError(f"X86_CPUID_POLICY of {len(cpuid)} bytes is not a whole number of "
                              f"xen_cpuid_leaf_t ({_CPUID_LEAF.size} bytes)")
        if len(msr) % _MSR_ENTRY.size:
            raise StreamError(f"X86_MSR_POLICY of {len(msr)} bytes is not a whole number of "
                              f"xen_msr_entry_t ({_MSR_ENTRY.size} bytes)")
        self.write_record(RecType.X86_CPUID_POLICY, cpuid)
        self.write_record(RecType.X86_MSR_POLICY, msr)
        self.write_record(RecType.STATIC_DATA_END)

    # ---- memory --------------------------------------------------------------------

    #: Batches of an XTAB run written per write_page_data call when bytes are produced.
    _XTAB_CHUNK_BATCHES = 64

    def write_xtab_run(self, lo: int, hi: int) -> int:
        """PAGE_DATA records of XTAB entries for every PFN in [lo, hi), in batches of
        1024 starting at ``lo``: what Xen's saver writes while it walks a hole. A
        counting sink gets the byte count without any array being built; a record sink
        gets one ``put_xtab_run`` call. Returns the bytes written."""
        n = int(hi) - int(lo)
        if n <= 0:
            return 0
        if not self._counting:
            total = 0
            step = MAX_BATCH_SIZE * self._XTAB_CHUNK_BATCHES
            for a in range(int(lo), int(hi), step):
                pfns = np.arange(a, min(a + step, int(hi)), dtype=np.int64)
                total += self.write_page_data(pfns, np.full(pfns.size, PFInfo.XTAB, dtype=np.uint8),
                                              np.empty(0, dtype=np.uint64))
            return total
        if self._ended:
            raise StreamError("cannot write PAGE_DATA: the stream already has its END record")
        full, rest = divmod(n, MAX_BATCH_SIZE)
        per_full = RHDR_SIZE + 8 + 8 * MAX_BATCH_SIZE
        total = full * per_full + ((RHDR_SIZE + 8 + 8 * rest) if rest else 0)
        nrec = full + (1 if rest else 0)
        self.records_written[RecType.PAGE_DATA] += nrec
        self.pfns_written += n
        self.page_data_bytes += total
        if self._records:
            self.sink.put_xtab_run(int(lo), int(hi), nrec)
        self.sink.count(total)
        self.bytes_written += total
        return total


    def write_page_data(self, pfns, nibbles, tokens) -> int:
        """Write PAGE_DATA records for ``pfns`` (one per batch of at most 1024 PFNs).

        ``nibbles`` is the PFInfo type of each PFN; ``tokens`` holds the content
        tokens of the data-carrying entries only, in order. XTAB, BROKEN and XALLOC
        entries get a pfn word and no page. Returns the bytes written."""
        if self._ended:
            raise StreamError("cannot write PAGE_DATA: the stream already has its END record")
        pfns = np.asarray(pfns, dtype=np.int64).reshape(-1)
        nibbles = np.asarray(nibbles, dtype=np.uint8).reshape(-1)
        tokens = np.asarray(tokens, dtype=np.uint64).reshape(-1)
        if pfns.size == 0:
            if tokens.size:
                raise StreamError(f"PAGE_DATA: no pfns but {tokens.size} page tokens")
            return 0
        if pfns.shape != nibbles.shape:
            raise StreamError(f"PAGE_DATA: {pfns.size} pfns but {nibbles.size} types")
        has = check_page_data(pfns, nibbles, tokens.size, where="PAGE_DATA (writer)")
        n = pfns.size
        starts = np.arange(0, n, MAX_BATCH_SIZE)
        counts = np.minimum(MAX_BATCH_SIZE, n - starts)
        data_per = np.add.reduceat(has.astype(np.int64), starts)
        lengths = 8 + 8 * counts + PAGE_SIZE * data_per
        total = int((RHDR_SIZE + lengths + ((-lengths) & 7)).sum())
        self.records_written[RecType.PAGE_DATA] += int(starts.size)
        self.pfns_written += n
        self.pages_written += int(tokens.size)
        self.page_data_bytes += total
        if self._records:
            t0 = 0
            for st, c, d in zip(starts.tolist(), counts.tolist(), data_per.tolist()):
                self.sink.put_record(Record.page_data(pfns[st:st + c], nibbles[st:st + c], tokens[t0:t0 + d]))
                t0 += d
        if self._counting:
            # Nothing is expanded: the byte count is all a counting sink needs.
            self.sink.count(total)
            self.bytes_written += total
            return total
        words = make_pfn_words(pfns, nibbles)
        tok_pos = 0
        for s, c, d, length in zip(starts.tolist(), counts.tolist(), data_per.tolist(), lengths.tolist()):
            slot, buf = self._buffer()
            buf64 = buf.view("<u8")
            buf64[0] = int(RecType.PAGE_DATA) | (length << 32)
            buf64[1] = c
            buf64[2:2 + c] = words[s:s + c]
            off = 8 * (2 + c)
            if d:
                expand_tokens(tokens[tok_pos:tok_pos + d], out=buf[off:off + d * PAGE_SIZE])
                tok_pos += d
            rec_len = RHDR_SIZE + length  # body is a multiple of 8: no padding
            self._submit(slot, buf[:rec_len].data)
            self.bytes_written += rec_len
        return total

    # ---- end of checkpoint, verify, end ------------------------------------------------------

    def write_end_of_checkpoint(self, tsc_info: TscInfo | tuple | None = None,
                                hvm_params: Iterable[tuple[int, int]] | None = None,
                                hvm_context: bytes | None = None) -> None:
        """x86_hvm_end_of_checkpoint: X86_TSC_INFO, HVM_CONTEXT, then HVM_PARAMS.
        As ``write_hvm_params`` does, only non-zero params are sent and the record is
        skipped when none are."""
        if tsc_info is None:
            tsc_info = TscInfo()
        elif not isinstance(tsc_info, TscInfo):
            tsc_info = TscInfo(*tsc_info)
        self.write_record(RecType.X86_TSC_INFO, tsc_info.pack())
        ctx = default_hvm_context() if hvm_context is None else bytes(hvm_context)
        why = check_hvm_context(ctx)
        if why:
            raise StreamError(f"refusing to write HVM_CONTEXT: {why}")
        self.write_record(RecType.HVM_CONTEXT, ctx)
        params = default_hvm_params() if hvm_params is None else list(hvm_params)
        params = [(int(i), int(v)) for i, v in params if int(v) != 0]
        if params:
            self.write_record(RecType.HVM_PARAMS, pack_hvm_params(params))

    def write_verify(self) -> None:
        self.write_record(RecType.VERIFY)

    def write_end(self) -> None:
        self.write_record(RecType.END)

    def close(self) -> None:
        """Finish the stream: wait for pending writes, then close the sink (a FileSink
        renames its temporary file into place only now)."""
        try:
            self.flush()
        except BaseException:
            self.abort()
            raise
        self._shutdown()
        self.sink.close()

    def abort(self) -> None:
        """Give up: drop pending writes' errors and abort the sink (no final file)."""
        for i, fut in enumerate(self._pending):
            if fut is not None:
                self._pending[i] = None
                try:
                    fut.result()
                except Exception:
                    pass
        self._shutdown()
        self.sink.abort()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# --------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------

_ST_IHDR, _ST_DHDR, _ST_RHDR, _ST_BODY, _ST_DONE, _ST_FAILED = range(6)


class StreamParser:
    """Incremental (push) parser and validator of a v2 stream.

    ``feed(data)`` returns the records completed by ``data``; ``close()`` raises
    ``StreamError`` if the stream stopped before its END record. Unknown optional
    records are skipped (counted in ``skipped``). With ``strict_pages`` (the default)
    a page that is not the expansion of any content token is an error; otherwise it
    is reported in ``Record.corrupt_pfns`` and its token is the page's first word.
    """

    def __init__(self, *, pfn_limit: int | None = None, strict_pages: bool = True):
        self.pfn_limit = pfn_limit
        self.strict_pages = strict_pages
        self.image_header: ImageHeader | None = None
        self.domain_header: DomainHeader | None = None
        self.records = 0                 # records completed (including skipped ones)
        self.skipped: list[int] = []     # types of optional records skipped
        self.bytes_consumed = 0
        self.seen_static_data_end = False
        self.static_data_end_inferred = False
        self.ended = False
        self.error: StreamError | None = None
        self._buf = bytearray()
        self._base = 0                   # stream offset of self._buf[0]
        self._state = _ST_IHDR
        self._rtype = 0
        self._rlen = 0
        self._roff = 0

    # ---- public ---------------------------------------------------------------------

    def feed(self, data) -> list[Record]:
        if self._state == _ST_FAILED:
            raise self.error  # type: ignore[misc]
        out: list[Record] = []
        if not len(data):
            return out
        if self._state == _ST_DONE:
            self._fail(f"{len(data)} bytes of data after the END record at offset {self._base:#x}",
                       offset=self._base)
        self._buf += data
        try:
            self._run(out)
        except StreamError as e:
            self._state = _ST_FAILED
            self.error = e
            raise
        except (struct.error, IndexError, ValueError, OverflowError, TypeError) as e:
            err = StreamError(f"malformed stream near offset {self._base:#x}: {type(e).__name__}: {e}",
                              offset=self._base, record_index=self.records)
            self._state = _ST_FAILED
            self.error = err
            raise err from None
        return out

    def close(self) -> None:
        """Declare end of input: raises ``StreamError`` unless the END record was seen."""
        if self._state == _ST_FAILED:
            raise self.error  # type: ignore[misc]
        if self._state == _ST_DONE:
            return
        have = len(self._buf)
        if self._state == _ST_IHDR:
            what, need, at = "image header", IHDR_SIZE, self._base
            if have == 0 and self._base == 0:
                self._fail("empty stream: no image header", offset=0)
        elif self._state == _ST_DHDR:
            what, need, at = "domain header", DHDR_SIZE, self._base
        elif self._state == _ST_RHDR:
            what, need, at = f"record #{self.records} header", RHDR_SIZE, self._base
            if have == 0:
                self._fail(f"stream truncated at offset {self._base:#x} after record #{self.records - 1}: "
                           f"no END record", offset=self._base, record_index=self.records)
        else:
            what = f"record #{self.records} ({rec_type_name(self._rtype)}, body_length {self._rlen})"
            need, at = self._rlen + _pad(self._rlen), self._roff + RHDR_SIZE
        self._fail(f"stream truncated in {what} at offset {at:#x}: have {have} of {need} bytes",
                   offset=at, record_index=self.records if self._state >= _ST_RHDR else None)

    # ---- internals ----------------------------------------------------------------------

    def _fail(self, msg: str, *, offset: int | None = None, record_index: int | None = None):
        err = StreamError(msg, offset=offset, record_index=record_index)
        self._state = _ST_FAILED
        self.error = err
        raise err

    def _take(self, n: int) -> bytes:
        chunk = bytes(self._buf[:n])
        del self._buf[:n]
        self._base += n
        self.bytes_consumed += n
        return chunk

    def _run(self, out: list[Record]) -> None:
        while True:
            st = self._state
            if st == _ST_IHDR:
                if len(self._buf) >= 8:
                    marker = int.from_bytes(self._buf[:8], "big")
                    if marker != IHDR_MARKER:
                        self._fail(f"bad image header marker {marker:#018x} at offset 0: a zero bit in the "
                                   "first 8 bytes means a legacy (pre-v2) stream, which is not supported",
                                   offset=0)
                if len(self._buf) < IHDR_SIZE:
                    return
                self._parse_ihdr(self._take(IHDR_SIZE))
                self._state = _ST_DHDR
            elif st == _ST_DHDR:
                if len(self._buf) < DHDR_SIZE:
                    return
                self._parse_dhdr(self._take(DHDR_SIZE))
                self._state = _ST_RHDR
            elif st == _ST_RHDR:
                if len(self._buf) < RHDR_SIZE:
                    return
                self._roff = self._base
                self._rtype, self._rlen = _RHDR.unpack(self._take(RHDR_SIZE))
                self._check_rhdr()
                self._state = _ST_BODY
            elif st == _ST_BODY:
                need = self._rlen + _pad(self._rlen)
                if len(self._buf) < need:
                    return
                body = self._take(need)[: self._rlen]  # padding is ignored on restore
                rec = self._parse_record(body)
                self.records += 1
                self._state = _ST_RHDR
                if rec is not None:
                    out.append(rec)
                if self._rtype == RecType.END:
                    self.ended = True
                    self._state = _ST_DONE
                    if self._buf:
                        self._fail(f"{len(self._buf)} bytes of data after the END record "
                                   f"(record #{self.records - 1}) at offset {self._base:#x}",
                                   offset=self._base, record_index=self.records)
                    return
            else:
                return

    def _parse_ihdr(self, raw: bytes) -> None:
        marker, ident, version, options, _r1, _r2 = _IHDR.unpack(raw)
        if ident != IHDR_ID:
            self._fail(f"bad image header id {ident:#010x} at offset 0x8: expected {IHDR_ID:#010x} ('XENF')",
                       offset=8)
        if version < 2 or version > 3:
            self._fail(f"unsupported stream version {version} at offset 0xc: expected 2 <= version <= 3",
                       offset=12)
        if options & IHDR_OPT_BIG_ENDIAN:
            self._fail("big-endian streams are not supported (image header options bit 0 set)", offset=16)
        self.image_header = ImageHeader(marker, ident, version, options)

    def _parse_dhdr(self, raw: bytes) -> None:
        dtype, page_shift, _res, major, minor = _DHDR.unpack(raw)
        if dtype == DHDR_TYPE_X86_PV:
            self._fail("domain header type 1 (x86 PV) is not supported: xmig restores x86 HVM (type 2) "
                       "streams", offset=IHDR_SIZE)
        if dtype != DHDR_TYPE_X86_HVM:
            self._fail(f"bad domain header type {dtype} at offset {IHDR_SIZE:#x}: reserved "
                       "(expected 2, x86 HVM)", offset=IHDR_SIZE)
        if page_shift != PAGE_SHIFT:
            self._fail(f"bad domain header page_shift {page_shift} at offset {IHDR_SIZE + 4:#x}: "
                       f"expected {PAGE_SHIFT}", offset=IHDR_SIZE + 4)
        self.domain_header = DomainHeader(dtype, page_shift, major, minor)

    def _where(self) -> str:
        return f"record #{self.records} ({rec_type_name(self._rtype)}) at offset {self._roff:#x}"

    def _check_rhdr(self) -> None:
        rtype, rlen = self._rtype, self._rlen
        kw = dict(offset=self._roff, record_index=self.records)
        if rlen > REC_LENGTH_MAX:
            self._fail(f"{self._where()}: body_length {rlen} exceeds REC_LENGTH_MAX "
                       f"({REC_LENGTH_MAX >> 20} MiB)", **kw)
        if rtype not in _VALID_TYPES:
            if rtype & REC_TYPE_OPTIONAL:
                return  # skipped once its body has arrived
            self._fail(f"{self._where()}: unknown mandatory record type {rtype:#x}", **kw)
        if rtype not in HVM_HANDLED:
            if rtype == RecType.CHECKPOINT:
                self._fail(f"{self._where()}: found checkpoint in a non-checkpointed stream", **kw)
            self._fail(f"{self._where()}: mandatory record {rtype:#x} ({rec_type_name(rtype)}) "
                       "not handled by an x86 HVM restore", **kw)
        if rtype in _EMPTY_BODY and rlen != 0:
            self._fail(f"{self._where()}: body_length {rlen}, expected an empty record", **kw)

    def _parse_record(self, body: bytes) -> Record | None:
        rtype, rlen = self._rtype, self._rlen
        kw = dict(offset=self._roff, record_index=self.records)
        where = self._where()
        if rtype not in _VALID_TYPES:
            self.skipped.append(rtype)
            return None
        rec = Record(rtype, length=rlen, index=self.records, offset=self._roff)
        if rtype == RecType.PAGE_DATA:
            if not self.seen_static_data_end:
                if self.image_header is not None and self.image_header.version < 3:
                    self.seen_static_data_end = True      # v2 compat: inferred here
                    self.static_data_end_inferred = True
                else:
                    self._fail(f"{where}: no STATIC_DATA_END seen before the first PAGE_DATA", **kw)
            self._parse_page_data(rec, body, where, kw)
            return rec
        rec.body = body
        if rtype == RecType.STATIC_DATA_END:
            if self.seen_static_data_end:
                self._fail(f"{where}: multiple STATIC_DATA_END records", **kw)
            self.seen_static_data_end = True
        elif rtype == RecType.X86_TSC_INFO:
            if rlen != _TSC.size:
                self._fail(f"{where}: X86_TSC_INFO length {rlen}, expected {_TSC.size}", **kw)
        elif rtype == RecType.HVM_PARAMS:
            if rlen < 8:
                self._fail(f"{where}: HVM_PARAMS truncated: length {rlen}, min 8", **kw)
            count = _U32PAIR.unpack_from(body, 0)[0]
            if rlen != 8 + 16 * count:
                self._fail(f"{where}: HVM_PARAMS length {rlen} does not match {count} entries "
                           f"(expected {8 + 16 * count})", **kw)
        elif rtype == RecType.HVM_CONTEXT:
            why = check_hvm_context(body)
            if why:
                self._fail(f"{where}: {why}", **kw)
        elif rtype == RecType.X86_CPUID_POLICY:
            if rlen % _CPUID_LEAF.size:
                self._fail(f"{where}: X86_CPUID_POLICY length {rlen} is not a multiple of "
                           f"xen_cpuid_leaf_t ({_CPUID_LEAF.size})", **kw)
        elif rtype == RecType.X86_MSR_POLICY:
            if rlen % _MSR_ENTRY.size:
                self._fail(f"{where}: X86_MSR_POLICY length {rlen} is not a multiple of "
                           f"xen_msr_entry_t ({_MSR_ENTRY.size})", **kw)
        return rec

    def _parse_page_data(self, rec: Record, body: bytes, where: str, kw: dict) -> None:
        rlen = len(body)
        if rlen < 8:
            self._fail(f"{where}: PAGE_DATA record truncated: length {rlen}, min 8", **kw)
        count = _U32PAIR.unpack_from(body, 0)[0]
        if count < 1:
            self._fail(f"{where}: expected at least 1 pfn in PAGE_DATA record", **kw)
        if rlen < 8 + 8 * count:
            self._fail(f"{where}: PAGE_DATA record (length {rlen}) too short to contain {count} pfns", **kw)
        words = np.frombuffer(body, dtype="<u8", count=count, offset=8)
        pfns, nibbles = split_pfn_words(words)
        try:
            has = check_page_data(pfns, nibbles, None, pfn_limit=self.pfn_limit, where=where)
        except StreamError as e:
            self._fail(str(e), **kw)
        n_data = int(np.count_nonzero(has))
        expect = 8 + 8 * count + PAGE_SIZE * n_data
        if rlen != expect:
            self._fail(f"{where}: PAGE_DATA record wrong size: length {rlen}, expected {expect} "
                       f"(8 + 8*{count} + 4096*{n_data})", **kw)
        pages = np.frombuffer(body, dtype=np.uint8, count=n_data * PAGE_SIZE, offset=8 + 8 * count)
        tokens, intact = pages_to_tokens(pages.reshape(n_data, PAGE_SIZE))
        rec.pfns, rec.nibbles, rec.tokens = pfns, nibbles, tokens
        if not intact.all():
            bad = pfns[has][~intact]
            if self.strict_pages:
                self._fail(f"{where}: corrupt page data for pfn {int(bad[0]):#x} "
                           f"({bad.size} page(s) are not a valid page expansion)", **kw)
            rec.corrupt_pfns = bad


@dataclass
class ParsedStream:
    image_header: ImageHeader
    domain_header: DomainHeader
    records: list[Record]
    skipped: list[int] = field(default_factory=list)


_CHUNK = 4 << 20


def _open_src(src) -> tuple[BinaryIO, bool]:
    if isinstance(src, (str, os.PathLike)):
        try:
            return open(src, "rb"), True
        except OSError as e:
            raise StreamError(f"cannot open stream {src}: {e.strerror or e}") from None
    if isinstance(src, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(src)), True
    return src, False


def read_stream(src, *, pfn_limit: int | None = None, strict_pages: bool = True,
                parser: StreamParser | None = None, chunk_size: int = _CHUNK) -> Iterator[Record]:
    """Yield the records of a stream from a path, bytes or a binary file object,
    validating as it goes; raises ``StreamError`` on the first problem, including a
    stream that ends before its END record."""
    p = parser or StreamParser(pfn_limit=pfn_limit, strict_pages=strict_pages)
    f, owned = _open_src(src)
    try:
        while True:
            chunk = f.read(chunk_size)
            if not chunk:
                break
            yield from p.feed(chunk)
        p.close()
    finally:
        if owned:
            f.close()


def parse_stream(src, *, pfn_limit: int | None = None, strict_pages: bool = True) -> ParsedStream:
    """Parse a whole stream (path, bytes or file object) into headers and records."""
    p = StreamParser(pfn_limit=pfn_limit, strict_pages=strict_pages)
    records = list(read_stream(src, parser=p))
    assert p.image_header is not None and p.domain_header is not None
    return ParsedStream(p.image_header, p.domain_header, records, list(p.skipped))


# --------------------------------------------------------------------------------------
# Summary (xmig inspect)
# --------------------------------------------------------------------------------------


@dataclass
class StreamSummary:
    path: str
    total_bytes: int = 0
    valid: bool = False
    error: str | None = None
    version: int | None = None
    domain_type: str | None = None
    xen_version: str | None = None
    records_by_type: dict[str, int] = field(default_factory=dict)
    pages_by_type: dict[str, int] = field(default_factory=dict)
    data_pages: int = 0
    pfn_min: int | None = None
    pfn_max: int | None = None
    corrupt_pages: int = 0
    skipped_optional: int = 0

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict
        return asdict(self)


def summarise_stream(path, *, pfn_limit: int | None = None) -> StreamSummary:
    """Read and validate a stream file; never raises for a malformed stream (the
    error is in ``.error`` and ``.valid`` is False)."""
    s = StreamSummary(path=str(path))
    p = StreamParser(pfn_limit=pfn_limit, strict_pages=False)
    recs: Counter[str] = Counter()
    nib_counts = np.zeros(16, dtype=np.int64)
    lo, hi = None, None
    try:
        if isinstance(path, (str, os.PathLike)):
            try:
                s.total_bytes = os.path.getsize(path)
            except OSError:
                pass
        for rec in read_stream(path, parser=p):
            recs[rec.name] += 1
            if rec.type == RecType.PAGE_DATA:
                nib_counts += np.bincount(rec.nibbles, minlength=16)
                s.data_pages += int(rec.tokens.size)
                rlo, rhi = int(rec.pfns.min()), int(rec.pfns.max())
                lo = rlo if lo is None else min(lo, rlo)
                hi = rhi if hi is None else max(hi, rhi)
                if rec.corrupt_pfns is not None:
                    s.corrupt_pages += int(rec.corrupt_pfns.size)
        s.valid = s.corrupt_pages == 0
        if s.corrupt_pages:
            s.error = f"{s.corrupt_pages} corrupt page(s): not a valid page expansion"
    except StreamError as e:
        s.error = str(e)
    if p.image_header is not None:
        s.version = p.image_header.version
    if p.domain_header is not None:
        s.domain_type = "x86 HVM"
        s.xen_version = f"{p.domain_header.xen_major}.{p.domain_header.xen_minor}"
    s.records_by_type = dict(recs)
    s.pages_by_type = {PFInfo(i).name: int(c) for i, c in enumerate(nib_counts) if c}
    s.pfn_min, s.pfn_max = lo, hi
    s.skipped_optional = len(p.skipped)
    return s


__all__ = [
    "RecType", "REC_TYPE_OPTIONAL", "REC_LENGTH_MAX", "StreamError", "Record", "ImageHeader",
    "DomainHeader", "TscInfo", "make_pfn_words", "split_pfn_words", "check_page_data",
    "Sink", "NullSink", "FileSink", "TcpSink", "TeeSink", "CallbackSink", "RecordSink", "StreamWriter",
    "StreamParser", "ParsedStream", "read_stream", "parse_stream", "StreamSummary",
    "summarise_stream", "default_cpuid_policy", "default_msr_policy", "default_hvm_params",
    "default_hvm_context", "check_hvm_context", "pack_hvm_params", "unpack_hvm_params", "rec_type_name",
]
