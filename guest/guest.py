"""The simulated guest: its memory map, its vCPUs' writes and its balloon driver,
stepped on virtual time.

Mirrors how Xen runs an HVM guest between the toolstack's calls: before the hypervisor
serves a domctl stamped ``t`` it schedules the guest's vCPUs up to ``t`` (unless the
domain is paused or suspended). Here that is ``Guest.run(t0, t1)``, a generator of the
guest's operations (``hypervisor.abi`` GuestOps) in time order:

* the guest runs on ticks (``tick``, default 10 ms); tick ``k`` starts at ``k*tick``
  and runs in the span ``[t0, t1)`` that contains its start. In each tick the balloon
  driver acts first, at the tick's start (its hypercalls, one per batch, each answered
  with a ``HypercallResult`` the driver sends back), then the workloads write;
* every write carries its own virtual time inside its tick (``write_timing``:
  ``continuous`` spreads a tick's writes over it, ``tick`` puts them all at its start;
  see ``guest.workloads``). The hypervisor applies exactly the writes before each
  call's time and holds the rest (``hypervisor.sched``);
* time the hypervisor skips (the domain paused, suspended, or held for a CLEAN walk)
  has no writes: ticks that start then never run, and the balloon driver catches up on
  its schedule at the next tick that runs. A tick that started in skipped time and
  ends after ``t0`` writes only its writes from ``t0`` on (none under ``tick`` timing);
* all writes between two hypercalls come out as one ``MemoryWrites`` in time order
  (per-write ``times``, stamped ``max(last write's time, t0)``); the driver sends
  back ``None``;
* mappings (``guest.mappings``) change after the balloon driver's turn in a tick;
* writes only touch pages the guest owns at that moment (never a ballooned-out GFN,
  nor RAM a mapping took):
  the guest keeps one bool per RAM page and filters at emission time.

Randomness is keyed by (seed, workload, epoch of ticks), so the ops for ``[0, t)`` are
the same whether ``run`` is called once or many times (given the same results back).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Generator

import numpy as np

from hypervisor.abi import DomainLayout, GuestOp, HypercallResult, MemoryWrites

from .balloon import REUSE_KEY, Balloon
from .config import GuestConfig
from .events import GuestEvent
from .layout import GuestLayout
from .mappings import Mappings
from .workloads import (BootTokens, hashed_fracs, initial_tokens, make_workload, tick_starts, time_order,
                        times_in_ticks, write_tokens)

_EPS = 1e-9
_EMPTY_I64 = np.empty(0, dtype=np.int64)
_EMPTY_F64 = np.empty(0, dtype=np.float64)
_EMPTY_U64 = np.empty(0, dtype=np.uint64)


def tick_at_or_after(t: float, tick: float) -> int:
    """The first tick (index) at or after virtual time ``t``."""
    return math.ceil(t / tick - _EPS)


def ticks_at_or_after(t, tick: float) -> np.ndarray:
    """``tick_at_or_after`` of each time in ``t``, to the bit."""
    return np.ceil(np.asarray(t, dtype=np.float64) / tick - _EPS).astype(np.int64)


def write_time(last: float, t0: float) -> float:
    """The stamp of a ``MemoryWrites`` whose last write happens at ``last``, for a span
    starting at ``t0``."""
    return max(float(last), float(t0))


def straddled_tick(t0: float, tick: float, next_tick: int) -> int | None:
    """The tick that started before ``t0`` in time the guest did not run and ends after
    it (so a span from ``t0`` runs its writes from ``t0`` on), or None."""
    k = tick_at_or_after(t0, tick) - 1
    return k if k >= next_tick else None


#: See Guest.run: ticks collected at once in a long balloon-free stretch, and the
#: writes gathered before they are handed to the hypervisor.
SPAN_TICKS = 4096
SPAN_WRITES = 1 << 20


@dataclass
class GuestStats:
    ticks_run: int = 0
    ticks_skipped: int = 0
    writes: int = 0                 # page writes emitted (with repeats)
    writes_dropped: int = 0         # generated for pages the guest did not own
    write_batches: int = 0


class Guest:
    """A guest per ``config``; ``seed`` keys its initial contents and its writes."""

    def __init__(self, config: GuestConfig, seed: int = 1):
        self.config = config
        self.seed = int(seed)
        self.tick = float(config.tick)
        self.continuous = config.write_timing == "continuous"
        self.map = GuestLayout(config.layout, config.maxmem_pages)
        self.nr_pages = self.map.nr_pages
        #: one bool per RAM page: does the guest own it (not ballooned out)?
        self.owned = np.ones(self.nr_pages, dtype=bool)
        self.events: list[GuestEvent] = []
        self.stats = GuestStats()
        self.balloon = Balloon(config, self.map, self.owned, self.seed, self._emit)
        self.mappings = Mappings(config, self.map, self.owned)
        self.workloads = [make_workload(w, i, self.seed, self.nr_pages, self.tick, self.map.gfn_to_page,
                                        config.write_timing)
                          for i, w in enumerate(config.workloads)]
        self._next_tick = 0

    # ------------------------------------------------------------------ domain builder
    def layout(self) -> DomainLayout:
        """What the domain builder lays out: RAM with initial contents, or (PoD boot)
        PoD entries for the low RAM backed by a cache of ``memory`` frames; high pages
        are always real RAM; MMIO ranges become mmio_direct; the builder's special pages
        (libxc's layout) are populated beside the guest's RAM, outside the PoD target,
        with the HVM params pointing at them."""
        mmio = self.map.mmio_gfns()
        builder = dict(special_gfns=self.map.special.copy(), hvm_params=self.map.hvm_params())
        if self.config.pod:
            low = self.map.page_to_gfn(np.arange(self.map.n_low, dtype=np.int64))
            high = self.map.high_pages.copy()
            return DomainLayout(ram_gfns=high, ram_tokens=initial_tokens(self.seed, high),
                                pod_gfns=low,
                                pod_cache_pages=max(0, self.config.memory_pages - high.size),
                                mmio_gfns=mmio, **builder)
        ram = self.map.ram_runs()      # runs and lazy contents: no per-page arrays
        return DomainLayout(ram_gfns=ram, ram_tokens=BootTokens(self.seed, ram), mmio_gfns=mmio, **builder)

    # ------------------------------------------------------------------ running
    def _tick_at_or_after(self, t: float) -> int:
        return tick_at_or_after(t, self.tick)

    @property
    def now(self) -> float:
        """Time of the next tick that has not run (or been skipped)."""
        return self._next_tick * self.tick

    # What a guest actor in another process asks of the guest it serves.

    @property
    def next_tick(self) -> int:
        """The next tick that has not run (or been skipped)."""
        return self._next_tick

    def first_tick(self, t0: float) -> int:
        """The first tick ``run(t0, ...)`` would write in (a tick that started in skipped
        time and ends after ``t0``, else the first to start at or after ``t0``)."""
        ks = straddled_tick(t0, self.tick, self._next_tick)
        return self._start(t0) if ks is None else ks

    def next_call_tick(self) -> int | None:
        """The first tick, from the next unrun one, at which the guest may make a
        hypercall (its balloon driver acts, or a mapping changes); None when nothing is
        scheduled."""
        return self.next_active_tick(self._next_tick)

    def next_active_tick(self, k: int) -> int | None:
        """The first tick ``>= k`` at which the balloon driver acts or a mapping changes."""
        nb, nm = self.balloon.next_active_tick(k), self.mappings.next_active_tick(k)
        return nb if nm is None else nm if nb is None else min(nb, nm)

    def ticks_by(self, t) -> np.ndarray:
        """For each time in ``t``, the tick a request at that time runs the guest up to
        (exclusive): ``tick_at_or_after``, element by element, to the bit."""
        return ticks_at_or_after(t, self.tick)

    def balloon_acts_at(self, k: int) -> bool:
        """Does the guest make hypercalls at tick ``k`` (its balloon driver acts, or a
        mapping changes)?"""
        return self.next_active_tick(k) == k

    def requeue_events(self, events: list) -> None:
        """Put back events drained too early, ahead of any newer ones."""
        self.events[:0] = events

    def run(self, t0: float, t1: float) -> Generator[GuestOp, HypercallResult | None, None]:
        """Yield the guest's ops for ticks in ``[t0, t1)`` (see the module docstring)."""
        if t1 <= t0:
            return
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]] = []   # (ticks, pages, times, writer key)
        ks = straddled_tick(t0, self.tick, self._next_tick)
        if ks is not None:
            # Its start (and the balloon driver's turn in it) fell in skipped time.
            self._collect(ks, ks + 1, parts, since=t0)
            self.stats.ticks_run -= 1
            self.stats.ticks_skipped += 1
        k = self._start(t0)
        k_end = self._tick_at_or_after(t1)
        while k < k_end:
            nk = self.next_active_tick(k)
            if nk == k:
                if parts:
                    op = self._flush(parts, t0)
                    parts = []
                    if op is not None:
                        yield op
                if self.balloon.next_active_tick(k) == k:
                    yield from self.balloon.step(k, max(k * self.tick, t0))
                if self.mappings.next_active_tick(k) == k:
                    yield from self.mappings.step(k, max(k * self.tick, t0))
                seg_end = k + 1
            else:
                seg_end = k_end if nk is None else min(nk, k_end)
                # A long stretch (the run up to a late migration start) goes in pieces of
                # SPAN_TICKS, flushed once they hold SPAN_WRITES writes: memory follows
                # the piece, not the stretch, and the writes and their order are the same.
                seg_end = min(seg_end, k + SPAN_TICKS)
            self._collect(k, seg_end, parts)
            k = seg_end
            if k < k_end and sum(p[1].size for p in parts) >= SPAN_WRITES:
                op = self._flush(parts, t0)
                parts = []
                if op is not None:
                    yield op
        if parts:
            op = self._flush(parts, t0)
            if op is not None:
                yield op

    def _start(self, t0: float) -> int:
        """The first tick a span starting at ``t0`` runs (ticks before it that never ran
        are skipped: counted when the span runs)."""
        return max(self._next_tick, self._tick_at_or_after(t0))

    def _collect(self, k: int, seg_end: int, parts: list, since: float | None = None) -> None:
        """Run the balloon-free ticks ``[k, seg_end)``: their writes (those at or after
        ``since`` when given) join ``parts``."""
        if k > self._next_tick:
            self.stats.ticks_skipped += k - self._next_tick
        for w in self.workloads:
            ticks, pages, times = w.pages(k, seg_end)
            if pages.size:
                parts.append((ticks, pages, times, w.idx))
        ticks, pages = self.balloon.reuse_writes(k, seg_end)
        if pages.size:
            parts.append((*self._reuse_in_time(ticks, pages), REUSE_KEY))
        if since is not None:
            for i, (ticks, pages, times, key) in enumerate(parts):
                a = int(np.searchsorted(times, since, side="left"))
                if a:
                    parts[i] = (ticks[a:], pages[a:], times[a:], key)
        self.stats.ticks_run += seg_end - k
        self._next_tick = seg_end

    def _reuse_in_time(self, ticks: np.ndarray, pages: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ticks, pages, times)`` of the balloon's reuse writes (due by tick), in time
        order: spread over their tick under continuous timing, at its start under tick
        timing."""
        if not self.continuous:
            return ticks, pages, tick_starts(ticks, self.tick)
        times = times_in_ticks(ticks, hashed_fracs(self.seed, pages, ticks, REUSE_KEY), self.tick)
        order = time_order(times)
        return ticks[order], pages[order], times[order]

    def window_end(self, k: int, max_ticks: int) -> tuple[int, int | None]:
        """``(K, next_active)`` for a write window starting at tick ``k``: ``K`` is at most
        ``k + max_ticks`` and no later than the balloon driver's next active tick
        (``next_active``, None if it has nothing scheduled)."""
        nk = self.next_active_tick(k)
        end = k + max(1, int(max_ticks))
        return (end if nk is None else min(nk, end)), nk

    def write_window(self, k_from: int, k_to: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run the balloon-free ticks ``[max(next tick, k_from), k_to)`` as ``run`` would
        and return their writes as ``(times, gfns, tokens)`` (float64, int64, uint64), in
        the order ``run`` emits them (by time; a write of tick ``k`` has its time in
        ``[k*tick, (k+1)*tick)``) and filtered by ownership. The balloon driver must have
        nothing to do before ``k_to`` (see ``window_end``): then any ``run`` over these
        ticks writes exactly these, except those before its span's start in ticks that
        started in skipped time (a span from ``t0`` writes those at or after
        ``min(t0, k*tick)`` for its first tick ``k`` at or after ``t0``), in one
        ``MemoryWrites`` per stretch between hypercalls, stamped ``max(last write's
        time, t0)``."""
        k = max(self._next_tick, int(k_from))
        k_to = int(k_to)
        if k_to <= k:
            return _EMPTY_F64, _EMPTY_I64, _EMPTY_U64
        nk = self.next_active_tick(k)
        if nk is not None and nk < k_to:
            raise ValueError(f"the balloon driver acts (or a mapping changes) at tick {nk}, "
                             f"inside the window [{k}, {k_to})")
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]] = []
        self._collect(k, k_to, parts)
        merged = self._merge(parts)
        if merged is None:
            return _EMPTY_F64, _EMPTY_I64, _EMPTY_U64
        return merged

    def _merge(self, parts) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """``(times, gfns, tokens)`` of the owned pages' writes in ``parts``, in time order
        (ties keep the parts' order: by workload, then reuse)."""
        gparts, tparts, kparts = [], [], []
        # With nothing ballooned out the guest owns every page: no filter to gather.
        every_page = self.balloon.ballooned == 0 and self.mappings.lost == 0
        for ticks, pages, times, key in parts:
            keep = None if every_page else self.owned[pages]
            n_keep = pages.size if keep is None else int(np.count_nonzero(keep))
            self.stats.writes_dropped += pages.size - n_keep
            if n_keep == 0:
                continue
            if n_keep != pages.size:
                ticks, pages, times = ticks[keep], pages[keep], times[keep]
            gfns = self.map.page_to_gfn(pages)
            gparts.append(gfns)
            tparts.append(times)
            kparts.append(write_tokens(self.seed, gfns, ticks, key))
        if not gparts:
            return None
        if len(gparts) == 1:
            gfns, times, tokens = gparts[0], tparts[0], kparts[0]
        else:
            times = np.concatenate(tparts)
            order = np.argsort(times, kind="stable")     # time order: the last write wins
            gfns, times, tokens = np.concatenate(gparts)[order], times[order], np.concatenate(kparts)[order]
        self.stats.writes += gfns.size
        self.stats.write_batches += 1
        return times, gfns, tokens

    def _flush(self, parts, t0: float) -> MemoryWrites | None:
        merged = self._merge(parts)
        if merged is None:
            return None
        times, gfns, tokens = merged
        return MemoryWrites(write_time(times[-1], t0), gfns, tokens, times)

    def checkpoint(self):
        """What a ``run`` can change (ownership, the balloon driver, events, stats, the
        next tick; not the workloads' caches, which only memoise), for ``restore``."""
        return (self.owned.copy(), self.balloon.snapshot(), list(self.events), dataclasses.replace(self.stats),
                self._next_tick, self.mappings.snapshot())

    def restore(self, cp) -> None:
        """Put the guest back as it was at ``checkpoint`` (once per checkpoint)."""
        owned, bs, events, stats, next_tick, ms = cp
        self.owned[:] = owned
        self.balloon.restore(bs)
        self.mappings.restore(ms)
        self.events = events
        self.stats = stats
        self._next_tick = next_tick

    # ------------------------------------------------------------------ state & events
    def _emit(self, event: GuestEvent) -> None:
        self.events.append(event)

    def drain_events(self) -> list[GuestEvent]:
        out, self.events = self.events, []
        return out

    def owned_gfns(self) -> np.ndarray:
        """GFNs of the RAM pages the guest owns now (ascending)."""
        return self.map.page_to_gfn(np.flatnonzero(self.owned))

    def ballooned_gfns(self) -> np.ndarray:
        """GFNs the guest has ballooned out (ascending)."""
        return self.map.page_to_gfn(np.flatnonzero(~self.owned))

    @property
    def current_pages(self) -> int:
        return self.balloon.current

    @property
    def target_pages(self) -> int:
        return self.balloon.target
