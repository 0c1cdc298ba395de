"""Migration stream v2: writer layout, round trip, sinks, determinism, summary."""

from __future__ import annotations

import socket
import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hypervisor.abi import PAGE_SIZE, PFINFO_HAS_DATA, PFInfo
from hypervisor.content import expand_tokens
from migrate.stream.format import REC_LENGTH_MAX, RecType, StreamError, TscInfo, make_pfn_words, split_pfn_words
from migrate.stream.hvm import default_hvm_context
from migrate.stream.parser import StreamParser
from migrate.stream.records import Record
from migrate.stream.sinks import CallbackSink, FileSink, NullSink, TcpSink, TeeSink, parse_stream, read_stream
from migrate.stream.summary import summarise_stream
from migrate.stream.writer import StreamWriter


class BytesSink(CallbackSink):
    def __init__(self):
        self.chunks: list[bytes] = []
        super().__init__(self.chunks.append)

    def getvalue(self) -> bytes:
        return b"".join(self.chunks)


def sample_batches(seed: int = 7):
    """A few batches with every PFINFO type, including a multi-record one."""
    rng = np.random.default_rng(seed)
    batches = []
    for n in (5, 1024, 1500, 3):
        pfns = rng.choice(1 << 20, size=n, replace=False).astype(np.int64)
        nib = np.zeros(n, dtype=np.uint8)
        kinds = rng.integers(0, 10, n)
        nib[kinds == 1] = PFInfo.XTAB
        nib[kinds == 2] = PFInfo.BROKEN
        nib[kinds == 3] = PFInfo.XALLOC
        nib[kinds == 4] = PFInfo.L1TAB
        nib[kinds == 5] = PFInfo.L4TAB_PINNED
        ndata = int(PFINFO_HAS_DATA[nib].sum())
        tokens = rng.integers(0, 1 << 64, ndata, dtype=np.uint64)
        tokens[: min(2, ndata)] = 0  # zero pages too
        batches.append((pfns, nib, tokens))
    return batches


def write_sample(sink, *, verify=True, batches=None) -> StreamWriter:
    w = StreamWriter(sink)
    w.write_image_header()
    w.write_domain_header(4, 19)
    w.write_static_data()
    for pfns, nib, tok in batches or sample_batches():
        w.write_page_data(pfns, nib, tok)
    w.write_end_of_checkpoint(TscInfo(0, 2_000_000, 123456789, 1), [(1, 0xFEFF1), (17, 0xFEFF3), (5, 0)],
                              default_hvm_context(nr_vcpus=2))
    if verify:
        w.write_verify()
        pfns, nib, tok = sample_batches()[0]
        w.write_page_data(pfns, nib, tok)
    w.write_end()
    w.close()
    return w


def sample_bytes(**kw) -> bytes:
    s = BytesSink()
    write_sample(s, **kw)
    return s.getvalue()


# ---- layout ------------------------------------------------------------------------


def test_image_header_is_big_endian_and_domain_header_is_hvm():
    data = sample_bytes()
    marker, ident, version, options, r1, r2 = struct.unpack(">QIIHHI", data[:24])
    assert (marker, ident, version, options, r1, r2) == (2**64 - 1, 0x58454E46, 3, 0, 0, 0)
    assert data[8:12] == b"XENF"
    dtype, shift, res, major, minor = struct.unpack("<IHHII", data[24:40])
    assert (dtype, shift, res, major, minor) == (2, 12, 0, 4, 19)


def test_records_are_8_byte_aligned_and_body_length_excludes_padding():
    data = sample_bytes()
    off = 40
    seen = []
    while off < len(data):
        rtype, length = struct.unpack_from("<II", data, off)
        seen.append(rtype)
        pad = (-length) % 8
        assert data[off + 8 + length: off + 8 + length + pad] == bytes(pad)
        off += 8 + length + pad
        assert off % 8 == 0
    assert off == len(data)
    assert seen[:3] == [RecType.X86_CPUID_POLICY, RecType.X86_MSR_POLICY, RecType.STATIC_DATA_END]
    assert seen[-1] == RecType.END


