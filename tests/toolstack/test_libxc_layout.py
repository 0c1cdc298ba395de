"""libxc's HVM layout is the default: what a saver walks and sends for it.

The expected numbers come from libxc's constants, not from xmig's output:
``tools/include/xenguest.h`` has ``X86_HVM_END_SPECIAL_REGION 0xff000u`` and
``X86_HVM_NR_SPECIAL_PAGES 8``; ``tools/libs/guest/xg_dom_x86.c`` puts
``special_pfn(x) = X86_HVM_END_SPECIAL_REGION - X86_HVM_NR_SPECIAL_PAGES + x`` and,
with a device model, ``NR_IOREQ_SERVER_PAGES`` (8) ioreq server pages just below,
and meminit_hvm leaves [0xA0, 0xC0) (the VGA hole) unpopulated. ``xg_sr_save_x86_hvm.c``
sets ``p2m_size = xc_domain_maximum_gpfn() + 1``.
"""

from __future__ import annotations

import asyncio

import pytest

from migrate.run.runner import RunOptions, run_scenario
from migrate.run.scenario import parse_scenario
from migrate.stream import RecType, read_stream, unpack_hvm_params
from tests.xmig_process import xmig

X86_HVM_END_SPECIAL_REGION = 0xFF000      # xenguest.h
X86_HVM_NR_SPECIAL_PAGES = 8              # xenguest.h
NR_IOREQ_SERVER_PAGES = 8                 # xg_dom_x86.c
VGA_HOLE = 0xC0 - 0xA0                    # meminit_hvm skips 0xA0000-0xC0000
GIB = 1 << 18                             # 4 KiB pages in 1 GiB

#: The highest special page is special_pfn(7) = END - 1, so p2m_size = END.
LIBXC_P2M_SIZE_1GIB = (X86_HVM_END_SPECIAL_REGION - X86_HVM_NR_SPECIAL_PAGES + 7) + 1


def one_gib(layout=None, **mig):
    guest = {"memory": "1GiB", "workloads": [{"kind": "uniform", "rate": "8MiB/s"}]}
    if layout is not None:
        guest["layout"] = layout
    return parse_scenario({"name": "libxc-1g", "seed": 2, "guest": guest,
                           "migration": {"start": "100ms", **mig}})


def run(sc, **opts):
    return asyncio.run(run_scenario(sc, RunOptions(**opts)))


@pytest.fixture(scope="module")
def libxc_run(tmp_path_factory):
    """One run of the default layout, with its stream, shared by the tests below."""
    path = tmp_path_factory.mktemp("libxc") / "s.xmig"
    return run(one_gib(), stream=str(path)), path


def test_a_1gib_hvm_guest_walks_the_pfn_count_libxcs_layout_implies(libxc_run):
    assert LIBXC_P2M_SIZE_1GIB == 1_044_480
    res, _ = libxc_run
    assert res.save.outcome == "completed" and res.verify.ok
    walked = res.save.rounds[0].pfns_walked
    assert abs(walked - LIBXC_P2M_SIZE_1GIB) <= LIBXC_P2M_SIZE_1GIB // 1000      # within 0.1 %
    assert res.save.p2m_size == LIBXC_P2M_SIZE_1GIB
    # pass 1: the guest's RAM and the builder's 16 pages are data, every other PFN is XTAB
    special = X86_HVM_NR_SPECIAL_PAGES + NR_IOREQ_SERVER_PAGES
    first = res.save.rounds[0]
    assert first.pages_sent == GIB + special
    assert first.xtab_sent == LIBXC_P2M_SIZE_1GIB - GIB - special


def test_the_special_pages_are_sent_rebuilt_and_named_by_the_hvm_params(libxc_run):
    res, path = libxc_run
    assert res.verify.ok
    sent, params = set(), {}
    for rec in read_stream(path):
        if rec.type == RecType.PAGE_DATA:
            sent.update(rec.pfns[(rec.nibbles & 0xF) == 0].tolist())     # XEN_DOMCTL_PFINFO_NOTAB
        elif rec.type == RecType.HVM_PARAMS:
            params = dict(unpack_hvm_params(rec.body))
    special_pfn = [X86_HVM_END_SPECIAL_REGION - X86_HVM_NR_SPECIAL_PAGES + x for x in range(8)]
    ioreq = [special_pfn[0] - NR_IOREQ_SERVER_PAGES + x for x in range(8)]
    assert set(special_pfn + ioreq) <= sent                      # sent as data pages
    assert not sent & set(range(0xA0, 0xC0))                    # the VGA hole is not
    # xg_dom_x86.c: STORE = XENSTORE (4), IOREQ (5), BUFIOREQ (3), CONSOLE (7), IDENT_PT (6)
    assert params[1] == special_pfn[4] and params[5] == special_pfn[5] and params[6] == special_pfn[3]
    assert params[17] == special_pfn[7] and params[12] == special_pfn[6] << 12
    assert params[27] == special_pfn[0] and params[28] == special_pfn[1] and params[29] == special_pfn[2]
    assert params[32] == ioreq[0] and params[33] == NR_IOREQ_SERVER_PAGES
    # the destination holds them: RAM + the 16 builder pages
    assert res.destination["populated_pages"] == GIB + 16


def test_compact_layout_is_the_earlier_one():
    res = run(one_gib("compact"))
    assert res.save.p2m_size == 0x40060                        # RAM around a 96-PFN hole 0xA0-0xFF
    assert res.save.rounds[0].xtab_sent == 0x60 and res.verify.ok


@pytest.mark.parametrize("layout", ["compact", {"kind": "compact"}, {"kind": "libxc", "holes": []}])
def test_layout_kind_is_read_in_both_forms(layout):
    assert one_gib(layout).guest.layout.kind == (layout if isinstance(layout, str) else layout["kind"])


def test_a_bad_layout_kind_is_one_line_naming_the_field(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("guest:\n  memory: 64MiB\n  layout: sparse\n")
    res = xmig("run", "--guest", str(f), "--no-dashboard")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert "guest.layout.kind" in line and "libxc" in line and "compact" in line, res.stderr


def test_xmig_inspect_accepts_the_libxc_stream(libxc_run):
    _, path = libxc_run
    res = xmig("inspect", str(path))
    assert res.returncode == 0, res.stderr
    assert "HVM_PARAMS" in res.stdout
