"""Scaling of exact and recursive comparisons: input width, hidden width, depth, sequence
length and number of checkpoints; ratios against dense materialisation and Monte Carlo.

Every point is the best of ``--repeats`` warm runs (paths cached; the first, cold call is
reported separately where it matters). Pairs use ``tnsim.similarity``; the checkpoint sweep uses
``tnsim.similarity_matrix``. Dense materialisation forms each model's full (symmetrised)
tensor and takes Frobenius inner products (tensor measure); Monte Carlo estimates the Gaussian
cosine from samples until its standard error is 1e-3.

    python benchmarks/bench_scaling.py [--quick] [--threads T]
"""

from __future__ import annotations

import argparse
import itertools
import math
import time

import torch
from common import bar_models, closed_form_matrix, command, device_name, monte_carlo_cosine, save, timed

import tnsim
from tnsim.ir._term import Term


def best(fn, repeats: int) -> float:
    fn()  # warm (plans, caches)
    return min(timed(fn, torch.device("cpu")) for _ in range(repeats))


def stack_model(d_in: int, width: int, hidden: int, depth: int, d_out: int = 10, seed: int = 0):
    """``Linear(d_in, width)`` then ``depth`` bilinear layers (the last one to ``d_out``)."""
    torch.manual_seed(seed)
    layers = [tnsim.nn.Linear(d_in, width)]
    for i in range(depth):
        layers.append(tnsim.nn.Bilinear(width, hidden, d_out if i == depth - 1 else width))
    return torch.nn.Sequential(*layers)


def sequence_model(n: int, d: int, hidden: int, d_out: int, seed: int = 0) -> tnsim.Network:
    r"""A position-wise bilinear layer on sequences: :math:`y_t = D(Lx_t \odot Rx_t)`.

    Built as one term whose two input copies share the position index (a hyperindex):
    :math:`T_{(t,o),(s,i),(s',j)} = \delta_{ts}\delta_{ts'}\sum_h D_{oh}L_{hi}R_{hj}`.
    """
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(d_out, hidden, generator=g) / math.sqrt(hidden)
    L = torch.randn(hidden, d, generator=g) / math.sqrt(d)
    R = torch.randn(hidden, d, generator=g) / math.sqrt(d)
    ones = torch.ones(n)
    term = Term(
        inds=(("o", "h"), ("h", "i"), ("h", "j"), ("t",)),
        arrays=(D, L, R, ones),
        copies=(("t", "i"), ("t", "j")),
        outputs=("t", "o"),
        tags=("down", "left", "right", "positions"),
    )
    return tnsim.Network((term,), (n, d), (n, d_out), name=f"seq{n}")


def sequence_forward(net: tnsim.Network, x: torch.Tensor) -> torch.Tensor:
    D, L, R, _ = net.terms[0].arrays
    return torch.einsum("oh,...th,...th->...to", D, x @ L.T, x @ R.T)


def dense_tensor_fast(model) -> torch.Tensor:
    """Full tensor of ``Linear -> Bilinear`` stacks by composing dense layer tensors."""
    mods = list(model)
    W = mods[0].weight.detach()
    T = W  # (width, d): degree 1
    for m in mods[1:]:
        L, R, D = m.left.weight.detach(), m.right.weight.detach(), m.down.weight.detach()
        # (o, h) x (h, ...) x (h, ...): y = D (L T(x) * R T(x))
        k = T.dim() - 1
        LT = torch.tensordot(L, T, dims=1)  # (h, d^k)
        RT = torch.tensordot(R, T, dims=1)
        prod = LT.reshape(LT.shape[0], -1, 1) * RT.reshape(RT.shape[0], 1, -1)
        T = torch.tensordot(D, prod, dims=1).reshape((D.shape[0],) + (W.shape[1],) * (2 * k))
    return T


def symmetrised(T: torch.Tensor) -> torch.Tensor:
    k = T.dim() - 1
    perms = list(itertools.permutations(range(1, k + 1)))
    return sum(T.permute((0,) + p) for p in perms) / len(perms)


def dense_similarity(a, b) -> float:
    Sa, Sb = symmetrised(dense_tensor_fast(a)), symmetrised(dense_tensor_fast(b))
    return float((Sa * Sb).sum() / (Sa.norm() * Sb.norm()))


