"""The domain builder writes a guest's lazy boot contents straight into the frames'
token table (``BootTokens.into`` through ``HostFrames.fill``): the contents are exactly
those the slice-at-a-time path (``BootTokens[a:b]`` then ``HostFrames.write``) stores."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import guest.workloads as workloads
from hypervisor.abi import DomainLayout, GfnRuns
from hypervisor.domain import Hypervisor
from hypervisor.frames import HostFrames
from hypervisor.linear_chunked import LinearChunkedArray


@st.composite
def runs_and_window(draw):
    counts = draw(st.lists(st.integers(1, 300), min_size=1, max_size=5))
    gaps = draw(st.lists(st.integers(0, 1 << 20), min_size=len(counts), max_size=len(counts)))
    first, g = [], 0
    for c, gap in zip(counts, gaps):
        g += gap
        first.append(g)
        g += c
    runs = GfnRuns(np.array(first, dtype=np.int64), np.array(counts, dtype=np.int64))
    a = draw(st.integers(0, runs.size))
    b = draw(st.integers(a, runs.size))
    return runs, a, b


@settings(max_examples=60, deadline=None)
@given(runs_and_window(), st.integers(0, 2**64 - 1))
def test_boot_tokens_into_writes_the_slice_it_stands_for(case, seed):
    runs, a, b = case
    boot = workloads.BootTokens(seed, runs)
    out = np.zeros(b - a, dtype=np.uint64)
    boot.into(a, out)
    assert np.array_equal(out, boot[a:b])
    assert np.array_equal(out, workloads.initial_tokens(seed, np.asarray(runs)[a:b]))


def test_boot_tokens_into_crosses_its_hashing_blocks(monkeypatch):
    monkeypatch.setattr(workloads, "_FILL_BLOCK", 7)
    runs = GfnRuns(np.array([3, 100, 5000]), np.array([20, 33, 9]))
    boot = workloads.BootTokens(9, runs)
    out = np.zeros(55, dtype=np.uint64)
    boot.into(4, out)
    assert np.array_equal(out, boot[4:59])


def test_gfn_runs_pieces_cover_a_window_run_by_run():
    runs = GfnRuns(np.array([10, 50, 90]), np.array([5, 3, 4]))
    assert list(runs.pieces(2, 10)) == [(2, 5, 12), (5, 8, 50), (8, 10, 90)]
    assert list(runs.pieces(5, 5)) == []
    assert np.array_equal(runs[2:10], [12, 13, 14, 50, 51, 52, 90, 91])


@pytest.mark.parametrize("mfns", [np.arange(5000, 5000 + 70000),                 # a run over chunks
                                  np.arange(10, 70000, 7)[::-1].copy(),          # scattered
                                  np.array([], dtype=np.int64)])
def test_frames_fill_stores_what_write_stores(mfns):
    toks = np.arange(1, mfns.size + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    filled, written = HostFrames(1 << 20), HostFrames(1 << 20)
    filled.write(np.arange(0, 1 << 19), 5)                  # a row already there, partly overwritten
    written.write(np.arange(0, 1 << 19), 5)
    filled.fill(mfns, lambda pos, out: out.__setitem__(slice(None), toks[pos:pos + out.size]))
    written.write(mfns, toks)
    probe = np.arange(0, 1 << 20)
    assert np.array_equal(filled.read(probe), written.read(probe))


def test_a_linear_chunked_array_gives_no_rows_to_fill():
    with pytest.raises(TypeError, match="use set"):
        next(LinearChunkedArray(np.uint32, 0xFFFFFFFF).row_slices(0, 10))


def test_builder_fills_lazy_contents_as_it_writes_their_slices():
    runs = GfnRuns(np.array([0, 300_000, 1 << 20]), np.array([200_000, 5, 100_000]))
    lazy = workloads.BootTokens(4, runs)

    class Sliced:                        # the same contents, offered only as slices
        def __len__(self):
            return len(lazy)

        def __getitem__(self, key):
            return lazy[key]

    a, b = Hypervisor(host_frames=1 << 20), Hypervisor(host_frames=1 << 20)
    a.build(DomainLayout(ram_gfns=runs, ram_tokens=lazy))
    b.build(DomainLayout(ram_gfns=runs, ram_tokens=Sliced()))
    ga, ta = a.snapshot()
    gb, tb = b.snapshot()
    assert np.array_equal(ga, gb) and np.array_equal(ta, tb) and ga.size == 300_005
