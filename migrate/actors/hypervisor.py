"""The hypervisor actor: holds the source domain (``hypervisor.domain.Hypervisor``)
for one toolstack and serves its ``DomainControl`` calls through ``LocalDomain``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from typing import Any, Callable

import numpy as np

from hypervisor.abi import PFINFO_HAS_DATA, ShadowOp, SpanServed, XenError
from hypervisor.tables import lookup
from guest.workloads import BootTokens

from migrate.toolstack.control import SPAN_FIRST, SPAN_MAX, LocalDomain, PassPlan, SourceInfo, Stretch, next_span_ask, source_info
from migrate.errors import PeerLost, TransportError
from migrate.events import Event, EventBus, PhaseChanged
from migrate.heap import keep_freed_arrays
from migrate.toolstack.link import LinkModel
from migrate.transport.base import Transport

from migrate.actors.remote_guest import RemoteGuest
from migrate.actors.messages import BootElided, Bye, Released, Served

log = logging.getLogger("xmig.actors")

#: Most spans one serve_span reply carries ahead, and the PFNs after which it carries
#: no more (the reply stays a few MiB, and the toolstack has work while the next is served).
AHEAD_SPANS = 64
AHEAD_PFNS = 1 << 19


def _link(link) -> LinkModel:
    if not isinstance(link, LinkModel):
        raise TransportError(f"serve_span needs a LinkModel, not a {type(link).__name__}")
    return link


def _deadline(deadline) -> tuple[float, float] | None:
    if deadline is None:
        return None
    t_start, limit = deadline
    return float(t_start), float(limit)


def _span_max(v) -> int:
    """A pass's ``span_max`` as the toolstack sends it: a cap ``span_cap`` can give."""
    if type(v) is not int or not SPAN_FIRST <= v <= SPAN_MAX:
        raise TransportError(f"serve_span: span_max must be an int in [{SPAN_FIRST}, {SPAN_MAX}]")
    return v


def _good_stretch(s) -> bool:
    if not isinstance(s, Stretch):
        return False
    if s.pfns is not None:
        return isinstance(s.pfns, np.ndarray) and s.pfns.ndim == 1 and s.pfns.dtype.kind in "iu"
    return type(s.lo) is int and type(s.hi) is int and 0 <= s.lo <= s.hi


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