def monte_carlo(a, b, target_se: float = 1e-3, batch: int = 8192, max_samples: int = 2**24, seed: int = 0):
    """Gaussian cosine by sampling until its standard error (delta method) is ``target_se``.

    Returns (estimate, samples, seconds, standard error)."""
    return monte_carlo_cosine(a, b, (a[0].in_features,), target_se, batch, max_samples, seed)


def monte_carlo_matrix(models, target_se: float = 1e-3, batch: int = 8192, max_samples: int = 2**22, seed: int = 0):
    """All-pairs Gaussian cosines by sampling until every entry's standard error is
    ``target_se`` (delta method on the Gram of outputs). Returns (matrix, samples, seconds)."""
    g = torch.Generator().manual_seed(seed)
    d = models[0][0].in_features
    N = len(models)
    n = 0
    S = torch.zeros(N, N, dtype=torch.float64)  # sum of f_i . f_j
    Q = torch.zeros(N, N, dtype=torch.float64)  # sum of (f_i . f_j)^2
    t = time.perf_counter()
    while True:
        x = torch.randn(batch, d, generator=g)
        F = torch.stack([m(x) for m in models]).double()  # (N, batch, out)
        P = torch.einsum("isk,jsk->ijs", F, F)
        S += P.sum(-1)
        Q += (P * P).sum(-1)
        n += batch
        mean = S / n
        var = (Q / n - mean**2) / n
        diag = torch.diagonal(mean)
        cos = mean / torch.sqrt(diag[:, None] * diag[None, :])
        se = float((torch.sqrt(var) / torch.sqrt(diag[:, None] * diag[None, :])).max())  # leading term
        if se <= target_se or n >= max_samples:
            return cos, n, time.perf_counter() - t, se


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer points (a smoke run)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    dev = torch.device("cpu")
    print(f"$ {command()}\ndevice: {device_name(dev)}")
    r = args.repeats
    out: dict = {"device": device_name(dev), "threads": torch.get_num_threads()}

    def pair_point(a, b, exact_ok=True, **extra):
        """Time pair similarities of compiled networks (compilation is timed separately)."""
        row = dict(extra)
        if isinstance(a, torch.nn.Module):
            row["compile_s"] = best(lambda: (tnsim.compile(a), tnsim.compile(b)), r)
            a, b = tnsim.compile(a), tnsim.compile(b)
        for method in ("exact", "recursive"):
            for measure in ("gaussian", "tensor"):
                if method == "exact" and not exact_ok:
                    row[f"{method}_{measure}_s"] = None  # orbit enumeration alone is out of reach
                    continue
                try:
                    c = tnsim.cost(a, b, measure=measure, method=method)
                except tnsim.UnaffordableError as err:  # refused before allocating
                    row[f"{method}_{measure}_s"] = None
                    row[f"{method}_{measure}_refused"] = str(err)
                    continue
                row[f"{method}_{measure}_flops"] = c.flops
                row[f"{method}_{measure}_contractions"] = c.contractions
                if c.contractions > 5000 or c.flops > 5e11:
                    row[f"{method}_{measure}_s"] = None
                    continue
                row[f"{method}_{measure}_s"] = best(
                    lambda: tnsim.similarity(a, b, measure=measure, method=method), r
                )
        print(row)
        return row

    # 1. input width (depth 1: width 32, hidden 64, 10 outputs) + dense materialisation
    widths = [64, 256, 1024] if args.quick else [64, 128, 256, 512, 1024, 2048, 4096]
    rows = []
    for d in widths:
        a, b = stack_model(d, 32, 64, 1, seed=1), stack_model(d, 32, 64, 1, seed=2)
        row = pair_point(a, b, d_in=d)
        if d <= 2048:
            row["dense_tensor_s"] = best(lambda: dense_similarity(a, b), 1 if d > 512 else r)
            row["dense_bytes"] = 4 * 10 * d * d * 2
            print(row)
        rows.append(row)
    out["input_width"] = rows

    # 2. hidden width (d_in 256, width 32)
    hiddens = [32, 128, 512] if args.quick else [16, 32, 64, 128, 256, 512, 1024]
    out["hidden_width"] = [
        pair_point(stack_model(256, 32, h, 1, seed=1), stack_model(256, 32, h, 1, seed=2), hidden=h)
        for h in hiddens
    ]

    # 3. depth (d_in 32, width 8, hidden 16), dense up to degree 8 where it fits
    # (depth 5 cannot be compiled yet: composing the layers lists a symmetry group of more
    # than 2^20 elements, tnsim.UnaffordableError; the recursive method would not need it)
    depths = [1, 2, 3] if args.quick else [1, 2, 3, 4]
    rows = []
    for L in depths:
        a, b = stack_model(16, 8, 16, L, d_out=4, seed=1), stack_model(16, 8, 16, L, d_out=4, seed=2)
        row = pair_point(a, b, exact_ok=L <= 3, depth=L, degree=2**L)
        if 4 * 16 ** (2**L) <= 2**28:
            row["dense_tensor_s"] = best(lambda: dense_similarity(a, b), 1)
        print(row)
        rows.append(row)
    out["depth"] = rows

    # 4. sequence length (position-wise bilinear layer, d 64, hidden 128, 10 outputs)
    lengths = [4, 32, 256] if args.quick else [1, 4, 16, 64, 256, 1024]
    rows = []
    for n in lengths:
        a, b = sequence_model(n, 64, 128, 10, seed=1), sequence_model(n, 64, 128, 10, seed=2)
        rows.append(pair_point(a, b, length=n))
    # sanity: Monte Carlo agrees with the exact Gaussian cosine of the sequence model
    a, b = sequence_model(4, 8, 16, 3, seed=1), sequence_model(4, 8, 16, 3, seed=2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400000, 4, 8, generator=g)
    fa, fb = sequence_forward(a, x).double(), sequence_forward(b, x).double()
    mc = float((fa * fb).sum((1, 2)).mean() / torch.sqrt((fa * fa).sum((1, 2)).mean() * (fb * fb).sum((1, 2)).mean()))
    out["sequence_length"] = rows
    out["sequence_check"] = {"exact": tnsim.similarity(a, b, method="exact"), "monte_carlo_4e5": mc}
    print(out["sequence_check"])

    # 5. number of checkpoints (the performance-bar model)
    counts = [4, 16, 64] if args.quick else [4, 8, 16, 32, 64, 128]
    rows = []
    pool = bar_models(max(counts), seed=0)
    for n in counts:
        row = {"checkpoints": n}
        for method in ("exact", "recursive"):
            models = pool[:n]
            c = tnsim.cost(models, measure="gaussian", method=method)
            row[f"{method}_flops"] = c.flops
            row[f"{method}_blocks"] = c.blocks
            row["block_size"] = c.block_size
            row[f"{method}_s"] = best(
                lambda: tnsim.similarity_matrix(models, measure="gaussian", method=method, progress=False),
                1 if n >= 64 else r,
            )
        if n <= 32:  # the closed form's (N, N, 128, 128) intermediates grow as N^2
            row["closed_form_s"] = best(lambda: closed_form_matrix(pool[:n]), r)
        print(row)
        rows.append(row)
    out["checkpoints"] = rows

    # 6. block size: one matrix of the 24 bar models, every unordered block pair
    rows = []
    for bs in [24, 12, 8, 6, 4]:
        models = pool[:24]
        c = tnsim.cost(models, measure="gaussian", method="exact", block_size=bs)
        rows.append({
            "block_size": bs, "blocks": c.blocks, "flops": c.flops,
            "largest_intermediate_bytes": c.largest_intermediate_bytes,
            "exact_s": best(lambda: tnsim.similarity_matrix(models, measure="gaussian", method="exact",
                                                            block_size=bs, progress=False), r),
        })
        print(rows[-1])
    out["block_size"] = rows

    # 7. Monte Carlo to 1e-3 vs exact, for one pair of performance-bar models
    a, b = pool[0], pool[1]
    cos, n, secs, se = monte_carlo(a, b)
    exact_s = best(lambda: tnsim.similarity(a, b, method="exact"), r)
    out["monte_carlo"] = {
        "samples": n, "seconds": secs, "standard_error": se, "estimate": cos,
        "exact": tnsim.similarity(a, b, method="exact"), "exact_s": exact_s,
    }
    print(out["monte_carlo"])
    models = pool[:24]
    M = tnsim.similarity_matrix(models, measure="gaussian", method="exact", progress=False)
    cosm, n, secs, se = monte_carlo_matrix(models)
    out["monte_carlo_matrix"] = {
        "models": 24, "samples": n, "seconds": secs, "standard_error": se,
        "max_abs_error": float((cosm - M).abs().max()),
        "exact_s": best(lambda: tnsim.similarity_matrix(models, measure="gaussian", method="exact", progress=False), r),
    }
    print(out["monte_carlo_matrix"])
    save("scaling" + ("_quick" if args.quick else ""), out)


if __name__ == "__main__":
    main()
