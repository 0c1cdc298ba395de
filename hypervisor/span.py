"""A span of the saver's ``write_batch()`` calls, served at once.

Xen's saver (``tools/libs/guest/xg_sr_save.c``, ``write_batch``) makes two calls per
batch of at most MAX_BATCH_SIZE PFNs: XEN_DOMCTL_getpageframeinfo3, then the foreign
map of the batch's data PFNs (only when it has some). What those calls answer depends
on the P2M types of the batch's PFNs and on the contents of their frames at the map.
Between two hypercalls of the guest (its balloon driver's XENMEM ops) the P2M types
change only where the hypervisor acts on its own: a PoD entry demand-populated
(``p2m-pod.c``), by the saver's own type query or by a guest write to it. Outside those,
a run of batches depends on the types at its start and on the guest's writes, each of
which carries its time. So ``serve_span`` answers the longest prefix of a planned run of
batches for which that holds, vectorised, with exactly what the calls made one at a
time would answer, and leaves the domain exactly as they would: the guest run up to the
span's last call, its writes before that applied. The batch after the prefix (if any)
goes the per-batch way (``Hypervisor.getpageframeinfo3`` / ``map_foreign``).

A span stops before the first batch that:

* holds a PoD entry (the type query would demand-populate it);
* the saver would reach after the guest's next hypercall (``Guest.next_call_tick``);
* would see a guest write the hypervisor must act on (to a PoD entry, or one dropped
  on a read-only type), so that write is served the per-batch way;
and after the first batch that ends past the save's deadline (the saver abandons the
save there).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .abi import IS_GUEST_WRITABLE, IS_POD, MAX_BATCH_SIZE, PFINFO_HAS_DATA, PFINFO_OF_TYPE, SpanServed, batch_counts
from .tables import batch_totals, known_run, lookup, stable_order

_EMPTY_U64 = np.empty(0, dtype=np.uint64)


class SpanTiming(Protocol):
    """How the saver's batches are timed (``migrate.toolstack.link.LinkModel``)."""

    def span_times(self, t0: float, counts: np.ndarray, data_pages: np.ndarray) -> np.ndarray: ...
    def map_time(self, t): ...


def serve_span(d, t0: float, pfns: np.ndarray, timing: SpanTiming,
               deadline: tuple[float, float] | None = None) -> SpanServed:
    """Serve the batches ``pfns[k*1024:(k+1)*1024]`` back to back from ``t0`` (see the
    module docstring): the longest prefix that can be served at once."""
    p = np.asarray(pfns, dtype=np.int64).reshape(-1)
    d.advance_to(t0)
    if p.size == 0:
        return SpanServed.empty(t0, "plan")
    types = d.p2m.get_types(p)
    stop = "plan"
    pod = lookup(IS_POD, types)
    if pod.any():
        n_p = int(np.flatnonzero(pod)[0]) // MAX_BATCH_SIZE * MAX_BATCH_SIZE
        p, types, stop = p[:n_p], types[:n_p], "pod"
        if n_p == 0:
            return SpanServed.empty(t0, stop)
    nib = lookup(PFINFO_OF_TYPE, types)
    data = lookup(PFINFO_HAS_DATA, nib)
    counts = batch_counts(p.size)
    dpb = batch_totals(data, MAX_BATCH_SIZE)
    times = timing.span_times(float(t0), counts, dpb)
    maps = timing.map_time(times[:-1])
    last_call = np.where(dpb > 0, maps, times[:-1])
    keep = counts.size

    if deadline is not None:
        t_start, limit = deadline
        over = np.flatnonzero(times[1:] - t_start > limit)
        if over.size and over[0] + 1 < keep:
            keep, stop = int(over[0]) + 1, "deadline"
        elif over.size:
            stop = "deadline"

    guest = d.guest
    running = guest is not None and d.state == "running"
    if running:
        k_call = guest.next_call_tick()
        if k_call is not None:
            late = np.flatnonzero(guest.ticks_by(last_call[:keep]) > k_call)
            if late.size:
                keep, stop = int(late[0]), "hypercall"
    if keep == 0:
        return SpanServed.empty(t0, stop)

    wt, wg, wtok = _EMPTY_F64, np.empty(0, np.int64), _EMPTY_U64
    n_w = 0
    if running:
        d.sched.generate(float(last_call[keep - 1]))
        wt, wg, wtok = d.sched.pending_writes()
        n_w = int(np.searchsorted(wt, last_call[keep - 1], side="left"))
        if n_w:
            odd = np.flatnonzero(~IS_GUEST_WRITABLE[d.p2m.get_types(wg[:n_w])])
            if odd.size:
                w = wt[odd[0]]
                # A call at c applies the writes before c: batches whose calls are all
                # at or before w are served without it.
                after = np.flatnonzero(last_call[:keep] > w)
                if after.size:
                    keep, stop = int(after[0]), "write"
                if keep == 0:
                    return SpanServed.empty(t0, stop)
                n_w = int(np.searchsorted(wt, last_call[keep - 1], side="left"))

    n_p = int(counts[:keep].sum())
    p, nib, data = p[:n_p], nib[:n_p], data[:n_p]
    dp = p if int(dpb[:keep].sum()) == n_p else p[data]      # (every PFN a data page: no copy)
    tokens = d.contents(dp) if dp.size else _EMPTY_U64
    if n_w and dp.size:
        tokens = _overlay(tokens, dp, maps[:keep], dpb[:keep], wt[:n_w], wg[:n_w], wtok[:n_w])
    c_last = float(last_call[keep - 1])
    d.advance_to(c_last)
    return SpanServed(keep, n_p, nib, np.asarray(tokens, dtype=np.uint64), times[:keep + 1].copy(), stop)


