"""Write docs/performance.md and its figures from the benchmark results.

    python benchmarks/report.py

Reads ``benchmarks/results/*.json`` (written by ``bench_matrix.py`` and ``bench_scaling.py``),
draws small PNGs into ``docs/`` (each figure's title names the command that produced its
numbers) and renders ``benchmarks/performance_template.md`` into ``docs/performance.md``,
filling in the tables and figures. Edit the template for prose.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"
TEMPLATE = ROOT / "benchmarks" / "performance_template.md"


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


def seconds(v) -> str:
    if v is None:
        return "—"
    return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s"


def table(rows, cols) -> str:
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for _, k in cols:
            v = r.get(k) if isinstance(k, str) else k(r)
            if isinstance(k, str) and k.endswith("_s"):
                cells.append(seconds(v))
            elif isinstance(v, float):
                cells.append(f"{v:.3g}")
            else:
                cells.append("—" if v is None else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pair_cols(x, label):
    cols = [(label, x)]
    for m in ("exact", "recursive"):
        for s in ("gaussian", "tensor"):
            cols.append((f"{m} {s}", f"{m}_{s}_s"))
    return cols


def bar_section(t1: dict, t2: dict | None) -> dict:
    rows = []
    for b in (t1, t2):
        if not b:
            continue
        rows.append({
            "threads": b["threads"],
            "matrix": seconds(b["matrix_hot_s"]["min"]),
            "closed": seconds(b["closed_form_s"]["min"]),
            "loop": seconds(b["per_pair_loop_s"]["min"]),
            "r_closed": f"{b['ratio_closed_over_matrix']:.1f}×",
            "r_loop": f"{b['ratio_loop_over_matrix']:.0f}×",
            "base": seconds(b.get("baseline_per_pair_loop_s")),
            "r_base": f"{b['ratio_baseline_loop_over_matrix']:.0f}×" if "ratio_baseline_loop_over_matrix" in b else "—",
            "rate": f"{100 * b['fraction_of_matmul_rate']:.0f} % of {b['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s",
        })
    tab = table(rows, [
        ("torch threads", "threads"), ("similarity_matrix (hot)", "matrix"), ("closed-form einsum", "closed"),
        ("per-pair loop (576)", "loop"), ("closed / matrix", "r_closed"), ("loop / matrix", "r_loop"),
        ("loop at 3d992f5", "base"), ("that / matrix", "r_base"), ("matrix GEMM rate", "rate"),
    ])
    tab += (
        f"\n\nDevice: {t1['device']}. Commands: `{t1['command']}`"
        + (f" and `{t2['command']}`" if t2 else "")
        + f". Block size {t1['block_size']} ({t1['blocks']} blocks); matrices agree with the closed form to "
        f"{t1['max_abs_diff_closed_form']:.1e} and with the per-pair loop to {t1['max_abs_diff_per_pair']:.1e} "
        f"(float32). Medians and every run are in `benchmarks/results/matrix_bar_*.json`; the two-thread medians "
        f"were {seconds(t2['matrix_hot_s']['median']) if t2 else '—'} (matrix) and "
        f"{seconds(t2['per_pair_loop_s']['median']) if t2 else '—'} (loop): other jobs held the cores."
    )
    return {
        "BAR_TABLE": tab,
        "BAR_CLOSED": f"{t1['ratio_closed_over_matrix']:.1f}× with one thread"
        + (f", {t2['ratio_closed_over_matrix']:.1f}× with two" if t2 else ""),
        "BAR_LOOP": f"{t1['ratio_loop_over_matrix']:.0f}×",
        "BAR_BASE": f"{t1['ratio_baseline_loop_over_matrix']:.0f}×" if "ratio_baseline_loop_over_matrix" in t1 else "(not measured)",
        "BAR_LOOP2": f"{t2['ratio_loop_over_matrix']:.0f}×" if t2 else "(not measured)",
        "BAR_RATE": f"{100 * t1['fraction_of_matmul_rate']:.0f} %",
        "BAR_PEAK": f"{t1['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s on one thread",
        "BAR_CLOSED_RATE": f"{100 * t1['closed_form_fraction_of_matmul_rate']:.0f} %",
        "BAR_PAIR_MS": f"{1e3 * t1['per_pair_loop_s']['min'] / t1['per_pair_calls']:.1f} ms",
        "BAR_EXEC": f"{t1['matrix_flops_executed'] / 1e9:.1f} GFLOP",
        "BAR_FLOOR": seconds(t1["matrix_flops_executed"] / t1["matmul_flops_per_s"]),
        "BAR_NEEDED": f"{seconds(t1['per_pair_loop_s']['min'] / 100)} "
        f"({t1['matrix_flops_executed'] / (t1['per_pair_loop_s']['min'] / 100) / 1e9:.0f} GFLOP/s)",
        "BAR_SHARING": f"the executed flops from {t1['matrix_flops_planned'] / 1e9:.1f} to "
        f"{t1['matrix_flops_executed'] / 1e9:.1f} GFLOP",
        "BAR_SPEEDUP": (f"{t1['baseline_per_pair_loop_s'] / t1['per_pair_loop_s']['min']:.0f}× "
                        f"({seconds(t1['baseline_per_pair_loop_s'])} → {seconds(t1['per_pair_loop_s']['min'])} "
                        "for the 576 calls)") if "baseline_per_pair_loop_s" in t1 else "much",
        "COLD_WARM": f"cold {seconds(t1['matrix_cold_s'])} (empty cache: path search included), "
        f"disk-warm {seconds(t1['matrix_disk_warm_s'])} (new process state, paths read from disk), "
        f"hot {seconds(t1['matrix_hot_s']['min'])} (repeated call)",
    }


def cost_example() -> str:
    import torch
    from common import bar_models

    import tnsim

    torch.set_grad_enabled(False)
    ms = bar_models(24)
    pair = tnsim.cost(ms[0], ms[1], measure="gaussian", method="exact")
    mat = tnsim.cost(ms, measure="gaussian", method="exact")
    optimizer = mat.optimizer.replace(str(Path.home()), "~")
    return (
        # printed output, not a doctest (the bar models are too big for the test suite)
        "```text\ntnsim.cost(a, b, measure=\"gaussian\", method=\"exact\")   # two bar models\n"
        f"  -> {pair!r}\nc = tnsim.cost(models, measure=\"gaussian\", method=\"exact\")  # the 24 x 24 matrix\n"
        f"  -> {mat!r}\nc.optimizer\n  -> {optimizer!r}\n```"
    )


def main():
    DOCS.mkdir(exist_ok=True)
    fill: dict = {}
    t1, t2 = load("matrix_bar_cpu-t1"), load("matrix_bar_cpu-t2")
    if t1:
        fill.update(bar_section(t1, t2))
    depth = load("exact_depth")
    if depth:
        fill["EXACT_DEPTH_TABLE"] = table(depth["rows"], [
            ("depth", "depth"), ("biases", "biases"), ("measure", "measure"),
            ("contractions / inner", "contractions"), ("cold pair", "cold_s"), ("warm pair", "warm_s"),
            ("timed on", lambda r: f"{r['sampled']} orbits, scaled" if r.get("sampled") else "every orbit"),
        ]) + f"\n\n(`{depth['command']}`; {depth['machine']}.)"
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
        fill["INPUT_TABLE"] = table(data["input_width"], pair_cols("d_in", "input width") + [("dense (tensor)", "dense_tensor_s")])
        fill["HIDDEN_TABLE"] = table(data["hidden_width"], pair_cols("hidden", "hidden units"))
        fill["DEPTH_TABLE"] = table(
            data["depth"],
            pair_cols("depth", "layers") + [("dense (tensor)", "dense_tensor_s"),
                                            ("exact Gaussian contractions", "exact_gaussian_contractions")],
        )
        fill["SEQ_TABLE"] = table(data["sequence_length"], pair_cols("length", "positions"))
        if "block_size" in data:
            fill["BLOCK_TABLE"] = table(
                [dict(r, mib=f"{r['largest_intermediate_bytes'] / 2**20:.1f}", gflop=f"{2 * r['flops'] / 1e9:.1f}")
                 for r in data["block_size"]],
                [("block size", "block_size"), ("blocks", "blocks"), ("planned GFLOP", "gflop"),
                 ("largest intermediate (MiB)", "mib"), ("time", "exact_s")],
            ) + f"\n\n(`{data['command']}`; the default picks 8 here; sizes 4 to 8 are within this machine's noise.)"
        sc = data["sequence_check"]
        fill["SEQ_CHECK"] = f"exact {sc['exact']:.4f}, Monte Carlo with 4·10⁵ samples {sc['monte_carlo_4e5']:.4f}"
        fill["CHECKPOINT_TABLE"] = table(rows, [
            ("N", "checkpoints"), ("exact", "exact_s"), ("recursive", "recursive_s"),
            ("closed form", "closed_form_s"), ("blocks", "exact_blocks"), ("block size", "block_size"),
        ])
        mc, mcm = data["monte_carlo"], data["monte_carlo_matrix"]
        widest = max((r for r in data["input_width"] if r.get("dense_tensor_s")), key=lambda r: r["d_in"])
        deep = [r for r in data["depth"] if r.get("dense_tensor_s")][-1]
        ratio_rows = [
            {"what": f"dense materialisation, one pair, d = {widest['d_in']} (tensor measure)",
             "other": seconds(widest["dense_tensor_s"]), "tnsim": seconds(widest["exact_tensor_s"]),
             "ratio": f"{widest['dense_tensor_s'] / widest['exact_tensor_s']:.0f}×"},
            {"what": f"dense materialisation, one pair, depth {deep['depth']} (degree {deep['degree']})",
             "other": seconds(deep["dense_tensor_s"]), "tnsim": seconds(deep["exact_tensor_s"]),
             "ratio": f"{deep['dense_tensor_s'] / deep['exact_tensor_s']:.1f}×"},
            {"what": f"Monte Carlo to SE 1e-3, one bar pair ({mc['samples']} samples; estimate "
                     f"{mc['estimate']:.4f} vs exact {mc['exact']:.4f})",
             "other": seconds(mc["seconds"]), "tnsim": seconds(mc["exact_s"]),
             "ratio": f"{mc['seconds'] / mc['exact_s']:.0f}×"},
            {"what": f"Monte Carlo to SE 1e-3, 24 × 24 bar matrix ({mcm['samples']} samples; max error "
                     f"{mcm['max_abs_error']:.1e})",
             "other": seconds(mcm["seconds"]), "tnsim": seconds(mcm["exact_s"]),
             "ratio": f"{mcm['seconds'] / mcm['exact_s']:.0f}×"},
        ]
        if t1:
            ratio_rows.append({
                "what": "share of the measured float32 GEMM rate (bar matrix, one thread)",
                "other": f"{t1['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s",
                "tnsim": f"{t1['matrix_flops_per_s'] / 1e9:.0f} GFLOP/s",
                "ratio": f"{100 * t1['fraction_of_matmul_rate']:.0f} %",
            })
        fill["RATIO_TABLE"] = table(ratio_rows, [("comparison", "what"), ("other", "other"),
                                                 ("tnsim exact", "tnsim"), ("ratio", "ratio")]) + (
            f"\n\nCommand: `{data['command']}` (device: {data['device']})."
        )
    fill["COST_EXAMPLE"] = cost_example()
    text = TEMPLATE.read_text()
    for key in sorted(fill, key=len, reverse=True):  # BAR_LOOP2 before BAR_LOOP
        text = text.replace(key, fill[key])
    out = DOCS / "performance.md"
    out.write_text(text)
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
