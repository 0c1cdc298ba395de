"""``xmig sweep --scheduler``: the same sweep on a real Dask cluster, a ``dask scheduler``
and ``dask worker`` processes started here on free loopback ports, as ``docs/sweeps.md``
tells a user to start them. The results file must be the local engine's, byte for byte, even
when a worker is killed in the middle of the sweep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from migrate.sweep.results import read_part, read_results
from tests.sweep.test_sweep import SWEEP, TINY
from tests.xmig_process import ROOT, one_error_line, xmig, xmig_env, xmig_popen

pytest.importorskip("distributed")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dask(*args: str, log: Path) -> subprocess.Popen:
    # The `dask` console script of this interpreter's environment.
    exe = Path(sys.executable).with_name("dask")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "dask"]
    return subprocess.Popen(cmd + list(args), stdout=log.open("w"), stderr=subprocess.STDOUT, env=xmig_env(),
                            cwd=ROOT, start_new_session=True)


class Cluster:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.scheduler = _dask("scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard",
                               log=tmp / "scheduler.log")
        self.workers: list[subprocess.Popen] = []

    def add_worker(self) -> subprocess.Popen:
        w = _dask("worker", self.address, "--nthreads", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1",
                  "--name", f"w{len(self.workers)}", log=self.tmp / f"worker{len(self.workers)}.log")
        self.workers.append(w)
        return w

    def wait_workers(self, n: int, timeout: float = 60) -> None:
        from distributed import Client

        with Client(self.address, timeout="30s") as c:
            c.wait_for_workers(n, timeout=timeout)

    def stop(self) -> None:
        for p in self.workers + [self.scheduler]:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)


@pytest.fixture
def cluster(tmp_path: Path):
    c = Cluster(tmp_path)
    try:
        c.add_worker()
        c.add_worker()
        c.wait_workers(2)
        yield c
    finally:
        c.stop()


@pytest.fixture
def study(tmp_path: Path) -> Path:
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    return tmp_path / "sweep.yaml"


def test_a_dask_cluster_gives_the_local_engines_file_even_when_a_worker_dies(cluster: Cluster, study: Path,
                                                                           tmp_path: Path):
    local = tmp_path / "local.parquet"
    r = xmig("sweep", study, "--out", local, "-j", "2")
    assert r.returncode == 0, r.stderr

    remote = tmp_path / "dask.parquet"
    r = xmig("sweep", study, "--out", remote, "--scheduler", cluster.address)
    assert r.returncode == 0, r.stderr
    assert remote.read_bytes() == local.read_bytes()

    # Again, killing one of the two workers once the sweep is under way: the scheduler
    # gives its runs to the other, and the file is still the same.
    again = tmp_path / "again.parquet"
    proc = xmig_popen("sweep", study, "--out", again, "--scheduler", cluster.address)
    try:
        part = Path(str(again) + ".part")
        end = time.monotonic() + 60
        while len(read_part(part)[1]) < 4:
            assert proc.poll() is None and time.monotonic() < end, proc.communicate()
            time.sleep(0.02)
        os.killpg(cluster.workers[0].pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert cluster.workers[0].wait(timeout=10) is not None
    assert proc.returncode == 0, stderr
    assert again.read_bytes() == local.read_bytes()
    assert "Remove worker" in (cluster.tmp / "scheduler.log").read_text()   # it was lost, not idle
    assert all(row["outcome"] == "completed" for row in read_results(again, "parquet"))


def test_an_unreachable_scheduler_is_one_line_and_exit_2(study: Path, tmp_path: Path):
    r = xmig("sweep", study, "--out", tmp_path / "r.csv", "--scheduler", f"tcp://127.0.0.1:{_free_port()}",
             timeout=60)
    assert r.returncode == 2
    assert "cannot reach the Dask scheduler" in one_error_line(r.stderr)
    assert not (tmp_path / "r.csv").exists()
