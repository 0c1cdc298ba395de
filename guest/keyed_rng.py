"""Many keyed random streams, cheaply: ``np.random.default_rng([*prefix, key])`` for a
run of keys, the same numbers without building a generator per key.

Not a Xen concept: it is how the guest model draws per-hypercall randomness (the
balloon driver's reuse writes: one stream per populate_physmap call of a step, keyed
by tick and call, so a step's draws do not depend on how its calls are grouped). Built
one by one, ``default_rng`` costs ~20 us a key (a ``SeedSequence``, then a ``PCG64``
seeded from it), more than the draws; a balloon step makes thousands of calls.

Here numpy's ``SeedSequence`` (its entropy pool of 4 uint32 words, the ``hashmix`` /
``mix`` rounds and ``generate_state``) runs for all keys at once over uint32 arrays, and
``PCG64``'s seeding (``pcg64_set_seed``: two steps of the 128-bit LCG) in Python ints;
one ``Generator`` then takes each key's state in turn. The constants and rounds are
those of numpy's ``bit_generator.pyx`` and ``pcg64.h``; a check against
``default_rng`` the first time (per process) falls back to it if they ever differ.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

# numpy/random/bit_generator.pyx (SeedSequence)
_POOL = 4
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_M32 = 0xFFFFFFFF
# numpy/random/src/pcg64/pcg64.h (PCG_DEFAULT_MULTIPLIER_128)
_PCG_MULT = (2549297995355413924 << 64) | 4865540595714422341
_M128 = (1 << 128) - 1

#: None until the first use checks this module against numpy; then True or False.
_VERIFIED: bool | None = None
#: Fewer keys than this are seeded one by one: the bulk rounds cost ~0.15 ms a run.
BULK_MIN = 32


def _words(n: int) -> list[int]:
    """An int as SeedSequence's uint32 words (least significant first; 0 is one word)."""
    if n < 0:
        raise ValueError(f"an RNG key must be non-negative, got {n}")
    out = [n & _M32]
    n >>= 32
    while n:
        out.append(n & _M32)
        n >>= 32
    return out


class _Hash:
    """SeedSequence's ``hashmix`` with its running constant (the same for every key)."""

    def __init__(self):
        self.c = _INIT_A

    def __call__(self, v: np.ndarray) -> np.ndarray:
        v = v ^ np.uint32(self.c)
        self.c = (self.c * _MULT_A) & _M32
        v = v * np.uint32(self.c)
        return v ^ (v >> np.uint32(16))


def _mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    r = np.uint32(_MIX_L) * x - np.uint32(_MIX_R) * y
    return r ^ (r >> np.uint32(16))


def _pools(entropy: list[np.ndarray]) -> list[np.ndarray]:
    """SeedSequence.mix_entropy of each row's entropy words (column ``i``: word ``i``)."""
    h = _Hash()
    zero = np.zeros_like(entropy[0])
    pool = [h(entropy[i] if i < len(entropy) else zero) for i in range(_POOL)]
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = _mix(pool[dst], h(pool[src]))
    for src in range(_POOL, len(entropy)):
        for dst in range(_POOL):
            pool[dst] = _mix(pool[dst], h(entropy[src]))
    return pool


def _pcg64_states(prefix: list[int], keys: np.ndarray) -> list[tuple[int, int]]:
    """``(state, inc)`` of ``PCG64(SeedSequence([*prefix, key]))`` for each key."""
    with np.errstate(over="ignore"):
        entropy = [np.full(keys.size, w, dtype=np.uint32) for p in prefix for w in _words(int(p))]
        entropy.append(keys.astype(np.uint32))
        pool = _pools(entropy)
        # generate_state(4, uint64): 8 words from the pool in turn, paired little-endian.
        c = _INIT_B
        out = []
        for i in range(8):
            v = pool[i % _POOL] ^ np.uint32(c)
            c = (c * _MULT_B) & _M32
            v = v * np.uint32(c)
            out.append((v ^ (v >> np.uint32(16))).astype(np.uint64))
        val = [(out[2 * j] | (out[2 * j + 1] << np.uint64(32))).tolist() for j in range(4)]
    states = []
    for s_hi, s_lo, i_hi, i_lo in zip(*val):
        # pcg64_set_seed -> pcg_setseq_128_srandom_r: state 0, inc = seq*2+1, step,
        # state += initstate, step.
        inc = ((((i_hi << 64) | i_lo) << 1) | 1) & _M128
        st = inc
        st = ((st + ((s_hi << 64) | s_lo)) * _PCG_MULT + inc) & _M128
        states.append((st, inc))
    return states


def _verified() -> bool:
    global _VERIFIED
    if _VERIFIED is None:
        probe = [0x1234_5678_9ABC_DEF0, 0xBA11, 7]
        want = np.random.PCG64(np.random.SeedSequence([*probe, 3])).state["state"]
        got = _pcg64_states(probe, np.array([3], dtype=np.int64))[0]
        _VERIFIED = (want["state"], want["inc"]) == got
    return _VERIFIED


def keyed_rngs(prefix: list[int], keys: list[int]) -> Iterator[np.random.Generator]:
    """For each key, a Generator in the state ``np.random.default_rng([*prefix, key])``
    starts in (from ``BULK_MIN`` keys, the same Generator object each time, re-seeded:
    finish with one key's draws before asking for the next)."""
    if not keys:
        return
    if len(keys) < BULK_MIN or not _verified() or max(keys) > _M32 or min(keys) < 0:
        for k in keys:
            yield np.random.default_rng([*prefix, k])
        return
    bg = np.random.PCG64(0)
    gen = np.random.Generator(bg)
    for st, inc in _pcg64_states(list(prefix), np.asarray(keys, dtype=np.int64)):
        bg.state = {"bit_generator": "PCG64", "state": {"state": st, "inc": inc}, "has_uint32": 0, "uinteger": 0}
        yield gen
