"""The guest's physical memory map: RAM page order <-> GFN, holes, MMIO, special pages.

Mirrors what Xen's HVM domain builder (``tools/libs/guest/xg_dom_x86.c`` meminit_hvm,
alloc_magic_pages_hvm; hvmloader's MMIO hole) does: RAM is laid out from GFN 0 upwards
around holes (the VGA hole, the MMIO hole below 4 GiB) and MMIO ranges.

Two kinds of layout (``guest.layout.kind``):

* ``libxc`` (the default) is libxc's: only the VGA hole 0xA0-0xBF below 1 MiB, and the
  builder's special pages populated just under ``X86_HVM_END_SPECIAL_REGION`` (GFN
  0xFF000, ``xenguest.h``): 8 special pages (``X86_HVM_NR_SPECIAL_PAGES``: paging,
  access and sharing rings, buffered and synchronous ioreq, xenstore, identity page
  table, console) at 0xFEFF8-0xFEFFF, and below them the device model's 8 ioreq server
  pages (``NR_IOREQ_SERVER_PAGES``) at 0xFEFF0-0xFEFF7, with the HVM params pointing at
  them. A guest below 4 GiB so has ``max_gpfn`` 0xFEFFF and a saver walks
  ``p2m_size`` = 0xFF000 PFNs, sending the gap between RAM and the special pages as XTAB.
  The special pages are the builder's, not the guest's RAM: the balloon and the
  workloads never touch them and ``memory`` does not count them; they are populated
  frames a save sends and a restore rebuilds.
  One departure: libxc carves the VGA hole out of ``memory`` (the guest owns 32 pages
  fewer); xmig keeps ``memory`` the RAM the guest owns and lays its last 32 pages after
  the hole's.
* ``compact`` is xmig's earlier layout: a 96-PFN hole 0xA0-0xFF and no special pages
  (the stream's HVM params point at pages that are not populated), so ``p2m_size`` is
  just above RAM (a 1 GiB guest: 0x40060).

The guest model works in a dense "RAM page index" space ``[0, nr_pages)``
(per-page state is a bool array over it); this module maps indices to GFNs and back,
vectorised with ``searchsorted`` over a handful of contiguous runs, so that a 256 GiB
guest (64 Mi pages) never needs a per-page GFN table: the domain builder gets the RAM
as runs (``ram_runs()``) and its boot contents as ``workloads.BootTokens``, both read a
slice at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Protocol

import numpy as np

from hypervisor.abi import MAX_GFN, PAGE_SHIFT, GfnRuns
from hypervisor.abi import hvm


class LayoutSpec(Protocol):
    """What a layout is built from (``config.LayoutConfig`` is one): its kind, GFN ranges
    (with ``start`` and ``stop``) that are holes or MMIO, and RAM pages placed above the
    low RAM."""

    kind: str
    holes: Iterable[Any]
    mmio: Iterable[Any]
    high_pages: Iterable[int]


# libxc's HVM layout (tools/include/xenguest.h, tools/libs/guest/xg_dom_x86.c).
X86_HVM_END_SPECIAL_REGION = 0xFF000
X86_HVM_NR_SPECIAL_PAGES = 8
NR_IOREQ_SERVER_PAGES = 8
SPECIALPAGE_PAGING, SPECIALPAGE_ACCESS, SPECIALPAGE_SHARING, SPECIALPAGE_BUFIOREQ = 0, 1, 2, 3
SPECIALPAGE_XENSTORE, SPECIALPAGE_IOREQ, SPECIALPAGE_IDENT_PT, SPECIALPAGE_CONSOLE = 4, 5, 6, 7
#: meminit_hvm populates [0, 0xA0) and from 0xC0 on: the legacy VGA hole.
VGA_HOLE = (0xA0, 0xC0)
#: hvmloader's default MMIO hole below 4 GiB (HVM_BELOW_4G_MMIO_START 0xF0000000).
MMIO_HOLE_BELOW_4G = (0xF0000, 0x100000)
#: xmig's earlier layout: the whole 640 KiB - 1 MiB range was a hole.
COMPACT_LOW_HOLE = (0xA0, 0x100)
LAYOUT_KINDS = ("libxc", "compact")


def special_pfn(x: int) -> int:
    """xg_dom_x86.c's special_pfn(): special page ``x`` of the 8 below the region end."""
    return X86_HVM_END_SPECIAL_REGION - X86_HVM_NR_SPECIAL_PAGES + x


def ioreq_server_pfn(x: int) -> int:
    """xg_dom_x86.c's ioreq_server_pfn(): the device model's ioreq server pages, just
    below the special pages."""
    return special_pfn(0) - NR_IOREQ_SERVER_PAGES + x


