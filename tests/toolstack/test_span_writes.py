"""A long span written to a byte sink (a file, a socket, a hash) is expanded a bounded
number of batches at a time, with the event loop let run between (heartbeats, Ctrl-C and
the screen are not held while gigabytes of pages are expanded), and the stream is the
same bytes as one write of the whole span."""

from __future__ import annotations

import asyncio

from migrate.run.runner import RunOptions, run_scenario
from migrate.run.scenario import parse_scenario
from migrate.stream.writer import StreamWriter
from migrate.toolstack import batches

from tests.run.test_golden_examples import HASH_TARGET, _hash_sink_factory

# One busy 512 MiB guest: pass 1 is 128 batches, served in spans longer than EXPAND_BATCHES.
SPEC = {"name": "span-writes", "seed": 3, "guest": {"memory": "512MiB",
        "workloads": [{"kind": "uniform", "rate": "8MiB/s"}]}, "migration": {"start": "10ms"}}

_WRITE_PAGE_DATA = StreamWriter.write_page_data


def _run(monkeypatch, expand_batches: int) -> tuple[str, list[int], int]:
    """(stream sha256, batches per write_page_data call that expands pages, turns a
    ticker task got)."""
    from migrate.run import runner

    calls: list[int] = []
    original = _WRITE_PAGE_DATA

    def spy(self, pfns, nibbles, tokens):
        if len(tokens):          # (a hole's XTAB run carries no page to expand)
            calls.append(-(-len(pfns) // 1024))
        return original(self, pfns, nibbles, tokens)

    monkeypatch.setattr(StreamWriter, "write_page_data", spy)
    monkeypatch.setattr(batches, "EXPAND_BATCHES", expand_batches)
    monkeypatch.setattr(runner, "open_sink", _hash_sink_factory())

    async def main():
        turns = 0
        done = False

        async def ticker():
            nonlocal turns
            while not done:
                turns += 1
                await asyncio.sleep(0)

        tick = asyncio.ensure_future(ticker())
        res = await run_scenario(parse_scenario(SPEC), RunOptions(stream=HASH_TARGET))
        done = True
        await tick
        return res, turns

    res, turns = asyncio.run(main())
    assert res.ok
    return res.stream["sha256"], calls, turns


def test_a_long_span_to_a_byte_sink_is_written_in_bounded_pieces_with_the_same_bytes(monkeypatch):
    sha_pieces, calls_pieces, turns_pieces = _run(monkeypatch, 8)
    sha_whole, calls_whole, turns_whole = _run(monkeypatch, 1 << 30)
    assert sha_pieces == sha_whole
    assert max(calls_pieces) <= 8 < max(calls_whole)
    assert sum(calls_pieces) == sum(calls_whole)
    # every piece gave the loop a turn: more turns than with one write per span
    assert turns_pieces - turns_whole >= len(calls_pieces) - len(calls_whole)
