r"""Language model: a character-level bilinear-attention transformer, its n-gram phases and the
similarity of its checkpoints.

Corpus: the docstrings (module, class and function, in :func:`ast.walk` order) of the first
``files`` top-level ``*.py`` modules of Python's standard library, sorted by name (no
downloads; the list is recorded). Text is lower-cased, every run of whitespace becomes one
space, and characters map to a 32-symbol vocabulary: space, ``a``-``z``, ``.``, ``,``, ``(``,
``)`` and ``#`` for everything else. Every tenth file (by position in the sorted list) is held
out.

Model: ``Embedding(32, d, positional) → BilinearAttention(residual) → BilinearAttention(residual)
→ Unembedding`` (two layers of polynomial attention, no softmax: a tensor network), trained on
windows of ``n_ctx + 1`` characters to predict the next character at every position. Checkpoints
at step 0 and ≥ 50 log-spaced steps.

n-gram scores. From the training text, add-α estimates of :math:`p_1(c)`, :math:`p_2(c\mid a)`
and :math:`p_3(c\mid a, b)`; on held-out windows, at every position :math:`t\ge1` (so that two
characters of context exist), the model's next-character distribution :math:`q_t = \mathrm
{softmax}(\text{logits}_t)` is scored by :math:`\mathrm{KL}(p_k(\cdot\mid\text{context})\,\|\,q_t)`,
averaged over positions — low when the model predicts like the k-gram statistics.

Metrics across checkpoints: tensor similarity (``method="recursive"``); the measure metric on
the whole model — the Gaussian :math:`\mathcal N(0, I)` (``method="recursive"``), on every
``measure_every``-th checkpoint (it is the slowest); the exact categorical token measure
(:class:`tnsim.CategoricalMeasure` fitted to the training characters) and, for comparison,
:math:`\mathcal N(0, I)`, both on the first layer only, the embedding
``tnsim.slice(model, 0, 1)`` (:func:`first_layer`), on every checkpoint; matrix cosine; output
cosine of the logits on held-out windows, raw and with the mean over the vocabulary removed.
Correlations: Pearson and Spearman of the off-diagonal entries between every two metrics.

Why the categorical measure covers only the embedding: it has no recursive closure
(``method="recursive"`` is exact for one layer and refused beyond), and its exact set-partition
sum over the copies of a whole two-layer model (a degree-9 polynomial: 18 input copies) or even
of the embedding and the first attention layer (degree 3, 6 copies, 203 partitions of dense
:math:`V^r` one-hot cumulants: 744 contractions and about :math:`2.5\times10^{10}` flops per
inner product at ``d_model`` 8, by :func:`tnsim.cost`) does not fit a run of minutes.
"""

from __future__ import annotations

import ast
import re
import sysconfig
import time
from pathlib import Path

import torch

import tnsim

from ..errors import InvalidArgumentError, ShapeMismatchError
from ..nn import BilinearAttention, Embedding, Unembedding
from . import common as C

NAME = "lm"
SYMBOLS = " abcdefghijklmnopqrstuvwxyz.,()#"  #: the vocabulary; ``#`` stands for any other character
OTHER = SYMBOLS.index("#")
VOCAB = len(SYMBOLS)
#: what a saved trajectory depends on besides the mode settings (part of its cache key)
IDENTITY = {"experiment": NAME, "symbols": SYMBOLS, "model": "emb+pos, 2x attention, unemb", "v": 1}

MODES = {
    "quick": dict(
        seeds=[0],
        files=24,
        d_model=4,
        n_heads=1,
        n_ctx=4,
        steps=300,
        checkpoints=10,
        batch=128,
        lr=3e-3,
        weight_decay=0.0,
        alpha=0.1,
        eval_windows=1000,
        measure_every=5,
    ),
    "full": dict(
        seeds=[0],
        files=168,
        d_model=16,
        n_heads=4,
        n_ctx=4,
        steps=4000,
        checkpoints=60,
        batch=256,
        lr=3e-3,
        weight_decay=0.0,
        alpha=0.1,
        eval_windows=4000,
        measure_every=3,
    ),
}


# --- corpus ----------------------------------------------------------------------------------


def stdlib_files(limit: int | None = None) -> list[Path]:
    """The top-level ``*.py`` files of the standard library, sorted by name (first ``limit``)."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    return files[:limit] if limit else files


def docstrings(source: str) -> list[str]:
    """Module, class and function docstrings of a Python source, in :func:`ast.walk` order
    (``[]`` for a file that does not parse)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    docs = (ast.get_docstring(n, clean=True) for n in ast.walk(tree) if isinstance(n, kinds))
    return [d for d in docs if d]


