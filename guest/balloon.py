"""The guest's balloon driver.

Mirrors Linux's ``drivers/xen/balloon.c``: the driver has a target (set by the toolstack
through xenstore's ``memory/target``; here by the scenario's schedule) and moves the
guest's memory towards it in batches:

* inflate (``decrease_reservation``): take pages the guest owns (from the top of the
  balloon region, as the buddy allocator hands out high pages first), hand them back to
  Xen with XENMEM_decrease_reservation, ``batch_pages`` GFNs per hypercall, and keep
  them on the ballooned-pages list;
* deflate (``increase_reservation``): pop pages off that list (most recently ballooned
  first) and ask Xen for frames with XENMEM_populate_physmap; pages Xen populates are
  the guest's again, and a share of them is written soon after (the guest reuses the
  memory it got back).

Feedback is honoured as Linux does: Xen stops at the first extent it cannot do and
returns how many it did (``rc``; ``done`` lists them). Only those pages change hands;
the driver then stops moving and reports ``balloon_stalled`` (Linux backs off and
retries; this model waits for the next target in the schedule, which keeps runs easy to
reason about).

PoD boot (Xen's ``p2m-pod.c``): a guest built with ``memory < maxmem`` sees ``maxmem``
of RAM, all of it populate-on-demand, backed by a PoD cache of ``memory`` frames. Its
balloon driver must inflate down to ``memory`` before it touches more pages than the
cache holds, or Xen has to crash the domain. The model does that at the guest's first
tick, before any write and without the rate limit (or at ``boot_at``: a driver that
starts late, while the guest already touches pages).

Ownership is one bool per RAM page, shared with the guest (``Guest.owned``); the
ballooned-pages list holds int32/int64 page indices in chunks. No per-page Python loops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Generator

import numpy as np

from hypervisor.abi import DecreaseReservationRun, HypercallResult, MemoryOpKind, PopulatePhysmapRun, run_bounds
from hypervisor.tables import stable_order

from .config import GuestConfig, resolve_region
from .events import (BalloonDirection, BalloonPagesMoved, BalloonStall, BalloonTargetReached, BalloonTargetSet,
                     GuestEvent)
from .keyed_rng import keyed_rngs
from .layout import GuestLayout
from .workloads import seed_key

#: Writer key for reuse writes (distinct from workload indices in tokens and RNG keys).
REUSE_KEY = 0xBA11


@dataclass(frozen=True)
class _Step:
    tick: int
    at: float
    target: int
    reason: str          # "schedule" or "boot"
    unrated: bool


class Balloon:
    """Balloon state and the per-tick driver step (a generator of hypercalls)."""

    def __init__(self, cfg: GuestConfig, layout: GuestLayout, owned: np.ndarray, seed: int,
                 emit: Callable[[GuestEvent], None]):
        self.cfg = cfg.balloon
        self.layout = layout
        self.owned = owned
        self.seed = seed_key(seed)
        self.tick = cfg.tick
        self.emit = emit
        self.nr_pages = layout.nr_pages
        if self.cfg.region is not None:
            self.rlo, self.rhi = resolve_region(self.cfg.region, self.nr_pages)
        else:
            self.rlo, self.rhi = 0, layout.n_low
        self.current = int(self.nr_pages)           # pages the guest owns
        steps: list[_Step] = []
        if cfg.pod:
            at = float(self.cfg.boot_at)
            steps.append(_Step(int(math.ceil(at / self.tick - 1e-9)), at, int(cfg.memory_pages),
                               "boot (PoD: memory < maxmem)", True))
        for at, tgt in cfg.balloon_targets():
            steps.append(_Step(int(math.ceil(at / self.tick - 1e-9)), at, int(tgt), "schedule", False))
        self.steps = steps
        self.target = int(self.nr_pages)           # no target yet: the guest has what it was built with
        self._next_step = 0
        self._unrated = False
        self.stalled = False
        self._hint = self.rhi                      # no owned page of the region at or above this
        self._stack: list[np.ndarray] = []         # ballooned pages, LIFO by chunk
        self._stack_n = 0
        self._dtype = np.int32 if self.nr_pages < (1 << 31) else np.int64
        self._rate_per_tick = None if self.cfg.rate is None else float(self.cfg.rate) * self.tick
        # pending reuse writes after a deflate: (due tick, page), sorted by due tick
        self._reuse_due = np.empty(0, dtype=np.int64)
        self._reuse_pages = np.empty(0, dtype=np.int64)
        # Reuse writes scheduled since the queue was last sorted (merged on first read:
        # one stable sort instead of one per deflate batch).
        self._reuse_new: list[tuple[np.ndarray, np.ndarray]] = []
        self.stats = {"released": 0, "populated": 0, "decrease_calls": 0, "populate_calls": 0,
                      "stalls": 0}

    # ----------------------------------------------------------------- snapshots
    #: What the driver changes as it runs; everything else is fixed when it is built
    #: (``owned`` is the guest's, which copies it itself).
    STATE = ("current", "target", "_next_step", "_unrated", "stalled", "_hint", "_stack", "_stack_n",
             "_reuse_due", "_reuse_pages", "_reuse_new", "stats")

    def snapshot(self) -> dict:
        """A copy of the driver's state for ``restore`` (arrays are never changed in
        place here, so the containers are copied, not the arrays in them)."""
        snap = {name: getattr(self, name) for name in self.STATE}
        snap["_stack"] = list(self._stack)
        snap["_reuse_new"] = list(self._reuse_new)
        snap["stats"] = dict(self.stats)
        return snap

    def restore(self, snap: dict) -> None:
        """Put the driver back as it was at ``snapshot`` (once per snapshot)."""
        for name in self.STATE:
            setattr(self, name, snap[name])

    # ----------------------------------------------------------------- schedule
    @property
    def ballooned(self) -> int:
        return self._stack_n

    def _moving(self) -> bool:
        return not self.stalled and self.current != self.target

    def next_active_tick(self, k: int) -> int | None:
        """The first tick ``>= k`` at which the driver has something to do."""
        if self._moving():
            return k
        if self._next_step < len(self.steps):
            return max(k, self.steps[self._next_step].tick)
        return None

    def _budget(self, k: int) -> int:
        if self._unrated or self._rate_per_tick is None:
            return 1 << 62
        r = self._rate_per_tick
        return int(math.floor(r * (k + 1) + 1e-9) - math.floor(r * k + 1e-9))

    # ----------------------------------------------------------------- the step
    def step(self, k: int, t: float) -> Generator:
        """Run the driver for tick ``k`` at time ``t``: yields hypercalls, expects
        ``HypercallResult``s back."""
        while self._next_step < len(self.steps) and self.steps[self._next_step].tick <= k:
            s = self.steps[self._next_step]
            self._next_step += 1
            prev = self.target
            self.target = min(s.target, self.nr_pages)
            self.stalled = False
            self._unrated = s.unrated
            self.emit(BalloonTargetSet(t, self.current, self.target, prev, s.at, s.reason))
        if not self._moving():
            return
        n = min(abs(self.current - self.target), self._budget(k))
        if n <= 0:
            return
        if self.current > self.target:
            yield from self._inflate(k, t, n)
        else:
            yield from self._deflate(k, t, n)
        if self.current == self.target:
            self._unrated = False
            self.emit(BalloonTargetReached(t, self.current, self.target))

    def _stall(self, t: float, op: MemoryOpKind, requested: int, done: int, rc: int | None, reason: str) -> None:
        self.stalled = True
        self.stats["stalls"] += 1
        self.emit(BalloonStall(t, self.current, self.target, op, requested, done, rc, reason))

    def _done_pages(self, request_pages: np.ndarray, request_gfns: np.ndarray,
                    res: HypercallResult) -> np.ndarray:
        if not isinstance(res, HypercallResult):
            raise TypeError(f"the guest expected a HypercallResult back for a hypercall, got {res!r}")
        done = np.asarray(res.done, dtype=np.int64)
        if done.size == 0 and res.rc > 0:
            return request_pages[: min(int(res.rc), request_pages.size)]
        if done.size == 0:
            return request_pages[:0]
        # Xen handles a prefix of the request; take the GFNs it reports, as pages.
        if done.size <= request_gfns.size and np.array_equal(done, request_gfns[:done.size]):
            return request_pages[:done.size]
        return request_pages[np.isin(request_gfns, done)]

    def _pick_inflate(self, n: int) -> np.ndarray:
        """Up to ``n`` owned pages of the balloon region, highest first (one scan from
        the top, in growing windows, starting under the hint)."""
        parts: list[np.ndarray] = []
        need = n
        top = self._hint
        # A little more than asked: a region mostly owned fills it in one window (the
        # pages taken do not depend on the windows, only the temporaries do).
        win = max(n + (n >> 4), 4096)
        while need > 0 and top > self.rlo:
            a = max(self.rlo, top - win)
            idx = np.flatnonzero(self.owned[a:top])
            if idx.size:
                take = idx[-need:][::-1] + a
                parts.append(take)
                need -= take.size
            top = a
            win *= 2
        if not parts:
            return np.empty(0, dtype=np.int64)
        return np.concatenate(parts).astype(np.int64)

    def _run_op(self, op_class, t: float, pages: np.ndarray):
        """One step's hypercalls as one run op: ``batch_pages`` GFNs a call (the
        hypervisor answers with the results of the calls it made, up to the first it
        did not finish)."""
        bp = self.cfg.batch_pages
        sizes = np.full(-(-pages.size // bp), bp, dtype=np.int64)
        sizes[-1] = pages.size - bp * (sizes.size - 1)
        return op_class(t, self.layout.page_to_gfn(pages), sizes)

    def _each_call(self, op, pages: np.ndarray, results):
        """``(offset, pages, done, result, cuts)`` for the calls the hypervisor made of
        run ``op`` (``offset``: where the pages start; ``done``: those Xen handled;
        ``cuts``: where each call's pages start in ``done``, and its end).

        A run whose every call did all it was asked (the usual case: memory.c handles
        every extent) comes as one group of all its calls (``result`` None); otherwise
        one group per call, up to the first that did not finish."""
        bounds = run_bounds(op.sizes, pages.size)
        n = bounds.size - 1
        if not isinstance(results, (list, tuple)) or not 1 <= len(results) <= n:
            raise TypeError(f"the guest expected 1..{n} HypercallResults back for "
                            f"{type(op).__name__}, got {results!r:.200}")
        if self._all_done(op, bounds, results):
            yield 0, pages, pages, None, bounds.tolist()
            return
        bounds = bounds.tolist()
        for i, res in enumerate(results):
            a, b = bounds[i], bounds[i + 1]
            part = pages[a:b]
            done = self._done_pages(part, op.gfns[a:b], res)
            if done.size < part.size and i < len(results) - 1:
                raise TypeError(f"{type(op).__name__}: call {i} did not finish, yet more calls were made")
            yield a, part, done, res, [0, done.size]

    @staticmethod
    def _all_done(op, bounds: np.ndarray, results) -> bool:
        """Did Xen make every call of run ``op`` and report each one's GFNs done, in
        full (rc and done list)? Then ``_done_pages`` of each call is all its pages."""
        if len(results) != bounds.size - 1 or not all(type(r) is HypercallResult for r in results):
            return False
        sizes = np.diff(bounds).tolist()
        if [r.rc for r in results] != sizes or [np.size(r.done) for r in results] != sizes:
            return False
        done = np.concatenate([np.asarray(r.done, dtype=np.int64).reshape(-1) for r in results])
        return bool(np.array_equal(done, op.gfns))

    def _inflate(self, k: int, t: float, n: int) -> Generator:
        picked = self._pick_inflate(n)
        released = 0
        batches = 0
        stalled = False
        if picked.size:
            op = self._run_op(DecreaseReservationRun, t, picked)
            results = yield op
            for _, pages, done, res, cuts in self._each_call(op, picked, results):
                batches += len(cuts) - 1
                self.stats["decrease_calls"] += len(cuts) - 1
                if done.size:
                    self.owned[done] = False
                    self.current -= int(done.size)
                    released += int(done.size)
                    self._stack.append(done.astype(self._dtype))
                    self._stack_n += int(done.size)
                    self._hint = min(self._hint, int(done.min()))
                if done.size < pages.size:
                    self._stall(t, MemoryOpKind.DECREASE_RESERVATION, int(pages.size), int(done.size), int(res.rc),
                                "Xen released fewer pages than asked")
                    stalled = True
        self.stats["released"] += released
        if released or batches:
            self.emit(BalloonPagesMoved(t, self.current, self.target, BalloonDirection.INFLATE, released, batches))
        if not stalled and picked.size < n:
            self._stall(t, MemoryOpKind.DECREASE_RESERVATION, n, int(picked.size), None,
                        f"no owned pages left in the balloon region [{self.rlo}, {self.rhi})")

    def _pop(self, n: int) -> np.ndarray:
        parts: list[np.ndarray] = []
        need = n
        while need > 0 and self._stack:
            chunk = self._stack[-1]
            if chunk.size <= need:
                parts.append(chunk[::-1])
                self._stack.pop()
                need -= chunk.size
            else:
                parts.append(chunk[-need:][::-1])
                self._stack[-1] = chunk[:-need]
                need = 0
        out = np.concatenate(parts).astype(np.int64) if parts else np.empty(0, dtype=np.int64)
        self._stack_n -= out.size
        return out

    def _push_back(self, pages: np.ndarray) -> None:
        """Return popped pages to the list so that they are popped again first."""
        if pages.size:
            self._stack.append(pages[::-1].astype(self._dtype))
            self._stack_n += pages.size

    def _deflate(self, k: int, t: float, n: int) -> Generator:
        popped = self._pop(n)
        populated = 0
        batches = 0
        stalled = False
        if popped.size:
            op = self._run_op(PopulatePhysmapRun, t, popped)
            results = yield op
            for a, pages, done, res, cuts in self._each_call(op, popped, results):
                self.stats["populate_calls"] += len(cuts) - 1
                if done.size:
                    self.owned[done] = True
                    self.current += int(done.size)
                    populated += int(done.size)
                    in_region = done[(done >= self.rlo) & (done < self.rhi)]
                    if in_region.size:
                        self._hint = max(self._hint, int(in_region.max()) + 1)
                    self._schedule_reuse(k, batches, done, cuts)
                batches += len(cuts) - 1
                if done.size < pages.size:
                    self._push_back(popped[a:][~np.isin(popped[a:], done)])
                    self._stall(t, MemoryOpKind.POPULATE_PHYSMAP, int(pages.size), int(done.size), int(res.rc),
                                "Xen populated fewer pages than asked (host out of memory?); "
                                "the balloon stays where it is")
                    stalled = True
        self.stats["populated"] += populated
        if populated or batches:
            self.emit(BalloonPagesMoved(t, self.current, self.target, BalloonDirection.DEFLATE, populated, batches))
        if not stalled and popped.size < n:
            self._stall(t, MemoryOpKind.POPULATE_PHYSMAP, n, int(popped.size), None, "no ballooned pages left")

    # ----------------------------------------------------------------- reuse writes
    def _schedule_reuse(self, k: int, batch: int, pages: np.ndarray, cuts: list[int]) -> None:
        """Schedule the reuse writes of the pages populated by calls ``batch, batch+1,
        ...`` of tick ``k`` (call ``i``'s pages: ``pages[cuts[i]:cuts[i+1]]``). Each
        call draws from its own RNG, keyed (seed, REUSE_KEY, k, call): whether each page
        is written (``reuse_share``), then, for those, how many ticks later."""
        share = self.cfg.reuse_share
        if share <= 0 or pages.size == 0:
            return
        u = np.empty(pages.size, dtype=np.float64)     # the first draws, call by call
        keep = np.empty(pages.size, dtype=bool)
        later = np.empty(pages.size, dtype=np.float64)  # the second, packed
        m = 0
        calls = [(batch + i, a, b) for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])) if b > a]
        for (_, a, b), rng in zip(calls, keyed_rngs([self.seed, REUSE_KEY, k], [c[0] for c in calls])):
            rng.random(out=u[a:b])
            c = int(np.count_nonzero(np.less(u[a:b], share, out=keep[a:b])))
            if c:
                rng.random(out=later[m:m + c])
                m += c
        if m == 0:
            return
        pick = pages[keep]
        # k + floor(later * within / tick), in place.
        d = later[:m]
        d *= max(self.cfg.reuse_within, 0.0)
        d /= self.tick
        due = np.floor(d, out=d).astype(np.int64)
        due += k
        self._reuse_new.append((due, pick))

    def _merge_reuse(self) -> None:
        if not self._reuse_new:
            return
        parts = ([(self._reuse_due, self._reuse_pages)] if self._reuse_due.size else []) + self._reuse_new
        d = parts[0][0] if len(parts) == 1 else np.concatenate([x[0] for x in parts])
        p = parts[0][1] if len(parts) == 1 else np.concatenate([x[1] for x in parts])
        self._reuse_new = []
        order = stable_order(d)          # due ticks: a radix pass or two, not a merge sort
        self._reuse_due, self._reuse_pages = d[order], p[order]

    def reuse_writes(self, k0: int, k1: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ticks, pages)`` of reuse writes due in ``[k0, k1)``; those due before ``k0``
        (in ticks that never ran) are dropped."""
        self._merge_reuse()
        if self._reuse_due.size == 0:
            return self._reuse_due, self._reuse_pages
        a = np.searchsorted(self._reuse_due, k0, side="left")
        b = np.searchsorted(self._reuse_due, k1, side="left")
        ticks, pages = self._reuse_due[a:b], self._reuse_pages[a:b]
        self._reuse_due, self._reuse_pages = self._reuse_due[b:], self._reuse_pages[b:]
        return ticks, pages
