"""The restore's run paths give exactly what the general paths give.

A restore group of strictly increasing PFNs is told so (``Restorer._page_data_run``
finds it once); a group of fresh PFNs that is one run populates as a run
(``Hypervisor.populate_physmap_exact(run=True)``: frames taken as a run with
``HostFrames.alloc_run``, P2M and M2P set as runs) and its pages are written as a run
(``write_pages(run=True)``, ``LinearChunkedArray.run_value_of``). Each is pinned here
against the path that finds everything out for itself: same destination P2M, M2P,
frame contents, log-dirty bits, stats and events, same errors and messages."""

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypervisor.abi import MAX_GFN, DomainLayout, P2MType, PFInfo, ShadowOp, XenError
from hypervisor.domain import Hypervisor
from hypervisor.frames import HostFrames
from hypervisor.linear_chunked import LinearChunkedArray
from hypervisor.runs import CHUNK
from migrate.toolstack.restore import Restorer
from migrate.stream.records import type_counts

HOST = 1 << 17


def _dest(*, ram=(), mmio=(), freed=(), logdirty=False, events=False, host=HOST):
    hv = Hypervisor(host_frames=host, record_events=events)
    hv.build(DomainLayout(ram_gfns=np.asarray(ram, dtype=np.int64),
                          ram_tokens=np.arange(1, len(ram) + 1, dtype=np.uint64),
                          mmio_gfns=np.asarray(mmio, dtype=np.int64)))
    if len(freed):
        hv.decrease_reservation(np.asarray(freed, dtype=np.int64))   # frames back on the free stack
    if logdirty:
        hv.shadow_op(0.0, ShadowOp.ENABLE_LOGDIRTY)
    hv.drain_events()
    return hv


def _state(hv, top=3 * CHUNK):
    g = np.arange(top, dtype=np.int64)
    types, mfns = hv.p2m.get(g)
    frames = np.arange(hv.frames.host_frames, dtype=np.int64)
    with np.printoptions(threshold=sys.maxsize):
        events = repr(hv.drain_events())
    return (types.tolist(), mfns.tolist(), hv.m2p.get(frames).tolist(), hv.frames.read(frames).tolist(),
            hv.logdirty.is_dirty(g).tolist(), repr(hv.stats), hv.p2m.type_counts.tolist(),
            hv.p2m.max_mapped_pfn, hv.frames.free_frames, events)


def _both(setup, call):
    """Run ``call(hv, run)`` on two equal destinations, with and without the run hint:
    the outcomes (error text included) and the destinations' states must match."""
    out = []
    for run in (True, False):
        hv = setup()
        try:
            call(hv, run)
            err = None
        except XenError as e:
            err = (e.errno, str(e))
        out.append((err, _state(hv)))
    assert out[0][0] == out[1][0]
    assert out[0][1] == out[1][1]
    return out[0][0]


RUN = np.arange(CHUNK - 3000, CHUNK + 4000, dtype=np.int64)      # crosses a P2M chunk


@pytest.mark.parametrize("case", ["fresh", "over_ram", "over_mmio", "freed_frames", "no_room", "logdirty",
                                  "small", "past_max_gfn"])
def test_populating_a_run_does_what_populating_its_pfns_does(case):
    run = RUN
    kw = {}
    if case == "over_ram":
        kw = dict(ram=np.arange(CHUNK - 100, CHUNK + 50))
    elif case == "over_mmio":
        kw = dict(mmio=[CHUNK + 7])
    elif case == "freed_frames":
        kw = dict(ram=np.arange(10, 30), freed=np.arange(12, 20))
    elif case == "no_room":
        kw = dict(host=run.size - 1)
    elif case == "logdirty":
        kw = dict(ram=np.arange(CHUNK - 10, CHUNK), logdirty=True, events=True)
    elif case == "small":
        run = np.arange(70, 170, dtype=np.int64)
    elif case == "past_max_gfn":
        run = np.arange(MAX_GFN - 5000, MAX_GFN + 3, dtype=np.int64)
    err = _both(lambda: _dest(**kw), lambda hv, r: hv.populate_physmap_exact(run, run=r))
    assert (err is None) == (case in ("fresh", "over_ram", "freed_frames", "logdirty", "small"))


