r"""Forgetting: classes added in stages, one removed (catastrophic forgetting), then added back.

A one-layer bilinear classifier ``tnsim.nn.Bilinear(64, h, 10)`` (no biases, as in the backdoor
experiment) is trained on the 8×8 digits of classes 0–4, then 5, 6, 7, 8 and 9 are added one
stage at a time; a *control* stage continues with unchanged data (the null: nothing changes at
its boundary); then 9 is removed ("−9": the model forgets it) and added back ("+9 again"). The
optimizer carries on across stages.

Which class was forgotten, without being told: at the "control" → "−9" boundary every metric's
class slices (``outputs=[k]``) give a contrast :math:`\Delta_k` between the late half of the
control stage and the "−9" stage; the flagged class is :math:`\arg\max_k\Delta_k` (clear when it beats
the runner-up by 1.5×). The same rule is applied at *every* stage boundary: it should name the
class added at "+k", the removed class at "−9", and nothing clear at the control boundary.

Measures: tensor (= centred N(0, I) Gaussian for this bias-free model), raw N(0, I) Gaussian,
the exact Gaussian similarity under the training data's mean and covariance, matrix cosine,
output cosine on the test images of all ten classes, linear CKA on the same. In this setup the
isotropic measures do not single out the forgotten class clearly (every slice keeps drifting in
directions the data never excites); the data-matched Gaussian does.
"""

from __future__ import annotations

import torch

from .. import data as D
from ..nn import Bilinear
from . import common as C

NAME = "forgetting"
FORGOTTEN = 9

STAGES = [
    ("0-4", list(range(5))),
    ("+5", list(range(6))),
    ("+6", list(range(7))),
    ("+7", list(range(8))),
    ("+8", list(range(9))),
    ("+9", list(range(10))),
    ("control", list(range(10))),
    ("-9", list(range(9))),
    ("+9 again", list(range(10))),
]
#: what changed at the boundary into each stage (None: nothing, the control)
#: what a saved trajectory depends on besides the mode settings (part of its cache key)
IDENTITY = {"experiment": NAME, "stages": STAGES, "model": "Bilinear(64, h, 10)"}
CHANGED = {"+5": 5, "+6": 6, "+7": 7, "+8": 8, "+9": 9, "-9": 9, "+9 again": 9, "control": None}

MODES = {
    "quick": dict(
        seeds=[0], hidden=16, stage_steps=150, every=30, batch=64, lr=5e-3, weight_decay=0.05
    ),
    "full": dict(
        seeds=[0, 1, 2, 3, 4],
        hidden=64,
        stage_steps=1000,
        every=100,
        batch=128,
        lr=3e-3,
        weight_decay=0.05,
    ),
}


DATA_GAUSSIAN = "Gaussian N(μ,Σ) of the data"


def metrics(test_x: torch.Tensor, train_x: torch.Tensor) -> list[C.Metric]:
    x = train_x.double()
    return [
        C.Metric("tensor", "tensor"),
        C.Metric("Gaussian N(0,I)", "gaussian"),
        C.Metric(
            DATA_GAUSSIAN, "gaussian", {"mean": x.mean(0), "cov": torch.cov(x.T, correction=0)}
        ),
        C.Metric("matrix cosine", "matrix"),
        C.Metric("output cosine (test)", "output", {"data": test_x}),
        C.Metric("linear CKA (test)", "cka", {"data": test_x}, slices=False),
    ]


def train(seed: int, cfg: dict, split: D.Split, progress: bool) -> C.Trajectory:
    torch.manual_seed(seed)
    model = Bilinear(64, cfg["hidden"], 10)
    per_class = {k: split.test.classes([k]) for k in range(10)}

    def evaluate(m):
        rec = {f"acc_{k}": C.accuracy(m, d) for k, d in per_class.items()}
        rec["accuracy"] = C.accuracy(m, split.test)
        return rec

    t = C.Trainer(
        model,
        lr=cfg["lr"],
        weight_decay=cfg["weight_decay"],
        seed=seed,
        batch_size=cfg["batch"],
        evaluate=evaluate,
        progress=progress,
    )
    for name, classes in STAGES:
        t.stage(
            name,
            split.train.classes(classes),
            cfg["stage_steps"],
            cfg["every"],
            desc=f"seed {seed}: stage {name}",
        )
    return t.traj


