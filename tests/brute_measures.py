"""Oracles for measures of independent inputs, independent of tnsim's engine.

Every expectation here is a weighted sum of the modules' own forward passes over a finite set
of inputs that integrates the models' polynomials exactly:

* a finite-support product measure: every input in ``values^(coordinates)``, weighted by the
  product of the coordinates' probabilities;
* a uniform product measure: tensor-product Gauss-Legendre quadrature (``p`` nodes per
  coordinate integrate degree ``2p - 1`` exactly);
* one-hot tokens at independent positions: all ``V^n`` token sequences, one-hot encoded.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch


def finite_points(values, probs, shape: tuple[int, ...]):
    """All inputs of ``shape`` with coordinates in ``values`` and their probabilities.

    ``values`` / ``probs`` are 1-d (i.i.d. coordinates) or have one row per coordinate of
    the flattened input."""
    values = np.asarray(values, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    n = int(np.prod(shape))
    if values.ndim == 1:
        values, probs = np.tile(values, (n, 1)), np.tile(probs, (n, 1))
    k = values.shape[1]
    idx = np.array(list(itertools.product(range(k), repeat=n)), dtype=np.int64).reshape(-1, n)
    cols = np.arange(n)
    x = values[cols, idx]
    w = probs[cols, idx].prod(1)
    return torch.tensor(x.reshape((-1,) + tuple(shape))), torch.tensor(w)


def legendre_points(low: float, high: float, shape: tuple[int, ...], nodes: int):
    """Tensor Gauss-Legendre nodes for i.i.d. Uniform(low, high) coordinates, and weights."""
    t, w = np.polynomial.legendre.leggauss(nodes)
    x1 = low + (high - low) * (t + 1) / 2
    w1 = w / 2  # the density 1 / (high - low) times the Jacobian (high - low) / 2
    n = int(np.prod(shape))
    idx = np.array(list(itertools.product(range(nodes), repeat=n)), dtype=np.int64).reshape(-1, n)
    return torch.tensor(x1[idx].reshape((-1,) + tuple(shape))), torch.tensor(w1[idx].prod(1))


def token_points(probs, n: int):
    """All ``V^n`` one-hot sequences (shape ``(V^n, n, V)``) and their probabilities.

    ``probs`` is ``(V,)`` (every position) or ``(n, V)``."""
    p = np.asarray(probs, dtype=np.float64)
    p = np.tile(p, (n, 1)) if p.ndim == 1 else p
    v = p.shape[1]
    seqs = np.array(list(itertools.product(range(v), repeat=n)), dtype=np.int64)
    x = np.eye(v)[seqs]
    w = p[np.arange(n), seqs].prod(1)
    return torch.tensor(x), torch.tensor(w)


def outputs_of(model, x: torch.Tensor, outputs=None) -> torch.Tensor:
    """Forward pass on every point, restricted to output features ``outputs`` (last axis),
    flattened to ``(points, -1)``."""
    with torch.no_grad():
        y = model(x).to(torch.float64)
    if outputs is not None:
        y = y[..., list(outputs)]
    return y.reshape(y.shape[0], -1)


def inner(a, b, x, w, *, centred=False, outputs=None) -> float:
    """:math:`\\sum_s w_s\\, f_a(x_s)\\cdot f_b(x_s)` (centred: of :math:`f - \\mathbb E f`)."""
    ya, yb = outputs_of(a, x, outputs), outputs_of(b, x, outputs)
    if centred:
        ya = ya - (w[:, None] * ya).sum(0)
        yb = yb - (w[:, None] * yb).sum(0)
    return float((w[:, None] * ya * yb).sum())


def similarity(a, b, x, w, **kw) -> float:
    return inner(a, b, x, w, **kw) / np.sqrt(inner(a, a, x, w, **kw) * inner(b, b, x, w, **kw))


def similarity_matrix(models, x, w, **kw) -> np.ndarray:
    return np.array([[similarity(a, b, x, w, **kw) for b in models] for a in models])


def set_partition_orbits(k_a: int, k_b: int, swaps_a, swaps_b, keep=lambda blocks: True) -> int:
    """Number of orbits of set partitions of ``k_a + k_b`` copies under the group generated
    by the transpositions ``swaps_a`` (copies of a) and ``swaps_b`` (copies of b), counting
    only partitions with ``keep(blocks)`` (blocks as tuples of copy indices). Brute force:
    canonical form = smallest image under the whole (closed) group."""
    n = k_a + k_b
    gens = [tuple(range(n))]
    for i, j in list(swaps_a) + [(i + k_a, j + k_a) for i, j in swaps_b]:
        p = list(range(n))
        p[i], p[j] = j, i
        gens.append(tuple(p))
    group = {tuple(range(n))}
    frontier = list(group)
    while frontier:
        g = frontier.pop()
        for h in gens:
            c = tuple(h[g[i]] for i in range(n))
            if c not in group:
                group.add(c)
                frontier.append(c)

    def partitions(items):
        if not items:
            yield []
            return
        first, rest = items[0], items[1:]
        for p in partitions(rest):
            yield [(first,)] + p
            for i in range(len(p)):
                yield p[:i] + [(first,) + p[i]] + p[i + 1:]

    def canon(blocks):
        return min(tuple(sorted(tuple(sorted(g[c] for c in b)) for b in blocks)) for g in group)

    return len({canon(p) for p in partitions(list(range(n))) if keep(p)})