def encode(text: str) -> torch.Tensor:
    """Token ids of ``text``: lower-cased, whitespace runs collapsed to one space, characters
    outside :data:`SYMBOLS` mapped to ``#``."""
    text = re.sub(r"\s+", " ", text.lower())
    index = {c: i for i, c in enumerate(SYMBOLS)}
    return torch.tensor([index.get(c, OTHER) for c in text], dtype=torch.long)


def corpus(files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """Training and held-out token streams (every tenth file held out)."""
    parts: tuple[list[str], list[str]] = ([], [])
    for i, f in enumerate(files):
        text = " ".join(docstrings(f.read_text(encoding="utf-8", errors="replace")))
        parts[i % 10 == 9].append(text)
    return encode(" ".join(parts[0])), encode(" ".join(parts[1]))


def windows(tokens: torch.Tensor, length: int, count: int, seed: int) -> torch.Tensor:
    """``count`` windows of ``length`` consecutive tokens at random offsets, shape ``(count,
    length)``."""
    if len(tokens) <= length:
        raise ShapeMismatchError(f"tokens: {len(tokens)} tokens, need more than {length}")
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, len(tokens) - length + 1, (count,), generator=g)
    return tokens[start[:, None] + torch.arange(length)]


# --- n-gram statistics and scores ------------------------------------------------------------


def ngram_tables(tokens: torch.Tensor, vocab: int, alpha: float) -> list[torch.Tensor]:
    r"""Add-α conditional distributions ``[p1 (V,), p2 (V, V), p3 (V, V, V)]`` (float64).

    :math:`p_k(c\mid\text{ctx}) = (N(\text{ctx}, c) + \alpha) / (N(\text{ctx}) + \alpha V)`,
    counts over every position of ``tokens``; the last axis is the next token. With ``alpha = 0``
    a context never seen gets the uniform distribution.
    """
    if alpha < 0:
        raise InvalidArgumentError(f"alpha: must be non-negative, got {alpha}")
    t = tokens.long()
    out = []
    for k in (1, 2, 3):
        grams = torch.stack([t[i : len(t) - k + 1 + i] for i in range(k)], 1)
        flat = torch.zeros(vocab**k, dtype=torch.float64)
        code = sum(grams[:, i] * vocab ** (k - 1 - i) for i in range(k))
        flat.index_add_(0, code, torch.ones(len(code), dtype=torch.float64))
        counts = flat.reshape((vocab,) * k) + alpha
        total = counts.sum(-1, keepdim=True)
        out.append(torch.where(total > 0, counts / total.clamp_min(1e-300), 1.0 / vocab))
    return out


def ngram_targets(tables: list[torch.Tensor], inputs: torch.Tensor) -> list[torch.Tensor]:
    """The k-gram next-token distributions at positions ``1..n-1`` of ``inputs`` (``(W, n)`` ids):
    three tensors of shape ``(W, n - 1, V)``."""
    prev, cur = inputs[:, :-1], inputs[:, 1:]
    p1, p2, p3 = tables
    return [p1.expand(*cur.shape, -1), p2[cur], p3[prev, cur]]


