"""The guest's memory map and what the domain builder is told (incl. PoD boot)."""

import numpy as np
import pytest

from guest import Guest, GuestConfig
from guest.layout import GuestLayout


def cfg(**kw):
    return GuestConfig.model_validate(kw)


def test_default_layout_is_libxc_with_the_vga_hole_the_mmio_hole_and_the_special_pages():
    g = Guest(cfg(memory="4GiB"), seed=1)
    lay = g.layout()
    ram = np.asarray(lay.ram_gfns)     # runs, read whole here
    assert ram.size == 1 << 20 and np.all(np.diff(ram) > 0)
    assert not np.any((ram >= 0xA0) & (ram < 0xC0)) and np.all(np.isin(np.arange(0xC0, 0x100), ram))
    assert not np.any((ram >= 0xF0000) & (ram < 0x100000))
    # what the two holes displace (0x10000 + 0x20 pages) is relocated above 4 GiB
    assert ram[-1] == 0x100000 + (0x10000 + 0x20) - 1
    # xg_dom_x86.c: special_pfn(x) = X86_HVM_END_SPECIAL_REGION (0xff000) - 8 + x, and
    # the 8 ioreq server pages just below them
    assert lay.special_gfns.tolist() == list(range(0xFF000 - 16, 0xFF000))
    params = dict(lay.hvm_params)
    assert params[1] == 0xFF000 - 8 + 4 and params[5] == 0xFF000 - 8 + 5 and params[6] == 0xFF000 - 8 + 3
    assert params[17] == 0xFF000 - 1 and params[12] == (0xFF000 - 2) << 12
    assert params[32] == 0xFF000 - 16 and params[33] == 8


def test_compact_layout_keeps_the_96_pfn_low_hole_and_no_special_pages():
    for layout in ("compact", {"kind": "compact"}):
        g = Guest(cfg(memory="4GiB", layout=layout), seed=1)
        lay = g.layout()
        ram = np.asarray(lay.ram_gfns)
        assert not np.any((ram >= 0xA0) & (ram < 0x100))
        assert ram[-1] == 0x100000 + (0x10000 + 0x60) - 1
        assert lay.special_gfns.size == 0 and lay.hvm_params == ()
    # page -> GFN over the three runs (compared run by run), in any order
    idx = np.random.default_rng(1).permutation(ram.size)
    assert g.map._page0.size == 3 and np.array_equal(g.map.page_to_gfn(idx), ram[idx])


def test_page_index_and_gfn_map_both_ways_around_holes_mmio_and_high_pages():
    c = cfg(memory="64MiB", layout={"holes": [{"start": "1MiB", "size": "1MiB"}],
                                    "mmio": {"start": 0x3000, "end": 0x3100},
                                    "high_pages": [0xFFFFFFFF, "8TiB"]})
    lay = GuestLayout(c.layout, c.maxmem_pages)
    ram = lay.ram_gfns()
    assert ram.size == 16384 and ram[-2:].tolist() == [(8 << 40) >> 12, 0xFFFFFFFF]
    assert not np.any((ram >= 0x100) & (ram < 0x200)) and not np.any((ram >= 0x3000) & (ram < 0x3100))
    idx = np.arange(ram.size)
    assert np.array_equal(lay.page_to_gfn(idx), ram)
    assert np.array_equal(lay.gfn_to_page(ram), idx)
    assert lay.gfn_to_page(np.array([0x150, 0x3050, 0xFFFFFFFE, 1 << 39])).tolist() == [-1, -1, -1, -1]
    assert np.array_equal(lay.mmio_gfns(), np.arange(0x3000, 0x3100))
    assert lay.max_gfn() == 0xFFFFFFFF
    dl = Guest(c, seed=1).layout()
    assert np.array_equal(dl.mmio_gfns, np.arange(0x3000, 0x3100)) and dl.pod_gfns.size == 0


def test_initial_contents_are_nonzero_and_depend_on_the_seed():
    a = Guest(cfg(memory="16MiB"), seed=1).layout()
    b = Guest(cfg(memory="16MiB"), seed=2).layout()
    ta, tb = np.asarray(a.ram_tokens), np.asarray(b.ram_tokens)
    assert ta.dtype == np.uint64 and np.all(ta != 0) and ta.size == len(a.ram_tokens)
    assert np.unique(ta).size == ta.size
    assert np.array_equal(np.asarray(a.ram_gfns), np.asarray(b.ram_gfns)) and not np.array_equal(ta, tb)
    # a slice of the lazy layout is the same slice of the whole arrays
    assert np.array_equal(a.ram_tokens[100:5000], ta[100:5000])
    assert np.array_equal(a.ram_gfns[100:5000], np.asarray(a.ram_gfns)[100:5000])


def test_pod_boot_lays_out_maxmem_as_pod_backed_by_a_cache_of_memory():
    c = cfg(memory="64MiB", maxmem="128MiB", layout={"holes": [], "high_pages": [0xFFFFF000]})
    dl = Guest(c, seed=1).layout()
    assert dl.pod_gfns.size == 32768 - 1 and dl.ram_gfns.tolist() == [0xFFFFF000]
    assert dl.pod_cache_pages == 16384 - 1
    assert np.all(dl.ram_tokens != 0)


def test_layout_errors_say_where():
    with pytest.raises(ValueError, match="high_pages"):
        cfg(memory="16MiB", layout={"high_pages": [0x10], "holes": []})
    with pytest.raises(ValueError, match="exactly one of size or end"):
        cfg(memory="16MiB", layout={"holes": [{"start": 1, "size": 2, "end": 5}]})


def test_builder_takes_the_lazy_layout_like_the_whole_arrays_and_checks_its_runs():
    import pytest

    from hypervisor.abi import DomainLayout, GfnRuns
    from hypervisor.domain import Hypervisor

    lay = Guest(cfg(memory="1GiB", maxmem="1GiB"), seed=5).layout()
    assert isinstance(lay.ram_gfns, GfnRuns)
    eager = DomainLayout(ram_gfns=np.asarray(lay.ram_gfns), ram_tokens=np.asarray(lay.ram_tokens),
                         mmio_gfns=lay.mmio_gfns, special_gfns=lay.special_gfns)
    a, b = Hypervisor(host_frames=1 << 19), Hypervisor(host_frames=1 << 19)
    a.build(lay)
    b.build(eager)
    ga, ta = a.snapshot()
    gb, tb = b.snapshot()
    assert np.array_equal(ga, gb) and np.array_equal(ta, tb) and ga.size == (1 << 18) + 16
    with pytest.raises(ValueError, match="ascending and apart"):
        Hypervisor(host_frames=100).build(DomainLayout(ram_gfns=GfnRuns(np.array([0, 5]), np.array([10, 2]))))
