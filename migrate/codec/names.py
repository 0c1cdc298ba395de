"""The stable wire names of every type the codec and the event log carry.

A frame names a dataclass or an enum by a string (``$c`` / ``$e``, see ``wire``), and an
event log written to disk keeps those strings. They were first spelt as the class's
module path when xmig had a flat layout; they are kept here as data, so a class can move
to another module without changing the MQTT protocol or the ``--record`` format: moving
a class changes the right-hand side of one line below, never the left.

Each value is ``"module:QualName"``, imported only when the codec first needs the table
(never because a peer named it: a frame naming a type not listed here is refused).
A test pins the left-hand sides (``tests/codec/test_names.py``).
"""

from __future__ import annotations

import importlib

#: wire name -> where the class lives now ("module:QualName").
WIRE_NAMES: dict[str, str] = {
    "guest.guest.GuestEvent": "guest.events:GuestEvent",
    "guest.events.BalloonDirection": "guest.events:BalloonDirection",
    "guest.events.BalloonPagesMoved": "guest.events:BalloonPagesMoved",
    "guest.events.BalloonStall": "guest.events:BalloonStall",
    "guest.events.BalloonTargetReached": "guest.events:BalloonTargetReached",
    "guest.events.BalloonTargetSet": "guest.events:BalloonTargetSet",
    "guest.events.GuestEventKind": "guest.events:GuestEventKind",
    "guest.guest.GuestStats": "guest.guest:GuestStats",
    "guest.workloads.BootTokens": "guest.workloads:BootTokens",
    "hypervisor.abi.AddToPhysmap": "hypervisor.abi.ops:AddToPhysmap",
    "hypervisor.abi.FixSite": "hypervisor.abi.xen:FixSite",
    "hypervisor.abi.MemoryOpKind": "hypervisor.abi.xen:MemoryOpKind",
    "hypervisor.abi.DecreaseReservation": "hypervisor.abi.ops:DecreaseReservation",
    "hypervisor.abi.DecreaseReservationRun": "hypervisor.abi.ops:DecreaseReservationRun",
    "hypervisor.abi.DomainLayout": "hypervisor.abi.ops:DomainLayout",
    "hypervisor.abi.GfnRuns": "hypervisor.abi.ops:GfnRuns",
    "hypervisor.abi.HypercallResult": "hypervisor.abi.ops:HypercallResult",
    "hypervisor.abi.LogDirtyEffect": "hypervisor.abi.results:LogDirtyEffect",
    "hypervisor.abi.MemoryWrites": "hypervisor.abi.ops:MemoryWrites",
    "hypervisor.abi.P2MType": "hypervisor.abi.xen:P2MType",
    "hypervisor.abi.PFInfo": "hypervisor.abi.xen:PFInfo",
    "hypervisor.abi.PopulatePhysmap": "hypervisor.abi.ops:PopulatePhysmap",
    "hypervisor.abi.PopulatePhysmapRun": "hypervisor.abi.ops:PopulatePhysmapRun",
    "hypervisor.abi.RemoveFromPhysmap": "hypervisor.abi.ops:RemoveFromPhysmap",
    "hypervisor.abi.SetTypedEntry": "hypervisor.abi.ops:SetTypedEntry",
    "hypervisor.abi.MemoryMapping": "hypervisor.abi.ops:MemoryMapping",
    "hypervisor.abi.ForeignMapping": "hypervisor.abi.ops:ForeignMapping",
    "hypervisor.abi.ShadowOp": "hypervisor.abi.xen:ShadowOp",
    "hypervisor.abi.ShadowStats": "hypervisor.abi.results:ShadowStats",
    "hypervisor.abi.XenBehaviour": "hypervisor.abi.xen:XenBehaviour",
    "hypervisor.domain.HypervisorEvent": "hypervisor.abi.results:HypervisorEvent",
    "hypervisor.domain.HypervisorStats": "hypervisor.abi.results:HypervisorStats",
    "hypervisor.domain.ShadowOpResult": "hypervisor.abi.results:ShadowOpResult",
    "hypervisor.span.SpanServed": "hypervisor.abi.results:SpanServed",
    "hypervisor.abi.DomainStateChanged": "hypervisor.abi.results:DomainStateChanged",
    "hypervisor.abi.LogDirtyOp": "hypervisor.abi.results:LogDirtyOp",
    "hypervisor.abi.LogDirtyOpServed": "hypervisor.abi.results:LogDirtyOpServed",
    "hypervisor.abi.MemoryOpServed": "hypervisor.abi.results:MemoryOpServed",
    "hypervisor.abi.SchedOp": "hypervisor.abi.results:SchedOp",
    "hypervisor.abi.TrackedWritesSeen": "hypervisor.abi.results:TrackedWritesSeen",
    "migrate.actors.messages.BootElided": "migrate.actors.messages:BootElided",
    "migrate.actors.messages.Bye": "migrate.actors.messages:Bye",
    "migrate.actors.messages.GuestLayout": "migrate.actors.messages:GuestLayout",
    "migrate.actors.messages.GuestOpened": "migrate.actors.messages:GuestOpened",
    "migrate.actors.messages.GuestStep": "migrate.actors.messages:GuestStep",
    "migrate.actors.messages.Released": "migrate.actors.messages:Released",
    "migrate.actors.messages.Served": "migrate.actors.messages:Served",
    "migrate.actors.messages.Speculated": "migrate.actors.messages:Speculated",
    "migrate.actors.messages.WriteWindow": "migrate.actors.messages:WriteWindow",
    "migrate.control.SourceInfo": "migrate.toolstack.control:SourceInfo",
    "migrate.control.Stretch": "migrate.toolstack.control:Stretch",
    "migrate.events.BalloonDirection": "migrate.events.types:BalloonDirection",
    "migrate.events.CleanOp": "migrate.events.types:CleanOp",
    "migrate.events.PageFate": "migrate.events.types:PageFate",
    "migrate.events.Switchover": "migrate.events.types:Switchover",
    "migrate.events.BalloonMoved": "migrate.events.types:BalloonMoved",
    "migrate.events.BalloonNote": "migrate.events.types:BalloonNote",
    "migrate.events.BalloonReached": "migrate.events.types:BalloonReached",
    "migrate.events.BalloonStalled": "migrate.events.types:BalloonStalled",
    "migrate.events.BalloonTarget": "migrate.events.types:BalloonTarget",
    "migrate.events.BatchSent": "migrate.events.types:BatchSent",
    "migrate.events.CleanDone": "migrate.events.types:CleanDone",
    "migrate.events.CountersSampled": "migrate.events.types:CountersSampled",
    "migrate.events.Event": "migrate.events.types:Event",
    "migrate.events.MemoryOp": "migrate.events.types:MemoryOp",
    "migrate.events.MigrationFinished": "migrate.events.types:MigrationFinished",
    "migrate.events.Outcome": "migrate.events.types:Outcome",
    "migrate.events.PassEnded": "migrate.events.types:PassEnded",
    "migrate.events.PassPhase": "migrate.events.types:PassPhase",
    "migrate.events.PassStarted": "migrate.events.types:PassStarted",
    "migrate.events.Phase": "migrate.events.types:Phase",
    "migrate.events.PhaseChanged": "migrate.events.types:PhaseChanged",
    "migrate.events.RoundStats": "migrate.events.types:RoundStats",
    "migrate.events.RunStarted": "migrate.events.types:RunStarted",
    "migrate.events.RunSummary": "migrate.events.types:RunSummary",
    "migrate.events.SaveSetup": "migrate.events.types:SaveSetup",
    "migrate.events.Totals": "migrate.events.types:Totals",
    "migrate.events.TrackedFinal": "migrate.events.types:TrackedFinal",
    "migrate.events.TrackedWrites": "migrate.events.types:TrackedWrites",
    "migrate.events.VerifyDone": "migrate.events.types:VerifyDone",
    "migrate.events.VerifySets": "migrate.events.types:VerifySets",
    "migrate.events.VerifyStats": "migrate.events.types:VerifyStats",
    "migrate.link.LinkModel": "migrate.toolstack.link:LinkModel",
}

#: The dataclasses an event log's frames may hold: the events and the values they carry.
EVENT_LOG_NAMES: frozenset[str] = frozenset({
    "hypervisor.abi.LogDirtyEffect",
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
    "migrate.events.PassEnded",
    "migrate.events.PassStarted",
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
})


def resolve(where: str) -> type:
    """The class at ``"module:QualName"``."""
    module, _, qualname = where.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def load_table() -> dict[str, type]:
    """Every wire name with its class (imports the modules that define them)."""
    return {name: resolve(where) for name, where in WIRE_NAMES.items()}
