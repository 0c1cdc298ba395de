"""A pure push parser of a v2 stream: bytes in, validated records out, no I/O.

Validates as ``tools/libs/guest/xg_sr_restore.c`` does (``read_headers``,
``read_record``, ``handle_page_data``, ``process_record``) and turns every malformed
input into a ``StreamError`` naming the record index and byte offset. Per-type rules
(body length, handled or not, repeat, phase) come from ``records.RECORD_RULES``, the
table the restorer uses too. It never blocks and so never hangs: the same parser serves
a file, a TCP peer and an in-process ``CallbackSink`` (``sinks`` does the reading).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from hypervisor.abi import PAGE_SHIFT, PAGE_SIZE
from hypervisor.content import pages_to_tokens

from migrate.stream.format import (
    DHDR,
    DHDR_SIZE,
    DHDR_TYPE_X86_HVM,
    DHDR_TYPE_X86_PV,
    IHDR,
    IHDR_ID,
    IHDR_MARKER,
    IHDR_OPT_BIG_ENDIAN,
    IHDR_SIZE,
    REC_LENGTH_MAX,
    REC_TYPE_OPTIONAL,
    RHDR,
    RHDR_SIZE,
    U32PAIR,
    DomainHeader,
    ImageHeader,
    StreamError,
    pad,
    rec_type_name,
    split_pfn_words,
)
from migrate.stream.records import RECORD_RULES, Body, Phase, Record, RecordOrder, RecordRule, check_page_data, not_handled

_ST_IHDR, _ST_DHDR, _ST_RHDR, _ST_BODY, _ST_DONE, _ST_FAILED = range(6)


class StreamParser:
    """Incremental (push) parser and validator of a v2 stream.

    ``feed(data)`` returns the records completed by ``data``; ``close()`` raises
    ``StreamError`` if the stream stopped before its END record. Unknown optional
    records are skipped (counted in ``skipped``). With ``strict_pages`` (the default)
    a page that is not the expansion of any content token is an error; otherwise it
    is reported in ``Record.corrupt_pfns`` and its token is the page's first word.
    ``checkpointed``: the stream is a checkpointed (Remus) one, so CHECKPOINT records
    are accepted (in a plain stream they are refused, as ``handle_checkpoint`` does).
    """

    def __init__(self, *, pfn_limit: int | None = None, strict_pages: bool = True, checkpointed: bool = False):
        self.pfn_limit = pfn_limit
        self.checkpointed = checkpointed
        self.strict_pages = strict_pages
        self.image_header: ImageHeader | None = None
        self.domain_header: DomainHeader | None = None
        self.records = 0                 # records completed (including skipped ones)
        self.skipped: list[int] = []     # types of optional records skipped
        self.bytes_consumed = 0
        self.order = RecordOrder()       # phase and non-repeating records seen
        self.ended = False
        self.error: StreamError | None = None
        self._buf = bytearray()
        self._base = 0                   # stream offset of self._buf[0]
        self._state = _ST_IHDR
        self._rtype = 0
        self._rlen = 0
        self._roff = 0
        self._rule: RecordRule | None = None   # rule of the record being read (None: unknown)

    @property
    def seen_static_data_end(self) -> bool:
        return self.order.phase >= Phase.MEMORY

    @property
    def static_data_end_inferred(self) -> bool:
        return self.order.inferred

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
            need, at = self._rlen + pad(self._rlen), self._roff + RHDR_SIZE
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
                self._rtype, self._rlen = RHDR.unpack(self._take(RHDR_SIZE))
                self._check_rhdr()
                self._state = _ST_BODY
            elif st == _ST_BODY:
                need = self._rlen + pad(self._rlen)
                if len(self._buf) < need:
                    return
                body = self._take(need)[: self._rlen]  # padding is ignored on restore
                rec = self._parse_record(body)
                self.records += 1
                self._state = _ST_RHDR
                if rec is not None:
                    out.append(rec)
                if self._rule is not None and self._rule.ends:
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
        marker, ident, version, options, _r1, _r2 = IHDR.unpack(raw)
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
        dtype, page_shift, _res, major, minor = DHDR.unpack(raw)
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
        rule = self._rule = RECORD_RULES.get(rtype)
        if rule is None:
            if rtype & REC_TYPE_OPTIONAL:
                return  # skipped once its body has arrived
            self._fail(f"{self._where()}: unknown mandatory record type {rtype:#x}", **kw)
        if not rule.accepted(self.checkpointed):
            self._fail(f"{self._where()}: {rule.refusal or not_handled(rtype)}", **kw)
        if rule.body is Body.EMPTY and rlen != 0:
            self._fail(f"{self._where()}: body_length {rlen}, expected an empty record", **kw)

    def _parse_record(self, body: bytes) -> Record | None:
        rule = self._rule
        if rule is None:
            self.skipped.append(self._rtype)
            return None
        kw = dict(offset=self._roff, record_index=self.records)
        where = self._where()
        rec = Record(self._rtype, length=self._rlen, index=self.records, offset=self._roff)
        # A version-2 image has no STATIC_DATA_END: the first PAGE_DATA implies it.
        legacy = self.image_header is not None and self.image_header.version < 3
        why = self.order.admit(rule, infer=legacy)
        if why:
            self._fail(f"{where}: {why}", **kw)
        if rule.body is Body.PAGES:
            self._parse_page_data(rec, body, where, kw)
            return rec
        rec.body = body
        if rule.check is not None:
            why = rule.check(body)
            if why:
                self._fail(f"{where}: {why}", **kw)
        return rec

    def _parse_page_data(self, rec: Record, body: bytes, where: str, kw: dict) -> None:
        rlen = len(body)
        if rlen < 8:
            self._fail(f"{where}: PAGE_DATA record truncated: length {rlen}, min 8", **kw)
        count = U32PAIR.unpack_from(body, 0)[0]
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
