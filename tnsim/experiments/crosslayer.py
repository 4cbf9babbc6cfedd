r"""Cross-layer: deep models where composed and per-layer comparisons disagree, and who is right.

Part 1 — constructed pairs of 2- and 3-layer models, built to separate the metrics:

* *same function, work moved between layers* (a rotation of the residual stream; an invertible
  gauge between layers; two residual blocks whose jobs are swapped);
* *same per-layer statistics, different composed function*: layer 1 writes a bond of width
  :math:`2m` of which layer 2 reads only the first :math:`m` coordinates. Model ``a`` writes
  :math:`[D_0; D_0]`, ``b`` writes :math:`[D_0; G]` and ``c`` writes :math:`[G; D_0]`. Swapping
  the two halves of the bond maps the pair (a, b) onto (a, c), so every per-layer similarity and
  matrix cosine of the two pairs are equal; but b computes a's function and c does not.

Every pair is compared by the per-layer tensor similarity (``tnsim.similarity`` of each layer
on its own, averaged), matrix cosine, and the composed tensor and Gaussian similarities with
``method="exact"`` and ``method="recursive"``. The ground truth is Monte Carlo: the Gaussian
cosine on samples of :math:`x\sim\mathcal N(0, I)` and the tensor cosine as a complex-Gaussian
expectation of the homogenised polynomials (:func:`~tnsim.experiments.deep.tensor_mc`), each
with a delta-method standard error; errors of exact and recursive are reported in standard
errors.

Part 2 — training dynamics: stacks of 2 and 3 bilinear layers trained on the digits from
several seeds; checkpoint × checkpoint matrices over all seeds' checkpoints for the composed
and the per-layer measures; the reason they disagree across seeds is tested by a least-squares
gauge that aligns the bond between the layers (it leaves the function, hence every composed
similarity, unchanged).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch

from .. import compare, similarity_matrix
from .. import data as D
from ..baselines import matrix_cosine, matrix_cosine_matrix
from ..plan import quiet
from . import common as C
from . import deep

NAME = "crosslayer"
#: what a saved trajectory depends on besides the mode settings (part of its cache key)
IDENTITY = {"experiment": NAME, "model": "pure bilinear stack 64 -> stream -> ... -> 10"}
Z_OK = 3.0  #: an estimate "agrees" with Monte Carlo within this many standard errors
#: :func:`unread_directions`: G = D_0 + PERTURBATION * std(D_0) * noise
PERTURBATION = 0.5

MODES = {
    "quick": dict(
        seeds=[0, 1],
        pair_depths=[2],
        residual_depths=[2],
        d_in=5,
        stream=6,
        hidden=6,
        d_out=3,
        mc_samples=100_000,
        exact_gaussian_residual=False,
        train_models=[[2, 8, 16]],
        steps=300,
        every=100,
        batch=128,
        lr=5e-3,
        weight_decay=0.05,
        train_mc_samples=50_000,
    ),
    "full": dict(
        seeds=[0, 1, 2, 3, 4],
        pair_depths=[2, 3],
        residual_depths=[2],
        d_in=6,
        stream=8,
        hidden=8,
        d_out=4,
        mc_samples=1_000_000,
        exact_gaussian_residual=True,
        train_models=[[2, 16, 32], [3, 8, 8]],
        steps=2000,
        every=200,
        batch=128,
        lr=3e-3,
        weight_decay=0.05,
        train_mc_samples=200_000,
    ),
}


# --- part 1: constructed pairs ---------------------------------------------------------------


@dataclass
class Pair:
    """Two models built to separate the metrics, and what they are."""

    name: str
    kind: str  # "same function" or "same per-layer statistics"
    depth: int
    a: torch.nn.Module
    b: torch.nn.Module
    same_function: bool
    exact_gaussian: bool = True  # False where the exact Gaussian is too slow for the mode
    note: str = ""
    extra: dict = field(default_factory=dict)


def _pure(cfg, depth: int, g: torch.Generator) -> torch.nn.Sequential:
    dims = [cfg["d_in"], *[cfg["stream"]] * (depth - 1), cfg["d_out"]]
    return deep.randomise(deep.pure_stack(dims, cfg["hidden"]).double(), g)


def _residual(cfg, depth: int, g: torch.Generator) -> torch.nn.Sequential:
    """A random residual stack whose stream (width ``d_in + stream``) has room for the input
    and for ``stream`` more coordinates (the shape :func:`work_moved` needs)."""
    width = cfg["d_in"] + cfg["stream"]
    a = deep.residual_stack(cfg["d_in"], width, cfg["hidden"], cfg["d_out"], depth)
    return deep.randomise(a.double(), g)


def stream_rotation(cfg, depth: int, g: torch.Generator) -> Pair:
    r"""A residual stack and the same stack with its residual stream rotated by a random
    orthogonal :math:`Q` (embedding :math:`QE`, blocks conjugated, head :math:`UQ^\top`)."""
    a = _residual(cfg, depth, g)
    b = deep.change_basis(a, deep.random_orthogonal(a[0].out_features, g), 0, len(a) - 1)
    return Pair(
        f"residual stream rotated ({depth} blocks)",
        "same function",
        depth,
        a,
        b,
        True,
        exact_gaussian=cfg["exact_gaussian_residual"],
        note="every layer's weights change; the function does not",
    )


def gauge(cfg, depth: int, g: torch.Generator) -> Pair:
    r"""A pure stack and the same stack with an invertible, ill-conditioned :math:`M_l`
    (condition number about :math:`e^2`, determinant of random sign) on every bond."""
    a = _pure(cfg, depth, g)
    b = a
    for bond in range(depth - 1):
        b = deep.change_basis(b, -deep.random_invertible(cfg["stream"], g, 0.5), bond, bond + 1)
    return Pair(
        f"gauge between layers ({depth} layers)",
        "same function",
        depth,
        a,
        b,
        True,
        note="layer l writes M_l y, layer l+1 reads it through M_l^-1",
    )


def work_moved(cfg, depth: int, g: torch.Generator) -> Pair:
    r"""Residual blocks that read only the input part of the stream and write only its other
    part act in parallel: :math:`y = x + \sum_l g_l(x)`. ``b`` is ``a`` with the blocks' jobs
    moved one layer on (block :math:`l` of ``b`` is block :math:`l+1` of ``a``, cyclically)."""
    d_in = cfg["d_in"]
    a = _residual(cfg, depth, g)
    width = a[0].out_features
    with torch.no_grad():
        a[0].weight.copy_(torch.eye(width, d_in, dtype=torch.float64))  # x -> (x, 0)
        for blk in list(a)[1:-1]:
            blk.left.weight[:, d_in:] = 0  # read only the input part ...
            blk.right.weight[:, d_in:] = 0
            blk.down.weight[:d_in] = 0  # ... write only the other part
    b = _shift_blocks(a)
    return Pair(
        f"blocks' jobs swapped ({depth} blocks)",
        "same function",
        depth,
        a,
        b,
        True,
        exact_gaussian=cfg["exact_gaussian_residual"],
        note="block l of b is block l+1 of a: same sum of parallel blocks",
    )


def _shift_blocks(a: torch.nn.Sequential) -> torch.nn.Sequential:
    b = copy.deepcopy(a)
    blocks_a, blocks_b = list(a)[1:-1], list(b)[1:-1]
    for i, blk in enumerate(blocks_b):
        blk.load_state_dict(blocks_a[(i + 1) % len(blocks_a)].state_dict())
    return b


def unread_directions(cfg, depth: int, g: torch.Generator) -> tuple[Pair, Pair]:
    r"""Three pure stacks whose layer 1 writes :math:`[D_0; D_0]` (a), :math:`[D_0; G]` (b),
    :math:`[G; D_0]` (c) to a bond of width :math:`2m`, of which layer 2 reads only the first
    :math:`m` coordinates; :math:`G` is :math:`D_0` plus Gaussian noise (:data:`PERTURBATION`).
    The pairs (a, b) and (a, c) have equal per-layer statistics; (a, b) compute the same
    function, (a, c) do not."""
    m = cfg["stream"] // 2
    a = _pure(cfg, depth, g)
    layer1, layer2 = a[0], a[1]
    with torch.no_grad():
        layer2.left.weight[:, m:] = 0
        layer2.right.weight[:, m:] = 0
        d0 = layer1.down.weight[:m].clone()
        other = d0 + PERTURBATION * torch.randn(d0.shape, generator=g, dtype=d0.dtype) * d0.std()
        layer1.down.weight[m:] = d0
    b, c = _with_down(a, torch.cat([d0, other])), _with_down(a, torch.cat([other, d0]))
    note = "layer 2 reads half of layer 1's output; b and c differ from a in opposite halves"
    return (
        Pair(
            f"perturbed where unread ({depth} layers)",
            "same per-layer statistics",
            depth,
            a,
            b,
            True,
            note=note,
        ),
        Pair(
            f"perturbed where read ({depth} layers)",
            "same per-layer statistics",
            depth,
            a,
            c,
            False,
            note=note,
        ),
    )


def _with_down(a: torch.nn.Sequential, down: torch.Tensor) -> torch.nn.Sequential:
    b = copy.deepcopy(a)
    with torch.no_grad():
        b[0].down.weight.copy_(down)
    return b


def pairs(cfg) -> list[Pair]:
    """Every constructed pair of the mode, deterministically. Residual stacks only at
    ``residual_depths``: at 3 blocks one exact tensor similarity took over 6 minutes here."""
    g = torch.Generator().manual_seed(0)
    out = []
    for depth in cfg["pair_depths"]:
        if depth in cfg["residual_depths"]:
            out += [stream_rotation(cfg, depth, g), work_moved(cfg, depth, g)]
        out += [gauge(cfg, depth, g), *unread_directions(cfg, depth, g)]
    return out


def _agrees(value: float, est) -> bool | None:
    """Whether ``value`` is within :data:`Z_OK` standard errors of the Monte Carlo estimate
    (to 1e-6 where the estimate is exact because the two models' outputs are identical)."""
    if math.isnan(value):  # not computed
        return None
    z = deep.standard_errors(value, est)
    return abs(value - est.value) < 1e-6 if math.isnan(z) else abs(z) <= Z_OK


def compare_pair(p: Pair, cfg, seed: int = 0) -> dict:
    """Every metric of one pair, the Monte Carlo ground truths and the errors against them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2000, cfg["d_in"], generator=g, dtype=torch.float64)
    layers = deep.per_layer(p.a, p.b)
    row = {
        "pair": p.name,
        "kind": p.kind,
        "depth": p.depth,
        "same function": p.same_function,
        "max output difference": deep.max_output_difference(p.a, p.b, x),
        "per-layer tensor (mean)": sum(layers) / len(layers),
        "per-layer tensor": layers,
        "matrix cosine": matrix_cosine(p.a, p.b),
    }
    for measure, mc in (("tensor", deep.tensor_mc), ("gaussian", deep.gaussian_mc)):
        est = mc(p.a, p.b, n=cfg["mc_samples"], seed=seed)
        row[f"{measure} MC"], row[f"{measure} MC stderr"] = est.value, est.stderr
        for method in ("exact", "recursive"):
            skip = measure == "gaussian" and method == "exact" and not p.exact_gaussian
            value = (
                float("nan") if skip else compare(p.a, p.b, measure=measure, method=method).value
            )
            row[f"{measure} {method}"] = value
            row[f"{measure} {method} z"] = deep.standard_errors(value, est)
            row[f"{measure} {method} agrees"] = _agrees(value, est)
    return row


# --- part 2: training dynamics ---------------------------------------------------------------


def train(
    seed: int, cfg, depth: int, stream: int, hidden: int, split: D.Split, progress: bool
) -> C.Trajectory:
    """A pure stack ``64 -> stream -> ... -> 10`` of ``depth`` bilinear layers (``hidden``
    units each) trained on the digits."""
    torch.manual_seed(seed)
    model = deep.pure_stack([64, *[stream] * (depth - 1), 10], hidden)

    def evaluate(m):
        return {
            "train_accuracy": C.accuracy(m, split.train),
            "test_accuracy": C.accuracy(m, split.test),
        }

    t = C.Trainer.from_config(model, cfg, seed, evaluate, progress)
    t.stage(
        "training", split.train, cfg["steps"], cfg["every"], desc=f"seed {seed}: {depth} layers"
    )
    return t.traj


def training_metrics(depth: int) -> list[C.Metric]:
    """Composed measures (both methods) and the per-layer ones; the exact Gaussian only for two
    layers (606 contractions per inner product at three)."""
    out = [
        C.Metric("composed tensor (exact)", "tensor", {"method": "exact"}),
        C.Metric("composed tensor (recursive)", "tensor", {"method": "recursive"}),
    ]
    if depth <= 2:
        out.append(C.Metric("composed Gaussian (exact)", "gaussian", {"method": "exact"}))
    out.append(C.Metric("composed Gaussian (recursive)", "gaussian", {"method": "recursive"}))
    return out


def per_layer_matrix(models, progress: bool) -> torch.Tensor:
    """Mean over layers of the per-layer tensor similarity matrices."""
    n_layers = len(models[0])
    mats = [
        similarity_matrix([m[i] for m in models], measure="tensor", progress=progress)
        for i in range(n_layers)
    ]
    return torch.stack(mats).to(torch.float64).mean(0).cpu()


def align(model: torch.nn.Sequential, ref: torch.nn.Sequential, x: torch.Tensor):
    r"""``model`` with a gauge on every bond that maps its activations onto ``ref``'s in the
    least-squares sense on the inputs ``x``: bond :math:`l` gets
    :math:`M = \arg\min_M \|M Y^{model}_l - Y^{ref}_l\|_F` (the function is unchanged)."""
    out = model
    for bond in range(len(model) - 1):
        with torch.no_grad():
            y = out[: bond + 1](x).double()
            y_ref = ref[: bond + 1](x).double()
        m = torch.linalg.lstsq(y, y_ref).solution.T
        out = deep.change_basis(out, m, bond, bond + 1)
    return out


def alignment(finals: list, x: torch.Tensor) -> dict:
    """Per-layer and composed similarity of every final model to seed 0's, before and after
    aligning its bonds to seed 0's (:func:`align`)."""
    ref = finals[0]
    rows = []
    for i, m in enumerate(finals[1:], 1):
        al = align(m.double(), ref.double(), x.double())
        before, after = deep.per_layer(ref, m), deep.per_layer(ref.double(), al)
        rows.append(
            {
                "seed pair": f"0 vs {i}",
                "per-layer before": sum(before) / len(before),
                "per-layer after alignment": sum(after) / len(after),
                "composed before": compare(ref, m, measure="tensor", method="exact").value,
                "composed after alignment": compare(
                    ref.double(), al, measure="tensor", method="exact"
                ).value,
                "output difference after alignment": deep.max_output_difference(
                    m.double(), al, x.double()
                ),
            }
        )
    return {"rows": rows, **{k: _mean(rows, k) for k in rows[0] if k != "seed pair"}}


def _mean(rows, key) -> float:
    return sum(r[key] for r in rows) / len(rows)


def block_summary(m: torch.Tensor, phases) -> dict:
    """Mean similarity within seeds, across seeds, and between the seeds' final checkpoints."""
    blocks = [list(range(s, e)) for _, s, e in phases]
    within = [C.block_mean(m, b, b) for b in blocks]
    across = [C.block_mean(m, a, b) for i, a in enumerate(blocks) for b in blocks[i + 1 :]]
    finals = [m[a[-1], b[-1]].item() for i, a in enumerate(blocks) for b in blocks[i + 1 :]]
    return {
        "within seeds": sum(within) / len(within),
        "across seeds": sum(across) / len(across) if across else float("nan"),
        "final vs final, across seeds": sum(finals) / len(finals) if finals else float("nan"),
    }


def mc_checks(trajs: dict, cfg, depth: int) -> list[dict]:
    """Exact and recursive against Monte Carlo on two training pairs per depth: seed 0's first
    vs last checkpoint, and the last checkpoints of the first two seeds."""
    seeds = list(trajs)
    picks = [
        (
            f"first vs last (seed {seeds[0]})",
            trajs[seeds[0]].models[0],
            trajs[seeds[0]].models[-1],
        )
    ]
    if len(seeds) > 1:
        picks.append(
            (
                f"final, seed {seeds[0]} vs {seeds[1]}",
                trajs[seeds[0]].models[-1],
                trajs[seeds[1]].models[-1],
            )
        )
    rows = []
    for label, a, b in picks:
        a, b = copy.deepcopy(a).double(), copy.deepcopy(b).double()
        row = {"depth": depth, "pair": label}
        for measure, mc in (("tensor", deep.tensor_mc), ("gaussian", deep.gaussian_mc)):
            est = mc(a, b, n=cfg["train_mc_samples"])
            row[f"{measure} MC"], row[f"{measure} MC stderr"] = est.value, est.stderr
            methods = (
                ("exact", "recursive") if measure == "tensor" or depth <= 2 else ("recursive",)
            )
            for method in methods:
                value = compare(a, b, measure=measure, method=method).value
                row[f"{measure} {method}"] = value
                row[f"{measure} {method} z"] = deep.standard_errors(value, est)
        rows.append(row)
    return rows


# --- the run ---------------------------------------------------------------------------------


def run(
    out,
    mode: str = "full",
    progress: bool = True,
    log=print,
    threads: int | None = 1,
    command: str | None = None,
    seeds=None,
) -> dict:
    cfg, res = C.start(out, NAME, MODES, mode, command, seeds)
    split = D.digits()
    with C.threads(threads), quiet():
        rows = []
        for p in C.bar(pairs(cfg), desc="constructed pairs", enabled=progress, unit="pair"):
            rows.append(compare_pair(p, cfg))
            log(f"  {p.name}: done at {time.perf_counter() - res.started:.0f} s")
        training = {
            d: training_part(res, cfg, (d, w, h), split, progress, log)
            for d, w, h in cfg["train_models"]
        }
    summary = {"pairs": rows, "training": {d: t["summary"] for d, t in training.items()}}
    res.results.update(summary=summary)
    res.results["records"] = {
        f"depth{d}": {str(s): tr.records for s, tr in t["trajs"].items()}
        for d, t in training.items()
    }
    res.matrices = {f"depth {d}: {k}": v for d, t in training.items() for k, v in t["mats"].items()}
    res.table("pairs.csv", rows)
    for d, t in training.items():
        res.table(f"training_depth{d}.csv", t["summary"]["metrics"])
    figures(res, rows, training, cfg)
    res.finish(report_md(rows, training, cfg))
    log(f"wrote {res.folder}/report.md")
    return {"summary": summary, "folder": str(res.folder)}


def training_part(res, cfg, shape: tuple, split: D.Split, progress: bool, log) -> dict:
    """Train every seed of the model ``shape = (depth, stream, hidden)``, compute the matrices
    over all seeds' checkpoints, and summarise where composed and per-layer measures disagree."""
    depth, stream, hidden = shape
    trajs = {
        s: C.trajectory(
            res,
            cfg,
            IDENTITY,
            s,
            lambda s: train(s, cfg, depth, stream, hidden, split, progress),
            log=log,
            folder=f"depth{depth}/seed{s}",
            depth=depth,
            stream=stream,
            hidden=hidden,
        )
        for s in cfg["seeds"]
    }
    models = [m for t in trajs.values() for m in t.models]
    n = len(next(iter(trajs.values())).models)
    phases = [(f"seed {s}", i * n, (i + 1) * n) for i, s in enumerate(trajs)]
    mats = C.matrices(training_metrics(depth), models, progress=progress, desc=f"depth {depth}")
    mats["per-layer tensor (mean over layers)"] = per_layer_matrix(models, progress)
    mats["matrix cosine"] = matrix_cosine_matrix(models).to(torch.float64)
    metrics = [{"metric": k, **block_summary(v, phases)} for k, v in mats.items()]
    finals = [t.models[-1] for t in trajs.values()]
    summary = {
        "metrics": metrics,
        "final_test_accuracy": [t.records[-1]["test_accuracy"] for t in trajs.values()],
        "alignment": alignment(finals, split.train.x) if len(finals) > 1 else None,
        "monte_carlo": mc_checks(trajs, cfg, depth),
        "within_seed_spearman_composed_vs_per_layer": _within_spearman(
            mats["composed tensor (exact)"], mats["per-layer tensor (mean over layers)"], phases
        ),
    }
    summary["model"] = (
        f"64 → {' → '.join([str(stream)] * (depth - 1))} → 10, {hidden} hidden units per layer"
    )
    return {"trajs": trajs, "mats": mats, "phases": phases, "summary": summary}


def _within_spearman(m1: torch.Tensor, m2: torch.Tensor, phases) -> float:
    """Rank correlation of two matrices over the within-seed off-diagonal pairs."""
    mask = torch.zeros_like(m1, dtype=torch.bool)
    for _, s, e in phases:
        mask[s:e, s:e] = True
    mask &= ~torch.eye(len(m1), dtype=torch.bool)
    return C.spearman(m1[mask], m2[mask])


# --- figures and report ----------------------------------------------------------------------

#: (column, label, marker) of the pairs figure, per panel
PANELS = {
    "tensor measure (and per-layer baselines)": [
        ("per-layer tensor (mean)", "per-layer tensor (mean)", "s"),
        ("matrix cosine", "matrix cosine", "D"),
        ("tensor recursive", "composed, recursive", "v"),
        ("tensor exact", "composed, exact", "o"),
        ("tensor MC", "Monte Carlo (±3 s.e.)", "x"),
    ],
    "Gaussian measure N(0, I)": [
        ("gaussian recursive", "composed, recursive (closure)", "v"),
        ("gaussian exact", "composed, exact", "o"),
        ("gaussian MC", "Monte Carlo (±3 s.e.)", "x"),
    ],
}


def pairs_figure(rows: list[dict]):
    from .. import plot

    fig = plot.figure(10.5, 0.42 * len(rows) + 1.6)
    axes = fig.subplots(1, 2, sharey=True)
    ys = list(range(len(rows)))[::-1]
    for ax, (title, series) in zip(axes, PANELS.items()):
        for k, (col, label, marker) in enumerate(series):
            off = (k - (len(series) - 1) / 2) * 0.12
            vals = [r[col] for r in rows]
            err = [3 * r[col + " stderr"] for r in rows] if col.endswith("MC") else None
            ax.errorbar(
                vals,
                [y + off for y in ys],
                xerr=err,
                fmt=marker,
                ms=5,
                label=label,
                capsize=2,
                lw=0.8,
                mfc="none" if marker != "x" else None,
            )
        ax.axvline(1, color="grey", lw=0.5, ls=":")
        ax.set_xlim(-1.05, 1.05)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("similarity of the pair", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6.5, loc="lower left")
    axes[0].set_yticks(
        ys,
        [f"{r['pair']}\n[{'same' if r['same function'] else 'different'} function]" for r in rows],
        fontsize=7,
    )
    fig.suptitle(
        "Constructed pairs of deep models: per-layer and composed similarities vs Monte Carlo",
        fontsize=10,
    )
    return fig


def figures(res, rows, training, cfg) -> None:

    res.figure(
        pairs_figure(rows),
        "pairs.png",
        "Each row is a pair of models built to separate the metrics (label: what was done, and "
        "whether the two compute the same function). Left: weight-based per-layer baselines and "
        "the composed tensor similarity; right: the composed Gaussian similarity. Crosses are "
        "Monte Carlo estimates of each measure (the ground truth) with ±3 standard errors.",
    )
    for d, t in training.items():
        res.figure(
            training_heatmaps(t, d, cfg),
            f"heatmaps_depth{d}.png",
            f"Checkpoint × checkpoint similarity of {d}-layer models, all seeds' checkpoints in "
            "order (each block is one seed's training run). Composed measures compare the whole "
            "function; per-layer tensor similarity and matrix cosine compare layer by layer. "
            "One colour scale for all panels (values below 0 get the lowest colour).",
        )


def training_heatmaps(t: dict, depth: int, cfg):
    """The training matrices of one depth, side by side on one colour scale ``[0, 1]`` (so
    that the across-seed blocks can be compared between panels)."""
    from .. import plot

    mats = t["mats"]
    ncols = 3
    nrows = -(-len(mats) // ncols)
    fig = plot.figure(3.3 * ncols + 0.6, 3.3 * nrows + 0.5)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (name, m) in zip(axes, mats.items()):
        plot.heatmap(ax, m, phases=t["phases"], title=name, vmin=0.0, vmax=1.0)
    for ax in axes[len(mats) :]:
        ax.set_visible(False)
    fig.suptitle(
        f"{depth}-layer bilinear stacks on digits: checkpoints of {len(t['trajs'])} seeds "
        f"(blocks), every {cfg['every']} steps",
        fontsize=10,
    )
    return fig


def _verdict(row, measure: str, method: str) -> str:
    ok = row.get(f"{measure} {method} agrees")
    if ok is None:
        return "not run"
    z = row[f"{measure} {method} z"]
    error = row[f"{measure} {method}"] - row[f"{measure} MC"]
    zs = f"error {error:+.1e}, outputs identical" if math.isnan(z) else f"{z:+.1f} s.e."
    return f"{'right' if ok else 'WRONG'} ({zs})"


def report_md(rows, training, cfg) -> str:
    table = [
        {
            "pair": r["pair"],
            "same function": r["same function"],
            "per-layer tensor": r["per-layer tensor (mean)"],
            "matrix cosine": r["matrix cosine"],
            "tensor exact": r["tensor exact"],
            "tensor recursive": r["tensor recursive"],
            "tensor MC": f"{r['tensor MC']:.4f} ± {r['tensor MC stderr']:.1e}",
            "Gaussian exact": r["gaussian exact"],
            "Gaussian recursive": r["gaussian recursive"],
            "Gaussian MC": f"{r['gaussian MC']:.4f} ± {r['gaussian MC stderr']:.1e}",
        }
        for r in rows
    ]
    verdicts = [
        {
            "pair": r["pair"],
            "tensor exact": _verdict(r, "tensor", "exact"),
            "tensor recursive": _verdict(r, "tensor", "recursive"),
            "Gaussian exact": _verdict(r, "gaussian", "exact"),
            "Gaussian recursive": _verdict(r, "gaussian", "recursive"),
        }
        for r in rows
    ]
    lines = [
        "## Constructed pairs",
        "",
        f"Monte Carlo: {cfg['mc_samples']} samples per pair (x ~ N(0, I) for the Gaussian measure; "
        "standard complex Gaussian on the padded coordinates for the tensor measure). "
        "Outputs of same-function pairs differ by at most "
        f"{max(r['max output difference'] for r in rows if r['same function']):.1e} (relative) on "
        "2000 random inputs.",
        "",
        C.markdown_table(table, digits=4),
        "",
        f"Who is right (within {Z_OK:g} standard errors of Monte Carlo; pairs with identical outputs: "
        "within 1e-6 of it):",
        "",
        C.markdown_table(verdicts),
    ]
    for d, t in training.items():
        s = t["summary"]
        al = s["alignment"]
        lines += [
            "",
            f"## Training: {d}-layer stacks",
            "",
            f"Model {s['model']}; {len(t['trajs'])} seeds, {cfg['steps']} steps, final test accuracy "
            + ", ".join(f"{a:.3f}" for a in s["final_test_accuracy"])
            + ". Mean similarity within a seed's run, across seeds, and between seeds' final "
            "checkpoints:",
            "",
            C.markdown_table(s["metrics"]),
            "",
            "Spearman correlation of composed (exact tensor) and mean per-layer tensor similarity over "
            f"within-seed pairs: {s['within_seed_spearman_composed_vs_per_layer']:.3f}.",
        ]
        if al:
            lines += [
                "",
                "Final checkpoints against seed 0's, before and after a least-squares gauge on every "
                "bond (the function is unchanged: largest relative output change "
                f"{max(r['output difference after alignment'] for r in al['rows']):.1e}): per-layer "
                f"tensor similarity {al['per-layer before']:.3f} → {al['per-layer after alignment']:.3f}, "
                f"composed {al['composed before']:.4f} → {al['composed after alignment']:.4f}.",
            ]
        lines += [
            "",
            "Exact and recursive against Monte Carlo on training pairs:",
            "",
            C.markdown_table(s["monte_carlo"], digits=4),
        ]
    return "\n".join(lines)
