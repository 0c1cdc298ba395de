"""The guest -> hypervisor operations and the domain builder's layout (the ABI's half
that ``xen/include/public/memory.h`` describes: XENMEM_* sub-ops and their extents).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# --------------------------------------------------------------------------------------
# Guest -> hypervisor operations (what a guest's run() yields).
#
# A guest step yields these in time order; the hypervisor applies each one and sends
# the result back into the generator (``gen.send(result)``): ``None`` for writes, a
# ``HypercallResult`` for a memory_op call, a list of them for a run of calls
# (``all_done`` gives the answer of calls that do everything). Arrays are numpy int64 GFNs.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemoryWrites:
    """The guest's vCPUs write these GFNs; ``t`` (seconds) stamps the whole set.

    ``tokens[i]`` is the new 64-bit content token of ``gfns[i]`` (non-zero; token 0
    means a zero-filled page). ``times[i]``, when given, is the virtual time of write
    ``i`` (non-decreasing, at most ``t``); the hypervisor applies exactly the writes
    before a call's time and holds the rest. With repeats, the last write to a GFN wins.
    """

    t: float
    gfns: np.ndarray
    tokens: np.ndarray
    times: np.ndarray | None = None


def write_arrays(ops) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(times, gfns, tokens)`` (float64, int64, uint64) of a list of timed
    ``MemoryWrites``, in order."""
    parts = [(np.asarray(op.times, dtype=np.float64), np.asarray(op.gfns, dtype=np.int64),
              np.asarray(op.tokens, dtype=np.uint64)) for op in ops]
    if not parts:
        return np.empty(0, dtype=np.float64), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.uint64)
    if len(parts) == 1:
        return parts[0]
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))   # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class DecreaseReservation:
    """XENMEM_decrease_reservation: balloon inflate, hand ``gfns`` back to Xen."""

    t: float
    gfns: np.ndarray


@dataclass(frozen=True, slots=True)
class PopulatePhysmap:
    """XENMEM_populate_physmap: balloon deflate; ``pod=True`` asks for PoD entries
    (XENMEMF_populate_on_demand) instead of real frames."""

    t: float
    gfns: np.ndarray
    pod: bool = False


@dataclass(frozen=True, slots=True)
class DecreaseReservationRun:
    """The balloon driver's back-to-back XENMEM_decrease_reservation calls of one step:
    call ``i`` hands back the next ``sizes[i]`` GFNs of ``gfns``, all at ``t``, and the
    driver makes no call after one Xen does not finish (Linux's balloon worker loops
    over ``decrease_reservation`` in ``drivers/xen/balloon.c``). The answer is the list
    of the calls made, one ``HypercallResult`` each: exactly what the calls served one
    by one return. (One op instead of one per call, so the emulator serves the run at
    once.)"""

    t: float
    gfns: np.ndarray
    sizes: np.ndarray


@dataclass(frozen=True, slots=True)
class PopulatePhysmapRun:
    """The balloon driver's back-to-back XENMEM_populate_physmap calls of one step (see
    ``DecreaseReservationRun``): call ``i`` asks for the next ``sizes[i]`` GFNs of
    ``gfns``; ``pod`` as in ``PopulatePhysmap``."""

    t: float
    gfns: np.ndarray
    sizes: np.ndarray
    pod: bool = False


@dataclass(frozen=True, slots=True)
class AddToPhysmap:
    """XENMEM_add_to_physmap with XENMAPSPACE_gmfn: move the frame at ``src`` to ``dst``."""

    t: float
    src: int
    dst: int


@dataclass(frozen=True, slots=True)
class RemoveFromPhysmap:
    """XENMEM_remove_from_physmap of ``gfn``."""

    t: float
    gfn: int


@dataclass(frozen=True, slots=True)
class SetTypedEntry:
    """A device model / toolstack mapping ``p2m_type`` (MMIO direct or foreign) over
    ``gfn`` through set_typed_p2m_entry, replacing whatever RAM was there."""

    t: float
    gfn: int
    p2m_type: int


@dataclass(frozen=True, slots=True)
class MemoryMapping:
    """XEN_DOMCTL_memory_mapping, made by the guest's device model (a passed-through
    device's BAR): ``add`` maps MMIO frames at GFNs ``[first_gfn, first_gfn + nr)``
    (map_mmio_regions -> set_mmio_p2m_entry -> set_typed_p2m_entry, p2m_mmio_direct,
    over whatever RAM was there); not ``add`` unmaps them (unmap_mmio_regions ->
    clear_mmio_p2m_entry: the GFNs become holes). The answer: ``rc`` 0 or -errno,
    ``done`` the GFNs changed (a prefix)."""

    t: float
    first_gfn: int
    nr: int
    add: bool = True


@dataclass(frozen=True, slots=True)
class ForeignMapping:
    """Another domain's frames mapped into this domain's own physmap at GFNs
    ``[first_gfn, first_gfn + nr)``: ``add`` is XENMEM_acquire_resource from a
    translated caller (memory.c: set_foreign_p2m_entry per frame, straight over
    whatever was there); not ``add`` is XENMEM_remove_from_physmap of each. The answer
    as ``MemoryMapping``'s."""

    t: float
    first_gfn: int
    nr: int
    add: bool = True


GuestOp = (MemoryWrites | DecreaseReservation | PopulatePhysmap | DecreaseReservationRun | PopulatePhysmapRun
           | AddToPhysmap | RemoveFromPhysmap | SetTypedEntry | MemoryMapping | ForeignMapping)
