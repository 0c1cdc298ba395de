"""The benchmark suite: one command, one table.

    python benchmarks/run.py            # everything (several minutes; the 256 GiB and 1 TiB guests are the long ones)
    python benchmarks/run.py --quick    # skips the 256 GiB and 1 TiB cases and the MQTT comparison
    python benchmarks/run.py --json out.json

Each migration case runs in its own process, so its peak RSS is its own. For every
case the table gives wall time, peak RSS, simulated pages per wall second, and a ratio
against a baseline measured in the same run:

- start-up: ``xmig --help`` and ``xmig run --no-dashboard`` of a 16 MiB guest, each the
  whole process's wall (median of three), against ``python -c pass`` (the interpreter's
  own start-up) measured beside them;

- micro-benchmarks (log-dirty mark and CLEAN, stream writer) against the numpy floors
  of their own scripts (``bench_logdirty.py``, ``bench_stream.py``, ``bench_guest.py``);
- whole migrations against a *numpy floor*: the minimum array work the case needs:
  allocate the source's and the destination's content tokens for the populated pages
  and copy, pass by pass, as many tokens as the migration sent. The ratio says how
  much the emulator costs over just moving the data it moves;
- every whole migration twice: the library path (``run_scenario`` in a child process,
  timed inside it) and the command line a user runs (``xmig run --no-dashboard
  --report FILE`` as a process, progress lines piped, timed from outside). The command
  line's row gives its gross wall and, net of start-up (the 16 MiB run's process less
  its run), its CPU seconds and wall against the library path's; it is flagged ``CLI
  SLOWER`` when its net CPU seconds are more than 1.2x the library path's (CPU seconds,
  because other work on the cores moves them far less than wall time); its ratio to
  the floor is of those net CPU seconds;
- ``balloon.yaml`` over MQTT against the same run embedded (``bench_mqtt.py``);
- the teaching app flat out (``xmig run --speed max`` in a pseudo-terminal at 80x24
  and 160x50) against ``xmig run --no-dashboard``, CPU seconds of each process
  (``balloon.yaml`` and a 16 GiB variant; goal, issue 22: at most 1.5x; ``--app``
  runs only these).

Goals (issue 22): a 16 MiB ``xmig run --no-dashboard`` under 0.6 s and ``xmig --help``
under 0.3 s of process wall; through the command line the 64 GiB guest within 10x of
its numpy floor (net of start-up), 1 TiB under 60 s and 12 GiB peak RSS, and the command
line within 1.2x of the library path at 1, 64 and 256 GiB.
Goals (issue 7): sparse 16 TiB guest and 256 GiB guest each under 60 s wall; the
256 GiB guest under 4 GiB peak RSS; the size sweep linear or better in populated pages.
Issue 12: a 1 TiB guest (the same hot-set writer + balloon) under 60 s wall and under
12 GiB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GIB_PAGES = 1 << 18


def sized_scenario(gib: int) -> dict:
    """A guest of ``gib`` GiB with a hot-set writer and a balloon that gives back 1/16
    of RAM early in pass 1 and takes it back later; 40 Gbit/s link; stream counted."""
    return {
        "name": f"hotset-{gib}g",
        "seed": 1,
        "guest": {
            "memory": f"{gib}GiB",
            "workloads": [{"kind": "hotset", "rate": f"{max(8, gib * 2)}MiB/s",
                           "hot_fraction": 0.02, "hot_share": 0.9}],
            "balloon": {"schedule": [{"at": "2s", "target": f"-{gib * 64}MiB"},
                                     {"at": f"{2 + gib * 0.2:.1f}s", "target": f"+{gib * 64}MiB"}]},
        },
        "link": {"bandwidth": "40Gbit/s"},
        "migration": {"start": "1s"},
    }


def _case_child(spec: str) -> None:
    """Child process: run one migration, print one JSON line with what it measured."""
    import asyncio

    from migrate.run.runner import run_scenario
    from migrate.run.scenario import load_scenario, parse_scenario

    if spec.startswith("gib:"):
        scenario = parse_scenario(sized_scenario(int(spec[4:])))
    else:
        scenario = load_scenario(ROOT / spec)   # (an absolute path stays itself)
    t0, c0 = time.perf_counter(), time.process_time()
    res = asyncio.run(run_scenario(scenario))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss = peak_rss_mib()
    rounds = [r for r in res.save.rounds if r.phase != "verify"]
    print(json.dumps({
        "wall": wall, "cpu": cpu, "rss_mib": rss, "outcome": res.save.outcome,
        "verify_ok": bool(res.verify and res.verify.ok),
        "p2m_size": res.save.p2m_size, "populated": res.guest["ram_pages_at_start"],
        "pfns_walked": sum(r.pfns_walked for r in rounds),
        "pages_sent": [r.pages_sent for r in rounds],
        "stream_bytes": res.save.totals.bytes,
    }))


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM). ru_maxrss would do, but Linux carries it across
    exec, so a child started from a big parent would report the parent's peak."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def numpy_floor(populated: int, pages_sent: list[int]) -> float:
    """The minimum array work: token arrays for both sides, then one gather/scatter of
    the tokens each pass sent."""
    import numpy as np

    t0 = time.perf_counter()
    src = np.arange(1, populated + 1, dtype=np.uint64)
    dst = np.zeros(populated, dtype=np.uint64)
    for n in pages_sent:
        idx = np.arange(min(n, populated), dtype=np.int64)
        dst[idx] = src[idx]
    return time.perf_counter() - t0


def floor_in_child(populated: int, pages_sent: list[int]) -> float:
    """``numpy_floor`` (best of three) in a fresh process: this one stays small, since a
    process started from a parent that once held these arrays would report the parent's
    peak RSS as its own (Linux keeps ru_maxrss across fork and exec)."""
    spec = json.dumps([populated, pages_sent])
    proc = subprocess.run([sys.executable, __file__, "--floor", spec], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    return float(proc.stdout.strip().splitlines()[-1])


def run_case(name: str, spec: str, timeout: float = 900) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        return {"name": name, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    floor = floor_in_child(data["populated"], data["pages_sent"])
    data.update(name=name, baseline_seconds=floor, ratio=data["wall"] / floor, cpu_ratio=data["cpu"] / floor,
                pages_per_s=data["pfns_walked"] / data["wall"])
    return data


#: The command line's wall over the library path's, net of start-up, above which a row is flagged.
CLI_FLAG_RATIO = 1.2


def _xmig() -> list[str]:
    """The ``xmig`` command of the tree this file is in (``python -m migrate`` run from
    its root: the same ``main()`` the installed console script calls)."""
    return [sys.executable, "-m", "migrate"]


def timed_process(cmd: list[str], timeout: float = 1800, env: dict | None = None) -> tuple[float, float, int, float]:
    """Run ``cmd`` (stdout and stderr to a file, as when piped):
    (wall seconds, peak RSS MiB of that process, exit status, its CPU seconds). The CPU
    seconds (user + system) move much less than the wall when other work shares the
    cores."""
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            raise
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024, proc.returncode, usage.ru_utime + usage.ru_stime


def scenario_file(d: Path, gib: float) -> Path:
    """``sized_scenario`` as a YAML file (a 16 MiB guest for ``gib=1/64``)."""
    import yaml

    if gib >= 1:
        data = sized_scenario(int(gib))
    else:   # the start-up case: 16 MiB, its balloon moving 1 MiB
        data = sized_scenario(1)
        data.update(name="hotset-16m")
        data["guest"].update(memory="16MiB", balloon={"schedule": [{"at": "2s", "target": "-1MiB"},
                                                                     {"at": "2.2s", "target": "+1MiB"}]})
    path = d / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def cli_case(name: str, path: Path, lib: dict, startup: tuple[float, float], timeout: float = 1800) -> dict:
    """``xmig run --no-dashboard --report R`` of ``path`` as a process, beside the
    library path's row ``lib`` of the same scenario. ``startup``: (wall, CPU) seconds a
    process spends besides its run (see ``startup_cases``); the comparison with the
    library path is made net of it, on CPU seconds (which other work on the cores
    disturbs far less than wall time) and on wall time."""
    report = path.with_suffix(".report.json")
    wall, rss, rc, cpu = timed_process(_xmig() + ["run", "--guest", str(path), "--no-dashboard", "--report", str(report)],
                                  timeout)
    if rc not in (0, 1) or not report.exists():
        return {"name": name, "error": f"xmig run exited {rc}"}
    rep = json.loads(report.read_text())
    row = {"name": name, "wall": wall, "rss_mib": rss, "verify_ok": bool(rep.get("verify") and rep["verify"]["ok"]),
           "net_wall": max(wall - startup[0], 1e-9), "cpu": cpu, "net_cpu": max(cpu - startup[1], 1e-9)}
    if "error" not in lib:
        row.update(baseline_seconds=lib["baseline_seconds"], ratio=row["net_cpu"] / lib["baseline_seconds"],
                   pages_per_s=lib["pfns_walked"] / wall, lib_wall=lib["wall"], lib_cpu=lib["cpu"],
                   vs_lib=row["net_cpu"] / lib["cpu"], wall_vs_lib=row["net_wall"] / lib["wall"],
                   gross_vs_lib=wall / lib["wall"])
    return row


def startup_cases(d: Path, repeats: int = 3) -> tuple[list[dict], tuple[float, float]]:
    """Process start-up, medians of ``repeats``: ``python -c pass``, ``xmig --help``, and a
    16 MiB ``xmig run --no-dashboard`` (with its library wall, to give the start-up the
    command-line rows are net of)."""
    small = scenario_file(d, 1 / 64)

    def med(cmd: list[str]) -> tuple[float, float]:
        runs = [timed_process(cmd) for _ in range(repeats)]
        return statistics.median(r[0] for r in runs), statistics.median(r[3] for r in runs)

    floor, floor_cpu = med([sys.executable, "-c", "pass"])
    helps, helps_cpu = med(_xmig() + ["--help"])
    run16, run16_cpu = med(_xmig() + ["run", "--guest", str(small), "--no-dashboard"])
    libs = [run_case("lib", str(small)) for _ in range(repeats)]
    lib16, lib16_cpu = statistics.median(r["wall"] for r in libs), statistics.median(r["cpu"] for r in libs)
    rows = [{"name": "start-up: xmig --help", "wall": helps, "baseline_seconds": floor, "ratio": helps / floor,
             "cpu": helps_cpu, "goal": f"< 0.3 s wall; CPU {helps_cpu:.3f} s = {helps_cpu / floor_cpu:.1f}x "
                                       f"python -c pass's {floor_cpu:.3f} s"},
            {"name": "start-up: xmig run, 16 MiB guest", "wall": run16, "baseline_seconds": floor,
             "ratio": run16 / floor, "cpu": run16_cpu,
             "goal": f"< 0.6 s wall; CPU {run16_cpu:.3f} s = {run16_cpu / floor_cpu:.1f}x python -c pass's; "
                     f"the run itself {lib16:.3f} s"}]
    return rows, (max(run16 - lib16, 0.0), max(run16_cpu - lib16_cpu, 0.0))


def micro_cases() -> list[dict]:
    from benchmarks import bench_guest, bench_logdirty, bench_stream

    rows = []
    for r in bench_logdirty.run() + bench_guest.run():
        rows.append({"name": r["name"], "wall": r["seconds"], "baseline_seconds": r["baseline_seconds"],
                     "ratio": r["ratio"], "goal": f"<= {r['goal_ratio']:.0f}x floor",
                     "pages_per_s": r["n"] / r["seconds"]})
    s = {r["name"]: r for r in bench_stream.run(mib=256, repeats=3)}
    w, c, k = s["stream_writer_file"], s["memcpy_np_copyto"], s["os_write_ceiling"]
    rows.append({"name": "stream writer to a file (256 MiB)", "wall": w["seconds"],
                 "baseline_seconds": c["seconds"], "ratio": w["seconds"] / c["seconds"],
                 "goal": f"<= 3.3x memcpy time (>= 0.3x its speed); raw os.write of the same bytes: "
                         f"{k['seconds'] / c['seconds']:.1f}x",
                 "pages_per_s": (w["mib"] << 8) / w["seconds"]})
    return rows


def mqtt_cases() -> list[dict]:
    from benchmarks import bench_mqtt

    try:
        rows = bench_mqtt.run(repeats=2)
    except SystemExit as exc:
        return [{"name": "MQTT vs embedded", "error": str(exc)}]
    out = []
    for rem in (r for r in rows if "over MQTT" in r["name"]):
        label = rem["name"].split(":")[0]
        emb = next(r for r in rows if r["name"] == f"{label}: embedded")
        out.append({"name": f"{label} over MQTT vs embedded", "wall": rem["seconds"],
                    "baseline_seconds": emb["seconds"], "ratio": rem["ratio"],
                    "goal": f"<= {rem['goal_ratio']:.0f}x embedded",
                    "note": "same report" if rem.get("same_report") else "REPORTS DIFFER"})
    return out


#: Issue 22: the app at ``--speed max`` costs at most this many times a ``--no-dashboard`` run.
APP_GOAL_RATIO = 1.5


def app_cases(d: Path, sizes=((80, 24), (160, 50)), repeats: int = 2) -> list[dict]:
    """The teaching app flat out (``xmig run --speed max`` in a pseudo-terminal, q once
    it says finished) against ``xmig run --no-dashboard`` of the same scenario, CPU
    seconds of each whole process (best of ``repeats``): ``balloon.yaml`` and the same
    scenario with a 16 GiB guest."""
    import yaml

    from benchmarks.bench_watch import app_cpu, user_env

    big = yaml.safe_load((ROOT / "examples" / "balloon.yaml").read_text())
    big["name"], big["guest"]["memory"] = "balloon-16g", "16GiB"
    big_path = d / "balloon-16g.yaml"
    big_path.write_text(json.dumps(big))                # JSON is YAML
    rows = []
    env = user_env()         # the tree's bytecode written and reused, as an install has it
    app_cpu(_xmig() + ["run", "--guest", str(big_path), "--speed", "max"], sizes[0], env=env)   # writes it
    for label, path in (("balloon.yaml", ROOT / "examples" / "balloon.yaml"), ("balloon.yaml, 16 GiB", big_path)):
        plain = min(timed_process(_xmig() + ["run", "--guest", str(path), "--no-dashboard"], env=env)[3]
                    for _ in range(repeats))
        for cols, lines in sizes:
            cpu = min(app_cpu(_xmig() + ["run", "--guest", str(path), "--speed", "max"], (cols, lines), env=env)
                      for _ in range(repeats))
            rows.append({"name": f"app --speed max, {label}, {cols}x{lines}", "wall": cpu, "cpu": cpu,
                         "plain_cpu": plain, "app_ratio": cpu / plain,
                         "note": f"CPU {cpu:.3f} s = {cpu / plain:.2f}x --no-dashboard's {plain:.3f} s "
                                 f"(goal <= {APP_GOAL_RATIO}x: {'met' if cpu / plain <= APP_GOAL_RATIO else 'MISSED'})"})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--floor", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="skip the 256 GiB and 1 TiB cases and MQTT")
    ap.add_argument("--sizes", help="only these hot-set sizes in GiB, e.g. 1,64 (no micro, sparse or MQTT cases)")
    ap.add_argument("--no-cli", action="store_true", help="the library path only (no xmig processes)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    ap.add_argument("--app", action="store_true", help="only the app against --no-dashboard (issue 22)")
    args = ap.parse_args(argv)
    if args.child:
        _case_child(args.child)
        return 0
    if args.floor:
        populated, sent = json.loads(args.floor)
        print(min(numpy_floor(populated, sent) for _ in range(3)))
        return 0

    rows: list[dict] = []

    def show(row: dict) -> None:
        rows.append(row)
        if "error" in row:
            print(f"{row['name']:<44} ERROR: {row['error']}", flush=True)
            return
        rss = f"{row['rss_mib']:8.0f}" if "rss_mib" in row else f"{'-':>8}"
        pps = f"{row['pages_per_s']:12.3g}" if "pages_per_s" in row else f"{'-':>12}"
        extra = row.get("goal", "") or row.get("note", "")
        if "verify_ok" in row:
            extra = ("verified" if row["verify_ok"] else "NOT VERIFIED") + (f"; {row['goal']}" if row.get("goal") else "")
        if "cpu_ratio" in row:
            extra += f"; CPU {row['cpu']:.3f} s = {row['cpu_ratio']:.1f}x floor"
        if "vs_lib" in row:
            flag = "  CLI SLOWER" if row["vs_lib"] > CLI_FLAG_RATIO else ""
            extra += (f"; net of start-up: CPU {row['net_cpu']:.3f} s = {row['vs_lib']:.2f}x the library path's "
                      f"{row['lib_cpu']:.3f} s, wall {row['wall_vs_lib']:.2f}x (gross wall {row['gross_vs_lib']:.2f}x)"
                      f"{flag}")
        base = f"{row['baseline_seconds']:10.4f}" if "baseline_seconds" in row else f"{'-':>10}"
        ratio = f"{row['ratio']:8.1f}" if "ratio" in row else f"{'-':>8}"
        print(f"{row['name']:<44} {row['wall']:9.3f} {rss} {pps} {base} {ratio}  {extra}", flush=True)

    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")
    print(f"{'case':<44} {'wall s':>9} {'RSS MiB':>8} {'pages/wall s':>12} {'floor s':>10} {'ratio':>8}  notes")
    if args.app:
        with tempfile.TemporaryDirectory(prefix="xmig-bench-") as tmp:
            for row in app_cases(Path(tmp)):
                show(row)
        return 0
    with tempfile.TemporaryDirectory(prefix="xmig-bench-") as tmp:
        d = Path(tmp)
        startup = (0.0, 0.0)
        if not args.no_cli:
            srows, startup = startup_cases(d)
            for row in srows:
                show(row)
        if args.sizes is None:
            for row in micro_cases():
                show(row)
            sparse = run_case("sparse: 1 GiB + a page under 16 TiB", "examples/sparse-16tib.yaml")
            sparse["goal"] = "< 60 s wall"
            show(sparse)
        sizes = ([int(x) for x in args.sizes.split(",")] if args.sizes else
                 [1, 4, 16, 64] + ([] if args.quick else [256, 1024]))
        goals = {256: "< 60 s wall, < 4096 MiB RSS", 1024: "< 60 s wall, < 12288 MiB RSS"}
        cli_goals = {64: "<= 10x floor net of start-up", 1024: "< 60 s wall, < 12288 MiB RSS"}
        sweep, cli_sweep = [], []
        for gib in sizes:
            label = f"{gib} GiB" if gib < 1024 else f"{gib >> 10} TiB"
            timeout = 3600 if gib >= 1024 else 1800
            row = run_case(f"hot-set guest, {label}", f"gib:{gib}", timeout=timeout)
            if gib in goals:
                row["goal"] = goals[gib]
            show(row)
            sweep.append(row)
            if not args.no_cli:
                crow = cli_case(f"hot-set guest, {label}: xmig run", scenario_file(d, gib), row, startup,
                                timeout=timeout)
                if gib in cli_goals:
                    crow["goal"] = cli_goals[gib]
                show(crow)
                if "error" not in crow:
                    crow["populated"] = row.get("populated")
                    cli_sweep.append(crow)
        if args.sizes is None and not args.no_cli:
            for row in app_cases(d):
                show(row)
        if args.sizes is None and not args.quick:
            for row in mqtt_cases():
                show(row)
    for label, points in (("library", sweep), ("command line", cli_sweep)):
        ok = [r for r in points if "error" not in r and r.get("populated")]
        if ok:
            print(f"\nsize sweep ({label}), wall time per populated page: " + ", ".join(
                f"{r['name'].split(', ')[-1].split(':')[0]} {r['wall'] / r['populated'] * 1e9:.0f} ns" for r in ok))
        big = [r for r in ok if r["populated"] >= 4 * GIB_PAGES]   # from 4 GiB: fixed costs dominate 1 GiB
        if len(big) >= 2:
            a, b = big[0], big[-1]
            growth = (b["wall"] / a["wall"]) / (b["populated"] / a["populated"])
            print(f"size sweep ({label}): wall time grew {b['wall'] / a['wall']:.1f}x for "
                  f"{b['populated'] / a['populated']:.0f}x the populated pages ({growth:.2f} of linear; "
                  "<= 1 is linear or better)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
