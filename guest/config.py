"""The ``guest:`` section of a scenario file, as pydantic v2 models.

One definition serves three readers: ``migrate.run.scenario`` (which validates YAML against
it and turns pydantic's errors into one-line messages), the shipped JSON Schema, and
``guest.Guest`` (which takes a validated ``GuestConfig``).

Conventions (documented once here, used by every field):

* sizes are bytes (``512MiB``, ``1000pages``, or an int of bytes), rates are pages per
  second (``20MiB/s``, ``5000pages/s``), durations are seconds (``250ms``), see
  ``guest.units``;
* a *region* is a slice of guest RAM counted in the guest's own RAM page order (page 0
  is the first RAM page, the last page is the highest RAM page, whatever holes lie
  between), with ``start``/``size`` as sizes or as ``"50%"`` of RAM;
* layout positions are GFNs when given as plain integers (``0xF0000``) and guest
  physical addresses when given with a unit (``3840MiB``); layout range sizes are pages
  when plain integers and bytes when given with a unit.

Values a single field cannot check (``maxmem`` below ``memory``, a balloon target past
``maxmem``, a high page colliding with RAM) are checked by ``GuestConfig`` and reported
at the field they concern (``guest.balloon.schedule[2].target``).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator,
                      WithJsonSchema, field_validator, model_validator)
from pydantic_core import PydanticCustomError

from hypervisor.abi import HOST_FRAMES_MAX, MAX_GFN, PAGE_SHIFT, PAGE_SIZE
from .layout import LAYOUT_KINDS, GuestLayout, LayoutError, default_holes
from .units import (SIZE_EXPECTED, Duration, Rate, Size, UnitError, format_size,
                    parse_size, unit_error)

__all__ = [
    "Share", "RelativeSize", "Region", "GfnRange", "LayoutConfig", "IdleWorkload",
    "UniformWorkload", "HotsetWorkload", "ZipfWorkload", "SequentialWorkload",
    "OnceWorkload", "TraceWorkload", "Workload", "BalloonStep", "BalloonConfig", "MappingStep",
    "GuestConfig", "field_error", "WORKLOAD_KINDS", "resolve_region",
]


def field_error(at: str, expected: str, found: Any) -> PydanticCustomError:
    """A cross-field error raised by a model validator, reported at sub-path ``at``
    (relative to the model raising it, e.g. ``balloon.schedule[2].target``)."""
    return PydanticCustomError("xmig_field", "{at}: expected {expected}, found {found}",
                               {"at": at, "expected": expected, "found": found})


# ----------------------------------------------------------------------------- types

class Share(float):
    """A fraction of guest RAM, written ``"50%"`` (kept as 0.5)."""


class RelativeSize(int):
    """A size relative to the previous balloon target, written ``"-256MiB"`` (bytes)."""


EXTENT_EXPECTED = "a size like 256MiB or a share of RAM like 50%"
TARGET_EXPECTED = "a balloon target like 768MiB, 200000pages, -256MiB or +256MiB"
GFN_EXPECTED = "a GFN like 0xF0000 or an address like 3840MiB"
PAGES_EXPECTED = "a number of pages like 4096 or a size like 16MiB"


def _parse_extent(value: Any) -> int | float:
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            pct = float(value.strip()[:-1])
        except ValueError:
            raise unit_error(EXTENT_EXPECTED, value) from None
        if not (0.0 <= pct <= 100.0):
            raise unit_error(EXTENT_EXPECTED, value)
        return Share(pct / 100.0)
    try:
        return parse_size(value, expected=EXTENT_EXPECTED)
    except UnitError as e:
        raise unit_error(e.expected, e.found) from None


def _dump_extent(value: int | float) -> int | str:
    if isinstance(value, Share):
        return f"{float(value) * 100:g}%"
    return int(value)


#: A size in bytes or a ``Share`` of guest RAM.
Extent = Annotated[
    Union[int, float], PlainValidator(_parse_extent), PlainSerializer(_dump_extent),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0},
                              {"type": "string", "pattern": r"^\s*[0-9.]+\s*(%|[A-Za-z]*)\s*$"}],
                    "description": "Bytes, a size like 256MiB or 1000pages, or a share of guest RAM like 50%."}),
]


def _parse_target(value: Any) -> int:
    if isinstance(value, str) and value.strip()[:1] in ("+", "-"):
        s = value.strip()
        try:
            n = parse_size(s[1:].strip(), expected=TARGET_EXPECTED)
        except UnitError:
            raise unit_error(TARGET_EXPECTED, value) from None
        return RelativeSize(n if s[0] == "+" else -n)
    try:
        return parse_size(value, expected=TARGET_EXPECTED)
    except UnitError as e:
        raise unit_error(e.expected, e.found) from None


def _dump_target(value: int) -> int | str:
    if isinstance(value, RelativeSize):
        return f"{int(value):+d}"
    return int(value)


#: An absolute size (bytes) or a ``RelativeSize``.
Target = Annotated[
    int, PlainValidator(_parse_target), PlainSerializer(_dump_target),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0},
                              {"type": "string", "pattern": r"^\s*[+-]?\s*[0-9.]+\s*[A-Za-z]*\s*$"}],
                    "description": "Balloon target: an absolute size (768MiB, 200000pages) "
                                   "or relative to the previous target (-256MiB, +256MiB)."}),
]


def _show_target(value: int, resolved: int) -> str:
    if isinstance(value, RelativeSize):
        sign = "+" if value >= 0 else ""
        return f"{sign}{format_size(int(value))} (a target of {format_size(resolved)})"
    return format_size(int(value))


def _parse_gfn(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= MAX_GFN:
            return value
        raise unit_error(GFN_EXPECTED, value)
    if isinstance(value, str):
        s = value.strip()
        if s.lower().startswith("0x"):
            try:
                return _parse_gfn(int(s, 16))
            except ValueError:
                raise unit_error(GFN_EXPECTED, value) from None
        try:
            addr = parse_size(s, expected=GFN_EXPECTED)
        except UnitError:
            raise unit_error(GFN_EXPECTED, value) from None
        if addr % PAGE_SIZE == 0 and (addr >> PAGE_SHIFT) <= MAX_GFN and not s.isdigit():
            return addr >> PAGE_SHIFT
    raise unit_error(GFN_EXPECTED, value)


def _parse_pages(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if value >= 0:
            return value
        raise unit_error(PAGES_EXPECTED, value)
    if isinstance(value, str) and not value.strip().isdigit():
        try:
            nbytes = parse_size(value, expected=PAGES_EXPECTED)
        except UnitError:
            raise unit_error(PAGES_EXPECTED, value) from None
        if nbytes % PAGE_SIZE == 0:
            return nbytes >> PAGE_SHIFT
    raise unit_error(PAGES_EXPECTED, value)


#: A GFN: a plain int is a GFN, a string with a unit is a page-aligned guest address.
Gfn = Annotated[int, PlainValidator(_parse_gfn), WithJsonSchema({
    "anyOf": [{"type": "integer", "minimum": 0, "maximum": MAX_GFN},
              {"type": "string", "pattern": r"^\s*(0[xX][0-9a-fA-F]+|[0-9.]+\s*[A-Za-z]+)\s*$"}],
    "description": "A GFN (plain integer, e.g. 0xF0000) or a page-aligned address with a unit (3840MiB)."})]
#: A page count: a plain int is pages, a string with a unit is a page-aligned size.
Pages = Annotated[int, PlainValidator(_parse_pages), WithJsonSchema({
    "anyOf": [{"type": "integer", "minimum": 0},
              {"type": "string", "pattern": r"^\s*[0-9.]+\s*[A-Za-z]+\s*$"}],
    "description": "Pages (plain integer) or a page-aligned size with a unit (16MiB)."})]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------- layout

class GfnRange(_Model):
    """A GFN range ``[start, start+size)``; give ``size`` or ``end`` (exclusive)."""

    start: Gfn
    size: Pages | None = None
    end: Gfn | None = None

    @model_validator(mode="after")
    def _one_extent(self) -> "GfnRange":
        if (self.size is None) == (self.end is None):
            raise field_error("size", "exactly one of size or end", "both" if self.size is not None else "neither")
        if self.end is not None and self.end <= self.start:
            raise field_error("end", f"an end above start (GFN {self.start:#x})", f"GFN {self.end:#x}")
        if self.size == 0:
            raise field_error("size", "at least one page", 0)
        return self

    @property
    def first(self) -> int:
        return self.start

    @property
    def stop(self) -> int:
        """Exclusive end GFN."""
        return self.end if self.end is not None else self.start + int(self.size or 0)


class LayoutConfig(_Model):
    """Where the guest's RAM sits in GFN space (what the domain builder lays out).

    ``kind`` picks the builder: ``libxc`` (default) is libxc's HVM layout (the VGA hole
    0xA0-0xBF, the special pages populated at 0xFEFF0-0xFEFFF, the HVM params pointing
    at them); ``compact`` is xmig's earlier one (a hole 0xA0-0xFF, no special pages).
    ``layout: compact`` is short for ``layout: {kind: compact}``. See ``guest.layout``.

    RAM fills GFNs from 0 upwards, skipping ``holes`` (no P2M entry: XTAB in a save;
    unset, the kind's: the low hole and hvmloader's MMIO hole 0xF0000-0xFFFFF) and
    ``mmio`` ranges (mmio_direct entries: XTAB too); ``high_pages`` are extra RAM pages
    at the given GFNs (say a page just under 16 TiB, GFN 0xFFFFFFFF) that stretch
    ``p2m_size`` and the log-dirty tree. They count towards ``memory``; the special
    pages do not.
    """

    kind: Literal["libxc", "compact"] = "libxc"
    holes: list[GfnRange] | None = None
    mmio: list[GfnRange] = Field(default_factory=list)
    high_pages: list[Gfn] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _kind_alone(cls, v: Any) -> Any:
        return {"kind": v} if isinstance(v, str) else v

    @field_validator("mmio", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _kind_holes(self) -> "LayoutConfig":
        if self.holes is None:    # frozen model: the kind's default holes, set once, here
            object.__setattr__(self, "holes", [GfnRange(start=a, end=b) for a, b in default_holes(self.kind)])
        return self


def _layout_or_kind(schema: dict) -> None:
    """The schema of ``guest.layout``: the layout, or just its kind's name."""
    ref = schema.pop("$ref", None) or schema.pop("allOf")[0]["$ref"]
    schema["anyOf"] = [{"$ref": ref}, {"enum": list(LAYOUT_KINDS), "type": "string"}]


