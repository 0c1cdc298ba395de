"""Precopy policies: when to stop iterating and suspend.

Mirrors libxenguest's precopy policy callback (``tools/include/xenguest.h``:
``struct precopy_stats``, ``XGS_POLICY_*``) and ``simple_precopy_policy`` in
``tools/libs/guest/xg_sr_save.c``. The engine calls the policy twice per loop
iteration, exactly where Xen's ``send_memory_live`` does.

Policies:
- ``xen``: Xen's simple_precopy_policy (stop when ``0 <= dirty_count < 50`` or at
  iteration 5); both numbers settable.
- ``xen-legacy``: the pre-v2 ``xc_domain_save`` limits (29 iterations, or 3x the
  guest's pages sent, or fewer than 50 dirty pages).
- ``downtime``: QEMU-style switch-over (``migration/migration.c``): stop once the
  pending bytes fit measured bandwidth x downtime limit (300 ms), with an iteration cap.
- a user policy: ``package.module:function`` taking the same ``PrecopyStats``. A
  scenario file is data people share, so it may name a user policy only when the user
  enabled that exact name (``--allow-policy`` or ``$XMIG_ALLOW_POLICY``); nothing is
  imported otherwise, and only a plain function is ever called, as ``f(stats)``.
"""

from __future__ import annotations

import inspect
import math
import os
import pkgutil
import re
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any, Callable, Iterable, Mapping

from hypervisor.abi import PAGE_SIZE


class Decision(IntEnum):
    """XGS_POLICY_* values (xenguest.h)."""

    ABORT = -1
    CONTINUE_PRECOPY = 0
    STOP_AND_COPY = 1


@dataclass(frozen=True, slots=True)
class PrecopyStats:
    """``struct precopy_stats``, passed by value: ``dirty_count`` -1 means unknown."""

    iteration: int
    total_written: int
    dirty_count: int


