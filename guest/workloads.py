"""Page-write workloads: which RAM pages a guest's vCPUs write, tick by tick.

Mirrors the synthetic dirtiers used to characterise precopy (the manual's
``docs/scenarios.md`` lists them): mig_mon's ``mm_dirty -p random|sequential|once``,
a hot set (a writable working set, "80 % of accesses to 20 % of data"), YCSB's Zipfian
distribution (constant 0.99), and replay of a recorded ``(time, gfn)`` trace.

Determinism: a workload's output for tick ``k`` depends only on (seed, workload index,
k). Ticks are grouped in epochs of up to 100 ticks; an epoch is generated in one numpy
call from ``np.random.default_rng([seed, index, epoch])`` and cached, so running the
guest to ``t`` in one call or in many gives identical pages. How many writes fall in a
tick is not random: tick ``j`` (counted from the workload's start) gets
``floor(r*(j+1)) - floor(r*j)`` writes for ``r = rate * tick``, so a long run writes
exactly ``rate * duration`` pages (to within one).

Each write also has its own virtual time inside its tick (``write_timing``, see
``write_times``): with ``continuous`` (the default) the ``m``-th of a tick's ``n`` writes
happens at ``(k + (m + u)/n) * tick`` for ``u`` uniform in ``[0, 1)`` drawn from
``np.random.default_rng([seed, index, epoch, TIME_KEY])`` (a stream of its own, so the
pages are the same in both modes): a writer at a steady rate, jittered, already in time
order. With ``tick`` every write of tick ``k`` happens at ``k * tick`` (the model before
writes carried their own times; kept so its numbers can be reproduced). A trace replays
its recorded times.

Everything here is in RAM page index space ``[0, nr_pages)``; the guest filters against
its ownership map and maps indices to GFNs when it emits the writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.random  # (numpy 2 loads it on first use: here, with the module, not inside a run)

from hypervisor.abi import MAX_GFN, GfnRuns
from hypervisor.content import splitmix64
from hypervisor.tables import stable_order

from .config import (HotsetWorkload, IdleWorkload, OnceWorkload, SequentialWorkload,
                     TraceWorkload, UniformWorkload, ZipfWorkload, resolve_region)

#: Ticks per generated epoch (fewer for very fast workloads, to bound array sizes).
EPOCH_TICKS = 100
#: Upper bound on writes generated per epoch.
MAX_EPOCH_WRITES = 2_000_000

_EMPTY = np.empty(0, dtype=np.int64)
_EMPTY_F64 = np.empty(0, dtype=np.float64)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_TICK_MUL = np.uint64(0xD1B54A32D192ED03)
_KEY_MUL = np.uint64(0xA24BAED4963EE407)
#: RNG key of the within-tick write times (never a workload index or REUSE_KEY).
TIME_KEY = 0x71AE
#: How a guest's writes are placed in time (``GuestConfig.write_timing``).
WRITE_TIMINGS = ("continuous", "tick")


def seed_key(seed: int) -> int:
    """A guest seed as a non-negative int for ``np.random.default_rng``."""
    return int(seed) & ((1 << 64) - 1)


def write_tokens(seed: int, gfns: np.ndarray, ticks: np.ndarray, key: int) -> np.ndarray:
    """Content tokens of writes: non-zero, distinct per (seed, gfn, tick, writer key),
    and never equal (barring a 2^-64 accident) to an initial token (``initial_tokens``)."""
    with np.errstate(over="ignore"):
        s = splitmix64(np.uint64(seed_key(seed)) ^ np.uint64(0x5EED))
        # In place over two arrays (wrapping uint64 arithmetic: the same words as
        # the expression written out, without its temporaries).
        x = np.asarray(gfns, dtype=np.int64).astype(np.uint64)
        x ^= s
        splitmix64(x, out=x)
        y = np.asarray(ticks, dtype=np.int64).astype(np.uint64)
        y += np.uint64(1)
        y *= _TICK_MUL
        x += y
        x += np.uint64(key + 1) * _KEY_MUL
        splitmix64(x, out=x)
    x[x == 0] = 1
    return x


def tick_starts(ticks: np.ndarray, tick: float) -> np.ndarray:
    """``k * tick`` for each tick index ``k`` (float64): the one definition of a tick's
    start, so that a write of tick ``k`` lies in ``[tick_starts(k), tick_starts(k+1))``
    wherever it is computed."""
    out = np.asarray(ticks, dtype=np.int64).astype(np.float64)
    out *= tick
    return out


def times_in_ticks(ticks: np.ndarray, frac: np.ndarray, tick: float) -> np.ndarray:
    """Write times ``(k + frac) * tick`` for ``frac`` in ``[0, 1)``, each kept strictly
    before its tick's end (rounding could otherwise land a write on the next tick)."""
    start = tick_starts(ticks, tick)
    t = np.asarray(frac, dtype=np.float64) * tick
    t += start                                    # (IEEE addition commutes exactly)
    start += tick                                 # now each tick's end ...
    np.nextafter(start, -np.inf, out=start)       # ... and the last time before it
    return np.minimum(t, start, out=t)