def kl(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    r""":math:`\sum_c p_c(\log p_c - \log q_c)` over the last axis (``0 \log 0 = 0``)."""
    log_p = torch.where(p > 0, p, 1.0).log()
    return (p * (log_p - log_q)).sum(-1)


def ngram_scores(logits: torch.Tensor, inputs: torch.Tensor, tables) -> dict[str, float]:
    """Mean KL from the 1-, 2- and 3-gram distributions to the model's at positions ≥ 1.

    ``logits``: the model's output on ``inputs``, shape ``(W, n, V)``.
    """
    if logits.shape[:2] != inputs.shape:
        raise ShapeMismatchError(
            f"logits: shape {tuple(logits.shape)} does not match inputs {tuple(inputs.shape)}"
        )
    log_q = torch.log_softmax(logits[:, 1:].double(), -1)
    targets = ngram_targets(tables, inputs)
    return {f"kl_{k + 1}gram": float(kl(p, log_q).mean()) for k, p in enumerate(targets)}


def cross_entropy(log_p: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean of :math:`-\\log p(\\text{target})` over every entry (``log_p``: ``(..., V)``)."""
    return float(-log_p.gather(-1, targets[..., None]).mean())


# --- model and training ----------------------------------------------------------------------


def model(seed: int, cfg: dict) -> torch.nn.Sequential:
    """The untrained two-layer attention-only language model of seed ``seed``."""
    torch.manual_seed(seed)
    d, n, h = cfg["d_model"], cfg["n_ctx"], cfg["n_heads"]
    return torch.nn.Sequential(
        Embedding(VOCAB, d, n_ctx=n, positional=True),
        BilinearAttention(d, n, n_heads=h, residual=True),
        BilinearAttention(d, n, n_heads=h, residual=True),
        Unembedding(d, VOCAB),
    )


def evaluate(f, held: torch.Tensor, tables) -> dict[str, float]:
    """Held-out loss and n-gram scores of model ``f`` on windows ``held`` (``(W, n + 1)``)."""
    inputs, targets = held[:, :-1], held[:, 1:]
    with torch.no_grad():
        logits = f(inputs)
    rec = ngram_scores(logits, inputs, tables)
    rec["test_loss"] = cross_entropy(torch.log_softmax(logits.double(), -1), targets)
    return rec


def checkpoint_steps(cfg: dict) -> list[int]:
    """Step 0 and about ``checkpoints`` log-spaced steps up to ``steps``."""
    return [0] + C.log_steps(1, cfg["steps"], cfg["checkpoints"])


def train(seed: int, cfg: dict, train_tokens, held, tables, progress: bool) -> C.Trajectory:
    """AdamW on random windows of the training text, loss at every position."""
    f = model(seed, cfg)
    opt = torch.optim.AdamW(f.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    g = torch.Generator().manual_seed(10_000 + seed)
    length = cfg["n_ctx"] + 1
    marks = checkpoint_steps(cfg)
    traj = C.Trajectory()
    traj.begin("training")
    traj.add(f, step=0, **evaluate(f, held, tables))
    for step in C.bar(range(1, cfg["steps"] + 1), desc=f"seed {seed}: lm", enabled=progress):
        start = torch.randint(0, len(train_tokens) - length + 1, (cfg["batch"],), generator=g)
        w = train_tokens[start[:, None] + torch.arange(length)]
        logits = f(w[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), w[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(f.parameters(), 1.0)  # degree-9 logits: rare huge steps
        opt.step()
        if step in marks:
            traj.add(f, step=step, **evaluate(f, held, tables))
    traj.end()
    return traj


def save(traj: C.Trajectory, folder: Path, config: dict) -> None:
    """The checkpoints as one ``torch.save`` file of state dicts, records and phases
    (``tnsim.checkpoints`` does not describe attention models yet)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"config": C.config_hash(config), "states": [m.state_dict() for m in traj.models],
         "records": traj.records, "phases": traj.phases},
        folder / "trajectory.pt",
    )


def load(folder: Path, config: dict, cfg: dict) -> C.Trajectory | None:
    """The trajectory saved by :func:`save` for ``config``, else ``None``."""
    path = folder / "trajectory.pt"
    if not path.exists():
        return None
    try:
        data = torch.load(path, weights_only=True)
    except (OSError, RuntimeError, ValueError):
        return None
    if data.get("config") != C.config_hash(config):
        return None
    models = []
    for state in data["states"]:
        m = model(0, cfg)
        m.load_state_dict(state)
        models.append(m.eval())
    return C.Trajectory(models, data["records"], data["phases"])


def cached(folder: Path, config: dict, cfg: dict, train_fn, log=print) -> C.Trajectory:
    """Reload the checkpoints saved for ``config`` or train and save them."""
    traj = load(folder, config, cfg)
    if traj is not None:
        log(f"  reusing {len(traj.models)} checkpoints from {folder}")
        return traj
    traj = train_fn()
    save(traj, folder, config)
    return traj


# --- phases, metrics, correlations -----------------------------------------------------------


def closest_ngram(records: list[dict]) -> list[int]:
    """Per checkpoint, the order k (1, 2, 3) of the n-gram distribution nearest the model."""
    return [min((1, 2, 3), key=lambda k: r[f"kl_{k}gram"]) for r in records]