Hypercall = (DecreaseReservation | PopulatePhysmap | DecreaseReservationRun | PopulatePhysmapRun | AddToPhysmap
             | RemoveFromPhysmap | SetTypedEntry | MemoryMapping | ForeignMapping)


@dataclass(frozen=True, slots=True)
class HypercallResult:
    """What a memory_op returned: ``rc`` is Xen's return value (number of extents
    done for decrease/populate; 0 or ``-errno`` otherwise). ``done`` are the GFNs the
    call actually handled (a prefix of the request, as Xen stops at the first failure).
    ``errno`` is why the call stopped short (0 when it did everything it was asked):
    a partial decrease/populate returns a count, so its errno travels here, where
    ``xc_domain_populate_physmap_exact`` reads it."""

    rc: int
    done: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    errno: int = 0


def run_bounds(sizes, n: int) -> np.ndarray:
    """Offsets ``[0, s0, s0+s1, ...]`` of a run's calls (``sizes`` of a
    ``DecreaseReservationRun`` / ``PopulatePhysmapRun``); they must add up to ``n``."""
    s = np.asarray(sizes, dtype=np.int64).reshape(-1)
    if (s < 0).any() or int(s.sum()) != n:
        raise ValueError(f"a run of calls has sizes {s.tolist()[:8]}... for {n} extents")
    return np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(s)])


def all_done(op) -> HypercallResult | list[HypercallResult] | None:
    """What Xen answers a balloon hypercall, or a run of them, that does every extent
    it is asked (a run: one full result per call), or a mapping that maps (or unmaps)
    every GFN; None for any other op."""
    if isinstance(op, (DecreaseReservation, PopulatePhysmap)):
        gfns = np.asarray(op.gfns, dtype=np.int64)
        return HypercallResult(rc=int(gfns.size), done=gfns)
    if isinstance(op, (DecreaseReservationRun, PopulatePhysmapRun)):
        gfns = np.asarray(op.gfns, dtype=np.int64)
        b = run_bounds(op.sizes, gfns.size).tolist()
        return [HypercallResult(rc=hi - lo, done=gfns[lo:hi]) for lo, hi in zip(b[:-1], b[1:])]
    if isinstance(op, (MemoryMapping, ForeignMapping)):
        return HypercallResult(rc=0, done=np.arange(int(op.first_gfn), int(op.first_gfn) + int(op.nr),
                                                    dtype=np.int64))
    return None


@dataclass(frozen=True, slots=True)
class GfnRuns:
    """Ascending GFNs held as runs ``[first[i], first[i] + count[i])``, in that order:
    a guest's RAM (a few runs around its holes) without a per-page array. A slice
    ``runs[a:b]`` gives positions ``a..b-1`` as an int64 array, so the domain builder
    takes a layout a slice at a time; ``np.asarray(runs)`` gives all of it."""

    first: np.ndarray
    count: np.ndarray

    @property
    def size(self) -> int:
        return int(np.asarray(self.count, dtype=np.int64).sum())

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("GfnRuns takes a slice with step 1")
        a, b, _ = key.indices(self.size)
        out = np.empty(max(0, b - a), dtype=np.int64)
        for lo, hi, g0 in self.pieces(a, b):
            out[lo - a:hi - a] = np.arange(g0, g0 + hi - lo, dtype=np.int64)
        return out

    def pieces(self, a: int, b: int):
        """``(lo, hi, gfn)`` for each run positions ``[a, b)`` overlap, in order:
        positions ``lo..hi-1`` are GFNs ``gfn..gfn + hi - lo - 1``."""
        count = np.asarray(self.count, dtype=np.int64)
        page0 = np.cumsum(count) - count
        r0 = int(np.searchsorted(page0, a, side="right")) - 1
        r1 = int(np.searchsorted(page0, b, side="left"))
        for r in range(max(r0, 0), r1):              # the runs the slice overlaps (few)
            lo, hi = max(a, int(page0[r])), min(b, int(page0[r] + count[r]))
            if hi > lo:
                yield lo, hi, int(self.first[r]) + lo - int(page0[r])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)


@dataclass(frozen=True, slots=True)
class DomainLayout:
    """What the domain builder puts in the P2M before the guest first runs.

    ``ram_gfns`` get real frames (contents ``ram_tokens``, or zero pages when None);
    both may be arrays or anything sliced like one (a :class:`GfnRuns`, a guest's lazy
    boot contents), which the builder reads a slice at a time; lazy contents that also
    have ``into(a, out)`` (write ``ram_tokens[a:a + len(out)]`` into ``out``) are
    written straight into the frames' token table;
    ``pod_gfns`` become populate_on_demand entries backed by a PoD cache of
    ``pod_cache_pages`` frames (Xen's PoD target); ``mmio_gfns`` become mmio_direct
    entries (XTAB in a save). Everything else is a hole (p2m_invalid).
    ``special_gfns`` are the builder's own pages (``xg_dom_x86.c``:
    ``alloc_magic_pages_hvm`` populates and clears them): RAM frames, zero-filled, that
    are not the guest's RAM; ``hvm_params`` the ``(index, value)`` pairs it sets
    (``xc_hvm_param_set``), which a saver reads back for its HVM_PARAMS record.
    """

    ram_gfns: np.ndarray | GfnRuns
    ram_tokens: Any = None
    pod_gfns: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    pod_cache_pages: int = 0
    mmio_gfns: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    special_gfns: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64),
                                     metadata={"wire": "when_set"})
    hvm_params: tuple[tuple[int, int], ...] = field(default=(), metadata={"wire": "when_set"})
