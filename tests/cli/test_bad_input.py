"""Hostile input through the real ``xmig`` process: a scenario never runs code, tiny
inputs never take huge memory, outputs never destroy files, and every bad value is one
line ``xmig: error: ...`` with exit 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.xmig_process import ROOT, TTY_ENV, usage_error, xmig, xmig_popen


# --------------------------------------------------------------------------- policies: no code

@pytest.mark.parametrize("policy,params", [
    ("subprocess:Popen", "{args: 'touch MARKER', shell: true}"),
    ("logging:FileHandler", "{filename: MARKER, mode: w}"),
    ("os:system", "{command: 'touch MARKER'}"),
    ("evilpol:run", "{}"),                       # a .py beside the scenario, in the cwd
])
@pytest.mark.parametrize("command", ["run", "compare"])
def test_a_scenario_naming_code_is_refused_at_load_and_leaves_no_marker(tmp_path, policy, params, command):
    marker = tmp_path / "MARKER"
    (tmp_path / "evilpol.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef run(stats):\n    return 1\n")
    (tmp_path / "evil.yaml").write_text(
        "guest: {memory: 16MiB}\n"
        f"migration: {{start: 10ms, policy: '{policy}', policy_params: {params.replace('MARKER', str(marker))}}}\n")
    res = xmig(command, "--guest", "evil.yaml", cwd=tmp_path)
    usage_error(res, "evil.yaml: migration.policy: unknown policy", "--allow-policy")
    assert not marker.exists()


def test_an_enabled_class_or_builtin_is_still_never_called(tmp_path):
    marker = tmp_path / "MARKER"
    (tmp_path / "evil.yaml").write_text(
        "guest: {memory: 16MiB}\n"
        f"migration: {{policy: 'subprocess:Popen', policy_params: {{args: 'touch {marker}', shell: true}}}}\n")
    res = xmig("run", "--guest", "evil.yaml", "--allow-policy", "subprocess:Popen", cwd=tmp_path)
    usage_error(res, "not a Python function")
    assert not marker.exists()


def test_an_enabled_user_policy_runs(tmp_path):
    pkg = tmp_path / "lib"
    pkg.mkdir()
    (pkg / "mypol.py").write_text("def stop_now(stats, params):\n    return 1 if stats.iteration >= params['n'] else 0\n")
    (tmp_path / "ok.yaml").write_text("guest: {memory: 16MiB}\n"
                                      "migration: {start: 10ms, policy: 'mypol:stop_now', policy_params: {n: 1}}\n")
    env = {"PYTHONPATH": str(pkg)}
    res = xmig("run", "--guest", "ok.yaml", "--no-dashboard", "--report", "r.json", cwd=tmp_path, env_extra=env)
    assert res.returncode == 2 and "--allow-policy" in res.stderr
    res = xmig("run", "--guest", "ok.yaml", "--no-dashboard", "--report", "r.json", cwd=tmp_path,
               env_extra={**env, "XMIG_ALLOW_POLICY": "mypol:stop_now"})
    assert res.returncode == 0, res.stderr
    assert '"name": "mypol:stop_now"' in (tmp_path / "r.json").read_text()


# --------------------------------------------------------------------------- outputs never destroy files

SMALL = "name: small\nguest: {memory: 16MiB}\nmigration: {start: 10ms}\n"


@pytest.fixture
def small(tmp_path) -> Path:
    p = tmp_path / "small.yaml"
    p.write_text(SMALL)
    return p


def test_report_onto_a_device_node_is_refused_and_the_node_stays(tmp_path, small):
    import stat

    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, OSError) as e:
        pytest.skip(f"cannot mknod here: {e}")
    res = xmig("run", "--guest", small, "--report", node, "--no-dashboard")
    usage_error(res, "--report", "is a device node")
    assert stat.S_ISCHR(os.stat(node).st_mode)


def test_stream_or_csv_onto_a_fifo_is_refused(tmp_path, small):
    import stat

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for opt in ("--stream", "--csv"):
        res = xmig("run", "--guest", small, opt, fifo, "--no-dashboard")
        usage_error(res, opt, "is a FIFO")
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)


@pytest.mark.parametrize("args,needle", [
    (["--report", "SCEN"], "is also the scenario file"),
    (["--report", "x.json", "--csv", "x.json"], "--csv: x.json is also --report"),
    (["--report", "x.json", "--stream", "x.json"], "--stream: x.json is also --report"),
    (["--plot", "x.txt"], "--plot: x.txt: expected an image file name"),
    (["--report", "nodir/x.json"], "does not exist"),
])
def test_outputs_are_checked_before_the_run(tmp_path, small, args, needle):
    args = [str(small) if a == "SCEN" else a for a in args]
    before = small.read_text()
    res = xmig("run", "--guest", small, *args, "--no-dashboard", cwd=tmp_path)
    usage_error(res, needle)
    assert res.stdout == ""                       # nothing ran
    assert small.read_text() == before
    assert not list(tmp_path.glob(".*"))          # no hidden temporary file


def test_a_hard_link_to_the_scenario_is_the_same_file(tmp_path, small):
    os.link(small, tmp_path / "alias.json")
    res = xmig("compare", "--guest", small, "--report", tmp_path / "alias.json")
    usage_error(res, "is also the scenario file")
    assert small.read_text() == SMALL


def test_disk_full_after_a_run_keeps_the_results(full_disk, small):
    mnt = full_disk
    res = xmig("run", "--guest", small, "--report", mnt / "r.json", "--csv", mnt / "r.csv", "--no-dashboard")
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("xmig: error: --") for line in lines)
    assert "No space left on device" in lines[0] and "saved to " in lines[0]
    saved = Path(lines[0].split("saved to ")[1].split(" instead")[0])
    try:
        assert '"outcome": "completed"' in saved.read_text()
    finally:
        saved.unlink()
        Path(lines[1].split("saved to ")[1].split(" instead")[0]).unlink()
    assert sorted(p.name for p in mnt.iterdir()) == ["filler"]     # no .tmp left


def test_injected_enospc_leaves_no_tmp_and_falls_back(tmp_path, monkeypatch):
    import errno

    from migrate.run import outputs

    real_fdopen = os.fdopen

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def fdopen(fd, *a, **kw):
        fh = real_fdopen(fd, *a, **kw)
        return Full(fh) if str(tmp_path) in os.readlink(f"/proc/self/fd/{fd}") else fh

    monkeypatch.setattr(outputs.os, "fdopen", fdopen)
    target = tmp_path / "r.json"
    problems = outputs.write_results({"--report": (target, lambda p: outputs.write_json(p, {"a": 1}))})
    assert len(problems) == 1 and "No space left on device" in problems[0]
    saved = Path(problems[0].split("saved to ")[1].split(" instead")[0])
    try:
        assert saved.read_text() == '{\n  "a": 1\n}\n'
    finally:
        saved.unlink()
    assert list(tmp_path.iterdir()) == []


def test_sigterm_stops_a_run_like_ctrl_c(tmp_path):
    import signal

    scen = tmp_path / "slow.yaml"
    scen.write_text("name: slow\nguest: {memory: 256MiB, workloads: [{kind: uniform, rate: 1MiB/s}]}\n"
                    "link: {bandwidth: 50Mbit/s}\nmigration: {start: 100ms}\n")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        proc = xmig_popen("run", "--guest", scen, "--no-dashboard", "--speed", "4", "--report", tmp_path / "r.json",
                          "--stream", tmp_path / "s.xmig", cwd=tmp_path)
        try:
            assert proc.stdout.readline().startswith("xmig: scenario slow")
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130, (sig, err)
        assert '"outcome": "aborted"' in (tmp_path / "r.json").read_text()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "slow.yaml"]   # no .partial
        (tmp_path / "r.json").unlink()


# --------------------------------------------------------------------------- xmig receive

def _stream(build) -> bytes:
    from migrate.stream import CallbackSink, StreamWriter

    chunks: list[bytes] = []
    w = StreamWriter(CallbackSink(chunks.append))
    w.write_image_header()
    w.write_domain_header(4, 20)
    w.write_static_data()
    build(w)
    w.write_end()
    w.close()
    return b"".join(chunks)


def _scattered(w, records=8, per=128):
    """XALLOC entries one per 2^18-PFN P2M chunk: 8 bytes of stream, a chunk each."""
    import numpy as np

    from hypervisor.abi import PFInfo

    for r in range(records):
        pfns = (np.arange(r * per, (r + 1) * per, dtype=np.int64) + 1) << 18
        w.write_page_data(pfns, np.full(per, PFInfo.XALLOC, np.uint8), np.empty(0, np.uint64))


class Receiver:
    def __init__(self, *args, cwd=None):
        import re

        self.proc = xmig_popen("receive", "--listen", "127.0.0.1:0", *args, cwd=cwd)
        line = self.proc.stdout.readline()
        m = re.search(r":(\d+)\.$", line.strip())
        assert m, (line, self.proc.stderr.read() if self.proc.poll() is not None else "")
        self.port = int(m.group(1))

    def connect(self):
        import socket

        return socket.create_connection(("127.0.0.1", self.port))

    def finish(self, timeout=60):
        try:
            out, err = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.communicate()
        return self.proc.returncode, out, err


_RSS_PROBE = """
import resource, socket, subprocess, sys, re
data = open(sys.argv[1], 'rb').read()
p = subprocess.Popen([sys.executable, '-m', 'migrate', 'receive', '--listen', '127.0.0.1:0'],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
port = int(re.search(r':(\\d+)\\.', p.stdout.readline()).group(1))
s = socket.create_connection(('127.0.0.1', port)); s.sendall(data); s.shutdown(socket.SHUT_WR)
out, err = p.communicate(timeout=120)
print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(err)
"""


def test_an_8kb_scattered_stream_keeps_receive_under_200mb(tmp_path):
    data = _stream(_scattered)
    assert len(data) < 9000
    (tmp_path / "a.bin").write_bytes(data)
    # A fresh parent process, so RUSAGE_CHILDREN sees only this receive.
    res = subprocess.run([sys.executable, "-c", _RSS_PROBE, tmp_path / "a.bin"], capture_output=True,
                         text=True, timeout=180, cwd=ROOT)
    first, *rest = res.stdout.splitlines()
    rc, maxrss_kib = map(int, first.split())
    assert maxrss_kib < 200 * 1024, maxrss_kib
    assert rc == 1
    err = "\n".join(rest)
    assert "record #3 (PAGE_DATA) at byte 288" in err and "P2M chunks" in err


def test_a_bad_pfn_names_the_record_that_carried_it_on_stderr(tmp_path):
    import numpy as np

    from hypervisor.abi import PFInfo

    def build(w):
        w.write_page_data(np.arange(4, dtype=np.int64), np.zeros(4, np.uint8), np.arange(1, 5, dtype=np.uint64))
        w.write_page_data(np.arange(100, 104, dtype=np.int64), np.full(4, PFInfo.XALLOC, np.uint8),
                          np.empty(0, np.uint64))

    r = Receiver("--host-memory", "16KiB", "--report", tmp_path / "d.json")
    with r.connect() as s:
        s.sendall(_stream(build))
    rc, out, err = r.finish()
    assert rc == 1
    # The second PAGE_DATA carried the PFN that did not fit (the END record flushed it).
    assert "restore failed: record #4 (PAGE_DATA) at byte 16720 carried pfn 0x64" in err
    assert "restore failed" not in out
    assert '"complete": false' in (tmp_path / "d.json").read_text()


def test_timeout_bounds_the_whole_receive_not_each_read(tmp_path):
    import time

    data = _stream(lambda w: None)
    r = Receiver("--timeout", "2")
    t0 = time.monotonic()
    with r.connect() as s:
        for b in data[:12]:                    # a byte every 0.5 s: each read is quick
            try:
                s.sendall(bytes([b]))
            except (BrokenPipeError, ConnectionResetError):
                break                          # the receiver gave up and closed: what we want
            time.sleep(0.5)
            if r.proc.poll() is not None:
                break
    rc, out, err = r.finish()
    assert rc == 1 and time.monotonic() - t0 < 10
    assert "not finished within 2 s" in err


def test_a_silent_first_connection_does_not_lock_out_the_sender(tmp_path):
    data = _stream(lambda w: None)
    r = Receiver("--timeout", "30")
    with r.connect() as idle, r.connect() as real:
        real.sendall(data)
        real.shutdown(1)
        rc, out, err = r.finish()
    assert rc == 0, err
    assert "Transfer complete" in out


def test_ctrl_c_during_a_transfer_writes_the_report(tmp_path):
    import signal
    import time

    data = _stream(lambda w: None)
    r = Receiver("--report", tmp_path / "d.json")
    with r.connect() as s:
        s.sendall(data[:60])
        time.sleep(0.5)
        r.proc.send_signal(signal.SIGINT)
        rc, out, err = r.finish()
    assert rc == 130
    assert err.strip().startswith("xmig: interrupted: the receive stopped after 60 bytes")
    assert len(err.strip().splitlines()) == 1
    assert '"error": "interrupted"' in (tmp_path / "d.json").read_text()


def test_receive_exits_1_when_the_verify_pass_finds_differences(tmp_path):
    import numpy as np

    def build(w):
        w.write_page_data(np.arange(4, dtype=np.int64), np.zeros(4, np.uint8), np.arange(1, 5, dtype=np.uint64))
        w.write_verify()
        w.write_page_data(np.arange(4, dtype=np.int64), np.zeros(4, np.uint8), np.array([1, 2, 9, 4], np.uint64))

    r = Receiver()
    with r.connect() as s:
        s.sendall(_stream(build))
        s.shutdown(1)
        rc, out, err = r.finish()
    assert rc == 1
    assert "destination diverged: 1 pages differ" in err and "0x2" in err


# --------------------------------------------------------------------------- bad values: one line, exit 2

def run_inproc(*args, cwd=None):
    from typer.testing import CliRunner

    from migrate.cli.main import app

    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(app, [str(a) for a in args], env={k: None for k in TTY_ENV})
    finally:
        os.chdir(old)


def one_line_inproc(res, *needles):
    assert res.exit_code == 2, (res.exit_code, res.output)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xmig: error: "), res.stderr
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert len(lines[0]) < 400
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


_ALIAS_BOMB = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(6)) + \
    "guest: {memory: 16MiB, workloads: *g}\n"


@pytest.mark.parametrize("text,needles", [
    ("guest: {memory: 16MiB}\nmigration: {policy: downtime, policy_params: {downtime_limit: fast}}",
     ["migration.policy_params.downtime_limit", "expected a duration"]),
    ("guest: {memory: 16MiB}\nmigration: {policy: downtime, policy_params: {downtime_limit: .nan}}",
     ["migration.policy_params.downtime_limit"]),
    ("guest: {memory: 16MiB}\nmigration: {policy: downtime, policy_params: {downtime_limit: -.inf}}",
     ["migration.policy_params.downtime_limit"]),
    ("guest: {memory: 16MiB}\nmigration: {policy_params: {max_iterations: -5}}",
     ["migration.policy_params.max_iterations", "from 1"]),
    ("guest: {memory: 16MiB}\nmigration: {policy_params: {max_iterations: [1]}}",
     ["migration.policy_params.max_iterations"]),
    ("guest: {memory: 16MiB, host_memory: 8MiB}", ["guest.host_memory", "at least memory (16MiB)"]),
    ("guest: {memory: 16MiB, tick: 1ns}", ["guest.tick", "at least 10us"]),
    ("guest: {memory: 16MiB, workloads: [{kind: uniform, rate: 1e300GiB/s}]}",
     ["guest.workloads[0].rate", "at most 16TiB/s"]),
    ("guest: {memory: 16MiB}\nlink: {bandwidth: 1e300GiB/s}", ["link.bandwidth"]),
    ("guest: {memory: 16MiB}\nlink: {clean_rate: 0}", ["link.clean_rate", "above zero"]),
    ("guest: {memory: 16MiB}\nmigration: {start: 1e30s}", ["migration.start", "at most 30 days"]),
    ("guest: {memory: 16MiB}\nmigration: {start: 100000s}", ["migration.start", "2,000,000 guest ticks"]),
    ("seed: true\nguest: {memory: 16MiB}", ["seed", "an integer", "found true"]),
    ("guest: {memory: 1" + "0" * 5000 + "}", ["valid YAML values"]),
    ("guest: {memory: 1" + "0" * 400 + "}", ["guest.memory", "an integer of 401 digits"]),
    ("guest: {memory: 16MiB, workloads: " + "[" * 200 + "]" * 200 + "}", ["nested at most 64"]),
    ("a: &a [1, *a]\nguest: {memory: 16MiB}", ["self-referencing"]),
    (_ALIAS_BOMB, ["at most 100,000 YAML values"]),
    ("guest: {memory: 2000TiB}", ["guest.memory", "at most 1PiB"]),
    ("guest: {memory: 15TiB}", ["guest.memory", "a guest this machine can simulate", "32 bytes per 4 KiB page"]),
    ("guest: {memory: 512TiB}", ["guest.memory", "4294967295 4 KiB frames", "32 bits"]),
])
def test_bad_values_are_one_line_naming_file_and_field(tmp_path, text, needles):
    (tmp_path / "s.yaml").write_text(text + "\n")
    res = run_inproc("run", "--guest", "s.yaml", "--no-dashboard", cwd=tmp_path)
    one_line_inproc(res, "s.yaml: ", *needles)


def test_a_100mb_list_is_refused_before_it_is_parsed(tmp_path):
    p = tmp_path / "big.yaml"
    with open(p, "w") as fh:
        fh.write("guest: {memory: 16MiB}\ndescription: [")
        fh.write("1," * (2 << 20))
        fh.write("1]\n")
    one_line_inproc(run_inproc("run", "--guest", p), "a scenario file of at most 1 MiB")


@pytest.mark.parametrize("special", ["/dev/zero", "FIFO"])
def test_special_files_are_refused_as_scenario_trace_and_stream(tmp_path, special):
    if special == "FIFO":
        special = tmp_path / "fifo"
        os.mkfifo(special)
    one_line_inproc(run_inproc("run", "--guest", special), "expected a regular scenario file")
    (tmp_path / "t.yaml").write_text(f"guest: {{memory: 16MiB, workloads: [{{kind: trace, path: '{special}'}}]}}\n")
    one_line_inproc(run_inproc("run", "--guest", tmp_path / "t.yaml"), "guest.workloads[0].path")
    res = xmig("inspect", special, timeout=20)
    usage_error(res, "expected a regular stream file")


def _trace(tmp_path, name, content) -> Path:
    import numpy as np

    p = tmp_path / name
    if isinstance(content, dict):
        np.savez_compressed(p, **content)
    else:
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
    (tmp_path / "t.yaml").write_text(f"guest: {{memory: 16MiB, workloads: [{{kind: trace, path: {name}}}]}}\n")
    return tmp_path / "t.yaml"


@pytest.mark.parametrize("name,content,needle", [
    ("t.csv", "time_s,gfn\n0.1,zz\n", "data row 1"),
    ("t.csv", "0.1\n", "data row 1"),
    ("t.csv", "nan,1\n", "finite times"),
    ("t.csv", "-1,1\n", "times from 0"),
    ("t.csv", "1e30,1\n", "times from 0"),
    ("t.csv", "0.1,-1\n", "GFNs from 0"),
    ("t.csv", "0.1,0x" + "f" * 40 + "\n", "GFNs from 0"),
    ("t.csv", b"\xff\xfe\x00binary", "binary data"),
    ("t.npz", b"PK not a zip", "not a zip file"),
    ("t.npz", {"only": [1.0]}, "arrays time_s and gfn"),
    ("t.npz", {"time_s": [0.1, 0.2], "gfn": [1]}, "of one length"),
    ("t.npz", {"time_s": ["a"], "gfn": [1]}, "time_s as numbers"),
    ("t.npz", {"time_s": [0.1], "gfn": [1.5]}, "whole-number GFNs"),
    ("t.csv", "0.1,999999\n", "GFNs of guest RAM"),
])
def test_every_trace_content_error_is_one_line(tmp_path, name, content, needle):
    import numpy as np

    if isinstance(content, dict):
        content = {k: np.asarray(v) for k, v in content.items()}
    scen = _trace(tmp_path, name, content)
    one_line_inproc(run_inproc("run", "--guest", scen, "--no-dashboard"), needle)


def test_a_zip_bomb_trace_is_refused_from_its_headers(tmp_path):
    import io
    import zipfile

    import numpy as np

    rows = 50_000_000                                  # 400 MB of float64 zeros, ~400 KB on disk
    p = tmp_path / "bomb.npz"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("time_s.npy", "w", force_zip64=True) as fh:
            head = io.BytesIO()
            np.lib.format.write_array_header_1_0(head, {"descr": "<f8", "fortran_order": False, "shape": (rows,)})
            fh.write(head.getvalue())
            zero = bytes(1 << 20)
            for _ in range(rows * 8 >> 20):
                fh.write(zero)
        buf = io.BytesIO()
        np.save(buf, np.zeros(1, np.int64))
        zf.writestr("gfn.npy", buf.getvalue())
    assert p.stat().st_size < 2_000_000
    (tmp_path / "t.yaml").write_text("guest: {memory: 16MiB, workloads: [{kind: trace, path: bomb.npz}]}\n")
    one_line_inproc(run_inproc("run", "--guest", tmp_path / "t.yaml"), "bytes once unpacked")


def test_a_long_pre_migration_span_is_streamed_not_materialised(tmp_path):
    from migrate.run.scenario import parse_scenario
    from guest import guest as guest_mod

    sc = parse_scenario({"guest": {"memory": "16MiB", "workloads": [{"kind": "uniform", "rate": "64MiB/s"}]},
                         "migration": {"start": "200s"}})
    from guest.guest import Guest

    g = Guest(sc.guest, seed=1)
    biggest = max(op.gfns.size for op in _ops(g.run(0.0, 200.0)))
    assert biggest <= guest_mod.SPAN_WRITES + 64 * 1024 * 10        # one piece, not 200 s of writes


def _ops(gen):
    try:
        op = next(gen)
        while True:
            yield op
            op = gen.send(None)
    except StopIteration:
        return


def test_usage_errors_from_typer_are_one_line():
    for args, needle in ((["run"], "Missing option '--guest'"), (["run", "--guest", "x", "--seed", "abc"], "--seed"),
                         (["frobnicate"], "No such command")):
        res = xmig(*args)
        line = usage_error(res, needle)
        assert "--help" in line and "╭" not in res.stderr


def test_a_user_policy_that_raises_aborts_the_run_and_the_report_says_why(tmp_path):
    pkg = tmp_path / "lib"
    pkg.mkdir()
    (pkg / "badpol.py").write_text("def boom(stats):\n    raise RuntimeError('no ' * 100)\n")
    (tmp_path / "b.yaml").write_text("guest: {memory: 16MiB}\nmigration: {start: 10ms, policy: 'badpol:boom'}\n")
    res = xmig("run", "--guest", "b.yaml", "--no-dashboard", "--report", "r.json", "--allow-policy", "badpol:boom",
               cwd=tmp_path, env_extra={"PYTHONPATH": str(pkg)})
    assert res.returncode == 1 and "Traceback" not in res.stderr
    import json

    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["outcome"] == "aborted" and rep["error"].startswith("policy badpol:boom raised RuntimeError: no no")
    assert len(rep["error"]) < 120
