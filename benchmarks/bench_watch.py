"""What a watcher costs: CPU seconds of ``xmig watch`` per virtual second of a run.

Issue 23, item 8: a class of watchers on one laptop each running the teaching app must
not eat the machine. One run of ``examples/balloon.yaml`` at the app's default speed
(0.4 virtual seconds per wall second, ``playback.default_tty_speed``) over a local
Mosquitto, the hypervisor and the guest as processes, watched at once by:

- the app (``xmig watch`` in a pseudo-terminal of COLSxROWS, as a student runs it), and
- the baseline, measured in the same run: ``xmig watch --no-dashboard`` piped (progress
  lines and the summary; the same events, the same fold, no screen).

Each watcher's CPU (user + system, from ``wait4``) is divided by the run's virtual
seconds (``report.json``'s end of the migration) and by the run's wall seconds (% of
one core), gross and net of the watcher's own start-up (measured beside it: the same
command on a run that never comes). The goal: the app at most 5 % of a core while it
watches. Nothing here is a test: the numbers move with the machine's load (run it on
idle cores, and read the ratios).

    python benchmarks/bench_watch.py                 # 80x24 and 160x50
    python benchmarks/bench_watch.py --size 120x40 --speed 0.4
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from fcntl import ioctl
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.mqtt_broker import Broker, free_port, key_env, mosquitto_binary  # noqa: E402

SCENARIO = ROOT / "examples" / "balloon.yaml"
XMIG = [sys.executable, "-m", "migrate"]
DEFAULT_SPEED = 0.4
GOAL_CORE_SHARE = 0.05


class TtyProcess:
    """A process on a pseudo-terminal of ``cols`` x ``rows`` whose screen output is read
    (and dropped) as it comes, so it never blocks on a full terminal."""

    def __init__(self, cmd: list[str], cols: int, rows: int, env: dict | None = None):
        master, slave = pty.openpty()
        ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = {**(env or os.environ), "TERM": "xterm-256color", "COLUMNS": str(cols), "LINES": str(rows)}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     start_new_session=True)
        os.close(slave)
        self.master = master
        self.tail = bytearray()
        self.bytes = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.bytes += len(data)
            self.tail = (self.tail + data)[-65536:]

    def saw(self, text: bytes) -> bool:
        return text in self.tail

    def send(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait(self, timeout: float) -> tuple[int, float]:
        """(exit status, CPU seconds) of the process."""
        return wait_cpu(self.proc, timeout)


def user_env(env: dict | None = None) -> dict:
    """``env`` (default: this one) as a user's install runs: the tree's bytecode written
    and reused (an environment that forbids it compiles every module at each start)."""
    return {k: v for k, v in (env or os.environ).items() if k != "PYTHONDONTWRITEBYTECODE"}


def wait_cpu(proc: subprocess.Popen, timeout: float) -> tuple[int, float]:
    """Reap ``proc`` (killed after ``timeout`` s) and return (status, user + system CPU s)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, ru.ru_utime + ru.ru_stime
        if time.monotonic() > deadline:
            proc.kill()
        time.sleep(0.05)


