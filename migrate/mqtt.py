"""The three actors over a transport: a hypervisor, a guest and a toolstack process.

Mirrors the split of a real Xen host: the hypervisor holds the domain and schedules
the guest's vCPUs; the guest runs its own kernel (here: ``guest.Guest``) and traps
into the hypervisor with hypercalls; the toolstack (libxenctrl + xg_sr_save) drives
the domain through domctls. ``migrate.control.LocalSource`` wires them in one
process; this module wires the same objects through a ``migrate.bus.Transport``:

- ``serve_hypervisor``: builds a ``hypervisor.domain.Hypervisor`` on the toolstack's
  ``create`` and serves the ``DomainControl`` calls through ``LocalDomain`` itself, so
  every reply carries exactly the events ``forward_events`` would have published
  in-process (the toolstack republishes them in the same order: same report). The
  synchronous hypervisor runs in one worker thread; its guest is a ``RemoteGuest``
  whose ``run(t0, t1)`` generator serves spans between balloon activity from windows
  of writes the guest sends ahead (``go``), and runs a span where the balloon acts
  in one round trip, its hypercalls speculated (``spec_miss`` if Xen did less).
- ``serve_guest``: holds the ``Guest`` and answers ``layout``, ``go``, ``run``, ``resume``,
  ``spec_miss``, ``spec_abort``, ``close``.
- ``RemoteSource`` / ``RemoteDomain``: the toolstack's ``SourceSide``, passed to
  ``run_scenario(..., source_factory=...)``.

Batching, all exact (the same calls reach the same Hypervisor at the same virtual
times): the engine states each pass's batches before the first one
(``DomainControl.begin_pass`` with a ``PassPlan``) and times every batch with
``LinkModel.map_time`` / ``next_batch_time``. So a type query of a planned batch
carries the plan's link model, and the hypervisor also does the foreign map the saver
makes next (``write_batch`` maps the data PFNs of a batch whose types are all known)
and serves up to ``LOOKAHEAD`` batches the plan walks next, each at its time (type
query + map), events and counters split per call; the saver's calls for them are
answered without a round trip. Never past the end of a stretch of the plan (the saver
walks a hole or ends the pass there), nor past the migration's deadline (the saver
calls something else there). Every reply carries the hypervisor's counters, so
``counters`` needs no round trip. What is left (a stream write failing, Ctrl-C, a lost
peer between two such batches) finds the guest run up to a batch ahead. Calls that
cannot run the guest are served on the event loop, the others in the worker thread.

Faults: a peer that dies or stops answering makes the call raise ``PeerLost`` (a
``MigrationAborted``: the engine aborts and "resumes" the source); the hypervisor
resumes the source domain itself when the toolstack vanishes, as libxl does on a
failed save, and carries on without a guest that vanished (its vCPUs stop).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import inspect
import logging
import time
from typing import Any, Callable

import numpy as np

from guest.guest import tick_at_or_after, write_time
from hypervisor.abi import (
    PFINFO_HAS_DATA,
    PFINFO_KNOWN,
    PFINFO_LTAB_SHIFT,
    DecreaseReservation,
    HypercallResult,
    MemoryWrites,
    PopulatePhysmap,
    ShadowOp,
    XenError,
)

from .bus import (
    BrokerConfig,
    InProcessHub,
    InProcessTransport,
    MqttTransport,
    PeerLost,
    Transport,
    TransportError,
)
from .control import LocalDomain, PassPlan, SourceInfo, source_info
from .events import Event, EventBus, MigrationFinished, PhaseChanged, VerifyDone
from .link import LinkModel, page_data_record_bytes

log = logging.getLogger("xmig.mqtt")

#: Batches the hypervisor serves ahead of the saver, with the one it asks for (see
#: ``RemoteDomain``): each saves a round trip.
LOOKAHEAD = 8
#: The saver's batch size (hypervisor.abi.MAX_BATCH_SIZE, xg_sr_save.c's MAX_BATCH_SIZE).
_BATCH = 1024

#: Event batches for watchers: at most this long between flushes, or this many events.
EVENT_FLUSH_S = 0.05
EVENT_FLUSH_N = 256


class ScenarioMismatch(TransportError):
    """The guest actor runs another scenario than the toolstack."""


def scenario_digest(scenario) -> str:
    """A short fingerprint of the guest section, so the guest actor can check it runs
    the scenario the toolstack migrates."""
    g = scenario.guest
    text = g.model_dump_json() if hasattr(g, "model_dump_json") else repr(g)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _drive(coro) -> Any:
    """Run a coroutine that never awaits (LocalDomain's methods) to completion, here."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("LocalDomain awaited something: it cannot be driven synchronously")


class _Collector(EventBus):
    """The hypervisor actor's event bus: keeps what ``forward_events`` publishes for the reply."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[Event] = []

    def publish(self, event: Event) -> None:
        self.items.append(event)

    def take(self) -> list[Event]:
        out, self.items = self.items, []
        return out


# ============================================================================ guest side


#: Most ticks the guest actor writes ahead in one reply (bounds the message size).
WINDOW_TICKS = 256
#: Guests up to this many RAM pages speculate their hypercalls (one checkpoint copies
#: one bool per page).
SPEC_MAX_PAGES = 1 << 24


def _expected_result(op) -> HypercallResult | None:
    """What the guest expects of a balloon hypercall it speculates past (all extents
    done), or None if it cannot speculate past this op."""
    if isinstance(op, (DecreaseReservation, PopulatePhysmap)):
        gfns = np.asarray(op.gfns, dtype=np.int64)
        return HypercallResult(rc=int(gfns.size), done=gfns)
    return None


def _as_expected(op, result) -> bool:
    """Does the guest behave after ``result`` as after the expected one? (The balloon
    driver only looks at ``rc`` and ``done``.)"""
    exp = _expected_result(op)
    return (exp is not None and isinstance(result, HypercallResult) and int(result.rc) == exp.rc
            and np.array_equal(np.asarray(result.done, dtype=np.int64), exp.done))



class RemoteGuest:
    """The guest as the hypervisor sees it: ``run(t0, t1)`` yields the guest actor's ops.

    Used from the hypervisor's worker thread; ``call(method, args)`` blocks on an RPC.

    Between two ticks at which its balloon driver acts, the guest's writes need nothing
    from the hypervisor (ownership only changes through the balloon; workloads and
    reuse writes are keyed by seed and tick). So the guest actor answers a ``go`` that
    starts at such a tick with a window of them (``Guest.write_window``: per-write tick,
    GFN and token for ticks ``[k, K)``), and the spans in that window are served from it
    here without a round trip: the writes of a span's ticks (those of skipped ticks are
    dropped, as the guest drops them) as one ``MemoryWrites`` per stretch between
    hypercalls, stamped as ``Guest.run`` stamps it. A span reaching a tick where the
    balloon acts runs the guest's ``run`` remotely from there, one round trip per
    hypercall (writes pending from the window are flushed first, as ``run`` flushes them
    before the driver's step). The ops are exactly ``Guest.run``'s."""

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
        self._win: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None   # writes of ticks [pos, gk)

    def _rpc(self, method: str, args: dict | None = None) -> dict:
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
        self.events.extend(reply.get("ev", ()))
        if reply.get("k") is not None:
            self.gk = self.pos = int(reply["k"])
            self._win = None
            self._set_now()
        return reply

    def _set_now(self) -> None:
        if self.tick is not None:
            self.now = self.gk * self.tick

    def layout(self):
        reply = self._rpc("layout")
        if reply.get("tick") is not None:
            self.tick = float(reply["tick"])
            self._set_now()
        return reply["layout"]

    def _take(self, k: int, hi: int):
        """Writes of ticks ``[k, hi)`` from the window; those before ``k`` are dropped."""
        ticks, gfns, tokens = self._win
        a = int(np.searchsorted(ticks, k, side="left"))
        b = int(np.searchsorted(ticks, hi, side="left"))
        self._win = (ticks[b:], gfns[b:], tokens[b:])
        self.pos = hi
        if b > a:
            return ticks[a:b], gfns[a:b], tokens[a:b]
        return None

    def _pending_op(self, pending: list, t0: float) -> MemoryWrites:
        if len(pending) == 1:
            ticks, gfns, tokens = pending[0]
        else:
            ticks = np.concatenate([p[0] for p in pending])
            gfns = np.concatenate([p[1] for p in pending])
            tokens = np.concatenate([p[2] for p in pending])
        return MemoryWrites(write_time(int(ticks[-1]), self.tick, t0), gfns, tokens)

    def run(self, t0: float, t1: float):
        if self.dead is not None:
            return   # a guest that is gone runs no more (its vCPUs are stopped)
        if self.tick is None:          # (no layout yet: the plain protocol)
            yield from self._run_remote("run", t0, t1)
            return
        k = max(self.pos, tick_at_or_after(t0, self.tick))
        k_end = tick_at_or_after(t1, self.tick)
        if k_end <= k:
            return   # no guest tick in [t0, t1): Guest.run yields nothing
        pending: list = []
        while True:
            if k < self.gk:
                hi = min(k_end, self.gk)
                part = self._take(k, hi)
                if part is not None:
                    pending.append(part)
                k = hi
                if k >= k_end:
                    break
            reply = self._rpc("go", {"t0": float(t0), "t1": float(t1), "max_ticks": WINDOW_TICKS})
            if reply.get("win") is not None:
                k0, k1 = int(reply["win"][0]), int(reply["win"][1])
                if k0 != k or k1 <= k0:
                    raise TransportError(f"the guest wrote ahead from tick {k0} to {k1}, expected from {k}")
                self._win = (np.asarray(reply["ticks"]), np.asarray(reply["gfns"]), np.asarray(reply["tokens"]))
                self.gk = k1
                self._set_now()
                continue
            # The balloon driver acts at tick k: Guest.run flushes its writes first.
            if pending:
                yield self._pending_op(pending, t0)
                pending = []
            yield from self._ops(reply)
            return
        if pending:
            yield self._pending_op(pending, t0)

    def _run_remote(self, method: str, t0: float, t1: float):
        yield from self._ops(self._rpc(method, {"t0": float(t0), "t1": float(t1)}))

    def _ops(self, reply: dict):
        """The ops of a remote ``Guest.run``: speculated in one reply (see ``GuestActor._go``)
        while every hypercall does what the guest expected, else one round trip per
        hypercall."""
        if "spec" in reply:
            ops, sev = reply["spec"], reply.get("sev", [])
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
                for op in reply["ops"]:
                    result = yield op
                more = reply["more"]
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

    def __init__(self, scenario, transport: Transport):
        self.scenario = scenario
        self.transport = transport
        self.guest = None
        self.gen = None
        self.spec = None           # (t0, t1, checkpoint) of the last speculated run
        self.busy_s = 0.0
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()

    def _chunk(self, send: Any, first: bool) -> dict:
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
        return {"ops": ops, "more": more, "ev": self.guest.drain_events(),
                "k": None if more else int(self.guest._next_tick)}

    def _chunk_from(self, op) -> dict:
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
        return {"ops": ops, "more": more, "ev": self.guest.drain_events(),
                "k": None if more else int(self.guest._next_tick)}

    def _speculate(self, t0: float, t1: float) -> dict | None:
        """Run ``Guest.run(t0, t1)`` to its end, answering each hypercall as if Xen did
        all of it (``_expected_result``); the hypervisor checks each real result and
        sends ``spec_miss`` at the first that differs (``_replay``). None if some op
        cannot be speculated (the guest is then as before)."""
        g = self.guest
        ev = g.drain_events()
        cp = g.checkpoint()
        gen = g.run(t0, t1)
        ops: list = []
        try:
            op = next(gen)
            while True:
                ops.append(op)
                if isinstance(op, MemoryWrites):
                    res = None
                else:
                    res = _expected_result(op)
                    if res is None:
                        gen.close()
                        g.restore(cp)
                        g.events[:0] = ev
                        return None
                op = gen.send(res)
        except StopIteration:
            pass
        self.spec = (t0, t1, cp)
        return {"spec": ops, "ev": ev, "sev": g.drain_events(), "k": int(g._next_tick)}

    def _replay(self, results: list, n: int):
        """Back to the checkpoint, then ``Guest.run`` again through its first ``n`` ops
        with the hypervisor's real results; returns the op it yields next (None at its end)."""
        if self.spec is None:
            raise RuntimeError("no speculated run to replay")
        t0, t1, cp = self.spec
        self.spec = None
        self.guest.restore(cp)
        self.gen = self.guest.run(t0, t1)
        results = list(results)
        try:
            op = next(self.gen)
            for _ in range(int(n)):
                op = self.gen.send(None if isinstance(op, MemoryWrites) else results.pop(0))
        except StopIteration:
            self.gen = None
            return None
        return op

    def _run(self, t0: float, t1: float) -> dict:
        self.spec = None
        if self.gen is not None:
            self.gen.close()
        self.gen = self.guest.run(t0, t1)
        return self._chunk(None, True)

    def _go(self, t0: float, t1: float, max_ticks: int) -> dict:
        """A span from the guest's next tick: a window of writes ahead when its balloon
        driver has nothing to do there, else ``run`` (see ``RemoteGuest``)."""
        self.spec = None
        if self.gen is not None:
            self.gen.close()
            self.gen = None
        g = self.guest
        k = g._start(t0)
        if g.balloon.next_active_tick(k) == k or g._tick_at_or_after(t1) <= k:
            if g.nr_pages <= SPEC_MAX_PAGES:
                reply = self._speculate(t0, t1)
                if reply is not None:
                    return reply
            return self._run(t0, t1)
        k_to, _ = g.window_end(k, max_ticks)
        ticks, gfns, tokens = g.write_window(k, k_to)
        return {"win": (k, k_to), "ticks": ticks, "gfns": gfns, "tokens": tokens, "ev": g.drain_events()}

    def _resume(self, result) -> dict:
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
        if method == "open":
            return self._open(args)
        if self.guest is None and method != "bye":
            raise RuntimeError(f"guest not opened (got {method!r} before 'open')")
        if method == "layout":
            layout = await asyncio.to_thread(self.guest.layout)
            return {"layout": layout, "ev": self.guest.drain_events(), "tick": float(self.guest.tick),
                    "k": int(self.guest._next_tick)}
        # Chunks end at the next hypercall and are short: computed on the loop, which
        # saves two thread switches per round trip (the hypervisor waits anyway).
        if method == "go":
            return self._go(float(args["t0"]), float(args["t1"]), int(args.get("max_ticks", 1)))
        if method == "run":
            return self._run(float(args["t0"]), float(args["t1"]))
        if method == "resume":
            return self._resume(args.get("result"))
        if method == "spec_miss":
            return self._chunk_from(self._replay(args.get("results") or [], int(args["n"])))
        if method == "spec_abort":
            self._replay(args.get("results") or [], int(args["n"]))
            if self.gen is not None:
                self.gen.close()
                self.gen = None
            return {"ev": self.guest.drain_events(), "k": int(self.guest._next_tick)}
        if method == "close":
            if self.gen is not None:
                self.gen.close()
                self.gen = None
            return {"ev": self.guest.drain_events(), "k": int(self.guest._next_tick)}
        if method == "drain_events":
            return {"ev": self.guest.drain_events()}
        if method == "bye":
            if not self.done.done():
                self.done.set_result("released")
            return {"busy_s": self.busy_s}
        raise RuntimeError(f"unknown guest method {method!r}")

    def _open(self, args: dict) -> dict:
        from guest.guest import Guest

        digest = scenario_digest(self.scenario)
        if args.get("digest") and args["digest"] != digest:
            raise ScenarioMismatch(
                f"the guest actor runs scenario {self.scenario.name!r} but the toolstack migrates "
                f"{args.get('scenario')!r} (a different guest section): start both with the same --guest file")
        if self.guest is not None:
            raise TransportError("this guest actor already runs a guest; start a new one per migration")
        self.guest = Guest(self.scenario.guest, int(args["seed"]))
        return {"name": self.scenario.name}


async def serve_guest(scenario, transport: Transport) -> str:
    """Run the guest actor until the hypervisor releases it or goes away.
    Returns why it stopped ("released" or the PeerLost message)."""
    if not hasattr(scenario, "guest"):
        from .scenario import load_scenario

        scenario = load_scenario(scenario)
    actor = GuestActor(scenario, transport)

    def lost(peer: str, exc: PeerLost) -> None:
        if peer in ("hypervisor", "*") and not actor.done.done():
            actor.done.set_result(str(exc))

    transport.on_peer_lost(lost)
    transport.serve(actor.handle)
    await transport.claim()
    return await actor.done


# ============================================================================ hypervisor side


#: Calls cheap enough to serve on the event loop when they cannot run the guest (the
#: loop must keep beating: a long call there would look like a dead hypervisor).
_LIGHT_CALLS = frozenset({"getpageframeinfo3", "map_foreign", "counters", "max_gpfn", "suspend", "resume"})


class HypervisorActor:
    """Holds the source domain for one toolstack; serves its DomainControl calls."""

    def __init__(self, transport: Transport, *, echo: Callable[[str], None] | None = None):
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="xmig-hv")
        self.hv = None
        self.guest: RemoteGuest | None = None
        self.domain: LocalDomain | None = None
        self.bus = _Collector()
        self.owner: str | None = None
        self.released = False
        self.recovered: str | None = None
        self.echo = echo or (lambda text: None)
        self.calls = 0
        self.busy_s = 0.0
        self.done: asyncio.Future = self.loop.create_future()

    async def _in_worker(self, fn, *args):
        t0 = time.perf_counter()
        try:
            return await self.loop.run_in_executor(self.pool, fn, *args)
        finally:
            self.calls += 1
            self.busy_s += time.perf_counter() - t0

    def _guest_call(self, method: str, args: dict) -> Any:
        return self.transport.call_threadsafe(self.loop, "guest", method, args)

    # ------------------------------------------------------------------ calls

    async def handle(self, method: str, args: dict, caller: str) -> Any:
        if method == "create":
            return await self._create(args)
        if method == "release":
            return await self._release(args)
        if self.recovered is not None:
            raise PeerLost(f"hypervisor gave the source domain back ({self.recovered})", "hypervisor")
        if self.domain is None:
            raise TransportError("no domain yet: the toolstack must call create first")
        if args.get("owner") != self.owner:
            raise TransportError(f"run is driven by toolstack {self.owner}, not {args.get('owner')}")
        if method in _LIGHT_CALLS and not self._may_run_guest(self._last_time(method, args)):
            self.calls += 1
            return self._domctl(method, args, on_loop=True)   # no guest round trip: no thread hop either
        return await self._in_worker(self._domctl, method, args)

    @staticmethod
    def _last_time(method: str, args: dict) -> float:
        """The latest virtual time this call serves: a type query with a plan also maps."""
        t = float(args.get("t", 0.0))
        plan = args.get("plan") if method == "getpageframeinfo3" else None
        return t if plan is None else plan["link"].map_time(t)

    def _may_run_guest(self, t: float) -> bool:
        """Could serving up to ``t`` make the hypervisor run the guest (a guest round
        trip, which must happen off the event loop)? Conservative: True unless surely not."""
        hv, g = self.hv, self.guest
        if g is None or g.dead is not None or hv.state != "running":
            return False          # paused or suspended domains do not run the guest
        if t <= hv.now:
            return False
        return g.now is None or t >= g.now

    async def _create(self, args: dict) -> SourceInfo:
        owner = args["owner"]
        if self.owner is not None:
            if owner == self.owner:
                raise TransportError("create called twice")
            raise TransportError(f"run is already driven by toolstack {self.owner}; refused {owner}")
        self.owner = owner
        self.echo(f"toolstack {owner} creates the domain ({args['behaviour']}, seed {args['seed']})")
        try:
            await self.transport.wait_for_peer("guest", self.transport.timeout * 2)
            await self.transport.call("guest", "open", {"seed": int(args["seed"]), "digest": args.get("digest"),
                                                        "scenario": args.get("scenario")})
        except TransportError as exc:
            self.owner = None     # nothing was built: another toolstack may try again
            self.echo(f"create refused: {exc}")
            raise
        self.guest = RemoteGuest(self._guest_call)
        return await self._in_worker(self._build, args)

    def _build(self, args: dict) -> SourceInfo:
        from hypervisor.domain import Hypervisor

        layout = self.guest.layout()
        hv = Hypervisor(host_frames=int(args["host_frames"]), behaviour=args["behaviour"])
        hv.build(layout)
        hv.attach_guest(self.guest)
        self.hv = hv
        hv.advance_to(float(args["start"]))
        # What happened before the migration started is not part of it (LocalSource.setup).
        hv.drain_events()
        self.guest.drain_events()
        self.domain = LocalDomain(hv, self.guest, self.bus)
        return source_info(hv, layout)

    def _domctl(self, method: str, args: dict, on_loop: bool = False) -> dict:
        """One DomainControl call, served by LocalDomain's method of that name."""
        fn = getattr(LocalDomain, method, None)
        if method.startswith("_") or fn is None or not inspect.iscoroutinefunction(fn):
            raise TransportError(f"unknown hypervisor method {method!r}")
        kwargs = {k: v for k, v in args.items() if k not in ("owner", "plan")}
        plan = args.get("plan") if method == "getpageframeinfo3" else None
        if method == "shadow_op":
            kwargs["op"] = ShadowOp(kwargs["op"])
        reply: dict[str, Any] = {}
        try:
            reply["r"] = _drive(getattr(self.domain, method)(**kwargs))
            if plan is not None:
                self._speculate(reply, plan["link"].map_time(float(args["t"])), args["pfns"], reply["r"])
        except XenError as exc:
            reply["x"] = exc
        except PeerLost as exc:
            reply["lost"], reply["peer"] = str(exc), exc.peer
            self.echo(f"{exc}: the guest's vCPUs are stopped")
        if "ev" not in reply:           # (a speculated map already split them)
            reply["ev"] = self.bus.take()
        # LocalDomain.counters never advances time (t=0 would be a no-op if it did).
        reply["c"] = _drive(self.domain.counters(0.0))
        if plan is not None and "r" in reply:
            self._look_ahead(reply, float(args["t"]), args["pfns"], plan, on_loop)
        return reply

    @staticmethod
    def _next_time(link: LinkModel, t: float, pfns, reply: dict) -> float | None:
        """When the saver calls getpageframeinfo3 for its next batch, given this batch's
        type query at ``t`` (``reply``, with its speculated map): ``write_batch``'s
        costs through ``LinkModel.next_batch_time``. None where the saver does not get
        there that way (the batch fails, or a map error changes its record)."""
        if "r" not in reply or "x" in reply or "lost" in reply:
            return None
        n = int(np.asarray(pfns).size)
        if n == 0 or n > _BATCH:
            return None
        nibbles = (np.asarray(reply["r"], dtype=np.uint32) >> PFINFO_LTAB_SHIFT).astype(np.uint8)
        if not PFINFO_KNOWN[nibbles].all():
            return None                 # the saver fails the batch
        n_data = int(PFINFO_HAS_DATA[nibbles].sum())
        if n_data:
            spec = reply.get("spec")
            if spec is None or "r" not in spec or "x" in spec or "lost" in spec:
                return None
            if np.asarray(spec["r"][1]).any():
                return None             # a map error: the saver fails or sends XTAB instead
        return link.next_batch_time(t, page_data_record_bytes(n, n_data), n_data, n_data > 0)

    def _look_ahead(self, reply: dict, t: float, pfns, plan: dict, on_loop: bool) -> None:
        """Serve the saver's next batches now (``plan["next"]``: those its stated pass
        plan walks right after this one), each at the time the saver will ask for it
        (``_next_time``), with its map, events and counters split per call as if they
        came one by one. Not past the saver's deadline (it would abort and call
        something else there)."""
        link, deadline = plan["link"], plan.get("deadline")
        cur = reply
        for nxt in plan.get("next") or ():
            tn = self._next_time(link, t, pfns, cur)
            if tn is None:
                return
            if deadline is not None and tn - float(deadline[0]) > float(deadline[1]):
                return                  # _check_deadline aborts the save at tn instead
            if on_loop and self._may_run_guest(link.map_time(tn)):
                return                  # a guest round trip: not on the event loop
            nxt = np.asarray(nxt, dtype=np.int64)
            entry: dict[str, Any] = {"t": tn}
            try:
                entry["r"] = _drive(self.domain.getpageframeinfo3(tn, nxt))
                self._speculate(entry, link.map_time(tn), nxt, entry["r"])
            except XenError as exc:
                entry["x"] = exc
            except PeerLost as exc:
                entry["lost"], entry["peer"] = str(exc), exc.peer
                self.echo(f"{exc}: the guest's vCPUs are stopped")
            if "ev" not in entry:
                entry["ev"] = self.bus.take()
            entry["c"] = _drive(self.domain.counters(0.0))
            reply.setdefault("ahead", []).append(entry)
            t, pfns, cur = tn, nxt, entry

    def _speculate(self, reply: dict, t_map: float, pfns, types) -> None:
        """write_batch's next call, done now: map the data PFNs at ``t_map``."""
        nibbles = (np.asarray(types, dtype=np.uint32) >> PFINFO_LTAB_SHIFT).astype(np.uint8)
        if not PFINFO_KNOWN[nibbles].all():
            return                      # the saver fails the batch; it maps nothing
        data_pfns = np.asarray(pfns)[PFINFO_HAS_DATA[nibbles]]
        if data_pfns.size == 0:
            return                      # nothing to map: the saver does not call
        reply["ev"] = self.bus.take()
        spec: dict[str, Any] = {"t": t_map}
        try:
            spec["r"] = _drive(self.domain.map_foreign(t_map, data_pfns))
        except XenError as exc:
            spec["x"] = exc
        except PeerLost as exc:
            spec["lost"], spec["peer"] = str(exc), exc.peer
        spec["ev"] = self.bus.take()
        reply["spec"] = spec

    # ------------------------------------------------------------------ endings

    async def _release(self, args: dict) -> dict:
        if self.owner is None:
            return {"state": None}          # nothing was created: keep waiting for a toolstack
        if args.get("owner") != self.owner:
            raise TransportError(f"run is driven by toolstack {self.owner}, not {args.get('owner')}")
        self.released = True
        state = None if self.hv is None else self.hv.state
        bye = await self._bye_guest()
        g = self.guest
        self.echo(f"toolstack released the domain ({state}); {self.calls} calls served in {self.busy_s:.2f} s, "
                  f"{0 if g is None else g.rpcs} guest round trips took {0.0 if g is None else g.wait_s:.2f} s "
                  f"(guest busy {bye.get('busy_s', 0.0):.2f} s)")
        if not self.done.done():
            self.done.set_result("released")
        return {"state": state}

    async def _bye_guest(self) -> dict:
        if self.guest is not None and self.guest.dead is None:
            with contextlib.suppress(Exception):
                return await self.transport.call("guest", "bye") or {}
        return {}

    def _recover_sync(self) -> str:
        hv = self.hv
        if hv is None:
            return "no domain was built"
        done = []
        if getattr(hv, "log_dirty_enabled", False):
            with contextlib.suppress(XenError):
                hv.shadow_op(hv.now, ShadowOp.OFF)
                done.append("log-dirty off")
        if hv.state == "suspended":
            hv.resume(hv.now)
            done.append("source domain resumed")
        return ", ".join(done) or f"source domain left {hv.state}"

    async def recover(self, why: str) -> None:
        """The toolstack is gone mid-migration: resume the source, as libxl would."""
        if self.released or self.recovered is not None:
            return
        self.recovered = why
        outcome = await self._in_worker(self._recover_sync)
        self.echo(f"{why}: {outcome}")
        self.recovered = f"{why}: {outcome}"
        t = 0.0 if self.hv is None else float(self.hv.now)
        with contextlib.suppress(Exception):
            await self.transport.publish_events([PhaseChanged(t=t, phase="resumed", detail=self.recovered)])
        await self._bye_guest()
        if not self.done.done():
            self.done.set_result(self.recovered)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


