"""The precopy engine runs Xen's send_memory_live loop, on virtual time."""

from __future__ import annotations

import asyncio
import hashlib
import math

import numpy as np
import pytest

from migrate.events import EventBus, MemoryOp, PassStarted
from migrate.run.runner import RunOptions, run_scenario
from migrate.run.scenario import parse_scenario


def scenario(**over):
    base = {
        "name": "t",
        "seed": 7,
        "guest": {"memory": "64MiB", "workloads": [{"kind": "idle"}]},
        "link": {"bandwidth": "1Gbit/s", "latency": "1ms"},
        "migration": {"start": "100ms"},
    }
    for key, value in over.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_scenario(base)


def run(sc, **opts):
    return asyncio.run(run_scenario(sc, RunOptions(**opts)))


def test_idle_guest_one_full_pass_then_clean_with_zero_dirty_stops():
    res = run(scenario())
    rounds = res.save.rounds
    assert res.save.outcome == "completed"
    assert [r.phase for r in rounds] == ["live", "final"]
    assert rounds[0].pfns_walked == res.save.p2m_size == 0xFF000      # libxc's layout: up to the special pages
    assert rounds[0].pages_sent == 64 * 256 + 16                          # RAM and the builder's 16 pages
    assert rounds[1].dirty_count == 0 and rounds[1].pfns_walked == 0 and rounds[1].pages_sent == 0
    assert res.verify.ok and res.verify.missing_pages == res.verify.stale_pages == 0


def test_uniform_writer_follows_the_analytic_precopy_model():
    """Each CLEAN reports N(1 - exp(-w*T/N)) distinct pages for w page-writes/s spread
    uniformly over N pages during the T seconds since the previous CLEAN
    (the saturating curve: each write hits a given page with probability 1/N, so a page
    stays clean through w*T writes with probability (1 - 1/N)^(w*T) ~ exp(-w*T/N))."""
    rate_pages = 4000.0
    sc = scenario(guest={"memory": "128MiB", "tick": "1ms",
                         "workloads": [{"kind": "uniform", "rate": f"{int(rate_pages)}pages/s"}]},
                  migration={"start": "100ms", "policy_params": {"max_iterations": 6, "dirty_threshold": 1}})
    res = run(sc)
    n = 128 * 256
    rounds = res.save.rounds
    assert len(rounds) >= 4
    # The guest is paused while a CLEAN walks the tree (paging_log_dirty_op), so the
    # writes a CLEAN reports happened between the end of the previous walk and its start.
    walk = sc.link.hypercall_overhead + res.save.p2m_size / sc.link.clean_rate
    prev_clean = res.save.t_start    # log-dirty enabled at the start: everything after counts
    for r in rounds[1:]:
        span = (r.start_s - walk) - prev_clean
        predicted = n * (1 - math.exp(-rate_pages * span / n))
        assert r.dirty_count == pytest.approx(predicted, rel=0.05, abs=25), (r.iteration, span)
        prev_clean = r.start_s
    # Volumes shrink geometrically while lambda = w/R < 1.
    sent = [r.pages_sent for r in rounds if r.phase == "live"]
    assert all(a > b for a, b in zip(sent, sent[1:]))


def test_iteration_cap_stops_after_five_live_passes_without_a_sixth_clean():
    sc = scenario(guest={"memory": "64MiB", "workloads": [{"kind": "uniform", "rate": "200MiB/s"}]})
    res = run(sc)
    live = [r for r in res.save.rounds if r.phase == "live"]
    assert len(live) == 5 and res.save.totals.iterations == 5
    # The final CLEAN covers what was dirtied during pass 5 only.
    assert res.save.rounds[-1].phase == "final"


def test_balloon_scenario_fixed_vs_prefix():
    from migrate.run.scenario import load_scenario

    sc = load_scenario("examples/balloon.yaml")
    fixed = run(sc, behaviour="fixed", verify=False)
    prefix = run(sc, behaviour="pre-fix", verify=False)
    assert fixed.verify.ok
    assert fixed.verify.missing_pages == 0 and fixed.verify.stale_pages == 0
    assert not prefix.verify.ok
    assert prefix.verify.missing_pages + prefix.verify.stale_pages > 0
    # pre-fix wastes XTAB entries on removed GFNs after pass 1; fixed sends none there.
    after_pass1 = lambda res: sum(r.xtab_sent for r in res.save.rounds[1:])
    assert after_pass1(fixed) == 0
    assert after_pass1(prefix) > 0
    assert prefix.save.totals.xtab_sent > fixed.save.totals.xtab_sent


