"""The app's pass table at any width: one row per pass (``struct precopy_stats`` as
``xg_sr_save.c`` keeps it per iteration), fitted to the panel without ever cutting a
number.

A number that does not fit is never shown shortened into another number (262240 must
not read ``26224``): the table first takes the compact column names, then drops the
time column, then abbreviates counts with a unit (``262k``, ``1.05M``: the value
rounded, never truncated), then drops whole columns, least telling first. Each
candidate is measured before it is chosen, so what is drawn always fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from rich import box
from rich.table import Table
from rich.text import Text

MIB = 1 << 20
#: characters between two columns: one of padding each side and the box's blank divider
GAP = 3


def abbrev(n: int) -> str:
    """``n`` exactly below 10,000, else rounded to 3 significant digits with a unit:
    47495 -> ``47.5k``, 262240 -> ``262k``, 1048576 -> ``1.05M``."""
    n = int(n)
    if abs(n) < 10_000:
        return str(n)
    for unit, scale in (("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12)):
        v = n / scale
        for digits in (2, 1, 0):
            s = f"{v:.{digits}f}"
            if len(s.replace("-", "").replace(".", "")) <= 3 or digits == 0:
                break
        if float(s) < 1000:
            return s + unit
    return f"{n / 1e15:.0f}P"


def parse_abbrev(s: str) -> tuple[float, float]:
    """``(value, half a unit of its last digit)``: what an abbreviation stands for."""
    s = s.strip()
    scale = {"k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}.get(s[-1:], 1.0)
    body = s[:-1] if scale != 1.0 else s
    decimals = len(body.split(".")[1]) if "." in body else 0
    return float(body) * scale, 0.5 * scale * 10 ** -decimals


@dataclass(frozen=True)
class Column:
    key: str
    wide: str                       # its name when there is room
    short: str                      # its name in the compact table
    justify: str
    cell: Callable[[dict[str, Any], bool, bool], str]   # (row, compact, abbreviated) -> text


def _num(key: str):
    return lambda r, compact, ab: (abbrev if ab else str)(int(r.get(key, 0)))


def _mib(r, compact, ab):
    v = int(r.get("bytes", 0)) / MIB
    return f"{v:.0f}" if compact else f"{v:.2f}"


def _secs(r, compact, ab):
    d = float(r.get("end_s", 0.0)) - float(r.get("start_s", 0.0))
    return f"{d:.2f}" if compact else f"{d:.3f}"


def _bal(r, compact, ab):
    if "balloon_out" not in r:
        return ""
    f = abbrev if ab else str
    return f"{f(r['balloon_out'])}/{f(r['balloon_in'])}"


COLUMNS = (
    Column("iteration", "#", "#", "right", lambda r, c, a: str(r.get("iteration", ""))),
    Column("phase", "phase", "phase", "left", lambda r, c, a: str(r.get("phase", ""))),
    Column("dirty_count", "dirty_count", "dirty", "right", _num("dirty_count")),
    Column("pfns_walked", "walked", "walked", "right", _num("pfns_walked")),
    Column("pages_sent", "data", "data", "right", _num("pages_sent")),
    Column("xtab_sent", "XTAB", "XTAB", "right", _num("xtab_sent")),
    Column("bytes", "MiB", "MiB", "right", _mib),
    Column("time", "time s", "s", "right", _secs),
    Column("balloon", "bal -/+", "bal -/+", "right", _bal),
)

#: (compact, abbreviated, columns dropped): tried in order, the first that fits wins
FITS = (
    (False, False, ()),
    (True, False, ("pfns_walked",)),
    (True, False, ("pfns_walked", "time")),
    (True, True, ("pfns_walked", "time")),
    (True, True, ("pfns_walked", "time", "balloon")),
    (True, True, ("pfns_walked", "time", "balloon", "bytes")),
    (True, True, ("pfns_walked", "time", "balloon", "bytes", "dirty_count")),
    (True, True, ("pfns_walked", "time", "balloon", "bytes", "dirty_count", "phase")),
    (True, True, ("pfns_walked", "time", "balloon", "bytes", "dirty_count", "phase", "xtab_sent")),
)


def _round_dict(r) -> dict[str, Any]:
    return dict(r) if isinstance(r, dict) else r.as_dict()


def fitted_cells(rows: list[dict[str, Any]], width: int) -> tuple[list[Column], list[list[str]], bool] | None:
    """The columns, the cell texts and whether the compact names are used: the first
    of ``FITS`` whose widest row fits in ``width``; None when none does."""
    for compact, ab, drop in FITS:
        cols = [c for c in COLUMNS if c.key not in drop]
        cells = [[c.cell(r, compact, ab) for c in cols] for r in rows]
        names = [c.short if compact else c.wide for c in cols]
        widths = [max([len(n)] + [len(row[i]) for row in cells]) for i, n in enumerate(names)]
        if sum(widths) + GAP * (len(cols) - 1) <= width:
            return cols, cells, compact
    return None


def shown_rows(rounds: Iterable, *, live=None, max_rows: int | None = None) -> tuple[list[dict], str | None]:
    """The passes the table shows (the latest ``max_rows``, the one in flight last) and
    the caption that says how many earlier ones it leaves out."""
    rows = [_round_dict(r) for r in rounds]
    caption = None
    if max_rows is not None and len(rows) + (live is not None) > max_rows:
        keep = max(max_rows - (live is not None) - 1, 1)
        caption = f"… {len(rows) - keep} earlier passes not shown"
        rows = rows[-keep:]
    return rows + ([_round_dict(live)] if live is not None else []), caption


def fit_pass_table(rounds: Iterable, *, live=None, max_rows: int | None = None, width: int) -> Table | Text:
    """One row per pass, the pass in flight in italics, fitted to ``width`` columns
    (a one-line note when not even ``#`` and ``data`` fit)."""
    every, caption = shown_rows(rounds, live=live, max_rows=max_rows)
    fit = fitted_cells(every, width)
    if fit is None:
        return Text("(too narrow)", style="dim", no_wrap=True, overflow="crop")
    cols, cells, compact = fit
    tbl = Table(box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False, pad_edge=False, caption=caption,
                caption_justify="left")
    for c in cols:
        tbl.add_column(c.short if compact else c.wide, justify=c.justify, no_wrap=True)
    for i, row in enumerate(cells):
        texts = [Text(x, style="bold red" if c.key == "xtab_sent" and every[i].get("xtab_sent") else "")
                 for c, x in zip(cols, row)]
        tbl.add_row(*texts, style="italic yellow" if live is not None and i == len(cells) - 1 else None)
    return tbl


__all__ = ["COLUMNS", "FITS", "abbrev", "fit_pass_table", "fitted_cells", "parse_abbrev", "shown_rows"]
