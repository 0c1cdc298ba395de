"""Restore (xg_sr_restore.c): populate data and XALLOC, skip XTAB/BROKEN, never
unpopulate, verify mode, errors never reported as success, and `xmig receive` over TCP."""

from __future__ import annotations

import asyncio
import socket

import numpy as np
import pytest

from hypervisor.abi import PFINFO_HAS_DATA, DomainLayout, PFInfo
from migrate.toolstack.restore import Restorer, RestoreError, RestoreResult, receive_tcp
from migrate.stream import (
    CallbackSink,
    Record,
    RecType,
    StreamError,
    StreamWriter,
    TcpSink,
)

domain = pytest.importorskip("hypervisor.domain", reason="hypervisor.domain (the Hypervisor facade) does not import")

NOTAB, XTAB, BROKEN, XALLOC = PFInfo.NOTAB, PFInfo.XTAB, PFInfo.BROKEN, PFInfo.XALLOC


def empty_dest(host_frames: int = 1 << 16):
    hv = domain.Hypervisor(host_frames=host_frames, behaviour="fixed")
    hv.build(DomainLayout(ram_gfns=np.empty(0, np.int64)))
    return hv


def tokens_of(hv, pfns) -> np.ndarray:
    tok, err = hv.read_pages(np.asarray(pfns, dtype=np.int64))
    assert not np.asarray(err).any(), f"read_pages failed for {np.asarray(pfns)[np.asarray(err) != 0]}"
    return np.asarray(tok, dtype=np.uint64)


def batch(entries):
    """[(pfn, nibble, token-or-None)] -> (pfns, nibbles, tokens for data entries)."""
    pfns = np.array([e[0] for e in entries], dtype=np.int64)
    nib = np.array([e[1] for e in entries], dtype=np.uint8)
    tok = np.array([e[2] for e in entries if PFINFO_HAS_DATA[e[1]]], dtype=np.uint64)
    return pfns, nib, tok


def stream_of(batches, *, verify_batches=(), static=True, end=True) -> bytes:
    chunks: list[bytes] = []
    w = StreamWriter(CallbackSink(chunks.append))
    w.write_image_header()
    w.write_domain_header()
    if static:
        w.write_static_data()
    for b in batches:
        w.write_page_data(*b)
    w.write_end_of_checkpoint()
    if verify_batches:
        w.write_verify()
        for b in verify_batches:
            w.write_page_data(*b)
    if end:
        w.write_end()
    w.close()
    return b"".join(chunks)


def restore_bytes(data: bytes, hv=None, chunk: int = 65536, **kw) -> tuple[RestoreResult, Restorer]:
    hv = hv or empty_dest()
    r = Restorer(hv, **kw)
    for i in range(0, len(data), chunk):
        r.feed(data[i:i + chunk])
    return r.finish(), r


# ---- the rules ------------------------------------------------------------------------


def test_round_trip_restores_every_page():
    rng = np.random.default_rng(1)
    pfns = rng.choice(50_000, 3000, replace=False).astype(np.int64)
    tok = rng.integers(1, 1 << 63, pfns.size, dtype=np.uint64)
    res, r = restore_bytes(stream_of([(pfns, np.zeros(pfns.size, np.uint8), tok)]))
    assert res.ok and res.complete and res.error is None
    assert res.pages_populated == res.pages_written == 3000
    assert np.array_equal(r.populated_pfns(), np.sort(pfns))
    assert np.array_equal(tokens_of(r.hv, pfns), tok)
    assert res.records["PAGE_DATA"] == 3 and res.records["END"] == 1
    assert res.tsc_info is not None and res.hvm_params


def test_populates_data_and_xalloc_skips_xtab_and_broken():
    b = batch([(10, NOTAB, 111), (11, XTAB, None), (12, BROKEN, None), (13, XALLOC, None),
               (14, PFInfo.L1TAB, 222), (15, PFInfo.L3TAB_PINNED, 333)])
    res, r = restore_bytes(stream_of([b]))
    assert res.ok
    assert r.populated_pfns().tolist() == [10, 13, 14, 15]
    assert res.pages_populated == 4 and res.pages_written == 3
    assert (res.xtab_skipped, res.broken_skipped, res.xalloc_entries) == (1, 1, 1)
    assert set(r.hv.ram_gfns().tolist()) == {10, 13, 14, 15}
    assert tokens_of(r.hv, [10, 14, 15]).tolist() == [111, 222, 333]


def test_never_unpopulates_a_pfn_later_sent_as_xtab():
    first = batch([(5, NOTAB, 0xAAAA), (6, NOTAB, 0xBBBB)])
    later = batch([(5, XTAB, None), (6, NOTAB, 0xCCCC)])
    res, r = restore_bytes(stream_of([first, later]))
    assert res.ok and res.xtab_skipped == 1
    assert set(r.hv.ram_gfns().tolist()) == {5, 6}
    assert tokens_of(r.hv, [5, 6]).tolist() == [0xAAAA, 0xCCCC]  # 5 keeps its stale page
    assert res.pages_populated == 2


