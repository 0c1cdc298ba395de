"""The guest actor: serves one ``guest.Guest`` to the hypervisor actor (the guest's
kernel, trapping into Xen with hypercalls; ``migrate.actors.remote_guest`` is the
guest as that hypervisor sees it)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

from guest.guest import straddled_tick, tick_at_or_after
from hypervisor.abi import MemoryWrites, all_done, write_arrays

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
                nk = g.next_active_tick(j)
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
        return WriteWindow(k, k_to, *write_arrays(writes), ev, g.next_active_tick(k_to), steps,
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
