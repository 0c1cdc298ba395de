"""The GFN map folds events into per-cell states a viewer can read."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from migrate.events import (BalloonMoved, BalloonTarget, BatchSent, CleanDone, CountersSampled, MemoryOp,
                            MigrationFinished, PassEnded, PassStarted, PhaseChanged, RoundStats,
                            RunStarted, SaveSetup, VerifyDone, VerifyStats)
from migrate.ui.gfnmap import (BALLOONED, LEFTOVER, PENDING, SENT, UNPOPULATED, XTAB, GfnMap,
                            GfnMapRecorder)

P2M = 0x10000                       # 256 MiB of address space, 64 PFNs per cell
RAM_RUNS = np.array([[0, 0xA0], [0x100, 0xF000]], dtype=np.int64)
BALLOON = (0x8000, 0x9000)          # carved out after pass 1: cells 512..575
WRITES = np.arange(0x2000, 0x20C8, dtype=np.int64)   # 200 pages the guest dirties


def ram_mask() -> np.ndarray:
    m = np.zeros(P2M, dtype=bool)
    for lo, hi in RAM_RUNS:
        m[lo:hi] = True
    return m


class Builder:
    """Hand-built but realistic event sequence, shaped like engine.py publishes it."""

    def __init__(self):
        self.events: list = []
        self.t = 0.0
        self.ram = ram_mask()
        self.counters = {"marks_dirty": 0, "marks_clean": 0, "logdirty_nodes": 3,
                         "logdirty_nodes_peak": 3, "dirty_count": 0, "failed_allocs": 0}

    def add(self, ev):
        self.events.append(ev)
        return ev

    def tick(self, dt=0.001):
        self.t = round(self.t + dt, 6)
        return self.t

    def run_pass(self, iteration, phase, pfns, dirty_count):
        entries = P2M if pfns is None else int(pfns.size)
        rs = RoundStats(iteration=iteration, phase=phase, start_s=self.t, dirty_count=dirty_count)
        self.add(PassStarted(t=self.t, iteration=iteration, phase=phase, entries=entries,
                             dirty_count=dirty_count, pfns=pfns))
        walk = np.arange(P2M, dtype=np.int64) if pfns is None else pfns
        for lo in range(0, walk.size, 1024):
            batch = walk[lo:lo + 1024]
            nib = np.where(self.ram[batch], 0x0, 0xF).astype(np.uint8)
            data = int((nib == 0).sum())
            nbytes = 16 + 8 * batch.size + 4096 * data
            rs = rs.added(pages_sent=data, xtab_sent=int((nib == 0xF).sum()), bytes=nbytes, batches=1,
                          pfns_walked=int(batch.size))
            self.add(BatchSent(t=self.tick(), iteration=iteration, pfns=batch, nibbles=nib,
                               walked=rs.pfns_walked, entries=entries, bytes=nbytes))
        rs = dataclasses.replace(rs, end_s=self.t)
        self.add(PassEnded(t=self.t, stats=rs))
        self.counters["marks_dirty"] += 100 * iteration
        self.add(CountersSampled(t=self.t, counters=dict(self.counters)))
        return rs

    def balloon_out(self, lo, hi, chunk=1024):
        for a in range(lo, hi, chunk):
            g = np.arange(a, min(a + chunk, hi), dtype=np.int64)
            self.ram[g] = False
            self.add(MemoryOp(t=self.tick(), op="decrease_reservation", nr=g.size, rc=g.size, gfns=g))


def make_events(behaviour: str = "pre-fix", verify_ok: bool | None = None) -> list:
    b = Builder()
    b.add(RunStarted(t=0.0, scenario="balloon", seed=7, behaviour=behaviour, policy="xen",
                     policy_params={"max_iterations": 5, "dirty_threshold": 50},
                     guest_pages=int((RAM_RUNS[:, 1] - RAM_RUNS[:, 0]).sum()), populated=RAM_RUNS,
                     ballooned=np.empty((0, 2), dtype=np.int64)))
    b.add(PhaseChanged(t=0.0, phase="setup"))
    b.add(SaveSetup(t=0.0, p2m_size=P2M))
    b.add(PhaseChanged(t=0.0, phase="precopy"))
    b.run_pass(1, "live", None, P2M)
    b.add(BalloonTarget(t=b.tick(), current_pages=0xEEA0, target_pages=0xEEA0 - 0x1000, previous_pages=0xEEA0,
                        scheduled_at=b.t, reason="schedule"))
    b.balloon_out(*BALLOON)
    b.add(BalloonMoved(t=b.tick(), current_pages=0xEEA0 - 0x1000, target_pages=0xEEA0 - 0x1000,
                       direction="inflate", pages=0x1000, batches=4))
    ballooned = np.arange(*BALLOON, dtype=np.int64)
    dirty2 = WRITES if behaviour == "fixed" else np.concatenate([WRITES, ballooned])
    b.add(CleanDone(t=b.tick(), iteration=1, op="CLEAN", final=False, dirty_count=int(dirty2.size),
                    fault_count=0, pages=P2M))
    b.run_pass(2, "live", dirty2, int(dirty2.size))
    d3 = WRITES[:30]
    b.add(CleanDone(t=b.tick(), iteration=2, op="CLEAN", final=False, dirty_count=30, fault_count=0, pages=P2M))
    b.run_pass(3, "live", d3, 30)
    b.add(PhaseChanged(t=b.tick(), phase="suspended", detail="Domain now suspended"))
    b.add(CleanDone(t=b.tick(), iteration=4, op="CLEAN", final=True, dirty_count=10, fault_count=0, pages=P2M))
    b.add(PhaseChanged(t=b.t, phase="final"))
    b.run_pass(4, "final", WRITES[:10], 10)
    b.add(PhaseChanged(t=b.tick(), phase="done", detail="End of stream"))
    ok = (behaviour == "fixed") if verify_ok is None else verify_ok
    b.add(VerifyDone(t=b.t, stats=VerifyStats(ok=ok, missing_pages=0 if ok else 3, stale_pages=0 if ok else 5,
                                              extra_pages=0x1000)))
    b.add(MigrationFinished(t=b.t, outcome="completed"))
    return b.events


def feed(listener, events, until=None):
    for ev in events:
        listener(ev)
        if until is not None and until(ev):
            return


def ended(iteration):
    return lambda ev: isinstance(ev, PassEnded) and ev.stats.iteration == iteration


BALLOON_CELLS = slice(BALLOON[0] // 64, BALLOON[1] // 64)


def test_geometry_folds_address_space_into_at_most_1024_cells():
    gm = GfnMap()
    feed(gm, make_events()[:3])
    assert (gm.p2m_size, gm.cell_pfns, gm.ncells, gm.columns, gm.rows) == (P2M, 64, 1024, 64, 16)
    assert gm.grid().shape == (16, 64)


def test_initial_state_comes_from_run_started_runs():
    gm = GfnMap()
    feed(gm, make_events()[:4])
    cells = gm.cells()
    assert cells.dtype == np.int8
    assert (cells[: 0xA0 // 64] == PENDING).all()             # RAM not yet sent
    assert cells[0xC0 // 64] == UNPOPULATED                  # the VGA hole
    assert (cells[0xF000 // 64:] == UNPOPULATED).all()        # MMIO above RAM
    assert gm.states([0x0, 0xB0]).tolist() == [PENDING, UNPOPULATED]


def test_pass_one_sends_ram_and_lists_holes_as_xtab():
    gm = GfnMap()
    feed(gm, make_events(), until=ended(1))
    cells = gm.cells()
    assert (cells[4:0xF000 // 64] == SENT).all()
    assert (cells[0xF000 // 64:] == XTAB).all()
    assert cells[0xA0 // 64] == XTAB                          # a cell with RAM and hole: hole wins
    assert gm.totals()["xtab"] == 0x60 + 0x1000


def test_balloon_carves_a_region_out_of_the_map():
    gm = GfnMap()
    events = make_events()
    feed(gm, events, until=lambda ev: isinstance(ev, CleanDone))
    cells = gm.cells()
    assert (cells[BALLOON_CELLS] == BALLOONED).all()
    assert cells[BALLOON_CELLS.start - 1] == SENT and cells[BALLOON_CELLS.stop] == SENT


def test_pre_fix_pass_visits_the_ballooned_region_as_xtab():
    gm = GfnMap()
    events = make_events("pre-fix")
    feed(gm, events, until=lambda ev: isinstance(ev, PassStarted) and ev.iteration == 2)
    assert (gm.cells()[BALLOON_CELLS] == LEFTOVER).all()      # dirty bits on GFNs not in the P2M
    feed(gm, events[events.index(next(e for e in events if isinstance(e, PassStarted) and e.iteration == 2)) + 1:],
         until=ended(2))
    assert (gm.cells()[BALLOON_CELLS] == XTAB).all()
    assert gm.cells()[0x2000 // 64] == SENT                  # the dirtied pages went out


def test_xtab_lasts_until_the_next_pass_starts():
    gm = GfnMap()
    events = make_events("pre-fix")
    feed(gm, events, until=lambda ev: isinstance(ev, PassStarted) and ev.iteration == 3)
    assert (gm.cells()[BALLOON_CELLS] == BALLOONED).all()


def test_fixed_pass_leaves_the_ballooned_region_alone():
    gm = GfnMap()
    feed(gm, make_events("fixed"), until=ended(2))
    assert (gm.cells()[BALLOON_CELLS] == BALLOONED).all()


def test_populate_physmap_brings_pages_back_pending():
    gm = GfnMap()
    events = make_events("fixed")
    feed(gm, events, until=ended(2))
    g = np.arange(0x8000, 0x8100, dtype=np.int64)
    gm(MemoryOp(t=1.0, op="populate_physmap", nr=256, rc=128, gfns=g))   # only rc pages came back
    assert gm.states([0x8000, 0x807F, 0x8080]).tolist() == [PENDING, PENDING, BALLOONED]
    assert gm.cells()[0x8000 // 64] == PENDING and gm.cells()[0x8080 // 64] == BALLOONED


def _one_xtab_in_a_cell(mode):
    gm = GfnMap(mode=mode, max_cells=2)
    gm(RunStarted(t=0, scenario="s", seed=1, behaviour="fixed", policy="xen", policy_params={},
                  guest_pages=63, populated=np.array([[0, 63]]), ballooned=np.empty((0, 2), dtype=np.int64)))
    gm(SaveSetup(t=0, p2m_size=128))
    gm(PassStarted(t=0, iteration=1, phase="live", entries=128, dirty_count=128, pfns=None))
    pfns = np.arange(128, dtype=np.int64)
    gm(BatchSent(t=0, iteration=1, pfns=pfns, nibbles=np.where(pfns < 63, 0, 0xF).astype(np.uint8),
                 walked=128, entries=128, bytes=0))
    return gm.cells().tolist()


def test_priority_mode_lights_a_cell_for_one_xtab_page():
    assert _one_xtab_in_a_cell("priority") == [XTAB, XTAB]


def test_majority_mode_shows_what_most_of_a_cell_is():
    assert _one_xtab_in_a_cell("majority") == [SENT, XTAB]


def test_recorder_snapshots_each_pass_end():
    rec = GfnMapRecorder()
    feed(rec, make_events("pre-fix"))
    out = rec.as_list()
    # one row per pass, then the destination as the verify found it
    assert [p["iteration"] for p in out["passes"]] == [1, 2, 3, 4, 5]
    assert out["passes"][-1]["phase"] == "destination"
    assert out["ncells"] == 1024 and out["cell_pfns"] == 64
    row2 = np.array(out["passes"][1]["cells"])
    assert (row2[BALLOON_CELLS] == XTAB).all()
    assert (np.array(out["passes"][2]["cells"])[BALLOON_CELLS] == BALLOONED).all()


def test_recorder_can_share_the_dashboards_map():
    gm = GfnMap()
    rec = GfnMapRecorder(gm)
    for ev in make_events():
        gm(ev)
        rec(ev)
    assert len(rec.as_list()["passes"]) == 5


def test_coarse_counts_agree_on_the_story():
    gm = GfnMap(dense_limit=1024)            # force the per-cell model
    events = make_events("pre-fix")
    feed(gm, events, until=lambda ev: isinstance(ev, CleanDone))
    assert not gm.dense
    assert (gm.cells()[BALLOON_CELLS] == BALLOONED).all()
    feed(gm, events[events.index(next(e for e in events if isinstance(e, CleanDone))) + 1:], until=ended(2))
    assert (gm.cells()[BALLOON_CELLS] == XTAB).all()
    assert gm.cells()[0x1000 // 64] == SENT


def test_sparse_16tib_guest_never_allocates_per_pfn():
    gm = GfnMap(mode="priority")        # one RAM page in a cell lights it: what this test reads
    gm(RunStarted(t=0, scenario="huge", seed=1, behaviour="fixed", policy="xen", policy_params={},
                  guest_pages=1 << 20, populated=np.array([[0, 1 << 20], [(1 << 32) - 1024, 1 << 32]]),
                  ballooned=np.empty((0, 2), dtype=np.int64)))
    gm(SaveSetup(t=0, p2m_size=1 << 32))
    assert not gm.dense and gm.ncells <= 1024 and gm.cell_pfns == 1 << 22
    gm(PassStarted(t=0, iteration=1, phase="live", entries=1 << 32, dirty_count=0, pfns=None))
    gm(BatchSent(t=0, iteration=1, pfns=np.arange(1024, dtype=np.int64),
                 nibbles=np.zeros(1024, np.uint8), walked=1024, entries=1 << 32, bytes=0))
    cells = gm.cells()
    # pass 1 owes every RAM page a copy; the hole in the middle is just a hole
    assert cells[0] == PENDING and cells[-1] == PENDING and cells[500] == UNPOPULATED
    gm(PassStarted(t=1, iteration=2, phase="live", entries=2, dirty_count=2,
                   pfns=np.array([5, (1 << 31)], dtype=np.int64)))
    gm(BatchSent(t=1, iteration=2, pfns=np.array([5, 1 << 31], dtype=np.int64),
                 nibbles=np.array([0, 0xF], np.uint8), walked=2, entries=2, bytes=0))
    assert gm.cells()[(1 << 31) >> 22] == XTAB


def test_verify_pass_does_not_repaint_the_map_by_default():
    gm = GfnMap()
    events = make_events("pre-fix")
    feed(gm, events)
    before = gm.cells().copy()
    gm(PassStarted(t=9, iteration=5, phase="verify", entries=P2M, dirty_count=P2M, pfns=None))
    gm(BatchSent(t=9, iteration=5, pfns=np.arange(1024, dtype=np.int64), nibbles=np.zeros(1024, np.uint8),
                 walked=1024, entries=P2M, bytes=0))
    assert (gm.cells() == before).all()


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="majority"):
        GfnMap(mode="average")


def test_a_hole_walked_in_bulk_shows_as_xtab_in_both_models():
    """BatchSent.hole (a never-mapped range the engine accounted in bulk) moves its PFNs
    from pending to XTAB, like a batch of XTAB entries would."""
    import numpy as np

    from migrate.events import BatchSent, PassStarted, RunStarted, SaveSetup
    from migrate.ui.gfnmap import PENDING, XTAB, GfnMap

    for p2m_size, dense_limit in ((1 << 20, 1 << 26), (1 << 32, 1 << 26)):
        gm = GfnMap(dense_limit=dense_limit)
        empty = np.empty((0, 2), dtype=np.int64)
        gm(RunStarted(t=0.0, scenario="s", seed=1, behaviour="fixed", policy="xen", policy_params={},
                      guest_pages=256, populated=np.array([[0, 256]], dtype=np.int64), ballooned=empty))
        gm(SaveSetup(t=0.0, p2m_size=p2m_size))
        gm(PassStarted(t=0.0, iteration=1, phase="live", entries=p2m_size, dirty_count=p2m_size, pfns=None))
        before = gm.counts()[:, PENDING].sum()
        gm(BatchSent(t=1.0, iteration=1, pfns=np.empty(0, np.int64), nibbles=np.empty(0, np.uint8),
                     walked=p2m_size - 1024, entries=p2m_size, bytes=0, hole=(1024, p2m_size)))
        c = gm.counts()
        assert c[:, XTAB].sum() == p2m_size - 1024
        assert c[:, PENDING].sum() == before == 256      # the hole was never RAM owed a copy
