"""The restore side: rebuild a domain on a destination hypervisor from a v2 stream.

Mirrors ``tools/libs/guest/xg_sr_restore.c`` (``restore``, ``process_record``,
``handle_page_data``, ``process_page_data``, ``populate_pfns``) and the x86 HVM parts
of ``xg_sr_restore_x86_hvm.c``:

* PFNs of the data types (NOTAB, L1..L4 pinned or not) and XALLOC that are not yet
  populated are populated (``xc_domain_populate_physmap_exact``), tracked in the
  restorer's own populated set (``pfnset.PfnSet``) as Xen's ``populated_pfns`` bitmap is;
* XTAB and BROKEN entries are skipped; nothing ever un-populates a PFN, so a page sent
  in an early pass and ballooned out at the source later stays on the destination;
* data pages are copied in, or, after a VERIFY record, compared with what is already
  there (a mismatch is counted and listed, never fatal);
* STATIC_DATA_END is inferred at the first PAGE_DATA of a version-2 image (and of
  records applied in-process without headers); a version-3 stream without one fails;
* END completes the restore. Any error leaves ``complete=False`` with the message;
* in a checkpointed (Remus) stream, told by ``checkpointed=True`` as Xen's restore is
  told its ``stream_type``, the first CHECKPOINT starts ``buffer_all_records``: every
  later record is held until the next CHECKPOINT applies them all
  (``handle_checkpoint``), and those held when the stream ends (END, or a stream
  broken off) are dropped, so the backup stays at its last checkpoint (``restore``'s
  ``remus_failover``).

Two ways in: ``feed(bytes)`` parses stream bytes incrementally (a TCP peer, an
in-process ``CallbackSink``), ``apply(record)`` takes already-structured records
when no stream bytes are produced. Which records are handled, and how, is
``migrate.stream.records.RECORD_RULES``, the table the parser checks streams with.
The restorer does no I/O: ``receive_tcp`` hands it to ``migrate.stream.sinks``, which
owns the socket.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from hypervisor.abi import MAX_BATCH_SIZE, PFINFO_HAS_DATA, PFINFO_POPULATE, P2MType, PFInfo, XenError
from hypervisor.runs import CHUNK_BITS, chunk_pieces, sorted_unique
from hypervisor.tables import batch_totals, known_run, lookup

from migrate.stream.format import REC_TYPE_OPTIONAL, RecType, StreamError, TscInfo
from migrate.stream.parser import StreamParser
from migrate.stream.records import (RECORD_RULES, Phase, Record, RecordOrder, Step, check_page_data, not_handled,
                             page_data_records, type_counts)
from migrate.stream.sinks import receive_stream
from migrate.toolstack.checkpoint import CheckpointedRestore
from migrate.toolstack.pfnset import PfnSet

if TYPE_CHECKING:
    import asyncio

#: How many mismatching PFNs a verify pass lists (all are counted).
VERIFY_LIST_MAX = 16
#: PAGE_DATA entries gathered before they are applied to the destination in one go.
#: Xen applies each record as it comes; gathering changes nothing observable (the
#: destination is not read until the stream ends, a VERIFY record or another record
#: type flushes first, and a later copy of a PFN still wins) and saves per-call costs.
APPLY_GROUP = 1 << 16
#: How much P2M a stream may make the destination allocate for how much it carries.
#: The emulated P2M holds 2^18-PFN chunks (``hypervisor.p2m``, ~1.25 MiB each), so a
#: stream scattering one XALLOC entry (8 bytes) per chunk would cost 160,000 times its
#: size. A real stream is dense (xg_sr_save sends PFNs in ascending batches of 1024),
#: so the destination allows CHUNK_ALLOWANCE chunks outright plus one per
#: PAGES_PER_CHUNK data pages received (1 MiB of page data buys 1.25 MiB of P2M; 32 chunks cover 8 GiB of dense guest), and
#: refuses the record that would go past that, naming it and its byte offset.
CHUNK_ALLOWANCE = 32
PAGES_PER_CHUNK = 256


class RestoreError(StreamError):
    """The destination could not apply a record (populate or copy failed)."""


@dataclass
class RestoreResult:
    records: dict[str, int] = field(default_factory=dict)
    pages_populated: int = 0        # PFNs newly populated (data types and XALLOC)
    pages_written: int = 0          # data pages copied in (not in verify mode)
    xtab_skipped: int = 0
    broken_skipped: int = 0
    xalloc_entries: int = 0
    verify: bool = False            # a VERIFY record switched to verify mode
    pages_verified: int = 0
    verify_mismatches: int = 0
    verify_mismatch_pfns: list[int] = field(default_factory=list)  # first few
    static_data_end_inferred: bool = False
    tsc_info: TscInfo | None = None
    hvm_params: list[tuple[int, int]] = field(default_factory=list)
    hvm_context_bytes: int = 0
    bytes_received: int = 0
    complete: bool = False
    #: PFNs the VERIFY pass populated: populate_pfns runs before the compare, so pages
    #: no earlier pass sent arrive as the zeroed pages populate gives (not copied).
    pages_populated_by_verify: int = 0
    error: str | None = None
    #: Checkpointed streams only (absent from ``as_dict`` otherwise): CHECKPOINT
    #: records applied, and records held after the last one and dropped at failover.
    checkpointed: bool = False
    checkpoints: int = 0
    records_discarded: int = 0

    @property
    def ok(self) -> bool:
        return self.complete and self.error is None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tsc_info"] = None if self.tsc_info is None else asdict(self.tsc_info)
        if not self.checkpointed:
            for name in ("checkpointed", "checkpoints", "records_discarded"):
                del d[name]
        return d


def _spans_run(pfns: np.ndarray) -> bool:
    """Whether strictly increasing ``pfns`` are one contiguous run (they are exactly
    when they span their count): a group populate_pfns (xg_sr_restore.c) can hand
    to the destination as a run."""
    return pfns.size > 0 and int(pfns[-1]) - int(pfns[0]) == pfns.size - 1


class Restorer(CheckpointedRestore):
    """Applies a v2 stream's records to ``dest_hv`` (a ``hypervisor.domain.Hypervisor``
    built empty, or with whatever the destination already holds).

    ``feed`` and ``apply`` raise ``StreamError`` (``RestoreError`` for a failure on
    the destination) after recording it in ``result``; once failed, the restorer
    refuses further input. ``finish()`` returns the result and marks a stream that
    stopped before END as incomplete.
    """

    def __init__(self, dest_hv, *, pfn_limit: int | None = None,
                 on_record: Callable[[Record], Any] | None = None, checkpointed: bool = False):
        self.hv = dest_hv
        self.pfn_limit = pfn_limit
        self.on_record = on_record
        self.result = RestoreResult(checkpointed=checkpointed)
        self.checkpointed, self._held = checkpointed, None   # _held: buffer_all_records (checkpoint.py)
        self._records: Counter[str] = Counter()
        self._parser: StreamParser | None = None
        self._populated = PfnSet()
        self._order = RecordOrder()             # phase and non-repeating records seen
        self._verify = False
        self._done = False
        self._failed = False
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_where: list[str] = []     # the record that carried each pending part
        self._pending_inc: list[bool] = []      # each pending part's PFNs known strictly increasing
        self._pending_n = 0
        self._chunks: set[int] = set()          # P2M chunks this restore has populated into
        self._data_pages = 0

    # ---- entry points ---------------------------------------------------------------

    def feed(self, data) -> list[Record]:
        """Parse stream bytes and apply every record they complete."""
        self._check_open()
        if self._parser is None:
            self._parser = StreamParser(pfn_limit=self.pfn_limit, checkpointed=self.checkpointed)
        self.result.bytes_received += len(data)
        try:
            records = self._parser.feed(data)
        except StreamError as e:
            self._fail(e)
        for rec in records:
            self._apply(rec, from_stream=True)
        return records

    def apply(self, record: Record) -> None:
        """Apply one structured record (no stream bytes involved)."""
        self._check_open()
        self._apply(record, from_stream=False)

    def skip_xtab_run(self, lo: int, hi: int, records: int) -> None:
        """``records`` PAGE_DATA records holding only XTAB entries for PFNs [lo, hi)
        (a hole the saver walked): nothing to populate, only counted."""
        self._check_open()
        if not self._hold(self._skip_xtab_run, (lo, hi), records=records):
            self._skip_xtab_run(lo, hi, records)

    def _skip_xtab_run(self, lo: int, hi: int, records: int) -> None:
        self._order.infer(Phase.MEMORY)
        self.result.static_data_end_inferred = self._order.inferred
        self.result.xtab_skipped += int(hi) - int(lo)
        self._records["PAGE_DATA"] += int(records)
        self._sync()

    def apply_page_data_run(self, pfns: np.ndarray, nibbles: np.ndarray, tokens: np.ndarray) -> None:
        """PAGE_DATA records back to back (MAX_BATCH_SIZE entries each, the last may be
        shorter), applied as ``apply`` would apply them one by one, in bulk."""
        pfns = np.asarray(pfns, dtype=np.int64).reshape(-1)
        nibbles = np.asarray(nibbles, dtype=np.uint8).reshape(-1)
        tokens = np.asarray(tokens, dtype=np.uint64).reshape(-1)
        if self.on_record is not None or pfns.size <= MAX_BATCH_SIZE:
            for rec in page_data_records(pfns, nibbles, tokens):    # one by one (on_record sees each)
                self.apply(rec)
            return
        self._check_open()
        self._apply(Record.page_data(pfns, nibbles, tokens), from_stream=False,
                    records=-(-pfns.size // MAX_BATCH_SIZE))

    def finish(self) -> RestoreResult:
        """End of input: a restore that has not seen END (nor failed over) is incomplete."""
        self._fail_over()
        if not self._failed and not self._done:
            msg = "stream ended before its END record"
            if self._parser is not None:
                try:
                    self._parser.close()
                except StreamError as e:
                    msg = str(e)
            self.result.error = msg
            self.result.complete = False
            self._failed = True
        self._sync()
        return self.result

    def flush(self) -> None:
        """Apply the PAGE_DATA entries gathered so far."""
        if not self._pending:
            return
        parts, self._pending, self._pending_n = self._pending, [], 0
        wheres, self._pending_where = self._pending_where, []
        incs, self._pending_inc = self._pending_inc, []
        # One part (the usual flush of a span's group) is used as it is.
        pfns, nibbles, tokens = parts[0] if len(parts) == 1 else (np.concatenate(c) for c in zip(*parts))
        # Parts each strictly increasing, each starting past the one before: so is the group.
        inc = all(incs) and all(int(p[-1]) < int(q[0]) for (p, _, _), (q, _, _) in zip(parts, parts[1:]))
        try:
            self._apply_pages(pfns, nibbles, tokens, increasing=inc or None)
        except XenError as e:
            # Name the record that carried the PFN the destination refused, not the
            # record that happened to flush the group.
            bad = self._first_unpopulated(pfns)
            where = next((w for (p, _, _), w in zip(parts, wheres) if bad is not None and (p == bad).any()),
                         None)
            if where is None:
                raise
            raise RestoreError(f"{where} carried pfn {bad:#x}: destination failed: {e}") from None

    def _first_unpopulated(self, pfns: np.ndarray) -> int | None:
        want = np.unique(pfns)
        missing = want[self.hv.p2m_types(want) == P2MType.invalid]
        return int(missing[0]) if missing.size else (int(want[0]) if want.size else None)

    def populated_pfns(self) -> np.ndarray:
        """Sorted PFNs this restore populated."""
        return self._populated.to_array()

    @property
    def complete(self) -> bool:
        return self._done and not self._failed

    @property
    def failed(self) -> bool:
        return self._failed

    def abort(self, reason: str) -> RestoreResult:
        """Stop here (timeout, Ctrl-C, lost sender): the result keeps what was applied."""
        if not self._failed and not self._done:
            self._failed = True
            self.result.complete = False
            self.result.error = reason
        self._sync()
        return self.result

    # ---- internals ----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._failed:
            raise StreamError(f"restore already failed: {self.result.error}")
        if self._done:
            raise StreamError("restore already complete: data after the END record")

    def _fail(self, e: Exception):
        self._failed = True
        self.result.complete = False
        self.result.error = str(e)
        self._sync()
        if isinstance(e, StreamError):
            raise e
        raise RestoreError(str(e)) from e

    def _sync(self) -> None:
        self.result.records = dict(self._records)

    def _apply_now(self, rec: Record, *, from_stream: bool, records: int = 1) -> None:
        """Apply ``rec`` (or ``records`` PAGE_DATA records carried as one, see
        ``apply_page_data_run``); a failure fails the restore, naming the record."""
        try:
            self._process(rec, from_stream, records)
        except StreamError as e:
            self._fail(e)
        except RestoreError as e:
            self._fail(e)
        except XenError as e:
            self._fail(RestoreError(f"record #{rec.index} ({rec.name}): destination failed: {e}",
                                    offset=rec.offset if rec.offset >= 0 else None,
                                    record_index=rec.index if rec.index >= 0 else None))
        except (ValueError, TypeError, IndexError) as e:
            self._fail(RestoreError(f"record #{rec.index} ({rec.name}): malformed record: {e}"))
        self._records[rec.name] += records
        if self.on_record is not None:
            self.on_record(rec)
        self._sync()

    def _process(self, rec: Record, from_stream: bool, records: int = 1) -> None:
        rt = rec.type
        where = f"record #{rec.index} ({rec.name})" if rec.index >= 0 else rec.name
        if rt != RecType.PAGE_DATA:
            self.flush()
        rule = RECORD_RULES.get(rt)
        if rule is None and rt & REC_TYPE_OPTIONAL:
            return  # optional record: ignored
        if rule is None or not rule.accepted(self.checkpointed):
            raise StreamError(f"{where}: {not_handled(rt)}")
        # Records applied in-process carry no image header: like a version-2 image,
        # their first PAGE_DATA implies STATIC_DATA_END.
        version = None
        if from_stream and self._parser is not None and self._parser.image_header is not None:
            version = self._parser.image_header.version
        why = self._order.admit(rule, infer=not (version is not None and version >= 3))
        if why:
            raise StreamError(f"{where}: {why}")
        self.result.static_data_end_inferred = self._order.inferred
        if rule.keep is not None:
            name, decode = rule.keep
            setattr(self.result, name, decode(rec.body))
        if rule.step is Step.PAGE_DATA:
            self._page_data(rec, where, from_stream, records)
        elif rule.step is Step.VERIFY:
            self._verify = True
            self.result.verify = True
        elif rule.step is Step.END:
            self._drop_held()
            self._done = True
            self.result.complete = True
        elif rule.step is Step.CHECKPOINT:
            self._checkpoint()

    def _page_data(self, rec: Record, where: str, from_stream: bool, records: int = 1) -> None:
        """One PAGE_DATA record, or ``records`` of them back to back (MAX_BATCH_SIZE
        entries each) carried as one."""
        pfns = np.asarray(rec.pfns, dtype=np.int64).reshape(-1)
        nibbles = np.asarray(rec.nibbles, dtype=np.uint8).reshape(-1)
        tokens = np.asarray(rec.tokens, dtype=np.uint64).reshape(-1)
        if not from_stream:
            # The parser already checked stream records; structured ones get the same checks.
            check_page_data(pfns, nibbles, tokens.size, pfn_limit=self.pfn_limit, where=where)
        res = self.result
        counts = type_counts(nibbles)
        res.xtab_skipped += int(counts[PFInfo.XTAB])
        res.broken_skipped += int(counts[PFInfo.BROKEN])
        res.xalloc_entries += int(counts[PFInfo.XALLOC])
        if not counts[PFINFO_POPULATE].any():
            return
        keep = lookup(PFINFO_POPULATE, nibbles)
        if records > 1:
            # Per record: entries kept and data pages; of one type throughout (a span's
            # run of NOTAB pages) they are the record sizes or none, with no pass.
            one = int(np.argmax(counts)) if int(counts.max()) == nibbles.size else None
            if one is None:
                kept = batch_totals(keep, MAX_BATCH_SIZE)
                data = batch_totals(lookup(PFINFO_HAS_DATA, nibbles), MAX_BATCH_SIZE)
            else:
                sizes = np.minimum(MAX_BATCH_SIZE, nibbles.size - np.arange(0, nibbles.size, MAX_BATCH_SIZE))
                kept, data = sizes * int(PFINFO_POPULATE[one]), sizes * int(PFINFO_HAS_DATA[one])
            self._page_data_run(pfns, nibbles, tokens, keep, kept, data, where)
            return
        self._data_pages += int(tokens.size)
        self._check_chunks(pfns[keep], where, rec.offset)
        self._pending.append((pfns[keep], nibbles[keep], tokens))
        self._pending_where.append(where if rec.offset < 0 else f"{where} at byte {rec.offset}")
        self._pending_inc.append(False)         # not looked at (a record's own order)
        self._pending_n += int(keep.sum())
        if self._pending_n >= APPLY_GROUP:
            self.flush()

    def _page_data_run(self, pfns: np.ndarray, nibbles: np.ndarray, tokens: np.ndarray, keep: np.ndarray,
                       kept: np.ndarray, data: np.ndarray, where: str) -> None:
        """The rest of ``_page_data`` for records back to back (``kept`` and ``data``:
        each record's kept entries and data pages): gathered and applied in the groups
        the records one by one would make (a restore cut short keeps the same pages).
        Whether the run's PFNs are strictly increasing (the engine's runs are) is found
        once here and handed on, so no later step looks again."""
        inc = pfns.size < 2 or known_run(pfns) or bool((pfns[1:] > pfns[:-1]).all())
        data_end = np.cumsum(data)
        self._check_chunks_run(pfns, keep, data_end, where, inc)
        nrec = -(-pfns.size // MAX_BATCH_SIZE)             # records back to back
        kept = kept.tolist()
        data_end = data_end.tolist()
        a = 0
        acc = self._pending_n
        for i, k in enumerate(kept):
            if not k:
                continue
            acc += k
            if acc >= APPLY_GROUP:
                self._gather(pfns, nibbles, tokens, keep, data_end, a, i + 1, where, inc)
                self.flush()
                a, acc = i + 1, 0
        if a < nrec:
            self._gather(pfns, nibbles, tokens, keep, data_end, a, nrec, where, inc, held=True)

    def _gather(self, pfns, nibbles, tokens, keep, data_end: list, a: int, b: int, where: str, inc: bool,
                held: bool = False) -> None:
        """Gather the kept entries of records ``[a, b)`` of a run for the next flush
        (``held``: it comes after this call, so the run's arrays are not kept for it;
        ``inc``: the run's PFNs are strictly increasing, and so is any part of them)."""
        lo, hi = a * MAX_BATCH_SIZE, b * MAX_BATCH_SIZE
        m = keep[lo:hi]
        n = int(np.count_nonzero(m))
        if not n:
            return
        t_lo = data_end[a - 1] if a else 0
        tok = tokens[t_lo:data_end[b - 1]]
        if n == m.size and not held:      # every entry kept (the usual case): the slices themselves
            self._pending.append((pfns[lo:hi], nibbles[lo:hi], tok))
        else:
            self._pending.append((pfns[lo:hi][m], nibbles[lo:hi][m], tok.copy() if held else tok))
        self._pending_where.append(where)
        self._pending_inc.append(inc)
        self._pending_n += n

    def _check_chunks_run(self, pfns: np.ndarray, keep: np.ndarray, data_end: np.ndarray, where: str,
                          inc: bool = False) -> None:
        """``_check_chunks`` for records back to back, record by record, in bulk: after
        each record, the chunks populated into may not pass the allowance its data buys
        (``data_end``: the run's data pages up to each record's end; ``inc``: the
        caller found ``pfns`` strictly increasing)."""
        nrec = -(-pfns.size // MAX_BATCH_SIZE)             # records back to back
        data_after = self._data_pages + data_end
        if pfns.size and (inc or bool((pfns[1:] >= pfns[:-1]).all())):    # ascending (the stream's order)
            # Each chunk's part is a slice: its first kept entry found there, with no
            # per-entry chunk numbers.
            uniq, at = [], []
            for c, a, b in chunk_pieces(pfns):
                i = int(np.argmax(keep[a:b]))
                if keep[a + i]:
                    uniq.append(c)
                    at.append(a + i)
            uniq, first_at = np.array(uniq, dtype=np.int64), np.array(at, dtype=np.int64)
        else:
            kidx = np.flatnonzero(keep)
            uniq, first = np.unique(pfns[kidx] >> CHUNK_BITS, return_index=True)
            first_at = kidx[first]
        seen = np.fromiter((int(c) in self._chunks for c in uniq.tolist()), dtype=bool, count=uniq.size) \
            if uniq.size <= 4096 else np.isin(uniq, np.fromiter(self._chunks, dtype=np.int64))
        new_rec = first_at[~seen] // MAX_BATCH_SIZE
        total = len(self._chunks) + np.cumsum(np.bincount(new_rec, minlength=nrec))
        allowed = CHUNK_ALLOWANCE + data_after // PAGES_PER_CHUNK
        over = np.flatnonzero(total > allowed)
        if over.size:
            i = int(over[0])
            raise StreamError(
                f"{where} (record {i + 1} of {nrec}): its PFNs would spread the destination over "
                f"{int(total[i])} P2M chunks (2^{CHUNK_BITS} PFNs each) after only {int(data_after[i])} data "
                f"pages; a stream may use {CHUNK_ALLOWANCE} chunks plus one per {PAGES_PER_CHUNK} data pages "
                "it carries")
        self._data_pages = int(data_after[-1])
        self._chunks.update(uniq[~seen].tolist())

    def _check_chunks(self, pfns: np.ndarray, where: str, offset: int) -> None:
        """Refuse a record whose PFNs would make the destination allocate far more P2M
        than the stream has carried data for (see CHUNK_ALLOWANCE)."""
        chunks = pfns >> CHUNK_BITS
        first = int(chunks[0])
        if first in self._chunks and bool((chunks == first).all()):
            return
        new = [c for c in np.unique(chunks).tolist() if c not in self._chunks]
        allowed = CHUNK_ALLOWANCE + self._data_pages // PAGES_PER_CHUNK
        total = len(self._chunks) + len(new)
        if total > allowed:
            at = f" at byte {offset}" if offset >= 0 else ""
            raise StreamError(
                f"{where}{at}: its PFNs would spread the destination over {total} P2M chunks "
                f"(2^{CHUNK_BITS} PFNs each) after only {self._data_pages} data pages; a stream may use "
                f"{CHUNK_ALLOWANCE} chunks plus one per {PAGES_PER_CHUNK} data pages it carries",
                offset=offset if offset >= 0 else None)
        self._chunks.update(new)

    def _apply_pages(self, pfns: np.ndarray, nibbles: np.ndarray, tokens: np.ndarray,
                     increasing: bool | None = None) -> None:
        """populate_pfns + the copy (or the verify compare) for gathered entries, in
        stream order: where a PFN comes more than once the last copy wins.
        ``increasing``: the caller knows ``pfns`` strictly increasing (None: look)."""
        res = self.result
        # populate_pfns: data types and XALLOC not yet populated (never unpopulate).
        ascending = increasing or pfns.size < 2 or known_run(pfns) or bool((pfns[1:] > pfns[:-1]).all())
        want = pfns if ascending else sorted_unique(pfns)
        seen = self._populated.contains(want, ascending=True)
        new = want[~seen] if seen.any() else want
        if new.size:
            # Strictly increasing PFNs spanning their count are one run (a group of
            # fresh PFNs, the usual case): the destination is told so.
            self.hv.populate_physmap_exact(new, run=_spans_run(new))
            self._populated.add(new, ascending=True)
            res.pages_populated += int(new.size)
            if self._verify:
                res.pages_populated_by_verify += int(new.size)

        has = lookup(PFINFO_HAS_DATA, nibbles)
        data_pfns = pfns if has.all() else pfns[has]   # usually every entry carries data
        if data_pfns.size == 0:
            return
        if self._verify:
            cur, err = self.hv.read_pages(data_pfns)
            cur = np.asarray(cur, dtype=np.uint64)
            bad = (np.asarray(err) != 0) | (cur != tokens)
            res.pages_verified += int(data_pfns.size)
            nbad = int(np.count_nonzero(bad))
            if nbad:
                res.verify_mismatches += nbad
                room = VERIFY_LIST_MAX - len(res.verify_mismatch_pfns)
                if room > 0:
                    res.verify_mismatch_pfns.extend(int(p) for p in data_pfns[bad][:room])
        else:
            # write_pages keeps the last copy of a PFN that comes more than once (with
            # strictly increasing PFNs none does).
            self.hv.write_pages(data_pfns, tokens, run=ascending and _spans_run(data_pfns))
            res.pages_written += int(data_pfns.size)


# --------------------------------------------------------------------------------------
# xmig receive: one TCP connection into a Restorer
# --------------------------------------------------------------------------------------


async def receive_tcp(host: str, port: int, dest_hv, on_record: Callable[[Record], Any] | None = None,
                      *, pfn_limit: int | None = None,
                      on_listen: Callable[[str, int], Any] | None = None,
                      timeout: float | None = None,
                      stop: asyncio.Event | None = None,
                      chunk_size: int = 1 << 20) -> RestoreResult:
    """Restore into ``dest_hv`` the one stream that arrives on ``host:port``: a
    ``Restorer`` fed by ``migrate.stream.sinks.receive_stream``, which owns the socket
    and documents ``on_listen``, ``timeout`` and ``stop``."""
    restorer = Restorer(dest_hv, pfn_limit=pfn_limit, on_record=on_record)
    return await receive_stream(host, port, restorer, on_listen=on_listen, timeout=timeout, stop=stop,
                                chunk_size=chunk_size)