@pytest.mark.parametrize("case", ["fresh_run", "frames_not_a_run", "unmapped", "small", "logdirty"])
def test_writing_a_run_does_what_writing_its_pfns_does(case):
    run, tok = RUN, np.arange(7, 7 + RUN.size, dtype=np.uint64)

    def setup():
        if case == "frames_not_a_run":      # frames from the free stack: not one run
            hv = _dest(ram=np.arange(10, 10 + 9000), freed=np.arange(10, 10 + 9000))
        else:
            hv = _dest(logdirty=case == "logdirty", events=case == "logdirty")
        hv.populate_physmap_exact(run[:-1] if case == "unmapped" else run)
        hv.drain_events()
        return hv

    w = run[:200] if case == "small" else run
    err = _both(setup, lambda hv, r: hv.write_pages(w, tok[:w.size], run=r))
    assert (err is None) == (case != "unmapped")
    if err is None:
        hv = setup()
        hv.write_pages(w, tok[:w.size], run=True)
        assert np.array_equal(hv.contents(w), tok[:w.size])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4 * CHUNK), st.integers(1, 2 * CHUNK), st.integers(0, 1 << 30),
                          st.booleans()), min_size=1, max_size=5),
       st.lists(st.tuples(st.integers(0, 5 * CHUNK), st.integers(1, 3 * CHUNK)), min_size=1, max_size=8))
def test_run_value_of_is_run_value_of_the_run(sets, queries):
    a = LinearChunkedArray(np.uint32, 0xFFFFFFFF)
    for start, n, v0, dense in sets:
        if dense:                               # breaks runs into rows
            a.set(np.arange(start, start + min(n, 50), dtype=np.int64) * 3, v0)
        else:
            a.set_linear(start, n, v0)
    for start, n in queries + [(s, n) for s, n, _, _ in sets]:
        assert a.run_value_of(start, n) == a.run_value(np.arange(start, start + n, dtype=np.int64))


def test_alloc_run_is_alloc_when_alloc_gives_a_run():
    f, g = HostFrames(100), HostFrames(100)
    assert f.alloc_run(30) == 0 and np.array_equal(g.alloc(30), np.arange(30))
    assert f.alloc_run(71) is None and f.free_frames == 70      # too many: nothing taken
    f.free([3, 4]), g.free([3, 4])
    assert f.alloc_run(5) is None and f.free_frames == 72       # freed frames come first: not a run
    assert np.array_equal(f.alloc(5), g.alloc(5)) and f.alloc_run(10) == 33 and g.alloc(10)[0] == 33


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=0, max_size=9000), st.integers(0, 15))
def test_type_counts_are_the_bincount(values, fill):
    nib = np.asarray([v if v <= 15 else fill for v in values], dtype=np.uint8)
    assert type_counts(nib).tolist() == np.bincount(nib, minlength=16)[:16].tolist()


def _restore(pfns, nib, tokens, *, one_by_one, dest, verify_then=None):
    hv = _dest(**dest)
    r = Restorer(hv, on_record=(lambda rec: None) if one_by_one else None)
    r.apply_page_data_run(pfns, nib, tokens)
    if verify_then is not None:
        from migrate.stream.records import Record
        from migrate.stream.format import RecType
        r.apply(Record.simple(RecType.VERIFY))
        r.apply_page_data_run(*verify_then)
    r.flush()
    res = r.result
    res.records = {}
    return res, r.populated_pfns().tolist(), _state(hv)


