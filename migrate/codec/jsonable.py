"""JSON for the values xmig's messages hold: numpy scalars and arrays become plain
numbers and lists (reports, event-log headers)."""

from __future__ import annotations

from typing import Any


def jsonable(o: Any):
    """``json.dumps(default=)`` for numpy scalars and arrays (reports, event log headers)."""
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
