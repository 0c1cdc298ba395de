"""A sweep's results: one row per run, written as runs finish and put in order at the end.

A row is the run's axis values (its identity) and the report's key outcomes
(``OUTCOME_COLUMNS``, taken from ``report.build_report`` by ``row_from_report``).
While a sweep runs, every finished row is appended to ``OUT.part`` (JSON lines, one
flushed line per run, so a killed sweep loses at most the line being written). At the
end, or when the sweep is interrupted, the rows are written to ``OUT`` (Parquet or CSV)
in the sweep's canonical order (the product order of its axes), whatever order the
runs finished in, and the part file is removed. ``--resume`` reads both files back.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Iterable

# name -> type ("int", "float", "str", "bool"); None in any column means "not known"
# (a run that failed has no verify result, an invalid combination has no totals).
OUTCOME_COLUMNS: dict[str, str] = {
    "seed": "int",
    "behaviour": "str",
    "policy": "str",
    "outcome": "str",         # completed / failed / aborted (the report's) or invalid / error / lost
    "ok": "bool",             # completed and the destination matches the source
    "error": "str",
    "missing": "int",
    "stale": "int",
    "extra": "int",
    "xtab_after_pass1": "int",
    "xtab": "int",
    "data_pages": "int",
    "bytes": "int",
    "iterations": "int",
    "total_time_s": "float",
    "downtime_s": "float",
    "marks_dirty": "int",
    "marks_clean": "int",
}
METRICS = [c for c, t in OUTCOME_COLUMNS.items() if t in ("int", "float") and c != "seed"]
FORMATS = ("parquet", "csv")
PARQUET_MISSING = ("pyarrow is needed for Parquet results: install the sweep extra: "
                   "pip install 'xmig[sweep]' (or write CSV: --out results.csv)")


class ResultsError(ValueError):
    """A results file cannot be written or read back (one line, exit 2)."""


def xtab_after_pass1(report: dict[str, Any]) -> int:
    """XTAB entries sent by the live passes after pass 1 and the final pass (under
    ``pre-fix``, GFNs dirtied then ballooned out, queried again for nothing)."""
    return sum(r["xtab_sent"] for r in report["rounds"][1:] if r["phase"] != "verify")


def row_from_report(report: dict[str, Any] | None, *, outcome: str | None = None, error: str | None = None,
                    **known: Any) -> dict[str, Any]:
    """The outcome columns of one run from its ``build_report`` dict; without a report
    (the run never started) only ``outcome``, ``error`` and what is ``known``."""
    row: dict[str, Any] = dict.fromkeys(OUTCOME_COLUMNS)
    if report is None:
        row.update(known, outcome=outcome, ok=False, error=error)
        return row
    tot, ver, hv = report["totals"], report["verify"], report["hypervisor"]
    row.update(
        seed=report["seed"], behaviour=report["behaviour"], policy=report["policy"]["name"],
        outcome=report["outcome"], ok=bool(report["outcome"] == "completed" and ver and ver["ok"]),
        error=report["error"],
        missing=None if ver is None else ver["missing_pages"],
        stale=None if ver is None else ver["stale_pages"],
        extra=None if ver is None else ver["extra_pages"],
        xtab_after_pass1=xtab_after_pass1(report), xtab=tot["xtab_sent"], data_pages=tot["pages_sent"],
        bytes=tot["bytes"], iterations=tot["iterations"], total_time_s=tot["total_time_s"],
        downtime_s=tot["downtime_s"], marks_dirty=hv.get("marks_dirty"), marks_clean=hv.get("marks_clean"))
    return row


def columns_for(axes: list[str]) -> list[str]:
    """A results file's columns: the axes, then the outcomes (``seed`` once)."""
    return list(axes) + [c for c in OUTCOME_COLUMNS if c not in axes]


