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
- a user policy: ``package.module:callable`` taking the same ``PrecopyStats``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Callable

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
    """An unknown policy name, bad parameter, or a user policy that cannot be loaded."""


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
    """A user policy: any callable ``f(stats: PrecopyStats) -> int`` (an XGS_POLICY_* value)."""

    def __init__(self, path: str, fn: Callable[[PrecopyStats], int]):
        self.name = path
        self.fn = fn

    def decide(self, stats: PrecopyStats) -> Decision:
        value = self.fn(stats)
        try:
            return Decision(int(value))
        except (TypeError, ValueError):
            raise PolicyError(
                f"policy {self.name} returned {value!r}; expected -1 (abort), 0 (continue) or 1 (stop and copy)"
            ) from None


BUILTIN_POLICIES = ("xen", "xen-legacy", "downtime")


def _load_callable(path: str) -> Callable:
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise PolicyError(
            f"unknown policy {path!r}: expected one of {', '.join(BUILTIN_POLICIES)} "
            "or a dotted path like mypkg.policies:my_policy")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # A policy file next to the user (./mypol.py) is found as a script would find it.
        cwd = os.getcwd()
        if exc.name != module_name.split(".")[0] or cwd in sys.path:
            raise PolicyError(f"cannot load policy {path!r}: {exc}") from None
        sys.path.insert(0, cwd)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc2:
            raise PolicyError(f"cannot load policy {path!r}: {exc2} (looked in the current folder "
                              "and on PYTHONPATH)") from None
    except ImportError as exc:
        raise PolicyError(f"cannot load policy {path!r}: {exc}") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise PolicyError(f"cannot load policy {path!r}: {module_name} has no callable {attr!r}")
    return fn


def make_policy(name: str, params: dict[str, Any] | None = None, *, p2m_size: int) -> Policy:
    """Build a policy from its scenario/CLI name and parameters."""
    params = dict(params or {})
    classes: dict[str, type[Policy]] = {"xen": XenPolicy, "xen-legacy": XenLegacyPolicy,
                                        "downtime": DowntimePolicy}
    cls = classes.get(name)
    if cls is None:
        fn = _load_callable(name)
        if inspect.isclass(fn):
            obj = fn(**params)
            if not callable(getattr(obj, "decide", None)):
                raise PolicyError(f"policy class {name} has no decide(stats) method")
            return obj
        if params:
            raise PolicyError(f"policy {name} is a function and takes no parameters (got {sorted(params)})")
        return CallablePolicy(name, fn)
    sig = inspect.signature(cls.__init__)
    allowed = [p for p in sig.parameters if p not in ("self", "p2m_size")]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise PolicyError(f"policy {name}: unknown parameter(s) {', '.join(unknown)}; "
                          f"expected some of {', '.join(allowed)}")
    if cls is XenLegacyPolicy:
        return XenLegacyPolicy(p2m_size, **params)
    return cls(**params)
