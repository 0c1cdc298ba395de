"""Mappings over the guest's GFNs (guest.mappings): when the ops come, and the RAM they take."""

import numpy as np

from guest import Guest, GuestConfig
from hypervisor.abi import ForeignMapping, HypercallResult, MemoryMapping, MemoryWrites, all_done


def run_all(g, t0, t1):
    """Drive ``g.run`` answering every hypercall as fully done; the ops in order."""
    ops, gen = [], g.run(t0, t1)
    try:
        op = next(gen)
        while True:
            ops.append(op)
            op = gen.send(None if isinstance(op, MemoryWrites) else all_done(op))
    except StopIteration:
        return ops


def cfg(**mapping):
    m = {"at": 0.05, "kind": "mmio", "gfns": {"start": 0x200, "size": 16}} | mapping
    return GuestConfig.model_validate({"memory": "4MiB", "tick": 0.01,
                                       "workloads": [{"kind": "uniform", "rate": "400pages/s"}],
                                       "mappings": [m]})


def test_a_mapping_is_made_at_its_tick_and_removed_at_until():
    g = Guest(cfg(until=0.2), seed=3)
    ops = [op for op in run_all(g, 0.0, 0.5) if not isinstance(op, MemoryWrites)]
    assert ops == [MemoryMapping(0.05, 0x200, 16, True), MemoryMapping(0.2, 0x200, 16, False)]


def test_the_guest_never_writes_the_ram_a_mapping_took():
    g = Guest(cfg(kind="foreign", gfns={"start": 0x100, "size": 512}), seed=3)
    ops = run_all(g, 0.0, 2.0)
    assert isinstance(ops[0], MemoryWrites) and any(isinstance(o, ForeignMapping) for o in ops)
    i = next(i for i, o in enumerate(ops) if isinstance(o, ForeignMapping))
    later = np.concatenate([o.gfns for o in ops[i + 1:] if isinstance(o, MemoryWrites)])
    assert later.size and not ((later >= 0x100) & (later < 0x300)).any()
    assert g.mappings.lost == 512


def test_a_mapping_due_in_skipped_time_is_made_at_the_next_tick_that_runs():
    g = Guest(cfg(at=0.05), seed=3)
    run_all(g, 0.0, 0.03)
    ops = [op for op in run_all(g, 0.1, 0.2) if not isinstance(op, MemoryWrites)]
    assert ops == [MemoryMapping(0.1, 0x200, 16, True)]


def test_a_refused_mapping_takes_only_what_xen_did():
    g = Guest(cfg(gfns={"start": 0x100, "size": 8}), seed=3)
    gen = g.run(0.0, 0.1)
    op = next(gen)
    while not isinstance(op, MemoryMapping):
        op = gen.send(None)
    try:
        gen.send(HypercallResult(rc=-1, done=np.arange(0x100, 0x103), errno=1))
    except StopIteration:
        pass
    assert g.mappings.lost == 3 and g.owned.size - g.owned.sum() == 3


def test_checkpoint_and_restore_cover_the_mappings():
    g = Guest(cfg(), seed=3)
    cp = g.checkpoint()
    run_all(g, 0.0, 0.1)
    assert g.mappings.lost == 16
    g.restore(cp)
    assert g.mappings.lost == 0 and g.next_call_tick() == 5
