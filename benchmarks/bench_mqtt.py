"""The MQTT transport's cost: ``examples/balloon.yaml`` embedded vs over a real broker.

Issue 6's benchmark. The embedded run (``run_scenario`` with the hypervisor and guest
in this process) against the same scenario with the hypervisor and the guest as
separate processes (``python -m migrate.cli.broker hypervisor|guest``, as in the
classroom demo) talking through a local Mosquitto (TCP_NODELAY, no queue limit), the
toolstack in this process; and the same for the suite's 16 GiB hot-set guest with a
balloon (``run.sized_scenario(16)``). The actors are started and connected before the
clock starts; the MQTT figure is the toolstack's wall time, setup to release. Goals
(issue 12): ``balloon.yaml`` at most 2x the embedded time, the 16 GiB guest at most
3x. Also measured: one RPC round trip (QoS 1 request + reply).

Each figure is the best of ``repeats`` runs. Run: ``python benchmarks/bench_mqtt.py``;
a suite runner imports :func:`run`.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from migrate import actors  # noqa: E402
from migrate.transport.mqtt import MqttTransport, parse_broker_url  # noqa: E402
from migrate.run.report import build_report  # noqa: E402
from migrate.run.runner import RunOptions, run_scenario  # noqa: E402
from migrate.run.scenario import load_scenario  # noqa: E402
from tests.mqtt_broker import Broker, free_port, key_env, mosquitto_binary, test_key  # noqa: E402

SCENARIO = ROOT / "examples" / "balloon.yaml"
#: (label, goal ratio) per case; the 16 GiB guest's scenario file is written at run time.
CASES = (("balloon.yaml", 2.0), ("hot-set 16 GiB", 3.0))


async def _rpc_latency(cfg, n: int = 300) -> float:
    server = MqttTransport(cfg, "bench-rpc", "hypervisor")
    client = MqttTransport(cfg, "bench-rpc", "toolstack")
    await server.start()
    await client.start()
    try:
        async def echo(method, args, caller):
            return args

        server.serve(echo)
        await server.claim()
        await client.claim()
        await client.wait_for_peer("hypervisor", 10)
        for _ in range(20):
            await client.call("hypervisor", "ping")
        t0 = time.perf_counter()
        for _ in range(n):
            await client.call("hypervisor", "ping")
        return (time.perf_counter() - t0) / n
    finally:
        await client.close()
        await server.close()


def _embedded(scenario) -> tuple[float, dict]:
    t0 = time.perf_counter()
    res = asyncio.run(run_scenario(scenario, RunOptions()))
    return time.perf_counter() - t0, build_report(res)


def _over_mqtt(scenario, path: Path, broker: Broker, run_id: str) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "migrate.cli.broker"]
    common = ["--broker", broker.url, "--run", run_id]
    # Every message sealed with a run key, as a class runs it (HMAC-SHA256 per message).
    procs = [subprocess.Popen(cmd + ["hypervisor", *common], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                              env=key_env()),
             subprocess.Popen(cmd + ["guest", *common, "--guest", str(path)], cwd=ROOT, stderr=subprocess.PIPE,
                              text=True, env=key_env())]
    for p in procs:            # each actor says it waits for the toolstack once it is on the broker
        p.stderr.readline()
    cfg = parse_broker_url(broker.url, key=test_key())

    async def go():
        # As `xmig run --broker` does: claim the run (the actors then prove themselves to
        # this session), wait for them, run; the actors are up already, so the wait is
        # the claim's round trips, which every real run pays too.
        t0 = time.perf_counter()
        res = await actors.remote_run(scenario, RunOptions(), broker=cfg, run_id=run_id)
        return time.perf_counter() - t0, build_report(res)

    try:
        return asyncio.run(go())
    finally:
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def run(repeats: int = 3, cases=CASES) -> list[dict]:
    import json

    from benchmarks.run import sized_scenario

    binary = mosquitto_binary()
    if binary is None:
        raise SystemExit("bench_mqtt needs mosquitto (apt-get install -y mosquitto)")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        sized = Path(tmp) / "hotset-16g.yaml"
        sized.write_text(json.dumps(sized_scenario(16)))          # JSON is YAML
        paths = {"balloon.yaml": SCENARIO, "hot-set 16 GiB": sized}
        port = free_port()
        broker = Broker(binary, port, Path(tmp) / "mosquitto.conf", Path(tmp) / "mosquitto.log").start()
        try:
            cfg = parse_broker_url(broker.url, key=test_key())
            rows.append({"name": "MQTT RPC round trip (QoS 1, TCP_NODELAY)", "seconds": asyncio.run(_rpc_latency(cfg))})
            for label, goal in cases:
                path = paths[label]
                scenario = load_scenario(path)
                _embedded(scenario)                               # warm-up (imports, page cache)
                emb, rem = float("inf"), float("inf")
                same = True
                for i in range(repeats):
                    te, rep_e = _embedded(scenario)
                    tm, rep_m = _over_mqtt(scenario, path, broker, f"bench-{label.split()[0]}-{i}")
                    for rep in (rep_e, rep_m):
                        rep.pop("wall")
                        rep.pop("broker", None)
                    same = same and rep_e == rep_m
                    emb, rem = min(emb, te), min(rem, tm)
                rows.append({"name": f"{label}: embedded", "seconds": emb})
                rows.append({"name": f"{label}: over MQTT (3 processes)", "seconds": rem, "ratio": rem / emb,
                             "goal_ratio": goal, "same_report": same})
        finally:
            broker.kill()
    return rows


def main() -> int:
    rows = run()
    print(f"{'benchmark':44s} {'ms':>10s} {'ratio':>7s}  goal")
    for r in rows:
        ratio = f"{r['ratio']:7.2f}" if "ratio" in r else f"{'':7s}"
        goal = f"<= {r['goal_ratio']:.0f}x" if "goal_ratio" in r else ""
        print(f"{r['name']:44s} {r['seconds'] * 1e3:10.2f} {ratio}  {goal}")
    rc = 0
    for r in rows:
        if "ratio" in r and not r["same_report"]:
            print(f"{r['name']}: the MQTT report differs from the embedded one")
            rc = 1
        elif "ratio" in r and r["ratio"] > r["goal_ratio"]:
            rc = 1
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