def test_two_runs_with_one_seed_write_byte_identical_streams(tmp_path):
    sc = scenario(guest={"memory": "32MiB", "workloads": [{"kind": "uniform", "rate": "8MiB/s"}],
                         "balloon": {"schedule": [{"at": "150ms", "target": "-4MiB"}]}})
    a, b = tmp_path / "a.xmig", tmp_path / "b.xmig"
    ra = run(sc, stream=str(a))
    rb = run(sc, stream=str(b))
    assert a.read_bytes() == b.read_bytes()
    assert ra.stream["sha256"] == hashlib.sha256(a.read_bytes()).hexdigest() == rb.stream["sha256"]
    c = tmp_path / "c.xmig"
    run(sc, stream=str(c), seed=8)
    assert c.read_bytes() != a.read_bytes()


def test_stream_file_restores_the_same_as_the_counted_run(tmp_path):
    sc = scenario(guest={"memory": "32MiB", "workloads": [{"kind": "uniform", "rate": "8MiB/s"}]})
    counted = run(sc)
    filed = run(sc, stream=str(tmp_path / "s.xmig"))
    assert counted.save.totals.bytes == filed.save.totals.bytes == (tmp_path / "s.xmig").stat().st_size
    assert counted.verify == filed.verify


def test_vanished_gfn_fails_the_save_and_the_source_resumes(monkeypatch):
    """A GFN removed between getpageframeinfo3 and the map fails the save, as
    write_batch() does; the error names the PFN and the source domain runs again.
    (The reference engine: the removal is injected between its two calls; a span never
    has a hypercall between them.)"""
    from migrate.toolstack import control

    sc = scenario(guest={"memory": "16MiB", "workloads": [{"kind": "idle"}]}, migration={"engine": "reference"})
    seen = {}
    orig = control.LocalDomain.map_foreign

    async def racing_map(self, t, pfns):
        if "hv" not in seen:
            seen["hv"] = self.hv
            self.hv.decrease_reservation(np.asarray(pfns[:1]))
        return await orig(self, t, pfns)

    monkeypatch.setattr(control.LocalDomain, "map_foreign", racing_map)
    res = run(sc)
    assert res.save.outcome == "failed"
    assert res.save.error_pfn is not None and f"{res.save.error_pfn:#x}" in res.save.error
    assert seen["hv"].state == "running"
    assert res.verify is None


def test_tolerate_vanished_sends_the_vanished_gfn_as_xtab(monkeypatch):
    from migrate.toolstack import control

    sc = scenario(guest={"memory": "16MiB", "workloads": [{"kind": "idle"}]},
                  migration={"start": "100ms", "tolerate_vanished": True})
    done = {}
    orig = control.LocalDomain.map_foreign

    async def racing_map(self, t, pfns):
        if not done:
            done["pfn"] = int(pfns[0])
            self.hv.decrease_reservation(np.asarray(pfns[:1]))
        return await orig(self, t, pfns)

    monkeypatch.setattr(control.LocalDomain, "map_foreign", racing_map)
    res = run(sc)
    assert res.save.outcome == "completed"
    assert res.save.rounds[0].xtab_sent >= 1
    assert res.verify.ok


def test_policy_abort_fails_the_save_and_resumes_the_source():
    sc = scenario(migration={"start": "100ms", "policy": "tests.toolstack.test_engine:abort_policy"})
    res = run(sc, allow_policies=frozenset({"tests.toolstack.test_engine:abort_policy"}))
    assert res.save.outcome == "aborted"
    assert "Abort precopy loop" in res.save.error


def abort_policy(stats):
    return -1 if stats.iteration >= 1 else 0


def test_balloon_ops_are_counted_in_the_pass_they_happen():
    sc = scenario(guest={"memory": "64MiB", "workloads": [{"kind": "idle"}],
                         "balloon": {"schedule": [{"at": "120ms", "target": "-8MiB"}]}})
    bus = EventBus()
    ops = []
    bus.subscribe(lambda e: ops.append(e) if isinstance(e, MemoryOp) else None)
    res = asyncio.run(run_scenario(sc, bus=bus))
    out = sum(e.rc for e in ops if e.op == "decrease_reservation")
    assert out == 8 * 256
    assert sum(r.balloon_out for r in res.save.rounds) == out


