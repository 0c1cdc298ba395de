"""Records and the rules each record type follows, shared by the parser and the restorer.

``RECORD_RULES`` is one table with an entry per record type: its name, what its body
must look like, whether an x86 HVM restore handles it and what the restorer does with
it, whether it may repeat and in which phase of the stream it may come. It mirrors the
dispatch of ``tools/libs/guest/xg_sr_restore.c`` (``process_record``,
``handle_static_data_end``, ``handle_page_data`` and its v2 inference of
STATIC_DATA_END) and ``xg_sr_restore_x86_hvm.c`` (``x86_hvm_process_record``,
``handle_tsc_info``, ``handle_hvm_context``, ``handle_hvm_params``,
``handle_x86_cpuid_policy``, ``handle_x86_msr_policy``), where Xen spreads the same
knowledge over switch statements. Adding a record type is one entry here (plus a
restorer step only when it needs a new kind of action).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any, Callable, Iterator

import numpy as np

from hypervisor.abi import MAX_BATCH_SIZE, PAGE_SIZE, PFINFO_HAS_DATA, PFINFO_KNOWN
from hypervisor.tables import lookup

from migrate.stream.format import (
    CPUID_LEAF,
    MSR_ENTRY,
    PAGE_DATA_PFN_MASK,
    TSC,
    U32PAIR,
    RecType,
    StreamError,
    TscInfo,
    rec_type_name,
    unpack_hvm_params,
)
from migrate.stream.hvm import check_hvm_context


class Body(Enum):
    """What a record's body holds."""

    EMPTY = "empty"    # body_length must be 0 (checked from the header alone)
    PAGES = "pages"    # PAGE_DATA: pfn words then 4 KiB pages (the parser decodes it)
    BLOB = "blob"      # opaque bytes, optionally checked by the rule's ``check``


class Phase(IntEnum):
    """Where a restore is in the stream: static data until STATIC_DATA_END, memory after."""

    STATIC = 0
    MEMORY = 1


class Step(Enum):
    """What the restorer does with a record it handles, beyond keeping its body."""

    NONE = "none"              # accepted; nothing to apply in the model (e.g. CPU policy)
    PAGE_DATA = "page_data"    # populate and copy (or verify) pages
    VERIFY = "verify"          # switch to verify mode
    END = "end"                # the restore is complete
    CHECKPOINT = "checkpoint"  # apply the records buffered since the last one (Remus)


@dataclass(frozen=True, slots=True)
class RecordRule:
    """How one record type is checked and applied.

    ``handled``: an x86 HVM restore accepts it (any other known mandatory type is fatal,
    with ``refusal`` as the reason when Xen gives a specific one). ``check(body)``
    returns why a body is malformed, or None. ``repeat=False``: a second one is an
    error. ``phase``: the record may only come once the stream has reached it (a
    version-2 image infers the record that opens it, as Xen does for
    STATIC_DATA_END). ``opens``: the phase this record starts. ``ends``: nothing may
    follow. ``keep``: the restorer stores ``decode(body)`` in this ``RestoreResult``
    field. ``checkpointed``: handled only in a checkpointed (Remus/COLO) stream, which
    the restore is told it reads (``xc_domain_restore``'s ``stream_type``), as
    ``handle_checkpoint`` refuses a CHECKPOINT in a plain one.
    """

    type: RecType
    handled: bool = False
    body: Body = Body.BLOB
    check: Callable[[bytes], str | None] | None = None
    repeat: bool = True
    phase: Phase | None = None
    opens: Phase | None = None
    ends: bool = False
    step: Step = Step.NONE
    keep: tuple[str, Callable[[bytes], Any]] | None = None
    refusal: str | None = None
    checkpointed: bool = False

    @property
    def name(self) -> str:
        return self.type.name

    def accepted(self, checkpointed: bool) -> bool:
        """Whether a restore of a plain (or, with ``checkpointed``, a checkpointed)
        stream handles this record."""
        return self.handled or (self.checkpointed and checkpointed)


def _check_tsc_info(body: bytes) -> str | None:
    if len(body) != TSC.size:
        return f"X86_TSC_INFO length {len(body)}, expected {TSC.size}"
    return None


def _check_hvm_params(body: bytes) -> str | None:
    rlen = len(body)
    if rlen < 8:
        return f"HVM_PARAMS truncated: length {rlen}, min 8"
    count = U32PAIR.unpack_from(body, 0)[0]
    if rlen != 8 + 16 * count:
        return f"HVM_PARAMS length {rlen} does not match {count} entries (expected {8 + 16 * count})"
    return None


