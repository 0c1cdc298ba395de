"""Following one page (--track, xmig explain) and the seed patch's call sites one by one."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from hypervisor.abi import FIX_SITES, P2MType
from migrate.events.log import EventRecorder
from migrate.events import EventBus
from migrate.run.runner import RunOptions, run_scenario
from migrate.run.scenario import load_scenario
from tests.hv_helpers import a, clean, make_hv
from tests.xmig_process import xmig


def sites(**over):
    return {s: over.get(s, "pre-fix") for s in FIX_SITES}


def test_each_call_site_switch_changes_only_its_own_bits():
    """p2m_remove_page fixed, everything else pre-fix: a balloon inflate clears the bits
    of the pages it removes, set_typed_p2m_entry leaves its bit, an add marks nothing."""
    hv = make_hv(sites(p2m_remove_page="fixed"), ram=range(0, 64))
    hv.drain_events()
    hv.guest_write(a(1, 2, 3), np.ones(3, np.uint64))
    assert hv.behaviour == "mixed"
    hv.decrease_reservation(a(1, 2))
    hv.set_typed_p2m_entry(3, P2MType.mmio_direct)
    hv.populate_physmap(a(1))
    ev = hv.drain_events()
    rm, typed, add = ev[0].sites[0], ev[1].sites[0], ev[2].sites[0]
    assert (rm.site, rm.fixed, rm.cleared, rm.leftover.size) == ("p2m_remove_page", True, 2, 0)
    assert (typed.site, typed.fixed, typed.cleared, typed.leftover.tolist()) == ("set_typed_p2m_entry", False, 0, [3])
    assert (add.site, add.fixed, add.set, add.unmarked.tolist()) == ("guest_physmap_add_entry", False, 0, [1])
    assert clean(hv).bitmap.pfns().tolist() == [3]


def test_pod_cache_stealing_is_its_own_site():
    hv = make_hv(sites(pod_decrease_reservation="fixed"), ram=range(0, 8), pod_gfns=np.arange(8, 16),
                 pod_cache_pages=0)
    hv.guest_write(a(4), np.ones(1, np.uint64))
    hv.drain_events()
    hv.decrease_reservation(a(4))   # more PoD entries than cache: RAM is stolen for the cache
    (ev,) = hv.drain_events()
    (eff,) = ev.sites
    assert (eff.site, eff.change, eff.cleared, eff.dirty.tolist()) == ("pod_decrease_reservation", "remove", 1, [4])


# ------------------------------------------------------------------ one page's story

BALLOON_FIXED = """\
t=  1.000000 s  migration starts (fixed): GFN 0x30060 is RAM in the P2M
t=  1.000005 s  pass 1 walks every PFN below p2m_size, this one included
t=  3.490000 s  balloon inflate (decrease_reservation): P2M remove by p2m_remove_page; its dirty bit was clear
t=  7.466709 s  pass 1: type query XTAB, sent as a PFN word only (no data)
t=  9.250000 s  balloon deflate (populate_physmap): P2M add by guest_physmap_add_entry; guest_physmap_add_entry marks it dirty (the fix): the next CLEAN returns it
t=  9.456772 s  guest writes it at t=9.456772 s; no write fault (its entry was already ram_rw): no new dirty bit
t=  9.568211 s  CLEAN returned its dirty bit: queued for pass 4
t=  9.803972 s  pass 4: type query NOTAB, sent with its contents
t= 13.027240 s  the domain is suspended: no more writes
t= 13.753562 s  destination: ok, the destination holds the source's last contents"""

BALLOON_PREFIX = """\
t=  1.000000 s  migration starts (pre-fix): GFN 0x30060 is RAM in the P2M
t=  1.000005 s  pass 1 walks every PFN below p2m_size, this one included
t=  3.490000 s  balloon inflate (decrease_reservation): P2M remove by p2m_remove_page; its dirty bit was clear
t=  7.466709 s  pass 1: type query XTAB, sent as a PFN word only (no data)
t=  9.250000 s  balloon deflate (populate_physmap): P2M add by guest_physmap_add_entry; NOT marked dirty (guest_physmap_add_entry is pre-fix): a fresh ram_rw entry, its writes go unlogged until the next CLEAN
t=  9.456772 s  guest writes it at t=9.456772 s; no write fault (its entry was already ram_rw): no new dirty bit
t= 10.223472 s  the domain is suspended: no more writes
t= 10.854828 s  destination: MISSING, RAM at the source but never populated at the destination"""

STALE_FIXED = """\
t=  1.000000 s  migration starts (fixed): GFN 0x30060 is RAM in the P2M
t=  1.000005 s  pass 1 walks every PFN below p2m_size, this one included
t=  7.499215 s  pass 1: type query NOTAB, sent with its contents
t=  8.090000 s  balloon inflate (decrease_reservation): P2M remove by p2m_remove_page; its dirty bit was clear
t=  8.400000 s  balloon deflate (populate_physmap): P2M add by guest_physmap_add_entry; guest_physmap_add_entry marks it dirty (the fix): the next CLEAN returns it
t=  8.663846 s  guest writes it at t=8.663846 s; no write fault (its entry was already ram_rw): no new dirty bit
t=  8.966854 s  guest writes it at t=8.966854 s; no write fault (its entry was already ram_rw): no new dirty bit
t=  9.630204 s  CLEAN returned its dirty bit: queued for pass 3
t= 10.202766 s  pass 3: type query NOTAB, sent with its contents
t= 13.727304 s  the domain is suspended: no more writes
t= 13.939232 s  destination: ok, the destination holds the source's last contents"""