#: The builder's pages of a libxc layout: ioreq server pages then special pages.
SPECIAL_REGION = (ioreq_server_pfn(0), X86_HVM_END_SPECIAL_REGION)


def special_pages(kind: str) -> int:
    """How many pages the builder populates beside the guest's RAM for a layout of ``kind``."""
    return SPECIAL_REGION[1] - SPECIAL_REGION[0] if kind == "libxc" else 0


def default_holes(kind: str) -> list[tuple[int, int]]:
    """The holes a layout of ``kind`` has when the scenario names none."""
    low = VGA_HOLE if kind == "libxc" else COMPACT_LOW_HOLE
    return [low, MMIO_HOLE_BELOW_4G]


def libxc_hvm_params() -> tuple[tuple[int, int], ...]:
    """What alloc_magic_pages_hvm sets with xc_hvm_param_set (with a device model),
    in the order write_hvm_params reads them back; ACPI_IOPORTS_LOCATION 1 is
    libxl's (the new, ACPI-table-described port block)."""
    value = {
        hvm.HVM_PARAM_STORE_PFN: special_pfn(SPECIALPAGE_XENSTORE),
        hvm.HVM_PARAM_IOREQ_PFN: special_pfn(SPECIALPAGE_IOREQ),
        hvm.HVM_PARAM_BUFIOREQ_PFN: special_pfn(SPECIALPAGE_BUFIOREQ),
        hvm.HVM_PARAM_PAGING_RING_PFN: special_pfn(SPECIALPAGE_PAGING),
        hvm.HVM_PARAM_MONITOR_RING_PFN: special_pfn(SPECIALPAGE_ACCESS),
        hvm.HVM_PARAM_SHARING_RING_PFN: special_pfn(SPECIALPAGE_SHARING),
        hvm.HVM_PARAM_CONSOLE_PFN: special_pfn(SPECIALPAGE_CONSOLE),
        hvm.HVM_PARAM_ACPI_IOPORTS_LOCATION: 1,
        hvm.HVM_PARAM_IDENT_PT: special_pfn(SPECIALPAGE_IDENT_PT) << PAGE_SHIFT,
        hvm.HVM_PARAM_IOREQ_SERVER_PFN: ioreq_server_pfn(0),
        hvm.HVM_PARAM_NR_IOREQ_SERVER_PAGES: NR_IOREQ_SERVER_PAGES,
    }
    return tuple((i, value[i]) for i in hvm.SAVE_ORDER if value.get(i))


class LayoutError(ValueError):
    """The layout cannot hold the RAM asked for; ``at`` is the offending field path
    (relative to ``layout``)."""

    def __init__(self, at: str, expected: str, found: object):
        self.at, self.expected, self.found = at, expected, found
        super().__init__(f"layout.{at}: expected {expected}, found {found}")


@dataclass(frozen=True)
class Run:
    page: int   # first RAM page index of the run
    gfn: int    # its GFN
    count: int


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


#: Up to this many RAM runs, page_to_gfn compares instead of searching.
_FEW_RUNS = 4