def test_end_of_checkpoint_order_is_tsc_context_params_as_xen_hvm_saver():
    recs = parse_stream(sample_bytes(verify=False)).records
    types = [r.type for r in recs]
    i = types.index(RecType.X86_TSC_INFO)
    assert types[i:i + 3] == [RecType.X86_TSC_INFO, RecType.HVM_CONTEXT, RecType.HVM_PARAMS]


def test_hvm_params_drop_zero_values_and_record_skipped_when_empty():
    recs = parse_stream(sample_bytes(verify=False)).records
    params = [r for r in recs if r.type == RecType.HVM_PARAMS][0].hvm_params()
    assert params == [(1, 0xFEFF1), (17, 0xFEFF3)]
    s = BytesSink()
    w = StreamWriter(s)
    w.write_image_header(); w.write_domain_header(); w.write_static_data()
    w.write_end_of_checkpoint(TscInfo(), [(5, 0)])
    w.write_end(); w.close()
    types = [r.type for r in parse_stream(s.getvalue()).records]
    assert RecType.HVM_PARAMS not in types


def test_page_data_layout_type_nibble_in_bits_63_60_and_exact_size():
    s = BytesSink()
    w = StreamWriter(s)
    pfns = np.array([0x10, 0x11, 0x12, 0xFFFFFFFFF], dtype=np.int64)
    nib = np.array([PFInfo.NOTAB, PFInfo.XTAB, PFInfo.L2TAB_PINNED, PFInfo.BROKEN], dtype=np.uint8)
    tok = np.array([0xAAAA, 0xBBBB], dtype=np.uint64)
    w.write_page_data(pfns, nib, tok)
    data = s.getvalue()
    rtype, length = struct.unpack_from("<II", data, 0)
    assert rtype == 1 and length == 8 + 8 * 4 + 4096 * 2 and len(data) == 8 + length
    count, res = struct.unpack_from("<II", data, 8)
    assert (count, res) == (4, 0)
    words = np.frombuffer(data, "<u8", 4, 16)
    assert words[1] == (0xF << 60) | 0x11
    assert words[2] == (0xA << 60) | 0x12
    assert words[3] == (0xD << 60) | 0xFFFFFFFFF
    pages = np.frombuffer(data, np.uint8, offset=16 + 32).reshape(2, PAGE_SIZE)
    assert np.array_equal(pages, expand_tokens(tok))


def test_pfn_words_round_trip_vectorised():
    pfns = np.array([0, 1, (1 << 52) - 1, 12345], dtype=np.int64)
    nib = np.array([0, 0xF, 0xE, 0x9], dtype=np.uint8)
    w = make_pfn_words(pfns, nib)
    assert w.dtype == np.uint64
    p2, n2 = split_pfn_words(w)
    assert np.array_equal(p2, pfns) and np.array_equal(n2, nib)
    with pytest.raises(ValueError):
        make_pfn_words(np.array([1 << 52]), np.array([0]))


def test_writer_splits_batches_at_1024_pfns():
    s = BytesSink()
    w = StreamWriter(s)
    n = 2500
    w.write_page_data(np.arange(n), np.zeros(n, np.uint8), np.arange(1, n + 1, dtype=np.uint64))
    assert w.records_written[RecType.PAGE_DATA] == 3
    assert w.pages_written == n and w.pfns_written == n


def test_writer_rejects_bad_inputs():
    w = StreamWriter(NullSink())
    with pytest.raises(StreamError, match="page tokens"):
        w.write_page_data([1, 2], [0, 0], [5])
    with pytest.raises(StreamError, match="reserved page type"):
        w.write_page_data([1], [0x6], [])
    with pytest.raises(StreamError, match="REC_LENGTH_MAX"):
        w.write_record(RecType.HVM_CONTEXT, bytes(REC_LENGTH_MAX + 1))
    with pytest.raises(StreamError, match="HEADER"):
        w.write_end_of_checkpoint(None, None, b"not an hvm context")
    w.write_end()
    with pytest.raises(StreamError, match="END"):
        w.write_verify()