def test_resent_page_is_not_populated_twice():
    b1 = batch([(1, NOTAB, 1), (2, NOTAB, 2)])
    b2 = batch([(2, NOTAB, 3), (3, XALLOC, None), (3, NOTAB, 4)])
    res, r = restore_bytes(stream_of([b1, b2]))
    assert res.ok and res.pages_populated == 3
    assert tokens_of(r.hv, [1, 2, 3]).tolist() == [1, 3, 4]


def test_verify_mode_compares_instead_of_copying():
    pfns = np.arange(100, 110, dtype=np.int64)
    tok = np.arange(1, 11, dtype=np.uint64)
    vtok = tok.copy()
    vtok[[2, 7]] += 1000
    res, r = restore_bytes(stream_of([(pfns, np.zeros(10, np.uint8), tok)],
                                     verify_batches=[(pfns, np.zeros(10, np.uint8), vtok)]))
    assert res.ok and res.verify
    assert res.pages_written == 10 and res.pages_verified == 10
    assert res.verify_mismatches == 2 and res.verify_mismatch_pfns == [102, 107]
    assert np.array_equal(tokens_of(r.hv, pfns), tok)  # compared, not copied


def test_apply_structured_records_infers_static_data_end():
    hv = empty_dest()
    r = Restorer(hv)
    r.apply(Record.page_data([7, 8, 9], [NOTAB, XTAB, NOTAB], [70, 90]))
    r.apply(Record.simple(RecType.VERIFY))
    r.apply(Record.page_data([7], [NOTAB], [71]))
    assert not r.complete
    r.apply(Record.simple(RecType.END))
    res = r.finish()
    assert res.ok and res.static_data_end_inferred
    assert res.verify_mismatches == 1 and res.verify_mismatch_pfns == [7]
    assert tokens_of(hv, [7, 9]).tolist() == [70, 90]


def test_apply_checks_structured_page_data_like_the_parser():
    r = Restorer(empty_dest(), pfn_limit=100)
    with pytest.raises(StreamError, match="outside domain maximum"):
        r.apply(Record.page_data([5, 200], [NOTAB, NOTAB], [1, 2]))
    res = r.finish()
    assert not res.complete and "outside domain maximum" in res.error
    assert r.hv.ram_gfns().size == 0  # nothing applied from the bad record


# ---- errors ---------------------------------------------------------------------------


def test_truncated_stream_is_incomplete_not_success():
    data = stream_of([batch([(1, NOTAB, 5)])])
    res, _ = restore_bytes(data[:-8])
    assert not res.complete and not res.ok and "truncated" in res.error


def test_stream_without_end_is_incomplete():
    res, _ = restore_bytes(stream_of([batch([(1, NOTAB, 5)])], end=False))
    assert not res.complete and res.error


def test_malformed_record_fails_and_refuses_more_input():
    data = bytearray(stream_of([batch([(1, NOTAB, 5)]), batch([(2, NOTAB, 6)])]))
    # corrupt the second PAGE_DATA's count (second record after STATIC_DATA_END)
    pd_hdr = bytes([1, 0, 0, 0, 0x10, 0x10, 0, 0])  # type PAGE_DATA, length 8 + 8 + 4096
    off = data.index(pd_hdr, data.index(pd_hdr) + 8)
    data[off + 8] = 0
    r = Restorer(empty_dest())
    with pytest.raises(StreamError, match=r"record #\d+ \(PAGE_DATA\).*at least 1 pfn"):
        r.feed(bytes(data))
    with pytest.raises(StreamError, match="already failed"):
        r.feed(b"\0" * 8)
    res = r.finish()
    assert not res.complete and "at least 1 pfn" in res.error


def test_destination_failure_is_a_restore_error():
    pfns = np.arange(64, dtype=np.int64)
    data = stream_of([(pfns, np.zeros(64, np.uint8), pfns.astype(np.uint64) + 1)])
    hv = empty_dest(host_frames=16)  # not enough memory on the destination
    r = Restorer(hv)
    with pytest.raises(RestoreError, match="destination failed"):
        r.feed(data)
    res = r.finish()
    assert not res.complete and "destination failed" in res.error


def test_pfn_limit_rejects_pages_past_the_destination():
    data = stream_of([batch([(1, NOTAB, 5), (5000, NOTAB, 6)])])
    with pytest.raises(StreamError, match=r"pfn 0x1388 \(index 1\) outside domain maximum"):
        restore_bytes(data, pfn_limit=4096)


# ---- TCP ------------------------------------------------------------------------------


