r"""Distributions, teacher variant: a random teacher's labels, students trained on a mixture.

Task: a fixed random *teacher* labels every input of :math:`\mathbb R^{16}` with the argmax of
four logits that are a quadratic form plus a substantial linear part (a ``Bilinear(16, 8, 4,
bias=True)`` with large biases). The linear (odd) part matters: a bias-free bilinear model is an
even function, :math:`f(-x) = f(x)`, and cannot separate :math:`x` from :math:`-x`, so under
sign-symmetric distributions (Gaussian, uniform, Rademacher, ...) it could never solve a task
with an odd component. Students are ``Bilinear(16, 32, 4, bias=True)`` — the same family, so the
task is solvable under *every* distribution — trained on a mixture of all nine distributions
(equal shares per batch). The pairs compared are all pairs of checkpoints of several seeds
(several training lengths each), which spreads their similarities out.

The nine input distributions are those of :func:`tnsim.data.sample`; "data" is scikit-learn's
digits projected on their 16 leading principal components (centred, scaled to average variance
1, not whitened), "data_noise" adds :math:`\mathcal N(0, 0.5^2 I)`.

For every distribution, across all pairs: the Pearson and Spearman correlation of the empirical
output cosine under that distribution (the behaviour, on ``samples`` inputs) with (i) tensor
similarity, (ii) the Gaussian similarity under :math:`\mathcal N(0, I)` and (iii) the Gaussian
similarity under the Gaussian with the distribution's own mean and covariance (exact, from the
weights). Outputs are compared after removing their mean over classes (the projection
:math:`I - \tfrac1C\mathbf 1\mathbf 1^\top`: softmax ignores a shift common to all logits).
Accuracies (agreement with the teacher) of the students under each distribution are reported
beside the correlations, with the majority-class rate.
"""

from __future__ import annotations

import torch

from .. import data as D
from ..nn import Bilinear
from . import common as C

NAME = "distributions_teacher"
DIM, CLASSES = 16, 4
#: what a saved trajectory depends on besides the mode settings (part of its cache key)
IDENTITY = {
    "experiment": NAME,
    "distributions": list(D.DISTRIBUTIONS),
    "dim": DIM,
    "classes": CLASSES,
}

MODES = {
    "quick": dict(
        seeds=[0, 1],
        hidden=32,
        steps=[30, 100, 400],
        batch=252,
        lr=1e-2,
        samples=3_000,
        teacher_hidden=8,
        teacher_bias_scale=1.0,
    ),
    "full": dict(
        seeds=[0, 1, 2, 3, 4, 5],
        hidden=32,
        steps=[25, 50, 100, 200, 400, 800, 1600, 3200],
        batch=504,
        lr=1e-2,
        samples=50_000,
        teacher_hidden=8,
        teacher_bias_scale=1.0,
    ),
}


def digits_pca(d: int = DIM) -> torch.Tensor:
    """Digits on their ``d`` leading principal components, centred, mean variance 1."""
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().data / 16.0, dtype=torch.float64)
    x = x - x.mean(0)
    _, _, vt = torch.linalg.svd(x, full_matrices=False)
    z = x @ vt[:d].T
    return (z / z.var(0).mean().sqrt()).to(torch.float32)


def mixture(per: int, g: torch.Generator, pca: torch.Tensor) -> torch.Tensor:
    """``per`` samples of each of the nine distributions, concatenated."""
    return torch.cat([D.sample(n, per, DIM, g, data=pca) for n in D.DISTRIBUTIONS])


def teacher(cfg: dict, pca: torch.Tensor) -> Bilinear:
    """The fixed random labelling function; its read-out bias centres the logits on the mixture
    (so that no class dominates)."""
    torch.manual_seed(1234)
    t = Bilinear(DIM, cfg["teacher_hidden"], CLASSES, bias=True)
    with torch.no_grad():
        for lin in (t.left, t.right):
            lin.weight.normal_(0, DIM**-0.5)
            lin.bias.normal_(0, cfg["teacher_bias_scale"])
        t.down.weight.normal_(0, 1.0)
        t.down.bias.zero_()
        t.down.bias.copy_(-t(mixture(4000, torch.Generator().manual_seed(4321), pca)).mean(0))
    return t.eval()


def odd_share(f, n: int = 100_000) -> float:
    """Share of the variance of ``f``'s centred logits under N(0, I) in their odd part."""
    x = torch.randn(n, DIM, generator=torch.Generator().manual_seed(5))
    p = centring().to(torch.float32)
    with torch.no_grad():
        a, b = f(x) @ p, f(-x) @ p
    odd, even = (a - b) / 2, (a + b) / 2
    return float(odd.var(0).sum() / (odd.var(0).sum() + even.var(0).sum()))


