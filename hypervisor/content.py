"""Frame contents: a 64-bit content token per machine frame, and its 4 KiB expansion.

Xen's frames hold 4 KiB of bytes; holding that for a guest of hundreds of GiB would not
fit in memory, so the model keeps one token per frame (docs/architecture.md, "Compact state") and
expands it deterministically whenever real bytes are needed (the stream's PAGE_DATA,
the restore side's copy or memcmp). Token 0 is a scrubbed, all-zero page, which is what
Xen hands a guest from populate_physmap.

Layout of an expanded page, as 512 little-endian u64 words: word 0 is the token itself
(so a reader recovers it without a search), words 1..511 are ``BASE[i] ^ token`` with
BASE a fixed splitmix64 pattern: one XOR per word keeps expansion near memory speed.
Any change to any byte is detected by ``pages_to_tokens``.
"""

from __future__ import annotations

import numpy as np

from .abi import PAGE_SIZE

WORDS_PER_PAGE = PAGE_SIZE // 8
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S27, _S30, _S31 = np.uint64(27), np.uint64(30), np.uint64(31)


def splitmix64(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The splitmix64 finaliser over a uint64 array (wrapping arithmetic), into ``out``
    (which may be ``x`` itself) or a new array. Computed in place with one scratch
    array: the hash of a whole guest's boot contents is memory-bound, and fresh
    temporaries per step would cost more than the arithmetic."""
    x = np.asarray(x, dtype=np.uint64)
    if x.ndim == 0:                          # a scalar in, a scalar out
        return splitmix64(x.reshape(1))[0]
    z = np.copy(x) if out is None else out
    if out is not None and out is not x:
        np.copyto(z, x)
    tmp = np.empty_like(z)
    with np.errstate(over="ignore"):
        np.right_shift(z, _S30, out=tmp)
        z ^= tmp
        z *= _M1
        np.right_shift(z, _S27, out=tmp)
        z ^= tmp
        z *= _M2
        np.right_shift(z, _S31, out=tmp)
        z ^= tmp
    return z


def expand_tokens(tokens: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Expand N tokens into an ``(N, 4096)`` uint8 array of page bytes (little-endian)."""
    tokens = np.asarray(tokens, dtype=np.uint64).reshape(-1)
    n = tokens.shape[0]
    if out is None:
        words = np.empty((n, WORDS_PER_PAGE), dtype="<u8")
    else:
        words = out.reshape(n, PAGE_SIZE).view("<u8")
    np.bitwise_xor(tokens[:, None], _BASE, out=words)
    words[:, 0] = tokens
    zero = tokens == 0
    if zero.any():
        words[zero] = 0
    return words.view(np.uint8).reshape(n, PAGE_SIZE)


def pages_to_tokens(pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recover tokens from ``(N, 4096)`` page bytes. Returns ``(tokens, intact)``
    where ``intact[i]`` is False when page i is not the expansion of any token."""
    pages = np.ascontiguousarray(pages, dtype=np.uint8).reshape(-1, PAGE_SIZE)
    tokens = pages.view("<u8")[:, 0].astype(np.uint64)
    intact = (expand_tokens(tokens) == pages).all(axis=1)
    return tokens, intact


with np.errstate(over="ignore"):
    _BASE = splitmix64(np.arange(1, WORDS_PER_PAGE + 1, dtype=np.uint64) * _GOLDEN)[None, :]