async def _send_in_thread(port: int, data: bytes | None = None, batches=None, cut: int | None = None):
    def send():
        if data is not None:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(data[:cut])
            s.close()
            return
        w = StreamWriter(TcpSink("127.0.0.1", port, timeout=10))
        w.write_image_header()
        w.write_domain_header()
        w.write_static_data()
        for b in batches:
            w.write_page_data(*b)
        w.write_end_of_checkpoint()
        w.write_end()
        w.close()

    await asyncio.to_thread(send)


async def _receive(hv, **kw):
    listening: asyncio.Future = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(receive_tcp("127.0.0.1", 0, hv, on_listen=lambda h, p: listening.set_result(p),
                                           timeout=20, **kw))
    port = await asyncio.wait_for(listening, 10)
    return task, port


async def test_tcp_receive_round_trip_on_free_loopback_port():
    rng = np.random.default_rng(5)
    pfns = np.arange(2500, dtype=np.int64)
    nib = np.zeros(2500, np.uint8)
    nib[::10] = XTAB
    tok = rng.integers(1, 1 << 63, int((nib == 0).sum()), dtype=np.uint64)
    hv = empty_dest()
    seen = []
    task, port = await _receive(hv, on_record=seen.append)
    await _send_in_thread(port, batches=[(pfns, nib, tok)])
    res = await asyncio.wait_for(task, 20)
    assert res.ok, res.error
    assert res.pages_written == tok.size and res.xtab_skipped == 250
    assert np.array_equal(tokens_of(hv, pfns[nib == 0]), tok)
    assert seen[-1].type == RecType.END and len(seen) == sum(res.records.values())


async def test_tcp_sender_dropping_mid_stream_is_incomplete():
    data = stream_of([batch([(1, NOTAB, 5), (2, NOTAB, 6)])])
    hv = empty_dest()
    task, port = await _receive(hv)
    await _send_in_thread(port, data=data, cut=len(data) - 100)
    res = await asyncio.wait_for(task, 20)
    assert not res.complete and "truncated" in res.error


async def test_tcp_port_in_use_is_a_clear_error():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        with pytest.raises(StreamError, match=rf"cannot listen on 127\.0\.0\.1:{port}: address already in use"):
            await receive_tcp("127.0.0.1", port, empty_dest())
    finally:
        s.close()


def test_record_sink_restores_in_process_without_stream_bytes():
    from migrate.stream import RecordSink

    pfns = np.arange(3000, dtype=np.int64)
    nib = np.zeros(3000, np.uint8)
    nib[::3] = XTAB
    tok = np.arange(1, int((nib == 0).sum()) + 1, dtype=np.uint64)
    hv = empty_dest()
    r = Restorer(hv)
    w = StreamWriter(RecordSink(r.apply))
    w.write_image_header(); w.write_domain_header(); w.write_static_data()
    w.write_page_data(pfns, nib, tok)
    w.write_end_of_checkpoint(); w.write_end(); w.close()
    res = r.finish()
    assert res.ok and not res.static_data_end_inferred
    assert res.pages_written == tok.size and res.xtab_skipped == 1000
    assert np.array_equal(tokens_of(hv, pfns[nib == 0]), tok)


@pytest.mark.parametrize("order", ["ascending", "descending"])
def test_run_of_records_is_refused_at_the_record_that_spreads_too_far(order):
    # Ten records of data in chunk 0 buy 32 + 40 chunks; then records of XALLOC entries
    # each reach 30 new chunks. Applied as one run or record by record, the 13th record
    # is the one refused (the run path finds each chunk's first entry without
    # per-entry chunk numbers when the PFNs ascend, and by sorting when not).
    from hypervisor.domain import Hypervisor
    from hypervisor.runs import CHUNK

    dense = np.arange(10 * 1024, dtype=np.int64)
    spread = [np.sort(np.repeat(np.arange(1 + 30 * r, 31 + 30 * r) * CHUNK, 35)[:1024] + np.arange(1024) % 35)
              for r in range(5)]
    parts = [dense] + spread
    if order == "descending":
        parts = [p[::-1].copy() for p in parts]
    pfns = np.concatenate(parts)
    nib = np.full(pfns.size, PFInfo.XALLOC, dtype=np.uint8)
    nib[:dense.size] = PFInfo.NOTAB
    tokens = np.arange(1, dense.size + 1, dtype=np.uint64)
    seen = []
    errors = []
    for one_by_one in (False, True):
        hv = Hypervisor(host_frames=1 << 16, record_events=False)
        hv.build(DomainLayout(ram_gfns=np.empty(0, dtype=np.int64)))
        r = Restorer(hv, on_record=seen.append if one_by_one else None)
        with pytest.raises(StreamError) as e:
            r.apply_page_data_run(pfns, nib, tokens)
        errors.append(str(e.value))
        assert r.failed and r.result.error == str(e.value)
    assert "(record 13 of 15)" in errors[0] and "P2M chunks" in errors[0]
    assert len(seen) == 12 and "P2M chunks" in errors[1]