def app_until_finished(tty: TtyProcess, timeout: float, done=lambda: False) -> tuple[int, float]:
    """Wait for the app's "finished" (or ``done()``), press q, return (status, CPU s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and tty.proc.poll() is None:
        if tty.saw(b"finished") or done():
            break
        time.sleep(0.1)
    time.sleep(0.3)
    tty.send(b"q")
    return tty.wait(30)


def app_cpu(cmd: list[str], size: tuple[int, int], timeout: float = 600, env: dict | None = None) -> float:
    """CPU seconds of the app (``cmd``: an ``xmig run`` without ``--no-dashboard``) in a
    pseudo-terminal of ``size``, from its start until it says "finished" and q quits it."""
    tty = TtyProcess(cmd, *size, env=env)
    status, cpu = app_until_finished(tty, timeout)
    if status not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd[2:])} in the app exited {status}")
    return cpu


def startup_cpu(broker: Broker, key: Path, *, size: tuple[int, int], run_id: str) -> tuple[float, float]:
    """CPU seconds each watcher spends to start and sit on a run that never comes (the
    app: up and drawn, then q; the plain one: subscribed, then Ctrl-C): what the
    figures of a run include once, however long the run."""
    common = ["--broker", broker.url, "--run", run_id, "--key-file", str(key)]
    env = user_env(key_env())
    plain = subprocess.Popen(XMIG + ["watch", *common, "--no-dashboard"], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env=env)
    plain.stderr.readline()
    time.sleep(1.0)
    plain.send_signal(2)
    app = TtyProcess(XMIG + ["watch", *common], *size, env=env)
    time.sleep(3.0)
    app.send(b"q")
    return app.wait(30)[1], wait_cpu(plain, 30)[1]


def watch_case(broker: Broker, key: Path, tmp: Path, *, size: tuple[int, int], speed: float, run_id: str) -> dict:
    common = ["--broker", broker.url, "--run", run_id, "--key-file", str(key)]
    env = user_env(key_env())
    actors = [subprocess.Popen(XMIG + ["hypervisor", *common], cwd=ROOT, stderr=subprocess.PIPE, text=True, env=env),
              subprocess.Popen(XMIG + ["guest", *common, "--guest", str(SCENARIO)], cwd=ROOT,
                               stderr=subprocess.PIPE, text=True, env=env)]
    for p in actors:
        p.stderr.readline()                      # "... waiting for ..."
    plain = subprocess.Popen(XMIG + ["watch", *common, "--no-dashboard"], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env=env)
    app = TtyProcess(XMIG + ["watch", *common], *size, env=env)
    plain.stderr.readline()                      # "watching run ..."
    time.sleep(2.0)                              # the app is up (its import and first frame)
    report = tmp / f"{run_id}.json"
    t0 = time.monotonic()
    run = subprocess.run(XMIG + ["run", *common, "--guest", str(SCENARIO), "--speed", f"{speed:g}",
                                 "--no-dashboard", "--report", str(report)], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
    wall = time.monotonic() - t0
    if run.returncode not in (0, 1):
        raise RuntimeError(f"xmig run --broker failed: {run.stderr.strip()}")
    _, plain_cpu = wait_cpu(plain, 60)
    _, app_cpu = app_until_finished(app, 60)
    for p in actors:
        wait_cpu(p, 30)
    rep = json.loads(report.read_text())
    virtual = float(rep["timeline"]["end_s"]) - float(rep["timeline"].get("start_s", 0.0))
    return {"size": f"{size[0]}x{size[1]}", "speed": speed, "wall": wall, "virtual": virtual,
            "app_cpu": app_cpu, "plain_cpu": plain_cpu, "app_share": app_cpu / wall, "plain_share": plain_cpu / wall,
            "ratio": app_cpu / plain_cpu if plain_cpu else float("inf"), "app_bytes": app.bytes}


def run(sizes=((80, 24), (160, 50)), speed: float = DEFAULT_SPEED) -> list[dict]:
    binary = mosquitto_binary()
    if binary is None:
        raise SystemExit("bench_watch needs mosquitto (apt-get install -y mosquitto)")
    rows = []
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        key = tmp / "run.key"
        subprocess.run(XMIG + ["keygen", "--out", str(key)], cwd=ROOT, check=True)
        broker = Broker(binary, free_port(), tmp / "mosquitto.conf", tmp / "mosquitto.log").start()
        try:
            for i, size in enumerate(sizes):
                row = watch_case(broker, key, tmp, size=size, speed=speed, run_id=f"bench-watch-{i}")
                row["app_start"], row["plain_start"] = startup_cpu(broker, key, size=size, run_id=f"bench-idle-{i}")
                for who in ("app", "plain"):
                    row[f"{who}_net_share"] = (row[f"{who}_cpu"] - row[f"{who}_start"]) / row["wall"]
                rows.append(row)
        finally:
            broker.kill()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", action="append", help="COLSxROWS of the app's terminal (repeatable)")
    ap.add_argument("--speed", type=float, default=DEFAULT_SPEED)
    args = ap.parse_args(argv)
    sizes = [tuple(int(x) for x in s.split("x")) for s in args.size] if args.size else [(80, 24), (160, 50)]
    rows = run(sizes, args.speed)
    print(f"load average: {os.getloadavg()[0]:.1f}")
    print(f"{'watcher (balloon.yaml, speed ' + format(args.speed, 'g') + ')':34s} {'CPU s':>7s} "
          f"{'CPU s/virt s':>13s} {'% of a core':>12s} {'start-up CPU s':>15s} {'% net of it':>12s}")
    rc = 0
    for r in rows:
        for label, who in ((f"app at {r['size']}", "app"), ("baseline: --no-dashboard", "plain")):
            cpu = r[f"{who}_cpu"]
            print(f"{label:34s} {cpu:7.2f} {cpu / r['virtual']:13.3f} {r[f'{who}_share'] * 100:11.1f}% "
                  f"{r[f'{who}_start']:15.2f} {r[f'{who}_net_share'] * 100:11.1f}%")
        ok = r["app_net_share"] <= GOAL_CORE_SHARE
        print(f"{'':34s} app / baseline {r['ratio']:.2f}x; run {r['wall']:.1f} s wall, {r['virtual']:.2f} s virtual;"
              f" goal <= {GOAL_CORE_SHARE:.0%} of a core while it watches: {'met' if ok else 'MISSED'}")
        rc |= 0 if ok else 1
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
