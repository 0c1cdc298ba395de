"""The stable wire names (``migrate/codec/names.py``): a frame and a ``--record`` log name
each dataclass and enum by a string that peers and old recordings depend on. The names
below are pinned; the classes behind them may move, their names may not."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import importlib
import sys
import typing

import pytest

from migrate.codec import names, wire
from migrate.events import Event, Phase, PhaseChanged
from tests.events.test_old_recordings import old_frames

#: Every name a peer or a recording may send. Never edit or remove one: add new names
#: to the table (and here) instead.
PINNED = [
    "guest.guest.GuestEvent",
    "guest.guest.GuestStats",
    "guest.workloads.BootTokens",
    "hypervisor.abi.AddToPhysmap",
    "hypervisor.abi.DecreaseReservation",
    "hypervisor.abi.DecreaseReservationRun",
    "hypervisor.abi.DomainLayout",
    "hypervisor.abi.FixSite",
    "hypervisor.abi.ForeignMapping",
    "hypervisor.abi.GfnRuns",
    "hypervisor.abi.HypercallResult",
    "hypervisor.abi.LogDirtyEffect",
    "hypervisor.abi.MemoryMapping",
    "hypervisor.abi.MemoryOpKind",
    "hypervisor.abi.MemoryWrites",
    "hypervisor.abi.P2MType",
    "hypervisor.abi.PFInfo",
    "hypervisor.abi.PopulatePhysmap",
    "hypervisor.abi.PopulatePhysmapRun",
    "hypervisor.abi.RemoveFromPhysmap",
    "hypervisor.abi.SetTypedEntry",
    "hypervisor.abi.ShadowOp",
    "hypervisor.abi.ShadowStats",
    "hypervisor.abi.XenBehaviour",
    "hypervisor.domain.HypervisorEvent",
    "hypervisor.domain.HypervisorStats",
    "hypervisor.domain.ShadowOpResult",
    "hypervisor.span.SpanServed",
    "migrate.actors.messages.BootElided",
    "migrate.actors.messages.Bye",
    "migrate.actors.messages.GuestLayout",
    "migrate.actors.messages.GuestOpened",
    "migrate.actors.messages.GuestStep",
    "migrate.actors.messages.Released",
    "migrate.actors.messages.Served",
    "migrate.actors.messages.Speculated",
    "migrate.actors.messages.WriteWindow",
    "migrate.control.SourceInfo",
    "migrate.control.Stretch",
    "migrate.events.BalloonMoved",
    "migrate.events.BalloonNote",
    "migrate.events.BalloonReached",
    "migrate.events.BalloonStalled",
    "migrate.events.BalloonTarget",
    "migrate.events.BatchSent",
    "migrate.events.CleanDone",
    "migrate.events.CountersSampled",
    "migrate.events.Event",
    "migrate.events.MemoryOp",
    "migrate.events.MigrationFinished",
    "migrate.events.Outcome",
    "migrate.events.PassEnded",
    "migrate.events.PassPhase",
    "migrate.events.PassStarted",
    "migrate.events.Phase",
    "migrate.events.PhaseChanged",
    "migrate.events.RoundStats",
    "migrate.events.RunStarted",
    "migrate.events.RunSummary",
    "migrate.events.SaveSetup",
    "migrate.events.Totals",
    "migrate.events.TrackedFinal",
    "migrate.events.TrackedWrites",
    "migrate.events.VerifyDone",
    "migrate.events.VerifySets",
    "migrate.events.VerifyStats",
    "migrate.link.LinkModel",
]

#: The modules whose every dataclass and enum is a message (the hypervisor's ABI, the
#: events, the actors' messages): each must have a wire name.
MESSAGE_MODULES = ("hypervisor.abi.xen", "hypervisor.abi.ops", "hypervisor.abi.results", "guest.events",
                   "migrate.events.types", "migrate.actors.messages")


def _is_wire_type(cls) -> bool:
    return isinstance(cls, type) and (dataclasses.is_dataclass(cls) or issubclass(cls, enum.Enum))


def _named_types(hint) -> set[type]:
    """The dataclasses and enums a field's type hint names (inside Optional, list, tuple...)."""
    found = {hint} if _is_wire_type(hint) else set()
    for arg in typing.get_args(hint):
        found |= _named_types(arg)
    return found


