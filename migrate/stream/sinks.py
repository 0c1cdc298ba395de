"""Every file and socket a stream touches: the sinks a writer writes to, and the readers.

The sinks are where a save's stream goes (Xen's ``xg_sr_save.c`` writes to the fd
``xc_domain_save`` is given: a file, a socket to the receiver, or nothing at all when
only the size matters); ``Sink`` declares what a ``StreamWriter`` may call on each.
The readers feed ``parser.StreamParser`` from a file (``read_stream``) or from the one
TCP connection of ``xmig receive`` (``receive_stream``, the fd ``xc_domain_restore``
reads from). Nothing else in ``migrate.stream`` does I/O.
"""

from __future__ import annotations

import asyncio
import errno as _errno
import hashlib
import io
import os
import socket
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Protocol

import numpy as np

from hypervisor.abi import MAX_BATCH_SIZE, PFInfo

from migrate.stream.format import StreamError
from migrate.stream.parser import ParsedStream, StreamParser
from migrate.stream.records import Record, page_data_records

# ---- sinks ------------------------------------------------------------------------------


class ClosesOnExit:
    """``with`` finishes the object: ``close()`` when the block succeeds, ``abort()``
    when it raises (a half-written stream is never left as if it were whole)."""

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class Sink(ClosesOnExit, ABC):
    """Where a stream's bytes go, and what a ``StreamWriter`` may call on it.

    A sink declares its capabilities as three flags; the writer calls exactly:

    ==========================  ==================================================
    ``write(data)``             unless ``counting_only`` (every sink takes bytes:
                                a ``TeeSink`` hands them to counting sinks too)
    ``count(nbytes)``           when ``counting_only``: a size, no bytes
    ``put_record(record)``      when ``accepts_records``
    ``put_xtab_run(lo, hi, n)`` when ``accepts_records`` and ``counting_only``
    ``close()``, ``abort()``    always
    ==========================  ==================================================

    Any other call is refused with a ``StreamError`` naming the sink, and a class that
    declares a capability without the method behind it is refused when defined.
    ``write`` receives a bytes-like object that is only valid for the duration of the
    call (the writer reuses its batch buffer).
    """

    #: True when the sink only counts bytes: the writer then never expands pages.
    counting_only = False
    #: True when ``write`` may run on the writer's background thread (it touches no
    #: simulation state), letting page expansion overlap the system call.
    background_ok = False
    #: True when the sink also wants every record in structured form (``put_record``),
    #: e.g. an in-process restore that needs no stream bytes.
    accepts_records = False
    #: sha256 hex digest of the bytes written, when the sink computes one.
    sha256: str | None = None

    def __init_subclass__(cls, **kw) -> None:
        super().__init_subclass__(**kw)
        if cls.counting_only is True and cls.count is Sink.count:
            raise TypeError(f"{cls.__name__} declares counting_only but does not implement count()")
        if cls.accepts_records is True and cls.put_record is Sink.put_record:
            raise TypeError(f"{cls.__name__} declares accepts_records but does not implement put_record()")

    def __init__(self) -> None:
        self.bytes_written = 0
        self.closed = False

    @abstractmethod
    def write(self, data) -> None:
        """Take the next bytes of the stream."""

    def count(self, nbytes: int) -> None:
        """Account for ``nbytes`` without data (counting-only sinks)."""
        raise StreamError(f"{type(self).__name__} needs real bytes")

    def put_record(self, record: Record) -> None:
        """Receive one record in structured form (only if ``accepts_records``)."""
        raise StreamError(f"{type(self).__name__} does not take structured records")

    def put_xtab_run(self, lo: int, hi: int, records: int) -> None:
        """``records`` PAGE_DATA records of XTAB entries for PFNs [lo, hi), as
        ``put_record`` calls of at most MAX_BATCH_SIZE PFNs each (a record sink may
        take the run whole instead)."""
        if not self.accepts_records:
            raise StreamError(f"{type(self).__name__} does not take structured records")
        for a in range(int(lo), int(hi), MAX_BATCH_SIZE):
            pfns = np.arange(a, min(a + MAX_BATCH_SIZE, int(hi)), dtype=np.int64)
            self.put_record(Record.page_data(pfns, np.full(pfns.size, PFInfo.XTAB, dtype=np.uint8),
                                             np.empty(0, dtype=np.uint64)))

    def put_page_data_run(self, pfns: np.ndarray, nibbles: np.ndarray, tokens: np.ndarray) -> None:
        """PAGE_DATA records back to back, in structured form (only if
        ``accepts_records``): MAX_BATCH_SIZE entries each (the last may be shorter),
        ``tokens`` the data-carrying entries' contents in order. By default one
        ``put_record`` each; a sink that can take the run at once overrides this."""
        for rec in page_data_records(pfns, nibbles, tokens):
            self.put_record(rec)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


