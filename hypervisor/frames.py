"""Host machine frames: the allocator and the frame contents.

Mirrors Xen's heap allocator as a domain sees it (``alloc_domheap_pages`` /
``free_domheap_pages`` in ``xen/common/page_alloc.c``): a host holds ``host_frames``
frames; an allocation of n frames either gets all n or fails with ENOMEM and takes
nothing. Freshly allocated frames are scrubbed (token 0, an all-zero page), as Xen
scrubs pages it hands a guest.

Allocation is deterministic: freed frames go on a LIFO free stack and are reused first
(most recently freed first); otherwise frames come from a never-used watermark in MFN
order. Memory is O(freed frames) (4 bytes each: MFNs are below 2^32, the host limit),
so a host limit of billions of frames costs nothing up front.

Frame contents are one 64-bit content token per MFN (``content.py`` expands a token to
its 4 KiB page), held in a :class:`~hypervisor.chunked.ChunkedArray`: 8 bytes per MFN.
"""

from __future__ import annotations

import numpy as np

from .abi import ENOMEM, HOST_FRAMES_MAX, XenError
from .chunked import ChunkedArray
from .runs import run_start
from .tables import run_array


class HostFrames:
    """Frame allocator with a host limit, plus the per-frame content tokens."""

    def __init__(self, host_frames: int):
        if host_frames < 0 or host_frames > HOST_FRAMES_MAX:
            raise ValueError(f"host_frames must be in [0, {HOST_FRAMES_MAX}] (32-bit MFNs): {host_frames}")
        self.host_frames = int(host_frames)
        self._watermark = 0                                   # next never-used MFN
        self._stack = np.empty(0, dtype=np.uint32)            # freed MFNs (< 2^32); top = end
        self._nstack = 0
        self.tokens = ChunkedArray(np.uint64, 0)

    @property
    def free_frames(self) -> int:
        return self.host_frames - self._watermark + self._nstack

    def alloc(self, n: int) -> np.ndarray:
        """Allocate ``n`` scrubbed frames (int64 MFNs), or raise ENOMEM taking none."""
        n = int(n)
        if n > self.free_frames:
            raise XenError(ENOMEM, f"host out of memory: {n} frames asked, "
                                   f"{self.free_frames} free of {self.host_frames}")
        k = min(n, self._nstack)
        # Pop most-recently-freed first.
        from_stack = self._stack[self._nstack - k:self._nstack][::-1].astype(np.int64)
        self._nstack -= k
        fresh = run_array(self._watermark, n - k)
        self._watermark += n - k
        mfns = np.concatenate([from_stack, fresh]) if k else fresh
        if from_stack.size:
            self.tokens.set(from_stack, 0)   # scrub reused frames; fresh ones read 0 already
        return mfns

    def alloc_run(self, n: int) -> int | None:
        """``alloc(n)`` when it would hand out one run of frames (no freed frame to
        reuse, so all come from the watermark in MFN order): the first MFN, with no
        array of them (the frames alloc_domheap_pages would give, as ``alloc`` picks them). None, taking nothing, when ``alloc`` would reuse freed frames
        or the host lacks ``n`` free frames."""
        n = int(n)
        if self._nstack or n > self.free_frames:
            return None
        m0 = self._watermark
        self._watermark += n
        return m0

    def free(self, mfns) -> None:
        """Return frames to the host (pushed in the given order)."""
        m = np.asarray(mfns, dtype=np.int64).reshape(-1)
        if m.size == 0:
            return
        need = self._nstack + m.size
        if need > self._stack.size:
            grown = np.empty(max(need, 2 * self._stack.size, 64), dtype=np.uint32)
            grown[: self._nstack] = self._stack[: self._nstack]
            self._stack = grown
        self._stack[self._nstack:need] = m
        self._nstack = need

    def read(self, mfns) -> np.ndarray:
        return self.tokens.get(np.asarray(mfns, dtype=np.int64))

    def write(self, mfns, tokens) -> None:
        """Store content tokens into unique frames."""
        self.tokens.set(np.asarray(mfns, dtype=np.int64), np.asarray(tokens, dtype=np.uint64))

    def read_run(self, first: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """``read(arange(first, first + n))``, one slice of the token table per chunk
        (into ``out`` when given)."""
        return self.tokens.get_run(int(first), int(n), out)

    def write_run(self, first: int, tokens: np.ndarray) -> None:
        """``write(arange(first, first + len(tokens)), tokens)``, a slice per chunk."""
        tok = np.asarray(tokens, dtype=np.uint64).reshape(-1)
        if tok.size:
            self.tokens.put_run(int(first), tok)

    def fill(self, mfns, fill) -> None:
        """``write(mfns, tokens)`` for tokens a producer writes into a buffer it is given,
        ``fill(position, out)`` for ``tokens[position:position + len(out)]``: a run of
        frames (a build step's fresh ones) is filled in the token table itself."""
        m = np.asarray(mfns, dtype=np.int64).reshape(-1)
        m0 = run_start(m) if m.size else None
        if m0 is not None:
            for pos, row in self.tokens.row_slices(m0, m.size):
                fill(pos, row)
            return
        buf = np.empty(m.size, dtype=np.uint64)
        fill(0, buf)
        self.write(m, buf)