async def serve_hypervisor(transport: Transport, *, echo: Callable[[str], None] | None = None,
                           actor_box: list | None = None) -> str:
    """Run the hypervisor actor until its toolstack releases the domain or is lost.
    Returns why it stopped. ``actor_box`` (tests) receives the HypervisorActor."""
    actor = HypervisorActor(transport, echo=echo)
    if actor_box is not None:
        actor_box.append(actor)
    tasks: list[asyncio.Task] = []

    def lost(peer: str, exc: PeerLost) -> None:
        if peer == "*" or (peer == "toolstack" and actor.owner is not None):
            tasks.append(asyncio.ensure_future(actor.recover(f"toolstack lost ({exc})")))

    async def watchdog() -> None:
        # A toolstack that is connected but silent (frozen, hung, or half-open) for
        # ``timeout`` counts as lost, as any peer does: its heartbeats come from its
        # event loop every ``heartbeat`` s while it computes, so silence means it stopped.
        # (A killed one is seen at once, by its will.)
        limit = transport.timeout
        while True:
            await asyncio.sleep(min(0.25, limit / 4))
            if actor.owner is None or actor.released:
                continue
            last = getattr(transport, "peers", None)
            seen = None if last is None else last.last_seen.get("toolstack")
            if seen is not None and time.monotonic() - seen > limit:
                await actor.recover(f"toolstack lost (not heard from for {limit:g} s)")
                return

    transport.on_peer_lost(lost)
    transport.serve(actor.handle)
    await transport.claim()
    wd = asyncio.ensure_future(watchdog())
    try:
        return await actor.done
    finally:
        wd.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        actor.close()


