"""Figures: valid, small PNGs that carry their titles, colour bars and phase labels."""

import numpy as np
import pytest
import torch

from tnsim import plot

PHASES = [("clean", 0, 4), ("poisoned", 4, 8)]


def block_matrix(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.full((n, n), 0.6, dtype=torch.float64)
    m[:4, :4] = m[4:, 4:] = 0.9
    m = m + 0.02 * torch.rand(n, n, generator=g, dtype=torch.float64)
    m = (m + m.T) / 2
    m.fill_diagonal_(1.0)
    return m


def read_png(path):
    import matplotlib.image as mpimg

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    assert img.std() > 0.01, "blank image"
    assert len(data) < 200_000, f"{path.name} is {len(data)} bytes"
    return img


def texts(fig):
    out = [t.get_text() for t in fig.texts]
    if fig._suptitle is not None:
        out.append(fig._suptitle.get_text())
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        out += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
        out += [t.get_text() for t in ax.texts]
    return out


def test_heatmaps_side_by_side(tmp_path):
    mats = {
        "tensor": block_matrix(seed=0),
        "matrix cosine": block_matrix(seed=1),
        "output": block_matrix(seed=2),
    }
    fig = plot.heatmaps(mats, phases=PHASES, title="Backdoor")
    assert len(fig.axes) == 6  # one colour bar per panel
    words = texts(fig)
    for w in ("Backdoor", "tensor", "matrix cosine", "clean", "poisoned", "similarity"):
        assert w in words, w
    read_png(plot.save(fig, tmp_path / "h.png"))


def test_colour_scale_ignores_the_diagonal_and_the_lowest_outliers():
    m = block_matrix(40)
    m[0, 1] = m[1, 0] = -0.5  # an outlier pair
    fig = plot.figure(3, 3)
    im = plot.heatmap(fig.subplots(), m)
    lo, hi = im.get_clim()
    assert hi == pytest.approx(1.0) and lo > 0.5
    assert fig.axes[1].get_label() == "<colorbar>"


def test_slices_reference_curves_and_bars(tmp_path):
    slices = {f"class {k}": block_matrix(seed=k) for k in range(10)}
    fig = plot.slice_panels(
        slices, phases=PHASES, highlight="class 9", title="slices", note={"class 9": "Δ=0.3"}
    )
    assert any("flagged" in t for t in texts(fig)) and any("Δ=0.3" in t for t in texts(fig))
    read_png(plot.save(fig, tmp_path / "s.png"))
    fig = plot.reference_lines(
        {"tensor": block_matrix(), "output": block_matrix(seed=3)}, 3, phases=PHASES
    )
    assert "similarity to checkpoint 3" in texts(fig)
    read_png(plot.save(fig, tmp_path / "r.png"))
    steps = np.geomspace(10, 1000, 8).round()
    fig = plot.curves(
        {"train": np.linspace(0.5, 1, 8), "test": np.linspace(0, 1, 8)},
        x=steps,
        logx=True,
        phases=[("memorised", 0, 5), ("generalised", 5, 8)],
        title="grokking",
    )
    assert fig.axes[0].get_xscale() == "log" and "generalised" in texts(fig)
    read_png(plot.save(fig, tmp_path / "c.png"))
    fig = plot.bars(
        {"tensor": {str(k): k / 9 for k in range(10)}, "matrix": {str(k): 0.5 for k in range(10)}},
        highlight="9",
        title="contrasts",
    )
    read_png(plot.save(fig, tmp_path / "b.png"))


def test_importing_tnsim_does_not_import_matplotlib():
    import subprocess
    import sys

    code = "import sys, tnsim; print('matplotlib' in sys.modules, 'sklearn' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={
            **__import__("os").environ,
            "PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[1]),
        },
    )
    assert out.stdout.split() == ["False", "False"]