#: The DomainControl calls the actor serves (through LocalDomain's method of that
#: name), and whether each is cheap enough to serve on the event loop when it cannot
#: run the guest (the loop must keep beating: a long call there would look like a dead
#: hypervisor).
DOMCTLS: dict[str, bool] = {"max_gpfn": True, "shadow_op": False, "getpageframeinfo3": True,
                            "map_foreign": True, "serve_span": False, "suspend": True, "resume": True,
                            "counters": True, "snapshot": False, "mapped_runs": False,
                            "snapshot_digests": False}


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
        self._stretch: tuple[int, Stretch] | None = None   # (id, stretch) the toolstack last sent
        self._boot_seed: int | None = None   # the seed of the guest's boot contents (BootElided)
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
        match method:
            case "create":
                return await self._create(args)
            case "release":
                return await self._release(args)
            case _ if method in DOMCTLS:
                return await self._serve(method, args)
        raise TransportError(f"unknown hypervisor method {method!r}")

    async def _serve(self, method: str, args: dict) -> Served:
        if self.recovered is not None:
            raise PeerLost(f"hypervisor gave the source domain back ({self.recovered})", "hypervisor")
        if self.domain is None:
            raise TransportError("no domain yet: the toolstack must call create first")
        if args.get("owner") != self.owner:
            raise TransportError(f"run is driven by toolstack {self.owner}, not {args.get('owner')}")
        if DOMCTLS[method] and not self._may_run_guest(self._last_time(method, args)):
            self.calls += 1
            return self._domctl(method, args, on_loop=True)   # no guest round trip: no thread hop either
        return await self._in_worker(self._domctl, method, args)

    @staticmethod
    def _last_time(method: str, args: dict) -> float:
        """The latest virtual time this call serves."""
        return float(args.get("t", 0.0))

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
        boot = getattr(layout, "ram_tokens", None)
        self._boot_seed = boot.seed if isinstance(boot, BootTokens) else None
        hv.attach_guest(self.guest)
        self.hv = hv
        hv.advance_to(float(args["start"]))
        # What happened before the migration started is not part of it (LocalSource.setup).
        hv.drain_events()
        self.guest.drain_events()
        self.domain = LocalDomain(hv, self.guest, self.bus)
        return source_info(hv, layout)

    def _domctl(self, method: str, args: dict, on_loop: bool = False) -> Served:
        """One DomainControl call, served by LocalDomain's method of that name, with the
        events it made and the counters after it (a span given by its place in a
        stretch: with the spans served after it, see ``_serve_spans``)."""
        kwargs = {k: v for k, v in args.items() if k != "owner"}
        if method == "shadow_op":
            kwargs["op"] = ShadowOp(kwargs["op"])
        elif method == "serve_span":
            plan = PassPlan(0, (), _link(kwargs["link"]), _deadline(kwargs.get("deadline")),
                            _span_max(kwargs.get("span_max", SPAN_MAX)))
            if kwargs.get("at") is not None:
                return self._serve_spans(float(kwargs["t"]), kwargs["at"], kwargs.get("stretch"), plan)
            kwargs = {"t": kwargs["t"], "pfns": kwargs["pfns"], "plan": plan}
        return self._domctl_one(method, kwargs)

    def _serve_spans(self, t: float, at, stretch, plan: PassPlan) -> Served:
        """The span of batches ``[k, k + ask)`` of the pass's stretch ``id``, and the
        spans the engine asks for after it, served now: one round trip for a run of
        spans (a balloon moving ends a span at each of its hypercalls).

        ``at`` is ``(id, k, ask)``; the toolstack sends each stretch once, with the
        first span of it (``stretch``), and the actor keeps the last. After a span
        served in part or whole for want of plan or at the guest's next hypercall
        (``SpanServed.stop`` "plan" or "hypercall"), the engine asks ``next_span_ask``
        batches next, from the time that span ended, with no call in between
        (``DomainControl``): exactly those spans are served, in ``Served.ahead``, until
        the stretch ends or the reply holds ``AHEAD_SPANS`` spans or ``AHEAD_PFNS``
        PFNs."""
        if not (isinstance(at, (tuple, list)) and len(at) == 3 and all(type(x) is int for x in at)):
            raise TransportError("serve_span: 'at' must be (stretch id, first batch, batches)")
        sid, k, ask = at
        if stretch is not None:
            if not _good_stretch(stretch):
                raise TransportError("serve_span: a bad stretch (expected PFNs, or 0 <= lo <= hi)")
            self._stretch = (sid, stretch)
        if self._stretch is None or self._stretch[0] != sid:
            raise TransportError(f"serve_span: stretch {sid} was never sent")
        stretch = self._stretch[1]
        n = len(stretch)
        if not (0 <= k and 0 < ask <= plan.span_max and k + ask <= n):
            raise TransportError(f"serve_span: batches [{k}, {k + ask}) are not in a stretch of {n}")
        first = self._domctl_one("serve_span", {"t": t, "pfns": stretch.batches(k, ask), "plan": plan})
        served, pfns = first, 0
        while served.ok and len(first.ahead) < AHEAD_SPANS:
            res = served.result
            if not isinstance(res, SpanServed) or res.batches == 0 or res.stop not in ("plan", "hypercall"):
                break
            pfns += res.pfns
            k += res.batches
            ask = min(n - k, next_span_ask(ask, res.batches, plan.span_max))
            if ask <= 0 or pfns >= AHEAD_PFNS:
                break
            served = self._domctl_one("serve_span", {"t": float(res.times[-1]), "pfns": stretch.batches(k, ask),
                                                     "plan": plan})
            served.at = (k, ask)
            first.ahead.append(served)
        return first

    def _domctl_one(self, method: str, kwargs: dict) -> Served:
        served = Served(t=float(kwargs.get("t", 0.0)))
        try:
            served.result = _drive(getattr(self.domain, method)(**kwargs))
        except XenError as exc:
            served.error = exc
        except PeerLost as exc:
            served.lost, served.peer = str(exc), exc.peer
            self.echo(f"{exc}: the guest's vCPUs are stopped")
        served.events = self.bus.take()
        res = served.result
        if method == "serve_span" and isinstance(res, SpanServed) and self._boot_seed is not None:
            dp = np.asarray(kwargs["pfns"], dtype=np.int64)[:res.pfns][lookup(PFINFO_HAS_DATA, res.nibbles)]
            res.tokens = BootElided.elide(self._boot_seed, dp, res.tokens)
        # LocalDomain.counters never advances time (t=0 would be a no-op if it did).
        served.counters = _drive(self.domain.counters(0.0))
        return served

    # ------------------------------------------------------------------ endings

    async def _release(self, args: dict) -> Released:
        if self.owner is None:
            return Released()               # nothing was created: keep waiting for a toolstack
        if args.get("owner") != self.owner:
            raise TransportError(f"run is driven by toolstack {self.owner}, not {args.get('owner')}")
        self.released = True
        state = None if self.hv is None else self.hv.state
        bye = await self._bye_guest()
        g = self.guest
        self.echo(f"toolstack released the domain ({state}); {self.calls} calls served in {self.busy_s:.2f} s, "
                  f"{0 if g is None else g.rpcs} guest round trips took {0.0 if g is None else g.wait_s:.2f} s "
                  f"(guest busy {bye.busy_s:.2f} s)")
        if not self.done.done():
            self.done.set_result("released")
        return Released(state)

    async def _bye_guest(self) -> Bye:
        if self.guest is not None and self.guest.dead is None:
            with contextlib.suppress(Exception):
                return await self.transport.call("guest", "bye")
        return Bye()

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
    keep_freed_arrays()          # the actor's process does the array work
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