def phases_from(orders: list[int]) -> list[tuple[str, int, int]]:
    """Runs of equal nearest order as ``(label, start, stop)`` phases."""
    out: list[tuple[str, int, int]] = []
    for i, k in enumerate(orders):
        if out and out[-1][0] == f"{k}-gram":
            out[-1] = (out[-1][0], out[-1][1], i + 1)
        else:
            out.append((f"{k}-gram", i, i + 1))
    return out


#: the whole-model measure metric (the categorical measure cannot reach beyond the first layer)
MEASURE_LABEL = "Gaussian N(0, I) (whole model)"
#: the first-layer metrics, in the order of the matrices
FIRST_LAYER = ("categorical: embedding", "N(0,I): embedding")


def first_layer(model: torch.nn.Sequential) -> tnsim.Network:
    """The embedding (token and positional) of the language model, ``tnsim.slice(model, 0, 1)``:
    the part of the model that the categorical measure compares exactly here."""
    return tnsim.slice(model, 0, 1)


def timed(fn, *args, **kwargs) -> tuple[torch.Tensor, float]:
    t = time.perf_counter()
    m = fn(*args, **kwargs)
    return m, time.perf_counter() - t


def first_layer_matrices(models, tokens) -> dict[str, tuple[torch.Tensor, float]]:
    r"""``{label: (matrix, seconds)}`` of :data:`FIRST_LAYER`: the similarity of the models'
    embeddings (:func:`first_layer`) under the categorical measure ``tokens`` and under
    :math:`\mathcal N(0, I)` (float64, exact)."""
    layer = [first_layer(m) for m in models]
    out = {}
    for label, measure in zip(FIRST_LAYER, (tokens, "gaussian")):
        m, sec = timed(
            tnsim.similarity_matrix, layer, measure=measure, method="recursive", progress=False
        )
        out[label] = (m.detach().to(torch.float64), sec)
    return out


def metrics(models, subset, held, train_tokens, log) -> tuple[dict, dict, dict]:
    """Similarity matrices (the whole-model measure metric on ``subset`` only) and seconds per
    matrix entry; the third value says which measure ran on what."""
    onehot = torch.nn.functional.one_hot(held[:, :-1], VOCAB).float()
    n = held.shape[1] - 1
    centre = torch.kron(torch.eye(n), torch.eye(VOCAB) - 1.0 / VOCAB).double()
    mats, seconds = {}, {}
    mats["tensor"], seconds["tensor"] = timed(
        C.metric_matrix, "tensor", models, method="recursive", progress=False
    )
    picked = [models[i] for i in subset]
    mats["measure"], seconds["measure"] = timed(
        C.metric_matrix, "gaussian", picked, method="recursive", progress=False
    )
    tokens = tnsim.CategoricalMeasure.fit(train_tokens, VOCAB)
    for label, (m, sec) in first_layer_matrices(models, tokens).items():
        mats[label], seconds[label] = m, sec
    mats["matrix cosine"] = C.metric_matrix("matrix", models)
    mats["output cosine"] = C.metric_matrix("output", models, data=onehot)
    mats["output cosine (centred logits)"] = C.metric_matrix(
        "output", models, data=onehot, outputs=centre
    )
    full, sub = len(models) * (len(models) + 1) // 2, len(picked) * (len(picked) + 1) // 2
    per = {k: seconds[k] / (sub if k == "measure" else full) for k in seconds}
    log(f"  seconds per matrix entry: {per}")
    used = {
        "measure": MEASURE_LABEL,
        "first_layer": "tnsim.slice(model, 0, 1): token + positional embedding",
        "categorical": tokens.describe(),
        "unigram_probs": tokens.probs.tolist(),
    }
    return mats, per, used


