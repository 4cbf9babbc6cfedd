r"""Grokking: modular addition, memorisation then generalisation, tracked from the weights.

Task: :math:`(a, b) \mapsto (a + b) \bmod P` on a random fraction of the :math:`P^2` pairs,
inputs :math:`e_a\oplus e_b\in\mathbb R^{2P}` (one-hot), model
``tnsim.nn.Bilinear(2P, h, P)`` (no biases): :math:`f(x) = D(Lx\odot Rx)`, trained full-batch
with AdamW and strong weight decay — the standard recipe in which the training set is memorised
long before the test set is solved.

Fourier frequencies from the weights: the discrete Fourier transform over the residue index of
the four input blocks :math:`L_{:,a}, L_{:,P+b}, R_{:,a}, R_{:,P+b}` and of the read-out
:math:`D_{c,:}`, power summed over hidden units (invariant to permuting them), for frequencies
:math:`k = 1..\lfloor P/2\rfloor` (the constant :math:`k = 0` left out), normalised to sum 1.
*Key frequencies*: the smallest set carrying half the input-side power — about a quarter of all
frequencies for a spread-out (memorising) spectrum, a handful for the Fourier algorithm.

Metrics: tensor, raw :math:`\mathcal N(0, I)` Gaussian (on one-hot inputs neither is the data
distribution: both see every input direction), output cosine on all :math:`P^2` pairs (the
complete input domain: exact behavioural similarity), matrix cosine, linear CKA on a subsample
of pairs, and the cosine between checkpoints' frequency spectra.
"""

from __future__ import annotations

import torch

from .. import data as D
from ..nn import Bilinear
from . import common as C

NAME = "grokking"
#: what a saved trajectory depends on besides the mode settings (part of its cache key)
IDENTITY = {"experiment": NAME, "model": "Bilinear(2P, h, P)"}

MODES = {
    "quick": dict(
        seeds=[0],
        p=23,
        hidden=64,
        train_fraction=0.5,
        steps=2000,
        checkpoints=30,
        lr=5e-3,
        weight_decay=1.0,
        cka_samples=500,
    ),
    "full": dict(
        seeds=[0],
        p=113,
        hidden=128,
        train_fraction=0.3,
        steps=3000,
        checkpoints=50,
        lr=3e-3,
        weight_decay=1.0,
        cka_samples=1000,
    ),
}


