"""Write the figures of docs/performance.md from the benchmark results.

    python benchmarks/report.py

Reads ``benchmarks/results/*.json`` (written by ``bench_matrix.py`` and ``bench_scaling.py``)
and writes small PNGs to ``docs/``; each figure's title names the command that produced its
numbers. The tables of docs/performance.md are printed for pasting (the prose around them is
written by hand).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def figure(title: str, command: str, xlabel: str, ylabel: str = "seconds (best of warm runs)"):
    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=100)
    ax.set_title(f"{title}\n$ {command}", fontsize=8)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.tick_params(labelsize=7)
    ax.grid(True, which="both", alpha=0.25)
    return fig, ax


def series(ax, rows, x, key, label, style="-o"):
    pts = [(r[x], r[key]) for r in rows if r.get(key)]
    if pts:
        xs, ys = zip(*pts)
        ax.plot(xs, ys, style, label=label, markersize=3, linewidth=1)


def save(fig, ax, name):
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = DOCS / name
    fig.savefig(path)
    plt.close(fig)
    print(f"wrote {path.relative_to(ROOT)}")


def pair_figure(data, key, x, title, xlabel, name, dense=False):
    rows = data[key]
    fig, ax = figure(title, data["command"], xlabel)
    for method in ("exact", "recursive"):
        for measure in ("gaussian", "tensor"):
            series(ax, rows, x, f"{method}_{measure}_s", f"{method}, {measure}", "-o" if method == "exact" else "--s")
    if dense:
        series(ax, rows, x, "dense_tensor_s", "dense materialisation (tensor)", ":^")
    save(fig, ax, name)


def table(rows, cols, fmt):
    head = "| " + " | ".join(c for c, _ in cols) + " |"
    sep = "|" + "---|" * len(cols)
    lines = [head, sep]
    for r in rows:
        cells = []
        for _, k in cols:
            v = r.get(k)
            cells.append("—" if v is None else fmt(k, v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fmt(k, v):
    if isinstance(v, float):
        if k.endswith("_s"):
            return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s"
        return f"{v:.3g}"
    return str(v)


def main():
    DOCS.mkdir(exist_ok=True)
    data = load("scaling")
    if data:
        pair_figure(data, "input_width", "d_in", "pair similarity vs input width", "input width d_in", "perf_input_width.png", dense=True)
        pair_figure(data, "hidden_width", "hidden", "pair similarity vs hidden width", "hidden units", "perf_hidden_width.png")
        pair_figure(data, "depth", "depth", "pair similarity vs depth", "bilinear layers", "perf_depth.png", dense=True)
        pair_figure(data, "sequence_length", "length", "pair similarity vs sequence length", "positions", "perf_sequence.png")
        rows = data["checkpoints"]
        fig, ax = figure("similarity_matrix vs checkpoints (784-64-128-10 models)", data["command"], "checkpoints N")
        series(ax, rows, "checkpoints", "exact_s", "exact")
        series(ax, rows, "checkpoints", "recursive_s", "recursive", "--s")
        series(ax, rows, "checkpoints", "closed_form_s", "closed-form einsum (hand-written)", ":^")
        save(fig, ax, "perf_checkpoints.png")
        cols = lambda x: [(x, x)] + [(f"{m} {s}", f"{m}_{s}_s") for m in ("exact", "recursive") for s in ("gaussian", "tensor")]  # noqa: E731
        print(table(data["input_width"], cols("d_in") + [("dense", "dense_tensor_s")], fmt))
        print(table(data["hidden_width"], cols("hidden"), fmt))
        print(table(data["depth"], cols("depth") + [("dense", "dense_tensor_s")], fmt))
        print(table(data["sequence_length"], cols("length"), fmt))
        print(table(rows, [("N", "checkpoints"), ("exact", "exact_s"), ("recursive", "recursive_s"), ("closed form", "closed_form_s"), ("blocks", "exact_blocks"), ("block size", "block_size")], fmt))
        print(json.dumps({k: data[k] for k in ("monte_carlo", "monte_carlo_matrix", "sequence_check") if k in data}, indent=1))
    for name in sorted(RESULTS.glob("matrix_bar_*.json")):
        bar = json.loads(name.read_text())
        print(name.name, json.dumps({k: v for k, v in bar.items() if not isinstance(v, dict)}, indent=1))


if __name__ == "__main__":
    main()
