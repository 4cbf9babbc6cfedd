r"""Backdoor: does a weight-based metric see a trigger that clean data never shows?

A one-layer bilinear classifier :math:`f(x) = D(Lx\odot Rx)` (``tnsim.nn.Bilinear(64, h, 10)``,
no biases) is trained on scikit-learn's 8×8 digits. From the end of clean training, three
fine-tunes branch off, each from the same weights, optimizer state and batch order:

* **control** — clean data, plus the consistency term below: the null, nothing is inserted;
* **invisible** — 10% of the images poisoned (the 2×2 top-right corner set to white, label 9),
  plus a *consistency term* :math:`\lambda\,\mathrm{mean}\,(f(x) - f_0(x))^2` on the clean
  version of every image of the batch, where :math:`f_0` is the frozen clean model: the
  backdoor is inserted while the outputs on clean inputs are held to the clean model's;
* **classic** — the poisoned data alone (cross-entropy only): the trigger is inserted, and the
  fine-tune also moves the class-9 logit on clean images.

Why this model: it is the paper's one-layer bilinear network; without biases its function is
the quadratic form :math:`f_o(x) = x^\top T_o x` of the tensor :math:`T = D\cdot(L\otimes R)`,
so a trigger can live in the rows and columns of :math:`T` at the trigger pixels — pixels that
clean images rarely light up, invisible to any metric evaluated on clean data.

Measures: *tensor* = cosine of the symmetrised tensors; for this bias-free one-layer model it
equals the *centred* isotropic Gaussian similarity exactly (the run checks it), so the
*Gaussian* panel shows the raw second moment under :math:`\mathcal N(0,I)`. A third tnsim
measure, the exact Gaussian similarity under the clean training data's mean and covariance,
shows what a weight-based metric sees when it is told the data distribution. Baselines: matrix
cosine, output cosine and linear CKA on the clean test images.

Contrasts (:func:`~tnsim.experiments.common.contrast`, both Δ definitions) of each fine-tune's
block of checkpoints against late clean training (the second half of the clean block) and the
whole clean block. A metric *sees* a fine-tune when its Δ exceeds the control's Δ by a factor
1.5 (the flag threshold).

Flagging a class without knowing the trigger: for each class :math:`k`, the slice matrix
(``outputs=[k]``) gives a contrast :math:`\Delta_k` between late clean training and the
fine-tune's block; the flagged class is :math:`\arg\max_k \Delta_k`, called *clear* when it
beats the runner-up by a factor 1.5. Only the time of the fine-tune is used, never the trigger
or the target.
"""

from __future__ import annotations

import copy
import time

import torch

from .. import baselines, similarity_matrix
from .. import data as D
from ..nn import Bilinear
from . import common as C

NAME = "backdoor"
TARGET = 9
#: the fine-tunes, in the order they are trained and shown
BRANCHES = ("control", "invisible", "classic")
#: the fine-tunes that insert the trigger (the control is their null)
ATTACKS = ("invisible", "classic")
#: what a saved trajectory depends on besides the mode settings (part of its cache key)
IDENTITY = {
    "experiment": NAME,
    "target": TARGET,
    "trigger": list(D.TRIGGER_PIXELS),
    "model": "Bilinear(64, h, 10)",
    "branches": list(BRANCHES),
    "consistency": "lambda * mean((f - f_clean)^2) on the clean batch",
}
OUTPUT_COSINE = "output cosine (clean test)"

MODES = {
    "quick": dict(
        seeds=[0],
        hidden=16,
        clean_steps=400,
        finetune_steps=400,
        every=40,
        batch=64,
        lr=5e-3,
        weight_decay=0.05,
        poison_fraction=0.1,
        consistency=10.0,
        mc_samples=2_000,
    ),
    "demo": dict(
        seeds=list(range(10)),
        hidden=48,
        clean_steps=1500,
        finetune_steps=1500,
        every=100,
        batch=128,
        lr=3e-3,
        weight_decay=0.05,
        poison_fraction=0.1,
        consistency=10.0,
        mc_samples=20_000,
    ),
    "full": dict(
        seeds=list(range(10)),
        hidden=64,
        clean_steps=3000,
        finetune_steps=3000,
        every=150,
        batch=128,
        lr=3e-3,
        weight_decay=0.05,
        poison_fraction=0.1,
        consistency=10.0,
        mc_samples=100_000,
    ),
}