def time_order(times: np.ndarray) -> np.ndarray:
    """``np.argsort(times, kind="stable")`` for write times (float64, non-negative):
    IEEE 754 doubles of one sign order as their bit patterns do as integers, so the
    stable order of the times is that of their bits, a few 16-bit radix passes
    (``stable_order``) instead of a merge sort of the floats."""
    t = np.ascontiguousarray(times, dtype=np.float64)
    if t.size < 2:
        return np.arange(t.size, dtype=np.int64)
    bits = t.view(np.int64)
    lo = int(bits.min())
    if lo < 0:                          # a negative time (or -0.0): the float sort
        return np.argsort(t, kind="stable")
    return stable_order(bits - lo)


def write_fracs(rng: np.random.Generator, counts: np.ndarray) -> np.ndarray:
    """Where each write falls inside its tick, as a fraction in ``[0, 1)``, for ticks of
    ``counts`` writes each (in order): write ``m`` of ``n`` at ``(m + u) / n``, ``u``
    uniform: a steady writer with jitter, in time order without a sort."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, dtype=np.float64)
    first = np.cumsum(counts) - counts
    m = np.arange(total, dtype=np.int64) - np.repeat(first, counts)
    n = np.repeat(counts, counts).astype(np.float64)
    return (m + rng.random(total)) / n


def hashed_fracs(seed: int, pages: np.ndarray, ticks: np.ndarray, key: int) -> np.ndarray:
    """A fraction in ``[0, 1)`` per write, hashed from (seed, page, tick, key): for writes
    that come from elsewhere than a workload's epoch (the balloon's reuse writes)."""
    with np.errstate(over="ignore"):
        s = splitmix64(np.uint64(seed_key(seed)) ^ np.uint64(TIME_KEY))
        x = np.asarray(pages, dtype=np.int64).astype(np.uint64)     # in place, as write_tokens
        x ^= s
        splitmix64(x, out=x)
        y = np.asarray(ticks, dtype=np.int64).astype(np.uint64)
        y += np.uint64(key + 1)
        y *= _TICK_MUL
        x += y
        splitmix64(x, out=x)
    x >>= np.uint64(11)
    out = x.astype(np.float64)
    out *= 1.0 / (1 << 53)
    return out


#: Pages hashed per step by initial_tokens (bounds its temporaries for huge guests).
_TOKEN_SLICE = 1 << 18
#: Pages BootTokens.fill hashes per step: its temporaries stay small enough to be
#: reused memory, not fresh pages to fault in.
_FILL_BLOCK = 1 << 16


def _boot_hash(z: np.ndarray) -> None:
    """``z`` (GFNs xor the seed's key, uint64) -> their boot tokens, in place."""
    splitmix64(z, out=z)
    z += _GOLDEN
    splitmix64(z, out=z)
    np.maximum(z, 1, out=z)                        # 0 (an all-zero page) becomes 1


def _boot_seed(seed: int) -> np.uint64:
    return splitmix64(np.uint64(seed_key(seed)) ^ np.uint64(0xB007))


def initial_tokens(seed: int, gfns: np.ndarray) -> np.ndarray:
    """Boot-time contents of RAM pages (non-zero)."""
    gfns = np.asarray(gfns, dtype=np.int64).reshape(-1)
    out = np.empty(gfns.size, dtype=np.uint64)
    with np.errstate(over="ignore"):
        s = _boot_seed(seed)
        for lo in range(0, gfns.size, _TOKEN_SLICE):
            z = out[lo:lo + _TOKEN_SLICE]          # hashed in place, a slice at a time
            np.bitwise_xor(gfns[lo:lo + z.size].view(np.uint64), s, out=z)
            _boot_hash(z)
    return out


@dataclass(frozen=True, slots=True)
class BootTokens:
    """The boot contents of the pages ``gfns`` (``initial_tokens(seed, gfn)``), computed
    for the slice asked for: ``tokens[a:b]`` is the contents of ``gfns[a:b]``. It stands
    for a per-page token array (8 bytes a page) in the domain layout."""

    seed: int
    gfns: GfnRuns

    def __len__(self) -> int:
        return self.gfns.size

    def __getitem__(self, key: slice) -> np.ndarray:
        return initial_tokens(self.seed, self.gfns[key])

    def into(self, a: int, out: np.ndarray) -> None:
        """``out[:] = self[a:a + out.size]`` (``out`` uint64), built in ``out`` itself:
        the domain builder hashes boot contents straight into the frames' token table
        (a new array per step would be fresh memory, faulted in page by page)."""
        with np.errstate(over="ignore"):
            s = _boot_seed(self.seed)
            for lo, hi, g0 in self.gfns.pieces(a, a + out.size):
                for b in range(lo, hi, _FILL_BLOCK):
                    e = min(b + _FILL_BLOCK, hi)
                    z = out[b - a:e - a]
                    np.bitwise_xor(np.arange(g0 + b - lo, g0 + e - lo, dtype=np.uint64), s, out=z)
                    _boot_hash(z)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)


