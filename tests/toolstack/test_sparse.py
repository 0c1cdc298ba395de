"""Sparse address spaces: p2m_size follows the highest GFN, work follows what is mapped."""

from __future__ import annotations

import asyncio

import numpy as np

from migrate.toolstack import control
from migrate.run.report import build_report
from migrate.run.runner import RunOptions, run_scenario
from migrate.run.scenario import parse_scenario
from migrate.stream import read_stream, RecType, split_pfn_words  # noqa: F401


def sparse(high, memory="8MiB", workloads=None, **mig):
    return parse_scenario({
        "name": "sparse", "seed": 3,
        "guest": {"memory": memory, "layout": {"kind": "compact", "holes": [], "high_pages": list(high)},
                  "workloads": workloads or [{"kind": "idle"}]},
        "migration": {"start": "100ms", "stats_overflow": "saturate", **mig},
    })


def run(sc, **opts):
    return asyncio.run(run_scenario(sc, RunOptions(**opts)))


def test_hole_walk_in_bulk_matches_the_batch_by_batch_walk(tmp_path, monkeypatch):
    """The bulk accounting of never-mapped batches gives the same report and the same
    stream bytes as walking every batch, as Xen does."""
    sc = sparse([(1 << 22) + 5], workloads=[{"kind": "uniform", "rate": "2MiB/s"}])
    bulk = run(sc, stream=str(tmp_path / "bulk.xmig"))

    async def everything_mapped(self, t, lo, hi):
        self.hv.advance_to(t)
        return np.array([[lo, hi]], dtype=np.int64)

    monkeypatch.setattr(control.LocalDomain, "mapped_runs", everything_mapped)
    slow = run(sc, stream=str(tmp_path / "slow.xmig"))
    assert bulk.save.p2m_size == (1 << 22) + 6
    a, b = build_report(bulk), build_report(slow)
    for rep in (a, b):   # different files, and wall time
        rep.pop("wall")
        rep["stream"].pop("target")
    assert a == b        # virtual times agree to the report's 1e-9 s rounding
    assert bulk.stream["sha256"] == slow.stream["sha256"]
    assert bulk.verify.ok and slow.verify.ok
    assert bulk.restore["xtab_skipped"] == slow.restore["xtab_skipped"]


def test_pages_at_2_33_plus_5_and_2_40_minus_1_migrate_with_one_tree_path_each(tmp_path):
    high = [(1 << 33) + 5, (1 << 40) - 1]
    res = run(sparse(high, memory="4MiB"))
    assert res.save.outcome == "completed", res.save.error
    assert res.save.p2m_size == 1 << 40
    assert res.save.rounds[0].pfns_walked == 1 << 40
    assert res.verify.ok and res.verify.missing_pages == 0
    # memory counts the high pages: 1022 low RAM pages + 2 high ones.
    assert res.destination["populated_pages"] == 4 * 256
    assert res.restore["xtab_skipped"] == (1 << 40) - 4 * 256
    # Xen's stream for this guest: 8 bytes per walked PFN plus record headers, ~8 TiB.
    assert res.save.totals.bytes > 8 * (1 << 40)
    # The log-dirty tree: one L4 (top) node, and the paths to the low RAM and to each
    # high page: a handful of nodes, not a dense bitmap of 2^40 bits.
    assert res.hypervisor["logdirty_nodes_peak"] <= 12


def test_the_stream_of_a_sparse_guest_carries_the_high_pfns(tmp_path):
    # A real file holds 8 bytes per walked PFN (Xen writes an XTAB entry for each), so
    # keep this one at 2^22 PFNs: 32 MiB. The 2^33 and 2^40 cases count their bytes.
    high = [(1 << 22) + 5]
    path = tmp_path / "s.xmig"
    res = run(sparse(high, memory="1MiB"), stream=str(path))
    assert res.verify.ok
    data_pfns = []
    xtab = 0
    for rec in read_stream(path):
        if rec.type == RecType.PAGE_DATA:
            data_pfns.extend(rec.pfns[rec.nibbles == 0].tolist())
            xtab += int((rec.nibbles == 0xF).sum())
    assert (1 << 22) + 5 in data_pfns
    assert max(data_pfns) == (1 << 22) + 5
    assert xtab == (1 << 22) + 6 - 256
    assert path.stat().st_size == res.save.totals.bytes


def test_sparse_report_shows_walked_against_populated():
    res = run(sparse([(1 << 32) - 1], memory="16MiB"))
    assert res.save.p2m_size == 1 << 32
    assert res.save.rounds[0].pfns_walked == 1 << 32
    assert res.save.rounds[0].pages_sent == 16 * 256
    assert res.save.rounds[0].xtab_sent == (1 << 32) - 16 * 256
    assert res.guest["ram_pages_at_start"] == 16 * 256