def test_pass_started_carries_the_bitmap_pfns():
    sc = scenario(guest={"memory": "16MiB", "workloads": [{"kind": "uniform", "rate": "4MiB/s"}]})
    bus = EventBus()
    starts = []
    bus.subscribe(lambda e: starts.append(e) if isinstance(e, PassStarted) else None)
    res = asyncio.run(run_scenario(sc, bus=bus))
    assert starts[0].pfns is None and starts[0].entries == res.save.p2m_size
    for ev, rnd in zip(starts[1:], res.save.rounds[1:]):
        assert ev.pfns.size == rnd.pfns_walked
        assert np.all(np.diff(ev.pfns) > 0)


def test_deadline_aborts_the_save_and_resumes_the_source():
    sc = scenario(guest={"memory": "64MiB", "workloads": [{"kind": "uniform", "rate": "200MiB/s"}]},
                  migration={"start": "100ms", "deadline": "300ms"})
    res = run(sc)
    assert res.save.outcome == "aborted"
    assert "deadline of 0.3 s exceeded" in res.save.error
    assert res.save.t_end - res.save.t_start < 0.4
    # The pass that was cut short is still reported with what it sent.
    cut = res.save.rounds[-1]
    assert cut.end_s == res.save.t_end and cut.pages_sent > 0
    # ... and the totals of an aborted save count what it sent.
    assert res.save.totals.pages_sent == sum(r.pages_sent for r in res.save.rounds) > 0
    assert res.save.totals.bytes > 0 and res.save.totals.downtime_s == 0.0


def test_truncated_initial_dirty_count_skips_pass_one_as_xen_does():
    """p2m_size = 2^32 (a page just under 16 TiB) truncates to dirty_count 0 in the
    saver's uint32 stats: Xen skips the send-everything pass. 'saturate' (v2 03/13) sends it."""
    from migrate.toolstack.save import PrecopyEngine, SaveOptions  # noqa: F401  (documented names)

    sc = scenario(guest={"memory": "8MiB", "workloads": [{"kind": "idle"}],
                         "layout": {"high_pages": [(1 << 32) - 1]}},
                  migration={"start": "100ms", "stats_overflow": "truncate"})
    res = run(sc)
    assert res.save.p2m_size == 1 << 32
    assert all(r.pfns_walked < 1 << 20 for r in res.save.rounds)
    assert res.verify.missing_pages > 0


def test_restore_rate_caps_how_fast_pages_arrive():
    fast = run(scenario())
    slow = run(scenario(link={"bandwidth": "1Gbit/s", "restore_rate": "1000pages/s"}))
    pass1 = lambda res: res.save.rounds[0].end_s - res.save.rounds[0].start_s
    assert pass1(slow) == pytest.approx(64 * 256 / 1000, rel=0.02)
    assert pass1(fast) < pass1(slow) / 10


def _balloon_after_pass1(behaviour):
    """32 MiB over 100 Mbit/s: pass 1 takes ~2.7 s, passes 2-8 run to ~4 s. The balloon gives 4 MiB back at 3 s
    (after pass 1 sent those pages) and takes it back at 3.5 s, reusing half of it."""
    sc = scenario(guest={"memory": "32MiB", "layout": "compact", "workloads": [{"kind": "uniform", "rate": "4MiB/s"}],
                         "balloon": {"schedule": [{"at": "3s", "target": "-4MiB"},
                                                  {"at": "3.5s", "target": "+4MiB"}],
                                     "reuse_share": 0.5, "reuse_within": "100ms"}},
                  link={"bandwidth": "100Mbit/s"},
                  migration={"start": "100ms", "policy_params": {"dirty_threshold": 1, "max_iterations": 8}})
    return run(sc, behaviour=behaviour)


def test_prefix_leaves_pages_ballooned_out_and_back_stale_at_the_destination():
    """Reference 6.2 (ii): a GFN sent in pass 1, ballooned out, then re-populated with a
    new scrubbed page keeps its pass-1 contents at the destination under pre-fix."""
    fixed, prefix = _balloon_after_pass1("fixed"), _balloon_after_pass1("pre-fix")
    assert fixed.save.rounds[0].end_s < 3.0
    assert fixed.verify.ok and fixed.verify.stale_pages == 0
    assert prefix.verify.stale_pages > 0
    assert prefix.verify.missing_pages == 0