def spectra(model: Bilinear, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised power per frequency ``1..p//2`` of the input blocks and of the read-out."""
    L, R, Dm = model.left.weight.detach(), model.right.weight.detach(), model.down.weight.detach()
    blocks = [L[:, :p], L[:, p:], R[:, :p], R[:, p:]]
    s_in = sum((torch.fft.rfft(b.double(), dim=1).abs() ** 2).sum(0) for b in blocks)[1:]
    s_out = (torch.fft.rfft(Dm.double(), dim=0).abs() ** 2).sum(1)[1:]
    return s_in / s_in.sum(), s_out / s_out.sum()


def key_frequencies(spectrum: torch.Tensor, share: float = 0.5) -> list[int]:
    """Smallest set of frequencies (1-based) whose power adds up to ``share`` of the total."""
    order = torch.argsort(spectrum, descending=True)
    cum = torch.cumsum(spectrum[order], 0)
    n = int((cum < share).sum()) + 1
    return sorted(int(k) + 1 for k in order[:n])


def train(seed: int, cfg: dict, split: D.Split, progress: bool) -> C.Trajectory:
    torch.manual_seed(seed)
    p = cfg["p"]
    model = Bilinear(2 * p, cfg["hidden"], p)

    def evaluate(m):
        return {
            "train_accuracy": C.accuracy(m, split.train),
            "test_accuracy": C.accuracy(m, split.test),
        }

    t = C.Trainer(
        model,
        lr=cfg["lr"],
        weight_decay=cfg["weight_decay"],
        seed=seed,
        batch_size=None,
        evaluate=evaluate,
        progress=progress,
        betas=(0.9, 0.98),
    )
    at = C.log_steps(10, cfg["steps"], cfg["checkpoints"])  # log-spaced: memorisation is fast
    t.stage("training", split.train, cfg["steps"], at, desc=f"seed {seed}: mod-{p} addition")
    return t.traj


def phases_from(records: list[dict]) -> list[tuple[str, int, int]]:
    """Split checkpoints at the first with train accuracy ≥ 0.99 and the first (after it) with
    test accuracy ≥ 0.9: learning → memorised → generalised."""
    n = len(records)
    mem = next((i for i, r in enumerate(records) if r["train_accuracy"] >= 0.99), n)
    gen = next((i for i, r in enumerate(records) if i >= mem and r["test_accuracy"] >= 0.9), n)
    out = [("learning", 0, mem), ("memorised", mem, gen), ("generalised", gen, n)]
    return [p for p in out if p[2] > p[1]]


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
    p = cfg["p"]
    split = D.modular_addition(p, cfg["train_fraction"], seed=0)
    everything = D.modular_addition(p, 1.0, seed=0).train  # all P^2 pairs
    g = torch.Generator().manual_seed(0)
    sub = everything.x[torch.randperm(len(everything), generator=g)[: cfg["cka_samples"]]]
    mets = [
        C.Metric("tensor", "tensor"),
        C.Metric("Gaussian N(0,I)", "gaussian"),
        C.Metric(f"output cosine (all {p * p} pairs)", "output", {"data": everything.x}),
        C.Metric("matrix cosine", "matrix"),
        C.Metric(f"linear CKA ({cfg['cka_samples']} pairs)", "cka", {"data": sub}),
    ]
    seed = cfg["seeds"][0]
    with C.threads(threads):
        traj = C.trajectory(res, cfg, IDENTITY, seed, lambda s: train(s, cfg, split, progress), log=log)
        mats = C.matrices(mets, traj.models, progress=progress, desc="similarity matrices")
    spec = [spectra(m, p) for m in traj.models]
    s_in = torch.stack([s[0] for s in spec])
    s_out = torch.stack([s[1] for s in spec])
    both = torch.cat([s_in, s_out], 1)
    both = both / both.norm(dim=1, keepdim=True)
    freq_cos = both @ both.T
    phases = phases_from(traj.records)
    traj.phases = [list(ph) for ph in phases]
    summary = summarise(traj, mats, freq_cos, s_in, s_out, phases)
    res.results.update(
        summary=summary, records=traj.records, phases=phases, spectrum_in=s_in, spectrum_out=s_out
    )
    res.matrices = {**mats, "frequency cosine": freq_cos}
    res.table("metrics.csv", summary["metrics"])
    res.table(
        "checkpoints.csv",
        [
            {**r, "n_key_frequencies": n, "key_frequencies": " ".join(map(str, k))}
            for r, n, k in zip(traj.records, summary["n_key"], summary["keys"])
        ],
    )
    figures(res, traj, mats, freq_cos, s_in, phases, p)
    res.finish(report_md(summary, cfg, traj, phases))
    log(f"wrote {res.folder}/report.md")
    return {"summary": summary, "folder": str(res.folder)}


def summarise(traj, mats, freq_cos, s_in, s_out, phases) -> dict:
    rec = traj.records
    keys = [key_frequencies(s) for s in s_in]
    n_key = [len(k) for k in keys]
    off = ~torch.eye(len(rec), dtype=torch.bool)
    names = [ph[0] for ph in phases]
    blocks = {ph[0]: list(range(ph[1], ph[2])) for ph in phases}
    rows = []
    for label, m in [*mats.items(), ("frequency-spectrum cosine", freq_cos)]:
        row = {
            "metric": label,
            "spearman_vs_frequency_cosine": C.spearman(m[off], freq_cos[off]),
            "first_vs_last": float(m[0, -1]),
        }
        if "memorised" in blocks and "generalised" in blocks:
            c = C.contrast(m, blocks["memorised"], blocks["generalised"])
            row.update(
                delta_memorised_generalised=c["delta"],
                delta_paper_memorised_generalised=c["delta_paper"],
                separation=c["separation"],
            )
        rows.append(row)
    out = {
        "metrics": rows,
        "keys": keys,
        "n_key": n_key,
        "final_key_in": keys[-1],
        "final_key_out": key_frequencies(s_out[-1]),
        "memorised_step": rec[phases[names.index("memorised")][1]]["step"]
        if "memorised" in names
        else None,
        "generalised_step": rec[phases[names.index("generalised")][1]]["step"]
        if "generalised" in names
        else None,
        "final_train_accuracy": rec[-1]["train_accuracy"],
        "final_test_accuracy": rec[-1]["test_accuracy"],
    }
    if "memorised" in names:
        out["n_key_at_memorisation"] = n_key[phases[names.index("memorised")][1]]
    out["n_key_final"] = n_key[-1]
    out["share_of_power_in_final_keys"] = float(s_in[-1][[k - 1 for k in keys[-1]]].sum())
    out["key_frequency_overlap_in_out"] = sorted(
        set(out["final_key_in"]) & set(out["final_key_out"])
    )
    return out


def figures(res, traj, mats, freq_cos, s_in, phases, p) -> None:
    from .. import plot

    fig = plot.curves(
        {
            "train accuracy": traj.column("train_accuracy"),
            "test accuracy": traj.column("test_accuracy"),
        },
        x=traj.column("step"),
        xlabel="training step (log scale)",
        ylim=(-0.02, 1.02),
        ylabel="accuracy",
        logx=True,
        phases=phases,
        title=f"Grokking (a + b mod {p}): memorisation, then generalisation",
    )
    res.figure(fig, "training.png", "Train and test accuracy over training steps.")
    fig = plot.heatmaps(
        {**mats, "frequency-spectrum cosine": freq_cos},
        phases=phases,
        ncols=3,
        panel=3.4,
        title=f"Checkpoint × checkpoint similarity during grokking (P = {p})",
    )
    res.figure(
        fig,
        "heatmaps.png",
        "Similarity matrices of every metric and the cosine between the "
        "checkpoints' Fourier spectra (own colour scale each).",
    )
    fig = plot.figure(7.5, 3.2)
    ax = fig.subplots()
    im = ax.imshow(
        s_in.T.numpy(), aspect="auto", origin="lower", cmap="magma", interpolation="nearest"
    )
    ax.set_xlabel("checkpoint (log-spaced steps)", fontsize=8)
    ax.set_ylabel("frequency k", fontsize=8)
    ax.set_title(
        "Fourier power of the input weights per frequency (normalised per checkpoint)", fontsize=9
    )
    for _, start, _ in phases[1:]:
        ax.axvline(start - 0.5, color="white", lw=0.8, ls="--")
    for name, start, stop in phases:
        ax.text(
            (start + stop - 1) / 2,
            1.01,
            name,
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.set_yticks(
        range(0, s_in.shape[1], max(1, s_in.shape[1] // 8)),
        [str(k + 1) for k in range(0, s_in.shape[1], max(1, s_in.shape[1] // 8))],
        fontsize=7,
    )
    ax.tick_params(labelsize=7)
    cb = fig.colorbar(im, ax=ax)
    cb.ax.tick_params(labelsize=7)
    cb.set_label("share of power", fontsize=7)
    res.figure(
        fig,
        "frequencies.png",
        "Which Fourier frequencies the weights use, per checkpoint (computed from L and R alone).",
    )
    fig = plot.reference_lines(
        mats,
        len(traj.models) - 1,
        phases=phases,
        title="Similarity to the final (generalising) checkpoint",
    )
    res.figure(fig, "reference.png", "Similarity of every checkpoint to the final checkpoint.")


def report_md(s: dict, cfg: dict, traj, phases) -> str:
    lines = [
        "## Result",
        "",
        f"P = {cfg['p']}, {int(round(cfg['train_fraction'] * 100))}% of the pairs for training. Train "
        f"accuracy reaches 0.99 at step {s['memorised_step']}, test accuracy 0.9 at step "
        f"{s['generalised_step']}; final train/test accuracy {s['final_train_accuracy']:.3f} / "
        f"{s['final_test_accuracy']:.3f}.",
        "",
        f"Key frequencies (half of the input-weight Fourier power): {s.get('n_key_at_memorisation', '—')} "
        f"frequencies when the training set is memorised, {s['n_key_final']} at the end: "
        f"{s['final_key_in']} (read-out: {s['final_key_out']}; shared: {s['key_frequency_overlap_in_out']}); "
        f"the final key frequencies carry {100 * s['share_of_power_in_final_keys']:.0f}% of the input power.",
        "",
        "How each metric follows the mechanism: Spearman correlation of its off-diagonal entries with "
        "the frequency-spectrum cosine matrix; contrast Δ (and separation) of the memorised and the "
        "generalised blocks of checkpoints; similarity of the first and last checkpoints:",
        "",
        C.markdown_table(s["metrics"]),
        "",
        C.CONTRAST_DEFINITIONS + " Here R = the memorised block, P = the generalised block.",
        "",
        "Measures: tensor = symmetrised-tensor cosine over all of R^{2P} (equal to the centred N(0, I) "
        "Gaussian cosine for this bias-free model); Gaussian = raw N(0, I) second moment; output cosine "
        "on every pair (a, b), i.e. exact behaviour on the whole task domain.",
    ]
    return "\n".join(lines)
