"""What a StreamWriter may call on a Sink: every sink and combination the writer can be
given either takes the whole save (bytes, counts, structured records, XTAB runs) or
refuses clearly with a StreamError; nothing ends in an AttributeError."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hypervisor.abi import PFInfo
from migrate.stream.format import RHDR_SIZE, StreamError
from migrate.stream.records import Record
from migrate.stream.sinks import CallbackSink, FileSink, NullSink, RecordSink, Sink, TeeSink, parse_stream
from migrate.stream.writer import StreamWriter
from tests.stream.test_stream import BytesSink, sample_batches

XTAB_LO, XTAB_HI = 1 << 20, (1 << 20) + 5000   # a hole of 5000 PFNs: 4 full batches + 904


def save(sink) -> StreamWriter:
    """A save that uses every writer call: headers, static data, page data, an XTAB run
    (a hole the saver walked), end of checkpoint, verify, END."""
    batches = sample_batches()
    w = StreamWriter(sink)
    w.write_image_header()
    w.write_domain_header()
    w.write_static_data()
    w.write_page_data(*batches[0])
    w.write_xtab_run(XTAB_LO, XTAB_HI)
    for b in batches[1:]:
        w.write_page_data(*b)
    w.write_end_of_checkpoint()
    w.write_verify()
    w.write_page_data(*batches[0])
    w.write_end()
    w.close()
    return w


@pytest.fixture(scope="module")
def reference() -> tuple[bytes, list[Record]]:
    s = BytesSink()
    save(s)
    data = s.getvalue()
    return data, parse_stream(data).records


class Leaf:
    """One sink of a combination and how to check what it received."""

    def __init__(self, kind: str, tmp_path, n: int):
        self.kind = kind
        self.got: list = []
        if kind == "null":
            self.sink = NullSink()
        elif kind == "file":
            self.path = tmp_path / f"leaf{n}.xmig"
            self.sink = FileSink(self.path)
        elif kind == "callback":
            self.sink = BytesSink()
        elif kind == "records":
            self.sink = RecordSink(self.got.append)
        elif kind == "records+runs":
            self.sink = RecordSink(self.got.append, lambda lo, hi, n: self.got.append((lo, hi, n)))

    def records(self) -> list[Record]:
        """What it received, XTAB runs expanded as the saver batches them."""
        out = []
        for item in self.got:
            if isinstance(item, Record):
                out.append(item)
                continue
            lo, hi, n = item
            starts = range(lo, hi, 1024)
            assert n == len(starts)
            for a in starts:
                pfns = np.arange(a, min(a + 1024, hi))
                out.append(Record.page_data(pfns, np.full(pfns.size, PFInfo.XTAB, np.uint8), []))
        return out

    def check(self, data: bytes, records: list[Record]) -> None:
        assert self.sink.bytes_written == len(data), self.kind
        if self.kind == "file":
            assert self.path.read_bytes() == data
        elif self.kind == "callback":
            assert self.sink.getvalue() == data
        elif self.kind.startswith("records"):
            assert self.records() == records


KINDS = ["null", "file", "callback", "records", "records+runs"]
COMBOS = ([(k,) for k in KINDS] + list(itertools.combinations_with_replacement(KINDS, 2))
          + [("null", "records", "file"), ("records+runs", "null", "null")])


@pytest.mark.parametrize("kinds,nested", [(k, False) for k in COMBOS] + [(k, True) for k in COMBOS if len(k) > 1],
                         ids=lambda v: "+".join(v) if isinstance(v, tuple) else ("nested" if v else "flat"))
def test_every_sink_combination_takes_a_whole_save(kinds, nested, tmp_path, reference):
    data, records = reference
    leaves = [Leaf(k, tmp_path, i) for i, k in enumerate(kinds)]
    sinks = [leaf.sink for leaf in leaves]
    if len(sinks) == 1:
        outer = sinks[0]
    elif nested:
        outer = TeeSink(TeeSink(*sinks[:-1]), sinks[-1])
    else:
        outer = TeeSink(*sinks)
    w = save(outer)
    assert w.bytes_written == outer.bytes_written == len(data)
    for leaf in leaves:
        leaf.check(data, records)


def test_tee_of_null_and_record_sink_takes_an_xtab_run():
    got: list[Record] = []
    null = NullSink()
    w = StreamWriter(TeeSink(null, RecordSink(got.append)))
    total = w.write_xtab_run(0, 5000)
    assert total == null.bytes_written == 4 * (RHDR_SIZE + 8 + 8 * 1024) + (RHDR_SIZE + 8 + 8 * 904)
    assert [r.pfns.size for r in got] == [1024, 1024, 1024, 1024, 904]
    assert np.array_equal(np.concatenate([r.pfns for r in got]), np.arange(5000))
    assert all((r.nibbles == PFInfo.XTAB).all() and r.tokens.size == 0 for r in got)


def test_tee_hands_a_record_sink_its_xtab_run_whole():
    runs = []
    w = StreamWriter(TeeSink(NullSink(), RecordSink(lambda r: None, lambda *a: runs.append(a))))
    w.write_xtab_run(10, 3000)
    assert runs == [(10, 3000, 3)]


def test_sinks_refuse_calls_outside_their_capabilities(tmp_path):
    rec = Record.page_data([1], [PFInfo.XTAB], [])
    f = FileSink(tmp_path / "x.xmig")
    with pytest.raises(StreamError, match="FileSink needs real bytes"):
        f.count(8)
    with pytest.raises(StreamError, match="FileSink does not take structured records"):
        f.put_record(rec)
    f.abort()
    for sink in (NullSink(), CallbackSink(lambda b: None), TeeSink(NullSink(), NullSink())):
        name = type(sink).__name__
        with pytest.raises(StreamError, match=f"{name} does not take structured records"):
            sink.put_xtab_run(0, 10, 1)
        with pytest.raises(StreamError, match=f"{name} does not take structured records"):
            sink.put_record(rec)


def test_writer_writes_only_to_a_sink():
    with pytest.raises(StreamError, match="writes to a migrate.stream.sinks.Sink, not list"):
        StreamWriter([])


def test_a_sink_class_must_implement_what_it_declares():
    with pytest.raises(TypeError, match="declares counting_only but does not implement count"):
        class Counting(Sink):
            counting_only = True

            def write(self, data):
                pass
    with pytest.raises(TypeError, match="declares accepts_records but does not implement put_record"):
        class Records(Sink):
            accepts_records = True

            def write(self, data):
                pass

    class NoWrite(Sink):
        pass

    with pytest.raises(TypeError, match="abstract"):
        NoWrite()
