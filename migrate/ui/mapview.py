"""The GFN map as a person reads it: pooled in proportion, zoomed, holes folded, the
tracked GFNs marked.

``GfnMap`` (``gfnmap.py``) keeps the per-PFN states; this module decides what a screen
of ``width`` x ``height`` characters shows of them. The address space is the saver's
``[0, p2m_size)`` (``xg_sr_save.c`` walks every PFN of it); what the guest's layout
leaves unpopulated at boot (libxc's ``meminit_hvm`` holes: the VGA hole, the MMIO hole,
the gap below the special pages) is a *hole*, drawn apart from GFNs the balloon gave
back, and a long hole may be folded into one marked row so populated memory keeps its
room.

Pooling is honest: a glyph that stands for many GFNs shows one of its GFNs' states,
chosen so that, along the map, the glyphs of each state are in proportion to its GFNs
(``gfnmap.share_states``: a running tally per state, rounded; a glyph never shows a
state none of its GFNs is in). So 3,357 leftover bits in a 65,536-GFN balloon region light about
5 % of that region's glyphs, not all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from rich.console import Group, RenderableType
from rich.text import Text

from migrate.ui.gfnmap import LEGEND, NSTATES, PENDING, SENT, UNPOPULATED, GfnMap, share_states

#: A hole at least this share of the address space gets folded into one row.
FOLD_SHARE = 1 / 8
#: Up to this p2m_size (per-PFN model) a glyph may stand for any number of GFNs, so
#: the map fills its panel; above it, a whole number of the map's cells (cheaper).
FINE_LIMIT = 1 << 21
#: Each zoom step divides the GFNs per glyph by this.
ZOOM_STEP = 4
TRACKED_STYLE = "reverse"
TARGET_STYLE = "reverse underline"


def holes(gm: GfnMap) -> np.ndarray:
    """(k, 2) [lo, hi) runs of ``[0, p2m_size)`` neither populated nor ballooned at the
    run's start (``RunStarted``): the guest layout's holes."""
    runs = [r for r in (gm._populated, gm._ballooned) if r.size]
    if not gm.p2m_size:
        return np.empty((0, 2), dtype=np.int64)
    if not runs:
        return np.array([[0, gm.p2m_size]], dtype=np.int64)
    r = np.vstack(runs)
    r = r[np.argsort(r[:, 0], kind="stable")]
    out, at = [], 0
    for lo, hi in r:
        if lo > at:
            out.append((at, min(int(lo), gm.p2m_size)))
        at = max(at, int(hi))
    if at < gm.p2m_size:
        out.append((at, gm.p2m_size))
    return np.array([x for x in out if x[1] > x[0]], dtype=np.int64).reshape(-1, 2)


@dataclass
class MapRow:
    lo: int                        # first GFN of the row
    states: np.ndarray | None      # one state per glyph; None: a folded hole
    hi: int = 0                    # folded hole: its end
    marks: dict[int, str] = field(default_factory=dict)   # glyph index -> style


@dataclass
class MapFrame:
    """What one drawing of the map holds: its rows, GFNs per glyph and the zoom."""

    rows: list[MapRow]
    cell: int
    columns: int
    zoom: int
    levels: int
    folded: list[tuple[int, int]]
    budget: int = 0                # the rows it was given
    columns_for: int = 0           # the panel width it was drawn for (MapPanel)


def zoom_cells(gm: GfnMap, fit_cell: int) -> list[int]:
    """GFNs per glyph at each zoom level: the fitted size, then the powers of ZOOM_STEP
    below it down to one GFN a glyph (per-PFN model), or the map's own cell (per-cell
    model)."""
    floor = 1 if gm.dense else gm.cell_pfns
    out = [fit_cell]
    step = 1
    while step * ZOOM_STEP < fit_cell:
        step *= ZOOM_STEP
    while step >= floor and step < out[-1]:
        out.append(step)
        step //= ZOOM_STEP
    if out[-1] > floor:
        out.append(floor)
    return out


def _pooled(gm: GfnMap, lo: int, hi: int, cell: int) -> np.ndarray:
    """(n, NSTATES) counts of glyphs of ``cell`` GFNs over [lo, hi)."""
    n = -(-(hi - lo) // cell)
    if not n:
        return np.zeros((0, NSTATES), dtype=np.int64)
    cp = gm.cell_pfns
    if cell % cp == 0 and lo % cp == 0:
        c = gm.counts()[lo // cp: -(-hi // cp)]
        k = cell // cp
        pad = n * k - c.shape[0]
        if pad > 0:
            c = np.vstack([c, np.zeros((pad, NSTATES), dtype=c.dtype)])
        return c[: n * k].reshape(n, k, NSTATES).sum(axis=1)
    st = gm.states(np.arange(lo, hi, dtype=np.int64)).astype(np.int64)
    idx = (np.arange(hi - lo, dtype=np.int64) // cell) * NSTATES + st
    return np.bincount(idx, minlength=n * NSTATES)[: n * NSTATES].reshape(n, NSTATES)


def _mark(rows: list[MapRow], cell: int, columns: int, gfns, style: str) -> None:
    for g in gfns:
        for r in rows:
            if r.states is not None and r.lo <= g < r.lo + r.states.size * cell:
                r.marks[(int(g) - r.lo) // cell] = style


def layout(gm: GfnMap, width: int, budget: int, *, zoom: int = 0, centre: int | None = None,
           tracked=(), target: int | None = None, prefer: tuple[int, int] | None = None) -> MapFrame:
    """Rows for a map ``width`` glyphs wide in at most ``budget`` rows (best effort: at
    least one row per segment). Zoom 0 fits the whole space, long holes folded; zoom
    ``z`` shows a window of glyphs ZOOM_STEP**z times finer, centred on ``centre``."""
    # a glyph is a whole number of the map's cells; a small per-PFN map may take any size
    cp = 1 if gm.dense and gm.p2m_size <= FINE_LIMIT else gm.cell_pfns
    columns = max(width, 8)
    folds = [(int(-(-lo // cp) * cp), int(hi // cp * cp)) for lo, hi in holes(gm)
             if hi - lo >= FOLD_SHARE * gm.p2m_size]
    folds = [(lo, hi) for lo, hi in folds if hi - lo >= 2 * cp and (lo, hi) != (0, gm.p2m_size)]
    segs, at = [], 0
    for lo, hi in folds:
        if lo > at:
            segs.append((at, lo))
        at = hi
    if at < gm.p2m_size:
        segs.append((at, gm.p2m_size))
    room = max(budget - len(folds), len(segs))

    def fits(cell: int) -> bool:
        return sum(-(-(hi - lo) // (cell * columns)) for lo, hi in segs) <= room

    # the finest whole number of the map's cells a glyph that fits (not only powers of
    # two: a power of two can leave half the panel empty)
    total = sum(hi - lo for lo, hi in segs)
    k = max(-(-total // (cp * columns * room)), 1)
    while not fits(k * cp) and k * cp < gm.p2m_size:
        k += 1
    cell = k * cp
    if prefer is not None and abs(prefer[1] - budget) <= 1 and cell < prefer[0] <= 2 * cell and fits(prefer[0]):
        # one row more room than when it was chosen: keep the scale (a header or caption
        # that wraps and unwraps does not make the map flicker)
        cell = prefer[0]
    levels = zoom_cells(gm, cell)
    zoom = zoom % len(levels)
    rows: list[MapRow] = []
    if zoom == 0:
        parts = sorted([(lo, hi, False) for lo, hi in segs] + [(lo, hi, True) for lo, hi in folds])
        for lo, hi, fold in parts:
            if fold:
                rows.append(MapRow(lo, None, hi))
                continue
            states = share_states(_pooled(gm, lo, hi, cell))
            for r0 in range(0, states.size, columns):
                rows.append(MapRow(lo + r0 * cell, states[r0:r0 + columns]))
    else:
        cell = levels[zoom]
        span = cell * columns
        nrows = max(budget, 1)
        c = gm.p2m_size // 2 if centre is None else int(centre)
        first = max(min(c // span - nrows // 2, -(-gm.p2m_size // span) - nrows), 0)
        lo, hi = first * span, min((first + nrows) * span, gm.p2m_size)
        states = share_states(_pooled(gm, lo, hi, cell))
        for r0 in range(0, states.size, columns):
            rows.append(MapRow(lo + r0 * cell, states[r0:r0 + columns]))
    _mark(rows, cell, columns, tracked, TRACKED_STYLE)
    if target is not None:
        _mark(rows, cell, columns, (target,), TARGET_STYLE)
    return MapFrame(rows, cell, columns, zoom, len(levels), folds, budget)


_GLYPH = {e.state: (e.glyph, e.colour) for e in LEGEND}
_GLYPH[-1] = (" ", "")


def render_frame(gm: GfnMap, frame: MapFrame, label: int) -> Text:
    lines = Text(no_wrap=True, overflow="crop")
    for i, r in enumerate(frame.rows):
        if i:
            lines.append("\n")
        lines.append(f"{r.lo:0{label - 1}x} ", style="dim")
        if r.states is None:
            lines.append(f"┄┄ hole {r.lo:#x}-{r.hi - 1:#x} folded ({r.hi - r.lo:,} GFNs) ┄┄",
                         style="italic grey50")
            continue
        row = r.states
        cut = sorted(set((np.flatnonzero(np.diff(row)) + 1).tolist())
                     | {m for m in r.marks} | {m + 1 for m in r.marks})
        start = 0
        for end in [c for c in cut if 0 < c < row.size] + [row.size]:
            g, colour = _GLYPH[int(row[start])]
            style = colour
            if start in r.marks:
                style = f"{colour} {r.marks[start]}".strip()
            lines.append(g * (end - start), style=style)
            start = end
    return lines


#: The states a map can show while the passes run (missing and stale come with the end):
#: the legend's room is kept for all of them, so a state that appears does not rescale.
LIVE_STATES = tuple(e.state for e in LEGEND if e.name not in ("missing", "stale"))


def scale_text(frame: MapFrame, width: int = 1000) -> str:
    """How to read a glyph: GFNs per glyph, pooled in proportion, and the zoom; the
    longest of these that fits in ``width``."""
    one = frame.cell == 1
    zoom = f"zoom {frame.zoom + 1}/{frame.levels}" if frame.levels > 1 else ""
    head = "1 glyph = 1 GFN" if one else f"1 glyph = {frame.cell:,} GFNs"
    tries = [f"{head}{'' if one else ', in proportion'}" + (f"; {zoom} (z, j)" if zoom else ""),
             f"{head}{'' if one else ', in proportion'}" + (f"; {zoom}" if zoom else ""),
             f"{head}{'' if one else ' in proportion'}", head]
    return next((t for t in tries if len(t) <= width), head)


def _pack(entries: list[Text], width: int) -> list[Text]:
    lines: list[Text] = [Text()]
    for t in entries:
        if lines[-1].cell_len and lines[-1].cell_len + 2 + t.cell_len > width:
            lines.append(Text())
        if lines[-1].cell_len:
            lines[-1].append("  ")
        lines[-1].append_text(t)
    return lines


def _entry(e, n: int) -> Text:
    t = Text()
    t.append(e.glyph, style=e.colour)
    t.append(f" {'hole' if e.state == UNPOPULATED else e.name} {n:,}")
    return t


def legend_lines(gm: GfnMap, frame: MapFrame | None, width: int, *, tracked=(), scale: bool = True,
                 worst: bool = False) -> list[Text]:
    """Legend entries (glyph, name, PFN count) of the states present, then (``scale``)
    how to read a glyph, packed into lines no wider than ``width``. ``worst``: the
    lines every live state would take at full counts (the room kept for the legend)."""
    totals = gm.totals()
    if worst:
        entries = [_entry(e, gm.p2m_size) for e in LEGEND if e.state in LIVE_STATES]
    else:
        entries = [_entry(e, totals[e.name]) for e in LEGEND if totals[e.name] or e.state in (SENT, PENDING)]
    if gm.unplaced_stale and not worst:
        entries.append(Text(f"({gm.unplaced_stale:,} stale drawn as sent: written unlogged)", style="dim"))
    if tracked:
        t = Text()
        t.append("▮", style=TRACKED_STYLE)
        t.append(" tracked")
        entries.append(t)
    if frame is not None and scale:
        entries.append(Text(scale_text(frame), style="dim"))
    return _pack(entries, width)


def render_map(gm: GfnMap, *, width: int | None = None, height: int | None = None, zoom: int = 0,
               centre: int | None = None, tracked=(), target: int | None = None, scale: bool = True,
               prefer: tuple[int, int] | None = None) -> tuple[RenderableType, MapFrame | None]:
    """The map in ``width`` x ``height`` characters: rows labelled with their first GFN
    (hex), then the legend (with the scale line unless ``scale`` is False: the panel
    puts it in its border). The legend's room is kept for every live state, so the map's
    scale does not move when a state appears or the legend wraps differently."""
    if not gm.ncells:
        return Text("no address space yet", style="dim"), None
    label = len(f"{gm.p2m_size:x}") + 1
    w = width or 100
    columns = min(max(w - label, 8), 256) if width is not None else gm.columns
    dummy = MapFrame([], gm.cell_pfns, columns, 0, 2, [])
    room = len(legend_lines(gm, dummy, w, tracked=tracked, scale=scale, worst=True))
    budget = 10 ** 9 if height is None else max(height - room, 1)
    lines = legend_lines(gm, dummy, w, tracked=tracked, scale=scale)
    if height is not None and len(lines) > room:           # the end's states: the legend comes first
        budget = max(height - len(lines), 1)
    frame = layout(gm, columns, budget, zoom=zoom, centre=centre, tracked=tracked, target=target, prefer=prefer)
    lines = legend_lines(gm, frame, w, tracked=tracked, scale=scale)
    legend = Text(no_wrap=True, overflow="crop")
    for i, ln in enumerate(lines):
        if i:
            legend.append("\n")
        legend.append_text(ln)
    return Group(render_frame(gm, frame, label), legend), frame


def parse_gfn(text: str, p2m_size: int) -> int:
    """A GFN typed by a person: hex with 0x, or decimal; inside [0, p2m_size)."""
    s = text.strip().lower().replace("_", "")
    try:
        g = int(s, 16) if s.startswith("0x") else int(s, 10)
    except ValueError:
        raise ValueError(f"not a GFN: {text!r} (expected 0x30060 or 196704)") from None
    if not 0 <= g < max(p2m_size, 1):
        raise ValueError(f"GFN {g:#x} is outside the address space [0, {p2m_size:#x})")
    return g


__all__ = ["FOLD_SHARE", "MapFrame", "MapRow", "ZOOM_STEP", "holes", "layout", "legend_lines", "parse_gfn",
           "render_map", "scale_text", "zoom_cells"]
