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

**The paper's setup** (second part, ``deep``): a two-layer bilinear MLP
``Sequential(Bilinear(64, h, m), Bilinear(m, h, 10))`` (no biases, no residual: a degree-4
polynomial whose exact comparisons stay affordable), weight decay 0.5, trained on all ten
classes, then a control stage, then class 9 removed until it is fully forgotten (test accuracy
on it near 0). The same metrics, rule and tables.
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
#: stages of the paper's setup (two-layer model, strong weight decay)
DEEP_STAGES = [("0-9", list(range(10))), ("control", list(range(10))), ("-9", list(range(9)))]
#: what a saved trajectory depends on besides the mode settings (part of its cache key)
IDENTITY = {"experiment": NAME, "stages": STAGES, "model": "Bilinear(64, h, 10)"}
DEEP_IDENTITY = {
    "experiment": NAME,
    "stages": DEEP_STAGES,
    "model": "Sequential(Bilinear(64, h, m), Bilinear(m, h, 10))",
}
#: what changed at the boundary into each stage (None: nothing, the control)
CHANGED = {"+5": 5, "+6": 6, "+7": 7, "+8": 8, "+9": 9, "-9": 9, "+9 again": 9, "control": None}

MODES = {
    "quick": dict(
        seeds=[0], hidden=16, stage_steps=150, every=30, batch=64, lr=5e-3, weight_decay=0.05,
        deep=dict(
            seeds=[0], hidden=8, mid=8, stage_steps=300, every=100, batch=64, lr=5e-3,
            weight_decay=0.5,
        ),
    ),
    "full": dict(
        seeds=[0, 1, 2, 3, 4],
        hidden=64,
        stage_steps=1000,
        every=100,
        batch=128,
        lr=3e-3,
        weight_decay=0.05,
        deep=dict(
            seeds=[0, 1, 2], hidden=24, mid=24, stage_steps=1500, every=250, batch=128, lr=3e-3,
            weight_decay=0.5,
        ),
    ),
}


DATA_GAUSSIAN = "Gaussian N(μ,Σ) of the data"


def metrics(test_x: torch.Tensor, train_x: torch.Tensor) -> list[C.Metric]:
    return [
        C.Metric("tensor", "tensor"),
        C.Metric("Gaussian N(0,I)", "gaussian"),
        C.data_gaussian(DATA_GAUSSIAN, train_x),
        C.Metric("matrix cosine", "matrix"),
        C.Metric("output cosine (test)", "output", {"data": test_x}),
        C.Metric("linear CKA (test)", "cka", {"data": test_x}, slices=False),
    ]


def shallow_model(cfg: dict) -> torch.nn.Module:
    """The one-layer model ``Bilinear(64, hidden, 10)``."""
    return Bilinear(64, cfg["hidden"], 10)


def deep_model(cfg: dict) -> torch.nn.Module:
    """The paper's two-layer model ``Sequential(Bilinear(64, hidden, mid), Bilinear(mid, hidden, 10))``."""
    return torch.nn.Sequential(
        Bilinear(64, cfg["hidden"], cfg["mid"]), Bilinear(cfg["mid"], cfg["hidden"], 10)
    )


def train(
    seed: int, cfg: dict, split: D.Split, progress: bool, stages=STAGES, build=shallow_model
) -> C.Trajectory:
    """Train ``build(cfg)`` through ``stages`` (name, classes), the optimizer carrying on."""
    torch.manual_seed(seed)
    model = build(cfg)
    per_class = {k: split.test.classes([k]) for k in range(10)}

    def evaluate(m):
        rec = {f"acc_{k}": C.accuracy(m, d) for k, d in per_class.items()}
        rec["accuracy"] = C.accuracy(m, split.test)
        return rec

    t = C.Trainer.from_config(model, cfg, seed, evaluate, progress)
    for name, classes in stages:
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
            name: C.contrast(mats[m.label], ref, post) for name, ref, post in blocks
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


def part(
    res: C.Output, cfg: dict, split: D.Split, mets, progress: bool, log, *, identity, stages,
    build, folder: str,
) -> tuple[dict, dict]:
    """Train (or reload) and analyse every seed of one setup; ``(runs, summary)``."""
    runs = C.seed_runs(
        res, cfg, identity, lambda s: train(s, cfg, split, progress, stages, build),
        lambda traj, s: analyse(traj, mets, progress, s), log=log, folder=folder,
    )
    return runs, summarise(runs, mets)


