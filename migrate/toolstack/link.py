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

import numpy as np


#: Stream record framing (stream.py's RHDR_SIZE / PAGE_SIZE; a test keeps them equal).
_RHDR_SIZE = 8
_PAGE_SIZE = 4096


def page_data_record_bytes(count, data_pages):
    """Bytes of one PAGE_DATA record of ``count`` PFNs (at most 1024) of which
    ``data_pages`` carry a page: header, count word, one pfn word per PFN, the pages,
    padded to 8 bytes (what ``StreamWriter.write_page_data`` writes for one batch).
    Takes ints or integer arrays (one record per element)."""
    length = 8 + 8 * count + _PAGE_SIZE * data_pages
    return _RHDR_SIZE + length + ((-length) & 7)


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

    # One batch of write_batch(), step by step. The engine times its batches with these
    # functions and nothing else, one batch at a time (``next_batch_time``) or a whole
    # span of batches at once (``batch_steps``): one definition of a batch's timing.

    def map_time(self, t: float) -> float:
        """When write_batch() maps a batch's data pages, given its getpageframeinfo3 at ``t``."""
        return t + self.hypercall_overhead

    def map_done(self, t: float) -> float:
        """When the foreign map made at ``t`` returns."""
        return t + self.hypercall_overhead

    def batch_steps(self, nbytes: np.ndarray, data_pages: np.ndarray, mapped: np.ndarray) -> np.ndarray:
        """For each batch, the time from its getpageframeinfo3 to the next batch's: the
        type query's overhead, the foreign map's when the batch has data pages (it is
        only mapped then), then ``batch_cost`` of its PAGE_DATA record of ``nbytes``."""
        h = self.hypercall_overhead
        transfer = np.asarray(nbytes, dtype=np.float64) / self.bandwidth
        if self.restore_rate:
            transfer = np.maximum(transfer, np.asarray(data_pages, dtype=np.float64) / self.restore_rate)
        return np.where(np.asarray(mapped, dtype=bool), h + h, h) + (self.batch_overhead + transfer)

    def batch_times(self, t0: float, steps: np.ndarray) -> np.ndarray:
        """The getpageframeinfo3 times of batches back to back from ``t0``, plus the time
        after the last one: ``t[k+1] = t[k] + steps[k]``, added in order (the same
        floating-point sums as ``next_batch_time`` one batch at a time)."""
        out = np.empty(len(steps) + 1, dtype=np.float64)
        out[0] = t0
        out[1:] = steps
        return np.add.accumulate(out)

    def span_times(self, t0: float, counts: np.ndarray, data_pages: np.ndarray) -> np.ndarray:
        """``batch_times`` of batches of ``counts`` PFNs carrying ``data_pages`` pages each
        (a batch is mapped when it has data pages), from ``t0``."""
        counts = np.asarray(counts, dtype=np.int64)
        data_pages = np.asarray(data_pages, dtype=np.int64)
        steps = self.batch_steps(page_data_record_bytes(counts, data_pages), data_pages, data_pages > 0)
        return self.batch_times(t0, steps)

    def next_batch_time(self, t: float, nbytes: int, data_pages: int, mapped: bool) -> float:
        """When the saver's next batch starts, given this one's getpageframeinfo3 at ``t``."""
        return float(self.batch_times(t, self.batch_steps(np.array([nbytes]), np.array([data_pages]),
                                                          np.array([mapped])))[1])

    def clean_time(self, pages: int) -> float:
        return self.hypercall_overhead + pages / self.clean_rate