def _subclasses(cls: type) -> set[type]:
    """The subclasses of ``cls`` that their module defines. (``@dataclass(slots=True)``
    builds a new class; the one it replaced can linger in ``__subclasses__``.)"""
    out = set()
    for sub in cls.__subclasses__():
        if getattr(sys.modules[sub.__module__], sub.__qualname__, None) is sub:
            out |= {sub} | _subclasses(sub)
    return out


@pytest.fixture(scope="module")
def table() -> dict[str, type]:
    return names.load_table()


def test_no_pinned_wire_name_is_renamed_or_removed():
    assert PINNED == sorted(PINNED)
    missing = [n for n in PINNED if n not in names.WIRE_NAMES]
    assert not missing, f"wire names gone (peers and old recordings use them): {missing}"


def test_every_name_resolves_to_the_dataclass_or_enum_where_the_table_says(table):
    for name, where in names.WIRE_NAMES.items():
        cls = table[name]
        assert _is_wire_type(cls), name
        assert f"{cls.__module__}:{cls.__qualname__}" == where, (name, where)
    assert len(set(table.values())) == len(table), "a class under two wire names"


def test_the_event_log_names_are_wire_names_of_dataclasses(table):
    assert names.EVENT_LOG_NAMES <= set(names.WIRE_NAMES)
    assert all(dataclasses.is_dataclass(table[n]) for n in names.EVENT_LOG_NAMES)


@pytest.mark.parametrize("module", MESSAGE_MODULES)
def test_every_message_type_of_a_message_module_has_a_wire_name(table, module):
    mod = importlib.import_module(module)
    defined = {c for c in vars(mod).values() if _is_wire_type(c) and c.__module__ == mod.__name__}
    assert defined
    unnamed = sorted(c.__qualname__ for c in defined - set(table.values()))
    assert not unnamed, f"{module}: add to migrate/codec/names.py: {unnamed}"


def test_every_event_type_anywhere_has_a_wire_and_an_event_log_name(table):
    importlib.import_module("migrate.run.runner")        # every module that defines events is loaded
    by_class = {cls: name for name, cls in table.items()}
    events = {Event} | _subclasses(Event)
    assert len(events) > 15
    assert not [c.__qualname__ for c in events if c not in by_class]
    assert not [c.__qualname__ for c in events if by_class[c] not in names.EVENT_LOG_NAMES]


def test_what_a_named_dataclass_carries_is_named_too(table):
    """A field typed as a dataclass or enum puts that type on the wire with its holder."""
    named = set(table.values())
    for name, cls in table.items():
        if not dataclasses.is_dataclass(cls):
            continue
        carried = set().union(*map(_named_types, typing.get_type_hints(cls).values()))
        assert carried <= named, (name, sorted(c.__qualname__ for c in carried - named))


@contextlib.contextmanager
def moved(classes):
    """The classes as if moved to another module under another name, for the block.
    (Not monkeypatch: it would delete ``__qualname__`` on undo, which a type refuses.)"""
    where = {cls: (cls.__module__, cls.__qualname__) for cls in classes}
    try:
        for cls in classes:
            cls.__module__, cls.__qualname__ = "somewhere.else.entirely", f"Moved{cls.__name__}"
        yield
    finally:
        for cls, (module, qualname) in where.items():
            cls.__module__, cls.__qualname__ = module, qualname


def test_a_types_wire_name_does_not_depend_on_its_module(table):
    """Every class of the table moved (another ``__module__`` and ``__qualname__``): the
    frames an earlier xmig wrote (events, requests, replies) decode, and encode again to
    the same bytes, naming no module."""
    frames = [frame for _what, frame in old_frames()]
    decoded = [wire.decode(frame) for frame in frames]
    with moved(list(table.values())):
        for frame, value in zip(frames, decoded):
            again = wire.encode(value)
            assert again == frame
            assert b"somewhere.else" not in again
            assert wire.encode(wire.decode(frame)) == frame
    assert PhaseChanged.__module__ == "migrate.events.types"


def test_a_frame_names_the_wire_name_not_the_module_path():
    frame = wire.encode(PhaseChanged(t=0.0, phase=Phase.FINAL))
    assert PhaseChanged.__module__ == "migrate.events.types"      # moved since it was named
    assert b'"migrate.events.PhaseChanged"' in frame and b"migrate.events.types" not in frame