class PolicyError(ValueError):
    """An unknown policy name, bad parameter, or a user policy that cannot be loaded.
    ``field`` names the parameter at fault when there is one."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


class Policy:
    """Base: ``decide(stats)`` is the callback; ``observe_pass`` feeds measurements."""

    name = "policy"

    def decide(self, stats: PrecopyStats) -> Decision:
        raise NotImplementedError

    def observe_pass(self, bytes_sent: int, seconds: float) -> None:
        """Called after every live pass with what it sent and how long it took."""

    def params(self) -> dict[str, Any]:
        return {}


class XenPolicy(Policy):
    """simple_precopy_policy: SPP_MAX_ITERATIONS = 5, SPP_TARGET_DIRTY_COUNT = 50."""

    name = "xen"

    def __init__(self, max_iterations: int = 5, dirty_threshold: int = 50):
        if max_iterations < 1 or dirty_threshold < 0:
            raise PolicyError("xen policy: max_iterations must be >= 1 and dirty_threshold >= 0")
        self.max_iterations = int(max_iterations)
        self.dirty_threshold = int(dirty_threshold)

    def decide(self, stats: PrecopyStats) -> Decision:
        if 0 <= stats.dirty_count < self.dirty_threshold or stats.iteration >= self.max_iterations:
            return Decision.STOP_AND_COPY
        return Decision.CONTINUE_PRECOPY

    def params(self) -> dict[str, Any]:
        return {"max_iterations": self.max_iterations, "dirty_threshold": self.dirty_threshold}


class XenLegacyPolicy(Policy):
    """The legacy (pre-stream-v2) ``xc_domain_save`` limits: MAX_ITERS 29, MAX_FACTOR 3,
    and stop when fewer than 50 pages are dirty."""

    name = "xen-legacy"

    def __init__(self, p2m_size: int, max_iterations: int = 29, max_factor: float = 3.0,
                 dirty_threshold: int = 50):
        self.p2m_size = int(p2m_size)
        self.max_iterations = int(max_iterations)
        self.max_factor = float(max_factor)
        self.dirty_threshold = int(dirty_threshold)

    def decide(self, stats: PrecopyStats) -> Decision:
        if (0 <= stats.dirty_count < self.dirty_threshold
                or stats.iteration >= self.max_iterations
                or stats.total_written > self.max_factor * self.p2m_size):
            return Decision.STOP_AND_COPY
        return Decision.CONTINUE_PRECOPY

    def params(self) -> dict[str, Any]:
        return {"max_iterations": self.max_iterations, "max_factor": self.max_factor,
                "dirty_threshold": self.dirty_threshold}


class DowntimePolicy(Policy):
    """QEMU's switch-over rule: stop once ``dirty_count * page`` <= measured bandwidth x
    ``downtime_limit`` (default 300 ms, DEFAULT_MIGRATE_SET_DOWNTIME). Bandwidth is the
    last live pass's bytes over its duration. ``max_iterations`` caps a guest that never
    converges (QEMU itself has no cap; a management layer's timeout plays that role)."""

    name = "downtime"

    def __init__(self, downtime_limit: float = 0.3, max_iterations: int = 30):
        if downtime_limit <= 0 or max_iterations < 1:
            raise PolicyError("downtime policy: downtime_limit must be > 0 and max_iterations >= 1")
        self.downtime_limit = float(downtime_limit)
        self.max_iterations = int(max_iterations)
        self.bandwidth: float | None = None

    def observe_pass(self, bytes_sent: int, seconds: float) -> None:
        if seconds > 0 and bytes_sent > 0:
            self.bandwidth = bytes_sent / seconds

    def decide(self, stats: PrecopyStats) -> Decision:
        if stats.iteration >= self.max_iterations:
            return Decision.STOP_AND_COPY
        if stats.dirty_count >= 0 and self.bandwidth is not None:
            if stats.dirty_count * PAGE_SIZE <= self.bandwidth * self.downtime_limit:
                return Decision.STOP_AND_COPY
        return Decision.CONTINUE_PRECOPY

    def params(self) -> dict[str, Any]:
        return {"downtime_limit": self.downtime_limit, "max_iterations": self.max_iterations}


class CallablePolicy(Policy):
    """A user policy: a plain Python function ``f(stats: PrecopyStats) -> int`` (an
    XGS_POLICY_* value), or ``f(stats, params)`` when the scenario gives
    ``policy_params`` (one plain dict of numbers, strings and booleans)."""

    def __init__(self, path: str, fn: Callable[..., int], params: dict[str, Any] | None = None):
        self.name = path
        self.fn = fn
        self._params = dict(params or {})

    def decide(self, stats: PrecopyStats) -> Decision:
        # A user function that fails aborts the save, as a precopy_policy callback
        # returning XGS_POLICY_ABORT does: the source resumes and the report says why.
        from migrate.errors import MigrationAborted
        from migrate.toolstack.deadline import call_bounded

        try:
            value = call_bounded(lambda: self.fn(stats, dict(self._params)) if self._params else self.fn(stats),
                                 self.name)
        except MigrationAborted:
            raise
        except Exception as exc:  # a user function failing is the user's error to read
            raise MigrationAborted(f"policy {self.name} raised {type(exc).__name__}: "
                                   f"{short(str(exc))}") from exc
        try:
            return Decision(int(value))
        except (TypeError, ValueError, OverflowError):
            raise MigrationAborted(
                f"policy {self.name} returned {short(repr(value))}; expected -1 (abort), 0 (continue) "
                "or 1 (stop and copy)") from None

    def params(self) -> dict[str, Any]:
        return dict(self._params)


BUILTIN_POLICIES = ("xen", "xen-legacy", "downtime")

#: The environment variable that enables user policies (comma- or space-separated
#: ``module:function`` names), as ``--allow-policy`` does on the command line.
ALLOW_ENV = "XMIG_ALLOW_POLICY"

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def short(text: str, limit: int = 40) -> str:
    """At most ``limit`` characters of a value for an error line."""
    text = str(text).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def allowed_policies(cli: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """The user policies the user enabled: ``--allow-policy`` values plus ``$XMIG_ALLOW_POLICY``.
    A scenario file never adds to this set: it can only name what is in it."""
    env = os.environ if environ is None else environ
    names = [n for n in re.split(r"[,\s]+", env.get(ALLOW_ENV, "")) if n]
    out = set()
    for n in [*cli, *names]:
        n = n.strip()
        if not _NAME_RE.match(n):
            raise PolicyError(f"--allow-policy / ${ALLOW_ENV}: expected module:function like "
                              f"mypkg.policies:my_policy, found {short(repr(n))}")
        out.add(n)
    return frozenset(out)


def _load_function(path: str, allowed: frozenset[str]) -> Callable:
    if path not in allowed:
        hint = ("; a scenario may name your own policy function only once you enable it "
                f"with --allow-policy MODULE:FUNCTION or ${ALLOW_ENV}" if _NAME_RE.match(path) else "")
        raise PolicyError(f"unknown policy {short(repr(path))}: expected one of "
                          f"{', '.join(BUILTIN_POLICIES)}{hint}")
    try:
        fn = pkgutil.resolve_name(path)
    except (ImportError, AttributeError, ValueError) as exc:
        raise PolicyError(f"cannot load policy {path!r}: {short(str(exc), 80)}") from None
    # Only a plain Python function is called, and only as fn(stats): never a class (it
    # would be instantiated) nor a builtin such as os.system.
    if not inspect.isfunction(fn):
        raise PolicyError(f"cannot load policy {path!r}: it is not a Python function "
                          f"(found {type(fn).__name__}); a policy is def f(stats) -> int")
    return fn


def _check_user_params(name: str, fn: Callable, params: dict[str, Any]) -> dict[str, Any]:
    for key, value in params.items():
        if not isinstance(key, str) or not isinstance(value, (bool, int, float, str)):
            raise PolicyError(f"policy {name}: parameter {short(str(key))} must be a number, string "
                              f"or boolean, found {type(value).__name__}", field=str(key))
        if isinstance(value, float) and not math.isfinite(value):
            raise PolicyError(f"policy {name}: parameter {key} must be finite, found {value}", field=key)
        if isinstance(value, int) and abs(value) > _INT_MAX:
            raise PolicyError(f"policy {name}: parameter {key} is too large", field=key)
    try:
        sig = inspect.signature(fn)
        sig.bind(None, {}) if params else sig.bind(None)
    except (TypeError, ValueError):
        want = "f(stats, params)" if params else "f(stats)"
        raise PolicyError(f"policy {name}: the function cannot be called as {want}") from None
    return dict(params)


class ParamKind(StrEnum):
    """What a built-in policy's parameter holds: ``count`` an integer, ``ratio`` a
    positive number, ``duration`` a time with units (``30ms``) as the scenario takes it."""

    COUNT = "count"
    RATIO = "ratio"
    DURATION = "duration"


# Each built-in policy's parameters: (kind, lowest, highest).
_INT_MAX = 1 << 53
_COUNT, _RATIO, _DURATION = ParamKind.COUNT, ParamKind.RATIO, ParamKind.DURATION
_PARAM_SPECS: dict[str, dict[str, tuple[ParamKind, float, float]]] = {
    "xen": {"max_iterations": (_COUNT, 1, 100_000), "dirty_threshold": (_COUNT, 0, 1 << 40)},
    "xen-legacy": {"max_iterations": (_COUNT, 1, 100_000), "max_factor": (_RATIO, 0, 1e6),
                   "dirty_threshold": (_COUNT, 0, 1 << 40)},
    "downtime": {"downtime_limit": (_DURATION, 0, 3600.0), "max_iterations": (_COUNT, 1, 100_000)},
}


def _check_builtin_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    from guest.units import UnitError, parse_duration

    spec = _PARAM_SPECS[name]
    unknown = sorted(str(k) for k in params if k not in spec)
    if unknown:
        raise PolicyError(f"policy {name}: unknown parameter(s) {short(', '.join(unknown))}; "
                          f"expected some of {', '.join(spec)}", field=unknown[0])
    out: dict[str, Any] = {}
    for key, value in params.items():
        kind, lo, hi = spec[key]
        found = short(repr(value))
        if kind is ParamKind.COUNT:
            ok = isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
            if not ok:
                raise PolicyError(f"policy {name}: {key}: expected an integer from {lo} to {hi:,}, "
                                  f"found {found}", field=key)
            out[key] = int(value)
            continue
        if kind is ParamKind.DURATION:
            try:
                v = parse_duration(value)
            except UnitError:
                v = None
            what = "a duration like 300ms"
        else:
            v = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
            what = "a number"
        if v is None or not math.isfinite(v) or not lo < v <= hi:
            raise PolicyError(f"policy {name}: {key}: expected {what} above {lo:g} and at most {hi:g}, "
                              f"found {found}", field=key)
        out[key] = v
    return out


def make_policy(name: str, params: dict[str, Any] | None = None, *, p2m_size: int,
                allowed: Iterable[str] = ()) -> Policy:
    """Build a policy from its scenario/CLI name and parameters. ``allowed`` is the set of
    user policy functions the user enabled (``allowed_policies``); any other name that is
    not built in is refused without importing anything."""
    params = dict(params or {})
    classes: dict[str, type[Policy]] = {"xen": XenPolicy, "xen-legacy": XenLegacyPolicy,
                                        "downtime": DowntimePolicy}
    cls = classes.get(name)
    if cls is None:
        fn = _load_function(name, frozenset(allowed))
        return CallablePolicy(name, fn, _check_user_params(name, fn, params))
    params = _check_builtin_params(name, params)
    if cls is XenLegacyPolicy:
        return XenLegacyPolicy(p2m_size, **params)
    return cls(**params)