class NullSink(Sink):
    """Writes nowhere but counts every byte the stream would have had."""

    counting_only = True

    def write(self, data) -> None:
        self.bytes_written += memoryview(data).nbytes

    def count(self, nbytes: int) -> None:
        self.bytes_written += int(nbytes)


class FileSink(Sink):
    """Writes to a temporary name beside ``path`` and renames it into place on a
    successful ``close``; ``abort`` (or an error) removes it, so a half-written stream
    is never left under the final name."""

    def __init__(self, path: str | os.PathLike, *, fsync: bool = False, hash: bool = False):
        super().__init__()
        self.path = Path(path)
        self._fsync = fsync
        self._hash = hashlib.sha256() if hash else None
        parent = self.path.parent if str(self.path.parent) else Path(".")
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".partial", dir=parent)
        except OSError as e:
            raise StreamError(f"cannot create stream file {self.path}: {e.strerror or e}") from None
        self.tmp_path = Path(tmp)
        self._f: BinaryIO | None = os.fdopen(fd, "wb")

    background_ok = True

    def write(self, data) -> None:
        if self._f is None:
            raise StreamError(f"stream file {self.path} is already closed")
        try:
            self._f.write(data)
        except OSError as e:
            self.abort()
            raise StreamError(f"cannot write stream file {self.path}: {e.strerror or e}") from None
        if self._hash is not None:
            self._hash.update(data)
        self.bytes_written += memoryview(data).nbytes

    def close(self) -> None:
        if self._f is None:
            return
        f, self._f = self._f, None
        try:
            f.flush()
            if self._fsync:
                os.fsync(f.fileno())
            f.close()
            os.replace(self.tmp_path, self.path)
            if self._hash is not None:
                self.sha256 = self._hash.hexdigest()
        except OSError as e:
            self._remove_tmp()
            raise StreamError(f"cannot finish stream file {self.path}: {e.strerror or e}") from None
        self.closed = True

    def abort(self) -> None:
        if self._f is not None:
            f, self._f = self._f, None
            try:
                f.close()
            except OSError:
                pass
            self._remove_tmp()
        self.closed = True

    def _remove_tmp(self) -> None:
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass


class TcpSink(Sink):
    """A blocking TCP connection to a receiver (``xmig receive``). ``timeout`` bounds
    connecting and each send, so a stalled peer gives an error instead of a hang.
    Do not drive it from the event loop that runs the receiver in the same process
    (run the writer in a thread, e.g. ``asyncio.to_thread``)."""

    def __init__(self, host: str, port: int, *, timeout: float | None = 30.0):
        super().__init__()
        self.host, self.port = host, int(port)
        try:
            self._sock: socket.socket | None = socket.create_connection((host, self.port), timeout=timeout)
        except OSError as e:
            raise StreamError(f"cannot connect to tcp://{host}:{port}: {_oserror_text(e)}") from None
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    background_ok = True

    def write(self, data) -> None:
        if self._sock is None:
            raise StreamError(f"connection to tcp://{self.host}:{self.port} is closed")
        try:
            self._sock.sendall(data)
        except OSError as e:
            self.abort()
            raise StreamError(f"connection to tcp://{self.host}:{self.port} lost: {_oserror_text(e)}") from None
        self.bytes_written += memoryview(data).nbytes

    def close(self) -> None:
        if self._sock is None:
            return
        sock, self._sock = self._sock, None
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        sock.close()
        self.closed = True

    def abort(self) -> None:
        if self._sock is not None:
            sock, self._sock = self._sock, None
            sock.close()
        self.closed = True