@pytest.mark.parametrize("shape", ["dense", "xtab_holes", "gaps", "resent", "over_ram", "repeats", "verify"])
def test_a_run_told_increasing_restores_what_records_one_by_one_restore(shape):
    # The records one by one go through the general path (each group looked at, no
    # run hints); the run in bulk through the told-increasing, run-populating one.
    pfns = np.concatenate([np.arange(CHUNK - 70000, CHUNK + 9000), np.arange(2 * CHUNK + 5, 2 * CHUNK + 3000)])
    nib = np.zeros(pfns.size, dtype=np.uint8)
    dest = {}
    verify_then = None
    if shape == "xtab_holes":
        nib[5000:5300] = PFInfo.XTAB
        nib[::97] = PFInfo.XALLOC
    elif shape == "gaps":
        pfns = pfns * 2
    elif shape == "resent":
        dest = dict(ram=np.arange(CHUNK - 1000, CHUNK + 100))
    elif shape == "over_ram":
        dest = dict(ram=np.arange(CHUNK - 1000, CHUNK + 100, 3))
    elif shape == "repeats":
        pfns = np.concatenate([pfns, pfns[:3000]])
        nib = np.zeros(pfns.size, dtype=np.uint8)
    has = nib == 0
    tokens = np.arange(1, int(has.sum()) + 1, dtype=np.uint64)
    if shape == "verify":
        v = np.arange(CHUNK - 80000, CHUNK - 60000, dtype=np.int64)
        verify_then = (v, np.zeros(v.size, dtype=np.uint8), np.arange(v.size, dtype=np.uint64) + 5000)
    bulk = _restore(pfns, nib, tokens, one_by_one=False, dest=dest, verify_then=verify_then)
    single = _restore(pfns, nib, tokens, one_by_one=True, dest=dest, verify_then=verify_then)
    assert bulk[0] == single[0] and bulk[1] == single[1]
    assert bulk[2] == single[2]
    assert bulk[0].pages_written == int(has.sum())


def test_a_run_the_host_cannot_hold_fails_naming_the_record_as_records_one_by_one_do():
    pfns = np.arange(0, 20 * 1024, dtype=np.int64)
    nib = np.zeros(pfns.size, dtype=np.uint8)
    tokens = np.arange(pfns.size, dtype=np.uint64)
    out = []
    for one_by_one in (False, True):
        hv = _dest(host=12 * 1024 + 5)
        r = Restorer(hv, on_record=(lambda rec: None) if one_by_one else None)
        with pytest.raises(Exception) as ei:
            r.apply_page_data_run(pfns, nib, tokens)
            r.flush()
        out.append((type(ei.value), hv.stats.populated_pages))
    assert out[0][0] is out[1][0]


def test_run_value_of_needs_the_values_to_continue_across_chunks():
    a = LinearChunkedArray(np.uint32, 0xFFFFFFFF)
    a.set_linear(CHUNK - 5000, 5000, 100)
    a.set_linear(CHUNK, 6000, 100 + 5000)        # continues: one run of values
    a.set_linear(2 * CHUNK, 6000, 9)             # does not continue
    a.set_linear(4 * CHUNK - 5000, 5000, 100)
    a.set_linear(4 * CHUNK, 6000, 7)             # does not continue either
    for start, n in ((4 * CHUNK - 4000, 8000), (CHUNK - 5000, 11000), (CHUNK - 4000, 10000), (CHUNK + 10, 5000),
                     (CHUNK + 10, CHUNK), (CHUNK - 5001, 6000), (2 * CHUNK - 1, 5000)):
        want = a.run_value(np.arange(start, start + n, dtype=np.int64))
        assert a.run_value_of(start, n) == want
    assert a.run_value_of(CHUNK - 5000, 11000) == 100 and a.run_value_of(CHUNK + 10, CHUNK) is None
    assert a.run_value_of(4 * CHUNK - 4000, 8000) is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3 * 32768), st.integers(1, 40000)), min_size=1, max_size=6),
       st.integers(0, 3 * 32768), st.integers(1, 70000))