# ------------------------------------------------------------------------- workloads

class Region(_Model):
    """A slice of guest RAM in the guest's RAM page order; default all of it."""

    start: Extent = 0
    size: Extent | None = None


def resolve_region(region: Region, nr_pages: int) -> tuple[int, int]:
    """``region`` as RAM page indices ``[lo, hi)`` of a guest with ``nr_pages`` pages.
    Shares round down; byte sizes round down to whole pages. Raises ValueError (saying
    what was expected) for an empty region or one past the end of RAM."""

    def pages(v: int | float) -> int:
        if isinstance(v, Share):
            return int(math.floor(float(v) * nr_pages + 1e-9))
        return int(v) // PAGE_SIZE

    lo = pages(region.start)
    hi = nr_pages if region.size is None else lo + pages(region.size)
    if not (0 <= lo < hi <= nr_pages):
        raise ValueError(f"a non-empty region inside guest RAM ({nr_pages} pages)")
    return lo, hi


def _dump_region(region: Region) -> str:
    size = "rest of RAM" if region.size is None else _dump_extent(region.size)
    return f"start {_dump_extent(region.start)}, size {size}"


class _WorkloadBase(_Model):
    start: Duration = 0.0
    stop: Duration | None = None


class IdleWorkload(_WorkloadBase):
    """Writes nothing."""

    kind: Literal["idle"]