class TeeSink(Sink):
    """Fans the stream out to several sinks; counting-only if they all are."""

    def __init__(self, *sinks: Sink):
        super().__init__()
        if len(sinks) == 1 and isinstance(sinks[0], (list, tuple)):
            sinks = tuple(sinks[0])
        self.sinks = list(sinks)
        self.counting_only = all(s.counting_only for s in self.sinks)
        self.background_ok = all(s.background_ok or s.counting_only for s in self.sinks)
        self.accepts_records = any(s.accepts_records for s in self.sinks)

    def put_record(self, record: Record) -> None:
        if not self.accepts_records:
            super().put_record(record)
        for s in self.sinks:
            if s.accepts_records:
                s.put_record(record)

    def put_xtab_run(self, lo: int, hi: int, records: int) -> None:
        if not self.accepts_records:
            super().put_xtab_run(lo, hi, records)
        for s in self.sinks:
            if s.accepts_records:
                s.put_xtab_run(lo, hi, records)

    def put_page_data_run(self, pfns, nibbles, tokens) -> None:
        if not self.accepts_records:
            super().put_page_data_run(pfns, nibbles, tokens)
        for s in self.sinks:
            if s.accepts_records:
                s.put_page_data_run(pfns, nibbles, tokens)

    @property
    def sha256(self) -> str | None:  # type: ignore[override]
        return next((s.sha256 for s in self.sinks if s.sha256), None)

    def write(self, data) -> None:
        for s in self.sinks:
            s.write(data)
        self.bytes_written += memoryview(data).nbytes

    def count(self, nbytes: int) -> None:
        for s in self.sinks:
            s.count(nbytes)
        self.bytes_written += int(nbytes)

    def close(self) -> None:
        for s in self.sinks:
            s.close()
        self.closed = True

    def abort(self) -> None:
        for s in self.sinks:
            s.abort()
        self.closed = True


class CallbackSink(Sink):
    """Feeds the bytes to an in-process consumer (e.g. ``Restorer.feed``).
    ``copy=True`` hands the consumer its own ``bytes``; ``copy=False`` hands a
    memoryview valid only during the call (``StreamParser.feed`` copies anyway)."""

    def __init__(self, fn: Callable[[Any], Any], *, copy: bool = True, on_close: Callable[[], Any] | None = None):
        super().__init__()
        self._fn = fn
        self._copy = copy
        self._on_close = on_close

    def write(self, data) -> None:
        self._fn(bytes(data) if self._copy else memoryview(data))
        self.bytes_written += memoryview(data).nbytes

    def close(self) -> None:
        if not self.closed and self._on_close is not None:
            self._on_close()
        self.closed = True


class RecordSink(Sink):
    """Counting-only sink that hands every record, structured, to ``fn`` (e.g.
    ``Restorer.apply``): an in-process restore with no page expansion at all."""

    counting_only = True
    accepts_records = True

    def __init__(self, fn: Callable[[Record], Any], xtab_run: Callable[[int, int, int], Any] | None = None,
                 page_data_run: Callable[[np.ndarray, np.ndarray, np.ndarray], Any] | None = None):
        super().__init__()
        self._fn = fn
        self._xtab_run = xtab_run
        self._page_data_run = page_data_run

    def write(self, data) -> None:
        self.bytes_written += memoryview(data).nbytes

    def count(self, nbytes: int) -> None:
        self.bytes_written += int(nbytes)

    def put_record(self, record: Record) -> None:
        self._fn(record)

    def put_xtab_run(self, lo: int, hi: int, records: int) -> None:
        """``records`` PAGE_DATA records of XTAB entries for PFNs [lo, hi)."""
        if self._xtab_run is not None:
            self._xtab_run(lo, hi, records)
        else:
            super().put_xtab_run(lo, hi, records)

    def put_page_data_run(self, pfns, nibbles, tokens) -> None:
        if self._page_data_run is not None:
            self._page_data_run(pfns, nibbles, tokens)
        else:
            super().put_page_data_run(pfns, nibbles, tokens)


def _oserror_text(e: OSError) -> str:
    if isinstance(e, socket.timeout) or isinstance(e, TimeoutError):
        return "timed out"
    if e.errno == _errno.ECONNREFUSED:
        return "connection refused"
    return e.strerror or str(e) or type(e).__name__


# ---- readers ----------------------------------------------------------------------------

_CHUNK = 4 << 20


def _open_src(src) -> tuple[BinaryIO, bool]:
    if isinstance(src, (str, os.PathLike)):
        try:
            return open(src, "rb"), True
        except OSError as e:
            raise StreamError(f"cannot open stream {src}: {e.strerror or e}") from None
    if isinstance(src, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(src)), True
    return src, False


