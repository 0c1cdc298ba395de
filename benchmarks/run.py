"""The benchmark suite: one command, one table.

    python benchmarks/run.py            # everything (several minutes; the 256 GiB and 1 TiB guests are the long ones)
    python benchmarks/run.py --quick    # skips the 256 GiB and 1 TiB cases and the MQTT comparison
    python benchmarks/run.py --json out.json

Each migration case runs in its own process, so its peak RSS is its own. For every
case the table gives wall time, peak RSS, simulated pages per wall second, and a ratio
against a baseline measured in the same run:

- micro-benchmarks (log-dirty mark and CLEAN, stream writer) against the numpy floors
  of their own scripts (``bench_logdirty.py``, ``bench_stream.py``, ``bench_guest.py``);
- whole migrations against a *numpy floor*: the minimum array work the case needs:
  allocate the source's and the destination's content tokens for the populated pages
  and copy, pass by pass, as many tokens as the migration sent. The ratio says how
  much the emulator costs over just moving the data it moves;
- ``balloon.yaml`` over MQTT against the same run embedded (``bench_mqtt.py``).

Goals (issue 7): sparse 16 TiB guest and 256 GiB guest each under 60 s wall; the
256 GiB guest under 4 GiB peak RSS; the size sweep linear or better in populated pages.
Issue 12: a 1 TiB guest (the same hot-set writer + balloon) under 60 s wall and under
12 GiB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
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
        scenario = load_scenario(ROOT / spec)
    t0 = time.perf_counter()
    res = asyncio.run(run_scenario(scenario))
    wall = time.perf_counter() - t0
    rss = peak_rss_mib()
    rounds = [r for r in res.save.rounds if r.phase != "verify"]
    print(json.dumps({
        "wall": wall, "rss_mib": rss, "outcome": res.save.outcome,
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


def run_case(name: str, spec: str, timeout: float = 900) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        return {"name": name, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    floor = min(numpy_floor(data["populated"], data["pages_sent"]) for _ in range(3))
    data.update(name=name, baseline_seconds=floor, ratio=data["wall"] / floor,
                pages_per_s=data["pfns_walked"] / data["wall"])
    return data


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="skip the 256 GiB and 1 TiB cases and MQTT")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = ap.parse_args(argv)
    if args.child:
        _case_child(args.child)
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
        print(f"{row['name']:<44} {row['wall']:9.3f} {rss} {pps} {row['baseline_seconds']:10.4f} "
              f"{row['ratio']:8.1f}  {extra}", flush=True)

    print(f"{'case':<44} {'wall s':>9} {'RSS MiB':>8} {'pages/wall s':>12} {'floor s':>10} {'ratio':>8}  notes")
    for row in micro_cases():
        show(row)
    sparse = run_case("sparse: 1 GiB + a page under 16 TiB", "examples/sparse-16tib.yaml")
    sparse["goal"] = "< 60 s wall"
    show(sparse)
    sizes = [1, 4, 16, 64] + ([] if args.quick else [256, 1024])
    goals = {256: "< 60 s wall, < 4096 MiB RSS", 1024: "< 60 s wall, < 12288 MiB RSS"}
    sweep = []
    for gib in sizes:
        row = run_case(f"hot-set guest, {gib} GiB" if gib < 1024 else f"hot-set guest, {gib >> 10} TiB",
                       f"gib:{gib}", timeout=1800 if gib >= 1024 else 900)
        if gib in goals:
            row["goal"] = goals[gib]
        show(row)
        sweep.append(row)
    if not args.quick:
        for row in mqtt_cases():
            show(row)
    ok = [r for r in sweep if "error" not in r]
    if ok:
        print("\nsweep, wall time per populated page: " + ", ".join(
            f"{r['name'].split(', ')[-1]} {r['wall'] / r['populated'] * 1e9:.0f} ns" for r in ok))
    if len(ok) >= 2:
        a, b = ok[1], ok[-1]   # skip the 1 GiB point: fixed costs dominate it
        growth = (b["wall"] / a["wall"]) / (b["populated"] / a["populated"])
        print(f"\nsweep: wall time grew {b['wall'] / a['wall']:.1f}x for {b['populated'] / a['populated']:.0f}x the "
              f"populated pages ({growth:.2f} of linear; <= 1 is linear or better)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
