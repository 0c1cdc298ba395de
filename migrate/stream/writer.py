"""The stream writer: a save's records, in order, to a ``Sink``.

Mirrors ``tools/libs/guest/xg_sr_save.c`` (``write_headers``, ``write_record``,
``write_batch``, ``write_end_of_checkpoint``) and ``xg_sr_save_x86_hvm.c``. It expands
each frame's 64-bit content token to 4 KiB (``hypervisor.content.expand_tokens``) into
one reused batch buffer, so a PAGE_DATA record costs one vectorised XOR and one
``write``; a counting-only sink (``NullSink``) never expands anything, so huge guests
cost only arithmetic. It calls only what ``sinks.Sink`` declares.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable

import numpy as np

from hypervisor.abi import MAX_BATCH_SIZE, PAGE_SHIFT, PAGE_SIZE, PFInfo
from hypervisor.content import expand_tokens
from hypervisor.tables import batch_totals

from migrate.stream.format import (
    CPUID_LEAF,
    DHDR,
    DHDR_TYPE_X86_HVM,
    IHDR,
    IHDR_ID,
    IHDR_MARKER,
    IHDR_VERSION,
    MSR_ENTRY,
    REC_LENGTH_MAX,
    RHDR,
    RHDR_SIZE,
    RecType,
    StreamError,
    TscInfo,
    make_pfn_words,
    pack_hvm_params,
    pad,
    rec_type_name,
)
from migrate.stream.hvm import (
    check_hvm_context,
    default_cpuid_policy,
    default_hvm_context,
    default_hvm_params,
    default_msr_policy,
)
from migrate.stream.records import Record, check_page_data
from migrate.stream.sinks import ClosesOnExit, Sink


class StreamWriter(ClosesOnExit):
    """Writes a migration v2 stream (x86 HVM) to a ``Sink``, as ``xg_sr_save.c`` does.

    Order of a save: ``write_image_header``, ``write_domain_header``,
    ``write_static_data``, ``write_page_data`` (many), ``write_end_of_checkpoint``,
    optionally ``write_verify`` + ``write_page_data``, ``write_end``, ``close``.
    """

    _BATCH_BYTES = RHDR_SIZE + 8 + 8 * MAX_BATCH_SIZE + PAGE_SIZE * MAX_BATCH_SIZE

    def __init__(self, sink: Sink):
        if not isinstance(sink, Sink):
            raise StreamError(f"a StreamWriter writes to a migrate.stream.sinks.Sink, not {type(sink).__name__}")
        self.sink = sink
        self.bytes_written = 0
        self.records_written: Counter[RecType] = Counter()
        self.pfns_written = 0          # pfn words in PAGE_DATA records
        self.pages_written = 0         # 4 KiB data pages in PAGE_DATA records
        self.page_data_bytes = 0       # bytes of PAGE_DATA records (headers included)
        self._ended = False
        self._counting = bool(sink.counting_only)
        self._records = bool(sink.accepts_records)
        # Two batch buffers: while the background thread writes one, the next batch is
        # expanded into the other (numpy and write() both release the GIL).
        self._background = (not self._counting) and bool(sink.background_ok)
        self._bufs: list[np.ndarray] = []
        self._pending: list[Future | None] = [None, None]
        self._next = 0
        self._executor: ThreadPoolExecutor | None = None

    @property
    def expands_pages(self) -> bool:
        """Whether ``write_page_data`` expands every page to its 4 KiB on the caller's
        thread (a byte sink: a file, a socket, a hash), rather than counting or handing
        records over."""
        return not self._counting and not self._records

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
        rec = RHDR.pack(int(rtype), len(body)) + body + bytes(pad(len(body)))
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
        self._emit(IHDR.pack(IHDR_MARKER, IHDR_ID, IHDR_VERSION, 0, 0, 0))

    def write_domain_header(self, xen_major: int = 4, xen_minor: int = 20) -> None:
        """Domain header: x86 HVM (type 2), page_shift 12."""
        self._emit(DHDR.pack(DHDR_TYPE_X86_HVM, PAGE_SHIFT, 0, xen_major, xen_minor))

    def write_static_data(self, cpuid_policy: bytes | None = None, msr_policy: bytes | None = None) -> None:
        """X86_CPUID_POLICY, X86_MSR_POLICY (write_x86_cpu_policy_records), STATIC_DATA_END."""
        cpuid = default_cpuid_policy() if cpuid_policy is None else bytes(cpuid_policy)
        msr = default_msr_policy() if msr_policy is None else bytes(msr_policy)
        if len(cpuid) % CPUID_LEAF.size:
            raise StreamError(f"X86_CPUID_POLICY of {len(cpuid)} bytes is not a whole number of "
                              f"xen_cpuid_leaf_t ({CPUID_LEAF.size} bytes)")
        if len(msr) % MSR_ENTRY.size:
            raise StreamError(f"X86_MSR_POLICY of {len(msr)} bytes is not a whole number of "
                              f"xen_msr_entry_t ({MSR_ENTRY.size} bytes)")
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
        data_per = batch_totals(has, MAX_BATCH_SIZE)
        lengths = 8 + 8 * counts + PAGE_SIZE * data_per
        total = int((RHDR_SIZE + lengths + ((-lengths) & 7)).sum())
        self.records_written[RecType.PAGE_DATA] += int(starts.size)
        self.pfns_written += n
        self.pages_written += int(tokens.size)
        self.page_data_bytes += total
        if self._records:
            if starts.size == 1:
                self.sink.put_record(Record.page_data(pfns, nibbles, tokens))
            else:
                self.sink.put_page_data_run(pfns, nibbles, tokens)
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

    def write_checkpoint(self) -> None:
        """write_checkpoint_record (xg_sr_save.c): the empty CHECKPOINT record that ends
        one checkpoint of a checkpointed stream."""
        self.write_record(RecType.CHECKPOINT)

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