def test_the_populated_set_sets_and_reads_runs_bit_for_bit(runs, q0, qn):
    # A run's bits are set byte-wise (the ends by mask) and read from its bytes alone:
    # the set must hold and answer what a per-PFN reference does.
    from migrate.toolstack.pfnset import PfnSet

    s, ref = PfnSet(), np.zeros(4 * 32768 + 70000, dtype=bool)
    for a, n in runs:
        run = np.arange(a, a + n, dtype=np.int64)
        run = run[~ref[run]]                     # add takes PFNs not yet in the set
        if run.size and run[-1] - run[0] == run.size - 1:
            s.add(run, ascending=True)
            ref[run] = True
    q = np.arange(q0, q0 + qn, dtype=np.int64)
    assert np.array_equal(s.contains(q, ascending=True), ref[q])
    assert np.array_equal(s.to_array(), np.flatnonzero(ref)) and s.count == int(ref.sum())


def _expected_check(pfns, nib, n_tokens, limit):
    """handle_page_data's checks spelled out entry by entry: the has-data mask, or the
    error message."""
    from hypervisor.abi import PFINFO_HAS_DATA, PFINFO_KNOWN
    top = 0x000FFFFFFFFFFFFF if limit is None else min(0x000FFFFFFFFFFFFF, limit - 1)
    for i, p in enumerate(pfns.tolist()):
        if p < 0 or p > top:
            lim = f" (limit {limit:#x})" if limit is not None else ""
            return f"W: pfn {p:#x} (index {i}) outside domain maximum{lim}"
    for i, t in enumerate(nib.tolist()):
        if t > 0xF or not PFINFO_KNOWN[t]:
            return f"W: unknown or reserved page type {t:#x} for pfn {int(pfns[i]):#x} (index {i})"
    has = PFINFO_HAS_DATA[nib]
    if n_tokens is not None and int(has.sum()) != n_tokens:
        return f"W: {int(has.sum())} data-carrying entries but {n_tokens} page tokens"
    return has.tolist()


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 5000), st.integers(-3, 1 << 40), st.sampled_from([0, 1, 15, 6, 13, 14, 16, 255]),
       st.one_of(st.none(), st.none(), st.integers(0, 1 << 41)), st.integers(-1, 2), st.booleans(), st.booleans())
def test_page_data_checks_of_one_type_throughout_are_the_checks_entry_by_entry(
        n, p0, t, limit, tok_delta, known_count, mixed):
    # One type throughout (the usual span) is decided from the nibbles' min and max and
    # the PFNs' unsigned max; a second type at the end takes the general path.
    from hypervisor.abi import PFINFO_HAS_DATA
    from migrate.stream.format import StreamError
    from migrate.stream.records import check_page_data

    pfns = p0 + np.arange(n, dtype=np.int64)
    nib = np.full(n, t, dtype=np.uint8)
    if mixed:
        nib[-1] = 0
    n_data = int(PFINFO_HAS_DATA[np.minimum(nib, 15)].sum())
    n_tokens = max(0, n_data + tok_delta) if known_count else None
    want = _expected_check(pfns, nib, n_tokens, limit)
    try:
        got = check_page_data(pfns, nib, n_tokens, pfn_limit=limit, where="W").tolist()
    except StreamError as e:
        got = str(e)
    assert got == want


