"""A run of GFNs mapped onto a run of frames (a build step, a restore group) goes into
the P2M and the M2P as the two runs (``P2M.set_run``, ``M2P.set_run``,
``LinearChunkedArray.set_linear``, ``ChunkedArray.set_run``), with no per-entry arrays:
the tables then hold exactly what ``set`` with the two aranges leaves, down to which
chunks are runs and which are rows."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypervisor.abi import INVALID_MFN, MAX_GFN, DomainLayout, P2MType
from hypervisor.domain import Hypervisor
from hypervisor.chunked import ChunkedArray
from hypervisor.linear_chunked import LinearChunkedArray
from hypervisor.p2m import M2P, M2P_LOW_MAX, P2M
from hypervisor.runs import CHUNK, run_start


def _twins(prep):
    a, b = LinearChunkedArray(np.uint32, INVALID_MFN), LinearChunkedArray(np.uint32, INVALID_MFN)
    for idx, vals in prep:
        a.set(idx, vals)
        b.set(idx, vals)
    return a, b


def _same_linear(a, b, lo, hi):
    idx = np.arange(lo, hi)
    assert np.array_equal(a.get(idx), b.get(idx))
    assert (a.nrows, a.nruns) == (b.nrows, b.nruns)
    assert np.array_equal(a.directory, b.directory)
    n = a.nruns
    assert np.array_equal(a._base[:n], b._base[:n]) and np.array_equal(a._lo[:n], b._lo[:n])
    assert np.array_equal(a._hi[:n], b._hi[:n])


PREPS = {
    "empty": [],
    "a run below": [(np.arange(100, CHUNK - 1000), np.arange(100, CHUNK - 1000) + 5)],
    "a row": [(np.arange(0, 2 * CHUNK, 5), np.arange(0, 2 * CHUNK, 5) + 9)],
    "another base": [(np.arange(CHUNK, CHUNK + 9000), np.arange(CHUNK, CHUNK + 9000) + 1)],
}


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(PREPS)), st.integers(0, 2 * CHUNK), st.integers(0, CHUNK + 9000),
       st.sampled_from([5, 0, 77, 0xFFFFFFFF - 6000, 0xFFFFFFFF - 20000, -3, 1 << 33]))
def test_set_linear_leaves_what_set_of_the_aranges_leaves(prep, start, n, v0):
    fast, ref = _twins(PREPS[prep])
    fast.set_linear(start, n, v0)
    ref.set(np.arange(start, start + n), np.arange(v0, v0 + n))
    _same_linear(fast, ref, 0, 3 * CHUNK + 9000)


@pytest.mark.parametrize("start,n", [(0, 10), (CHUNK - 5, 4100), (7, 2 * CHUNK + 3), (3 * CHUNK, 0)])
def test_set_run_of_one_value_leaves_what_set_leaves(start, n):
    fast, ref = ChunkedArray(np.uint8, 0), ChunkedArray(np.uint8, 0)
    for t in (fast, ref):
        t.set(np.arange(CHUNK + 3, CHUNK + 50), 4)
    fast.set_run(start, n, 7)
    ref.set(np.arange(start, start + n), np.uint8(7))
    idx = np.arange(0, 4 * CHUNK)
    assert np.array_equal(fast.get(idx), ref.get(idx)) and np.array_equal(fast.directory, ref.directory)


@pytest.mark.parametrize("g0,n,m0,t", [(0, 70000, 10, P2MType.ram_rw), (CHUNK - 100, 5000, 3 * CHUNK, P2MType.ram_rw),
                                       (40, 300, 9, P2MType.ram_rw), (0, 9000, 0, P2MType.invalid)])
def test_p2m_and_m2p_set_run_match_set(g0, n, m0, t):
    def fresh():
        p2m, m2p = P2M(), M2P()
        p2m.set(np.arange(0, 6000), P2MType.ram_logdirty, np.arange(0, 6000) + 7)
        m2p.set(np.arange(0, 6000) + 7, np.arange(0, 6000))
        return p2m, m2p

    (fp, fm), (rp, rm) = fresh(), fresh()
    fp.set_run(g0, n, t, m0)
    fm.set_run(m0, n, g0)
    rp.set(np.arange(g0, g0 + n), t, np.arange(m0, m0 + n))
    rm.set(np.arange(m0, m0 + n), np.arange(g0, g0 + n))
    idx = np.arange(0, 4 * CHUNK)
    for a, b in ((fp.get(idx), rp.get(idx)), (fm.get(idx), rm.get(idx))):
        assert all(np.array_equal(x, y) for x, y in zip(a, b)) if isinstance(a, tuple) else np.array_equal(a, b)
    assert np.array_equal(fp.type_counts, rp.type_counts) and fp.max_mapped_pfn == rp.max_mapped_pfn
    assert (fp.mfns.nrows, fp.mfns.nruns, fm.low.nrows, fm.low.nruns) == \
        (rp.mfns.nrows, rp.mfns.nruns, rm.low.nrows, rm.low.nruns)


def test_m2p_set_run_with_gfns_past_the_low_word_or_a_high_part_goes_the_general_way():
    fast, ref = M2P(), M2P()
    for m in (fast, ref):
        m.set(np.array([3]), M2P_LOW_MAX + 10)                # a high part exists
    fast.set_run(0, 5000, 100)
    ref.set(np.arange(5000), np.arange(100, 5100))
    fast.set_run(10000, 5000, M2P_LOW_MAX - 10)               # crosses into the high part
    ref.set(np.arange(10000, 15000), np.arange(M2P_LOW_MAX - 10, M2P_LOW_MAX + 4990))
    idx = np.arange(0, 20000)
    assert np.array_equal(fast.get(idx), ref.get(idx))


def test_run_start_names_only_large_contiguous_runs():
    assert run_start(np.arange(10, 5010)) == 10
    assert run_start(np.arange(10, 1010)) is None                    # small: the general paths
    assert run_start(np.arange(5010, 10, -1)) is None
    assert run_start(np.delete(np.arange(10, 6010), 7)) is None


def test_a_domain_built_and_refilled_in_runs_holds_what_per_entry_sets_hold(monkeypatch):
    # The builder's and the restore's steps through physmap.set_frames, against the
    # same domain with the run paths switched off.
    import hypervisor.physmap as physmap

    def build_and_restore():
        hv = Hypervisor(host_frames=3 * CHUNK)
        hv.build(DomainLayout(ram_gfns=np.concatenate([np.arange(0, 160), np.arange(256, CHUNK + 7000)])))
        hv.decrease_reservation(np.arange(9000, 20000)[::-1])
        hv.populate_physmap(np.arange(9000, 20000))
        hv.populate_physmap_exact(np.arange(2 * CHUNK, 2 * CHUNK + 30000))
        return hv

    fast = build_and_restore()
    monkeypatch.setattr(physmap, "run_start", lambda idx: None)
    ref = build_and_restore()
    idx = np.arange(0, 3 * CHUNK)
    ft, fm = fast.p2m.get(idx)
    rt, rm = ref.p2m.get(idx)
    assert np.array_equal(ft, rt) and np.array_equal(fm, rm)
    assert np.array_equal(fast.m2p.get(idx), ref.m2p.get(idx))
    assert np.array_equal(fast.p2m.type_counts, ref.p2m.type_counts)
    assert fast.p2m.max_mapped_pfn == ref.p2m.max_mapped_pfn
    assert (fast.p2m.mfns.nrows, fast.p2m.mfns.nruns, fast.m2p.low.nrows, fast.m2p.low.nruns) == \
        (ref.p2m.mfns.nrows, ref.p2m.mfns.nruns, ref.m2p.low.nrows, ref.m2p.low.nruns)


@pytest.mark.parametrize("g", [np.arange(CHUNK - 3000, CHUNK + 7000), np.arange(0, 5000), np.arange(10, 200),
                               np.arange(CHUNK + 10, CHUNK - 5000, -1), np.delete(np.arange(0, 9000), 4),
                               np.arange(MAX_GFN - 4999, MAX_GFN + 3)])
def test_p2m_reads_of_a_run_match_the_tables_read_entry_by_entry(g):
    p2m = P2M()
    p2m.set(np.arange(0, CHUNK + 3000), P2MType.ram_rw, np.arange(0, CHUNK + 3000) + 11)
    p2m.set(np.arange(CHUNK - 100, CHUNK + 100, 3), P2MType.ram_logdirty, np.arange(5, 205, 3) + (1 << 20))
    t, m = p2m.get(g)
    ok = (g >= 0) & (g <= MAX_GFN)
    want_t = np.where(ok, p2m.types.get(np.where(ok, g, 0)), P2MType.invalid)
    want_m = np.where(ok, p2m.mfns.get(np.where(ok, g, 0)), INVALID_MFN)
    assert np.array_equal(t, want_t) and np.array_equal(m, want_m) and np.array_equal(p2m.get_types(g), want_t)
    assert t.dtype == np.uint8 and m.dtype == np.uint32
