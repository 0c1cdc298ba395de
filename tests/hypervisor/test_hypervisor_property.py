"""Property test: the Hypervisor against a plain set-based model of Xen's semantics.

Random sequences of guest writes, balloon inflate/deflate, add_to_physmap,
remove_from_physmap, CLEAN, PEEK and OFF+ENABLE, in both behaviours; after every step
the log-dirty bitmap, dirty_count, node counts per level, p2m types and frame contents
agree with the model. GFNs span three leaves and, through a high GFN, two L2 nodes.
"""

import numpy as np
from hypothesis import given, settings, strategies as st

from hypervisor.abi import DomainLayout, P2MType, ShadowOp
from hypervisor.domain import Hypervisor

HIGH = (1 << 24) + 3
SPACE = 70000
INITIAL = list(range(0, 40)) + [33000, 66000, HIGH]
gfn = st.one_of(st.integers(0, 50), st.integers(0, SPACE),
                st.sampled_from([HIGH, HIGH + 1, 32767, 32768, 65535, 65536]))
gfns = st.lists(gfn, min_size=1, max_size=12)
step = st.one_of(
    st.tuples(st.just("write"), gfns),
    st.tuples(st.just("decrease"), gfns),
    st.tuples(st.just("populate"), gfns),
    st.tuples(st.just("add"), st.tuples(gfn, gfn)),
    st.tuples(st.just("remove"), gfn),
    st.tuples(st.just("clean"), st.sampled_from([0, 100, 32768, 40000, SPACE + 1, HIGH + 2])),
    st.tuples(st.just("peek"), st.sampled_from([50, 32769, HIGH + 2])),
    st.tuples(st.just("off_on"), st.none()),
)


class Model:
    def __init__(self, fixed):
        self.fixed = fixed
        self.ram = {g: "ld" for g in INITIAL}          # enabled at start: all logdirty
        self.tok = {g: 0 for g in INITIAL}
        self.dirty, self.leaves, self.count = set(), set(), 0
        self.next_token = 1

    def mark_dirty(self, g):
        self.leaves.add(g >> 15)
        if g not in self.dirty:
            self.dirty.add(g)
            self.count += 1

    def mark_clean(self, g):
        if g in self.dirty:
            self.dirty.remove(g)
            self.count -= 1

    def unmap(self, g):
        del self.ram[g], self.tok[g]
        if self.fixed:
            self.mark_clean(g)

    def map(self, g, tok):
        self.ram[g], self.tok[g] = "rw", tok
        if self.fixed:
            self.mark_dirty(g)


def check(hv, m):
    bm, stats = hv.logdirty.peek(HIGH + 2)
    assert bm.pfns().tolist() == sorted(m.dirty)
    assert hv.stats.dirty_count == m.count
    lv = hv.stats.logdirty_levels
    assert lv == ((1 if m.leaves else 0), len({k >> 18 for k in m.leaves}),
                  len({k >> 9 for k in m.leaves}), len(m.leaves))
    g, tok = hv.snapshot()
    assert g.tolist() == sorted(m.ram)
    assert tok.tolist() == [m.tok[x] for x in sorted(m.ram)]
    want = [P2MType.ram_rw if m.ram[x] == "rw" else P2MType.ram_logdirty for x in sorted(m.ram)]
    assert hv.p2m_types(g).tolist() == want


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(["fixed", "pre-fix"]), st.lists(step, max_size=14))
def test_hypervisor_matches_set_model(behaviour, steps):
    hv = Hypervisor(host_frames=10_000, behaviour=behaviour)
    hv.build(DomainLayout(ram_gfns=np.array(INITIAL, dtype=np.int64)))
    hv.shadow_op(0.0, ShadowOp.ENABLE_LOGDIRTY)
    m = Model(behaviour == "fixed")
    for kind, arg in steps:
        if kind == "write":
            toks = list(range(m.next_token, m.next_token + len(arg)))
            m.next_token += len(arg)
            hv.guest_write(np.array(arg), np.array(toks, dtype=np.uint64))
            last = dict(zip(arg, toks))
            for g, t in last.items():
                if g in m.ram:
                    if m.ram[g] == "ld":
                        m.mark_dirty(g)
                        m.ram[g] = "rw"
                    m.tok[g] = t
        elif kind == "decrease":
            res = hv.decrease_reservation(np.array(arg))
            done = 0
            for g in arg:
                if g not in m.ram:
                    break
                m.unmap(g)
                done += 1
            assert res.rc == done
        elif kind == "populate":
            res = hv.populate_physmap(np.array(arg))
            for g in arg:
                m.map(g, 0)
            assert res.rc == len(arg)
        elif kind == "add":
            src, dst = arg
            res = hv.add_to_physmap(src, dst)
            if src not in m.ram:
                assert res.rc < 0
            else:
                tok = m.tok[src]
                if dst != src and dst in m.ram:
                    m.unmap(dst)
                m.unmap(src)
                m.map(dst, tok)
                assert res.rc == 0
        elif kind == "remove":
            res = hv.remove_from_physmap(arg)
            assert res.rc == (0 if arg in m.ram else -2)
            if arg in m.ram:
                m.unmap(arg)
        elif kind in ("clean", "peek"):
            op = ShadowOp.CLEAN if kind == "clean" else ShadowOp.PEEK
            r = hv.shadow_op(0.0, op, pages=arg)
            assert r.stats.dirty_count == m.count
            assert r.bitmap.pfns().tolist() == sorted(b for b in m.dirty if b < arg)
            if kind == "clean":
                m.dirty = {b for b in m.dirty if (b >> 15) << 15 >= arg}
                m.count = 0
                m.ram = {g: "ld" for g in m.ram}
        else:
            hv.shadow_op(0.0, ShadowOp.OFF)
            hv.shadow_op(0.0, ShadowOp.ENABLE_LOGDIRTY)
            m.dirty, m.leaves = set(), set()             # dirty_count survives OFF
            m.ram = {g: "ld" for g in m.ram}
        check(hv, m)
