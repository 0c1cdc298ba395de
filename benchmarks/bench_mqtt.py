"""The MQTT transport's cost: ``examples/balloon.yaml`` embedded vs over a real broker.

Issue 6's benchmark. The embedded run (``run_scenario`` with the hypervisor and guest
in this process) against the same scenario with the hypervisor and the guest as
separate processes (``python -m migrate.view.cli_broker hypervisor|guest``, as in the
classroom demo) talking through a local Mosquitto (TCP_NODELAY, no queue limit), the
toolstack in this process. The actors are started and connected before the clock
starts; the MQTT figure is the toolstack's wall time, setup to release. Goal: at most
3x the embedded time. Also measured: one RPC round trip (QoS 1 request + reply).

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
from migrate.view.report import build_report  # noqa: E402
from migrate.runner import RunOptions, run_scenario  # noqa: E402
from migrate.scenario import load_scenario  # noqa: E402
from tests.mqtt_broker import Broker, free_port, key_env, mosquitto_binary, test_key  # noqa: E402

GOAL_RATIO = 3.0
SCENARIO = ROOT / "examples" / "balloon.yaml"


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


def _over_mqtt(scenario, broker: Broker, run_id: str) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "migrate.view.cli_broker"]
    common = ["--broker", broker.url, "--run", run_id]
    # Every message sealed with a run key, as a class runs it (HMAC-SHA256 per message).
    procs = [subprocess.Popen(cmd + ["hypervisor", *common], cwd=ROOT, stderr=subprocess.DEVNULL, env=key_env()),
             subprocess.Popen(cmd + ["guest", *common, "--guest", str(SCENARIO)], cwd=ROOT,
                              stderr=subprocess.DEVNULL, env=key_env())]
    cfg = parse_broker_url(broker.url, key=test_key())

    async def go():
        transport = MqttTransport(cfg, run_id, "toolstack")
        await transport.start()
        try:
            await transport.wait_for_peer("hypervisor", 30)
            await transport.wait_for_peer("guest", 30)
            t0 = time.perf_counter()
            res = await actors.remote_run(scenario, RunOptions(), transport=transport)
            return time.perf_counter() - t0, build_report(res)
        finally:
            await transport.close()

    try:
        return asyncio.run(go())
    finally:
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def run(repeats: int = 3) -> list[dict]:
    binary = mosquitto_binary()
    if binary is None:
        raise SystemExit("bench_mqtt needs mosquitto (apt-get install -y mosquitto)")
    scenario = load_scenario(SCENARIO)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        broker = Broker(binary, port, Path(tmp) / "mosquitto.conf", Path(tmp) / "mosquitto.log").start()
        try:
            cfg = parse_broker_url(broker.url, key=test_key())
            rpc = asyncio.run(_rpc_latency(cfg))
            _embedded(scenario)                                   # warm-up (imports, page cache)
            emb, rem = float("inf"), float("inf")
            same = True
            for i in range(repeats):
                te, rep_e = _embedded(scenario)
                tm, rep_m = _over_mqtt(scenario, broker, f"bench-{i}")
                rep_e.pop("wall")
                rep_m.pop("wall")
                rep_m.pop("broker")
                same = same and rep_e == rep_m
                emb, rem = min(emb, te), min(rem, tm)
        finally:
            broker.kill()
    return [
        {"name": "MQTT RPC round trip (QoS 1, TCP_NODELAY)", "seconds": rpc},
        {"name": f"{SCENARIO.name}: embedded", "seconds": emb},
        {"name": f"{SCENARIO.name}: over MQTT (3 processes)", "seconds": rem, "ratio": rem / emb,
         "goal_ratio": GOAL_RATIO, "same_report": same},
    ]


def main() -> int:
    rows = run()
    print(f"{'benchmark':44s} {'ms':>10s} {'ratio':>7s}  goal")
    for r in rows:
        ratio = f"{r['ratio']:7.2f}" if "ratio" in r else f"{'':7s}"
        goal = f"<= {r['goal_ratio']:.0f}x" if "goal_ratio" in r else ""
        print(f"{r['name']:44s} {r['seconds'] * 1e3:10.2f} {ratio}  {goal}")
    last = rows[-1]
    if not last["same_report"]:
        print("the MQTT report differs from the embedded one")
        return 1
    return 0 if last["ratio"] <= GOAL_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