def centring(c: int = CLASSES) -> torch.Tensor:
    return torch.eye(c, dtype=torch.float64) - 1.0 / c


def train(
    seed: int, cfg: dict, teach: Bilinear, pca: torch.Tensor, progress: bool, bias: bool = True
) -> C.Trajectory:
    torch.manual_seed(seed)
    model = Bilinear(DIM, cfg["hidden"], CLASSES, bias=bias)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=1e-4)
    g = torch.Generator().manual_seed(10_000 + seed)
    per = cfg["batch"] // len(D.DISTRIBUTIONS)
    traj = C.Trajectory()
    traj.begin("training")
    marks = set(cfg["steps"])
    for step in C.bar(
        range(1, max(marks) + 1), desc=f"seed {seed}: student", enabled=progress, unit="step"
    ):
        x = mixture(per, g, pca)
        with torch.no_grad():
            y = teach(x).argmax(1)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(
            model.parameters(), 5.0
        )  # heavy-tailed inputs: rare huge steps
        opt.step()
        if step in marks:
            traj.add(model, step=step, seed=seed)
    traj.end()
    return traj


def run(
    out,
    mode: str = "full",
    progress: bool = True,
    log=print,
    threads: int | None = 1,
    command: str | None = None,
    seeds=None,
) -> dict:
    from .. import baselines, similarity_matrix

    cfg, res = C.start(out, NAME, MODES, mode, command, seeds)
    pca = digits_pca()
    teach = teacher(cfg, pca)
    proj = centring()
    with C.threads(threads):
        # control: a bias-free (even) student, trained the same way, cannot learn the odd part
        even = C.trajectory(
            res, cfg, IDENTITY, 0, lambda s: train(s, cfg, teach, pca, progress, bias=False),
            log=log, folder="even", even=True,
        ).models[-1]
        models, labels = [], []
        for seed in cfg["seeds"]:
            traj = C.trajectory(
                res, cfg, IDENTITY, seed, lambda s: train(s, cfg, teach, pca, progress), log=log
            )
            models += traj.models
            labels += [f"s{r['seed']}@{r['step']}" for r in traj.records]
        n = len(models)
        iu = torch.triu_indices(n, n, 1)
        pairs = lambda m: m[iu[0], iu[1]]  # noqa: E731
        # the trained subset: checkpoints from the second half of training (similar, subtle pairs)
        late_steps = set(cfg["steps"][len(cfg["steps"]) // 2 :])
        late = torch.tensor([int(lab.split("@")[1]) in late_steps for lab in labels])
        trained = late[iu[0]] & late[iu[1]]
        weight = {
            "tensor": similarity_matrix(models, measure="tensor", outputs=proj),
            "Gaussian N(0,I)": similarity_matrix(models, measure="gaussian", outputs=proj),
        }
        rows, acc_rows, mats = [], [], dict(weight)
        for name in C.bar(D.DISTRIBUTIONS, desc="distributions", enabled=progress, unit="dist"):
            behaviour = baselines.output_cosine_matrix(
                models, distribution=name, n=cfg["samples"], seed=7, data=pca, outputs=proj
            )
            mean, cov = D.moments(name, DIM, pca)
            matched = similarity_matrix(
                models, measure="gaussian", mean=mean, cov=cov, outputs=proj
            )
            mats[f"output cosine [{name}]"] = behaviour
            mats[f"Gaussian matched [{name}]"] = matched
            b = pairs(behaviour)
            row = {"distribution": name}
            for label, m in (
                ("tensor", weight["tensor"]),
                ("gaussian", weight["Gaussian N(0,I)"]),
                ("matched", matched),
            ):
                row[f"pearson_{label}"] = C.pearson(pairs(m), b)
                row[f"spearman_{label}"] = C.spearman(pairs(m), b)
                row[f"spearman_{label}_trained"] = C.spearman(pairs(m)[trained], b[trained])
            row["mean_abs_diff_matched"] = float((pairs(matched) - b).abs().mean())
            row["behaviour_min"], row["behaviour_max"] = float(b.min()), float(b.max())
            g = torch.Generator().manual_seed(99)
            x = D.sample(name, cfg["samples"], DIM, g, data=pca)
            with torch.no_grad():
                y = teach(x).argmax(1)
                accs = [float((m(x).argmax(1) == y).float().mean()) for m in models]
                even_acc = float((even(x).argmax(1) == y).float().mean())
            finals = [a for a, lab in zip(accs, labels) if lab.endswith(f"@{max(cfg['steps'])}")]
            majority = float(torch.bincount(y, minlength=CLASSES).max()) / len(y)
            row["accuracy_final"] = sum(finals) / len(finals)
            row["accuracy_even_control"] = even_acc
            row["majority_rate"] = majority
            rows.append(row)
            acc_rows.append(
                {
                    "distribution": name,
                    "majority_rate": majority,
                    **{lab: a for lab, a in zip(labels, accs)},
                }
            )
    share = odd_share(teach)
    res.results.update(
        correlations=rows,
        accuracies=acc_rows,
        models=labels,
        pairs=len(iu[0]),
        trained_pairs=int(trained.sum()),
        teacher_odd_share=share,
    )
    res.matrices = mats
    res.table("correlations.csv", rows)
    res.table("accuracies.csv", acc_rows)
    figures(res, rows, mats, pairs)
    res.finish(report_md(rows, cfg, n, len(iu[0]), int(trained.sum()), share))
    log(f"wrote {res.folder}/report.md")
    return {"rows": rows, "folder": str(res.folder)}


def figures(res: C.Output, rows: list[dict], mats: dict, pairs) -> None:
    from .. import plot

    fig = plot.figure(10, 8.4)
    axes = fig.subplots(3, 3).ravel()
    t = pairs(mats["tensor"]).numpy()
    for ax, row in zip(axes, rows):
        name = row["distribution"]
        ax.scatter(
            t, pairs(mats[f"output cosine [{name}]"]).numpy(), s=4, alpha=0.5, label="tensor"
        )
        ax.scatter(
            pairs(mats[f"Gaussian matched [{name}]"]).numpy(),
            pairs(mats[f"output cosine [{name}]"]).numpy(),
            s=4,
            alpha=0.5,
            label="matched Gaussian",
        )
        lo = min(t.min(), float(pairs(mats[f"output cosine [{name}]"]).min()))
        ax.plot([lo, 1], [lo, 1], color="black", lw=0.6, ls="--")
        ax.set_title(
            f"{name}: ρ_tensor={row['spearman_tensor']:.2f}, ρ_matched={row['spearman_matched']:.2f}\n"
            f"student accuracy {row['accuracy_final']:.2f} (majority {row['majority_rate']:.2f})",
            fontsize=8,
        )
        ax.tick_params(labelsize=7)
        ax.set_xlabel("weight-based similarity", fontsize=7)
        ax.set_ylabel("output cosine", fontsize=7)
    axes[0].legend(fontsize=7, markerscale=3)
    fig.suptitle(
        "Weight-based similarity (x) vs empirical output cosine (y) over all model pairs",
        fontsize=10,
    )
    res.figure(fig, "scatter.png", "Each point is a pair of students; ρ = Spearman correlation.")
    groups = {
        lab: {r["distribution"]: r[f"spearman_{key}"] for r in rows}
        for lab, key in (
            ("tensor", "tensor"),
            ("Gaussian N(0,I)", "gaussian"),
            ("Gaussian, matched moments", "matched"),
        )
    }
    fig = plot.bars(
        groups,
        ylabel="Spearman ρ with output cosine",
        width=9,
        title="Does the weight-based similarity rank pairs like their behaviour does?",
    )
    res.figure(
        fig, "correlations.png", "Spearman correlation with the output cosine, per distribution."
    )


def report_md(rows: list[dict], cfg: dict, n: int, npairs: int, ntrained: int, share: float) -> str:
    cols = [
        "distribution",
        "spearman_tensor",
        "pearson_tensor",
        "spearman_gaussian",
        "spearman_matched",
        "pearson_matched",
        "mean_abs_diff_matched",
        "accuracy_final",
        "accuracy_even_control",
        "majority_rate",
    ]
    cols2 = [
        "distribution",
        "spearman_tensor_trained",
        "spearman_gaussian_trained",
        "spearman_matched_trained",
    ]
    return "\n".join(
        [
            "## Result",
            "",
            f"The teacher's odd part carries {100 * share:.0f}% of the variance of its (class-centred) logits "
            "under N(0, I); `accuracy_even_control` is a bias-free (even) student trained the same way.",
            "",
            f"{n} students ({len(cfg['seeds'])} seeds × checkpoints at steps {cfg['steps']}), {npairs} pairs; "
            f"behaviour = output cosine on {cfg['samples']} samples of each distribution. `accuracy_final` "
            "is the mean agreement of the fully trained students with the teacher under that distribution.",
            "",
            C.markdown_table(rows, cols),
            "",
            f"The same correlations over the {ntrained} pairs of trained students only (checkpoints from the "
            "second half of training, whose similarities are all high and differ subtly):",
            "",
            C.markdown_table(rows, cols2),
            "",
            "`matched` = tnsim's exact Gaussian similarity with the distribution's mean and covariance; "
            "`mean_abs_diff_matched` = its mean absolute difference from the output cosine over pairs "
            "(zero up to sampling error for Gaussian distributions, since it is then the same quantity).",
        ]
    )