def test_fixed_marks_every_removed_gfn_clean_so_later_bitmaps_hold_no_xtab():
    """The inflate at 3 s lands inside pass 2: GFNs removed after the CLEAN that built
    pass 2's bitmap are XTAB in both behaviours (the saver cannot know). From pass 3 on,
    fixed bitmaps hold no removed GFN; pre-fix ones still do."""
    fixed, prefix = _balloon_after_pass1("fixed"), _balloon_after_pass1("pre-fix")
    assert fixed.save.rounds[1].balloon_out > 0
    assert fixed.save.rounds[1].xtab_sent == prefix.save.rounds[1].xtab_sent
    assert sum(r.xtab_sent for r in fixed.save.rounds[2:]) == 0
    assert sum(r.xtab_sent for r in prefix.save.rounds[2:]) > 0
    assert fixed.hypervisor["marks_clean"] > 0 and prefix.hypervisor["marks_clean"] == 0


def test_a_stream_write_failure_fails_the_save_cleanly(tmp_path, monkeypatch):
    from migrate.stream import FileSink, StreamError

    calls = {"n": 0}
    orig = FileSink.write

    def failing_write(self, data):
        calls["n"] += 1
        if calls["n"] > 20:
            raise StreamError(f"cannot write stream file {self.path}: No space left on device")
        return orig(self, data)

    monkeypatch.setattr(FileSink, "write", failing_write)
    res = run(scenario(), stream=str(tmp_path / "s.xmig"))
    assert res.save.outcome == "failed"
    assert "No space left on device" in res.save.error
    assert not (tmp_path / "s.xmig").exists()


def test_balloon_stale_example_shows_stale_and_missing_pages_only_before_the_fix():
    """examples/balloon-stale.yaml: the balloon moves while pass 1 walks the region."""
    from migrate.run.scenario import load_scenario

    sc = load_scenario("examples/balloon-stale.yaml")
    fixed, prefix = run(sc, behaviour="fixed"), run(sc, behaviour="pre-fix")
    assert fixed.verify.ok and fixed.verify.stale_pages == fixed.verify.missing_pages == 0
    assert prefix.verify.stale_pages > 1000 and prefix.verify.missing_pages > 1000


def test_every_balloon_operation_is_counted_in_some_pass():
    """Operations that happen between two passes (the guest runs until the CLEAN) count
    in the pass before, so the per-pass columns add up to the hypervisor's events."""
    from migrate.run.scenario import load_scenario

    bus = EventBus()
    ops = []
    bus.subscribe(lambda e: ops.append(e) if isinstance(e, MemoryOp) else None)
    res = asyncio.run(run_scenario(load_scenario("examples/balloon.yaml"), bus=bus))
    for op, column in (("decrease_reservation", "balloon_out"), ("populate_physmap", "balloon_in")):
        total = sum(e.rc for e in ops if e.op == op and e.rc > 0)
        assert total > 0
        assert sum(getattr(r, column) for r in res.save.rounds) == total


