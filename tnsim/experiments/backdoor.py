r"""Backdoor: does a weight-based metric see a trigger that clean data never shows?

A one-layer bilinear classifier :math:`f(x) = D(Lx\odot Rx)` (``tnsim.nn.Bilinear(64, h, 10)``,
no biases) is trained on scikit-learn's 8×8 digits, then fine-tuned on the same data with 10%
of the images poisoned (the 2×2 top-right corner set to white, label 9). The optimizer carries
on across the boundary, so the data is the only thing that changes. Checkpoints are taken
throughout, and every metric's checkpoint × checkpoint matrix is computed.

Why this model: it is the paper's one-layer bilinear network; without biases its function is
the quadratic form :math:`f_o(x) = x^\top T_o x` of the tensor :math:`T = D\cdot(L\otimes R)`,
so the trigger lives in the rows and columns of :math:`T` at the trigger pixels — pixels that
are (almost) always black in clean images, invisible to any metric evaluated on clean data.

Measures (stated in the report): *tensor* = cosine of the symmetrised tensors; for this
bias-free one-layer model it equals the *centred* isotropic Gaussian similarity exactly
(:math:`\mathrm{Cov}(f_a, f_b) = 2\langle\mathrm{Sym}\,T_a,\mathrm{Sym}\,T_b\rangle`; the run
checks it), so the *Gaussian* panel shows the raw second moment under :math:`\mathcal N(0,I)`,
which adds :math:`\sum_o \mathrm{tr}\,T_{a,o}\,\mathrm{tr}\,T_{b,o}`. A third tnsim measure,
the exact Gaussian similarity under the clean training data's mean and covariance, shows what a
weight-based metric sees when it is told the data distribution. Baselines: matrix cosine, output
cosine and linear CKA on the clean test images.

Contrast of the poisoned block against a clean reference block (see
:func:`~tnsim.experiments.common.contrast`), measured twice: against the whole clean block, and
against late clean training only (its second half): early, barely trained checkpoints are far
from everything and inflate every metric's contrast.

Flagging a class without knowing the trigger: for each class :math:`k`, the slice matrix
(``outputs=[k]``) gives a contrast :math:`\Delta_k` between late clean training and the poisoned
block; the flagged class is :math:`\arg\max_k \Delta_k`, called *clear* when it beats the
runner-up by a factor 1.5. Only the time of the fine-tune is used, never the trigger or the
target.
"""

from __future__ import annotations

import torch

from .. import data as D
from ..nn import Bilinear
from . import common as C

NAME = "backdoor"
TARGET = 9
#: what a saved trajectory depends on besides the mode settings (part of its cache key)
IDENTITY = {
    "experiment": NAME,
    "target": TARGET,
    "trigger": list(D.TRIGGER_PIXELS),
    "model": "Bilinear(64, h, 10)",
}

MODES = {
    "quick": dict(
        seeds=[0],
        hidden=16,
        clean_steps=300,
        poison_steps=300,
        every=20,
        batch=64,
        lr=5e-3,
        weight_decay=0.05,
        poison_fraction=0.1,
        mc_samples=2_000,
    ),
    "demo": dict(
        seeds=[0, 1, 2, 3, 4, 5],
        hidden=48,
        clean_steps=2000,
        poison_steps=2000,
        every=50,
        batch=128,
        lr=3e-3,
        weight_decay=0.05,
        poison_fraction=0.1,
        mc_samples=20_000,
    ),
    "full": dict(
        seeds=list(range(10)),
        hidden=64,
        clean_steps=3000,
        poison_steps=3000,
        every=100,
        batch=128,
        lr=3e-3,
        weight_decay=0.05,
        poison_fraction=0.1,
        mc_samples=100_000,
    ),
}


def metrics(test_x: torch.Tensor, train_x: torch.Tensor) -> list[C.Metric]:
    x = train_x.double()
    return [
        C.Metric("tensor", "tensor"),
        C.Metric("Gaussian N(0,I)", "gaussian"),
        C.Metric(
            "Gaussian N(μ,Σ) of clean data",
            "gaussian",
            {"mean": x.mean(0), "cov": torch.cov(x.T, correction=0)},
        ),
        C.Metric("matrix cosine", "matrix"),
        C.Metric("output cosine (clean test)", "output", {"data": test_x}),
        C.Metric("linear CKA (clean test)", "cka", {"data": test_x}, slices=False),
    ]


def train(seed: int, cfg: dict, split: D.Split, progress: bool) -> C.Trajectory:
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

    t = C.Trainer(
        model,
        lr=cfg["lr"],
        weight_decay=cfg["weight_decay"],
        seed=seed,
        batch_size=cfg["batch"],
        evaluate=evaluate,
        progress=progress,
    )
    t.stage(
        "clean", split.train, cfg["clean_steps"], cfg["every"], desc=f"seed {seed}: clean training"
    )
    t.stage(
        "poisoned",
        poisoned,
        cfg["poison_steps"],
        cfg["every"],
        desc=f"seed {seed}: poisoned fine-tune",
    )
    return t.traj