# ============================================================================ toolstack side


class RemoteDomain:
    """``DomainControl`` over the transport: the hypervisor actor's LocalDomain.

    The engine states each pass's plan (``begin_pass``); every type query of a planned
    batch then carries the plan's link model, so the hypervisor also does the foreign
    map the saver makes ``LinkModel.map_time`` later, and the batches the plan walks
    next (up to ``lookahead``), each at ``LinkModel.next_batch_time``: the engine's own
    timing, so those calls are answered here without a round trip."""

    def __init__(self, transport: Transport, bus: EventBus, *, lookahead: int = LOOKAHEAD,
                 speculate: bool = True):
        self.transport = transport
        self.bus = bus
        self.owner = transport.client_id
        self.lost: PeerLost | None = None
        self.speculate = speculate
        self.lookahead = int(lookahead) if speculate else 0
        self._spec: tuple[float, np.ndarray, dict] | None = None
        self._counters: dict[str, Any] | None = None
        self._plan: PassPlan | None = None
        self._cursor = (0, 0)                   # (stretch, batch) the plan walks next
        self._ahead: list[tuple[float, np.ndarray, dict]] = []
        self.rpcs = 0
        self.spec_hits = 0
        self.ahead_hits = 0

    async def _call(self, method: str, args: dict) -> dict:
        if self.lost is not None:
            raise self.lost
        args["owner"] = self.owner
        self.rpcs += 1
        try:
            reply = await self.transport.call("hypervisor", method, args)
        except PeerLost as exc:
            self.lost = exc
            raise
        if isinstance(reply, dict) and "c" in reply:
            self._counters = reply["c"]
        return reply

    def _finish(self, reply: dict) -> Any:
        for ev in reply.get("ev", ()):
            self.bus.publish(ev)
        if "lost" in reply:
            raise PeerLost(reply["lost"], reply.get("peer", ""))
        if "x" in reply:
            raise reply["x"]
        return reply.get("r")

    def _drop_ahead(self, what: str) -> None:
        """The engine stopped its pass early (a stream that failed, Ctrl-C): what was
        served for it has run the guest up to a batch ahead."""
        if self._ahead:
            log.warning("the engine stopped before %d batches served ahead (it called %s)", len(self._ahead), what)
        self._ahead = []
        self._spec = None

    async def _op(self, method: str, **args) -> Any:
        self._drop_ahead(method)
        return self._finish(await self._call(method, args))

    # -------------------------------------------------------- the saver's batches

    async def begin_pass(self, t, plan):
        self._drop_ahead("begin_pass")
        self._plan = plan if self.speculate else None
        self._cursor = (0, 0)

    def _next_batches(self, pfns: np.ndarray) -> list[np.ndarray] | None:
        """If ``pfns`` is the batch the plan walks next, move past it and return the
        ones that follow it in its stretch (up to ``lookahead``); None for a batch the
        plan does not hold (one the engine sends between two stretches)."""
        plan = self._plan
        if plan is None:
            return None
        s, k = self._cursor
        while s < len(plan.stretches) and k >= len(plan.stretches[s]):
            s, k = s + 1, 0
        if s >= len(plan.stretches) or not np.array_equal(plan.stretches[s].batch(k), pfns):
            return None
        self._cursor = (s, k + 1)
        st = plan.stretches[s]
        return [st.batch(i) for i in range(k + 1, min(len(st), k + 1 + self.lookahead))]

    def _take_spec(self, reply: dict, pfns: np.ndarray) -> None:
        spec = reply.get("spec")
        if spec is not None:
            nibbles = (np.asarray(reply["r"], dtype=np.uint32) >> PFINFO_LTAB_SHIFT).astype(np.uint8)
            self._spec = (spec["t"], pfns[PFINFO_HAS_DATA[nibbles]], spec)

    async def getpageframeinfo3(self, t, pfns):
        t = float(t)
        pfns = np.asarray(pfns, dtype=np.int64)
        nxt = self._next_batches(pfns)
        if self._spec is not None:
            raise _broke_plan(f"getpageframeinfo3 at t={t!r}", "map_foreign of the last batch's data pages")
        if self._ahead:
            t_ahead, pfns_ahead, entry = self._ahead.pop(0)
            if t_ahead != t or not np.array_equal(pfns_ahead, pfns):
                raise _broke_plan(f"getpageframeinfo3 of {pfns.size} PFNs at t={t!r}",
                                  f"the plan's next batch at t={t_ahead!r}")
            self.ahead_hits += 1
            self._counters = entry["c"]
            self._take_spec(entry, pfns)
            return self._finish(entry)
        args: dict[str, Any] = {"t": t, "pfns": pfns}
        plan = self._plan
        if plan is not None:
            args["plan"] = {"link": plan.link, "next": nxt or [], "deadline": plan.deadline}
        reply = await self._call("getpageframeinfo3", args)
        self._take_spec(reply, pfns)
        for i, entry in enumerate(reply.get("ahead", ())):
            self._ahead.append((float(entry["t"]), nxt[i], entry))
        return self._finish(reply)

    async def map_foreign(self, t, pfns):
        if self._spec is not None:
            t_spec, spfns, spec = self._spec
            self._spec = None
            if float(t) != t_spec or not np.array_equal(np.asarray(pfns), spfns):
                raise _broke_plan(f"map_foreign at t={float(t)!r}", f"the map at t={t_spec!r} (LinkModel.map_time)")
            self.spec_hits += 1
            return self._finish(spec)
        return await self._op("map_foreign", t=float(t), pfns=np.asarray(pfns, dtype=np.int64))

    # -------------------------------------------------------- the other domctls

    async def shadow_op(self, t, op, *, mode=0, pages=0, want_bitmap=True, walk_s=0.0):
        if self.lost is not None and int(op) == ShadowOp.OFF:
            return None      # the hypervisor actor turns log-dirty off itself when we go
        return await self._op("shadow_op", t=float(t), op=int(op), mode=int(mode), pages=int(pages),
                              want_bitmap=bool(want_bitmap), walk_s=float(walk_s))

    async def resume(self, t):
        if self.lost is not None:
            return None      # the hypervisor actor resumes the domain itself when we go
        return await self._op("resume", t=float(t))

    async def counters(self, t):
        # Every reply carries the counters as they stood after the call, and nothing
        # changes in the hypervisor between calls: the last reply's are the current ones.
        if self._counters is not None and self._spec is None:
            return dict(self._counters)
        if self.lost is not None:
            return {}
        return await self._op("counters", t=float(t))

    async def max_gpfn(self, t):
        return await self._op("max_gpfn", t=float(t))

    async def suspend(self, t):
        return await self._op("suspend", t=float(t))

    async def snapshot(self, t, lo=0, hi=None):
        return await self._op("snapshot", t=float(t), lo=int(lo), hi=None if hi is None else int(hi))

    async def mapped_runs(self, t, lo, hi):
        return await self._op("mapped_runs", t=float(t), lo=int(lo), hi=int(hi))