def test_writer_accepts_record_of_exactly_rec_length_max():
    w = StreamWriter(NullSink())
    w.write_record(RecType.HVM_CONTEXT, bytes(REC_LENGTH_MAX))
    assert w.bytes_written == 8 + REC_LENGTH_MAX


# ---- round trip -----------------------------------------------------------------------


def test_round_trip_every_record_and_page_identical():
    data = sample_bytes()
    parsed = parse_stream(data)
    assert parsed.image_header.version == 3 and parsed.domain_header.xen_minor == 19
    got_pd = [r for r in parsed.records if r.type == RecType.PAGE_DATA]
    batches = sample_batches()
    # 5, 1024, 1500 (-> 1024 + 476), 3, then the verify pass's 5
    assert [r.pfns.size for r in got_pd] == [5, 1024, 1024, 476, 3, 5]
    pfns = np.concatenate([b[0] for b in batches] + [batches[0][0]])
    nib = np.concatenate([b[1] for b in batches] + [batches[0][1]])
    tok = np.concatenate([b[2] for b in batches] + [batches[0][2]])
    assert np.array_equal(np.concatenate([r.pfns for r in got_pd]), pfns)
    assert np.array_equal(np.concatenate([r.nibbles for r in got_pd]), nib)
    assert np.array_equal(np.concatenate([r.tokens for r in got_pd]), tok)
    tsc = [r for r in parsed.records if r.type == RecType.X86_TSC_INFO][0].tsc_info()
    assert tsc == TscInfo(0, 2_000_000, 123456789, 1)
    assert [r.name for r in parsed.records][-2:] == ["PAGE_DATA", "END"]
    assert all(r.corrupt_pfns is None for r in got_pd)


def test_round_trip_through_file_sink_and_read_stream(tmp_path):
    path = tmp_path / "m.xmig"
    w = write_sample(FileSink(path))
    assert path.stat().st_size == w.bytes_written
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    from_file = list(read_stream(path))
    from_bytes = list(read_stream(path.read_bytes()))
    with open(path, "rb") as f:
        from_obj = list(read_stream(f, chunk_size=1000))
    assert from_file == from_bytes == from_obj
    assert from_file[-1].type == RecType.END


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 20000), min_size=1, max_size=30))
def test_push_parser_gives_same_records_for_any_chunking(cuts):
    data = sample_bytes(verify=False)
    expect = parse_stream(data).records
    p = StreamParser()
    got, pos = [], 0
    for c in cuts:
        got += p.feed(data[pos:pos + c])
        pos += c
    got += p.feed(data[pos:])
    p.close()
    assert got == expect


def test_determinism_same_inputs_byte_identical():
    assert sample_bytes() == sample_bytes()


def test_null_sink_counts_the_same_bytes_without_expanding(monkeypatch):
    real = sample_bytes()
    import migrate.stream.writer as stream_mod

    def boom(*a, **k):
        raise AssertionError("a counting-only sink must not expand pages")

    monkeypatch.setattr(stream_mod, "expand_tokens", boom)
    sink = NullSink()
    w = write_sample(sink)
    assert sink.bytes_written == w.bytes_written == len(real)
    tee = TeeSink(NullSink(), NullSink())
    assert tee.counting_only
    write_sample(tee)
    assert all(s.bytes_written == len(real) for s in tee.sinks)


