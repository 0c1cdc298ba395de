"""The actors' RPC replies, one dataclass each (registered with the wire codec, so
they cross a broker as they are and nothing else of this kind decodes).

The guest actor answers the hypervisor actor's ``run``/``go``/``resume``... with a
``GuestStep`` (ops of ``Guest.run`` up to its next hypercall), a ``Speculated`` run or
a ``WriteWindow``; the hypervisor actor answers each ``DomainControl`` call with a
``Served``. Every reply carries the events its call made, in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hypervisor.abi import XenError

from ..transport import wire


@dataclass(slots=True)
class GuestStep:
    """``Guest.run``'s ops up to and including its next hypercall (``more``: it waits
    for that hypercall's result), or to its end; ``next_tick`` once the run ended."""

    ops: list = field(default_factory=list)
    more: bool = False
    events: list = field(default_factory=list)
    next_tick: int | None = None


@dataclass(slots=True)
class Speculated:
    """All of ``Guest.run(t0, t1)``, each hypercall answered as the guest expected;
    ``spec_events`` are the run's own events (``events`` those from before it)."""

    ops: list
    events: list
    spec_events: list
    next_tick: int


@dataclass(slots=True)
class WriteWindow:
    """The guest's writes of ticks ``[first, end)``, where its balloon does nothing
    (``Guest.write_window``: per-write virtual time, GFN and token, in time order),
    and the first tick at which its balloon acts next (``next_call``, None: nothing
    scheduled)."""

    first: int
    end: int
    times: np.ndarray
    gfns: np.ndarray
    tokens: np.ndarray
    events: list = field(default_factory=list)
    next_call: int | None = None


@dataclass(slots=True)
class GuestLayout:
    """The guest's boot layout, its tick length and its next tick."""

    layout: Any
    tick: float
    next_tick: int
    events: list = field(default_factory=list)


@dataclass(slots=True)
class GuestOpened:
    name: str


@dataclass(slots=True)
class Bye:
    """An actor released: how long it was busy serving (wall seconds)."""

    busy_s: float = 0.0


@dataclass(slots=True)
class Served:
    """One ``DomainControl`` call as the hypervisor actor served it at ``t``: its result,
    or the ``error`` Xen returned, or ``lost`` (the guest went away: its vCPUs stop);
    the events it made and the hypervisor's counters after it (a span of batches is
    one call: its result is a ``hypervisor.span.SpanServed``)."""

    t: float = 0.0
    result: Any = None
    error: XenError | None = None
    lost: str | None = None
    peer: str = ""
    events: list = field(default_factory=list)
    counters: dict | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.lost is None


@dataclass(slots=True)
class Released:
    """The toolstack released the domain, left in ``state``."""

    state: str | None = None


wire.register(GuestStep, Speculated, WriteWindow, GuestLayout, GuestOpened, Bye, Served, Released)
