"""RECORD_RULES is the one table of per-record-type rules: the parser and the restorer
both follow it, so one entry changes how both treat a record type."""

from __future__ import annotations

import pytest

from hypervisor.abi import PFInfo
from migrate.toolstack.restore import Restorer
from migrate.stream.format import RecType, StreamError
from migrate.stream.parser import StreamParser
from migrate.stream.records import HVM_HANDLED, RECORD_RULES, Body, Phase, Record, RecordRule, Step
from migrate.stream.sinks import CallbackSink
from migrate.stream.writer import StreamWriter
from tests.toolstack.test_restore import empty_dest



def test_every_record_type_has_exactly_one_rule():
    assert sorted(RECORD_RULES) == sorted(int(t) for t in RecType)
    assert all(RECORD_RULES[t].type == t for t in RECORD_RULES)


def test_an_x86_hvm_restore_handles_what_xg_sr_restore_x86_hvm_handles():
    assert HVM_HANDLED == {RecType.END, RecType.PAGE_DATA, RecType.VERIFY, RecType.STATIC_DATA_END,
                           RecType.X86_TSC_INFO, RecType.HVM_CONTEXT, RecType.HVM_PARAMS,
                           RecType.X86_CPUID_POLICY, RecType.X86_MSR_POLICY}
    empty = {t for t, r in RECORD_RULES.items() if r.body is Body.EMPTY}
    assert empty == {RecType.END, RecType.VERIFY, RecType.STATIC_DATA_END, RecType.CHECKPOINT}


def _stream(*toolstack_bodies: bytes, after_static: bool = False) -> bytes:
    chunks: list[bytes] = []
    w = StreamWriter(CallbackSink(chunks.append))
    w.write_image_header()
    w.write_domain_header()
    if after_static:
        w.write_static_data()
    for body in toolstack_bodies:
        w.write_record(RecType.TOOLSTACK, body)
    if not after_static:
        w.write_static_data()
    w.write_page_data([1, 2], [PFInfo.NOTAB, PFInfo.XTAB], [7])
    w.write_end_of_checkpoint()
    w.write_end()
    w.close()
    return b"".join(chunks)


def _parse(data: bytes) -> list[Record]:
    p = StreamParser()
    recs = p.feed(data)
    p.close()
    return recs


def _restore(data: bytes):
    r = Restorer(empty_dest())
    try:
        r.feed(data)
    except StreamError:
        pass
    return r.finish()


@pytest.fixture
def toolstack_rule(monkeypatch):
    """Make TOOLSTACK (refused by an HVM restore today) a handled, once-only record of
    exactly 8 bytes, by changing its one entry."""
    def check(body: bytes) -> str | None:
        return None if len(body) == 8 else f"TOOLSTACK length {len(body)}, expected 8"

    def use(**kw):
        monkeypatch.setitem(RECORD_RULES, int(RecType.TOOLSTACK),
                            RecordRule(RecType.TOOLSTACK, handled=True, check=check, **kw))
    return use


def test_refused_record_type_is_refused_by_parser_and_restorer():
    data = _stream(bytes(8))
    with pytest.raises(StreamError, match=r"TOOLSTACK\) not handled by an x86 HVM restore"):
        _parse(data)
    assert "TOOLSTACK) not handled by an x86 HVM restore" in _restore(data).error
    r = Restorer(empty_dest())
    with pytest.raises(StreamError, match=r"^TOOLSTACK: mandatory record 0xb \(TOOLSTACK\) not handled"):
        r.apply(Record.simple(RecType.TOOLSTACK, bytes(8)))


def test_one_entry_makes_a_record_type_handled_by_parser_and_restorer(toolstack_rule):
    toolstack_rule(repeat=False)
    data = _stream(bytes(8))
    assert RecType.TOOLSTACK in [r.type for r in _parse(data)]
    res = _restore(data)
    assert res.ok, res.error
    assert res.records["TOOLSTACK"] == 1


def test_one_entry_gives_parser_and_restorer_its_body_and_repeat_rules(toolstack_rule):
    toolstack_rule(repeat=False)
    with pytest.raises(StreamError, match=r"record #0 \(TOOLSTACK\) at offset 0x28: TOOLSTACK length 3, "
                                          "expected 8"):
        _parse(_stream(b"abc"))
    twice = _stream(bytes(8), bytes(8))
    with pytest.raises(StreamError, match=r"record #1 \(TOOLSTACK\) at offset 0x38: multiple TOOLSTACK"):
        _parse(twice)
    r = Restorer(empty_dest())
    r.apply(Record.simple(RecType.TOOLSTACK, bytes(8)))
    with pytest.raises(StreamError, match="^TOOLSTACK: multiple TOOLSTACK records$"):
        r.apply(Record.simple(RecType.TOOLSTACK, bytes(8)))


def test_one_entry_gives_parser_and_restorer_its_phase(toolstack_rule):
    toolstack_rule(phase=Phase.MEMORY)
    early = _stream(bytes(8))
    with pytest.raises(StreamError, match=r"record #0 \(TOOLSTACK\) at offset 0x28: no STATIC_DATA_END seen "
                                          "before the first TOOLSTACK"):
        _parse(early)
    assert RecType.TOOLSTACK in [r.type for r in _parse(_stream(bytes(8), after_static=True))]
    res = _restore(_stream(bytes(8), after_static=True))
    assert res.ok, res.error


def test_one_entry_tells_the_restorer_what_to_keep(toolstack_rule):
    toolstack_rule(keep=("hvm_context_bytes", len), step=Step.NONE)
    res = _restore(_stream(bytes(8)))
    assert res.ok and res.hvm_context_bytes != 8  # HVM_CONTEXT comes later and overwrites it
    r = Restorer(empty_dest())
    r.apply(Record.simple(RecType.TOOLSTACK, bytes(8)))
    assert r.result.hvm_context_bytes == 8