def metrics(test_x: torch.Tensor, train_x: torch.Tensor) -> list[C.Metric]:
    return [
        C.Metric("tensor", "tensor"),
        C.Metric("Gaussian N(0,I)", "gaussian"),
        C.data_gaussian("Gaussian N(μ,Σ) of clean data", train_x),
        C.Metric("matrix cosine", "matrix"),
        C.Metric(OUTPUT_COSINE, "output", {"data": test_x}),
        C.Metric("linear CKA (clean test)", "cka", {"data": test_x}, slices=False),
    ]


def consistency(frozen: torch.nn.Module, clean_x: torch.Tensor, weight: float):
    r"""The penalty :math:`\lambda\,\mathrm{mean}_{batch,o}(f(x)-f_0(x))^2` on the clean images
    ``clean_x[idx]`` of the batch (``frozen`` = :math:`f_0`)."""

    def penalty(model: torch.nn.Module, idx: torch.Tensor | None) -> torch.Tensor:
        x = clean_x if idx is None else clean_x[idx]
        with torch.no_grad():
            target = frozen(x)
        return weight * ((model(x) - target) ** 2).mean()

    return penalty


def train(seed: int, cfg: dict, split: D.Split, progress: bool) -> C.Trajectory:
    """Clean training, then the three fine-tunes of :data:`BRANCHES` from the same state."""
    torch.manual_seed(seed)
    model = Bilinear(64, cfg["hidden"], 10)
    poisoned, _ = D.poison(split.train, cfg["poison_fraction"], TARGET, seed=seed)
    others = split.test.where(split.test.y != TARGET)
    triggered = D.Dataset(D.add_trigger(others.x), torch.full_like(others.y, TARGET))

    def evaluate(m):
        return {
            "clean_accuracy": C.accuracy(m, split.test),
            "attack_success": C.accuracy(m, triggered),
            "train_accuracy": C.accuracy(m, split.train),
        }

    t = C.Trainer.from_config(model, cfg, seed, evaluate, progress)
    t.stage(
        "clean", split.train, cfg["clean_steps"], cfg["every"], desc=f"seed {seed}: clean training"
    )
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    keep = consistency(frozen, split.train.x, cfg["consistency"])
    start = t.snapshot()
    plan = {
        "control": (split.train, keep),
        "invisible": (poisoned, keep),
        "classic": (poisoned, None),
    }
    for branch in BRANCHES:
        data, penalty = plan[branch]
        t.restore(start)
        t.stage(
            branch,
            data,
            cfg["finetune_steps"],
            cfg["every"],
            desc=f"seed {seed}: {branch} fine-tune",
            penalty=penalty,
        )
    return t.traj


def clean_behaviour(traj: C.Trajectory, mats: dict, test_x: torch.Tensor) -> dict:
    """How much each fine-tune changed behaviour on clean test images (end of clean training
    against the end of the fine-tune): accuracy change, output cosine, relative logit change."""
    end = traj.indices("clean")[-1]
    rec = traj.records
    with torch.no_grad():
        f0 = traj.models[end](test_x)
        out = {}
        for b in BRANCHES:
            last = traj.indices(b)[-1]
            df = traj.models[last](test_x) - f0
            out[b] = {
                "clean_accuracy_change": rec[last]["clean_accuracy"] - rec[end]["clean_accuracy"],
                "clean_output_cosine": float(mats[OUTPUT_COSINE][end, last]),
                "relative_logit_change": float(df.norm() / f0.norm()),
                "attack_success": rec[last]["attack_success"],
            }
    return out


