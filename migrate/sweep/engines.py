"""Where a sweep's runs execute: local worker processes, or a Dask distributed cluster.

Both engines take the same points and yield the same rows (``worker.run_point``), in
whatever order runs finish; the session puts them in canonical order, so results never
depend on the engine, the number of workers or the order of completion.

- ``local_rows``: a ``ProcessPoolExecutor`` of long-lived worker processes (as many as
  cores by default). Each worker is given the base scenario once and then runs point
  after point in the same interpreter: no process start, no import, per run. A worker
  that dies (killed, out of memory) breaks the pool; the pool is rebuilt and the runs
  it held are resubmitted, at most ``RETRIES`` times each before the row says ``lost``.
- ``dask_rows``: the same function submitted to an existing ``dask scheduler`` with
  ``dask worker`` processes (xmig installed on each). The scheduler reschedules the runs
  of a lost worker; a run whose workers keep dying comes back as ``KilledWorker``, and
  its row says ``lost``.
"""

from __future__ import annotations

import multiprocessing
import os
import uuid
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Iterator

from migrate.sweep.results import row_from_report
from migrate.sweep.spec import Point, SweepPlan
from migrate.sweep.worker import init_worker, run_point, run_point_here

RETRIES = 2


class EngineError(RuntimeError):
    """The engine cannot start (scheduler unreachable, bad address): one line, exit 2."""


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _lost(point: Point, why: str) -> dict[str, Any]:
    return {"key": point.key(), **row_from_report(None, outcome="lost", error=why)}


# ---------------------------------------------------------------------------- local

def _pool(plan: SweepPlan, workers: int) -> ProcessPoolExecutor:
    # fork: each worker starts with xmig already imported by this process (no import
    # per worker), and the pool starts all its workers at once, before any thread of
    # ours (the progress bar's) exists.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_worker,
                               initargs=(plan.base, plan.base_source, plan.axis_names))


def local_rows(plan: SweepPlan, points: list[Point], workers: int) -> Iterator[dict[str, Any]]:
    """Run ``points`` on ``workers`` local processes; yield each row as it finishes."""
    from migrate.run import runner  # noqa: F401
    from migrate.run import report  # noqa: F401  (imported once here, inherited by every worker)

    attempts: dict[int, int] = {}
    todo = list(points)
    while todo:
        pool = _pool(plan, max(1, min(workers, len(todo))))
        broken: list[Point] = []
        try:
            futures = {pool.submit(run_point_here, p.key(), p.values): p for p in todo}
            todo = []
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    p = futures[f]
                    try:
                        row = f.result()
                    except BrokenProcessPool:
                        broken.append(p)
                        continue
                    yield row
        finally:
            _stop_pool(pool)
        for p in sorted(broken, key=lambda q: q.index):
            attempts[p.index] = attempts.get(p.index, 0) + 1
            if attempts[p.index] > RETRIES:
                yield _lost(p, f"its worker process died {attempts[p.index]} times while running it")
            else:
                todo.append(p)


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Shut the pool down without waiting for runs in flight (on Ctrl-C they are
    dropped: --resume runs them again)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(timeout=5)
    # Python 3.11's exit hook wakes the pool's manager thread through a pipe that thread
    # closes as it ends; both at once give a "Bad file descriptor" traceback at exit.
    # Once the thread has ended the hook sees the pipe closed and leaves it alone.
    manager = getattr(pool, "_executor_manager_thread", None)
    if manager is not None:
        manager.join(timeout=5)


# ---------------------------------------------------------------------------- dask

def dask_client(address: str):
    try:
        from distributed import Client
    except ImportError:
        raise EngineError("dask distributed is needed for --scheduler: install the sweep extra: "
                          "pip install 'xmig[sweep]'") from None
    if "://" not in address:
        raise EngineError(f"--scheduler: expected an address like tcp://HOST:8786, found {address!r}")
    try:
        return Client(address, timeout="5s", set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise EngineError(f"--scheduler: cannot reach the Dask scheduler at {address}: {e}") from None
    except ValueError as e:
        raise EngineError(f"--scheduler: {e}") from None


def dask_rows(plan: SweepPlan, points: list[Point], address: str) -> Iterator[dict[str, Any]]:
    """Submit ``points`` to the Dask scheduler at ``address``; yield rows as they finish."""
    from distributed import as_completed

    client = dask_client(address)
    futures: dict = {}
    try:
        base = client.scatter(plan.base, broadcast=True, hash=False)
        tag = uuid.uuid4().hex[:8]
        for p in points:
            f = client.submit(run_point, base, plan.base_source, plan.axis_names, p.key(), p.values,
                              key=f"xmig-sweep-{tag}-{p.index}", pure=False)
            futures[f] = p
        for f in as_completed(list(futures), loop=client.loop):
            p = futures[f]
            try:
                row = f.result()
            except Exception as e:  # KilledWorker, a cancelled task: the run itself never raises
                row = _lost(p, f"{type(e).__name__}: {e}")
            f.release()
            yield row
    finally:
        try:
            if futures:
                client.cancel(list(futures))
        finally:
            client.close()
