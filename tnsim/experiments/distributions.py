r"""Distributions: tensor similarity vs output cosine for models trained on nine input distributions.

The paper's experiment, rebuilt from the definitions in the authors' public research code (read,
not copied). A one-layer bilinear model without residual or biases,
:math:`f(x) = D(Lx\odot Rx)` with :math:`x\in\mathbb R^4`, 32 hidden units and 4 outputs, learns
*the index of the second-largest input* (4-way classification, cross-entropy). For each of nine
input distributions, 5 seeds are trained with Adam (lr 0.01, batch 512, 4096 steps, weights
initialised :math:`\mathcal N(0, 0.1^2)`), checkpointed at steps 0, 1, 2, 4, ..., 4096 (14 each):
70 models and 2415 pairs per distribution.

For every pair the behaviour is the (uncentred) output cosine over 50 000 samples of that
distribution, :math:`\sum_n f_a(x_n)\cdot f_b(x_n) / \sqrt{\sum_n|f_a(x_n)|^2\sum_n|f_b(x_n)|^2}`,
and the weight-based metrics are

* ``tensor``: the cosine of the symmetrised tensors (isotropic: no distribution);
* ``Σ-generalised`` (the authors' covariance-generalised tensor similarity): the inner product
  :math:`\sum_o \operatorname{tr}(T_a^o\Sigma T_b^o\Sigma)` with the distribution's covariance
  :math:`\Sigma` on both input legs, normalised. For a quadratic form it is the output
  covariance under :math:`\mathcal N(0,\Sigma)`, so tnsim computes it as the centred Gaussian
  similarity with ``cov=Σ``;
* ``N(μ,Σ)``: tnsim's exact raw second moment :math:`E[f_a\cdot f_b]` under the Gaussian with the
  distribution's mean *and* covariance — the Gaussian counterpart of the uncentred output cosine;
* ``product measure`` (exact, non-Gaussian): tnsim's exact :math:`E[f_a\cdot f_b]` under
  :class:`tnsim.ProductMeasure` with the distribution's exact marginals (:func:`marginal`). For
  the seven distributions with independent coordinates this is the sampled distribution's own
  second moment; for ``permutation`` and ``correlated_gaussian`` it is the product of their
  marginals (the dependence is dropped).

Reported per distribution: the Pearson r (and Spearman ρ) of each metric with the output cosine
over the 2415 pairs, and the final accuracy (mean over seeds on 50 000 fresh samples).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

import tnsim

from ..errors import InvalidArgumentError, ShapeMismatchError
from ..nn import Bilinear
from . import common as C

NAME = "distributions"
DIM = 4  #: inputs (and classes)
DISTRIBUTIONS = (
    "gaussian",
    "half_gaussian",
    "bimodal",
    "uniform",
    "laplace",
    "sparse_spikes",
    "permutation",
    "correlated_gaussian",
    "neg10_last_gaussian",
)
BIMODAL_NOISE = 0.3  #: standard deviation around ±1 under ``bimodal``
SPIKE_P = 0.25  #: probability that a coordinate is non-zero under ``sparse_spikes``
AR_RHO = 0.8  #: ``correlated_gaussian``: :math:`\Sigma_{ij} = 0.8^{|i-j|}`
LAST_VALUE = -10.0  #: the constant last coordinate of ``neg10_last_gaussian``
#: distributions whose coordinates are independent (an exact product measure applies)
INDEPENDENT = tuple(n for n in DISTRIBUTIONS if n not in ("permutation", "correlated_gaussian"))
#: what a saved trajectory depends on besides the mode settings (part of its cache key)
IDENTITY = {"experiment": NAME, "model": "Bilinear(4, 32, 4), no bias, N(0, 0.01) init", "v": 1}

MODES = {
    "quick": dict(
        seeds=[0, 1],
        hidden=32,
        steps=[0, 1, 4, 16, 64, 256],
        batch=512,
        lr=1e-2,
        init_std=0.1,
        samples=5_000,
        distributions=list(DISTRIBUTIONS),
    ),
    "full": dict(
        seeds=[0, 1, 2, 3, 4],
        hidden=32,
        steps=[0] + [2**k for k in range(13)],
        batch=512,
        lr=1e-2,
        init_std=0.1,
        samples=50_000,
        distributions=list(DISTRIBUTIONS),
    ),
}


# --- the nine distributions ------------------------------------------------------------------


def _check(name: str) -> None:
    if name not in DISTRIBUTIONS:
        raise InvalidArgumentError(f"distribution: unknown {name!r}; use one of {', '.join(DISTRIBUTIONS)}")


def ar1(d: int, rho: float = AR_RHO) -> torch.Tensor:
    r""":math:`\Sigma_{ij} = \rho^{|i-j|}` (float64)."""
    i = torch.arange(d, dtype=torch.float64)
    return rho ** (i[:, None] - i[None, :]).abs()


def sample(name: str, n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    r"""``n`` samples (float32, shape ``(n, d)``) of one of the nine distributions.

    ======================= ==================================================================
    ``gaussian``            :math:`\mathcal N(0, I)`
    ``half_gaussian``       :math:`|z|`, :math:`z\sim\mathcal N(0, I)`
    ``bimodal``             :math:`s + 0.3z`, :math:`s = \pm1` with equal probability
    ``uniform``             :math:`U(-1, 1)` per coordinate
    ``laplace``             Laplace with scale :math:`1/\sqrt2` (variance 1)
    ``sparse_spikes``       :math:`z/\sqrt{p}` with probability :math:`p = 0.25`, else 0
    ``permutation``         a uniformly random ordering of :math:`1, 2, \dots, d`
    ``correlated_gaussian`` :math:`\mathcal N(0, \Sigma)`, :math:`\Sigma_{ij} = 0.8^{|i-j|}`
    ``neg10_last_gaussian`` :math:`\mathcal N(0, 1)` in the first :math:`d-1` coordinates, the
                            last always :math:`-10`
    ======================= ==================================================================
    """
    _check(name)
    kw = dict(generator=generator, dtype=torch.float32)
    if name == "gaussian":
        return torch.randn(n, d, **kw)
    if name == "half_gaussian":
        return torch.randn(n, d, **kw).abs()
    if name == "bimodal":
        signs = torch.randint(0, 2, (n, d), generator=generator).float() * 2 - 1
        return signs + BIMODAL_NOISE * torch.randn(n, d, **kw)
    if name == "uniform":
        return torch.rand(n, d, **kw) * 2 - 1
    if name == "laplace":  # b (E1 - E2) with E ~ Exp(1) is Laplace(0, b)
        e1, e2 = (-torch.log1p(-torch.rand(n, d, **kw)) for _ in range(2))
        return (e1 - e2) / math.sqrt(2)
    if name == "sparse_spikes":
        mask = (torch.rand(n, d, **kw) < SPIKE_P).float()
        return mask * torch.randn(n, d, **kw) / math.sqrt(SPIKE_P)
    if name == "permutation":
        return torch.argsort(torch.rand(n, d, **kw), dim=1).float() + 1
    if name == "correlated_gaussian":
        chol = torch.linalg.cholesky(ar1(d)).float()
        return torch.randn(n, d, **kw) @ chol.T
    x = torch.randn(n, d, **kw)  # neg10_last_gaussian
    x[:, -1] = LAST_VALUE
    return x


def moments(name: str, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Exact mean and covariance (float64) of a distribution of :func:`sample`.

    half-Gaussian: mean :math:`\sqrt{2/\pi}`, variance :math:`1 - 2/\pi`; bimodal: variance
    :math:`1 + 0.3^2`; uniform: :math:`1/3`; permutation of :math:`1..d`: mean :math:`(d+1)/2`,
    variance :math:`(d^2-1)/12`, covariance :math:`-(d+1)/12` (the sum is constant).
    """
    _check(name)
    eye = torch.eye(d, dtype=torch.float64)
    zero = torch.zeros(d, dtype=torch.float64)
    if name in ("gaussian", "laplace", "sparse_spikes"):
        return zero, eye
    if name == "half_gaussian":
        return zero + math.sqrt(2 / math.pi), eye * (1 - 2 / math.pi)
    if name == "bimodal":
        return zero, eye * (1 + BIMODAL_NOISE**2)
    if name == "uniform":
        return zero, eye / 3
    if name == "permutation":
        var, off = (d * d - 1) / 12, -(d + 1) / 12
        return zero + (d + 1) / 2, eye * (var - off) + off
    if name == "correlated_gaussian":
        return zero, ar1(d)
    mean, cov = zero.clone(), eye.clone()  # neg10_last_gaussian
    mean[-1], cov[-1, -1] = LAST_VALUE, 0.0
    return mean, cov


