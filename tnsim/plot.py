"""Figures for similarity experiments (matplotlib, imported lazily; no pyplot global state).

* :func:`heatmap` / :func:`heatmaps` — checkpoint × checkpoint similarity matrices with phase
  boundaries and labels, several metrics side by side, each with its own colour bar;
* :func:`reference_lines` — similarity of every checkpoint to a reference checkpoint;
* :func:`slice_panels` — one heat-map per output class (class slices), one shared colour scale;
* :func:`curves` — accuracies (or anything) over checkpoints with the phases shaded;
* :func:`bars` — grouped bar chart (e.g. per-class contrasts for each metric);
* :func:`save` — write a small PNG.

Phases are ``(label, start, stop)`` ranges of checkpoint indices (``stop`` exclusive), in order.

Examples
--------
>>> import torch, tnsim
>>> m = torch.eye(4, dtype=torch.float64) * 0.5 + 0.5
>>> fig = tnsim.plot.heatmaps({"tensor": m, "output": m}, phases=[("clean", 0, 2), ("poisoned", 2, 4)],
...                           title="demo")
>>> type(fig).__name__
'Figure'
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

__all__ = [
    "heatmap",
    "heatmaps",
    "reference_lines",
    "slice_panels",
    "curves",
    "bars",
    "save",
    "figure",
]

Phase = tuple  # (label, start, stop)

CMAP = "viridis"
PHASE_COLOURS = ("#f2f2f2", "#dde8f5")


def figure(width: float, height: float):
    """A fresh ``matplotlib.figure.Figure`` (constrained layout, not registered with pyplot)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _np(m) -> np.ndarray:
    if hasattr(m, "detach"):
        m = m.detach().cpu().numpy()
    return np.asarray(m, dtype=float)


CLIP = 5.0  #: colour scales start at this percentile of the off-diagonal values


def _limits(m: np.ndarray) -> tuple[float, float]:
    off = (
        m[~np.eye(*m.shape, dtype=bool)]
        if m.shape[0] == m.shape[1] and m.shape[0] > 1
        else m.ravel()
    )
    off = off[np.isfinite(off)]
    if off.size == 0:
        return 0.0, 1.0
    # the lowest few percent (first, barely trained checkpoints) would squash everything else
    lo, hi = float(np.percentile(off, CLIP)), float(max(off.max(), np.nanmax(m)))
    if hi - lo < 1e-9:
        lo -= 0.5e-3
        hi += 0.5e-3
    return lo, hi


def _phase_axes(ax, phases, n: int, axis: str = "both", label_size: float = 7.0) -> None:
    """Boundary lines between phases and phase labels at their centres."""
    if not phases:
        return
    bounds = [p[1] - 0.5 for p in phases[1:]]
    centres = [(p[1] + p[2] - 1) / 2 for p in phases]
    labels = [p[0] for p in phases]
    rot = 0 if max(len(s) for s in labels) * len(labels) < 40 else 45
    for b in bounds:
        if axis in ("both", "x"):
            ax.axvline(b, color="white", lw=1.0)
            ax.axvline(b, color="black", lw=0.4, ls=":")
        if axis in ("both", "y"):
            ax.axhline(b, color="white", lw=1.0)
            ax.axhline(b, color="black", lw=0.4, ls=":")
    if axis in ("both", "x"):
        ax.set_xticks(
            centres, labels, rotation=rot, ha="right" if rot else "center", fontsize=label_size
        )
    if axis in ("both", "y"):
        ax.set_yticks(centres, labels, fontsize=label_size)
    ax.tick_params(length=0)


