"""``RemoteGuest``: the guest as the hypervisor actor sees it (its ``run(t0, t1)``),
served by a guest actor (``migrate.actors.guest``) over the transport.

Xen schedules a guest's vCPUs and the guest traps back with hypercalls; here the
guest lives in another process, and this generator yields, to the hypervisor's
scheduler, the memory writes and hypercalls the guest actor sends.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from typing import Any, Callable

import numpy as np

from guest.guest import GuestEvent, straddled_tick, tick_at_or_after, ticks_at_or_after, write_time
from hypervisor.abi import HypercallResult, MemoryWrites, all_done

from migrate.errors import PeerLost, TransportError
from migrate.actors.guest import WINDOW_TICKS
from migrate.actors.messages import GuestStep, Speculated, WriteWindow


def _same_result(result, exp: HypercallResult) -> bool:
    return (isinstance(result, HypercallResult) and int(result.rc) == exp.rc
            and np.array_equal(np.asarray(result.done, dtype=np.int64), exp.done))


def _as_expected(op, result) -> bool:
    """Does the guest behave after ``result`` as after the expected one? (The balloon
    driver only looks at ``rc`` and ``done``.)"""
    exp = all_done(op)
    if isinstance(exp, list):
        return (isinstance(result, (list, tuple)) and len(result) == len(exp)
                and all(_same_result(r, e) for r, e in zip(result, exp)))
    return exp is not None and _same_result(result, exp)


class RemoteGuest:
    """The guest as the hypervisor sees it: ``run(t0, t1)`` yields the guest actor's ops.

    Used from the hypervisor's worker thread; ``call(method, args)`` blocks on an RPC.

    Between two ticks at which its balloon driver acts, the guest's writes need nothing
    from the hypervisor (ownership only changes through the balloon; workloads and
    reuse writes are keyed by seed and tick). So the guest actor answers a ``go`` that
    starts at such a tick with a window of them (``Guest.write_window``: per-write time,
    GFN and token for ticks ``[k, K)``), and the spans in that window are served from it
    here without a round trip: the writes of a span's ticks (those of skipped ticks, and
    of a tick that started in skipped time those before the span, are dropped, as the
    guest drops them) as one ``MemoryWrites`` per stretch between hypercalls, stamped as
    ``Guest.run`` stamps it. A span reaching a tick where the
    balloon acts runs the guest's ``run`` remotely from there, one round trip per
    hypercall (writes pending from the window are flushed first, as ``run`` flushes them
    before the driver's step). The ops are exactly ``Guest.run``'s.

    Where the balloon acts, the guest actor answers with a speculated window: its ticks
    run ahead with each hypercall answered as the guest expects (``abi.all_done``), the
    hypercalls of each tick where the driver acts (``WriteWindow.steps``) among the
    writes. The spans in it are served from it too: pending writes flushed at each such
    tick, then its hypercalls, each real result checked; the window's events are handed
    on with the call that runs their tick. At the first result the guest did not
    expect, a skip of the window's ticks (the domain paused) or a run stopped midway,
    the guest actor replays from the window's start the calls made in it
    (``spec_sync``), and the run goes on one round trip per hypercall."""

    def __init__(self, call: Callable[[str, dict], Any]):
        self._call = call
        self.events: list = []
        self.now: float | None = None    # the guest's next unrun tick, as a time (None: unknown)
        self.dead: PeerLost | None = None
        self.rpcs = 0
        self.wait_s = 0.0
        self.tick: float | None = None   # the guest's tick (from ``layout``)
        self.pos = 0                     # the next tick Guest.run would run (its _next_tick)
        self.gk = 0                      # the guest actor's own next tick (>= pos: written ahead)
        self._win: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None   # (times, gfns, tokens) of ticks [pos, gk)
        self._next_call: int | None = None   # the window's WriteWindow.next_call
        self._steps: collections.deque = collections.deque()   # a speculated window's (tick, ops) not yet run
        self._spec_events: list = []     # its events not yet handed on
        self._spec_log: list | None = None   # its calls run so far (None: no speculated window)

    def _rpc(self, method: str, args: dict | None = None) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass              # a worker thread: blocking here is fine
        else:
            raise RuntimeError("a guest round trip from the event loop would deadlock")
        self.rpcs += 1
        t0 = time.perf_counter()
        try:
            reply = self._call(method, args or {})
            self.wait_s += time.perf_counter() - t0
        except PeerLost as exc:
            self.dead = exc
            raise
        self.events.extend(reply.events)
        if not isinstance(reply, WriteWindow) and reply.next_tick is not None:
            self.gk = self.pos = int(reply.next_tick)
            self._win = None
            self._set_now()
        return reply

    def _install_steps(self, reply: WriteWindow, k0: int, k1: int) -> None:
        steps, events = reply.steps, reply.spec_events
        if not (isinstance(steps, list) and isinstance(events, list)
                and all(isinstance(st, tuple) and len(st) == 2 and type(st[0]) is int and isinstance(st[1], list)
                        for st in steps)
                and all(isinstance(e, GuestEvent) and isinstance(e.t, float) for e in events)):
            raise TransportError("the guest sent a malformed speculated window")
        ticks = [j for j, _ in steps]
        if ticks[0] != k0 or ticks[-1] >= k1 or any(b <= a for a, b in zip(ticks, ticks[1:])):
            raise TransportError("the guest's speculated window acts outside its ticks")
        self._steps.extend(steps)
        self._spec_events = list(events)

    def _window_done(self) -> None:
        """A speculated window all run as the guest expected: hand on its last events."""
        self.events.extend(self._spec_events)
        self._spec_events = []
        self._spec_log = None

    def _drop_window(self) -> None:
        self._win = None
        self.gk = self.pos
        self._steps.clear()
        self._spec_events = []
        self._spec_log = None
        self._set_now()

    def _sync(self, then: str, call: tuple | None = None, results: list | None = None, n: int = 0):
        """Leave the speculated window: the guest actor replays the calls run in it (and
        ``n`` ops of the current ``call`` with their real ``results``); see GuestActor."""
        args = {"log": list(self._spec_log or ()), "then": then, "results": list(results or ()), "n": int(n)}
        if call is not None:
            args["t0"], args["t1"] = call
        self._drop_window()
        return self._rpc("spec_sync", args)

    def next_call_tick(self) -> int | None:
        """``Guest.next_call_tick`` as far as the guest actor told: while a window of its
        writes is known, the tick its balloon acts at next (``WriteWindow.next_call``);
        otherwise the next unrun tick (it may act there)."""
        if self._steps:
            return self._steps[0][0]
        if self._win is not None and (self._next_call is None or self._next_call >= self.pos):
            return self._next_call
        return self.pos

    def ticks_by(self, t) -> np.ndarray:
        """``Guest.ticks_by``: the tick a request at each time runs the guest up to."""
        return ticks_at_or_after(t, self.tick)

    def _set_now(self) -> None:
        if self.tick is not None:
            self.now = self.gk * self.tick

    def layout(self):
        reply = self._rpc("layout")
        self.tick = float(reply.tick)
        self._set_now()
        return reply.layout

    def _take(self, lo: float, hi: int):
        """Writes of the window's ticks before ``hi`` at or after time ``lo``; the window
        drops those before ``lo`` (ticks skipped, or a skipped tick's start)."""
        times, gfns, tokens = self._win
        a = int(np.searchsorted(times, lo, side="left"))
        b = int(np.searchsorted(times, hi * self.tick, side="left"))   # a tick's writes end before the next starts
        self._win = (times[b:], gfns[b:], tokens[b:])
        self.pos = hi
        if b > a:
            return times[a:b], gfns[a:b], tokens[a:b]
        return None

    def _pending_op(self, pending: list, t0: float) -> MemoryWrites:
        if len(pending) == 1:
            times, gfns, tokens = pending[0]
        else:
            times = np.concatenate([p[0] for p in pending])
            gfns = np.concatenate([p[1] for p in pending])
            tokens = np.concatenate([p[2] for p in pending])
        return MemoryWrites(write_time(times[-1], t0), gfns, tokens, times)

    def run(self, t0: float, t1: float):
        if self.dead is not None:
            return   # a guest that is gone runs no more (its vCPUs are stopped)
        if self.tick is None:          # (no layout yet: the plain protocol)
            yield from self._run_remote("run", t0, t1)
            return
        if t1 <= t0:
            return
        first = tick_at_or_after(t0, self.tick)
        k = max(self.pos, first)
        ks = straddled_tick(t0, self.tick, self.pos)
        if ks is not None:
            k = ks       # a tick that started in skipped time: its writes from t0 on
        if self._steps and (k > self.pos or ks is not None):
            self._sync("none")         # ticks of a speculated window skipped: it no longer holds
        # Writes of ticks at or after ``first`` all count; the straddled tick's from t0 on.
        lo = min(float(t0), first * self.tick)
        k_end = tick_at_or_after(t1, self.tick)
        if k_end <= k:
            return   # no guest tick in [t0, t1): Guest.run yields nothing
        call = (float(t0), float(t1))
        results: list = []
        n = 0            # ops of this call handed out since a speculated window began in it
        fresh = False    # a window began in this call: its first flush is not one of them
        pending: list = []
        try:
            while True:
                if k < self.gk:
                    j = self._steps[0][0] if self._steps else None
                    hi = min(k_end, self.gk) if j is None else min(k_end, self.gk, j)
                    if hi > k:
                        part = self._take(lo, hi)
                        if part is not None:
                            pending.append(part)
                        k = hi
                    if j is not None and k == j < k_end:
                        # The balloon driver acts at tick j: Guest.run flushes its writes first.
                        ops = self._steps.popleft()[1]
                        if pending:
                            yield self._pending_op(pending, t0)
                            pending = []
                            n += not fresh
                        fresh = False
                        for op in ops:
                            result = yield op
                            n += 1
                            results.append(result)
                            if not _as_expected(op, result):
                                # The guest replays up to here with the real results and goes on.
                                reply = self._sync("chunk", call, results, n)
                                yield from self._ops(reply)
                                return
                        continue
                    if k >= k_end:
                        break
                if self._spec_log is not None:
                    self._window_done()      # ran out as the guest expected: its events all ran
                reply = self._rpc("go", {"t0": float(t0), "t1": float(t1), "max_ticks": WINDOW_TICKS})
                if isinstance(reply, WriteWindow):
                    k0, k1 = int(reply.first), int(reply.end)
                    if k0 != k or k1 <= k0:
                        raise TransportError(f"the guest wrote ahead from tick {k0} to {k1}, expected from {k}")
                    self._win = (np.asarray(reply.times), np.asarray(reply.gfns), np.asarray(reply.tokens))
                    self._next_call = None if reply.next_call is None else int(reply.next_call)
                    self.gk = k1
                    self._set_now()
                    if reply.steps:
                        self._install_steps(reply, k0, k1)
                        self._spec_log = []
                        results, n, fresh = [], 0, True
                    continue
                # The balloon driver acts at tick k: Guest.run flushes its writes first.
                if pending:
                    yield self._pending_op(pending, t0)
                    pending = []
                yield from self._ops(reply)
                return
            if pending:
                yield self._pending_op(pending, t0)
                n += 1
        except GeneratorExit:
            # Stopped at op n: the guest takes back what it ran past it.
            if self._spec_log is not None and self.dead is None:
                with contextlib.suppress(PeerLost):
                    self._sync("stop", call, results, n)
            raise
        if self._spec_log is not None:
            self._spec_log.append(call)
            end = k_end * self.tick
            now = [e for e in self._spec_events if e.t < end]
            if now:
                self.events.extend(now)
                self._spec_events = self._spec_events[len(now):]
            if not self._steps and self.pos >= self.gk:
                self._window_done()

    def _run_remote(self, method: str, t0: float, t1: float):
        yield from self._ops(self._rpc(method, {"t0": float(t0), "t1": float(t1)}))

    def _ops(self, reply: GuestStep | Speculated):
        """The ops of a remote ``Guest.run``: speculated in one reply (see ``GuestActor._go``)
        while every hypercall does what the guest expected, else one round trip per
        hypercall."""
        if isinstance(reply, Speculated):
            ops, sev = reply.ops, reply.spec_events
            results: list = []
            for i, op in enumerate(ops):
                try:
                    result = yield op
                except GeneratorExit:
                    # Stopped at op i: the guest takes back what it ran past it.
                    if self.dead is None:
                        with contextlib.suppress(PeerLost):
                            self._rpc("spec_abort", {"results": results, "n": i})
                    raise
                if isinstance(op, MemoryWrites):
                    continue
                results.append(result)
                if not _as_expected(op, result):
                    # The guest replays up to here with the real results and goes on.
                    reply = self._rpc("spec_miss", {"results": results, "n": i + 1})
                    break
            else:
                self.events.extend(sev)
                return
        more = False
        try:
            while True:
                result = None
                for op in reply.ops:
                    result = yield op
                more = reply.more
                if not more:
                    return
                reply = self._rpc("resume", {"result": result})
        except GeneratorExit:
            if more and self.dead is None:
                with contextlib.suppress(PeerLost):
                    self._rpc("close")
            raise

    def drain_events(self) -> list:
        out, self.events = self.events, []
        return out


__all__ = ["RemoteGuest"]