def sampler(name: str, d: int = DIM) -> Callable[[int, torch.Generator], torch.Tensor]:
    """``fn(count, generator)`` drawing from ``name`` (for :mod:`tnsim.baselines`)."""
    _check(name)
    return lambda count, g: sample(name, count, d, g)


# --- the task and the model ------------------------------------------------------------------


def second_largest(x: torch.Tensor) -> torch.Tensor:
    """Index of the second-largest entry of each row of ``x`` (shape ``(n, d)``, ``d >= 2``).

    Ties are ordered by index (of equal values the one with the higher index counts as larger),
    so every row has exactly one answer; ties only occur under ``sparse_spikes`` (exact zeros).
    """
    if x.dim() != 2 or x.shape[1] < 2:
        raise ShapeMismatchError(f"x: need shape (n, d) with d >= 2, got {tuple(x.shape)}")
    return torch.argsort(x, dim=1, stable=True)[:, -2]


def model(seed: int, cfg: dict) -> Bilinear:
    """The untrained ``Bilinear(4, hidden, 4)`` of seed ``seed``, weights :math:`\\mathcal N(0,
    \\text{init\\_std}^2)`."""
    torch.manual_seed(seed)
    m = Bilinear(DIM, cfg["hidden"], DIM)
    with torch.no_grad():
        for lin in (m.left, m.right, m.down):
            lin.weight.normal_(0, cfg["init_std"])
    return m