class UniformWorkload(_WorkloadBase):
    """Uniformly random page writes over ``region`` at ``rate`` (mig_mon ``-p random``)."""

    kind: Literal["uniform"]
    rate: Rate
    region: Region = Field(default_factory=Region)


class HotsetWorkload(_WorkloadBase):
    """A writable working set: the first ``hot_fraction`` of ``region`` takes
    ``hot_share`` of the writes, the rest of the region the remainder."""

    kind: Literal["hotset"]
    rate: Rate
    region: Region = Field(default_factory=Region)
    hot_fraction: float = Field(0.1, gt=0.0, le=1.0)
    hot_share: float = Field(0.9, ge=0.0, le=1.0)


class ZipfWorkload(_WorkloadBase):
    """Zipf-distributed page writes (YCSB's request distribution, constant 0.99): the
    page of popularity rank r is written with probability proportional to r^-exponent;
    ranks are scattered over ``region`` by a fixed pseudo-random bijection."""

    kind: Literal["zipf"]
    rate: Rate
    region: Region = Field(default_factory=Region)
    exponent: float = Field(0.99, gt=0.0, le=10.0)


class SequentialWorkload(_WorkloadBase):
    """A sweep through ``region`` at ``rate``, wrapping to its start (mig_mon
    ``-p sequential``; Clark's MMuncher) unless ``wrap`` is false."""

    kind: Literal["sequential"]
    rate: Rate
    region: Region = Field(default_factory=Region)
    wrap: bool = True


