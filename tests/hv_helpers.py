"""Helpers shared by the hypervisor tests: small domains, CLEAN/PEEK shorthands, a
scripted fake guest, and events as plain values to compare."""

import dataclasses

import numpy as np

from hypervisor.abi import DomainLayout, ShadowOp
from hypervisor.domain import Hypervisor


def a(*x):
    return np.array(x, dtype=np.int64)


def make_hv(behaviour="fixed", ram=range(0, 64), host_frames=1000, enable=True, pool=None, **layout):
    hv = Hypervisor(host_frames=host_frames, behaviour=behaviour, logdirty_pool_pages=pool)
    hv.build(DomainLayout(ram_gfns=np.asarray(list(ram), dtype=np.int64), **layout))
    if enable:
        hv.shadow_op(0.0, ShadowOp.ENABLE_LOGDIRTY)
    return hv


def clean(hv, pages=1 << 16, t=None):
    return hv.shadow_op(hv.now if t is None else t, ShadowOp.CLEAN, pages=pages)


def peek(hv, pages=1 << 16):
    return hv.shadow_op(hv.now, ShadowOp.PEEK, pages=pages)


class ScriptedGuest:
    """A fake guest: ``script`` is a list of ops (abi dataclasses with ``.t``); run(t0, t1)
    yields those with t0 <= t < t1 and records what the hypervisor sent back."""

    def __init__(self, script):
        self.script = list(script)
        self.results = []
        self.calls = []

    def run(self, t0, t1):
        self.calls.append((t0, t1))
        for op in self.script:
            if t0 <= op.t < t1:
                self.results.append((op, (yield op)))


def plain(v):
    """An event's field as plain values (arrays as lists, effects as tuples of them)."""
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, tuple):
        return tuple(plain(x) for x in v)
    if dataclasses.is_dataclass(v):
        return (type(v).__name__,) + tuple(plain(getattr(v, f.name)) for f in dataclasses.fields(v))
    return v