def read_stream(src, *, pfn_limit: int | None = None, strict_pages: bool = True,
                parser: StreamParser | None = None, chunk_size: int = _CHUNK) -> Iterator[Record]:
    """Yield the records of a stream from a path, bytes or a binary file object,
    validating as it goes; raises ``StreamError`` on the first problem, including a
    stream that ends before its END record."""
    p = parser or StreamParser(pfn_limit=pfn_limit, strict_pages=strict_pages)
    f, owned = _open_src(src)
    try:
        while True:
            chunk = f.read(chunk_size)
            if not chunk:
                break
            yield from p.feed(chunk)
        p.close()
    finally:
        if owned:
            f.close()


def parse_stream(src, *, pfn_limit: int | None = None, strict_pages: bool = True) -> ParsedStream:
    """Parse a whole stream (path, bytes or file object) into headers and records."""
    p = StreamParser(pfn_limit=pfn_limit, strict_pages=strict_pages)
    records = list(read_stream(src, parser=p))
    assert p.image_header is not None and p.domain_header is not None
    return ParsedStream(p.image_header, p.domain_header, records, list(p.skipped))


class StreamConsumer(Protocol):
    """What ``receive_stream`` feeds: ``restore.Restorer`` (parse and apply as bytes come)."""

    result: Any

    def feed(self, data: bytes) -> Any: ...
    def finish(self) -> Any: ...
    def abort(self, reason: str) -> Any: ...
    @property
    def complete(self) -> bool: ...
    @property
    def failed(self) -> bool: ...


async def receive_stream(host: str, port: int, restorer: StreamConsumer, *,
                         on_listen: Callable[[str, int], Any] | None = None,
                         timeout: float | None = None,
                         stop: asyncio.Event | None = None,
                         chunk_size: int = 1 << 20) -> Any:
    """Listen on ``host:port`` and feed ``restorer`` the one stream that arrives; returns
    its result. ``on_listen(host, port)`` is called once listening (with the real port
    when ``port`` is 0).

    ``timeout`` (seconds) bounds the whole receive, waiting for the sender included,
    not each read, so a sender trickling a byte at a time cannot hold the destination
    forever. The first connection that sends bytes owns the restore: one that connects
    and stays silent does not lock out the real sender, and later ones are closed.
    Setting ``stop`` ends the receive (Ctrl-C) with what has been restored so far.
    Raises ``StreamError`` when the address cannot be bound; every stream or restore
    problem is in the returned result."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()
    owner: list[asyncio.StreamWriter] = []
    writers: set[asyncio.StreamWriter] = set()
    handlers: set[asyncio.Task] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            handlers.add(task)
        try:
            if owner or done.done():       # one migration per receive
                return
            data = await reader.read(chunk_size)
            if not data or owner or done.done():
                return                     # silent or late: never the owner
            owner.append(writer)
            while data:
                try:
                    restorer.feed(data)
                except StreamError:
                    break
                if restorer.complete:
                    break
                data = await reader.read(chunk_size)
        except (ConnectionError, OSError) as e:
            if owner and owner[0] is writer and not restorer.failed:
                restorer.abort(f"connection lost: {e}")
        finally:
            writers.discard(writer)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
            if owner and owner[0] is writer and not done.done():
                done.set_result(restorer.finish())

    try:
        server = await asyncio.start_server(handle, host, port)
    except OSError as e:
        if e.errno == _errno.EADDRINUSE:
            raise StreamError(f"cannot listen on {host}:{port}: address already in use") from None
        raise StreamError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    stopper = asyncio.ensure_future(stop.wait()) if stop is not None else None
    try:
        bound = server.sockets[0].getsockname()
        if on_listen is not None:
            on_listen(bound[0], bound[1])
        waiting = {done} | ({stopper} if stopper is not None else set())
        await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if done.done():
            return done.result()
        if stop is not None and stop.is_set():
            restorer.abort("interrupted")
        elif not owner:
            restorer.abort(f"no sender connected within {timeout:g} s")
        else:
            restorer.abort(f"transfer not finished within {timeout:g} s (--timeout bounds the whole receive)")
        return restorer.result
    finally:
        if stopper is not None:
            stopper.cancel()
        server.close()
        for w in list(writers):
            w.close()
        # Let every connection's handler see its socket closed and end on its own (a
        # handler cancelled by asyncio.run's clean-up would log a traceback).
        pending = [t for t in handlers if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=2)
        await server.wait_closed()
