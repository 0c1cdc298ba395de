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
    """The guest's writes of ticks ``[first, end)`` (per-write virtual time, GFN and
    token, in time order) and the first tick at which its balloon acts after them
    (``next_call``, None: nothing scheduled).

    Where its balloon does nothing, they are ``Guest.write_window``'s. A speculated
    window also holds the ticks where the balloon acts: ``steps`` is ``(tick, ops)``
    for each, the hypercalls its driver makes there, each answered as the guest
    expects (``abi.all_done``), and the writes are those the guest makes given those
    answers; ``spec_events`` are the window's own events (``events`` those from before
    it)."""

    first: int
    end: int
    times: np.ndarray
    gfns: np.ndarray
    tokens: np.ndarray
    events: list = field(default_factory=list)
    next_call: int | None = None
    steps: list = field(default_factory=list)
    spec_events: list = field(default_factory=list)


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
    one call: its result is a ``hypervisor.span.SpanServed``).

    A span asked with ``ahead`` may carry the spans the hypervisor served after it in
    ``ahead``: each a ``Served`` of its own, whose ``at`` is ``(first batch, batches
    asked)`` within the stretch the request sent."""

    t: float = 0.0
    result: Any = None
    error: XenError | None = None
    lost: str | None = None
    peer: str = ""
    events: list = field(default_factory=list)
    counters: dict | None = None
    ahead: list = field(default_factory=list)
    at: tuple | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.lost is None


@dataclass(slots=True)
class BootElided:
    """A span's page contents as they cross the broker (``SpanServed.tokens``): a page
    that still holds its boot contents (``guest.workloads.initial_tokens(seed, gfn)``,
    which both ends compute) goes as one bit of ``boot`` (LSB first, one per data PFN of
    the span, in order), and only the other pages' tokens go, in ``rest``. A guest's
    first pass is mostly pages it never wrote: their 8 bytes each need not cross."""

    seed: int
    count: int
    boot: np.ndarray
    rest: np.ndarray

    #: Spans with fewer data pages than this, or where fewer than 1 in ELIDE_SHARE still
    #: hold their boot contents, send their tokens as they are.
    MIN_PAGES = 4096
    ELIDE_SHARE = 8

    @classmethod
    def elide(cls, seed: int, gfns: np.ndarray, tokens: np.ndarray):
        """``tokens`` of the pages ``gfns``, elided where they hold their boot contents
        (or ``tokens`` itself when that would not save much)."""
        from guest.workloads import initial_tokens

        if tokens.size < cls.MIN_PAGES:
            return tokens
        boot = initial_tokens(seed, gfns) == tokens
        n = int(np.count_nonzero(boot))
        if n * cls.ELIDE_SHARE < tokens.size:
            return tokens
        return cls(int(seed), int(tokens.size), np.packbits(boot, bitorder="little"), tokens[~boot])

    def expand(self, gfns: np.ndarray) -> np.ndarray:
        """The tokens of the pages ``gfns`` (the span's data PFNs, in order)."""
        from guest.workloads import initial_tokens

        if gfns.size != self.count or self.boot.size != -(-self.count // 8):
            raise ValueError(f"elided contents of {self.count} pages for {gfns.size} data PFNs")
        boot = np.unpackbits(np.asarray(self.boot, dtype=np.uint8), count=self.count, bitorder="little").view(bool)
        if int(self.count - np.count_nonzero(boot)) != self.rest.size:
            raise ValueError("elided contents do not add up")
        out = initial_tokens(self.seed, gfns)
        out[~boot] = self.rest
        return out


@dataclass(slots=True)
class Released:
    """The toolstack released the domain, left in ``state``."""

    state: str | None = None



