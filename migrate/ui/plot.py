"""``--plot``: pages sent per pass for each run, and the GFN map over passes.

A consumer of the same event stream as the app and the progress lines: the per-pass numbers are the
report's ``rounds`` (``RoundStats``), the map rows are ``GfnMapRecorder`` snapshots
taken at each ``PassEnded``. matplotlib is an optional extra, imported only here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from migrate.ui.gfnmap import LEGEND, NSTATES, STATE_NAMES, UNPOPULATED

from migrate.run.outputs import MISSING, PlotError, load_matplotlib  # noqa: F401  (one home: sweeps plot too)


def _label(run: dict[str, Any], i: int) -> str:
    if run.get("label"):
        return str(run["label"])
    pol = run.get("policy")
    pname = pol.get("name") if isinstance(pol, dict) else pol
    bits = [str(b) for b in (run.get("behaviour"), pname) if b]
    return " / ".join(bits) or f"run {i + 1}"


def _get(r: Any, k: str) -> Any:
    return r.get(k, 0) if isinstance(r, dict) else getattr(r, k, 0)


#: Bars differing by more than this factor get a log axis (a sparse guest's pass 1 walks
#: billions of XTAB PFNs; a linear axis would draw every later pass at zero height).
LOG_SCALE_RATIO = 100


def pages_scale(runs: list[dict[str, Any]]) -> str:
    """``log`` when the tallest pass's bar is over LOG_SCALE_RATIO times the shortest
    non-empty one, else ``linear``."""
    heights = [float(_get(r, "pages_sent")) + float(_get(r, "xtab_sent"))
               for run in runs for r in (run.get("rounds") or [])]
    heights = [h for h in heights if h > 0]
    return "log" if heights and max(heights) > LOG_SCALE_RATIO * min(heights) else "linear"


def write_plot(path: str | Path, runs: list[dict[str, Any]]) -> Path:
    """Draw ``runs`` (report-shaped dicts; ``rounds`` and optionally ``gfn_map`` from
    ``GfnMapRecorder.as_list()``, optional ``label``) into a PNG (or any format
    matplotlib infers from the suffix). Returns the path written."""
    if not runs:
        raise PlotError("nothing to plot: no runs")
    plt, ListedColormap, BoundaryNorm = load_matplotlib()
    import numpy as np

    maps = [(i, r["gfn_map"]) for i, r in enumerate(runs)
            if isinstance(r.get("gfn_map"), dict) and r["gfn_map"].get("passes")]
    nrows = 1 + len(maps)
    fig = plt.figure(figsize=(11, 3.6 + 2.4 * len(maps)), layout="constrained")
    axes = fig.subplots(nrows, 1, squeeze=False,
                        gridspec_kw={"height_ratios": [1.4] + [1.0] * len(maps)})[:, 0]

    # -- pages sent per pass, grouped by pass, one bar per run, XTAB stacked on top
    ax = axes[0]
    npass = max((len(r.get("rounds") or []) for r in runs), default=0)
    width = 0.8 / max(len(runs), 1)
    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0", "C1", "C2"])
    xtab_rgb = next(e.rgb for e in LEGEND if e.name == "xtab")
    ticks = []
    for i, run in enumerate(runs):
        rounds = run.get("rounds") or []
        x = np.arange(len(rounds)) + (i - (len(runs) - 1) / 2) * width
        data = np.array([_get(r, "pages_sent") for r in rounds], dtype=float)
        xtab = np.array([_get(r, "xtab_sent") for r in rounds], dtype=float)
        colour = cycle[i % len(cycle)]
        ax.bar(x, data, width, color=colour, label=f"{_label(run, i)}: data pages")
        ax.bar(x, xtab, width, bottom=data, color=xtab_rgb, edgecolor=colour, hatch="//",
               linewidth=0.5, label=f"{_label(run, i)}: XTAB" if xtab.any() else None)
        if len(rounds) == npass and not ticks:
            ticks = [f"{_get(r, 'iteration')}\n{_get(r, 'phase')}" for r in rounds]
    ax.set_xticks(np.arange(npass), ticks or [str(k + 1) for k in range(npass)])
    ax.set_xlabel("pass")
    scale = pages_scale(runs)
    ax.set_yscale(scale)
    ax.set_ylabel("pages (log scale)" if scale == "log" else "pages")
    ax.set_title("pages sent per pass (XTAB hatched on top)")
    if npass:
        ax.legend(fontsize="small", ncols=2)

    # -- the GFN map over passes: rows = passes, columns = cells
    by_state = {e.state: e for e in LEGEND}
    cmap = ListedColormap([by_state[s].rgb for s in range(NSTATES)])
    norm = BoundaryNorm(np.arange(-0.5, NSTATES + 0.5), NSTATES)
    for ax, (i, gm) in zip(axes[1:], maps):
        passes = gm["passes"]
        img = np.array([p["cells"] for p in passes], dtype=np.int16)
        ax.imshow(img, aspect="auto", interpolation="nearest", cmap=cmap, norm=norm)
        ax.set_yticks(range(len(passes)), [f"{p['iteration']} {p['phase']}" for p in passes])
        ax.set_ylabel("pass")
        cell = int(gm.get("cell_pfns", 1))
        ncells = img.shape[1]
        step = max(ncells // 8, 1)
        xt = np.arange(0, ncells + 1, step)
        ax.set_xticks(xt - 0.5, [f"{int(c) * cell:#x}" for c in xt], fontsize="small")
        ax.set_xlabel(f"GFN ({cell} PFNs per cell, states in proportion to their PFNs)")
        ax.set_title(f"GFN map at each pass end: {_label(runs[i], i)}")
    if maps:
        from matplotlib.patches import Patch
        handles = [Patch(color=by_state[s].rgb, label="hole" if s == UNPOPULATED else STATE_NAMES[s])
                   for s in reversed(range(NSTATES))]
        axes[-1].legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.25),
                        ncols=NSTATES, fontsize="small", frameon=False)

    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


__all__ = ["PlotError", "write_plot", "pages_scale", "MISSING"]