def _check_array_of(name: str, entry: str, size: int) -> Callable[[bytes], str | None]:
    def check(body: bytes) -> str | None:
        if len(body) % size:
            return f"{name} length {len(body)} is not a multiple of {entry} ({size})"
        return None
    return check


def _rules(*rules: RecordRule) -> dict[int, RecordRule]:
    table = {int(r.type): r for r in rules}
    missing = [t.name for t in RecType if int(t) not in table]
    if missing:
        raise AssertionError(f"RECORD_RULES lacks {missing}")
    return table


#: The rules of every record type, keyed by type. A type not in the table is unknown:
#: skipped when optional (bit 31), fatal when mandatory.
RECORD_RULES: dict[int, RecordRule] = _rules(
    RecordRule(RecType.END, handled=True, body=Body.EMPTY, ends=True, step=Step.END),
    RecordRule(RecType.PAGE_DATA, handled=True, body=Body.PAGES, phase=Phase.MEMORY, step=Step.PAGE_DATA),
    RecordRule(RecType.X86_PV_INFO),
    RecordRule(RecType.X86_PV_P2M_FRAMES),
    RecordRule(RecType.X86_PV_VCPU_BASIC),
    RecordRule(RecType.X86_PV_VCPU_EXTENDED),
    RecordRule(RecType.X86_PV_VCPU_XSAVE),
    RecordRule(RecType.SHARED_INFO),
    RecordRule(RecType.X86_TSC_INFO, handled=True, check=_check_tsc_info, keep=("tsc_info", TscInfo.unpack)),
    RecordRule(RecType.HVM_CONTEXT, handled=True, check=check_hvm_context, keep=("hvm_context_bytes", len)),
    RecordRule(RecType.HVM_PARAMS, handled=True, check=_check_hvm_params, keep=("hvm_params", unpack_hvm_params)),
    RecordRule(RecType.TOOLSTACK),
    RecordRule(RecType.X86_PV_VCPU_MSRS),
    RecordRule(RecType.VERIFY, handled=True, body=Body.EMPTY, step=Step.VERIFY),
    RecordRule(RecType.CHECKPOINT, body=Body.EMPTY, refusal="found checkpoint in a non-checkpointed stream",
               checkpointed=True, step=Step.CHECKPOINT),
    RecordRule(RecType.CHECKPOINT_DIRTY_PFN_LIST),
    RecordRule(RecType.STATIC_DATA_END, handled=True, body=Body.EMPTY, repeat=False, opens=Phase.MEMORY),
    RecordRule(RecType.X86_CPUID_POLICY, handled=True,
               check=_check_array_of("X86_CPUID_POLICY", "xen_cpuid_leaf_t", CPUID_LEAF.size)),
    RecordRule(RecType.X86_MSR_POLICY, handled=True,
               check=_check_array_of("X86_MSR_POLICY", "xen_msr_entry_t", MSR_ENTRY.size)),
)

#: Records an x86 HVM restore handles; any other known mandatory type is fatal.
HVM_HANDLED = frozenset(RecType(t) for t, r in RECORD_RULES.items() if r.handled)
#: The record that opens each phase (inferred in a version-2 image).
_OPENER = {r.opens: r for r in RECORD_RULES.values() if r.opens is not None}


def not_handled(rtype: int) -> str:
    """Why a restore refuses a known (or unknown) mandatory record type (the parser
    gives a rule's own ``refusal`` first)."""
    return f"mandatory record {rtype:#x} ({rec_type_name(rtype)}) not handled by an x86 HVM restore"


class RecordOrder:
    """The order rules of ``RECORD_RULES`` over one stream: which phase it is in, which
    records that may not repeat it has seen (``seen_static_data_end`` and its v2
    inference in xg_sr_restore.c)."""

    def __init__(self) -> None:
        self.phase = Phase.STATIC
        self.seen: set[int] = set()
        self.inferred = False      # a phase's opener was inferred (v2 compatibility)

    def admit(self, rule: RecordRule, *, infer: bool) -> str | None:
        """Take ``rule``'s record in; returns why it may not come here (None if it may).
        ``infer``: a record of a later phase implies the record that opens it."""
        if rule.phase is not None and self.phase < rule.phase:
            if not infer:
                return f"no {_OPENER[rule.phase].name} seen before the first {rule.name}"
            self.infer(rule.phase)
        if not rule.repeat and int(rule.type) in self.seen:
            return f"multiple {rule.name} records"
        self._enter(rule)
        return None

    def infer(self, phase: Phase) -> None:
        """Act as if the record that opens ``phase`` had come (when it has not)."""
        if self.phase < phase:
            self._enter(_OPENER[phase])
            self.inferred = True

    def _enter(self, rule: RecordRule) -> None:
        if not rule.repeat:
            self.seen.add(int(rule.type))
        if rule.opens is not None and rule.opens > self.phase:
            self.phase = rule.opens


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
        n_data = int(np.count_nonzero(lookup(PFINFO_HAS_DATA, nibbles & 0xF)))
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