class OnceWorkload(_WorkloadBase):
    """Each page of ``region`` written exactly once, in a scattered order, then
    nothing (mig_mon ``-p once``)."""

    kind: Literal["once"]
    rate: Rate
    region: Region = Field(default_factory=Region)


class TraceWorkload(_WorkloadBase):
    """Replay a recorded trace: a CSV (``time_s,gfn`` rows, optional header, ``#``
    comments) or an ``.npz`` with arrays ``time_s`` and ``gfn``. Times are seconds of
    guest virtual time (shifted by ``start``); a relative ``path`` is relative to the
    scenario file."""

    kind: Literal["trace"]
    path: str


Workload = Annotated[
    Union[IdleWorkload, UniformWorkload, HotsetWorkload, ZipfWorkload, SequentialWorkload,
          OnceWorkload, TraceWorkload],
    Field(discriminator="kind"),
]
WORKLOAD_KINDS = ("idle", "uniform", "hotset", "zipf", "sequential", "once", "trace")


# --------------------------------------------------------------------------- balloon

class BalloonStep(_Model):
    """At time ``at``, the balloon driver's target becomes ``target`` (the guest's
    memory size after ballooning)."""

    at: Duration
    target: Target


class BalloonConfig(_Model):
    """The guest's balloon driver (Linux ``drivers/xen/balloon.c``).

    Inflating releases pages with XENMEM_decrease_reservation, deflating asks them back
    with XENMEM_populate_physmap, ``batch_pages`` per hypercall. ``rate`` (pages/s)
    limits how fast it moves; unset, it reaches a target within the tick it is set.
    ``region`` is where inflation takes pages from (default: all RAM but the layout's
    high pages). After a deflate, ``reuse_share`` of the returned pages are written
    within ``reuse_within``, as a guest reuses the memory it gets back.
    ``boot_at`` (a PoD guest only) is when the driver first goes for its boot target
    (default: the first tick); until then the PoD cache is short of the guest's PoD
    entries, and pages the guest touches are populated from it.
    """

    schedule: list[BalloonStep] = Field(default_factory=list)
    batch_pages: int = Field(512, ge=1, le=1 << 20)
    rate: Rate | None = None
    region: Region | None = None
    reuse_share: float = Field(0.5, ge=0.0, le=1.0)
    reuse_within: Duration = 0.5
    boot_at: Duration = 0.0


# -------------------------------------------------------------------------- mappings