def boundary_blocks(traj: C.Trajectory):
    """(stage, reference block = late half of the previous stage, block of this stage)."""
    out = []
    for (_, s0, e0), (name, s1, e1) in zip(traj.phase_list, traj.phase_list[1:]):
        prev_idx = list(range(s0, e0))
        out.append((name, prev_idx[len(prev_idx) // 2 :], list(range(s1, e1))))
    return out


def analyse(traj: C.Trajectory, mets: list[C.Metric], progress: bool, seed: int) -> dict:
    models = traj.models
    mats = C.matrices(mets, models, progress=progress, desc=f"seed {seed}: similarity matrices")
    out = {
        "matrices": mats,
        "slices": {},
        "boundaries": {},
        "flag": {},
        "stage_means": {},
        "contrast": {},
    }
    blocks = boundary_blocks(traj)
    for m in mets:
        out["stage_means"][m.label] = C.stage_means(mats[m.label], traj.phase_list)
        out["contrast"][m.label] = {
            name: C.contrast(mats[m.label], ref, post)["delta"] for name, ref, post in blocks
        }
        if not m.slices:
            continue
        sl = C.slices(
            m, models, range(10), progress=progress, desc=f"seed {seed}: {m.label} class slices"
        )
        out["slices"][m.label] = sl
        per_b = {}
        for name, ref, post in blocks:
            deltas = {k: C.contrast(s, ref, post)["delta"] for k, s in sl.items()}
            per_b[name] = {"deltas": deltas, **C.flag(deltas)}
        out["boundaries"][m.label] = per_b
        out["flag"][m.label] = per_b["-9"]
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
    cfg, res = C.start(out, NAME, MODES, mode, command, seeds)
    split = D.digits(seed=0)
    mets = metrics(split.test.x, split.train.x)
    with C.threads(threads):
        runs = C.seed_runs(
            res, cfg, IDENTITY, lambda s: train(s, cfg, split, progress),
            lambda traj, s: analyse(traj, mets, progress, s), log=log,
        )
    summary = summarise(runs, mets)
    traj0, an0 = runs[cfg["seeds"][0]]
    res.results.update(
        summary=summary["rows"],
        boundaries=summary["boundaries"],
        stage_means={s: a["stage_means"] for s, (_, a) in runs.items()},
        stage_contrast={s: a["contrast"] for s, (_, a) in runs.items()},
        records={s: r[0].records for s, r in runs.items()},
        phases={s: r[0].phase_list for s, r in runs.items()},
    )
    res.matrices = {
        f"seed{s}": {
            **a["matrices"],
            **{f"{lab} class {k}": m for lab, sl in a["slices"].items() for k, m in sl.items()},
        }
        for s, (_, a) in runs.items()
    }
    res.table("summary.csv", summary["rows"])
    res.table("boundaries.csv", summary["boundaries"])
    res.table("stage_contrast.csv", summary["stage_contrast"])
    figures(res, traj0, an0, mets, cfg["seeds"][0])
    res.finish(report_md(summary, traj0, an0, cfg))
    log(f"wrote {res.folder}/report.md")
    return {"rows": summary["rows"], "boundaries": summary["boundaries"], "folder": str(res.folder)}


def summarise(runs: dict, mets: list[C.Metric]) -> dict:
    import statistics as st

    rows, bounds = [], []
    seeds = list(runs)
    for m in mets:
        if not m.slices:
            continue
        flags = [runs[s][1]["flag"][m.label] for s in seeds]
        hits = sum(1 for f in flags if f["flagged"] == FORGOTTEN and f["clear"])
        named = [f["flagged"] for f in flags]
        d9 = [f["deltas"][FORGOTTEN] for f in flags]
        dmax = [max(v for k, v in f["deltas"].items() if k != FORGOTTEN) for f in flags]
        ctrl = [runs[s][1]["boundaries"][m.label]["control"] for s in seeds]
        rows.append(
            {
                "metric": m.label,
                "named_class": max(set(named), key=named.count),
                "margin": st.mean(f["margin"] for f in flags),
                "names_9": f"{hits}/{len(seeds)}",
                "class_9_delta": st.mean(d9),
                "max_other_delta": st.mean(dmax),
                "control_max_delta": st.mean(max(c["deltas"].values()) for c in ctrl),
                "control_clear_flags": f"{sum(1 for c in ctrl if c['clear'])}/{len(seeds)}",
            }
        )
        for name in runs[seeds[0]][1]["boundaries"][m.label]:
            fs = [runs[s][1]["boundaries"][m.label][name] for s in seeds]
            changed = CHANGED[name]
            right = sum(1 for f in fs if f["clear"] and f["flagged"] == changed)
            quiet = sum(1 for f in fs if not f["clear"])
            bounds.append(
                {
                    "metric": m.label,
                    "boundary": name,
                    "changed_class": "none" if changed is None else changed,
                    "flagged": fs[0]["flagged"],
                    "margin": st.mean(f["margin"] for f in fs),
                    "correct": f"{right if changed is not None else quiet}/{len(fs)}",
                }
            )
    stage = []
    for m in mets:
        cs = [runs[s][1]["contrast"][m.label] for s in seeds]
        stage.append({"metric": m.label, **{b: st.mean(c[b] for c in cs) for b in cs[0]}})
    return {"rows": rows, "boundaries": bounds, "stage_contrast": stage}


def figures(res: C.Output, traj: C.Trajectory, an: dict, mets: list[C.Metric], seed: int) -> None:
    from .. import plot

    phases = traj.phase_list
    series = {f"class {k}": traj.column(f"acc_{k}") for k in range(5, 10)}
    series["classes 0-4 (mean)"] = [sum(r[f"acc_{k}"] for k in range(5)) / 5 for r in traj.records]
    fig = plot.curves(
        series,
        phases=phases,
        ylim=(-0.02, 1.02),
        ylabel="test accuracy",
        title=f"Per-class test accuracy through the stages (seed {seed})",
        width=8,
    )
    res.figure(
        fig,
        "training.png",
        "Test accuracy per class: each class is learnt when added; "
        "class 9 is forgotten in stage −9 and relearnt after.",
    )
    fig = plot.heatmaps(
        an["matrices"],
        phases=phases,
        ncols=3,
        panel=3.6,
        title=f"Checkpoint × checkpoint similarity through the stages (seed {seed})",
    )
    res.figure(fig, "heatmaps.png", "Similarity matrices of every metric (own colour scale each).")
    for label, filename in (
        ("tensor", "slices_tensor.png"),
        (DATA_GAUSSIAN, "slices_data_gaussian.png"),
    ):
        f = an["flag"][label]
        notes = {f"class {k}": f"Δ(−9)={v:.3f}" for k, v in f["deltas"].items()}
        fig = plot.slice_panels(
            {f"class {k}": m for k, m in an["slices"][label].items()},
            phases=phases,
            highlight=f"class {f['flagged']}" if f["clear"] else None,
            note=notes,
            title=f"{label}: similarity per class slice; Δ(−9) = contrast of stage −9 "
            "against the late half of the control stage",
        )
        res.figure(
            fig,
            filename,
            f"Per-class slices of {label}; the framed class (if any) is named as "
            "forgotten: largest contrast at the −9 boundary, by a margin ≥ 1.5.",
        )
    groups = {}
    for m in mets:
        if m.slices:
            d = an["flag"][m.label]["deltas"]
            top = max(d.values()) or 1.0
            groups[m.label] = {str(k): v / top for k, v in d.items()}
    fig = plot.bars(
        groups,
        highlight=str(FORGOTTEN),
        ylabel="Δ_k / max_k Δ_k",
        title="Per-class slice contrast at the forgetting boundary (control → −9), normalised per metric",
    )
    res.figure(
        fig,
        "class_contrasts.png",
        "Per-class contrasts at the forgetting boundary for each metric (largest = 1).",
    )
    means = {m.label: torch.tensor(an["stage_means"][m.label]) for m in mets}
    stage_phases = [(name, i, i + 1) for i, (name, _, _) in enumerate(phases)]
    fig = plot.heatmaps(
        means,
        phases=stage_phases,
        ncols=3,
        panel=3.6,
        title="Mean similarity between stages (block averages)",
    )
    res.figure(
        fig,
        "stage_means.png",
        "Stage × stage mean similarity: is stage −9 like stage +8, and +9 again like +9?",
    )


def returns_table(traj: C.Trajectory, an: dict) -> list[dict]:
    names = [p[0] for p in traj.phase_list]
    i8, i9, im, ia = (
        names.index("+8"),
        names.index("+9"),
        names.index("-9"),
        names.index("+9 again"),
    )
    rows = []
    for label in ("tensor", DATA_GAUSSIAN):
        for what, m in (
            ("whole model", an["matrices"][label]),
            ("class-9 slice", an["slices"][label][FORGOTTEN]),
        ):
            sm = C.stage_means(m, traj.phase_list)
            rows.append(
                {
                    "metric": label,
                    "part": what,
                    "-9 vs +8": sm[im][i8],
                    "-9 vs +9": sm[im][i9],
                    "+9 again vs +9": sm[ia][i9],
                    "+9 again vs -9": sm[ia][im],
                }
            )
    return rows


def report_md(summary: dict, traj: C.Trajectory, an: dict, cfg: dict) -> str:
    returns = returns_table(traj, an)
    rec = traj.records
    last = {p[0]: p[2] - 1 for p in traj.phase_list}
    n = len(cfg["seeds"])
    lines = [
        "## Result",
        "",
        f"Seed {cfg['seeds'][0]}: class-9 test accuracy {rec[last['+9']]['acc_9']:.3f} at the end of "
        f"stage +9, {rec[last['-9']]['acc_9']:.3f} after −9 (forgotten), "
        f"{rec[last['+9 again']]['acc_9']:.3f} after +9 again.",
        "",
        f"Naming the forgotten class (largest class-slice contrast at the control → −9 boundary; `names_9` "
        f"counts seeds, of {n}, where it is class 9 with margin ≥ 1.5; the control columns apply the "
        "same rule at the control boundary, where nothing changed):",
        "",
        C.markdown_table(summary["rows"]),
        "",
        "Contrast Δ of each stage against the late half of the previous one, whole model (mean over "
        "seeds; `control` is the null):",
        "",
        C.markdown_table(summary["stage_contrast"]),
        "",
        "The same class-slice rule at every stage boundary (`correct`: seeds where the flagged class is the class "
        "whose data changed, clearly; at the control boundary: seeds with no clear flag):",
        "",
        C.markdown_table(summary["boundaries"]),
        "",
        f"Does removing 9 return the model to where it was before 9 was added, and re-adding it to where "
        f"it was after? Block-mean similarities between stages (seed {cfg['seeds'][0]}):",
        "",
        C.markdown_table(returns),
        "",
        "Measures: tensor (= centred N(0, I) Gaussian for this bias-free model), Gaussian = raw N(0, I) "
        "second moment, matrix cosine (class slice: the read-out row of the class with the shared "
        "matrices), output cosine and CKA on the test images of all ten classes.",
    ]
    return "\n".join(lines)