def _broke_plan(got: str, expected: str) -> RuntimeError:
    """The engine called something its stated plan and LinkModel's timing did not say:
    a bug in the engine (the hypervisor has already run the guest for the call it
    predicted), never a condition to recover from."""
    return RuntimeError(f"the precopy engine broke its stated pass plan: got {got}, expected {expected}")


class EventPublisher:
    """Bus listener that republishes every event on ``events/<actor>`` in batches."""

    def __init__(self, transport: Transport, *, interval: float = EVENT_FLUSH_S, max_batch: int = EVENT_FLUSH_N):
        self.transport = transport
        self.interval = interval
        self.max_batch = max_batch
        self._buf: list[Event] = []
        self._wake = asyncio.Event()
        self._closing = False
        self.failed: BaseException | None = None
        self.published = 0
        self._task = asyncio.ensure_future(self._loop())

    def __call__(self, ev: Event) -> None:
        self._buf.append(ev)
        if len(self._buf) >= self.max_batch:
            self._wake.set()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            batch, self._buf = self._buf, []
            if batch and self.failed is None:
                try:
                    await self.transport.publish_events(batch)
                    self.published += len(batch)
                except Exception as exc:   # watchers are best effort; the run goes on
                    self.failed = exc
            if self._closing and not self._buf:
                return

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._task), 2 * self.transport.timeout)
        if not self._task.done():
            self._task.cancel()