def test_page_data_record_bytes_is_what_the_writer_writes_for_one_batch():
    from hypervisor.abi import PFInfo
    from migrate.toolstack.link import page_data_record_bytes
    from migrate.stream import PAGE_SIZE, RHDR_SIZE, CallbackSink, NullSink, StreamWriter

    assert (RHDR_SIZE, PAGE_SIZE) == (8, 4096)
    rng = np.random.default_rng(3)
    for count in (1, 2, 3, 7, 511, 1023, 1024):
        for n_data in sorted({0, 1, count // 2, count}):
            nib = np.full(count, PFInfo.XTAB, dtype=np.uint8)
            nib[rng.choice(count, n_data, replace=False)] = PFInfo.NOTAB
            tokens = np.arange(1, n_data + 1, dtype=np.uint64)
            chunks: list = []
            for sink in (NullSink(), CallbackSink(chunks.append)):
                writer = StreamWriter(sink)
                got = writer.write_page_data(np.arange(count, dtype=np.int64), nib, tokens)
                writer.close()
                assert got == writer.bytes_written == page_data_record_bytes(count, n_data)
            assert sum(len(c) for c in chunks) == page_data_record_bytes(count, n_data)


def test_link_next_batch_time_is_the_engines_batch_time_to_the_bit():
    """LinkModel.next_batch_time is exactly (float for float) when the reference engine
    starts its next batch (the span engine times whole spans with the same
    ``batch_steps``/``batch_times`` and checks the hypervisor's span times equal)."""
    from hypervisor.abi import PFINFO_HAS_DATA
    from migrate.toolstack.control import LocalDomain
    from migrate.events import BatchSent
    from migrate.toolstack.link import page_data_record_bytes

    sc = scenario(guest={"memory": "64MiB", "workloads": [{"kind": "uniform", "rate": "40MiB/s"}]},
                  link={"bandwidth": "300Mbit/s", "restore_rate": "20000pages/s", "batch_overhead": "37us",
                        "hypercall_overhead": "3us"}, migration={"engine": "reference"})
    starts: list[float] = []
    orig = LocalDomain.getpageframeinfo3

    async def spy(self, t, pfns):
        starts.append(float(t))
        return await orig(self, t, pfns)

    sent: list = []
    bus = EventBus()
    bus.subscribe(lambda ev: sent.append(ev) if isinstance(ev, BatchSent) and ev.hole is None else None)
    mp = pytest.MonkeyPatch()
    mp.setattr(LocalDomain, "getpageframeinfo3", spy)
    try:
        res = asyncio.run(run_scenario(sc, RunOptions(), bus=bus))
    finally:
        mp.undo()
    from migrate.run.runner import RunOptions as _RO, run_settings
    link = run_settings(sc, _RO()).link
    assert res.save.outcome == "completed" and len(sent) == len(starts) > 10
    for t0, ev in zip(starts, sent):
        n_data = int(PFINFO_HAS_DATA[ev.nibbles].sum())
        assert ev.bytes == page_data_record_bytes(ev.pfns.size, n_data)
        assert link.next_batch_time(t0, ev.bytes, n_data, n_data > 0) == ev.t


@pytest.mark.parametrize("guest", [
    {"memory": "24MiB", "workloads": [{"kind": "uniform", "rate": "16MiB/s"}],
     "balloon": {"schedule": [{"at": "50ms", "target": "-8MiB"}]}},
    # a P2M hole between two stretches (walked in bulk: other calls come between)
    {"memory": "8MiB", "workloads": [{"kind": "uniform", "rate": "2MiB/s"}],
     "layout": {"kind": "compact", "holes": [], "high_pages": [(1 << 22) + 5]}},
], ids=["balloon", "hole"])
def test_the_engine_walks_exactly_the_pass_plan_it_states_at_link_model_times(monkeypatch, guest):
    """Every pass states its batches (begin_pass) before the first one and then walks
    exactly those, each type query at ``LinkModel.next_batch_time`` of the batch before
    it in its stretch and each map at ``LinkModel.map_time`` (the reference engine; the
    span engine asks for the same batches a span at a time)."""
    from hypervisor.abi import PFINFO_HAS_DATA, PFINFO_LTAB_SHIFT
    from migrate.toolstack import control
    from migrate.toolstack.link import page_data_record_bytes

    sc = scenario(guest=guest, migration={"start": "20ms", "verify": True, "engine": "reference"})
    plans, walked, maps = [], [], []
    orig_begin, orig_gpfi3, orig_map = (control.LocalDomain.begin_pass, control.LocalDomain.getpageframeinfo3,
                                        control.LocalDomain.map_foreign)

    async def begin_pass(self, t, plan):
        plans.append(plan)
        walked.append([])
        return await orig_begin(self, t, plan)

    async def gpfi3(self, t, pfns):
        types = await orig_gpfi3(self, t, pfns)
        walked[-1].append((t, np.array(pfns), types))
        return types

    async def map_foreign(self, t, pfns):
        maps.append(t)
        return await orig_map(self, t, pfns)

    monkeypatch.setattr(control.LocalDomain, "begin_pass", begin_pass)
    monkeypatch.setattr(control.LocalDomain, "getpageframeinfo3", gpfi3)
    monkeypatch.setattr(control.LocalDomain, "map_foreign", map_foreign)
    res = run(sc)
    assert res.save.outcome == "completed"
    assert len(plans) == len(res.save.rounds) >= 3
    if "layout" in guest:
        assert max(len(p.stretches) for p in plans) == 2
    n_maps = 0
    for plan, calls in zip(plans, walked):
        planned = [st.batch(k) for st in plan.stretches for k in range(len(st))]
        assert len(planned) == len(calls)
        for want, (_t, got, _types) in zip(planned, calls):
            assert np.array_equal(want, got)
        starts, k = set(), 0
        for st in plan.stretches:
            starts.add(k)
            k += len(st)
        for i, (t, pfns, types) in enumerate(calls):
            n_data = int(PFINFO_HAS_DATA[(np.asarray(types, np.uint32) >> PFINFO_LTAB_SHIFT)].sum())
            if n_data:
                assert maps[n_maps] == plan.link.map_time(t)
                n_maps += 1
            if i + 1 < len(calls) and i + 1 not in starts:
                assert calls[i + 1][0] == plan.link.next_batch_time(t, page_data_record_bytes(pfns.size, n_data),
                                                                    n_data, n_data > 0)
    assert n_maps == len(maps) > 0