def affine_permutation(n: int, seed: int, idx: int) -> tuple[int, int]:
    """``(a, b)`` such that ``x -> (a*x + b) mod n`` is a bijection of ``[0, n)`` that
    scatters neighbours far apart (a near n/phi, coprime with n). No per-page table."""
    if n <= 1:
        return 1, 0
    rng = np.random.default_rng([seed_key(seed), idx, 0xAFF1])
    a = max(1, int(n * 0.6180339887498949) + int(rng.integers(0, max(1, n // 64))))
    a %= n
    while math.gcd(a, n) != 1 or a == 0:
        a = (a + 1) % n
    return a, int(rng.integers(0, n))


class WorkloadGen:
    """Base: a workload over RAM pages ``[lo, hi)`` ticking every ``tick`` seconds."""

    def __init__(self, cfg, idx: int, seed: int, nr_pages: int, tick: float, timing: str = "continuous"):
        if timing not in WRITE_TIMINGS:
            raise ValueError(f"write timing {timing!r}: expected one of {', '.join(WRITE_TIMINGS)}")
        self.continuous = timing == "continuous"
        self.cfg = cfg
        self.idx = idx
        self.seed = seed_key(seed)
        self.tick = tick
        region = getattr(cfg, "region", None)
        if region is not None:
            self.lo, self.hi = resolve_region(region, nr_pages)
        else:
            self.lo, self.hi = 0, nr_pages
        self.n = self.hi - self.lo
        self.start_k = int(math.ceil(cfg.start / tick - 1e-9))
        self.stop_k = None if cfg.stop is None else int(math.ceil(cfg.stop / tick - 1e-9))
        rate = float(getattr(cfg, "rate", 0.0))
        self.per_tick = rate * tick
        self.epoch_ticks = max(1, min(EPOCH_TICKS, int(MAX_EPOCH_WRITES // max(self.per_tick, 1.0))))
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    # ------------------------------------------------------------- counting
    def _cum(self, ks: np.ndarray) -> np.ndarray:
        """Writes done before tick k (int64), for an array of ks."""
        j = ks - self.start_k
        if self.stop_k is not None:
            j = np.minimum(j, self.stop_k - self.start_k)
        j = np.maximum(j, 0)
        return np.floor(self.per_tick * j.astype(np.float64) + 1e-9).astype(np.int64)

    def _epoch(self, e: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ticks, pages, times)`` of epoch ``e``, sorted by time (cached)."""
        hit = self._cache.get(e)
        if hit is not None:
            return hit
        k0 = e * self.epoch_ticks
        ks = np.arange(k0, k0 + self.epoch_ticks + 1, dtype=np.int64)
        cum = self._cum(ks)
        counts = np.diff(cum)
        total = int(cum[-1] - cum[0])
        if total == 0 or self.n <= 0:
            out = (_EMPTY, _EMPTY, _EMPTY_F64)
        else:
            ticks = np.repeat(ks[:-1], counts)
            pages = self._generate(e, int(cum[0]), total, ticks)
            if self.continuous:
                frac = write_fracs(np.random.default_rng([self.seed, self.idx, e, TIME_KEY]), counts)
                times = times_in_ticks(ticks, frac, self.tick)
            else:
                times = tick_starts(ticks, self.tick)
            if pages.shape[0] != ticks.shape[0]:       # a workload that stops (once, no-wrap)
                ticks = ticks[: pages.shape[0]] if pages.shape[0] else _EMPTY
                times = times[: pages.shape[0]] if pages.shape[0] else _EMPTY_F64
            out = (ticks, pages.astype(np.int64, copy=False), times)
        if len(self._cache) >= 2:
            self._cache.pop(next(iter(self._cache)))
        self._cache[e] = out
        return out

    def _rng(self, e: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.idx, e])

    def _generate(self, e: int, first: int, total: int, ticks: np.ndarray) -> np.ndarray:
        """``total`` page indices (in [lo, hi)) for epoch ``e``; ``first`` is the number
        of writes this workload did before the epoch."""
        raise NotImplementedError

    # ------------------------------------------------------------- public
    def pages(self, k0: int, k1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ticks, pages, times)`` written in ticks ``[k0, k1)``, sorted by time."""
        if k1 <= k0 or self.per_tick <= 0:
            return _EMPTY, _EMPTY, _EMPTY_F64
        if self.stop_k is not None:
            k1 = min(k1, self.stop_k)
        k0 = max(k0, self.start_k)
        if k1 <= k0:
            return _EMPTY, _EMPTY, _EMPTY_F64
        E = self.epoch_ticks
        parts = []
        for e in range(k0 // E, (k1 - 1) // E + 1):
            ticks, pages, times = self._epoch(e)
            if ticks.shape[0] == 0:
                continue
            a = np.searchsorted(ticks, k0, side="left") if e * E < k0 else 0
            b = np.searchsorted(ticks, k1, side="left") if (e + 1) * E > k1 else ticks.shape[0]
            if b > a:
                parts.append((ticks[a:b], pages[a:b], times[a:b]))
        if not parts:
            return _EMPTY, _EMPTY, _EMPTY_F64
        if len(parts) == 1:
            return parts[0]
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


class IdleGen(WorkloadGen):
    def __init__(self, cfg, idx, seed, nr_pages, tick, timing="continuous"):
        super().__init__(cfg, idx, seed, nr_pages, tick, timing)
        self.per_tick = 0.0


class UniformGen(WorkloadGen):
    def _generate(self, e, first, total, ticks):
        return self.lo + self._rng(e).integers(0, self.n, size=total, dtype=np.int64)


class HotsetGen(WorkloadGen):
    def __init__(self, cfg, idx, seed, nr_pages, tick, timing="continuous"):
        super().__init__(cfg, idx, seed, nr_pages, tick, timing)
        self.hot_n = min(self.n, max(1, int(round(cfg.hot_fraction * self.n))))

    def _generate(self, e, first, total, ticks):
        rng = self._rng(e)
        hot = rng.random(total) < self.cfg.hot_share
        cold_n = self.n - self.hot_n
        v = rng.random(total)
        if cold_n == 0:
            hot[:] = True
        off = np.where(hot, np.floor(v * self.hot_n), self.hot_n + np.floor(v * max(cold_n, 1)))
        return self.lo + np.minimum(off.astype(np.int64), self.n - 1)


class ZipfGen(WorkloadGen):
    """Inverse-CDF sampling of the continuous power law on ``[1, n+1)`` (no per-rank
    table, so it scales to 64 Mi pages); rank ``r`` has weight close to ``(r+1)^-s``."""

    def __init__(self, cfg, idx, seed, nr_pages, tick, timing="continuous"):
        super().__init__(cfg, idx, seed, nr_pages, tick, timing)
        self.a, self.b = affine_permutation(self.n, seed, idx)

    def ranks(self, u: np.ndarray) -> np.ndarray:
        s = self.cfg.exponent
        top = float(self.n + 1)
        if abs(1.0 - s) < 1e-9:
            x = np.power(top, u)
        else:
            q = 1.0 - s
            x = np.power(1.0 + u * (top ** q - 1.0), 1.0 / q)
        return np.clip(np.floor(x).astype(np.int64) - 1, 0, self.n - 1)

    def _generate(self, e, first, total, ticks):
        r = self.ranks(self._rng(e).random(total))
        return self.lo + (self.a * r + self.b) % self.n


class SequentialGen(WorkloadGen):
    def _generate(self, e, first, total, ticks):
        pos = np.arange(first, first + total, dtype=np.int64)
        if self.cfg.wrap:
            return self.lo + pos % self.n
        return self.lo + pos[pos < self.n]


class OnceGen(WorkloadGen):
    def __init__(self, cfg, idx, seed, nr_pages, tick, timing="continuous"):
        super().__init__(cfg, idx, seed, nr_pages, tick, timing)
        self.a, self.b = affine_permutation(self.n, seed, idx)

    def _generate(self, e, first, total, ticks):
        pos = np.arange(first, min(first + total, self.n), dtype=np.int64)
        return self.lo + (self.a * pos + self.b) % self.n


class TraceGen(WorkloadGen):
    """Replays ``(time_s, gfn)`` rows; GFNs are mapped to RAM pages by the guest's
    layout (a GFN that is not guest RAM is an error at load). With continuous timing a
    row happens at its own time (rows in time order); with tick timing at its tick's
    start (rows of a tick in file order)."""

    def __init__(self, cfg, idx, seed, nr_pages, tick, timing="continuous", gfn_to_page=None):
        super().__init__(cfg, idx, seed, nr_pages, tick, timing)
        times, gfns = load_trace(cfg.path)
        pages = gfn_to_page(gfns) if gfn_to_page is not None else gfns
        bad = np.flatnonzero((pages < 0) | (pages >= nr_pages))
        if bad.size:
            raise TraceError(cfg.path, "GFNs of guest RAM",
                             f"GFN {int(gfns[bad[0]]):#x} (row {int(bad[0]) + 1})")
        t = times + cfg.start
        ks = np.floor(t / tick + 1e-9).astype(np.int64)
        keep = np.ones(ks.shape[0], dtype=bool) if cfg.stop is None else t < cfg.stop
        ks, t, pages = ks[keep], t[keep], pages[keep]
        order = np.argsort(t if self.continuous else ks, kind="stable")   # ks follows t
        self.ticks = ks[order]
        self.trace_pages = pages[order].astype(np.int64)
        if self.continuous:
            start = tick_starts(self.ticks, tick)
            self.times = np.minimum(np.maximum(t[order], start), np.nextafter(start + tick, -np.inf))
        else:
            self.times = tick_starts(self.ticks, tick)
        self.per_tick = 1.0 if self.ticks.size else 0.0
        self.start_k = 0

    def pages(self, k0, k1):
        if k1 <= k0 or self.ticks.size == 0:
            return _EMPTY, _EMPTY, _EMPTY_F64
        a = np.searchsorted(self.ticks, k0, side="left")
        b = np.searchsorted(self.ticks, k1, side="left")
        return self.ticks[a:b], self.trace_pages[a:b], self.times[a:b]


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


#: Trace limits: the file on disk, the rows it may hold, and (for .npz) the bytes its
#: arrays may expand to, so a small compressed file cannot unpack into gigabytes.
TRACE_MAX_BYTES = 512 << 20
TRACE_MAX_ROWS = 20_000_000
_NPZ_MAX_UNPACKED = TRACE_MAX_ROWS * 16 + (1 << 20)


class TraceError(ValueError):
    """A trace file that cannot be replayed: ``expected`` and ``found`` say why."""

    def __init__(self, path, expected: str, found: str):
        self.expected, self.found = expected, found
        super().__init__(f"trace {path}: expected {expected}, found {found}")


def _npz_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            unpacked = sum(i.file_size for i in infos)
            if unpacked > _NPZ_MAX_UNPACKED:
                raise TraceError(path, f"arrays of at most {TRACE_MAX_ROWS:,} rows",
                                 f"{unpacked:,} bytes once unpacked")
    except zipfile.BadZipFile:
        raise TraceError(path, "an .npz file (a zip of .npy arrays)", "not a zip file") from None
    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.keys())
            if "time_s" in z and "gfn" in z:
                t, g = z["time_s"], z["gfn"]
            elif len(names) >= 2:
                t, g = z[names[0]], z[names[1]]
            else:
                raise TraceError(path, "arrays time_s and gfn", ", ".join(names)[:60] or "no arrays")
    except TraceError:
        raise
    except Exception as e:     # a corrupt member: numpy raises many kinds
        raise TraceError(path, "readable .npy arrays time_s and gfn",
                         f"{type(e).__name__}: {str(e)[:60]}") from None
    for name, a in (("time_s", t), ("gfn", g)):
        if a.dtype.kind not in "iuf":
            raise TraceError(path, f"{name} as numbers", f"dtype {a.dtype}")
    try:
        t = np.asarray(t, dtype=np.float64).reshape(-1)
        if g.dtype.kind == "f" and not (np.isfinite(g).all() and (g == np.floor(g)).all()):
            raise TraceError(path, "whole-number GFNs", "fractions or NaN")
        g = np.asarray(g, dtype=np.int64).reshape(-1)
    except TraceError:
        raise
    except (ValueError, OverflowError) as e:
        raise TraceError(path, "numeric arrays", str(e)[:60]) from None
    return t, g


def _csv_arrays(path: Path, text: str) -> tuple[np.ndarray, np.ndarray]:
    lines = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    if lines and not _is_float(lines[0].replace(",", " ").split()[0]):
        lines = lines[1:]          # header row
    if len(lines) > TRACE_MAX_ROWS:
        raise TraceError(path, f"at most {TRACE_MAX_ROWS:,} rows", f"{len(lines):,}")
    times, gfns = [], []
    for n, ln in enumerate(lines, 1):
        cells = ln.replace(",", " ").split()
        try:
            if len(cells) < 2:
                raise ValueError(f"{len(cells)} cell")
            what = "a time_s that is not a number"
            times.append(float(cells[0]))
            what = "a gfn that is not an integer"
            gfns.append(int(cells[1], 0))
        except ValueError as e:
            # the row is described, never quoted: a path pointing at the wrong file
            # (a password file) must not show its contents in an error line
            found = f"{len(cells)} cell" if str(e).endswith(" cell") else what
            raise TraceError(path, "rows of time_s,gfn (a number and an integer GFN)",
                             f"{found} in data row {n}") from None
    return np.array(times, dtype=np.float64), np.array(gfns, dtype=object)


def load_trace(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(time_s float64, gfn int64)`` from a CSV (header optional, ``#`` comments,
    hex GFNs allowed) or an ``.npz`` with arrays ``time_s`` and ``gfn``. Every problem
    is a ``TraceError``; special files, oversized files and zip bombs are refused before
    they are read."""
    from .inputs import InputError, check_input, read_input

    path = Path(path)
    try:
        if path.suffix == ".npz":
            check_input(path, TRACE_MAX_BYTES, "trace file")
            t, g = _npz_arrays(path)
        else:
            t, g = _csv_arrays(path, read_input(path, TRACE_MAX_BYTES, "trace file"))
    except InputError as e:
        raise TraceError(path, e.expected, e.found) from None
    except UnicodeDecodeError:
        raise TraceError(path, "a UTF-8 CSV or an .npz file", "binary data") from None
    except OSError as e:
        raise TraceError(path, "a readable trace file", e.strerror or str(e)) from None
    if t.shape != g.shape:
        raise TraceError(path, "time_s and gfn of one length", f"{t.size} and {g.size}")
    if t.size > TRACE_MAX_ROWS:
        raise TraceError(path, f"at most {TRACE_MAX_ROWS:,} rows", f"{t.size:,}")
    if t.size and not np.isfinite(t).all():
        raise TraceError(path, "finite times", "NaN or infinity")
    if t.size and (t.min() < 0 or t.max() > 30 * 86400):
        raise TraceError(path, "times from 0 to 30 days in seconds", f"{t.min():g}..{t.max():g}")
    if g.dtype == object:      # CSV: Python ints, any size
        if g.size and (min(g) < 0 or max(g) > MAX_GFN):
            raise TraceError(path, f"GFNs from 0 to {MAX_GFN:#x}", "a GFN outside that")
        g = g.astype(np.int64)
    elif g.size and (g.min() < 0 or g.max() > MAX_GFN):
        raise TraceError(path, f"GFNs from 0 to {MAX_GFN:#x}", f"{int(g.min()):#x}..{int(g.max()):#x}")
    return t, g


_GENERATORS = {
    IdleWorkload: IdleGen, UniformWorkload: UniformGen, HotsetWorkload: HotsetGen,
    ZipfWorkload: ZipfGen, SequentialWorkload: SequentialGen, OnceWorkload: OnceGen,
}


def make_workload(cfg, idx: int, seed: int, nr_pages: int, tick: float, gfn_to_page=None,
                  timing: str = "continuous") -> WorkloadGen:
    if isinstance(cfg, TraceWorkload):
        return TraceGen(cfg, idx, seed, nr_pages, tick, timing, gfn_to_page)
    return _GENERATORS[type(cfg)](cfg, idx, seed, nr_pages, tick, timing)