class RemoteSource:
    """``SourceSide`` whose domain lives in a hypervisor actor (``source_factory``)."""

    def __init__(self, transport: Transport, scenario, *, behaviour: str, seed: int, bus: EventBus,
                 host_frames: int, publish_events: bool = True, speculate: bool = True):
        self.transport = transport
        self.scenario = scenario
        self.behaviour = behaviour
        self.seed = seed
        self.bus = bus
        self.host_frames = host_frames
        self.control = RemoteDomain(transport, bus, speculate=speculate)
        self.publisher = EventPublisher(transport) if publish_events else None
        if self.publisher is not None:
            bus.subscribe(self.publisher)
        self.created = False

    async def setup(self, start: float) -> SourceInfo:
        config = getattr(self.transport, "config", None)
        await self.transport.wait_for_peer("hypervisor", getattr(config, "peer_wait", self.transport.timeout))
        info = await self.control._call("create", {
            "behaviour": self.behaviour, "host_frames": int(self.host_frames), "start": float(start),
            "seed": int(self.seed), "scenario": self.scenario.name, "digest": scenario_digest(self.scenario)})
        self.created = True
        return info

    async def close(self) -> None:
        if self.publisher is not None:
            await self.publisher.close()
        if self.created and self.control.lost is None:
            with contextlib.suppress(TransportError):
                await self.control._call("release", {})