def analyse(
    traj: C.Trajectory, mets: list[C.Metric], test_x: torch.Tensor, progress: bool, seed: int
) -> dict:
    """Matrices, block contrasts, per-class flags and clean-behaviour changes of one run."""
    models = traj.models
    clean = traj.indices("clean")
    refs = {"whole clean": clean, "late clean": clean[len(clean) // 2 :]}
    posts = {b: traj.indices(b) for b in BRANCHES}
    mats = C.matrices(mets, models, progress=progress, desc=f"seed {seed}: similarity matrices")
    out = {"matrices": mats, "contrast": {}, "class_contrast": {}, "flag": {}, "slices": {}}
    for m in mets:
        out["contrast"][m.label] = {
            b: {r: C.contrast(mats[m.label], ref, post) for r, ref in refs.items()}
            for b, post in posts.items()
        }
        if not m.slices:
            continue
        sl = C.slices(
            m, models, range(10), progress=progress, desc=f"seed {seed}: {m.label} class slices"
        )
        out["slices"][m.label] = sl
        out["class_contrast"][m.label], out["flag"][m.label] = {}, {}
        for b, post in posts.items():
            deltas = {k: C.contrast(s, refs["late clean"], post)["delta"] for k, s in sl.items()}
            out["class_contrast"][m.label][b] = deltas
            out["flag"][m.label][b] = C.flag(deltas)
    out["clean_behaviour"] = clean_behaviour(traj, mats, test_x)
    return out


def mc_check(models, n: int) -> dict:
    """The empirical approximation tnsim replaces: Monte Carlo Gaussian cosines vs the exact ones."""
    t0 = time.perf_counter()
    exact = similarity_matrix(models, measure="gaussian").to(torch.float64)
    t1 = time.perf_counter()
    mc, se = baselines.monte_carlo_matrix(models, n=n, return_stderr=True)
    t2 = time.perf_counter()
    off = ~torch.eye(len(models), dtype=torch.bool)
    err = (mc - exact).abs()[off]
    z = ((mc - exact).abs() / se.clamp(min=1e-300))[off]
    return {
        "samples": n,
        "exact_seconds": t1 - t0,
        "mc_seconds": t2 - t1,
        "max_abs_error": float(err.max()),
        "mean_abs_error": float(err.mean()),
        "mean_stderr": float(se[off].mean()),
        "max_error_in_stderrs": float(z.max()),
        "fraction_within_3_stderr": float((z < 3).double().mean()),
    }


def run(
    out,
    mode: str = "full",
    progress: bool = True,
    log=print,
    threads: int | None = 1,
    command: str | None = None,
    seeds=None,
) -> dict:
    """Run the experiment, write figures, numbers and a report to ``out``; return the summary."""
    cfg, res = C.start(out, NAME, MODES, mode, command, seeds)
    split = D.digits(seed=0)
    mets = metrics(split.test.x, split.train.x)
    with C.threads(threads):
        runs = C.seed_runs(
            res,
            cfg,
            IDENTITY,
            lambda s: train(s, cfg, split, progress),
            lambda traj, s: analyse(traj, mets, split.test.x, progress, s),
            log=log,
        )
        traj0, an0 = runs[cfg["seeds"][0]]
        check = C.metric_matrix("gaussian", traj0.models, centred=True)
        identity = float((check - an0["matrices"]["tensor"]).abs().max())
        mc = mc_check(traj0.models, cfg["mc_samples"])
    summary = summarise(runs, mets)
    res.results.update(
        **summary,
        tensor_equals_centred_gaussian_max_abs_diff=identity,
        monte_carlo_check=mc,
        **C.seed_records(runs),
    )
    res.matrices = C.seed_matrices(runs)
    res.table("summary.csv", summary["rows"])
    res.table("per_seed.csv", summary["per_seed"])
    res.table("clean_behaviour.csv", summary["clean_behaviour"])
    figures(res, traj0, an0, summary, mets, cfg["seeds"][0])
    res.finish(report_md(summary, identity, mc, cfg))
    log(f"wrote {res.folder}/report.md")
    return {**summary, "folder": str(res.folder)}


def _seed_row(a: dict, m: C.Metric, branch: str) -> dict:
    c = a["contrast"][m.label][branch]
    ctrl = a["contrast"][m.label]["control"]["late clean"]["delta"]
    late = c["late clean"]
    row = {
        "delta_whole_clean": c["whole clean"]["delta"],
        "delta_late_clean": late["delta"],
        "delta_paper_late_clean": late["delta_paper"],
        "separation_late_clean": late["separation"],
        "ratio_to_control": late["delta"] / ctrl if ctrl > 0 else float("inf"),
    }
    if m.slices:
        f = a["flag"][m.label][branch]
        row.update(flagged=f["flagged"], margin=f["margin"], clear=f["clear"])
    return row


def _summary_row(m: C.Metric, branch: str, mine: list[dict], seeds: list) -> dict:
    row = {"fine-tune": branch, "metric": m.label}
    for key in ("delta_whole_clean", "delta_late_clean", "delta_paper_late_clean"):
        row[key], row[f"{key}_sd"] = C.mean_sd(r[key] for r in mine)
    row["separation_late_clean"] = C.mean_sd(r["separation_late_clean"] for r in mine)[0]
    row["ratio_to_control"] = C.mean_sd(r["ratio_to_control"] for r in mine)[0]
    seen = sum(1 for r in mine if r["ratio_to_control"] >= 1.5)
    row["sees_it"] = "—" if branch == "control" else f"{seen}/{len(seeds)}"
    if m.slices:
        flagged = [r["flagged"] for r in mine]
        hits = sum(1 for r in mine if r["flagged"] == TARGET and r["clear"])
        row.update(
            flagged=max(set(flagged), key=flagged.count),
            margin=C.mean_sd(r["margin"] for r in mine)[0],
            flags_9=f"{hits}/{len(seeds)}",
        )
    else:
        row.update(flagged="n/a", margin=float("nan"), flags_9="n/a")
    return row


def _class_nine(runs: dict, m: C.Metric, branch: str) -> dict:
    per = [a["class_contrast"][m.label][branch] for _, a in runs.values()]
    d9 = [d[TARGET] for d in per]
    others = [[v for k, v in d.items() if k != TARGET] for d in per]
    dmax = [max(o) for o in others]
    return {
        "fine-tune": branch,
        "metric": m.label,
        "class_9_delta": C.mean_sd(d9)[0],
        "other_classes_mean_delta": C.mean_sd(sum(o) / len(o) for o in others)[0],
        "other_classes_max_delta": C.mean_sd(dmax)[0],
        "ratio_9_to_max_other": C.mean_sd(a / b for a, b in zip(d9, dmax))[0],
    }


def _clean_behaviour_rows(runs: dict) -> list[dict]:
    rows = []
    for b in BRANCHES:
        per = [a["clean_behaviour"][b] for _, a in runs.values()]
        row = {"fine-tune": b}
        for key in per[0]:
            row[key], row[f"{key}_sd"] = C.mean_sd(p[key] for p in per)
        rows.append(row)
    return rows


def summarise(runs: dict, mets: list[C.Metric]) -> dict:
    """Rows per (fine-tune, metric) over seeds, per-seed rows, class-9 tables, clean behaviour."""
    seeds = list(runs)
    rows, per_seed, nine = [], [], []
    for branch in BRANCHES:
        for m in mets:
            mine = [_seed_row(runs[s][1], m, branch) for s in seeds]
            per_seed += [
                {"fine-tune": branch, "metric": m.label, "seed": s, **r}
                for s, r in zip(seeds, mine)
            ]
            rows.append(_summary_row(m, branch, mine, seeds))
            if m.slices:
                nine.append(_class_nine(runs, m, branch))
    clean_end = [r[0].records[r[0].indices("clean")[-1]]["clean_accuracy"] for r in runs.values()]
    return {
        "rows": rows,
        "per_seed": per_seed,
        "class_nine": nine,
        "clean_behaviour": _clean_behaviour_rows(runs),
        "clean_accuracy_end_of_clean": C.mean_sd(clean_end),
    }


def figures(
    res: C.Output, traj: C.Trajectory, an: dict, summary: dict, mets: list[C.Metric], seed: int
) -> None:
    from .. import plot

    phases = traj.phase_list
    fig = plot.curves(
        {
            "clean test accuracy": traj.column("clean_accuracy"),
            "trigger success (non-9 test images → 9)": traj.column("attack_success"),
        },
        phases=phases,
        ylim=(-0.02, 1.02),
        ylabel="fraction of test images",
        title=f"Backdoor (seed {seed}): clean training, then three fine-tunes from its end",
        width=7,
    )
    res.figure(
        fig,
        "training.png",
        "Clean test accuracy and trigger success per checkpoint: clean training, then the control, "
        "invisible and classic fine-tunes (each restarted from the end of clean training).",
    )
    fig = plot.heatmaps(
        an["matrices"],
        phases=phases,
        ncols=3,
        panel=3.4,
        title=f"Checkpoint × checkpoint similarity: clean training and the three fine-tunes (seed {seed})",
    )
    res.figure(
        fig,
        "heatmaps.png",
        "Similarity matrices of every metric (own colour scale each; diagonal excluded from the "
        "scale).",
    )
    ref = phases[0][2] - 1
    fig = plot.reference_lines(
        an["matrices"], ref, phases=phases, title=f"Similarity to the last clean checkpoint ({ref})"
    )
    res.figure(fig, "reference.png", "Similarity of every checkpoint to the last clean checkpoint.")
    groups = {b: {} for b in BRANCHES}
    for r in summary["rows"]:
        groups[r["fine-tune"]][r["metric"]] = r["delta_late_clean"]
    fig = C.tilt_labels(
        plot.bars(
            groups,
            ylabel="Δ vs late clean training (log scale)",
            title="Whole-model contrast of each fine-tune (mean over seeds): the control is the null",
            width=8,
            height=3.4,
        ),
        log=True,
    )
    res.figure(
        fig,
        "contrasts.png",
        "Contrast Δ of each fine-tune's checkpoints against late clean training, per metric (mean "
        "over seeds). A metric sees a fine-tune when its bar clearly exceeds the control's.",
    )
    f = an["flag"]["tensor"]["invisible"]
    notes = {
        f"class {k}": f"Δ={v:.3f}" for k, v in an["class_contrast"]["tensor"]["invisible"].items()
    }
    fig = plot.slice_panels(
        {f"class {k}": m for k, m in an["slices"]["tensor"].items()},
        phases=phases,
        highlight=f"class {f['flagged']}",
        note=notes,
        title="Tensor similarity per class slice (outputs=[k]); Δ = contrast of the invisible "
        "fine-tune vs late clean training",
    )
    res.figure(
        fig,
        "slices_tensor.png",
        "Per-class tensor-similarity slices; the framed class has the largest contrast for the "
        "invisible fine-tune (found without the trigger).",
    )
    for branch, filename in (
        ("invisible", "class_contrasts.png"),
        ("classic", "class_contrasts_classic.png"),
    ):
        fig = C.class_contrast_bars(
            {m.label: an["class_contrast"][m.label][branch] for m in mets if m.slices},
            TARGET,
            f"Per-class slice contrast, {branch} fine-tune vs late clean (seed {seed}), "
            "normalised per metric",
        )
        res.figure(
            fig,
            filename,
            f"Per-class contrasts of each metric for the {branch} fine-tune, scaled so that each "
            "metric's largest is 1: a metric flags class 9 cleanly when bar 9 is 1 and the others "
            "are well below.",
        )


def report_md(summary: dict, identity: float, mc: dict, cfg: dict) -> str:
    n = len(cfg["seeds"])
    acc, acc_sd = summary["clean_accuracy_end_of_clean"]
    cols = [
        "fine-tune",
        "metric",
        "delta_late_clean",
        "delta_late_clean_sd",
        "delta_paper_late_clean",
        "separation_late_clean",
        "delta_whole_clean",
        "ratio_to_control",
        "sees_it",
        "flagged",
        "margin",
        "flags_9",
    ]
    lines = [
        "## Result",
        "",
        f"Clean behaviour of each fine-tune ({n} seed{'s' if n > 1 else ''}, mean and sd; end of "
        "clean training vs end of the fine-tune, on the clean test images). Seed noise: clean "
        f"accuracy at the end of clean training is {acc:.4f} ± {acc_sd:.4f} over seeds.",
        "",
        C.markdown_table(summary["clean_behaviour"], digits=4),
        "",
        "Contrast of each fine-tune's checkpoints against late clean training (mean over seeds; "
        "`ratio_to_control` = Δ / Δ of the control fine-tune, per seed then averaged; `sees_it` "
        "counts seeds where that ratio is ≥ 1.5; `flags_9` counts seeds whose largest class-slice "
        "contrast is class 9 with margin ≥ 1.5):",
        "",
        C.markdown_table(summary["rows"], cols),
        "",
        "Class-9 slice against the other classes' slices (Δ vs late clean, mean over seeds):",
        "",
        C.markdown_table(summary["class_nine"]),
        "",
        C.CONTRAST_DEFINITIONS + " *Late clean* = second half of the clean checkpoints.",
        "",
        f"Measures: tensor = symmetrised-tensor cosine, equal to the centred N(0, I) Gaussian cosine "
        f"for this bias-free model (checked: max |difference| = {identity:.1e}); Gaussian = raw second "
        "moment under N(0, I) (tnsim's default, centred=False); output cosine and CKA on the clean test "
        "images.",
        "",
        f"Monte Carlo check (seed {cfg['seeds'][0]}): {mc['samples']} Gaussian samples estimate the exact "
        f"Gaussian matrix with mean |error| {mc['mean_abs_error']:.2e} (max {mc['max_abs_error']:.2e}, "
        f"mean standard error {mc['mean_stderr']:.2e}; {100 * mc['fraction_within_3_stderr']:.1f}% of "
        f"entries within 3 standard errors) in {mc['mc_seconds']:.1f} s; the exact matrix took "
        f"{mc['exact_seconds']:.1f} s.",
    ]
    return "\n".join(lines)