def heatmap(
    ax,
    matrix,
    *,
    phases: Sequence[Phase] | None = None,
    title: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = CMAP,
    colorbar: bool = True,
    cbar_label: str = "similarity",
):
    """Draw one checkpoint × checkpoint matrix on ``ax`` (rows and columns = checkpoints).

    The colour scale spans the off-diagonal values from their 5th percentile (lower values, e.g.
    of the first, barely trained checkpoint, get the lowest colour and the colour bar an arrow)
    unless ``vmin``/``vmax`` are given; the diagonal is 1 for every cosine and is left out.
    """
    m = _np(matrix)
    lo, hi = _limits(m)
    lo, hi = (lo if vmin is None else vmin), (hi if vmax is None else vmax)
    im = ax.imshow(m, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest", aspect="equal")
    if title:
        ax.set_title(title, fontsize=9)
    if phases:
        _phase_axes(ax, phases, m.shape[0])
    else:
        ax.set_xlabel("checkpoint", fontsize=8)
        ax.set_ylabel("checkpoint", fontsize=8)
        ax.tick_params(labelsize=7)
    if colorbar:
        clipped = bool(np.nanmin(m) < lo)
        cb = ax.figure.colorbar(
            im, ax=ax, fraction=0.046, pad=0.03, extend="min" if clipped else "neither"
        )
        cb.ax.tick_params(labelsize=7)
        cb.set_label(cbar_label, fontsize=7)
    return im


def heatmaps(
    matrices: Mapping[str, object],
    *,
    phases: Sequence[Phase] | None = None,
    title: str | None = None,
    ncols: int | None = None,
    panel: float = 3.2,
    caption: str | None = None,
):
    """Several metrics' matrices side by side, one colour bar each (their scales differ)."""
    n = len(matrices)
    ncols = ncols or min(n, 4)
    nrows = -(-n // ncols)
    fig = figure(
        panel * ncols + 0.6, panel * nrows + (0.5 if title else 0.2) + (0.3 if caption else 0)
    )
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, (name, m) in zip(axes, matrices.items()):
        heatmap(ax, m, phases=phases, title=name)
    for ax in axes[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    if caption:
        fig.supxlabel(caption, fontsize=7)
    return fig


def _shade(ax, phases, xs: np.ndarray | None = None, log: bool = False) -> None:
    """Shade the phases (checkpoint ranges; at the positions ``xs`` of the checkpoints if given)."""
    for i, (label, start, stop) in enumerate(phases or ()):
        if xs is None:
            lo, hi = start - 0.5, stop - 0.5
        else:  # halfway to the neighbouring checkpoints (geometric mean on a log axis)
            mid = (lambda a, b: np.sqrt(a * b)) if log else (lambda a, b: (a + b) / 2)
            lo = xs[start] if start == 0 else mid(xs[start - 1], xs[start])
            hi = xs[stop - 1] if stop >= len(xs) else mid(xs[stop - 1], xs[stop])
        ax.axvspan(lo, hi, color=PHASE_COLOURS[i % 2], zorder=0)
        centre = np.sqrt(lo * hi) if log and lo > 0 else (lo + hi) / 2
        ax.text(
            centre,
            1.0,
            label,
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=7,
            rotation=0 if len(phases) < 6 else 30,
        )


def curves(
    series: Mapping[str, object],
    *,
    phases: Sequence[Phase] | None = None,
    x=None,
    title: str | None = None,
    ylabel: str = "",
    xlabel: str = "checkpoint",
    ylim: tuple[float, float] | None = None,
    ax=None,
    width: float = 6.0,
    height: float = 3.0,
    logx: bool = False,
):
    """Line plot of several series over checkpoints (or over ``x``, e.g. training steps), phases
    shaded and labelled on top."""
    fig = None
    if ax is None:
        fig = figure(width, height)
        ax = fig.subplots()
    xs = None if x is None else _np(x)
    for name, ys in series.items():
        ys = _np(ys)
        ax.plot(np.arange(len(ys)) if xs is None else xs, ys, marker=".", ms=3, lw=1.2, label=name)
    if logx:
        ax.set_xscale("log")
    _shade(ax, phases, xs, logx)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="best")
    if title:
        ax.set_title(title, fontsize=9, pad=(24 if len(phases) >= 6 else 14) if phases else 6)
    return fig if fig is not None else ax.figure


def reference_lines(
    matrices: Mapping[str, object],
    reference: int,
    *,
    phases: Sequence[Phase] | None = None,
    title: str | None = None,
    width: float = 6.0,
    height: float = 3.0,
):
    """Similarity of every checkpoint to checkpoint ``reference``, one line per metric."""
    series = {name: _np(m)[reference] for name, m in matrices.items()}
    fig = curves(
        series,
        phases=phases,
        ylabel=f"similarity to checkpoint {reference}",
        title=title or f"similarity to checkpoint {reference}",
        width=width,
        height=height,
    )
    ax = fig.axes[0]
    ax.axvline(reference, color="black", lw=0.8, ls="--")
    return fig


def slice_panels(
    slices: Mapping[str, object],
    *,
    phases: Sequence[Phase] | None = None,
    title: str | None = None,
    highlight: str | None = None,
    ncols: int = 5,
    panel: float = 2.2,
    note: Mapping[str, str] | None = None,
):
    """Per-class slice matrices in a grid on one shared colour scale; ``highlight`` is framed.

    ``note`` maps a panel name to a short text shown under its title (e.g. its contrast).
    """
    n = len(slices)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig = figure(panel * ncols + 0.9, panel * nrows + 0.6)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    arrays = {k: _np(v) for k, v in slices.items()}
    lims = [_limits(m) for m in arrays.values()]
    lo, hi = min(v[0] for v in lims), max(v[1] for v in lims)
    im = None
    for ax, (name, m) in zip(axes, arrays.items()):
        label = name + (f"\n{note[name]}" if note and name in note else "")
        im = heatmap(ax, m, phases=None, title=label, vmin=lo, vmax=hi, colorbar=False)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("")
        ax.set_ylabel("")
        for b in [p[1] - 0.5 for p in (phases or ())[1:]]:
            ax.axvline(b, color="white", lw=0.6)
            ax.axhline(b, color="white", lw=0.6)
        if name == highlight:
            for side in ax.spines.values():
                side.set_edgecolor("red")
                side.set_linewidth(2.5)
            ax.set_title(label + "  ◀ flagged", fontsize=9, color="red")
    for ax in axes[n:]:
        ax.set_visible(False)
    if im is not None:
        clipped = any(float(np.nanmin(m)) < lo for m in arrays.values())
        cb = fig.colorbar(
            im, ax=list(axes[:n]), fraction=0.02, pad=0.02, extend="min" if clipped else "neither"
        )
        cb.ax.tick_params(labelsize=7)
        cb.set_label("similarity", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def bars(
    groups: Mapping[str, Mapping[str, float]],
    *,
    title: str | None = None,
    ylabel: str = "",
    highlight: str | None = None,
    width: float = 7.0,
    height: float = 3.0,
):
    """Grouped bars: ``groups[series][category] = value`` (e.g. metric -> class -> contrast)."""
    fig = figure(width, height)
    ax = fig.subplots()
    series = list(groups)
    cats = list(next(iter(groups.values())))
    w = 0.8 / max(1, len(series))
    for i, s in enumerate(series):
        vals = [groups[s][c] for c in cats]
        ax.bar(np.arange(len(cats)) + (i - (len(series) - 1) / 2) * w, vals, w, label=s)
    ax.set_xticks(np.arange(len(cats)), cats, fontsize=8)
    if highlight in cats:
        ax.get_xticklabels()[cats.index(highlight)].set_color("red")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def save(fig, path, dpi: int = 80) -> Path:
    """Write ``fig`` as a small PNG (modest dpi, 256-colour palette) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    try:  # palette PNGs are ~3x smaller; heat-maps use at most 256 colours of one colour map anyway
        from PIL import Image

        with Image.open(path) as im:
            small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        small.save(path, optimize=True)
    except ImportError:  # pragma: no cover - pillow ships with matplotlib
        pass
    return path
