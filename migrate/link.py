"""The link model and the toolstack's costs in virtual time.

Xen has no link model; this stands in for the TCP socket ``xl migrate`` writes the
stream into (tools/libs/light/libxl_stream_write.c) and for the time the saver's
hypercalls take. Bytes cost ``bytes / bandwidth``; every 1024-PFN batch costs a fixed
overhead plus two hypercalls (getpageframeinfo3 and the foreign map, as in
``write_batch``); a CLEAN or PEEK walks ``pages`` PFNs at ``clean_rate`` while the
domain is paused (paging_log_dirty_op pauses the domain for the walk). The last byte
reaches the destination ``latency`` after it is sent. ``restore_rate`` (pages/s), when
set, caps how fast the destination takes data pages in: a batch then lasts at least
``data_pages / restore_rate``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LinkModel:
    bandwidth: float          # bytes per virtual second
    latency: float = 0.001    # seconds
    batch_overhead: float = 50e-6
    hypercall_overhead: float = 5e-6
    clean_rate: float = float(1 << 30)  # PFNs walked per second by CLEAN/PEEK
    restore_rate: float | None = None   # data pages per second the destination takes in

    def __post_init__(self) -> None:
        if self.bandwidth <= 0:
            raise ValueError("link bandwidth must be positive")
        if self.clean_rate <= 0:
            raise ValueError("link clean_rate must be positive")

    def transfer_time(self, nbytes: int, data_pages: int = 0) -> float:
        t = nbytes / self.bandwidth
        if self.restore_rate:
            t = max(t, data_pages / self.restore_rate)
        return t

    def clean_time(self, pages: int) -> float:
        return self.hypercall_overhead + pages / self.clean_rate