def format_of(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise ResultsError(f"--format: expected one of {', '.join(FORMATS)}, found {fmt!r}")
        return fmt
    ext = path.suffix.lower().lstrip(".")
    if ext in ("parquet", "pq"):
        return "parquet"
    if ext == "csv":
        return "csv"
    raise ResultsError(f"--out: expected a .parquet or .csv file (or --format parquet|csv), found {str(path)!r}")


def require_parquet() -> None:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ResultsError(PARQUET_MISSING) from None


#: A part file larger than this is not read back (a million rows take ~500 MB).
MAX_PART_BYTES = 1 << 30


def part_path(out: Path) -> Path:
    return out.with_name(out.name + ".part")


# ---------------------------------------------------------------------------- part file

class PartWriter:
    """Append-only JSON lines: one line per finished run, flushed as it is written."""

    def __init__(self, path: Path, axes: list[str], *, append: bool, base: str | None = None):
        self.path = path
        fresh = not (append and path.exists() and path.stat().st_size > 0)
        self._fh = path.open("a" if not fresh else "w", encoding="utf-8")
        if fresh:
            self._write({"xmig_sweep_part": 1, "axes": axes, "base": base})

    def _write(self, obj: dict[str, Any]) -> None:
        self._fh.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self._fh.flush()

    def add(self, row: dict[str, Any]) -> None:
        self._write(row)

    def close(self) -> None:
        self._fh.close()


def read_part(path: Path) -> tuple[list[str] | None, list[dict[str, Any]]]:
    """Rows of a part file; a last line cut short by a kill is ignored."""
    axes, rows, _ = read_part_with_base(path)
    return axes, rows


def read_part_with_base(path: Path) -> tuple[list[str] | None, list[dict[str, Any]], str | None]:
    """``read_part`` and the base scenario digest its header names (None: not said)."""
    axes, numbered, base = read_part_lines(path)
    return axes, [row for _n, row in numbered], base


def read_part_lines(path: Path) -> tuple[list[str] | None, list[tuple[int, dict[str, Any]]], str | None]:
    """``read_part_with_base`` with each row's line number (for errors that name it)."""
    if not path.exists():
        return None, [], None
    axes = base = None
    rows: list[tuple[int, dict[str, Any]]] = []
    from guest.inputs import InputError, check_input

    try:
        check_input(path, MAX_PART_BYTES, "part file of xmig sweep")
    except InputError as e:
        raise ResultsError(f"{path}: expected {e.expected}, found {e.found}") from None
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, 1):
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                continue              # a line cut short by a kill, or not ours: not a row
            if not isinstance(obj, dict):
                continue
            if "xmig_sweep_part" in obj:
                axes = obj.get("axes")
                base = obj.get("base") if isinstance(obj.get("base"), str) else None
                if not isinstance(axes, list) or not all(isinstance(a, str) for a in axes):
                    raise ResultsError(f"{path}: line {n}: axes: expected a list of axis names, "
                                       f"found {json.dumps(axes)[:40]}")
            else:
                rows.append((n, obj))
    return axes, rows, base


#: What a run's ``outcome`` column may say (the report's, then the sweep's own).
OUTCOMES = ("completed", "failed", "aborted", "invalid", "error", "lost")
_MAX_SEED = (1 << 63) - 1


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return f"{v!r}"[:24]
    if isinstance(v, str):
        return "a string"
    return f"a {type(v).__name__}"


def check_row(row: dict[str, Any], axes: list[str]) -> None:
    """Refuse (ValueError naming the column) a row read back from a results or part
    file that ``row_from_report`` could not have written: a column no sweep has, a
    value of another type, a negative count, an outcome or behaviour xmig never
    reports. The file says nothing about where its values came from, so this is what
    keeps an edited or foreign file from passing its rows off as this sweep's runs."""
    for col in row:
        if col not in OUTCOME_COLUMNS and col not in axes and col != "key":
            raise ValueError(f"column {str(col)[:40]!r} is not an axis of this sweep or a result column")
    for col, typ in OUTCOME_COLUMNS.items():
        if col in axes:
            continue
        v = row.get(col)
        if v is None:
            continue
        if typ == "int":
            ok = isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _MAX_SEED
            want = "a whole number from 0 to 2^63-1" if col == "seed" else "a count (a whole number, 0 or more)"
        elif typ == "float":
            ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and 0 <= v < float("inf"))
            want = "a finite number of seconds, 0 or more"
        elif typ == "bool":
            ok, want = isinstance(v, bool), "true or false"
        else:
            ok, want = isinstance(v, str), "text"
            if ok and col == "outcome":
                ok, want = v in OUTCOMES, "one of " + ", ".join(OUTCOMES)
            elif ok and col == "behaviour":
                ok, want = v in ("fixed", "pre-fix"), "fixed or pre-fix"
        if not ok:
            raise ValueError(f"{col}: expected {want}, found {_kind(v)}")
    if row.get("outcome") is None:
        raise ValueError("outcome: expected one of " + ", ".join(OUTCOMES) + ", found nothing")