# ============================================================================ wiring


async def mqtt_transport(config: BrokerConfig, run_id: str, actor: str) -> MqttTransport:
    t = MqttTransport(config, run_id, actor)
    await t.start()
    return t


async def run_actor(kind: str, config: BrokerConfig, run_id: str, *, scenario=None,
                    echo: Callable[[str], None] | None = None, serve: bool = False,
                    runs: int | None = None) -> str:
    """``xmig hypervisor`` / ``xmig guest``: connect, serve until done, disconnect.
    With ``serve``, again for the next run on the same connection (a fresh domain or
    guest each time: nothing of one run leaks into the next), ``runs`` times (None:
    until cancelled). Returns why the last run ended."""
    transport = await mqtt_transport(config, run_id, kind)
    done = 0
    try:
        while True:
            if echo is not None:
                waiting = "a toolstack" if kind == "hypervisor" else "the hypervisor"
                nth = f" (run {done + 1})" if serve else ""
                echo(f"{kind} on run {run_id!r} at {config.display}: waiting for {waiting}{nth}")
            transport.peers.lost_callbacks.clear()      # the last run's actor listens no more
            if kind == "hypervisor":
                why = await serve_hypervisor(transport, echo=echo)
            else:
                why = await serve_guest(scenario, transport)
            done += 1
            if transport.peers.broken is not None or not serve or (runs is not None and done >= runs):
                return why
            if echo is not None and kind == "guest" and why != "released":
                echo(why)
    finally:
        await transport.close()
        if transport.dropped and echo is not None:
            echo(f"{kind} dropped messages that were not this run's: {transport.drop_summary()}")


