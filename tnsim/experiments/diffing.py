r"""Diffing: is what a fine-tune added to a model the same when the same class is added twice?

A one-layer bilinear digit classifier ``tnsim.nn.Bilinear(64, h, 10)`` (no biases) is trained
on every class but a few held-out ones (the *base*). From the base, fine-tunes each add one
held-out class :math:`k` (training on the base classes plus :math:`k`), twice per class, the
two runs differing only in the order of their batches. The object of study is the **difference
network** :math:`\delta = f_{\text{fine-tuned}} - f_{\text{base}}`, built exactly with
``tnsim.add(fine_tuned, base.scaled(-1))``: a tensor network of two terms, compared with the
same measures as any model.

Several bases (seeds) are trained, so a pair of differences is one of four kinds: the same class
added to the same base (two runs), different classes added to the same base, the same class
added to another base, different classes added to another base. Hidden units of two bases are
not aligned, so only a measure invariant to weight symmetries can compare differences across
bases.

Metrics on the differences: tensor similarity, the Gaussian similarity under N(0, I) and under
the data's mean and covariance (all exact, on the difference network), their class slices
(``outputs=[k]``), and as baselines the matrix cosine of the weight differences
(:math:`\Delta L, \Delta R, \Delta D`, averaged over the three matrices) and the output cosine
of :math:`\delta(x)` on the test images.

Contrast (both Δ definitions, :func:`~tnsim.experiments.common.contrast`): the block P of
differences that added class :math:`k` against the block R of those that added another class,
averaged over :math:`k`; and 1-nearest-neighbour: the fraction of differences whose most similar other
difference added the same class.
"""

from __future__ import annotations

import copy
import itertools

import torch

from .. import add, compile
from .. import data as D
from ..errors import ShapeMismatchError
from ..nn import Bilinear
from . import common as C

NAME = "diffing"
#: what a saved trajectory depends on besides the mode settings (part of its cache key)
IDENTITY = {"experiment": NAME, "model": "Bilinear(64, h, 10)"}

MODES = {
    "quick": dict(
        seeds=[0, 1],
        hidden=16,
        added=[8, 9],
        runs=2,
        base_steps=400,
        finetune_steps=300,
        batch=64,
        lr=5e-3,
        weight_decay=0.05,
    ),
    "full": dict(
        seeds=[0, 1, 2, 3, 4],
        hidden=64,
        added=[7, 8, 9],
        runs=2,
        base_steps=3000,
        finetune_steps=1000,
        batch=128,
        lr=3e-3,
        weight_decay=0.05,
    ),
}

DATA_GAUSSIAN = "Gaussian N(μ,Σ) of the data"
KINDS = (
    "same class, same base",
    "different class, same base",
    "same class, other base",
    "different class, other base",
)


class Difference(torch.nn.Module):
    """``x -> a(x) - b(x)`` as a PyTorch module (what the behavioural baselines evaluate)."""

    def __init__(self, a: torch.nn.Module, b: torch.nn.Module):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) - self.b(x)


def difference(a, b):
    """The difference network :math:`f_a - f_b` (``tnsim.add(a, -1 · b)``), exact.

    Raises
    ------
    ShapeMismatchError
        If ``a`` and ``b`` do not have the same input and output shapes.
    """
    na, nb = compile(a), compile(b)
    if (na.in_shape, na.out_shape) != (nb.in_shape, nb.out_shape):
        raise ShapeMismatchError(
            f"difference: a maps {na.in_shape} -> {na.out_shape} but b maps "
            f"{nb.in_shape} -> {nb.out_shape}"
        )
    return add(na, nb.scaled(-1.0), name="difference")


