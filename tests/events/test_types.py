"""Events are frozen values with enum kinds, and the wire still carries plain strings."""

from __future__ import annotations

import dataclasses
import inspect
import json
import struct

import numpy as np
import pytest

from hypervisor.abi import FixSite, MemoryOpKind, XenBehaviour
from migrate import events as ev
from migrate.codec import wire
from migrate.events.log import same_value

G = np.arange(4, dtype=np.int64)


def _event_types() -> list[type]:
    return [cls for _, cls in inspect.getmembers(ev, inspect.isclass)
            if issubclass(cls, ev.Event) or cls in (ev.RoundStats, ev.Totals, ev.VerifyStats)]


@pytest.mark.parametrize("cls", _event_types(), ids=lambda c: c.__name__)
def test_every_event_and_every_value_one_carries_is_frozen(cls):
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen


def test_an_event_cannot_be_changed_by_a_listener():
    op = ev.MemoryOp(t=1.0, op="decrease_reservation", nr=4, rc=4, gfns=G)
    with pytest.raises(dataclasses.FrozenInstanceError):
        op.rc = 0
    stats = ev.RoundStats(iteration=1, phase="live", start_s=0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.pages_sent += 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.PassEnded(t=1.0, stats=stats).stats = stats


def test_a_pass_is_counted_by_new_values():
    one = ev.RoundStats(iteration=2, phase=ev.PassPhase.LIVE, start_s=1.0, pages_sent=10, batches=1)
    two = one.added(pages_sent=1024, batches=1, bytes=4096)
    assert (one.pages_sent, one.batches, one.bytes) == (10, 1, 0)
    assert (two.pages_sent, two.batches, two.bytes) == (1034, 2, 4096)
    out = one.with_balloon(ev.MemoryOp(t=1.5, op="decrease_reservation", nr=8, rc=6, gfns=G))
    back = out.with_balloon(ev.MemoryOp(t=1.6, op=MemoryOpKind.POPULATE_PHYSMAP, nr=8, rc=5, gfns=G))
    assert (out.balloon_out, out.balloon_in, back.balloon_out, back.balloon_in) == (6, 0, 6, 5)
    # Failed calls and other ops move no balloon pages: the same value comes back.
    assert one.with_balloon(ev.MemoryOp(t=2.0, op="decrease_reservation", nr=8, rc=-12, gfns=G)) is one
    assert one.with_balloon(ev.MemoryOp(t=2.0, op="add_to_physmap", nr=1, rc=0, gfns=G)) is one


#: An event per field that became an enum, built from the plain strings an older
#: xmig wrote, with the member each must decode to.
TYPED = [
    (ev.MemoryOp(t=3.0, op="decrease_reservation", nr=4, rc=4, gfns=G), "op", MemoryOpKind.DECREASE_RESERVATION),
    (ev.CleanDone(t=3.5, iteration=1, op="PEEK", final=False, dirty_count=0, fault_count=0, pages=4),
     "op", ev.CleanOp.PEEK),
    (ev.BalloonStalled(t=1.0, current_pages=1, target_pages=2, op="populate_physmap", requested=4, done=0,
                       rc=0, reason="no memory"), "op", MemoryOpKind.POPULATE_PHYSMAP),
    (ev.BalloonMoved(t=1.0, current_pages=1, target_pages=2, direction="deflate", pages=1, batches=1),
     "direction", ev.BalloonDirection.DEFLATE),
    (ev.PhaseChanged(t=0.0, phase="suspended"), "phase", ev.Phase.SUSPENDED),
    (ev.PassStarted(t=0.0, iteration=2, phase="final", entries=0, dirty_count=0, pfns=G), "phase",
     ev.PassPhase.FINAL),
    (ev.MigrationFinished(t=9.0, outcome="aborted"), "outcome", ev.Outcome.ABORTED),
]


@pytest.mark.parametrize("event,name,member", TYPED, ids=lambda x: type(x).__name__ if isinstance(x, ev.Event) else "")
def test_an_old_style_string_kind_decodes_to_its_enum_and_is_written_as_the_string(event, name, member):
    assert getattr(event, name) is member           # coerced when built from the string
    frame = wire.encode(event)
    (hlen,) = struct.unpack_from("<I", frame, 8)
    tree = json.loads(frame[12:12 + hlen])["v"]
    assert tree["f"][name] == member.value          # the plain string, no enum tag
    back = wire.decode(frame)
    assert getattr(back, name) is member and same_value(back, event)


def test_tracked_fates_sites_and_switchover_decode_to_enums():
    final = wire.roundtrip(ev.TrackedFinal(t=1.0, gfns=G[:2], states=("stale", "ok")))
    assert final.states == (ev.PageFate.STALE, ev.PageFate.OK)
    assert all(isinstance(s, ev.PageFate) for s in final.states)
    started = wire.roundtrip(ev.RunStarted(t=0.0, scenario="s", seed=1, behaviour="mixed", policy="xen",
                                           policy_params={}, guest_pages=1, populated=np.zeros((0, 2), np.int64),
                                           ballooned=np.zeros((0, 2), np.int64),
                                           sites={"p2m_remove_page": "pre-fix"}))
    (site, behaviour), = started.sites.items()
    assert site is FixSite.P2M_REMOVE_PAGE and behaviour is XenBehaviour.PRE_FIX


def test_a_kind_no_enum_knows_is_refused_when_decoded():
    frame = wire.encode(ev.MemoryOp(t=3.0, op="decrease_reservation", nr=4, rc=4, gfns=G))
    bad = frame.replace(b'"decrease_reservation"', b'"increase_reservation"')   # same length
    with pytest.raises(wire.WireError, match="increase_reservation"):
        wire.decode(bad)