class GuestLayout:
    """RAM runs of a guest with ``nr_pages`` RAM pages laid out per ``cfg``."""

    def __init__(self, cfg: LayoutSpec, nr_pages: int):
        self.nr_pages = int(nr_pages)
        self.kind = str(getattr(cfg, "kind", "compact"))
        for name, ranges in (("holes", cfg.holes), ("mmio", cfg.mmio)):
            for i, r in enumerate(ranges):
                if r.stop - 1 > MAX_GFN:
                    raise LayoutError(f"{name}[{i}]", f"a range below GFN {MAX_GFN:#x}", f"end GFN {r.stop - 1:#x}")
        self.holes = [(r.start, r.stop) for r in cfg.holes]
        self.mmio = [(r.start, r.stop) for r in cfg.mmio]
        special = [SPECIAL_REGION] if self.kind == "libxc" else []
        sa, sb = SPECIAL_REGION
        for i, (a, b) in enumerate(self.mmio):
            if special and a < sb and sa < b:
                raise LayoutError(f"mmio[{i}]", f"a range clear of the special pages {sa:#x}-{sb - 1:#x} "
                                                "(or layout.kind: compact)", f"GFNs {a:#x}-{b - 1:#x}")
        #: The builder's special pages (libxc: ioreq server pages + special pages).
        self.special = np.arange(sa, sb, dtype=np.int64) if special else np.empty(0, dtype=np.int64)
        excluded = _merge(self.holes + self.mmio + special)
        high = sorted(int(g) for g in cfg.high_pages)
        if len(set(high)) != len(high):
            dup = next(g for g in high if high.count(g) > 1)
            raise LayoutError("high_pages", "distinct GFNs", f"GFN {dup:#x} twice")
        n_low = self.nr_pages - len(high)
        if n_low < 1:
            raise LayoutError("high_pages", f"fewer high pages than RAM pages ({self.nr_pages})", len(high))
        runs: list[Run] = []
        page = 0
        cursor = 0
        left = n_low
        for a, b in excluded:
            if left == 0:
                break
            if cursor < a:
                take = min(left, a - cursor)
                runs.append(Run(page, cursor, take))
                page += take
                left -= take
            cursor = max(cursor, b)
        if left:
            runs.append(Run(page, cursor, left))
            page += left
        last_low = runs[-1].gfn + runs[-1].count - 1
        if last_low > MAX_GFN:
            raise LayoutError("holes", "a layout whose RAM fits below MAX_GFN", f"last RAM GFN {last_low:#x}")
        for g in high:
            where = None
            if g <= last_low:
                where = "low RAM (or a hole inside it)"
            for name, rs in (("holes", self.holes), ("mmio", self.mmio), ("special pages", special)):
                if any(a <= g < b for a, b in rs):
                    where = f"a range of {name}"
            if where is not None:
                raise LayoutError("high_pages", f"GFNs above the low RAM (which ends at GFN {last_low:#x}) "
                                                f"and outside holes and MMIO", f"GFN {g:#x} in {where}")
            runs.append(Run(page, g, 1))
            page += 1
        self.runs = runs
        self.n_low = n_low
        self.high_pages = np.asarray(high, dtype=np.int64)
        self._page0 = np.array([r.page for r in runs], dtype=np.int64)
        self._gfn0 = np.array([r.gfn for r in runs], dtype=np.int64)
        self._count = np.array([r.count for r in runs], dtype=np.int64)

    # ------------------------------------------------------------------ mapping
    def page_to_gfn(self, pages: np.ndarray) -> np.ndarray:
        """RAM page indices (int, in range) -> GFNs (int64)."""
        pages = np.asarray(pages, dtype=np.int64)
        if self._page0.size <= _FEW_RUNS:
            # A few runs (the usual layout: RAM around a hole or two): add each run's
            # shift from where it starts, one comparison pass a run, instead of a
            # binary search and two gathers per page.
            out = pages + int(self._gfn0[0] - self._page0[0])
            for r in range(1, self._page0.size):
                step = int((self._gfn0[r] - self._page0[r]) - (self._gfn0[r - 1] - self._page0[r - 1]))
                if step:
                    out += (pages >= self._page0[r]) * step
            return out
        r = np.searchsorted(self._page0, pages, side="right") - 1
        return self._gfn0[r] + (pages - self._page0[r])

    def gfn_to_page(self, gfns: np.ndarray) -> np.ndarray:
        """GFNs -> RAM page indices, -1 where a GFN is not guest RAM."""
        gfns = np.asarray(gfns, dtype=np.int64)
        r = np.searchsorted(self._gfn0, gfns, side="right") - 1
        rc = np.maximum(r, 0)
        off = gfns - self._gfn0[rc]
        ok = (r >= 0) & (off >= 0) & (off < self._count[rc])
        return np.where(ok, self._page0[rc] + off, -1)

    # ------------------------------------------------------------------ views
    def ram_runs(self) -> GfnRuns:
        """Every RAM GFN, ascending (position i is RAM page i), as runs."""
        return GfnRuns(self._gfn0.copy(), self._count.copy())

    def ram_gfns(self) -> np.ndarray:
        """Every RAM GFN, ascending (index i is RAM page i)."""
        out = np.empty(self.nr_pages, dtype=np.int64)
        for r in self.runs:
            out[r.page:r.page + r.count] = np.arange(r.gfn, r.gfn + r.count, dtype=np.int64)
        return out

    def mmio_gfns(self) -> np.ndarray:
        parts = [np.arange(a, b, dtype=np.int64) for a, b in _merge(self.mmio)]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def max_gfn(self) -> int:
        top = int(self._gfn0[-1] + self._count[-1] - 1)
        for _, b in self.mmio:
            top = max(top, b - 1)
        if self.special.size:
            top = max(top, int(self.special[-1]))
        return top

    def hvm_params(self) -> tuple[tuple[int, int], ...]:
        """The HVM params the builder sets: libxc's point at the special pages; a
        ``compact`` layout sets none (a save then carries the stream's fixed defaults,
        ``migrate.stream.hvm.default_hvm_params``, as xmig's streams always did)."""
        return libxc_hvm_params() if self.kind == "libxc" else ()

    def describe(self) -> list[tuple[int, int]]:
        """RAM runs as ``(first_gfn, count)``."""
        return [(r.gfn, r.count) for r in self.runs]