def results_base(path: Path, fmt: str) -> str | None:
    """The base scenario digest a Parquet results file names in its metadata (a CSV
    file has no place for it: None)."""
    if fmt != "parquet" or not path.exists():
        return None
    try:
        import pyarrow.parquet as pq

        meta = pq.read_schema(path).metadata or {}
        base = json.loads(meta.get(b"xmig.sweep", b"{}")).get("base")
    except Exception:
        return None
    return base if isinstance(base, str) else None


# ---------------------------------------------------------------------------- final file

def _axis_type(values: Iterable[Any]) -> str:
    vals = [v for v in values if v is not None]
    if vals and all(isinstance(v, bool) for v in vals):
        return "bool"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        return "int"
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
        return "float"
    return "str"


def column_types(axes: list[str], rows: list[dict[str, Any]]) -> dict[str, str]:
    types = {a: _axis_type(r.get(a) for r in rows) for a in axes}
    types.update({c: t for c, t in OUTCOME_COLUMNS.items() if c not in axes})
    return types


def _cast(value: Any, typ: str) -> Any:
    if value is None:
        return None
    if typ == "str":
        return value if isinstance(value, str) else json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    if typ == "float":
        return float(value)
    return value


def write_results(path: Path, fmt: str, axes: list[str], rows: list[dict[str, Any]],
                  meta: dict[str, Any] | None = None) -> None:
    """Write ``rows`` (already in canonical order) atomically: a temporary file renamed
    over ``path``, so a reader never sees half a file."""
    cols = columns_for(axes)
    types = column_types(axes, rows)
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "csv":
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(cols)
            for r in rows:
                w.writerow(["" if r.get(c) is None else _csv_cell(_cast(r.get(c), types[c])) for c in cols])
    else:
        require_parquet()
        import pyarrow as pa
        import pyarrow.parquet as pq

        pa_types = {"int": pa.int64(), "float": pa.float64(), "str": pa.string(), "bool": pa.bool_()}
        schema = pa.schema([(c, pa_types[types[c]]) for c in cols],
                           metadata={b"xmig.sweep": json.dumps(meta or {}).encode()})
        table = pa.Table.from_pydict({c: [_cast(r.get(c), types[c]) for r in rows] for c in cols}, schema=schema)
        pq.write_table(table, tmp)
    os.replace(tmp, path)


def _csv_cell(v: Any) -> Any:
    if isinstance(v, bool):
        return "true" if v else "false"
    return v


def read_results(path: Path, fmt: str) -> list[dict[str, Any]]:
    """Rows of a results file written by ``write_results`` (types restored for CSV)."""
    if not path.exists():
        return []
    try:
        if fmt == "parquet":
            require_parquet()
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        with path.open(newline="", encoding="utf-8") as fh:
            return [{k: _from_csv(k, v) for k, v in r.items()} for r in csv.DictReader(fh)]
    except ResultsError:
        raise
    except Exception as e:
        raise ResultsError(f"{path}: expected a results file written by xmig sweep, found {type(e).__name__}: {e}") from None


def _from_csv(column: str, text: str | None) -> Any:
    if text is None or text == "":
        return None
    typ = OUTCOME_COLUMNS.get(column)
    if typ == "str":
        return text
    if typ == "bool" or (typ is None and text in ("true", "false")):
        return text == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text