def test_null_sink_huge_guest_is_cheap():
    sink = NullSink()
    w = StreamWriter(sink)
    n = 1 << 22  # 16 GiB of pages
    w.write_page_data(np.arange(n), np.zeros(n, np.uint8), np.ones(n, np.uint64))
    assert sink.bytes_written == (n // 1024) * (8 + 8 + 8 * 1024 + 4096 * 1024)


def test_tee_sink_writes_file_and_counts(tmp_path):
    path = tmp_path / "t.xmig"
    n, b = NullSink(), BytesSink()
    write_sample(TeeSink(FileSink(path), n, b))
    assert path.read_bytes() == b.getvalue() == sample_bytes()
    assert n.bytes_written == len(b.getvalue())


def test_file_sink_abort_leaves_nothing(tmp_path):
    path = tmp_path / "aborted.xmig"
    with pytest.raises(RuntimeError):
        with StreamWriter(FileSink(path)) as w:
            w.write_image_header()
            w.write_page_data([1, 2], [0, 0], [3, 4])
            raise RuntimeError("migration failed")
    assert list(tmp_path.iterdir()) == []


def test_file_sink_bad_directory_is_a_stream_error(tmp_path):
    with pytest.raises(StreamError, match="cannot create stream file"):
        FileSink(tmp_path / "no" / "such" / "dir" / "x.xmig")


def test_tcp_sink_connection_refused_is_clear():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(StreamError, match=rf"cannot connect to tcp://127\.0\.0\.1:{port}: "):
        TcpSink("127.0.0.1", port, timeout=2)


def test_callback_sink_feeds_push_parser_in_process():
    p = StreamParser()
    got: list[Record] = []
    write_sample(CallbackSink(lambda b: got.extend(p.feed(b)), copy=False))
    p.close()
    assert got == parse_stream(sample_bytes()).records


# ---- summary ------------------------------------------------------------------------


def test_summarise_stream_counts_records_pages_and_range(tmp_path):
    path = tmp_path / "s.xmig"
    write_sample(FileSink(path), verify=False)
    s = summarise_stream(path)
    assert s.valid and s.error is None
    assert s.records_by_type["PAGE_DATA"] == 5 and s.records_by_type["END"] == 1
    batches = sample_batches()
    nib = np.concatenate([b[1] for b in batches])
    pfns = np.concatenate([b[0] for b in batches])
    assert s.pages_by_type["XTAB"] == int((nib == PFInfo.XTAB).sum())
    assert sum(s.pages_by_type.values()) == nib.size
    assert s.data_pages == int(PFINFO_HAS_DATA[nib].sum())
    assert (s.pfn_min, s.pfn_max) == (int(pfns.min()), int(pfns.max()))
    assert s.total_bytes == path.stat().st_size
    assert s.xen_version == "4.19" and s.domain_type == "x86 HVM"


def test_summarise_stream_reports_invalid_stream(tmp_path):
    path = tmp_path / "bad.xmig"
    path.write_bytes(sample_bytes()[:-8])
    s = summarise_stream(path)
    assert not s.valid and "truncated" in s.error
    assert s.records_by_type["PAGE_DATA"] >= 1
    missing = summarise_stream(tmp_path / "missing.xmig")
    assert not missing.valid and "cannot open" in missing.error


def test_record_sink_hands_structured_records_without_expanding(monkeypatch):
    data = sample_bytes()
    expect = parse_stream(data).records
    import migrate.stream.writer as stream_mod
    from migrate.stream.sinks import RecordSink

    monkeypatch.setattr(stream_mod, "expand_tokens", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    got: list[Record] = []
    sink = RecordSink(got.append)
    w = write_sample(sink)
    assert got == expect
    assert sink.bytes_written == w.bytes_written == len(data)


def test_file_sink_sha256_and_tee_forwarding(tmp_path):
    import hashlib
    from migrate.stream.sinks import RecordSink

    path = tmp_path / "h.xmig"
    got: list[Record] = []
    tee = TeeSink(FileSink(path, hash=True), RecordSink(got.append))
    assert not tee.counting_only and tee.accepts_records
    write_sample(tee)
    assert tee.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert got == parse_stream(path).records