class MappingStep(_Model):
    """A mapping placed over ``gfns`` at ``at`` and removed at ``until`` (kept to the
    end when unset): ``mmio``, a device's BAR (XEN_DOMCTL_memory_mapping), or
    ``foreign``, another domain's frames (XENMEM_acquire_resource); see
    ``guest.mappings``."""

    at: Duration
    kind: Literal["mmio", "foreign"]
    gfns: GfnRange
    until: Duration | None = None


# ----------------------------------------------------------------------------- guest

#: The shortest guest tick (see GuestConfig._consistent).
TICK_MIN = 10e-6


class GuestConfig(_Model):
    """The simulated guest: memory, layout, write workloads, balloon driver.

    ``memory < maxmem`` boots the guest populate-on-demand (Xen's p2m-pod): all of
    ``maxmem`` is laid out as PoD entries backed by a cache of ``memory`` frames, and
    the balloon driver inflates down to ``memory`` at the guest's first tick. After
    validation ``maxmem`` is always set (to ``memory`` when omitted).

    ``host_memory`` is what the source host can give this domain (the toolstack sizes
    the simulated host with it; populate_physmap fails past it, which is how a balloon
    deflate runs out of memory). Unset, the host has room for ``maxmem`` and a margin.

    ``write_timing`` places the vCPUs' writes in time: ``continuous`` (default) gives
    every write its own time inside its tick, so the hypervisor applies exactly the
    writes before each call; ``tick`` stamps all of a tick's writes at the tick's start
    (the model before writes carried their own times: it reproduces those numbers).
    """

    memory: Size
    maxmem: Size | None = None
    host_memory: Size | None = None
    tick: Duration = 0.01
    write_timing: Literal["continuous", "tick"] = "continuous"
    layout: LayoutConfig = Field(default_factory=LayoutConfig, json_schema_extra=_layout_or_kind)
    workloads: list[Workload] = Field(default_factory=list)
    balloon: BalloonConfig = Field(default_factory=BalloonConfig)
    mappings: list[MappingStep] = Field(default_factory=list)

    @property
    def memory_pages(self) -> int:
        return self.memory >> PAGE_SHIFT

    @property
    def maxmem_pages(self) -> int:
        return (self.maxmem if self.maxmem is not None else self.memory) >> PAGE_SHIFT

    @property
    def pod(self) -> bool:
        return self.memory_pages < self.maxmem_pages

    @model_validator(mode="after")
    def _consistent(self) -> "GuestConfig":
        for name, value in (("memory", self.memory), ("maxmem", self.maxmem)):
            if value is None:
                continue
            if value <= 0 or value % PAGE_SIZE:
                raise field_error(name, "a whole number of 4 KiB pages (at least one), " + SIZE_EXPECTED,
                                  format_size(value))
        if self.maxmem is not None and self.maxmem < self.memory:
            raise field_error("maxmem", f"at least memory ({format_size(self.memory)})", format_size(self.maxmem))
        if self.maxmem is None:
            object.__setattr__(self, "maxmem", self.memory)   # frozen model: set once, here
        if self.host_memory is not None and (self.host_memory <= 0 or self.host_memory % PAGE_SIZE):
            raise field_error("host_memory", "a whole number of 4 KiB pages, " + SIZE_EXPECTED,
                              format_size(self.host_memory))
        if self.host_memory is not None and self.host_memory < self.memory:
            raise field_error("host_memory", f"at least memory ({format_size(self.memory)}): the host must "
                              "hold the domain it builds", format_size(self.host_memory))
        # MFNs are 32 bits with 0xFFFFFFFF as INVALID_MFN (hypervisor/p2m.py), so a host
        # holds at most 2^32 - 1 frames; without host_memory the host is maxmem + 4096 pages.
        frames = (self.host_memory if self.host_memory is not None else self.maxmem + 4096 * PAGE_SIZE) // PAGE_SIZE
        if frames > HOST_FRAMES_MAX:
            at, size = (("host_memory", self.host_memory) if self.host_memory is not None else
                        ("memory", self.memory) if self.maxmem == self.memory else ("maxmem", self.maxmem))
            raise field_error(at, f"a host of at most {HOST_FRAMES_MAX} 4 KiB frames (just under 16TiB; "
                              "machine frame numbers are 32 bits)", format_size(size))
        # A guest acts once per tick; below 10 us a second of guest time is 100,000+
        # steps, which only makes a run crawl without changing what it shows.
        if not (self.tick >= TICK_MIN):
            raise field_error("tick", "a duration of at least 10us like 10ms", self.tick)
        nr = self.maxmem_pages
        try:
            GuestLayout(self.layout, nr)
        except LayoutError as e:
            raise field_error("layout." + e.at if e.at else "layout", e.expected, e.found) from None
        for i, w in enumerate(self.workloads):
            region = getattr(w, "region", None)
            if region is not None:
                try:
                    resolve_region(region, nr)
                except ValueError as e:
                    raise field_error(f"workloads[{i}].region", str(e), _dump_region(region)) from None
        if self.balloon.region is not None:
            try:
                resolve_region(self.balloon.region, nr)
            except ValueError as e:
                raise field_error("balloon.region", str(e), _dump_region(self.balloon.region)) from None
        prev_at = 0.0
        target = self.memory_pages
        for i, step in enumerate(self.balloon.schedule):
            if step.at < prev_at:
                raise field_error(f"balloon.schedule[{i}].at",
                                  f"times in order (not before the previous step's {prev_at:g}s)", step.at)
            prev_at = step.at
            t_bytes = target * PAGE_SIZE + int(step.target) if isinstance(step.target, RelativeSize) \
                else int(step.target)
            if t_bytes % PAGE_SIZE or not (PAGE_SIZE <= t_bytes <= nr * PAGE_SIZE):
                raise field_error(f"balloon.schedule[{i}].target",
                                  f"a whole number of pages between 1 page and maxmem "
                                  f"({format_size(nr * PAGE_SIZE)})", _show_target(step.target, t_bytes))
            target = t_bytes >> PAGE_SHIFT
        if self.balloon.reuse_within < 0 or not math.isfinite(self.balloon.reuse_within):
            raise field_error("balloon.reuse_within", "a duration", self.balloon.reuse_within)
        self._check_boot_and_mappings()
        return self

    def _check_boot_and_mappings(self) -> None:
        b = self.balloon
        if b.boot_at and not self.pod:
            raise field_error("balloon.boot_at", "no boot_at unless the guest boots populate-on-demand "
                              "(memory below maxmem)", f"{b.boot_at:g}s")
        if b.schedule and b.boot_at > b.schedule[0].at:
            raise field_error("balloon.boot_at", f"a time no later than the first step's {b.schedule[0].at:g}s",
                              f"{b.boot_at:g}s")
        for i, m in enumerate(self.mappings):
            if m.gfns.stop - 1 > MAX_GFN:
                raise field_error(f"mappings[{i}].gfns", f"a range below GFN {MAX_GFN:#x}",
                                  f"end GFN {m.gfns.stop - 1:#x}")
            if m.until is not None and m.until <= m.at:
                raise field_error(f"mappings[{i}].until", f"a time after at ({m.at:g}s)", f"{m.until:g}s")
            for j, o in enumerate(self.mappings[:i]):
                if (m.gfns.first < o.gfns.stop and o.gfns.first < m.gfns.stop
                        and (o.until is None or m.at < o.until) and (m.until is None or o.at < m.until)):
                    raise field_error(f"mappings[{i}].gfns", f"GFNs no other mapping holds at the same time "
                                      f"(mappings[{j}] holds {o.gfns.first:#x}-{o.gfns.stop - 1:#x})",
                                      f"{m.gfns.first:#x}-{m.gfns.stop - 1:#x}")

    def balloon_targets(self) -> list[tuple[float, int]]:
        """The schedule resolved to ``(at_seconds, absolute_target_pages)``."""
        out = []
        target = self.memory_pages
        for step in self.balloon.schedule:
            if isinstance(step.target, RelativeSize):
                target = target + int(step.target) // PAGE_SIZE
            else:
                target = int(step.target) // PAGE_SIZE
            out.append((step.at, target))
        return out
