"""The checks a recorded event must pass before anything consumes it.

An event log (``migrate.events.log``) is a file people share, so each decoded event is
checked against the types its dataclass declares and against the other events of the
run (one RunStarted, a verdict that agrees with the tracked GFNs' final states, ...),
the way Xen's restore side checks each stream record (``xg_sr_restore.c``) before acting
on it. Both checks raise ValueError with the event and field named.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any

import numpy as np

from hypervisor.abi import MAX_BATCH_SIZE, MAX_GFN

from migrate import events as _events
from migrate.events.track import FINAL_STATES, MAX_TRACKED


#: Fields holding GFNs or PFNs: integer arrays of non-negative frame numbers.
_FRAME_ARRAYS = frozenset({"pfns", "gfns", "dirty", "leftover", "unmarked", "populated", "ballooned"})
_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _fits(v: Any, tp: Any) -> bool:
    """Whether a decoded value has the type a field of the events declares."""
    if tp is Any:
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(v, a) for a in args)
    if tp is type(None):
        return v is None
    if tp is bool:
        return isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if tp is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if tp is str:
        return isinstance(v, str)
    if tp is np.ndarray:
        return isinstance(v, np.ndarray) and v.dtype.kind in "biuf"
    if origin is dict:
        return isinstance(v, dict)
    if origin is list:
        return isinstance(v, list) and all(_fits(x, args[0]) for x in v)
    if origin is tuple:
        if not isinstance(v, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(x, args[0]) for x in v)
        return len(v) == len(args) and all(_fits(x, a) for x, a in zip(v, args))
    if dataclasses.is_dataclass(tp):
        return isinstance(v, tp)
    return isinstance(v, tp)


def _check_fields(obj: Any, where: str) -> None:
    for name, tp in _hints(type(obj)).items():
        v = getattr(obj, name)
        if not _fits(v, tp):
            want = tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")
            raise ValueError(f"{where}.{name}: expected {want.replace('hypervisor.abi.', '')[:60]}, "
                             f"found {type(v).__name__}")
        if name in _FRAME_ARRAYS and isinstance(v, np.ndarray) and v.size:
            if v.dtype.kind not in "iu" or int(v.min()) < 0 or int(v.max()) > MAX_GFN:
                raise ValueError(f"{where}.{name}: expected frame numbers from 0 to {MAX_GFN:#x}")
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            _check_fields(v, f"{where}.{name}")
        elif isinstance(v, tuple):
            for i, x in enumerate(v):
                if dataclasses.is_dataclass(x):
                    _check_fields(x, f"{where}.{name}[{i}]")


def _same_length(where: str, **arrays) -> None:
    sizes = {k: len(a) for k, a in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"{where}: expected " + ", ".join(sizes) + " of one length, found "
                         + ", ".join(map(str, sizes.values())))


def check_event(ev: _events.Event) -> None:
    """Refuse an event whose fields do not have the types its dataclass declares, or
    whose arrays disagree with each other: consumers (progress, report, page story)
    may then index and compute on it without further checks. Raises ValueError."""
    name = type(ev).__name__
    _check_fields(ev, name)
    if not math.isfinite(ev.t):
        raise ValueError(f"{name}.t: expected a finite time, found {ev.t}")
    if isinstance(ev, _events.BatchSent):
        _same_length(name, pfns=ev.pfns, nibbles=ev.nibbles)
        if ev.nibbles.size and (ev.nibbles.dtype.kind not in "iu" or int(ev.nibbles.min()) < 0
                                or int(ev.nibbles.max()) > 15):
            raise ValueError(f"{name}.nibbles: expected PFINFO type nibbles 0..15")
        if ev.ends is not None:
            ends = np.asarray(ev.ends)
            n = -(-ev.pfns.size // MAX_BATCH_SIZE)
            if ends.ndim != 1 or ends.size != n or ends.dtype.kind != "f" or not np.isfinite(ends).all() \
                    or (ends.size and (np.diff(ends) < 0).any()) or (ends.size and float(ends[-1]) != ev.t):
                raise ValueError(f"{name}.ends: expected the end time of each of its {n} batches, in order, "
                                 "the last at t")
    elif isinstance(ev, _events.RunStarted):
        for k in ("populated", "ballooned"):
            a = getattr(ev, k)
            if a.size and (a.ndim != 2 or a.shape[1] != 2):
                raise ValueError(f"{name}.{k}: expected [start, end) GFN runs (k x 2), found shape {a.shape}")
        if len(ev.tracked) > MAX_TRACKED or any(not 0 <= g <= MAX_GFN for g in ev.tracked):
            raise ValueError(f"{name}.tracked: expected at most {MAX_TRACKED} GFNs from 0 to {MAX_GFN:#x}")
    elif isinstance(ev, _events.TrackedWrites):
        _same_length(name, gfns=ev.gfns, writes=ev.writes, first_s=ev.first_s, last_s=ev.last_s,
                     logged_s=ev.logged_s)
    elif isinstance(ev, _events.TrackedFinal):
        _same_length(name, gfns=ev.gfns, states=ev.states)
        bad = set(ev.states) - FINAL_STATES
        if bad:
            raise ValueError(f"{name}.states: expected one of {', '.join(sorted(FINAL_STATES))}, "
                             f"found {sorted(bad)[0][:40]!r}")
    elif isinstance(ev, _events.VerifySets):
        for k in ("missing", "stale"):
            r = getattr(ev, k)
            if r.size and (r.ndim != 2 or r.shape[1] != 2 or r.dtype.kind not in "iu"):
                raise ValueError(f"{name}.{k}: expected [start, end) GFN runs (k x 2), found shape {r.shape}")
            r = r.reshape(-1, 2).astype(np.int64)
            if r.shape[0] > _events.MAX_VERIFY_RUNS:
                raise ValueError(f"{name}.{k}: expected at most {_events.MAX_VERIFY_RUNS} runs, found {r.shape[0]}")
            if r.size and ((r[:, 0] < 0).any() or (r[:, 1] <= r[:, 0]).any() or int(r[-1, 1]) > MAX_GFN + 1
                           or (r[1:, 0] <= r[:-1, 1]).any()):
                raise ValueError(f"{name}.{k}: expected sorted, disjoint, non-empty GFN runs below {MAX_GFN + 1:#x}")
    elif isinstance(ev, _events.VerifyDone):
        st = ev.stats
        if min(st.missing_pages, st.stale_pages, st.extra_pages) < 0:
            raise ValueError(f"{name}.stats: expected page counts of 0 or more")
        if st.ok != (st.missing_pages == 0 and st.stale_pages == 0):
            raise ValueError(f"{name}.stats.ok: says {st.ok} with {st.missing_pages} missing and "
                             f"{st.stale_pages} stale pages")


#: The facts the recorder copies from RunStarted into the header (EventRecorder.__call__).
_HEADER_FACTS = ("scenario", "seed", "behaviour", "sites", "policy", "policy_params", "tracked")
_ONCE = (_events.RunStarted, _events.VerifyDone, _events.VerifySets, _events.TrackedFinal, _events.RunSummary,
         _events.MigrationFinished)


def _plain(v: Any) -> Any:
    from migrate.codec.jsonable import jsonable

    return json.loads(json.dumps(v, default=jsonable, sort_keys=True))


def check_run(header: dict[str, Any], events: list[_events.Event]) -> None:
    """Refuse a log whose events contradict each other or its header: one run (each of
    RunStarted, VerifyDone, VerifySets, TrackedFinal, RunSummary, MigrationFinished at
    most once, RunStarted before the rest, nothing after MigrationFinished), the header's
    run facts equal to RunStarted's, RunSummary and MigrationFinished agreeing with them,
    and each tracked GFN's final state and the verify's sets agreeing with the VERIFY
    verdict. A recording is
    a claim, not a proof: this catches an edited log, not one forged consistently
    (re-run the header's scenario_text to check that). Raises ValueError."""
    seen: dict[type, int] = {}
    for i, ev in enumerate(events):
        kind = type(ev)
        if kind in _ONCE:
            if kind in seen:
                raise ValueError(f"event {i}: a second {kind.__name__} (event {seen[kind]} was the "
                                 "first); an event log holds one run")
            seen[kind] = i
        if _events.MigrationFinished in seen and i > seen[_events.MigrationFinished]:
            raise ValueError(f"event {i}: {kind.__name__} after MigrationFinished")
    first = {k: events[i] for k, i in seen.items()}
    start = first.get(_events.RunStarted)
    if start is None:
        if len(seen):
            raise ValueError(f"a {next(iter(seen)).__name__} without the run's RunStarted")
        return
    late = [k.__name__ for k, i in seen.items() if i < seen[_events.RunStarted]]
    if late:
        raise ValueError(f"{late[0]} before RunStarted")
    facts = {"scenario": start.scenario, "seed": start.seed, "behaviour": start.behaviour,
             "sites": dict(start.sites), "policy": start.policy, "policy_params": start.policy_params,
             "tracked": [int(g) for g in start.tracked]}
    for k in _HEADER_FACTS:
        if k in header and _plain(header[k]) != _plain(facts[k]):
            raise ValueError(f"header: {k} is {json.dumps(header[k])[:60]} but the run's RunStarted "
                             f"event says {json.dumps(_plain(facts[k]))[:60]}")
    summary = first.get(_events.RunSummary)
    if summary is not None:
        for k in ("scenario", "seed", "behaviour", "policy"):
            if getattr(summary, k) != facts[k]:
                raise ValueError(f"RunSummary.{k} is {getattr(summary, k)!r} but RunStarted says {facts[k]!r}")
        done = first.get(_events.MigrationFinished)
        if done is not None and done.outcome != summary.outcome:
            raise ValueError(f"MigrationFinished.outcome is {done.outcome!r} but RunSummary says "
                             f"{summary.outcome!r}")
    final = first.get(_events.TrackedFinal)
    if final is not None:
        if sorted(int(g) for g in final.gfns) != sorted(facts["tracked"]):
            raise ValueError("TrackedFinal names other GFNs than RunStarted tracked")
        verify = first.get(_events.VerifyDone)
        if verify is not None:
            st = verify.stats
            for state, count in (("missing", st.missing_pages), ("stale", st.stale_pages)):
                n = sum(1 for x in final.states if x == state)
                if n > count:
                    raise ValueError(f"TrackedFinal says {n} tracked GFN(s) {state} but VerifyDone "
                                     f"counts {count} {state} pages")
    _check_verify_sets(first.get(_events.VerifyDone), first.get(_events.VerifySets))


def _check_verify_sets(verify, sets) -> None:
    """VerifySets holds as many pages as VerifyDone counts (no more, when cut short)."""
    if sets is None:
        return
    if verify is None:
        raise ValueError("a VerifySets without the run's VerifyDone")
    st = verify.stats
    for k, count, complete in (("missing", st.missing_pages, sets.missing_complete),
                               ("stale", st.stale_pages, sets.stale_complete)):
        r = np.asarray(getattr(sets, k), dtype=np.int64).reshape(-1, 2)
        n = int((r[:, 1] - r[:, 0]).sum())
        if n > count or (complete and n != count):
            raise ValueError(f"VerifySets.{k} holds {n} GFNs but VerifyDone counts {count} {k} pages")


__all__ = ["check_event", "check_run"]
