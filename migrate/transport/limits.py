"""How long the actors wait on each other: the transport's liveness limits.

The counterpart of Xen's toolstack timeouts (libxl's ``LIBXL_*_TIMEOUT`` for a domain
that does not answer): a peer not heard from within ``DEFAULT_TIMEOUT`` is lost. Kept
apart from ``migrate.transport.base`` (which needs numpy and the wire codec) so the
command line can show these defaults in ``--help`` without loading the transport.
"""

from __future__ import annotations

DEFAULT_TIMEOUT = 5.0
DEFAULT_HEARTBEAT = 1.0
#: How long a toolstack (or hypervisor) waits for its peer to show up on the run.
DEFAULT_PEER_WAIT = 10.0
#: Even a callee that keeps heartbeating must answer within this (a hung handler).
DEFAULT_CALL_LIMIT = 120.0
