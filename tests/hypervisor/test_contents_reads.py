"""Reading frame contents by GFN (``Hypervisor.contents``: the span's map, the verify
snapshot) takes a run of GFNs mapping a run of frames as one slice of the token table
(``LinearChunkedArray.run_value`` + ``ChunkedArray.get_run``); whatever the P2M holds,
it reads exactly what the frame-by-frame path (``frames.read(p2m.mfns.get(g))``) reads."""

import numpy as np
import pytest

from hypervisor.abi import INVALID_MFN, DomainLayout
from hypervisor.domain import Hypervisor
from hypervisor.chunked import GET_BLOCK, ChunkedArray
from hypervisor.linear_chunked import LinearChunkedArray
from hypervisor.runs import CHUNK


def _mixed_linear():
    """Chunk 0: a run continued by chunk 1's run; chunk 2: a run whose base does not
    continue chunk 1's; chunk 3: a row; chunk 4: a run over part of the chunk; 5: absent."""
    a = LinearChunkedArray(np.uint32, INVALID_MFN)
    a.set(np.arange(0, 2 * CHUNK), np.arange(0, 2 * CHUNK) + 1000)
    a.set(np.arange(2 * CHUNK, 3 * CHUNK), np.arange(2 * CHUNK, 3 * CHUNK) + 5)
    a.set(np.arange(3 * CHUNK, 4 * CHUNK, 2), np.arange(3 * CHUNK, 4 * CHUNK, 2) + 7)   # a row
    a.set(np.arange(4 * CHUNK + 100, 4 * CHUNK + 9000), np.arange(4 * CHUNK + 100, 4 * CHUNK + 9000) + 3)
    assert a.nrows == 1 and a.nruns == 4
    return a