def accuracy(f: torch.nn.Module, name: str, n: int, seed: int = 99) -> float:
    """Accuracy of ``f`` on ``n`` fresh samples of ``name``."""
    x = sample(name, n, DIM, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return float((f(x).argmax(1) == second_largest(x)).float().mean())


def train(name: str, seed: int, cfg: dict, progress: bool) -> C.Trajectory:
    """Adam on fresh batches of ``name``; a checkpoint at every step in ``cfg["steps"]``."""
    f = model(seed, cfg)
    opt = torch.optim.Adam(f.parameters(), lr=cfg["lr"])
    g = torch.Generator().manual_seed(1000 * (DISTRIBUTIONS.index(name) + 1) + seed)
    marks = set(cfg["steps"])
    traj = C.Trajectory()
    traj.begin(name)
    if 0 in marks:
        traj.add(f, step=0, seed=seed)
    for step in C.bar(
        range(1, max(marks) + 1), desc=f"{name} seed {seed}", enabled=progress, unit="step"
    ):
        x = sample(name, cfg["batch"], DIM, g)
        loss = torch.nn.functional.cross_entropy(f(x), second_largest(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step in marks:
            traj.add(f, step=step, seed=seed)
    traj.end()
    return traj


# --- metrics ---------------------------------------------------------------------------------


RULE_POINTS = 5  #: nodes of the moment-matched rules of :func:`marginal` (moments ≤ 9 exact)


def gauss_rule(moments: torch.Tensor, points: int = RULE_POINTS) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The ``points``-node Gauss rule of a distribution given its raw moments.

    Parameters
    ----------
    moments
        :math:`m_0 = 1, m_1, \dots, m_{2k-1}` (at least ``2 * points`` values, float64).
    points
        Number of nodes :math:`k`.

    Returns
    -------
    nodes, weights
        Real nodes and positive weights (shape ``(points,)``) whose moments
        :math:`\sum_j w_j x_j^n` equal :math:`m_n` for every :math:`n \le 2k - 1`: the roots
        of the monic orthogonal polynomial of degree :math:`k` and the weights that reproduce
        :math:`m_0, \dots, m_{k-1}`.
    """
    m = torch.as_tensor(moments, dtype=torch.float64)
    k = points
    if m.numel() < 2 * k:
        raise ShapeMismatchError(f"moments: need {2 * k} values for {k} nodes, got {m.numel()}")
    hankel = torch.stack([m[i : i + k] for i in range(k)])
    coef = torch.linalg.solve(hankel, -m[k : 2 * k])  # p(x) = x^k + sum_j coef_j x^j
    companion = torch.zeros(k, k, dtype=torch.float64)
    companion[1:, :-1] = torch.eye(k - 1, dtype=torch.float64)
    companion[:, -1] = -coef
    nodes = torch.linalg.eigvals(companion).real.sort().values
    vander = torch.stack([nodes**n for n in range(k)])
    return nodes, torch.linalg.solve(vander, m[:k])


def _normal_moments(order: int, std: float = 1.0) -> torch.Tensor:
    r"""Raw moments :math:`E z^n = (n-1)!!\,\sigma^n` (odd: 0) of :math:`N(0, \sigma^2)`, ``n = 0..order``."""
    return torch.tensor(
        [0.0 if n % 2 else math.prod(range(n - 1, 0, -2)) * std**n for n in range(order + 1)],
        dtype=torch.float64,
    )


def marginal_moments(name: str, order: int) -> torch.Tensor:
    r"""Exact raw moments ``m_0..m_order`` of one coordinate of ``half_gaussian``, ``bimodal`` or
    ``sparse_spikes`` (float64).

    half-Gaussian: :math:`E|z|^n = 2^{n/2}\Gamma(\tfrac{n+1}2)/\sqrt\pi`; bimodal
    :math:`s + \sigma z`: :math:`\sum_{j \text{ even}}\binom nj \sigma^j (j-1)!!` over
    :math:`n - j` even; sparse spikes :math:`z/\sqrt p` with probability :math:`p`:
    :math:`m_n = p^{1-n/2}(n-1)!!` for even :math:`n \ge 2`, odd moments 0.
    """
    if name == "half_gaussian":
        return torch.tensor(
            [2 ** (n / 2) * math.gamma((n + 1) / 2) / math.sqrt(math.pi) for n in range(order + 1)],
            dtype=torch.float64,
        )
    z = _normal_moments(order)
    if name == "bimodal":
        return torch.tensor(
            [sum(math.comb(n, j) * BIMODAL_NOISE**j * float(z[j]) for j in range(0, n + 1, 2)
                 if (n - j) % 2 == 0) for n in range(order + 1)],
            dtype=torch.float64,
        )
    if name == "sparse_spikes":
        m = z * SPIKE_P ** (1 - torch.arange(order + 1, dtype=torch.float64) / 2)
        m[0] = 1.0
        return m
    raise InvalidArgumentError(f"marginal_moments: no table for {name!r}")


#: how :func:`marginal` builds each product measure (reported with the results)
MARGINALS = {
    "gaussian": "N(0, 1) (closed form)",
    "half_gaussian": "folded N(0, 1) (5-node rule, moments ≤ 9 exact)",
    "bimodal": "±1 + 0.3 N(0, 1) (5-node rule, moments ≤ 9 exact)",
    "uniform": "U(−1, 1) (closed form)",
    "laplace": "Laplace(0, 1/√2) (closed form)",
    "sparse_spikes": "0 or N(0, 4) (5-node rule, moments ≤ 9 exact)",
    "permutation": "uniform on {1, 2, 3, 4}: marginals only, dependence dropped",
    "correlated_gaussian": "N(0, 1): marginals only, dependence dropped",
    "neg10_last_gaussian": "N(0, 1) × 3 (5-node rule) and the point −10",
}


def marginal(name: str, d: int = DIM) -> tnsim.ProductMeasure:
    r"""The product measure with the exact marginals of ``name`` (see :data:`MARGINALS`).

    Closed forms where tnsim has them (``Normal``, ``Uniform``, ``Laplace``), the finite
    support :math:`\{1, \dots, d\}` for permutations, and otherwise a :data:`RULE_POINTS`-node
    Gauss rule of the exact moments (:func:`gauss_rule`): its moments equal the
    distribution's through order 9, so every quantity that reads moments of order at most 9
    per coordinate — the second moment of any model of degree ≤ 4, the bilinear model's is
    degree 2 — is the distribution's own, exactly.
    """
    _check(name)
    dist = torch.distributions
    if name in ("gaussian", "correlated_gaussian"):
        return tnsim.ProductMeasure(dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
    if name == "uniform":
        return tnsim.ProductMeasure(dist.Uniform(torch.tensor(-1.0, dtype=torch.float64), 1.0))
    if name == "laplace":
        return tnsim.ProductMeasure(dist.Laplace(torch.tensor(0.0, dtype=torch.float64), 0.5**0.5))
    if name == "permutation":
        return tnsim.ProductMeasure(values=torch.arange(1, d + 1, dtype=torch.float64))
    if name == "neg10_last_gaussian":
        nodes, weights = gauss_rule(_normal_moments(2 * RULE_POINTS))
        values = nodes.repeat(d, 1)
        values[-1] = LAST_VALUE
        return tnsim.ProductMeasure(values=values, probs=weights.repeat(d, 1))
    nodes, weights = gauss_rule(marginal_moments(name, 2 * RULE_POINTS))
    return tnsim.ProductMeasure(values=nodes, probs=weights)


def weight_metrics(models: list, name: str) -> dict[str, torch.Tensor]:
    """Every weight-based similarity matrix of ``models`` for distribution ``name``."""
    mean, cov = moments(name, DIM)
    out = {
        "tensor": C.metric_matrix("tensor", models),
        "Σ-generalised": C.metric_matrix("gaussian", models, cov=cov, centred=True),
        "N(μ,Σ)": C.metric_matrix("gaussian", models, mean=mean, cov=cov),
    }
    out["product measure"] = tnsim.similarity_matrix(
        models, measure=marginal(name), progress=False
    ).to(torch.float64)
    return out


def upper(m: torch.Tensor) -> torch.Tensor:
    """The strictly upper-triangular entries of a square matrix (one per pair)."""
    iu = torch.triu_indices(len(m), len(m), 1)
    return m[iu[0], iu[1]]


def analyse(name: str, models: list, records: list, cfg: dict) -> tuple[dict, dict]:
    """Correlations with the output cosine and accuracies for one distribution."""
    behaviour = tnsim.baselines.output_cosine_matrix(
        models, distribution=sampler(name), n=cfg["samples"], seed=7
    )
    mats = weight_metrics(models, name)
    b = upper(behaviour)
    row = {"distribution": name, "pairs": len(b)}
    for label, m in mats.items():
        row[f"pearson {label}"] = C.pearson(upper(m), b)
        row[f"spearman {label}"] = C.spearman(upper(m), b)
    final = max(cfg["steps"])
    accs = [accuracy(f, name, cfg["samples"]) for f, r in zip(models, records) if r["step"] == final]
    row["accuracy"] = sum(accs) / len(accs)
    row["accuracy_min"] = min(accs)
    row["output_cosine_min"] = float(b.min())
    return row, {"output cosine": behaviour, **mats}


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
    rows, mats, curves = [], {}, {}
    with C.threads(threads):
        for name in cfg["distributions"]:
            models, records = [], []
            for seed in cfg["seeds"]:
                traj = C.trajectory(
                    res, cfg, IDENTITY, seed, lambda s: train(name, s, cfg, progress),
                    log=log, folder=f"{name}/seed{seed}", distribution=name,
                )
                models += traj.models
                records += traj.records
            row, m = analyse(name, models, records, cfg)
            rows.append(row)
            mats.update({f"{k} [{name}]": v for k, v in m.items()})
            curves[name] = accuracy_curve(models, records, name, cfg)
            log(f"  {name}: r tensor {row['pearson tensor']:.3f}, accuracy {row['accuracy']:.3f}")
    res.results.update(
        rows=rows,
        accuracy_curves=curves,
        product_marginals={name: MARGINALS[name] for name in cfg["distributions"]},
    )
    res.matrices = mats
    res.table("correlations.csv", rows)
    figures(res, rows, mats, curves, cfg)
    res.finish(report_md(rows, cfg))
    log(f"wrote {res.folder}/report.md")
    return {"rows": rows, "folder": str(res.folder)}


def accuracy_curve(models, records, name, cfg) -> dict[str, list[float]]:
    """Mean accuracy over seeds at every checkpoint step (on ``samples // 10`` samples)."""
    steps = sorted({r["step"] for r in records})
    n = max(1000, cfg["samples"] // 10)
    accs = {s: [] for s in steps}
    for f, r in zip(models, records):
        accs[r["step"]].append(accuracy(f, name, n, seed=5))
    return {"steps": steps, "accuracy": [sum(accs[s]) / len(accs[s]) for s in steps]}


# --- figures and report ----------------------------------------------------------------------


def figures(res: C.Output, rows: list[dict], mats: dict, curves: dict, cfg: dict) -> None:
    from .. import plot

    fig = plot.figure(10, 8.6)
    axes = fig.subplots(3, 3).ravel()
    for ax, row in zip(axes, rows):
        name = row["distribution"]
        b = upper(mats[f"output cosine [{name}]"]).numpy()
        for label, colour in (("tensor", "C0"), ("N(μ,Σ)", "C2"), ("product measure", "C3")):
            ax.scatter(upper(mats[f"{label} [{name}]"]).numpy(), b, s=3, alpha=0.4,
                       color=colour, label=label)
        ax.plot([-1, 1], [-1, 1], color="black", lw=0.6, ls="--")
        lo = float(min(b.min(), upper(mats[f"tensor [{name}]"]).min()))
        ax.set_xlim(lo - 0.05, 1.02)
        ax.set_ylim(float(b.min()) - 0.05, 1.02)
        ax.set_title(
            f"{name}\nr tensor {row['pearson tensor']:.2f}, N(μ,Σ) {row['pearson N(μ,Σ)']:.2f}, "
            f"product {row['pearson product measure']:.2f}; acc {row['accuracy']:.2f}",
            fontsize=8,
        )
        ax.tick_params(labelsize=7)
        ax.set_xlabel("weight-based similarity", fontsize=7)
        ax.set_ylabel("output cosine (samples)", fontsize=7)
    axes[0].legend(fontsize=7, markerscale=3)
    fig.suptitle(
        f"Each point is one pair of the {len(cfg['seeds']) * len(cfg['steps'])} checkpoints "
        "trained on that distribution (Bilinear 4→32→4, task: index of the 2nd-largest input)",
        fontsize=9,
    )
    res.figure(fig, "scatter.png", "Weight-based similarity (x) vs output cosine on samples (y).")
    labels = [k.removeprefix("pearson ") for k in rows[0] if k.startswith("pearson ")]
    groups = {
        lab: {r["distribution"]: r[f"pearson {lab}"] for r in rows}
        for lab in labels
        if all(isinstance(r.get(f"pearson {lab}"), float) for r in rows)
    }
    fig = plot.bars(
        groups, ylabel="Pearson r with output cosine", width=10,
        title="How well does each weight-based similarity predict the output cosine?",
    )
    fig.axes[0].tick_params(axis="x", labelrotation=30)
    res.figure(fig, "correlations.png", "Pearson r over all pairs, per training distribution.")
    fig = plot.figure(6.5, 3.2)
    ax = fig.subplots()
    for name, c in curves.items():
        ax.plot([max(s, 0.5) for s in c["steps"]], c["accuracy"], marker=".", label=name)
    ax.set_xscale("log")
    ax.axhline(0.25, color="black", lw=0.6, ls=":")
    ax.set_xlabel("training step (log; step 0 drawn at 0.5)", fontsize=8)
    ax.set_ylabel("accuracy (mean over seeds)", fontsize=8)
    ax.set_title("Learning the index of the second-largest of 4 inputs (chance 0.25)", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1, 1))
    res.figure(fig, "training.png", "Accuracy over training, per input distribution.")


def report_md(rows: list[dict], cfg: dict) -> str:
    cols = ["distribution"] + [k for k in rows[0] if k.startswith("pearson ")] + [
        "accuracy", "accuracy_min", "output_cosine_min",
    ]
    spear = ["distribution"] + [k for k in rows[0] if k.startswith("spearman ")]
    n = len(cfg["seeds"]) * len(cfg["steps"])
    marg = [{"distribution": r["distribution"], "independent coordinates":
             r["distribution"] in INDEPENDENT, "product-measure marginal": MARGINALS[r["distribution"]]}
            for r in rows]
    return "\n".join(
        [
            "## Result",
            "",
            f"{n} models per distribution ({len(cfg['seeds'])} seeds × checkpoints at steps "
            f"{cfg['steps']}), {n * (n - 1) // 2} pairs; behaviour = uncentred output cosine on "
            f"{cfg['samples']} samples. `accuracy` = mean final accuracy over seeds.",
            "",
            C.markdown_table(rows, cols),
            "",
            "Spearman ρ of the same pairs:",
            "",
            C.markdown_table(rows, spear),
            "",
            "`Σ-generalised` = the authors' covariance-generalised tensor similarity (centred "
            "Gaussian under N(0, Σ)); `N(μ,Σ)` = tnsim's exact raw second moment under the Gaussian "
            "with the distribution's mean and covariance; `product measure` = tnsim's exact raw "
            "second moment under `tnsim.ProductMeasure` with the distribution's exact marginals:",
            "",
            C.markdown_table(marg),
        ]
    )