STALE_PREFIX = """\
t=  1.000000 s  migration starts (pre-fix): GFN 0x30060 is RAM in the P2M
t=  1.000005 s  pass 1 walks every PFN below p2m_size, this one included
t=  7.499215 s  pass 1: type query NOTAB, sent with its contents
t=  8.090000 s  balloon inflate (decrease_reservation): P2M remove by p2m_remove_page; its dirty bit was clear
t=  8.400000 s  balloon deflate (populate_physmap): P2M add by guest_physmap_add_entry; NOT marked dirty (guest_physmap_add_entry is pre-fix): a fresh ram_rw entry, its writes go unlogged until the next CLEAN
t=  8.663846 s  guest writes it at t=8.663846 s; no write fault (its entry was already ram_rw): no new dirty bit
t=  8.966854 s  guest writes it at t=8.966854 s; no write fault (its entry was already ram_rw): no new dirty bit
t= 11.031090 s  the domain is suspended: no more writes
t= 11.111483 s  destination: STALE, the destination holds older contents than the source"""


_RECORDED: dict = {}


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """Recordings shared by the tests of this module, made once each."""
    folder = tmp_path_factory.mktemp("logs")

    def get(example, behaviour, gfn=0x30060):
        key = (example, behaviour, gfn)
        if key not in _RECORDED:
            _RECORDED[key] = record(folder, example, behaviour, gfn)
        return _RECORDED[key]
    return get


def record(tmp_path, example, behaviour, gfn):
    path = tmp_path / f"{example}.{behaviour}.{gfn}.events"
    bus = EventBus()
    rec = EventRecorder(path)
    bus.subscribe(rec)
    asyncio.run(run_scenario(load_scenario(f"examples/{example}.yaml"),
                             RunOptions(behaviour=behaviour, track=(gfn,)), bus=bus))
    rec.close()
    return path


@pytest.mark.parametrize("example,behaviour,expected", [
    ("balloon", "fixed", BALLOON_FIXED), ("balloon", "pre-fix", BALLOON_PREFIX),
    ("balloon-stale", "fixed", STALE_FIXED), ("balloon-stale", "pre-fix", STALE_PREFIX)])
def test_explain_tells_a_ballooned_page_s_life(logs, example, behaviour, expected):
    """GFN 0x30060 is in the 256 MiB both examples balloon out and back: pre-fix, the
    add at guest_physmap_add_entry does not mark it, so it ends missing (balloon.yaml,
    never sent) or stale (balloon-stale.yaml, sent in pass 1 before the balloon moved)."""
    path = logs(example, behaviour)
    out = xmig("explain", path, "--gfn", "0x30060")
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip("\n") == expected


def test_explain_of_an_untracked_gfn_says_what_it_cannot_know_and_what_the_verify_knows(logs):
    path = logs("balloon", "pre-fix")
    out = xmig("explain", path, "--gfn", "196705")
    assert out.returncode == 0
    assert out.stdout.startswith("note: GFN 0x30061 was not tracked")
    assert "P2M remove by p2m_remove_page" in out.stdout
    assert "its writes are unknown; its final state is the verify's" in out.stdout
    # the log carries the verify's missing set (VerifySets): 0x30061 is in it
    assert "destination: MISSING, the verify lists it" in out.stdout.rstrip().splitlines()[-1]
    bad = xmig("explain", path, "--gfn", "lots")
    assert bad.returncode == 2 and bad.stderr.startswith("xmig: error: --gfn: expected a GFN")


def test_record_then_replay_prints_the_same_lines_and_summary(recorded_run):
    """What `xmig run --no-dashboard` printed is what `xmig replay` prints, and the
    report rebuilt from the log equals the live report (wall time aside, it is recorded)."""
    import json

    from migrate.events.log import read_event_log
    from migrate.run.report import build_report
    from migrate.run.runner import result_from_events

    ev, rep = recorded_run.events, recorded_run.report
    assert recorded_run.returncode == 1 and recorded_run.tracked == 196704     # pre-fix: missing pages
    replay = xmig("replay", ev, "--no-dashboard")
    assert replay.returncode == 1, replay.stderr
    assert replay.stdout == recorded_run.stdout
    assert "GFN 196704 (0x30060):" in replay.stdout
    log = read_event_log(ev)
    assert log.header["behaviour"] == "pre-fix" and log.header["tracked"] == [196704]
    assert log.header["scenario_text"] == open("examples/balloon.yaml").read()
    live = json.loads(rep.read_text())
    rebuilt = json.loads(json.dumps(build_report(result_from_events(log.events))))
    assert rebuilt == live
    assert live["pages"]["destination"] == {"current": 262144 + 16 - 42576, "missing": 42576, "stale": 0,
                                              "extra": 0}      # + libxc's 16 special pages
    assert live["pages"]["leftover_bits"] == live["pages"]["leftover_sent_as_xtab"] == 3357
