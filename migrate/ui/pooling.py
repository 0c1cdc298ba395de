"""Pooling many GFNs into one glyph, honestly: a glyph shows one of its GFNs' states,
chosen so that along the map each state's glyphs are in proportion to its GFNs.

Nothing in Xen pools; this is how the GFN map (``gfnmap.py``, ``mapview.py``) draws
``xg_sr_save.c``'s view of the P2M on a screen with fewer cells than PFNs.
"""

from __future__ import annotations

import numpy as np


def share_states(counts: np.ndarray) -> np.ndarray:
    """One state per row of ``counts`` ((n, NSTATES) GFNs per state), in proportion.

    Each state keeps a running total of its share (in glyphs); a glyph goes to a state
    whose rounded total steps up there (the rarest in that cell when several do), else
    to the cell's largest state. Over a stretch of glyphs a state's glyphs number its
    share of the GFNs, rounded; an empty row gives -1."""
    n = counts.shape[0]
    if not n:
        return np.zeros(0, dtype=np.int8)
    size = counts.sum(axis=1, keepdims=True)
    f = counts / np.maximum(size, 1)
    tally = np.floor(np.cumsum(f, axis=0) + 0.5)
    fires = np.diff(tally, axis=0, prepend=np.zeros((1, counts.shape[1]))) > 0
    # among states stepping up here, the rarest in this cell; else the largest
    tie = np.arange(counts.shape[1]) * 1e-9          # ties go to the higher state
    score = np.where(fires, 2.0 - f, f) + tie
    score[f == 0] = -1.0
    out = np.argmax(score, axis=1).astype(np.int8)
    out[size[:, 0] == 0] = -1
    return out


__all__ = ["share_states"]
