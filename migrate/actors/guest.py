"""The guest actor: serves one ``guest.Guest`` to the hypervisor actor, and
``RemoteGuest``, the guest as that hypervisor sees it (its ``run(t0, t1)``)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import time
from typing import Any, Callable

import numpy as np

from guest.guest import GuestEvent, straddled_tick, tick_at_or_after, ticks_at_or_after, write_time
from hypervisor.abi import HypercallResult, MemoryWrites, all_done, write_arrays

from migrate.errors import PeerLost, ScenarioMismatch, TransportError
from migrate.heap import keep_freed_arrays
from migrate.transport.base import Transport
from migrate.actors.messages import Bye, GuestLayout, GuestOpened, GuestStep, Speculated, WriteWindow

log = logging.getLogger("xmig.actors")


def scenario_digest(scenario) -> str:
    """A short fingerprint of the guest section, so the guest actor can check it runs
    the scenario the toolstack migrates."""
    g = scenario.guest
    text = g.model_dump_json() if hasattr(g, "model_dump_json") else repr(g)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


#: Most ticks the guest actor writes ahead in one reply (bounds the message size).
WINDOW_TICKS = 256
#: Guests up to this many RAM pages speculate their hypercalls (one checkpoint copies
#: one bool per page).
SPEC_MAX_PAGES = 1 << 24
#: Most ticks a speculated window (one where the balloon acts) runs ahead.
SPEC_WINDOW_TICKS = 128


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


class GuestActor:
    """Serves one ``guest.Guest`` to the hypervisor actor."""

    def __init__(self, scenario, transport: Transport, *, look_ahead: bool = True):
        self.scenario = scenario
        self.transport = transport
        self.guest = None
        self.gen = None
        self.spec = None           # (checkpoint, t0, t1) of the last speculation (t0 None: a window)
        self._ahead: asyncio.Future | None = None   # the next window, being worked out
        self.look_ahead = look_ahead
        self.busy_s = 0.0
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()

    def _chunk(self, send: Any, first: bool) -> GuestStep:
        """Run the generator up to and including the next hypercall (or to its end)."""
        ops: list = []
        more = True
        value = send
        try:
            while True:
                op = next(self.gen) if first else self.gen.send(value)
                first = False
                ops.append(op)
                if not isinstance(op, MemoryWrites):
                    break        # a hypercall: the guest waits for its result
                value = None     # writes get None back, as the hypervisor would send
        except StopIteration:
            more = False
            self.gen = None
        return GuestStep(ops, more, self.guest.drain_events(), None if more else int(self.guest.next_tick))

    def _chunk_from(self, op) -> GuestStep:
        """The chunk that starts with ``op``, which the generator has just yielded."""
        ops: list = []
        more = op is not None
        if op is None:
            self.gen = None
        else:
            ops.append(op)
            try:
                while isinstance(op, MemoryWrites):
                    op = self.gen.send(None)
                    ops.append(op)
            except StopIteration:
                more = False
                self.gen = None
        return GuestStep(ops, more, self.guest.drain_events(), None if more else int(self.guest.next_tick))

    @staticmethod
    def _spec_ops(gen) -> list | None:
        """Drive ``gen`` (a ``Guest.run``) to its end, answering each hypercall as if Xen
        did all of it (``abi.all_done``); its ops, or None (``gen`` closed) at the first
        that cannot be answered so."""
        ops: list = []
        try:
            op = next(gen)
            while True:
                ops.append(op)
                res = None
                if not isinstance(op, MemoryWrites):
                    res = all_done(op)
                    if res is None:
                        gen.close()
                        return None
                op = gen.send(res)
        except StopIteration:
            return ops

    def _speculate(self, t0: float, t1: float) -> Speculated | None:
        """Run ``Guest.run(t0, t1)`` to its end, answering each hypercall as if Xen did
        all of it (``abi.all_done``); the hypervisor checks each real result and
        sends ``spec_miss`` at the first that differs (``_replay``). None if some op
        cannot be speculated (the guest is then as before)."""
        g = self.guest
        ev = g.drain_events()
        cp = g.checkpoint()
        ops = self._spec_ops(g.run(t0, t1))
        if ops is None:
            g.restore(cp)
            g.requeue_events(ev)
            return None
        self.spec = (cp, t0, t1)
        return Speculated(ops, ev, g.drain_events(), int(g.next_tick))

    def _spec_window(self, t0: float, k: int, max_ticks: int) -> WriteWindow | None:
        """A speculated window from tick ``k``, where the balloon driver acts: the guest
        runs ticks ``[k, k + n)`` (n at most ``SPEC_WINDOW_TICKS``) answering each
        hypercall as the guest expects, and the hypervisor takes its ops from the
        window call by call (``RemoteGuest``), as long as each real result is the one
        expected; at the first that is not, or a skip, it has the guest replay what it
        really ran (``spec_sync``). None if some op cannot be speculated."""
        g = self.guest
        ev = g.drain_events()
        cp = g.checkpoint()
        k_to = k + max(1, min(int(max_ticks), SPEC_WINDOW_TICKS))
        steps: list = []
        writes: list = []
        t, j = float(t0), k
        while j < k_to:
            acts = g.balloon_acts_at(j)
            if acts:
                seg = j + 1
            else:
                nk = g.balloon.next_active_tick(j)
                seg = k_to if nk is None else min(nk, k_to)
            ops = self._spec_ops(g.run(t, seg * g.tick))
            if ops is None:
                g.restore(cp)
                g.requeue_events(ev)
                return None
            writes.extend(op for op in ops if isinstance(op, MemoryWrites))
            if acts:
                steps.append((j, [op for op in ops if not isinstance(op, MemoryWrites)]))
            t, j = seg * g.tick, seg
        self.spec = (cp, None, None)
        return WriteWindow(k, k_to, *write_arrays(writes), ev, g.balloon.next_active_tick(k_to), steps,
                           g.drain_events())

    def _replay(self, results: list, n: int, log=(), t0: float | None = None, t1: float | None = None):
        """Back to the checkpoint of the last speculation; for a window, ``Guest.run``
        again over each call of ``log`` the hypervisor made in it (every hypercall there
        did as expected; their events it has), then over ``(t0, t1)``; for a speculated
        run, over that run. Through the first ``n`` ops of the last with the
        hypervisor's real ``results``; returns the op it yields next (None at its end)."""
        if self.spec is None:
            raise RuntimeError("no speculated run to replay")
        cp, s0, s1 = self.spec
        self.spec = None
        g = self.guest
        g.restore(cp)
        if s0 is None:
            for a, b in log:
                if self._spec_ops(g.run(float(a), float(b))) is None:
                    raise RuntimeError("a speculated window's run no longer speculates")
            g.drain_events()
            if t0 is None:
                return None
            s0, s1 = float(t0), float(t1)
        self.gen = g.run(s0, s1)
        results = list(results)
        try:
            op = next(self.gen)
            for _ in range(int(n)):
                op = self.gen.send(None if isinstance(op, MemoryWrites) else results.pop(0))
        except StopIteration:
            self.gen = None
            return None
        return op

    def _run(self, t0: float, t1: float) -> GuestStep:
        self.spec = None
        if self.gen is not None:
            self.gen.close()
        self.gen = self.guest.run(t0, t1)
        return self._chunk(None, True)

    def _go(self, t0: float, t1: float, max_ticks: int) -> GuestStep | Speculated | WriteWindow:
        """A span from the guest's next tick: a window of writes ahead (speculated where
        its balloon driver acts), else ``run`` (see ``RemoteGuest``)."""
        self.spec = None
        if self.gen is not None:
            self.gen.close()
            self.gen = None
        reply = self._window(t0, t1, max_ticks)
        if reply is not None:
            return reply
        if self.guest.nr_pages <= SPEC_MAX_PAGES:
            reply = self._speculate(t0, t1)
            if reply is not None:
                return reply
        return self._run(t0, t1)

    def _window(self, t0: float, t1: float, max_ticks: int) -> WriteWindow | None:
        """The window ``go(t0, t1)`` answers with, if any: of writes only while the
        balloon driver does nothing, speculated from a tick where it acts (unless that
        tick started before ``t0`` in skipped time, or ``t1`` ends before it)."""
        g = self.guest
        k = g.first_tick(t0)
        if g.balloon_acts_at(k) or tick_at_or_after(t1, g.tick) <= k:
            if (g.nr_pages <= SPEC_MAX_PAGES and straddled_tick(t0, g.tick, g.next_tick) is None
                    and tick_at_or_after(t1, g.tick) > k):
                return self._spec_window(t0, k, max_ticks)
            return None
        k_to, next_call = g.window_end(k, max_ticks)
        times, gfns, tokens = g.write_window(k, k_to)
        return WriteWindow(k, k_to, times, gfns, tokens, g.drain_events(), next_call)

    # While the hypervisor serves from a window, the guest works out the next one: the
    # answer to a go from the window's end tick (most go there next), in a thread.
    # Any other request first takes it back (the guest as it was before).

    def _look_ahead(self, reply) -> None:
        if not self.look_ahead or not isinstance(reply, WriteWindow) or self.gen is not None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return                 # driven without a loop (tests): nothing runs ahead
        self._ahead = asyncio.ensure_future(asyncio.to_thread(self._precompute, int(reply.end)))

    def _precompute(self, k: int):
        g = self.guest
        if g.next_tick != k:
            return None
        undo, spec = g.checkpoint(), self.spec
        try:
            reply = self._window(k * g.tick, (k + 1) * g.tick, WINDOW_TICKS)
        except Exception:           # the request it was for will meet the error itself
            g.restore(undo)
            return None
        finally:
            ahead_spec, self.spec = self.spec, spec
        return k, reply, undo, ahead_spec

    async def _settle(self, method: str, args: dict) -> WriteWindow | None:
        """The window worked out ahead, if it answers this request (a go whose first
        tick is the one it starts at); else the guest is put back as it was before."""
        task, self._ahead = self._ahead, None
        if task is None:
            return None
        ahead = await task
        if ahead is None:
            return None
        k, reply, undo, spec = ahead
        if (method == "go" and reply is not None and int(args.get("max_ticks", 1)) == WINDOW_TICKS
                and tick_at_or_after(float(args["t0"]), self.guest.tick) <= k
                < tick_at_or_after(float(args["t1"]), self.guest.tick)):
            self.spec = spec
            return reply
        self.guest.restore(undo)
        return None

    def _resume(self, result) -> GuestStep:
        if self.gen is None:
            raise RuntimeError("resume without a running guest step")
        return self._chunk(result, False)

    async def handle(self, method: str, args: dict, caller: str) -> Any:
        t0 = time.perf_counter()
        try:
            return await self._handle(method, args)
        finally:
            self.busy_s += time.perf_counter() - t0

    async def _handle(self, method: str, args: dict) -> Any:
        if self.guest is None and method not in ("open", "bye"):
            raise RuntimeError(f"guest not opened (got {method!r} before 'open')")
        if method != "go":
            await self._settle(method, args)
        # Chunks end at the next hypercall and are short: computed on the loop, which
        # saves two thread switches per round trip (the hypervisor waits anyway).
        match method:
            case "open":
                return self._open(args)
            case "layout":
                layout = await asyncio.to_thread(self.guest.layout)
                return GuestLayout(layout, float(self.guest.tick), int(self.guest.next_tick),
                                   self.guest.drain_events())
            case "go":
                reply = await self._settle(method, args) or self._go(float(args["t0"]), float(args["t1"]),
                                                                     int(args.get("max_ticks", 1)))
                self._look_ahead(reply)
                return reply
            case "run":
                return self._run(float(args["t0"]), float(args["t1"]))
            case "resume":
                return self._resume(args.get("result"))
            case "spec_miss":
                return self._chunk_from(self._replay(args.get("results") or [], int(args["n"])))
            case "spec_abort":
                self._replay(args.get("results") or [], int(args["n"]))
                return self._stop()
            case "spec_sync":
                # A speculated window left: replay what the hypervisor ran of it, then
                # go on from ``n`` ops into its current call (``then``: "chunk"), stop
                # there ("stop"), or stand after the log's calls ("none").
                then = args.get("then")
                op = self._replay(args.get("results") or [], int(args.get("n") or 0), args.get("log") or (),
                                  args.get("t0"), args.get("t1"))
                if then == "chunk":
                    return self._chunk_from(op)
                return self._stop()
            case "close":
                return self._stop()
            case "bye":
                if not self.done.done():
                    self.done.set_result("released")
                return Bye(self.busy_s)
        raise RuntimeError(f"unknown guest method {method!r}")

    def _stop(self) -> GuestStep:
        """The hypervisor stopped the guest's step before its end."""
        if self.gen is not None:
            self.gen.close()
            self.gen = None
        return GuestStep(events=self.guest.drain_events(), next_tick=int(self.guest.next_tick))

    def _open(self, args: dict) -> GuestOpened:
        from guest.guest import Guest

        digest = scenario_digest(self.scenario)
        if args.get("digest") and args["digest"] != digest:
            raise ScenarioMismatch(
                f"the guest actor runs scenario {self.scenario.name!r} but the toolstack migrates "
                f"{args.get('scenario')!r} (a different guest section): start both with the same --guest file")
        if self.guest is not None:
            raise TransportError("this guest actor already runs a guest; start a new one per migration")
        self.guest = Guest(self.scenario.guest, int(args["seed"]))
        return GuestOpened(self.scenario.name)


async def serve_guest(scenario, transport: Transport) -> str:
    """Run the guest actor until the hypervisor releases it or goes away.
    Returns why it stopped ("released" or the PeerLost message)."""
    keep_freed_arrays()          # the actor's process does the array work
    if not hasattr(scenario, "guest"):
        from migrate.run.scenario import load_scenario

        scenario = load_scenario(scenario)
    actor = GuestActor(scenario, transport)

    def lost(peer: str, exc: PeerLost) -> None:
        if peer in ("hypervisor", "*") and not actor.done.done():
            actor.done.set_result(str(exc))

    transport.on_peer_lost(lost)
    transport.serve(actor.handle)
    await transport.claim()
    return await actor.done