_EMPTY_F64 = np.empty(0, dtype=np.float64)


def _overlay(tokens: np.ndarray, dp: np.ndarray, maps: np.ndarray, data_per_batch: np.ndarray, wt: np.ndarray,
             wg: np.ndarray, wtok: np.ndarray) -> np.ndarray:
    """Contents of the unique PFNs ``dp`` (data PFNs of batches back to back, each
    batch's ``data_per_batch`` of them read at its map time ``maps``): the last of the
    writes ``(wt, wg, wtok)`` (in time order) to each before its map, else ``tokens``
    (the caller's own fresh read, updated in place and returned)."""
    ascending = dp.size < 2 or known_run(dp) or bool((dp[1:] > dp[:-1]).all())   # the saver's PFNs usually are
    order = None if ascending else np.argsort(dp, kind="stable")
    sdp = dp if ascending else dp[order]
    near = np.flatnonzero((wg >= sdp[0]) & (wg <= sdp[-1]))       # cheap: most writes are elsewhere
    if near.size == 0:
        return tokens
    run = ascending and int(sdp[-1]) - int(sdp[0]) == sdp.size - 1
    if run and bool((data_per_batch[:-1] == MAX_BATCH_SIZE).all()):
        # One run of data PFNs in full batches (a send_all pass): a write's PFN index is
        # its offset and its batch that over MAX_BATCH_SIZE, so the writes that came
        # before their PFN's map are found in time order, and only they are ordered
        # by PFN (stable: each PFN's writes stay in time order).
        ids = wg[near] - int(sdp[0])
        before = wt[near] < maps[ids >> _BATCH_SHIFT]
        wi, ids = near[before], ids[before]
        by_pfn = stable_order(ids)
        wi, ids = wi[by_pfn], ids[by_pfn]
    else:
        # The writes by PFN (stable: each PFN's writes stay in time order), so the search
        # through the span's PFNs walks forward instead of jumping about.
        near = near[stable_order(wg[near] - int(sdp[0]))]
        keys = wg[near]
        if run:
            pos = keys - int(sdp[0])              # (every near write lands on one)
        else:
            pos = np.searchsorted(sdp, keys)
            pos[pos >= sdp.size] = 0
            hit = sdp[pos] == keys
            if not hit.any():
                return tokens
            near, pos = near[hit], pos[hit]
        ids = pos if ascending else order[pos]    # which data PFN each one writes
        batch = np.searchsorted(np.cumsum(data_per_batch), ids, side="right")
        before = wt[near] < maps[batch]           # made before that PFN's map
        wi, ids = near[before], ids[before]
    if ids.size == 0:
        return tokens
    # The latest such write to each PFN: the last of its run of entries.
    last = np.ones(ids.size, dtype=bool)
    last[:-1] = ids[1:] != ids[:-1]
    tokens[ids[last]] = wtok[wi[last]]
    return tokens


#: A data PFN's batch in a span of full batches: its index shifted by this.
_BATCH_SHIFT = MAX_BATCH_SIZE.bit_length() - 1
assert 1 << _BATCH_SHIFT == MAX_BATCH_SIZE