async def remote_run(scenario, opts=None, *, broker: BrokerConfig | None = None, run_id: str = "xmig",
                     bus: EventBus | None = None, pacer=None, transport: Transport | None = None,
                     speculate: bool = True):
    """``xmig run --broker URL --run ID``: the toolstack against remote actors.

    Claims the run id (a second toolstack is refused with ``RunRefused``), runs
    ``run_scenario`` with a ``RemoteSource``, and returns its ``RunResult``. Setup
    problems raise ``TransportError`` (``BrokerUnreachable``, ``PeerLost``...)."""
    from .runner import run_scenario

    bus = bus or EventBus()
    own = transport is None
    if own:
        if broker is None:
            raise TransportError("remote_run needs a broker or a transport")
        transport = await mqtt_transport(broker, run_id, "toolstack")
    try:
        await transport.claim()

        def factory(sc, *, behaviour, seed, bus, host_frames):
            return RemoteSource(transport, sc, behaviour=behaviour, seed=seed, bus=bus, host_frames=host_frames,
                                speculate=speculate)

        result = await run_scenario(scenario, opts, bus=bus, pacer=pacer, source_factory=factory)
        if isinstance(transport, MqttTransport):
            # Not part of the migration's result (it is the same as embedded): what the
            # broker threw at the toolstack that the run key kept out.
            result.broker = {"authenticated": transport.key is not None, "dropped": dict(transport.dropped)}
        return result
    finally:
        if own:
            await transport.close()


