"""How the files beside this one were made, with xmig as it was before the layout moved
(tag ``baseline-pre21``): run it with that checkout's interpreter, from this folder.

    xmig run --guest small-balloon.yaml -b pre-fix --no-dashboard --track 12421 \
        --record small-balloon.pre-fix.events --report small-balloon.pre-fix.json > run.stdout
    xmig replay small-balloon.pre-fix.events --no-dashboard > replay.stdout
    xmig explain small-balloon.pre-fix.events --gfn 12421 > explain-12421.stdout
    xmig explain small-balloon.pre-fix.events --gfn 0x3000 > explain-0x3000.stdout
    python capture.py      # the MQTT frames: frames.bin and frames.json

``frames.bin`` holds wire frames as the old codec encoded them, each preceded by its
length (u32 little-endian): event batches as ``events/toolstack`` carries them (the
recorded log's events, cut into batches), then one request and one reply of each
DomainControl method the toolstack called over in-process actors in the same run.
``frames.json`` says what each frame holds (for event batches: which events of the log).
"""

import asyncio
import json
import struct

from migrate import actors
from migrate.eventlog import read_event_log
from migrate.runner import RunOptions
from migrate.scenario import load_scenario
from migrate.transport import wire

LOG = "small-balloon.pre-fix.events"
#: Frames larger than this are left out (a snapshot's contents: 128 KiB of tokens).
MAX_FRAME = 32 << 10


def event_batches(events):
    kinds = [type(e).__name__ for e in events]
    picks, seen = [], set()
    # Cut the log into batches of up to 8 events and keep every batch that shows an
    # event type no batch kept so far has: every kind in the log crosses at least once.
    for lo in range(0, len(events), 8):
        hi = min(lo + 8, len(events))
        new = set(kinds[lo:hi]) - seen
        if new or lo == 0 or hi == len(events):
            picks.append((lo, hi))
            seen |= set(kinds[lo:hi])
    return picks


async def rpc_frames(sc, opts):
    """One request and one reply frame per method, the smallest of each, from a run of
    the three actors in process (every message through the codec)."""
    ts, hvt, gt = actors.in_process_actors(codec=True)
    best: dict[tuple[str, str], bytes] = {}
    call = ts.call

    async def keeping(actor, method, args=None):
        req = wire.encode({"m": method, "a": dict(args or {}), "from": "toolstack"})
        reply = await call(actor, method, args)
        rep = wire.encode({"ok": reply})
        for kind, frame in (("request", req), ("reply", rep)):
            if len(frame) > MAX_FRAME or (method, kind) == ("serve_span", "request") and "stretch" not in args:
                continue           # (a span request that names its stretch: Stretch and LinkModel cross)
            if (method, kind) not in best or len(frame) < len(best[method, kind]):
                best[method, kind] = frame
        return reply

    ts.call = keeping
    hv = asyncio.ensure_future(actors.serve_hypervisor(hvt))
    g = asyncio.ensure_future(actors.serve_guest(sc, gt))
    await actors.remote_run(sc, opts, transport=ts)
    await asyncio.wait_for(hv, 10)
    await asyncio.wait_for(g, 10)
    return best


def main():
    log = read_event_log(LOG)
    frames, index = [], []
    for seq, (lo, hi) in enumerate(event_batches(log.events), start=1):
        frames.append(wire.encode({"seq": seq, "events": log.events[lo:hi]}))
        index.append({"what": "events", "seq": seq, "first": lo, "last": hi,
                      "kinds": [type(e).__name__ for e in log.events[lo:hi]]})
    sc = load_scenario("small-balloon.yaml")
    opts = RunOptions(behaviour="pre-fix")          # (--track needs the hypervisor in process)
    for (method, kind), frame in sorted(asyncio.run(rpc_frames(sc, opts)).items()):
        frames.append(frame)
        index.append({"what": kind, "method": method})
    with open("frames.bin", "wb") as f:
        for fr in frames:
            f.write(struct.pack("<I", len(fr)) + fr)
    with open("frames.json", "w") as f:
        json.dump({"protocol_version": wire.PROTOCOL_VERSION, "log": LOG, "frames": index}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