def weight_difference(a: torch.nn.Module, b: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``a`` whose parameters are ``a``'s minus ``b``'s (for the matrix cosine of the
    weight differences; its forward pass is *not* the difference of the functions).

    Raises
    ------
    ShapeMismatchError
        If the two modules' parameters differ in names or shapes.
    """
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    if {k: v.shape for k, v in pa.items()} != {k: v.shape for k, v in pb.items()}:
        raise ShapeMismatchError("weight_difference: a and b have different parameters")
    out = copy.deepcopy(a)
    with torch.no_grad():
        for name, p in out.named_parameters():
            p.sub_(pb[name])
    return out


def train(seed: int, cfg: dict, split: D.Split, progress: bool) -> C.Trajectory:
    """The base (phase ``base``), then one phase ``+k run r`` per fine-tune, each restarted from
    the base (weights and optimizer state) with its own batch order."""
    torch.manual_seed(seed)
    model = Bilinear(64, cfg["hidden"], 10)
    kept = [c for c in range(10) if c not in cfg["added"]]
    per_class = {k: split.test.classes([k]) for k in range(10)}

    def evaluate(m):
        rec = {f"acc_{k}": C.accuracy(m, d) for k, d in per_class.items()}
        rec["accuracy_base_classes"] = C.accuracy(m, split.test.classes(kept))
        return rec

    t = C.Trainer.from_config(model, cfg, seed, evaluate, progress)
    t.stage(
        "base",
        split.train.classes(kept),
        cfg["base_steps"],
        [cfg["base_steps"]],
        desc=f"seed {seed}: base",
    )
    start = t.snapshot()
    for k in cfg["added"]:
        for r in range(cfg["runs"]):
            t.restore(start)
            t.gen.manual_seed(10_000 * (seed + 1) + 100 * k + r)
            t.stage(
                f"+{k} run {r}",
                split.train.classes(kept + [k]),
                cfg["finetune_steps"],
                [cfg["finetune_steps"]],
                desc=f"seed {seed}: +{k} run {r}",
            )
    return t.traj


def differences(runs: dict, cfg: dict) -> list[dict]:
    """One entry per fine-tune of every base: its labels and the three forms of its difference."""
    out = []
    for seed, traj in runs.items():
        base = traj.models[traj.indices("base")[-1]]
        for k in cfg["added"]:
            for r in range(cfg["runs"]):
                ft = traj.models[traj.indices(f"+{k} run {r}")[-1]]
                out.append(
                    {
                        "seed": seed,
                        "added": k,
                        "run": r,
                        "network": difference(ft, base),
                        "weights": weight_difference(ft, base),
                        "module": Difference(ft, base),
                    }
                )
    return out


def metrics(test_x: torch.Tensor, train_x: torch.Tensor) -> list[tuple[C.Metric, str]]:
    """Each metric with the form of the difference it reads (``network``, ``weights``,
    ``module``)."""
    return [
        (C.Metric("tensor", "tensor"), "network"),
        (C.Metric("Gaussian N(0,I)", "gaussian"), "network"),
        (C.data_gaussian(DATA_GAUSSIAN, train_x), "network"),
        (C.Metric("matrix cosine of ΔW", "matrix"), "weights"),
        (C.Metric("output cosine of δ(x) (test)", "output", {"data": test_x}), "module"),
    ]


def pair_kinds(diffs: list[dict]) -> dict[str, list[tuple[int, int]]]:
    """Index pairs ``(i, j)``, ``i < j``, of the differences, by kind (see :data:`KINDS`)."""
    kinds = {k: [] for k in KINDS}
    for i, j in itertools.combinations(range(len(diffs)), 2):
        a, b = diffs[i], diffs[j]
        cls = "same class" if a["added"] == b["added"] else "different class"
        base = "same base" if a["seed"] == b["seed"] else "other base"
        kinds[f"{cls}, {base}"].append((i, j))
    return kinds


def kind_means(m: torch.Tensor, kinds: dict) -> dict[str, float]:
    """Mean of ``m[i, j]`` over the pairs of each kind of :func:`pair_kinds`."""
    return {
        k: float(torch.stack([m[i, j] for i, j in p]).mean()) if p else float("nan")
        for k, p in kinds.items()
    }


def sliced_kind_means(slices: dict[int, torch.Tensor], diffs: list[dict], kinds: dict) -> dict:
    """Like :func:`kind_means` on class slices: a pair is read in the slice of the class one of
    them added (the mean of the two slices when they added different classes)."""
    out = {}
    for kind, pairs in kinds.items():
        vals = [
            0.5 * (slices[diffs[i]["added"]][i, j] + slices[diffs[j]["added"]][i, j])
            for i, j in pairs
        ]
        out[kind] = float(torch.stack(vals).mean()) if vals else float("nan")
    return out


def class_contrast(m: torch.Tensor, diffs: list[dict], added: list[int]) -> dict[str, float]:
    """:func:`~tnsim.experiments.common.contrast` of the block P of differences that added class
    ``k`` against the block R of those that added any other class, averaged over ``k``."""
    cs = []
    for k in added:
        post = [i for i, d in enumerate(diffs) if d["added"] == k]
        ref = [i for i, d in enumerate(diffs) if d["added"] != k]
        cs.append(C.contrast(m, ref, post))
    return {key: C.mean_sd(c[key] for c in cs)[0] for key in ("delta", "delta_paper", "separation")}


def nearest_neighbour(m: torch.Tensor, diffs: list[dict]) -> float:
    """Fraction of differences whose most similar other difference added the same class."""
    s = m.clone()
    s.fill_diagonal_(-float("inf"))
    nn = s.argmax(1)
    return float(
        sum(diffs[i]["added"] == diffs[int(j)]["added"] for i, j in enumerate(nn)) / len(diffs)
    )


def analyse(diffs: list[dict], mets, cfg: dict, progress: bool) -> dict:
    """Every metric's difference × difference matrix and class slices, summarised by kind of
    pair, by contrast between the added classes and by nearest neighbours."""
    kinds = pair_kinds(diffs)
    out = {"matrices": {}, "slices": {}, "rows": [], "slice_rows": []}
    for metric, form in C.bar(mets, desc="difference matrices", enabled=progress, unit="metric"):
        models = [d[form] for d in diffs]
        m = metric.matrix(models)
        sl = {k: metric.matrix(models, outputs=[k]) for k in cfg["added"]}
        out["matrices"][metric.label], out["slices"][metric.label] = m, sl
        out["rows"].append(
            {
                "metric": metric.label,
                **kind_means(m, kinds),
                **class_contrast(m, diffs, cfg["added"]),
                "nearest_neighbour_same_class": nearest_neighbour(m, diffs),
            }
        )
        out["slice_rows"].append({"metric": metric.label, **sliced_kind_means(sl, diffs, kinds)})
    out["pairs"] = {k: len(v) for k, v in kinds.items()}
    return out


def run(
    out,
    mode: str = "full",
    progress: bool = True,
    log=print,
    threads: int | None = 1,
    command: str | None = None,
    seeds=None,
) -> dict:
    """Train the bases and fine-tunes, compare their differences, write figures and a report."""
    cfg, res = C.start(out, NAME, MODES, mode, command, seeds)
    split = D.digits(seed=0)
    mets = metrics(split.test.x, split.train.x)
    with C.threads(threads):
        trajs = {
            s: C.trajectory(
                res, cfg, IDENTITY, s, lambda s: train(s, cfg, split, progress), log=log
            )
            for s in cfg["seeds"]
        }
        diffs = differences(trajs, cfg)
        an = analyse(diffs, mets, cfg, progress)
    labels = [f"s{d['seed']} +{d['added']} r{d['run']}" for d in diffs]
    acc = accuracy_rows(trajs, cfg)
    res.results.update(
        summary=an["rows"],
        slices_summary=an["slice_rows"],
        pairs=an["pairs"],
        labels=labels,
        accuracy=acc,
        records={s: t.records for s, t in trajs.items()},
    )
    res.matrices = C.all_matrices(an)
    res.table("summary.csv", an["rows"])
    res.table("slices.csv", an["slice_rows"])
    res.table("accuracy.csv", acc)
    figures(res, an, diffs, cfg)
    res.finish(report_md(an, acc, cfg))
    log(f"wrote {res.folder}/report.md")
    return {
        "rows": an["rows"],
        "slice_rows": an["slice_rows"],
        "accuracy": acc,
        "folder": str(res.folder),
    }


def accuracy_rows(trajs: dict, cfg: dict) -> list[dict]:
    """Test accuracy of the base and of each fine-tune on its added class and the base classes
    (mean over bases and runs)."""
    rows = []
    recs = [t.records[t.indices("base")[-1]] for t in trajs.values()]
    rows.append(
        {
            "model": "base",
            **{f"acc_{k}": C.mean_sd(r[f"acc_{k}"] for r in recs)[0] for k in cfg["added"]},
            "accuracy_base_classes": C.mean_sd(r["accuracy_base_classes"] for r in recs)[0],
        }
    )
    for k in cfg["added"]:
        recs = [
            t.records[t.indices(f"+{k} run {r}")[-1]]
            for t in trajs.values()
            for r in range(cfg["runs"])
        ]
        rows.append(
            {
                "model": f"+{k}",
                **{f"acc_{q}": C.mean_sd(r[f"acc_{q}"] for r in recs)[0] for q in cfg["added"]},
                "accuracy_base_classes": C.mean_sd(r["accuracy_base_classes"] for r in recs)[0],
            }
        )
    return rows


def figures(res: C.Output, an: dict, diffs: list[dict], cfg: dict) -> None:
    from .. import plot

    order = sorted(
        range(len(diffs)), key=lambda i: (diffs[i]["added"], diffs[i]["seed"], diffs[i]["run"])
    )
    phases, start = [], 0
    for k in cfg["added"]:
        n = sum(1 for d in diffs if d["added"] == k)
        phases.append((f"+{k}", start, start + n))
        start += n
    mats = {lab: m[order][:, order] for lab, m in an["matrices"].items()}
    fig = plot.heatmaps(
        mats,
        phases=phases,
        ncols=3,
        panel=3.4,
        title="Similarity of difference networks (fine-tuned − base), grouped by the class added "
        "(all bases and runs)",
    )
    res.figure(
        fig,
        "heatmaps.png",
        "Difference × difference similarity for every metric; rows and columns grouped by the "
        "class the fine-tune added (within a group: bases, then runs).",
    )
    groups = {r["metric"]: {k: r[k] for k in KINDS} for r in an["rows"]}
    fig = C.tilt_labels(
        plot.bars(
            {kind: {m: groups[m][kind] for m in groups} for kind in KINDS},
            ylabel="mean similarity of the pairs",
            title="Similarity of two differences (fine-tuned − base), by kind of pair",
            width=9,
            height=3.4,
        )
    )
    res.figure(
        fig,
        "kinds.png",
        "Mean similarity of pairs of difference networks: the same class added twice vs different "
        "classes, to the same base or to another base.",
    )


def report_md(an: dict, acc: list[dict], cfg: dict) -> str:
    n_bases, runs = len(cfg["seeds"]), cfg["runs"]
    lines = [
        "## Result",
        "",
        f"{n_bases} bases (classes other than {cfg['added']}), each fine-tuned {runs}× to add each "
        f"of {cfg['added']}: {n_bases * runs * len(cfg['added'])} difference networks. Test "
        "accuracy (mean over bases and runs):",
        "",
        C.markdown_table(acc),
        "",
        f"Pairs per kind: {an['pairs']}.",
        "",
        "Whole model: mean similarity of two differences by kind of pair; Δ / Δ_paper / separation "
        "of the block P of differences that added k against the block R of those that added "
        "another class (all bases pooled, averaged over k; with two added classes Δ_paper "
        "averages to Δ); `nearest_neighbour_same_class` = fraction of differences whose "
        "most similar other difference added the same class:",
        "",
        C.markdown_table(an["rows"]),
        "",
        "Class slices: each pair read in the slice (`outputs=[k]`) of the class one of them added "
        "(mean of the two slices when they added different classes):",
        "",
        C.markdown_table(an["slice_rows"]),
        "",
        C.CONTRAST_DEFINITIONS,
        "",
        "Difference networks are exact: `tnsim.add(fine_tuned, base.scaled(-1))`. The matrix "
        "cosine reads the weight differences ΔL, ΔR, ΔD (hidden units are aligned within a base, "
        "not across bases); the output cosine evaluates δ(x) = f_ft(x) − f_base(x) on the test "
        "images.",
    ]
    return "\n".join(lines)
