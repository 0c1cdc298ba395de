"""Reading a sweep's rows: an outcome grouped by an axis (mean, min, max and the 95 %
confidence interval of the mean, Student's t), as a table (``--summary``) or a plot
(``--plot``: one line per behaviour or policy, the interval shaded).

Only completed runs count towards the statistics; the table also says how many runs of
each group did not complete.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migrate.sweep.results import METRICS

# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042)
SERIES_COLUMNS = ("behaviour", "policy")


class StatsError(ValueError):
    """An axis or metric that the results do not have (one line, exit 2)."""


def t95(df: int) -> float:
    """The 97.5th percentile of Student's t with ``df`` degrees of freedom (beyond the
    table, the Cornish-Fisher expansion around the normal's 1.96, good to 1e-3)."""
    if df <= len(_T95):
        return _T95[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


@dataclass(slots=True)
class Group:
    series: tuple[Any, ...]
    value: Any
    runs: int
    failed: int
    n: int
    mean: float | None
    lo: float | None            # 95 % interval of the mean
    hi: float | None
    min: float | None
    max: float | None


def _stats(xs: list[float]) -> tuple[float | None, ...]:
    n = len(xs)
    if n == 0:
        return None, None, None, None, None
    mean = sum(xs) / n
    if n == 1:
        return mean, mean, mean, mean, mean
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t95(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half, min(xs), max(xs)


def series_columns(rows: list[dict[str, Any]], axis: str) -> list[str]:
    """Behaviour and policy, where they vary and are not the axis itself: each of their
    combinations is its own line (one line per behaviour or policy)."""
    out = []
    for c in SERIES_COLUMNS:
        if c == axis or (c == "behaviour" and axis == "migration.xen_behaviour") or \
                (c == "policy" and axis == "migration.policy"):
            continue
        if len({r.get(c) for r in rows}) > 1:
            out.append(c)
    return out


def check(rows: list[dict[str, Any]], axis: str, metric: str, axes: list[str]) -> None:
    if metric not in METRICS:
        raise StatsError(f"--metric: expected one of {', '.join(METRICS)}, found {metric!r}")
    choices = list(axes) + [c for c in SERIES_COLUMNS if c not in axes]
    if axis not in choices:
        raise StatsError(f"expected an axis of this sweep ({', '.join(choices)}), found {axis!r}")


def group_by(rows: list[dict[str, Any]], axis: str, metric: str) -> list[Group]:
    """One ``Group`` per (series, axis value), in the rows' order of first appearance
    (the sweep's canonical order)."""
    series = series_columns(rows, axis)
    buckets: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        buckets.setdefault((tuple(r.get(c) for c in series), r.get(axis)), []).append(r)
    order = {s: i for i, s in enumerate(dict.fromkeys(k[0] for k in buckets))}
    out = []
    for (ser, value), rs in sorted(buckets.items(), key=lambda kv: order[kv[0][0]]):
        ok = [r for r in rs if r.get("outcome") == "completed" and r.get(metric) is not None]
        mean, lo, hi, mn, mx = _stats([float(r[metric]) for r in ok])
        out.append(Group(ser, value, len(rs), len(rs) - len(ok), len(ok), mean, lo, hi, mn, mx))
    return out


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000 or float(v).is_integer():
        return f"{v:,.0f}" if abs(v) >= 1000 or v == 0 else f"{v:,.1f}".rstrip("0").rstrip(".")
    return f"{v:.4g}"


def summary_table(rows: list[dict[str, Any]], axis: str, metric: str, *, title: str = ""):
    from rich.table import Table

    series = series_columns(rows, axis)
    t = Table(title=title or f"{metric} by {axis}")
    for c in series:
        t.add_column(c)
    t.add_column(axis, justify="right")
    for name in ("runs", "not completed", "mean", "95% interval", "min", "max"):
        t.add_column(name, justify="right")
    for g in group_by(rows, axis, metric):
        interval = "-" if g.lo is None else f"{_num(g.lo)} .. {_num(g.hi)}"
        t.add_row(*[str(s) for s in g.series], str(g.value), str(g.runs), str(g.failed),
                  _num(g.mean), interval, _num(g.min), _num(g.max))
    return t


def write_plot(path: Path, rows: list[dict[str, Any]], axis: str, metric: str, *, unit: str = "",
               title: str = "") -> None:
    """``metric`` against ``axis``: one line per series, the 95 % interval shaded."""
    from migrate.run.outputs import PlotError, load_matplotlib

    plt = load_matplotlib()[0]
    groups = group_by(rows, axis, metric)
    if not any(g.mean is not None for g in groups):
        raise PlotError(f"no completed run has a value for {metric}")
    series = series_columns(rows, axis)
    values = list(dict.fromkeys(g.value for g in groups))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    pos = {v: (float(v) if numeric else i) for i, v in enumerate(values)}
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for ser in dict.fromkeys(g.series for g in groups):
        gs = sorted((g for g in groups if g.series == ser and g.mean is not None), key=lambda g: pos[g.value])
        xs = [pos[g.value] for g in gs]
        label = " / ".join(str(s) for s in ser) or metric
        (line,) = ax.plot(xs, [g.mean for g in gs], marker="o", markersize=3, label=label)
        ax.fill_between(xs, [g.lo for g in gs], [g.hi for g in gs], color=line.get_color(), alpha=0.2, linewidth=0)
    if not numeric:
        ax.set_xticks(range(len(values)), [str(v) for v in values])
    ax.set_xlabel(f"{axis} ({unit})" if unit else axis)
    ax.set_ylabel(f"{metric} (mean, 95% interval shaded)")
    ax.set_title(title or f"{metric} by {axis}")
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend(title=" / ".join(series))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