def test_a_snapshot_reads_its_sorted_gfns_as_runs_where_they_are_and_gets_what_a_plain_read_gets():
    ram = np.concatenate([np.arange(0, 5000), np.arange(5007, 30000), np.arange(CHUNK - 6000, CHUNK + 7000),
                          np.arange(2 * CHUNK, 2 * CHUNK + 9000, 2)])
    hv = _dest(ram=ram, freed=np.arange(100, 9000, 7))
    hv.populate_physmap(np.arange(100, 9000, 7))            # frames off the free stack: not a run
    # A non-RAM entry keeping its frame inside a run of frames: the GFNs skip it, the
    # frames do not (so the GFNs' ends, not the frames, must say they are no run).
    g1 = np.array([CHUNK + 100], dtype=np.int64)
    hv.p2m.set(g1, P2MType.ram_broken, hv.p2m.mfns.get(g1))
    for lo, hi in ((0, 12000), (0, 3 * CHUNK), (CHUNK, CHUNK + 7000), (5003, 5010), (CHUNK - 6000, CHUNK + 7000), (2 * CHUNK, 3 * CHUNK)):
        g, tok = hv.snapshot(lo, hi)
        assert np.array_equal(g, hv.ram_gfns(lo, hi))
        assert np.array_equal(tok, hv.contents(g))              # the general read
        assert np.array_equal(tok, hv.frames.read(hv.p2m.mfns.get(g)))


def test_verify_compares_sides_given_out_of_order_as_it_compares_them_sorted():
    from migrate.toolstack.verify import VerifyAccumulator

    rng = np.random.default_rng(5)
    g = np.arange(1000, 3000, dtype=np.int64)
    st_, dt_ = rng.integers(0, 3, g.size).astype(np.uint64), rng.integers(0, 3, g.size).astype(np.uint64)
    cases = [(g, st_, g, dt_), (g[:-5], st_[:-5], g[3:], dt_[3:])]
    for sg, stt, dg, dtt in cases:
        sorted_acc, shuffled_acc = VerifyAccumulator(), VerifyAccumulator()
        sorted_acc.add(sg, stt, dg, dtt)
        p, q = rng.permutation(sg.size), rng.permutation(dg.size)
        shuffled_acc.add(sg[p], stt[p], dg[q], dtt[q])
        assert sorted_acc.result() == shuffled_acc.result()
        same = VerifyAccumulator()
        same.add(sg[p], stt[p], sg[p], dtt[:sg.size][p])        # equal sides, one order: as sorted
        ref = VerifyAccumulator()
        ref.add(sg, stt, sg, dtt[:sg.size])
        assert same.result() == ref.result()


@pytest.mark.parametrize("second_mixed", [False, True])
def test_a_run_of_one_type_counts_its_records_as_a_run_of_mixed_types_does(second_mixed):
    # Of one type throughout, a run's per-record kept entries and data pages are the
    # record sizes (or none) without a pass; they feed the P2M-chunk allowance, so a
    # run that reaches the allowance fails, or not, exactly as a mixed run does.
    from hypervisor.runs import CHUNK_BITS
    from migrate.stream.format import StreamError

    n1 = 5 * 1024 + 300                        # the last record short
    xalloc = (np.arange(1, 56, dtype=np.int64)[:, None] << CHUNK_BITS) + np.arange(40)
    xalloc = xalloc.reshape(-1)
    out = []
    for mixed in (False, True):
        hv = _dest()
        r = Restorer(hv)
        nib1 = np.zeros(n1, dtype=np.uint8)
        if mixed:
            nib1[7] = PFInfo.L1TAB             # also populated, also carries data
        r.apply_page_data_run(np.arange(n1, dtype=np.int64), nib1, np.arange(n1, dtype=np.uint64))
        p2 = xalloc
        nib2 = np.full(p2.size, PFInfo.XALLOC, dtype=np.uint8)
        if mixed and second_mixed:             # a BROKEN entry beside an XALLOC one: same chunks
            p2 = np.insert(p2, 1, p2[0] + 100)
            nib2 = np.insert(nib2, 1, PFInfo.BROKEN)
        try:
            r.apply_page_data_run(p2, nib2, np.empty(0, dtype=np.uint64))
            r.flush()
            err = None
        except StreamError as e:
            err = str(e)
        out.append((err, r._data_pages, sorted(r._chunks), r.result.pages_populated))
    assert out[0] == out[1]
    assert "(record 3 of 3)" in out[0][0] and "56 P2M chunks" in out[0][0] and "after only 5420 data pages" in out[0][0]