@pytest.mark.parametrize("start,n,found", [
    (0, 5000, True), (CHUNK - 3000, 6000, True),             # inside a run; across two that continue
    (2 * CHUNK - 3000, 6000, False),                          # across two that do not
    (3 * CHUNK + 10, 5000, False),                            # a row
    (4 * CHUNK + 100, 8900, True), (4 * CHUNK + 50, 5000, False),   # a partial run; past its start
    (5 * CHUNK, 5000, False), (10, 100, False),               # absent; too short to be a run
])
def test_run_value_names_a_run_of_values_exactly_when_get_reads_one(start, n, found):
    a = _mixed_linear()
    idx = np.arange(start, start + n)
    v = a.run_value(idx)
    assert (v is not None) == found
    if found:
        assert np.array_equal(a.get(idx), np.arange(v, v + n))
    assert a.run_value(idx[::-1]) is None and a.run_value(np.delete(idx, n // 2)) is None


def test_get_run_into_a_buffer_reads_as_get_does():
    t = ChunkedArray(np.uint64, 0)
    t.set(np.arange(CHUNK, 2 * CHUNK), np.arange(CHUNK, 2 * CHUNK, dtype=np.uint64) * 3)
    for start, n in ((CHUNK - 500, 1000), (CHUNK + 7, 300), (2 * CHUNK - 10, 20)):
        want = t.get(np.arange(start, start + n))
        out = np.full(n, 99, dtype=np.uint64)
        assert t.get_run(start, n, out) is out and np.array_equal(out, want)
        assert np.array_equal(t.get_run(start, n), want)


def test_contents_reads_what_the_frames_hold_whatever_the_p2m_looks_like():
    n = 3 * CHUNK + 1000
    hv = Hypervisor(host_frames=4 * CHUNK)
    hv.build(DomainLayout(ram_gfns=np.concatenate([np.arange(0, 160), np.arange(256, n)]),
                          ram_tokens=np.arange(1, n - 96 + 1, dtype=np.uint64) * 2654435761))
    # A balloon's give-back and take-back: frames reused in another order (rows, broken runs).
    gone = np.arange(CHUNK + 5000, CHUNK + 9000)[::-1]
    hv.decrease_reservation(gone)
    hv.populate_physmap(gone[::3])
    rng = np.random.default_rng(3)
    ram = hv.ram_gfns()
    for g in (ram, ram[::-1], ram[: GET_BLOCK + 17], np.sort(rng.choice(ram, 70000, replace=False)),
              rng.permutation(ram)[:5000], np.arange(256, 256 + 3 * GET_BLOCK)):
        assert np.array_equal(hv.contents(g), hv.frames.read(hv.p2m.mfns.get(g)))
    g, tok = hv.snapshot()
    assert np.array_equal(g, ram) and np.array_equal(tok, hv.frames.read(hv.p2m.mfns.get(ram)))


def _ballooned_twins():
    """Two identical domains: a built run, then a balloon's give-back and take-back."""
    out = []
    for _ in range(2):
        hv = Hypervisor(host_frames=2 * CHUNK)
        hv.build(DomainLayout(ram_gfns=np.arange(0, CHUNK + 20000)))
        gone = np.arange(CHUNK - 9000, CHUNK + 9000)[::-1]
        hv.decrease_reservation(gone)
        hv.populate_physmap(gone[::2])
        out.append(hv)
    return out


def test_writing_contents_stores_what_the_frame_by_frame_write_stores():
    fast, ref = _ballooned_twins()
    rng = np.random.default_rng(8)
    ram = fast.ram_gfns()
    for i, g in enumerate((np.arange(100, 100 + GET_BLOCK), ram[ram > CHUNK - 12000][:30000],
                           rng.permutation(ram)[:9000], ram[:10])):
        tok = np.arange(g.size, dtype=np.uint64) + np.uint64(1000 * i + 1)
        fast.domain.write_contents(g, tok)
        ref.frames.write(ref.p2m.mfns.get(g), tok)
        assert np.array_equal(fast.contents(ram), ref.contents(ram))
    frames = fast.frames
    frames.write_run(5, np.array([7, 8, 9], dtype=np.uint64))
    assert frames.read(np.array([5, 6, 7])).tolist() == [7, 8, 9]
    assert np.array_equal(frames.read_run(3, 6), frames.read(np.arange(3, 9)))


def test_populate_physmap_exact_names_the_pfn_it_could_not_populate():
    from hypervisor.abi import XenError

    hv = Hypervisor(host_frames=10)
    hv.build(DomainLayout(ram_gfns=np.arange(4)))
    with pytest.raises(XenError, match=r"populate_physmap_exact: 6 of 8 PFNs populated; pfn 0x6 failed"):
        hv.populate_physmap_exact(np.arange(0, 8) + 0)


@pytest.mark.parametrize("lo,hi", [(0, None), (0, 5 * CHUNK), (CHUNK - 7, 2 * CHUNK + 9), (CHUNK, CHUNK + 1),
                                   (3 * CHUNK + 5, 3 * CHUNK + 5), (2 * CHUNK + 100, 2 * CHUNK + 50)])
def test_gfns_where_answers_as_the_per_entry_mask_does(lo, hi):
    # Parts of one type (all RAM, all holes) are taken whole; mixed parts entry by entry.
    from hypervisor.abi import IS_POD, IS_RAM, P2MType
    from hypervisor.p2m import P2M

    p2m = P2M()
    p2m.set(np.arange(0, 2 * CHUNK), P2MType.ram_rw, np.arange(0, 2 * CHUNK))           # all RAM
    p2m.set(np.arange(2 * CHUNK, 3 * CHUNK, 3), P2MType.populate_on_demand, INVALID_MFN)  # mixed
    p2m.set(np.arange(3 * CHUNK, 4 * CHUNK), P2MType.mmio_direct, INVALID_MFN)          # none RAM
    every = np.arange(0, 5 * CHUNK)
    top = 5 * CHUNK if hi is None else hi
    for table in (IS_RAM, IS_POD, np.ones(16, dtype=bool)):
        want = every[(every >= lo) & (every < top) & table[p2m.get_types(every)] & p2m.types.present(every)]
        got = p2m.gfns_where(table, lo, hi)
        assert got.dtype == np.int64 and np.array_equal(got, want)