def page_data_records(pfns: np.ndarray, nibbles: np.ndarray, tokens: np.ndarray) -> Iterator[Record]:
    """The PAGE_DATA records of entries back to back, MAX_BATCH_SIZE each (the last may
    be shorter); ``tokens`` holds the data-carrying entries' contents in order."""
    has = PFINFO_HAS_DATA[np.asarray(nibbles, dtype=np.uint8) & 0xF]
    t0 = 0
    for a in range(0, max(pfns.size, 1), MAX_BATCH_SIZE):
        b = a + MAX_BATCH_SIZE
        d = int(np.count_nonzero(has[a:b]))
        yield Record.page_data(pfns[a:b], nibbles[a:b], tokens[t0:t0 + d])
        t0 += d


def type_counts(nibbles: np.ndarray) -> np.ndarray:
    """int64 count of entries of each of the 16 PFInfo types in checked type nibbles
    (uint8, at most 0xF): one min/max pass, then one comparison per further type in
    their range (a span's run holds one to a few), or a bincount when they spread."""
    out = np.zeros(16, dtype=np.int64)
    n = nibbles.size
    if n == 0:
        return out
    lo, hi = int(nibbles.min()), int(nibbles.max())
    if hi - lo > 3 or n < 4096:
        out += np.bincount(nibbles, minlength=16)[:16]
        return out
    for v in range(lo + 1, hi + 1):
        # A plain int: comparing with an IntEnum member is several times slower.
        out[v] = np.count_nonzero(nibbles == v)
    out[lo] = n - int(out.sum())
    return out


def check_page_data(pfns: np.ndarray, nibbles: np.ndarray, n_tokens: int | None, *,
                    pfn_limit: int | None = None, where: str = "PAGE_DATA") -> np.ndarray:
    """handle_page_data's checks on decoded pfn words; returns the has-data mask.
    Raises StreamError on count 0, unknown type nibble, PFN past ``pfn_limit`` or a
    token count that does not match the data-carrying entries."""
    if pfns.size < 1:
        raise StreamError(f"{where}: expected at least 1 pfn in PAGE_DATA record")
    if pfns.shape != nibbles.shape:
        raise StreamError(f"{where}: {pfns.size} pfns but {nibbles.size} types")
    # Two reductions decide; the masks that name the culprit are made only on failure.
    top = PAGE_DATA_PFN_MASK if pfn_limit is None else min(PAGE_DATA_PFN_MASK, pfn_limit - 1)
    # int64 PFNs read as uint64: a negative one is past any top, so one max decides.
    if (int(pfns.view(np.uint64).max()) > top if pfns.dtype == np.int64 and top >= 0
            else int(pfns.min()) < 0 or int(pfns.max()) > top):
        bad_pfn = (pfns < 0) | (pfns > PAGE_DATA_PFN_MASK)
        if pfn_limit is not None:
            bad_pfn |= pfns >= pfn_limit
        i = int(np.argmax(bad_pfn))
        lim = f" (limit {pfn_limit:#x})" if pfn_limit is not None else ""
        raise StreamError(f"{where}: pfn {int(pfns[i]):#x} (index {i}) outside domain maximum{lim}")
    nib = nibbles if nibbles.dtype == np.uint8 else nibbles.astype(np.intp)
    lo, hi = int(nib.min()), int(nib.max())
    n = None
    if lo == hi and 0 <= lo <= 0xF and PFINFO_KNOWN[lo]:
        # One type throughout (a span's run of NOTAB pages): known, and all or none carry data.
        has = np.full(pfns.shape, PFINFO_HAS_DATA[lo], dtype=bool)
        n = pfns.size if PFINFO_HAS_DATA[lo] else 0
    elif hi > 0xF or not lookup(PFINFO_KNOWN, nib).all():
        nib = nibbles.astype(np.intp)
        bad = (nib > 0xF)
        if not bad.any():
            bad = ~PFINFO_KNOWN[nib]
        i = int(np.argmax(bad))
        raise StreamError(f"{where}: unknown or reserved page type {int(nibbles[i]):#x} for pfn "
                          f"{int(pfns[i]):#x} (index {i})")
    else:
        has = lookup(PFINFO_HAS_DATA, nib)
    if n_tokens is not None:
        n = int(np.count_nonzero(has)) if n is None else n
        if n != n_tokens:
            raise StreamError(f"{where}: {n} data-carrying entries but {n_tokens} page tokens")
    return has