def part_results(runs: dict, summary: dict) -> dict:
    """What ``results.json`` keeps of one setup."""
    return {
        "summary": summary["rows"],
        "boundaries": summary["boundaries"],
        "stage_contrast": summary["stage_contrast"],
        "stage_means": {s: a["stage_means"] for s, (_, a) in runs.items()},
        **C.seed_records(runs),
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
    cfg, res = C.start(out, NAME, MODES, mode, command, seeds)
    deep_cfg = dict(cfg["deep"])
    if seeds is not None:
        deep_cfg["seeds"] = list(seeds)
    shallow_cfg = {k: v for k, v in cfg.items() if k != "deep"}
    split = D.digits(seed=0)
    mets = metrics(split.test.x, split.train.x)
    with C.threads(threads):
        runs, summary = part(
            res, shallow_cfg, split, mets, progress, log, identity=IDENTITY, stages=STAGES,
            build=shallow_model, folder="seed{}",
        )
        deep_runs, deep_summary = part(
            res, deep_cfg, split, mets, progress, log, identity=DEEP_IDENTITY,
            stages=DEEP_STAGES, build=deep_model, folder="deep/seed{}",
        )
    res.results.update(**part_results(runs, summary), deep=part_results(deep_runs, deep_summary))
    res.matrices = {**C.seed_matrices(runs), "deep": C.seed_matrices(deep_runs)}
    for prefix, summ in (("", summary), ("deep_", deep_summary)):
        res.table(f"{prefix}summary.csv", summ["rows"])
        res.table(f"{prefix}boundaries.csv", summ["boundaries"])
        res.table(f"{prefix}stage_contrast.csv", summ["stage_contrast"])
    traj0, an0 = runs[shallow_cfg["seeds"][0]]
    figures(res, traj0, an0, mets, shallow_cfg["seeds"][0], "one layer")
    dtraj0, dan0 = deep_runs[deep_cfg["seeds"][0]]
    figures(res, dtraj0, dan0, mets, deep_cfg["seeds"][0], "two layers, weight decay 0.5",
            prefix="deep_")
    res.finish(report_md(summary, traj0, an0, shallow_cfg) + "\n\n"
               + deep_report_md(deep_summary, dtraj0, deep_cfg))
    log(f"wrote {res.folder}/report.md")
    return {
        "rows": summary["rows"], "boundaries": summary["boundaries"],
        "stage_contrast": summary["stage_contrast"],
        "deep": {"rows": deep_summary["rows"], "boundaries": deep_summary["boundaries"],
                 "stage_contrast": deep_summary["stage_contrast"]},
        "folder": str(res.folder),
    }


def stage_contrast_rows(runs: dict, mets: list[C.Metric]) -> list[dict]:
    """Per metric and definition (Δ, Δ_paper, separation), the whole-model contrast of each
    stage against the late half of the previous one (mean over seeds)."""
    seeds = list(runs)
    rows = []
    for m in mets:
        cs = [runs[s][1]["contrast"][m.label] for s in seeds]
        for key in ("delta", "delta_paper", "separation"):
            rows.append({"metric": m.label, "quantity": key,
                         **{b: C.mean_sd(c[b][key] for c in cs)[0] for b in cs[0]}})
    return rows


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
    return {"rows": rows, "boundaries": bounds, "stage_contrast": stage_contrast_rows(runs, mets)}


def accuracy_series(traj: C.Trajectory) -> dict[str, list[float]]:
    """Test accuracy of each class whose presence changes between stages, and the mean of the
    classes present throughout."""
    stages = {name: set(classes) for name, classes in (STAGES + DEEP_STAGES)}
    present = [stages[name] for name, _, _ in traj.phase_list]
    always = sorted(set.intersection(*present))
    series = {f"class {k}": traj.column(f"acc_{k}") for k in range(10) if k not in always}
    label = f"classes {always[0]}-{always[-1]} (mean)"
    series[label] = [sum(r[f"acc_{k}"] for k in always) / len(always) for r in traj.records]
    return series


def figures(
    res: C.Output, traj: C.Trajectory, an: dict, mets: list[C.Metric], seed: int, setup: str,
    prefix: str = "",
) -> None:
    """Figures of one setup (``setup`` names it in the titles; file names start with ``prefix``)."""
    from .. import plot

    phases = traj.phase_list
    fig = plot.curves(
        accuracy_series(traj),
        phases=phases,
        ylim=(-0.02, 1.02),
        ylabel="test accuracy",
        title=f"Per-class test accuracy through the stages ({setup}, seed {seed})",
        width=8,
    )
    res.figure(
        fig,
        f"{prefix}training.png",
        f"Test accuracy per class ({setup}): a class is learnt when added; class 9 is forgotten "
        "in stage −9.",
    )
    fig = plot.heatmaps(
        an["matrices"],
        phases=phases,
        ncols=3,
        panel=3.6,
        title=f"Checkpoint × checkpoint similarity through the stages ({setup}, seed {seed})",
    )
    res.figure(fig, f"{prefix}heatmaps.png",
               f"Similarity matrices of every metric ({setup}; own colour scale each).")
    for label, filename in (
        ("tensor", f"{prefix}slices_tensor.png"),
        (DATA_GAUSSIAN, f"{prefix}slices_data_gaussian.png"),
    ):
        f = an["flag"][label]
        notes = {f"class {k}": f"Δ(−9)={v:.3f}" for k, v in f["deltas"].items()}
        fig = plot.slice_panels(
            {f"class {k}": m for k, m in an["slices"][label].items()},
            phases=phases,
            highlight=f"class {f['flagged']}" if f["clear"] else None,
            note=notes,
            title=f"{label} ({setup}): similarity per class slice; Δ(−9) = contrast of "
            "stage −9 against the late half of the control stage",
        )
        res.figure(
            fig,
            filename,
            f"Per-class slices of {label}; the framed class (if any) is named as "
            "forgotten: largest contrast at the −9 boundary, by a margin ≥ 1.5.",
        )
    fig = C.class_contrast_bars(
        {m.label: an["flag"][m.label]["deltas"] for m in mets if m.slices},
        FORGOTTEN,
        f"Class-slice contrast at control → −9 ({setup}), normalised per metric",
    )
    res.figure(
        fig,
        f"{prefix}class_contrasts.png",
        "Per-class contrasts at the forgetting boundary for each metric (largest = 1).",
    )
    means = {m.label: torch.tensor(an["stage_means"][m.label]) for m in mets}
    stage_phases = [(name, i, i + 1) for i, (name, _, _) in enumerate(phases)]
    fig = plot.heatmaps(
        means,
        phases=stage_phases,
        ncols=3,
        panel=3.6,
        title=f"Mean similarity between stages (block averages, {setup})",
    )
    res.figure(
        fig,
        f"{prefix}stage_means.png",
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


def findings_md(summary: dict, n: int) -> list[str]:
    """The tables every setup reports: naming the forgotten class, whole-model contrasts at
    every boundary (Δ, Δ_paper, separation), the class-slice rule at every boundary."""
    return [
        f"Naming the forgotten class (largest class-slice contrast at the control → −9 boundary; "
        f"`names_9` counts seeds, of {n}, where it is class 9 with margin ≥ 1.5; the control "
        "columns apply the same rule at the control boundary, where nothing changed):",
        "",
        C.markdown_table(summary["rows"]),
        "",
        "Contrast of each stage against the late half of the previous one, whole model (mean over "
        "seeds; `control` is the null); one row per definition:",
        "",
        C.markdown_table(summary["stage_contrast"]),
        "",
        C.CONTRAST_DEFINITIONS,
        "",
        "The same class-slice rule at every stage boundary (`correct`: seeds where the flagged "
        "class is the class whose data changed, clearly; at the control boundary: seeds with no "
        "clear flag):",
        "",
        C.markdown_table(summary["boundaries"]),
    ]


MEASURES_NOTE = (
    "Measures: tensor (= centred N(0, I) Gaussian for a bias-free one-layer model), Gaussian = "
    "raw N(0, I) second moment, matrix cosine (class slice: the read-out row of the class with "
    "the shared matrices), output cosine and CKA on the test images of all ten classes."
)


def report_md(summary: dict, traj: C.Trajectory, an: dict, cfg: dict) -> str:
    returns = returns_table(traj, an)
    rec = traj.records
    last = {p[0]: p[2] - 1 for p in traj.phase_list}
    lines = [
        "## Result: one layer, classes added one at a time",
        "",
        f"Seed {cfg['seeds'][0]}: class-9 test accuracy {rec[last['+9']]['acc_9']:.3f} at the end of "
        f"stage +9, {rec[last['-9']]['acc_9']:.3f} after −9 (forgotten), "
        f"{rec[last['+9 again']]['acc_9']:.3f} after +9 again.",
        "",
        *findings_md(summary, len(cfg["seeds"])),
        "",
        f"Does removing 9 return the model to where it was before 9 was added, and re-adding it to "
        f"where it was after? Block-mean similarities between stages (seed {cfg['seeds'][0]}):",
        "",
        C.markdown_table(returns),
        "",
        MEASURES_NOTE,
    ]
    return "\n".join(lines)


def deep_report_md(summary: dict, traj: C.Trajectory, cfg: dict) -> str:
    rec = traj.records
    last = {p[0]: p[2] - 1 for p in traj.phase_list}
    acc9 = [r["acc_9"] for r in rec]
    lines = [
        "## Result: the paper's setup (two layers, weight decay 0.5, class 9 fully removed)",
        "",
        f"`Sequential(Bilinear(64, {cfg['hidden']}, {cfg['mid']}), Bilinear({cfg['mid']}, "
        f"{cfg['hidden']}, 10))`, weight decay {cfg['weight_decay']}, stages of "
        f"{cfg['stage_steps']} steps. Seed {cfg['seeds'][0]}: class-9 test accuracy "
        f"{rec[last['control']]['acc_9']:.3f} at the end of the control stage, "
        f"{rec[last['-9']]['acc_9']:.3f} at the end of −9 (lowest in −9: "
        f"{min(acc9[traj.indices('-9')[0]:]):.3f}); accuracy on classes 0–8 "
        f"{sum(rec[last['-9']][f'acc_{k}'] for k in range(9)) / 9:.3f}.",
        "",
        *findings_md(summary, len(cfg["seeds"])),
        "",
        MEASURES_NOTE,
    ]
    return "\n".join(lines)