async def watch(transport: Transport, dashboard: Callable[[Event], None], *,
                stop_when_finished: bool = True, ready: asyncio.Event | None = None) -> str:
    """Feed the toolstack's event topic to ``dashboard`` (any bus listener) until the
    run finishes or the toolstack goes. Returns ``"completed"`` only for a completed
    migration whose destination was verified equal to the source, with no event batch
    of the toolstack missed since the first one seen; else what happened."""
    done: asyncio.Future = asyncio.get_running_loop().create_future()
    verified: list[VerifyDone] = []

    def verdict(ev: MigrationFinished) -> str:
        if ev.outcome != "completed":
            return f"{ev.outcome}: {ev.message}" if ev.message else ev.outcome
        missed = getattr(transport, "events_missed", {}).get("toolstack", 0)
        if missed:
            return f"completed, but {missed} event batches of the toolstack never arrived: no verdict to trust"
        if not verified:
            return "completed, but no destination check was seen"
        st = verified[-1].stats
        if not st.ok:
            return (f"completed, but the destination diverged: {st.missing_pages} missing, {st.stale_pages} "
                    f"stale, {st.extra_pages} extra pages")
        return "completed"

    def on_batch(items: list) -> None:
        for ev in items:
            dashboard(ev)
            if isinstance(ev, VerifyDone):
                verified.append(ev)
            if isinstance(ev, MigrationFinished) and stop_when_finished and not done.done():
                done.set_result(verdict(ev))

    def lost(peer: str, exc: PeerLost) -> None:
        if peer in ("toolstack", "*") and not done.done():
            done.set_result(f"stopped: {exc}")

    transport.on_peer_lost(lost)
    await transport.subscribe_events("toolstack", on_batch)
    if ready is not None:
        ready.set()
    return await done


def in_process_actors(*, codec: bool = True, timeout: float = 5.0, run_id: str = "local"):
    """Three InProcessTransports on one hub (tests, and the same code paths without a broker)."""
    hub = InProcessHub(codec=codec)
    return tuple(InProcessTransport(hub, run_id, a, timeout=timeout) for a in ("toolstack", "hypervisor", "guest"))


__all__ = ["RemoteSource", "RemoteDomain", "RemoteGuest", "serve_hypervisor", "serve_guest", "remote_run",
           "watch", "run_actor", "EventPublisher", "ScenarioMismatch", "scenario_digest", "in_process_actors"]
