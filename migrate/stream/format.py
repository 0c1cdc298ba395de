"""The migration stream v2 wire format: constants, headers, record types, PFN words.

Mirrors ``tools/libs/guest/xg_sr_stream_format.h`` and Xen's
``docs/specs/libxc-migration-stream.pandoc`` ("Revision 3"): a big-endian image header
(marker, "XENF", version 3), a domain header (x86 HVM, page_shift 12), then records of
an 8-byte header (u32 type, u32 body_length) whose body is padded with zeros to an
8-byte boundary (the padding is not counted in body_length). Bit 31 of a record type
marks it optional. PAGE_DATA carries ``count`` pfn words (type nibble in bits 63..60,
PFN in bits 51..0) followed by one 4 KiB page for each pfn word whose type carries data.
``rec_type_name`` is ``rec_type_to_str`` of ``xg_sr_common.c``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Iterable

import numpy as np

from hypervisor.abi import PAGE_SHIFT

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

IHDR = struct.Struct(">QIIHHI")
DHDR = struct.Struct("<IHHII")
RHDR = struct.Struct("<II")
TSC = struct.Struct("<IIQII")         # xc_sr_rec_x86_tsc_info
U32PAIR = struct.Struct("<II")        # count + reserved of PAGE_DATA and HVM_PARAMS
CPUID_LEAF = struct.Struct("<IIIIII")  # xen_cpuid_leaf_t
MSR_ENTRY = struct.Struct("<IIQ")      # xen_msr_entry_t


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


def pad(n: int) -> int:
    """Zero bytes that follow a body of ``n`` bytes (records are 8-byte aligned)."""
    return (-n) & (REC_ALIGN - 1)


# ---- PFN words ------------------------------------------------------------------------


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


# ---- headers and fixed record bodies ------------------------------------------------------


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
        return TSC.pack(self.mode, self.khz, self.nsec, self.incarnation, 0)

    @classmethod
    def unpack(cls, body: bytes) -> "TscInfo":
        mode, khz, nsec, inc, _res = TSC.unpack(body)
        return cls(mode, khz, nsec, inc)


def pack_hvm_params(params: Iterable[tuple[int, int]]) -> bytes:
    """struct xc_sr_rec_hvm_params: u32 count, u32 reserved, {u64 index, u64 value}[]."""
    params = list(params)
    arr = np.array(params, dtype="<u8").reshape(-1, 2)
    return U32PAIR.pack(len(params), 0) + arr.tobytes()


def unpack_hvm_params(body: bytes) -> list[tuple[int, int]]:
    count = U32PAIR.unpack_from(body, 0)[0]
    arr = np.frombuffer(body, dtype="<u8", count=2 * count, offset=8).reshape(-1, 2)
    return [(int(i), int(v)) for i, v in arr]
