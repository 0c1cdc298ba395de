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
(``pooling.share_states``: a running tally per state, rounded; a glyph never shows a
state none of its GFNs is in). So 3,357 leftover bits in a 65,536-GFN balloon region light about
5 % of that region's glyphs, not all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from rich.console import Group, RenderableType
from rich.text import Span, Text

from migrate.ui.gfnmap import LEGEND, NSTATES, PENDING, SENT, UNPOPULATED, GfnMap, gaps
from migrate.ui.pooling import share_states

#: A hole at least this share of the address space gets folded into one row.
FOLD_SHARE = 1 / 8
#: Up to this p2m_size (per-PFN model) a glyph may stand for finer blocks than the
#: map's cells, so the map fills its panel; above it, a whole number of cells.
FINE_LIMIT = 1 << 21
#: ... in blocks of this fraction of the map's cell (kept counted by the map).
FINE_BLOCKS = 16
#: Each zoom step divides the GFNs per glyph by this.
ZOOM_STEP = 4
TRACKED_STYLE = "reverse"
TARGET_STYLE = "reverse underline"


def holes(gm: GfnMap) -> np.ndarray:
    """The guest layout's holes (``GfnMap.holes``)."""
    return gm.holes()


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


def fine_grain(gm: GfnMap) -> int:
    """GFNs per block the screen pools from (``GfnMap.fine_counts``): a glyph is a
    whole number of blocks, so a small per-PFN map fills its panel."""
    return max(gm.cell_pfns // FINE_BLOCKS, 1) if gm.dense and gm.p2m_size <= FINE_LIMIT else gm.cell_pfns


def _pooled(gm: GfnMap, lo: int, hi: int, cell: int) -> np.ndarray:
    """(n, NSTATES) counts of glyphs of ``cell`` GFNs over [lo, hi)."""
    n = -(-(hi - lo) // cell)
    if not n:
        return np.zeros((0, NSTATES), dtype=np.int64)
    cp = gm.cell_pfns
    g = fine_grain(gm)
    if cell % cp and cell % g == 0 and lo % g == 0 and gm.dense:
        c = gm.fine_counts(g)[lo // g: -(-hi // g)]
        k = cell // g
        pad = n * k - c.shape[0]
        if pad > 0:
            c = np.vstack([c, np.zeros((pad, NSTATES), dtype=c.dtype)])
        out = c[: n * k].reshape(n, k, NSTATES).sum(axis=1)
        over = -(-hi // g) * g - hi                      # PFNs past hi in the last block
        if over and hi == gm.p2m_size:
            out[-1, UNPOPULATED] -= over
        return out
    if cell % cp == 0 and lo % cp == 0:
        c = gm.counts()[lo // cp: -(-hi // cp)]
        k = cell // cp
        pad = n * k - c.shape[0]
        if pad > 0:
            c = np.vstack([c, np.zeros((pad, NSTATES), dtype=c.dtype)])
        return c[: n * k].reshape(n, k, NSTATES).sum(axis=1)
    st = np.full(n * cell, NSTATES, dtype=np.int64)      # NSTATES: past the end
    st[: hi - lo] = gm.states_range(lo, hi)
    idx = st.reshape(n, cell) + (np.arange(n, dtype=np.int64) * (NSTATES + 1))[:, None]
    out = np.bincount(idx.ravel(), minlength=n * (NSTATES + 1)).reshape(n, NSTATES + 1)
    return out[:, :NSTATES]


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
    cp = fine_grain(gm)
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
        c = _default_centre(gm, tracked) if centre is None else int(centre)
        first = max(min(c // span - nrows // 2, -(-gm.p2m_size // span) - nrows), 0)
        lo, hi = first * span, min((first + nrows) * span, gm.p2m_size)
        states = share_states(_pooled(gm, lo, hi, cell))
        for r0 in range(0, states.size, columns):
            rows.append(MapRow(lo + r0 * cell, states[r0:r0 + columns]))
    _mark(rows, cell, columns, tracked, TRACKED_STYLE)
    if target is not None:
        _mark(rows, cell, columns, (target,), TARGET_STYLE)
    return MapFrame(rows, cell, columns, zoom, len(levels), folds, budget)



def _default_centre(gm: GfnMap, tracked) -> int:
    """Where a zoom looks when no GFN was jumped to: the first tracked GFN, else the
    middle of the GFNs that are not holes (with libxc's layout the middle of the address
    space is the long gap below the special pages)."""
    if len(tracked):
        return int(tracked[0])
    free = gaps(gm.holes(), gm.p2m_size)            # the runs between the holes
    ends = np.cumsum(free[:, 1] - free[:, 0])
    if not free.size or not ends[-1]:
        return gm.p2m_size // 2
    half = int(ends[-1]) // 2
    i = min(int(np.searchsorted(ends, half, side="right")), len(ends) - 1)
    return int(free[i, 1] - (ends[i] - half))


_CHARS = np.array([" "] + [next(e.glyph for e in LEGEND if e.state == k) for k in range(NSTATES)])
_STYLES = [""] + [next(e.colour for e in LEGEND if e.state == k) for k in range(NSTATES)]


def row_runs(frame: MapFrame, label: int) -> list[list[tuple[str, str]]]:
    """Each row as (text, style) runs: its label, then one run per stretch of a state
    (a mark is a run of its own). What both drawings below are made from."""
    out = []
    for r in frame.rows:
        runs = [(f"{r.lo:0{label - 1}x} ", "dim")]
        if r.states is None:
            runs.append((f"┄┄ hole {r.lo:#x}-{r.hi - 1:#x} folded ({r.hi - r.lo:,} GFNs) ┄┄", "italic grey50"))
            out.append(runs)
            continue
        row = r.states.astype(np.int64) + 1          # -1 (nothing) -> 0
        cuts = np.flatnonzero(np.diff(row)) + 1
        if r.marks:
            m = np.array([k for k in r.marks if k < row.size], dtype=np.int64)
            cuts = np.union1d(cuts, np.concatenate([m, m + 1]))
            cuts = cuts[(cuts > 0) & (cuts < row.size)]
        starts = [0] + cuts.tolist()
        ends = cuts.tolist() + [row.size]
        glyphs = "".join(_CHARS[row].tolist())
        for a, b, k in zip(starts, ends, row[starts].tolist()):
            style = _STYLES[k]
            if a in r.marks:
                style = f"{style} {r.marks[a]}".strip()
            runs.append((glyphs[a:b], style))
        out.append(runs)
    return out


def render_frame(gm: GfnMap, frame: MapFrame, label: int) -> Text:
    """The rows as one ``Text`` (for plain text and tests; the app draws strips)."""
    parts: list[str] = []
    spans: list[Span] = []
    pos = 0
    for i, runs in enumerate(row_runs(frame, label)):
        if i:
            parts.append("\n")
            pos += 1
        for text, style in runs:
            parts.append(text)
            if style:
                spans.append(Span(pos, pos + len(text), style))
            pos += len(text)
    return Text("".join(parts), spans=spans, no_wrap=True, overflow="crop")


def map_strips(gm: GfnMap, *, width: int, height: int, zoom: int = 0, centre: int | None = None,
               tracked=(), target: int | None = None, prefer: tuple[int, int] | None = None,
               console=None, base=None):
    """The map as Textual strips, one per line of ``width`` x ``height``, built from
    segments directly: a dithered row has hundreds of runs, and going through a rich
    ``Text`` costs a style merge per run. Returns (strips, frame)."""
    from rich.segment import Segment
    from rich.style import Style
    from textual.strip import Strip

    if not gm.ncells:
        return [Strip([Segment("no address space yet", Style(dim=True))])], None
    label = len(f"{gm.p2m_size:x}") + 1
    frame, legend = _fit(gm, width, height, zoom=zoom, centre=centre, tracked=tracked, target=target,
                         prefer=prefer, scale=False)
    cache: dict[str, Style] = {}

    def style(name: str) -> Style:
        if name not in cache:
            cache[name] = (base + Style.parse(name)) if base is not None else Style.parse(name)
        return cache[name]

    # every glyph is one cell wide: each strip's length is known, no measuring per run
    strips = [Strip([Segment(t, style(s)) for t, s in runs], sum(len(t) for t, _ in runs))
              for runs in row_runs(frame, label)]
    for ln in legend:
        segs = list(ln.render(console)) if console is not None else [Segment(ln.plain)]
        strips.append(Strip(segs).crop(0, width))
    return strips[:max(height, 1)], frame


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


def _fit(gm: GfnMap, width: int, height: int | None, *, zoom: int, centre, tracked, target, prefer,
         scale: bool) -> tuple[MapFrame, list[Text]]:
    """The frame for ``width`` columns of text and ``height`` lines, and its legend. The
    legend's room is kept for every live state, so the map's scale does not move when a
    state appears or the legend wraps differently."""
    label = len(f"{gm.p2m_size:x}") + 1
    columns = min(max(width - label, 8), 256)
    dummy = MapFrame([], gm.cell_pfns, columns, 0, 2, [])
    room = len(legend_lines(gm, dummy, width, tracked=tracked, scale=scale, worst=True))
    budget = 10 ** 9 if height is None else max(height - room, 1)
    lines = legend_lines(gm, dummy, width, tracked=tracked, scale=scale)
    if height is not None and len(lines) > room:           # the end's states: the legend comes first
        budget = max(height - len(lines), 1)
    frame = layout(gm, columns, budget, zoom=zoom, centre=centre, tracked=tracked, target=target, prefer=prefer)
    return frame, legend_lines(gm, frame, width, tracked=tracked, scale=scale)


def render_map(gm: GfnMap, *, width: int | None = None, height: int | None = None, zoom: int = 0,
               centre: int | None = None, tracked=(), target: int | None = None, scale: bool = True,
               prefer: tuple[int, int] | None = None) -> tuple[RenderableType, MapFrame | None]:
    """The map in ``width`` x ``height`` characters as a rich renderable: rows labelled
    with their first GFN (hex), then the legend (with the scale line unless ``scale`` is
    False: the panel puts it in its border)."""
    if not gm.ncells:
        return Text("no address space yet", style="dim"), None
    label = len(f"{gm.p2m_size:x}") + 1
    frame, lines = _fit(gm, width or 100, height, zoom=zoom, centre=centre, tracked=tracked, target=target,
                        prefer=prefer, scale=scale)
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


__all__ = ["FOLD_SHARE", "MapFrame", "MapRow", "ZOOM_STEP", "holes", "layout", "legend_lines", "map_strips",
           "parse_gfn", "render_map", "row_runs", "scale_text", "zoom_cells"]