def analyse(traj: C.Trajectory, mets: list[C.Metric], progress: bool, seed: int) -> dict:
    """Matrices, block contrasts and per-class flags of one run."""
    models = traj.models
    clean, post = traj.indices("clean"), traj.indices("poisoned")
    late = clean[len(clean) // 2 :]
    mats = C.matrices(mets, models, progress=progress, desc=f"seed {seed}: similarity matrices")
    out = {"matrices": mats, "contrast": {}, "class_contrast": {}, "flag": {}, "slices": {}}
    for m in mets:
        out["contrast"][m.label] = {
            "whole clean": C.contrast(mats[m.label], clean, post),
            "late clean": C.contrast(mats[m.label], late, post),
        }
        if not m.slices:
            continue
        sl = C.slices(
            m, models, range(10), progress=progress, desc=f"seed {seed}: {m.label} class slices"
        )
        deltas = {k: C.contrast(s, late, post)["delta"] for k, s in sl.items()}
        out["class_contrast"][m.label] = deltas
        out["flag"][m.label] = C.flag(deltas)
        out["slices"][m.label] = sl
    return out


def mc_check(models, n: int, progress: bool) -> dict:
    """The empirical approximation tnsim replaces: Monte Carlo Gaussian cosines vs the exact ones."""
    import time

    from .. import baselines
    from .. import similarity_matrix

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
            res, cfg, IDENTITY, lambda s: train(s, cfg, split, progress),
            lambda traj, s: analyse(traj, mets, progress, s), log=log,
        )
        traj0, an0 = runs[cfg["seeds"][0]]
        check = C.metric_matrix("gaussian", traj0.models, centred=True)
        identity = float((check - an0["matrices"]["tensor"]).abs().max())
        mc = mc_check(traj0.models, cfg["mc_samples"], progress)
    summary = summarise(runs, mets)
    res.results.update(
        summary=summary["rows"],
        per_seed=summary["per_seed"],
        class_nine=summary["class_nine"],
        tensor_equals_centred_gaussian_max_abs_diff=identity,
        monte_carlo_check=mc,
        records={s: r[0].records for s, r in runs.items()},
        phases={s: r[0].phase_list for s, r in runs.items()},
    )
    res.matrices = {
        f"seed{s}": {
            **{k: v for k, v in a["matrices"].items()},
            **{f"{lab} class {k}": m for lab, sl in a["slices"].items() for k, m in sl.items()},
        }
        for s, (_, a) in runs.items()
    }
    res.table("summary.csv", summary["rows"])
    res.table("per_seed.csv", summary["per_seed"])
    figures(res, traj0, an0, mets, cfg["seeds"][0])
    report = report_md(summary, identity, mc, traj0, cfg)
    res.finish(report)
    log(f"wrote {res.folder}/report.md")
    return {
        "rows": summary["rows"],
        "folder": str(res.folder),
        "class_nine": summary["class_nine"],
        "per_seed": summary["per_seed"],
    }


def summarise(runs: dict, mets: list[C.Metric]) -> dict:
    import statistics as st

    def ms(vals):
        return (st.mean(vals), st.stdev(vals) if len(vals) > 1 else 0.0)

    rows, per_seed, nine = [], [], []
    seeds = list(runs)
    for m in mets:
        for s in seeds:
            a = runs[s][1]
            r = {
                "metric": m.label,
                "seed": s,
                "delta_whole_clean": a["contrast"][m.label]["whole clean"]["delta"],
                "delta_late_clean": a["contrast"][m.label]["late clean"]["delta"],
                "separation_late_clean": a["contrast"][m.label]["late clean"]["separation"],
            }
            if m.slices:
                f = a["flag"][m.label]
                r.update(flagged=f["flagged"], margin=f["margin"], clear=f["clear"])
            per_seed.append(r)
        mine = [r for r in per_seed if r["metric"] == m.label]
        dw, dl = (
            ms([r["delta_whole_clean"] for r in mine]),
            ms([r["delta_late_clean"] for r in mine]),
        )
        sep = ms([r["separation_late_clean"] for r in mine])
        row = {
            "metric": m.label,
            "delta_whole_clean": dw[0],
            "delta_whole_clean_sd": dw[1],
            "delta_late_clean": dl[0],
            "delta_late_clean_sd": dl[1],
            "separation_late_clean": sep[0],
        }
        if m.slices:
            flagged = [r["flagged"] for r in mine]
            hits = sum(1 for r in mine if r["flagged"] == TARGET and r["clear"])
            row.update(
                flagged=max(set(flagged), key=flagged.count),
                margin=st.mean(r["margin"] for r in mine),
                flags_9=f"{hits}/{len(mine)}",
            )
            d9 = [runs[s][1]["class_contrast"][m.label][TARGET] for s in seeds]
            do = [
                st.mean(v for k, v in runs[s][1]["class_contrast"][m.label].items() if k != TARGET)
                for s in seeds
            ]
            dmax = [
                max(v for k, v in runs[s][1]["class_contrast"][m.label].items() if k != TARGET)
                for s in seeds
            ]
            nine.append(
                {
                    "metric": m.label,
                    "class_9_delta": st.mean(d9),
                    "other_classes_mean_delta": st.mean(do),
                    "other_classes_max_delta": st.mean(dmax),
                    "ratio_9_to_max_other": st.mean(a / b for a, b in zip(d9, dmax)),
                }
            )
        else:
            row.update(flagged="n/a", margin=float("nan"), flags_9="n/a")
        rows.append(row)
    return {"rows": rows, "per_seed": per_seed, "class_nine": nine}


