"""A user policy's call, bounded in time and never able to end the program.

Xen's ``precopy_policy`` callback (``tools/include/xenguest.h``, called from
``send_memory_live`` in ``tools/libs/guest/xg_sr_save.c``) runs inside the save with the
domain's log-dirty mode on: a callback that never returns holds the migration, and the
guest, hostage. xmig calls a user's policy function (``policy.CallablePolicy``) through
``call_bounded``, which turns every way such a function can fail to answer into a
``MigrationAborted`` with a reason, so the save aborts as on ``XGS_POLICY_ABORT`` (the
source domain resumes, the report says why):

- it runs past ``XMIG_POLICY_DEADLINE`` seconds (default ``DEFAULT_DEADLINE``);
- it calls ``sys.exit()`` (a ``SystemExit`` would otherwise end xmig with that code and
  no verdict);
- Ctrl-C, SIGTERM or SIGHUP arrives while it runs (the signal then goes on to whatever
  handled it before, so the run reports an interruption as it always does).

The deadline is an interval timer (SIGALRM), so it holds only where signals are
delivered: the main thread, which is where ``xmig run``, ``compare``, the actors and the
local workers of a sweep call policies. Elsewhere (a Dask worker's thread) only the
``SystemExit`` guard applies.
"""

from __future__ import annotations

import math
import os
import signal
import threading
from typing import Any, Callable

#: Environment variable: seconds a user policy may take per call.
DEADLINE_ENV = "XMIG_POLICY_DEADLINE"
#: Seconds a user policy may take per call unless ``XMIG_POLICY_DEADLINE`` says otherwise.
DEFAULT_DEADLINE = 10.0

_STOPS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


class _Late(BaseException):
    """Raised inside the policy when its time is up (BaseException: a policy's own
    ``except Exception`` must not swallow it)."""


class _Stopped(BaseException):
    """Raised inside the policy when a stop signal arrives."""


def deadline(environ: dict | None = None) -> float:
    """The per-call deadline in seconds: ``XMIG_POLICY_DEADLINE`` when it is a positive,
    finite number, else ``DEFAULT_DEADLINE``."""
    env = os.environ if environ is None else environ
    try:
        value = float(env.get(DEADLINE_ENV, ""))
    except ValueError:
        return DEFAULT_DEADLINE
    return value if math.isfinite(value) and value > 0 else DEFAULT_DEADLINE


def call_bounded(fn: Callable[[], Any], name: str) -> Any:
    """``fn()``, or ``MigrationAborted`` naming policy ``name`` and why it gave no answer."""
    from migrate.errors import MigrationAborted

    timed = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    if not timed:
        try:
            return fn()
        except SystemExit as exc:
            raise MigrationAborted(_exited(name, exc)) from None
    seconds = deadline()
    caught: list[int] = []

    def late(signum, frame):
        raise _Late

    def stop(signum, frame):
        caught.append(signum)
        raise _Stopped

    before = {signal.SIGALRM: signal.signal(signal.SIGALRM, late)}
    for sig in _STOPS:
        old = signal.getsignal(sig)
        if old is not signal.SIG_IGN and old is not None:
            before[sig] = signal.signal(sig, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn()
    except _Late:
        raise MigrationAborted(f"policy {name} gave no answer within {seconds:g} s (each call may take "
                               f"at most {DEADLINE_ENV}={seconds:g} seconds)") from None
    except _Stopped:
        raise MigrationAborted(f"policy {name} was interrupted by {signal.Signals(caught[0]).name} "
                               "before it answered") from None
    except SystemExit as exc:
        raise MigrationAborted(_exited(name, exc)) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, old in before.items():
            signal.signal(sig, old)
        for sig in caught[:1]:
            signal.raise_signal(sig)      # on to the handler that was there: the run stops as usual


def _exited(name: str, exc: SystemExit) -> str:
    code = exc.code if isinstance(exc.code, (int, type(None))) else "..."
    return (f"policy {name} called sys.exit({'' if code is None else code}) instead of returning -1 (abort), "
            "0 (continue) or 1 (stop and copy)")


__all__ = ["DEADLINE_ENV", "DEFAULT_DEADLINE", "call_bounded", "deadline"]
