"""Is ``--scheduler`` a Dask scheduler? Asked in a few seconds, before the sweep starts.

A sweep hands its runs to a ``dask scheduler`` (``migrate.sweep.engines.dask_rows``).
Dask's client trusts whatever answers at the address: a listener that never speaks
holds it for minutes, and an HTTP server's reply read as a Dask frame header asks for
exabytes. So the address is probed first with a short timeout, the way Dask's own
comm layer opens a connection (``distributed/comm/core.py``: both ends write their
handshake at once, then read the other's): a scheduler greets a new connection at
once with a framed message whose first eight bytes are its length (a little-endian
u64, ``distributed/comm/tcp.py``). No greeting in time, a closed connection, or eight
bytes that are no sane length: one line naming the address, exit 2.

For ``tls://`` the TLS handshake is tried without checking certificates (the
scheduler's own settings decide that later): a listener that never answers, or one
that answers in something other than TLS, is refused the same way. Other Dask
transports (``inproc://``, ``ucx://``, ...) are left to Dask.
"""

from __future__ import annotations

import socket
import ssl
import struct

#: Seconds the probe waits for a connection, a TLS handshake and the greeting.
PROBE_TIMEOUT = 3.0
#: A scheduler's greeting (its handshake) is a small message; a longer "length" means
#: the bytes were not Dask's.
MAX_GREETING = 1 << 20
DEFAULT_PORT = 8786


class SchedulerError(ValueError):
    """The address is not a Dask scheduler that answers (one line, exit 2)."""


def _host_port(address: str, rest: str) -> tuple[str, int]:
    hostport = rest.split("/", 1)[0]
    if hostport.startswith("["):                      # [::1]:8786
        host, _, tail = hostport[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port_text = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
    if not host:
        raise SchedulerError(f"--scheduler: expected an address like tcp://HOST:8786, found {address!r}")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise SchedulerError(f"--scheduler: bad port {port_text[:12]!r} in {address!r} (expected 1-65535)")
    return host, int(port_text)


def _recv_exactly(sock, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def check_scheduler(address: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Raise ``SchedulerError`` unless ``address`` greets like a Dask scheduler within
    ``timeout`` seconds per step."""
    scheme, sep, rest = address.partition("://")
    if not sep or scheme not in ("tcp", "tls"):
        return
    host, port = _host_port(address, rest)
    where = f"--scheduler: {address}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.timeout:
        raise SchedulerError(f"--scheduler: cannot reach the Dask scheduler at {address}: no connection "
                             f"within {timeout:g} s (is 'dask scheduler' running there, and the port open?)") from None
    except OSError as exc:
        raise SchedulerError(f"--scheduler: cannot reach the Dask scheduler at {address}: "
                             f"{exc.strerror or exc} (is 'dask scheduler' running there?)") from None
    try:
        sock.settimeout(timeout)
        if scheme == "tls":
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            try:
                sock = ctx.wrap_socket(sock, server_hostname=host)
            except socket.timeout:
                raise SchedulerError(f"{where}: no TLS answer within {timeout:g} s: not a Dask "
                                     "scheduler") from None
            except ssl.SSLError as exc:
                reason = (exc.reason or "").upper()
                if "WRONG_VERSION" in reason or "RECORD_LAYER" in reason or "PACKET_LENGTH" in reason:
                    raise SchedulerError(f"{where}: it does not speak TLS: not a Dask scheduler over "
                                         "tls:// (tcp:// instead?)") from None
                return            # a TLS server with its own rules (client certificates): Dask's to check
            except OSError as exc:
                raise SchedulerError(f"{where}: the connection failed during the TLS handshake: "
                                     f"{exc.strerror or exc}") from None
        try:
            head = _recv_exactly(sock, 8)
        except socket.timeout:
            raise SchedulerError(f"{where}: it accepted the connection but sent no greeting within "
                                 f"{timeout:g} s: not a Dask scheduler (a web server? the dashboard is "
                                 "port 8787, the scheduler 8786)") from None
        except (ssl.SSLError, OSError) as exc:
            if scheme == "tls":
                return            # a client certificate refused after the handshake: Dask's to report
            raise SchedulerError(f"{where}: the connection failed: {exc.strerror or exc}") from None
        if len(head) < 8:
            raise SchedulerError(f"{where}: it closed the connection without a greeting: not a Dask "
                                 "scheduler")
        (length,) = struct.unpack("<Q", head)
        if not 0 < length <= MAX_GREETING:
            hint = " (it answered like an HTTP server)" if head.startswith(b"HTTP") else ""
            raise SchedulerError(f"{where}: its greeting is not Dask's: not a Dask scheduler{hint}")
    finally:
        sock.close()


__all__ = ["PROBE_TIMEOUT", "SchedulerError", "check_scheduler"]