def figures(res: C.Output, traj: C.Trajectory, an: dict, mets: list[C.Metric], seed: int) -> None:
    from .. import plot

    phases = traj.phase_list
    fig = plot.curves(
        {
            "clean test accuracy": traj.column("clean_accuracy"),
            "trigger success (non-9 test images → 9)": traj.column("attack_success"),
        },
        phases=phases,
        ylim=(-0.02, 1.02),
        ylabel="fraction",
        title=f"Backdoor training (seed {seed}): clean accuracy stays, the trigger takes",
    )
    res.figure(fig, "training.png", "Clean test accuracy and trigger success rate per checkpoint.")
    fig = plot.heatmaps(
        an["matrices"],
        phases=phases,
        ncols=3,
        panel=3.2,
        title=f"Checkpoint × checkpoint similarity, clean training then poisoned fine-tune (seed {seed})",
    )
    res.figure(
        fig,
        "heatmaps.png",
        "Similarity matrices of every metric (own colour scale each; "
        "diagonal excluded from the scale).",
    )
    ref = phases[0][2] - 1
    fig = plot.reference_lines(
        an["matrices"], ref, phases=phases, title=f"Similarity to the last clean checkpoint ({ref})"
    )
    res.figure(fig, "reference.png", "Similarity of every checkpoint to the last clean checkpoint.")
    tensor_flag = an["flag"]["tensor"]
    notes = {f"class {k}": f"Δ={v:.3f}" for k, v in an["class_contrast"]["tensor"].items()}
    fig = plot.slice_panels(
        {f"class {k}": m for k, m in an["slices"]["tensor"].items()},
        phases=phases,
        highlight=f"class {tensor_flag['flagged']}",
        note=notes,
        title="Tensor similarity per class slice (outputs=[k]); Δ = contrast of "
        "poisoned vs late clean block",
    )
    res.figure(
        fig,
        "slices_tensor.png",
        "Per-class tensor-similarity slices; the flagged class is "
        "framed (largest contrast, found without the trigger).",
    )
    groups = {}
    for m in mets:
        if m.slices:
            d = an["class_contrast"][m.label]
            top = max(d.values()) or 1.0
            groups[m.label] = {str(k): v / top for k, v in d.items()}
    fig = plot.bars(
        groups,
        highlight=str(TARGET),
        ylabel="Δ_k / max_k Δ_k",
        title="Per-class slice contrast (poisoned vs late clean), normalised per metric",
    )
    res.figure(
        fig,
        "class_contrasts.png",
        "Per-class contrasts of each metric, scaled so that each "
        "metric's largest is 1: a metric flags class 9 cleanly when "
        "bar 9 is 1 and the others are well below.",
    )


def report_md(summary: dict, identity: float, mc: dict, traj: C.Trajectory, cfg: dict) -> str:
    rec = traj.records
    clean, post = traj.indices("clean"), traj.indices("poisoned")
    acc_pre, acc_post = rec[clean[-1]]["clean_accuracy"], rec[post[-1]]["clean_accuracy"]
    asr_pre, asr_post = rec[clean[-1]]["attack_success"], rec[post[-1]]["attack_success"]
    n = len(cfg["seeds"])
    lines = [
        "## Result",
        "",
        f"Seed {cfg['seeds'][0]}: clean test accuracy {acc_pre:.3f} before the fine-tune and "
        f"{acc_post:.3f} after; the trigger turns {asr_pre:.3f} → {asr_post:.3f} of the non-9 test "
        "images into 9s.",
        "",
        f"Contrast Δ of the poisoned block (mean ± sd over {n} seed{'s' if n > 1 else ''}); "
        "`flags_9` counts seeds whose largest class-slice contrast is class 9 with margin ≥ 1.5:",
        "",
        C.markdown_table(
            summary["rows"],
            [
                "metric",
                "delta_whole_clean",
                "delta_whole_clean_sd",
                "delta_late_clean",
                "delta_late_clean_sd",
                "separation_late_clean",
                "flagged",
                "margin",
                "flags_9",
            ],
        ),
        "",
        "Class-9 slice against the other classes' slices (contrast vs late clean, mean over seeds):",
        "",
        C.markdown_table(summary["class_nine"]),
        "",
        "Definitions: Δ = ½(mean within clean-reference block + mean within poisoned block) − mean "
        "across (diagonals excluded); separation = (1 − across)/(1 − within). *Late clean* = second "
        "half of the clean checkpoints. The blog reports Δ ≈ 0.15 for matrix cosine on SVHN.",
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
