"""What the guest notes about itself: its balloon driver's decisions and setbacks.

Linux's xen-balloon driver (``drivers/xen/balloon.c``) follows ``memory/target`` in
xenstore, moves pages with XENMEM_decrease_reservation / populate_physmap, and stops
short when Xen does fewer extents than asked. The guest records each such moment as a
frozen value with an enum kind; the toolstack turns each into its own typed event
(``migrate.toolstack.control.forward_events``). Every note carries where the driver
stands after it (``current_pages``, ``target_pages``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from hypervisor.abi import MemoryOpKind


class GuestEventKind(StrEnum):
    """The guest's notes (a member is its string)."""

    BALLOON_TARGET = "balloon_target"
    BALLOON_INFLATE = "balloon_inflate"
    BALLOON_DEFLATE = "balloon_deflate"
    BALLOON_REACHED = "balloon_reached"
    BALLOON_STALLED = "balloon_stalled"


class BalloonDirection(StrEnum):
    """``inflate`` (decrease_reservation: pages go back to Xen) or ``deflate``
    (populate_physmap: the guest gets them back)."""

    INFLATE = "inflate"
    DEFLATE = "deflate"


@dataclass(frozen=True, slots=True)
class GuestEvent:
    """Something the guest decided or noticed, at virtual time ``t``."""

    t: float
    current_pages: int        # pages the guest owns after it
    target_pages: int


@dataclass(frozen=True, slots=True)
class BalloonTargetSet(GuestEvent):
    """The driver got a new target (from the schedule, or the PoD boot target)."""

    previous_pages: int
    scheduled_at: float       # the scenario's time for it (the driver acts on the next tick)
    reason: str
    kind: ClassVar[GuestEventKind] = GuestEventKind.BALLOON_TARGET


@dataclass(frozen=True, slots=True)
class BalloonPagesMoved(GuestEvent):
    """One tick in which the driver moved ``pages`` pages in ``batches`` hypercalls."""

    direction: BalloonDirection
    pages: int
    batches: int

    def __post_init__(self) -> None:
        # (a StrEnum travels as its string: it comes back as the member)
        object.__setattr__(self, "direction", BalloonDirection(self.direction))

    @property
    def kind(self) -> GuestEventKind:
        return (GuestEventKind.BALLOON_INFLATE if self.direction == BalloonDirection.INFLATE
                else GuestEventKind.BALLOON_DEFLATE)


@dataclass(frozen=True, slots=True)
class BalloonTargetReached(GuestEvent):
    """The driver reached its target."""

    kind: ClassVar[GuestEventKind] = GuestEventKind.BALLOON_REACHED


@dataclass(frozen=True, slots=True)
class BalloonStall(GuestEvent):
    """The driver stopped short of its target until the next one: Xen did ``done`` of
    the ``requested`` extents of ``op`` (returning ``rc``; None when no call was made,
    the driver having no page left to move)."""

    op: MemoryOpKind
    requested: int
    done: int
    rc: int | None
    reason: str
    kind: ClassVar[GuestEventKind] = GuestEventKind.BALLOON_STALLED

    def __post_init__(self) -> None:
        object.__setattr__(self, "op", MemoryOpKind(self.op))