def restricted(mats: dict, subset: list[int], a: str, b: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Off-diagonal pairs of metrics ``a`` and ``b`` (on ``subset`` when either is the measure)."""
    ma, mb = mats[a], mats[b]
    if "measure" in (a, b):
        ma = ma if a == "measure" else ma[subset][:, subset]
        mb = mb if b == "measure" else mb[subset][:, subset]
    iu = torch.triu_indices(len(ma), len(ma), 1)
    return ma[iu[0], iu[1]], mb[iu[0], iu[1]]


def correlations(mats: dict, subset: list[int]) -> list[dict]:
    """Pearson and Spearman of the off-diagonal entries of every two metrics."""
    names = list(mats)
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            x, y = restricted(mats, subset, a, b)
            rows.append({"a": a, "b": b, "pairs": len(x),
                         "pearson": C.pearson(x, y), "spearman": C.spearman(x, y)})
    return rows


# --- run -------------------------------------------------------------------------------------


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
    files = stdlib_files(cfg["files"])
    train_tokens, held_tokens = corpus(files)
    tables = ngram_tables(train_tokens, VOCAB, cfg["alpha"])
    held = windows(held_tokens, cfg["n_ctx"] + 1, cfg["eval_windows"], seed=1)
    seed = cfg["seeds"][0]
    with C.threads(threads):
        config = {**cfg, "seed": seed, "files": [f.name for f in files], **IDENTITY}
        traj = cached(
            res.folder / "checkpoints" / f"seed{seed}", config, cfg,
            lambda: train(seed, cfg, train_tokens, held, tables, progress), log=log,
        )
        subset = list(range(0, len(traj.models), cfg["measure_every"]))
        if subset[-1] != len(traj.models) - 1:
            subset.append(len(traj.models) - 1)
        mats, per_entry, used = metrics(traj.models, subset, held, train_tokens, log)
    orders = closest_ngram(traj.records)
    phases = phases_from(orders)
    corr = correlations(mats, subset)
    summary = summarise(traj.records, tables, held, orders, phases, per_entry, used)
    summary["corpus"] = {
        "files": len(files), "first": files[0].name, "last": files[-1].name,
        "train_tokens": len(train_tokens), "held_out_tokens": len(held_tokens),
        "stdlib": str(Path(sysconfig.get_paths()["stdlib"])),
    }
    res.results.update(summary=summary, records=traj.records, correlations=corr,
                       measure_subset=subset, files=[f.name for f in files], phases=phases)
    res.matrices = mats
    res.table("checkpoints.csv", traj.records)
    res.table("correlations.csv", corr)
    figures(res, traj, mats, subset, phases, summary, corr)
    res.finish(report_md(summary, corr, cfg, subset))
    log(f"wrote {res.folder}/report.md")
    return {"summary": summary, "correlations": corr, "folder": str(res.folder)}


def summarise(records, tables, held, orders, phases, per_entry, used) -> dict:
    """n-gram reference losses, where each KL is smallest, the phases, engine timings."""
    inputs, targets = held[:, :-1], held[:, 1:]
    refs = ngram_targets(tables, inputs)
    ngram_loss = {
        f"{k + 1}gram": cross_entropy(p.log(), targets[:, 1:]) for k, p in enumerate(refs)
    }
    best = {}
    for k in (1, 2, 3):
        i = min(range(len(records)), key=lambda j: records[j][f"kl_{k}gram"])
        best[f"{k}gram"] = {"step": records[i]["step"], "kl": records[i][f"kl_{k}gram"]}
    return {
        "ngram_test_loss": ngram_loss,
        "final_test_loss": records[-1]["test_loss"],
        "initial_test_loss": records[0]["test_loss"],
        "min_kl": best,
        "nearest_order": orders,
        "phases": phases,
        "seconds_per_entry": per_entry,
        "measure": used["measure"],
        "measures": used,
        "checkpoints": len(records),
    }


def figures(res, traj, mats, subset, phases, summary, corr) -> None:
    from .. import plot

    steps = [max(s, 0.5) for s in traj.column("step")]
    series = {f"KL(p_{k}-gram ‖ model)": traj.column(f"kl_{k}gram") for k in (1, 2, 3)}
    fig = plot.curves(
        series, x=steps, logx=True, phases=phases, xlabel="training step (log; step 0 at 0.5)",
        ylabel="KL (nats), held-out text",
        title="How close the model's next-character predictions are to 1-, 2-, 3-gram statistics",
        width=7,
    )
    res.figure(fig, "ngrams.png", "KL from each n-gram distribution to the model's predictions "
               "per checkpoint; shaded: which n-gram is nearest.")
    loss = {"model": traj.column("test_loss")}
    loss.update({f"{k}-gram model": [v] * len(steps)
                 for k, v in summary["ngram_test_loss"].items()})
    fig = plot.curves(loss, x=steps, logx=True, xlabel="training step (log)",
                      ylabel="cross-entropy (nats/char), held-out", title="Held-out loss", width=6)
    res.figure(fig, "loss.png", "Held-out loss of the model and of the n-gram models.")
    steps_all = traj.column("step")
    every = subset[1] - subset[0] if len(subset) > 1 else 1
    panels = [
        ("tensor similarity", mats["tensor"], list(range(len(steps_all)))),
        (f"Gaussian N(0, I), whole model\n(one checkpoint in {every})",
         mats["measure"], subset),
        ("categorical measure (embedding only)", mats[FIRST_LAYER[0]], list(range(len(steps_all)))),
        ("Gaussian N(0, I) (embedding only)", mats[FIRST_LAYER[1]], list(range(len(steps_all)))),
        ("matrix cosine", mats["matrix cosine"], list(range(len(steps_all)))),
        ("output cosine (held-out logits)", mats["output cosine"], list(range(len(steps_all)))),
        ("output cosine (centred logits)", mats["output cosine (centred logits)"],
         list(range(len(steps_all)))),
    ]
    fig = plot.figure(14, 7.4)
    axes = fig.subplots(2, 4).ravel()
    boundary = [start for _, start, _ in phases[1:]]
    for ax, (title, m, index) in zip(axes, panels):
        plot.heatmap(ax, m, title=title)
        step_axes(ax, [steps_all[i] for i in index], [sum(i < b for i in index) for b in boundary])
    axes[-1].set_visible(False)
    fig.suptitle("Checkpoint × checkpoint similarity of the character LM (axes: training step; "
                 "dotted: where the nearest n-gram changes)", fontsize=10)
    res.figure(fig, "heatmaps.png", "Similarity matrices across checkpoints (own colour scale each).")
    names = list(mats)
    grid = torch.eye(len(names), dtype=torch.float64)
    for r in corr:
        i, j = names.index(r["a"]), names.index(r["b"])
        grid[i, j] = grid[j, i] = r["spearman"]
    fig = plot.figure(5.6, 4.6)
    ax = fig.subplots()
    im = ax.imshow(grid.numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{float(grid[i, j]):.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax).ax.tick_params(labelsize=7)
    ax.set_title("Spearman ρ between metrics (off-diagonal checkpoint pairs)", fontsize=9)
    res.figure(fig, "correlations.png", "Rank correlation of every two metrics' matrices.")


def step_axes(ax, steps: list[int], bounds: list[int], ticks: int = 6) -> None:
    """Label a heat-map's axes with training steps and draw the phase boundaries (indices)."""
    at = sorted({round(i * (len(steps) - 1) / (ticks - 1)) for i in range(ticks)})
    ax.set_xticks(at, [str(steps[i]) for i in at], fontsize=6, rotation=45)
    ax.set_yticks(at, [str(steps[i]) for i in at], fontsize=6)
    ax.set_xlabel("training step", fontsize=7)
    ax.set_ylabel("training step", fontsize=7)
    for b in bounds:
        for line in (ax.axvline, ax.axhline):
            line(b - 0.5, color="white", lw=0.8, ls=":")


def report_md(s: dict, corr: list[dict], cfg: dict, subset: list[int]) -> str:
    c = s["corpus"]
    ref = ", ".join(f"{k} {v:.3f}" for k, v in s["ngram_test_loss"].items())
    best = ", ".join(f"{k} at step {v['step']} (KL {v['kl']:.3f})" for k, v in s["min_kl"].items())
    ph = ", ".join(f"{lab} [{a}, {b})" for lab, a, b in s["phases"])
    return "\n".join([
        "## Result",
        "",
        f"Corpus: docstrings of {c['files']} stdlib modules ({c['first']} … {c['last']}), "
        f"{c['train_tokens']} training and {c['held_out_tokens']} held-out characters, "
        f"vocabulary {VOCAB}. Model: d_model {cfg['d_model']}, {cfg['n_heads']} heads, n_ctx "
        f"{cfg['n_ctx']}, {s['checkpoints']} checkpoints.",
        "",
        f"Held-out loss {s['initial_test_loss']:.3f} → {s['final_test_loss']:.3f} nats/char "
        f"(n-gram models: {ref}). Smallest KL to each n-gram: {best}.",
        "",
        f"Nearest n-gram per checkpoint (phases, checkpoint index ranges): {ph}.",
        "",
        f"Measure metric: {s['measure']}, on checkpoints {subset}. First layer "
        f"({s['measures']['first_layer']}), every checkpoint: {s['measures']['categorical']} "
        "(unigram frequencies of the training characters) and Gaussian N(0, I). The categorical "
        "measure has no recursive closure, so it reaches only the first layer here.",
        f"Engine seconds per matrix entry: {s['seconds_per_entry']}.",
        "",
        "Correlations of the off-diagonal entries:",
        "",
        C.markdown_table(corr),
    ])
