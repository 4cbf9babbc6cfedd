"""Brute-force oracles for sequence models, in canonical coordinates, independent of tnsim.

A sequence model is a polynomial of the flattened input ``z = vec X`` (``X`` of shape (n, d),
``z[t*d + i] = X[t, i]``). Its canonical padded tensor ``C`` has shape
``(1 + n*o, 1 + n*d, ..., 1 + n*d)`` over ``z~ = (1, z)`` with ONE constant coordinate for the
whole input, so ``f~(X) = C . z~^{(x)K}`` and output index 0 is the constant. Tensors are
written from each module's formula with numpy ``einsum`` (deltas for positions, the mask as a
matrix); the oracle is checked against the modules' forward passes.

Gaussian expectations with positions i.i.d. (covariance ``I_n (x) Sigma``) are computed two
independent ways: Wick moments of the canonical tensors (``brute.gaussian_inner``), and
tensor-product Gauss-Hermite quadrature of the modules' own forward passes, exact for
polynomials (``p`` nodes per coordinate integrate degree ``2p - 1``).
"""

from __future__ import annotations

import itertools
import math

import brute
import numpy as np
import torch

import tnsim


def _np(x) -> np.ndarray:
    return x.detach().double().cpu().numpy()


# --- canonical tensors -----------------------------------------------------------------------


def embed_positionwise(A: np.ndarray, n: int) -> np.ndarray:
    """Canonical tensor of a vector layer (padded tensor ``A``) applied at each of n positions."""
    k = A.ndim - 1
    o, d = A.shape[0] - 1, A.shape[1] - 1
    C = np.zeros((1 + n * o,) + (1 + n * d,) * k)
    for t in range(n):
        rows = [1 + t * o + j for j in range(o)]
        cols = [0] + [1 + t * d + j for j in range(d)]
        C[np.ix_(rows, *[cols] * k)] += A[1:]
    C[(0,) * (k + 1)] = 1.0
    return C


def padded_from_real(T: np.ndarray, n: int, o: int, d: int, residual: bool = False) -> np.ndarray:
    """Canonical tensor from a real homogeneous tensor of shape (n, o, (n, d) * k)."""
    k = (T.ndim - 2) // 2
    R = T.reshape((n * o,) + (n * d,) * k)
    C = np.zeros((1 + n * o,) + (1 + n * d,) * k)
    C[(slice(1, None),) * (k + 1)] = R
    C[(0,) * (k + 1)] = 1.0
    if residual:
        for j in range(n * d):
            C[(1 + j, 1 + j) + (0,) * (k - 1)] += 1.0
    return C


def attention_tensor(m: tnsim.nn.BilinearAttention, n: int | None = None) -> np.ndarray:
    """Canonical tensor of polynomial attention, from its weights and mask."""
    n = n or m.n_ctx
    H, E, d = m.n_heads, m.d_head, m.d_model
    Q = _np(m.q.weight).reshape(H, E, d)
    K = _np(m.k.weight).reshape(H, E, d)
    V = _np(m.v.weight).reshape(H, E, d)
    O = _np(m.o.weight).reshape(d, H, E)
    M = _np(m.mask)[:n, :n]
    I = np.eye(n)
    if not m.squared:
        # y[t,o] = c sum_s M[t,s] sum_h O[o,h,f] (Q x_t . K x_s)_h (V x_s)_f
        T = m.scale * np.einsum("ohf,hei,hej,hfk,ta,ts,sb,sc->toaibjck", O, Q, K, V, I, M, I, I)
    else:
        T = m.scale**2 * np.einsum(
            "ohf,hei,hej,hgu,hgv,hfk,ta,tb,ts,sc,sp,sq->toaicjbupvqk",
            O, Q, K, Q, K, V, I, I, M, I, I, I,
        )
    return padded_from_real(T, n, d, d, residual=m.residual)


def layer_tensor(m, n: int) -> np.ndarray:
    """Canonical tensor of one module acting on sequences of length n."""
    if isinstance(m, tnsim.nn.BilinearAttention):
        return attention_tensor(m, n)
    if isinstance(m, tnsim.nn.Trilinear):
        return embed_positionwise(trilinear_tensor(m), n)
    if isinstance(m, tnsim.nn.Embedding):
        W = _np(m.weight)  # (vocab, d)
        V_, d = W.shape
        A = np.zeros((d + 1, V_ + 1))
        A[0, 0] = 1
        A[1:, 1:] = W.T
        C = embed_positionwise(A, n)
        if m.pos is not None:
            P = _np(m.pos)[:n]
            for t in range(n):
                C[1 + t * d : 1 + (t + 1) * d, 0] += P[t]
        return C
    if isinstance(m, (torch.nn.Linear, tnsim.nn.Bilinear)):
        return embed_positionwise(brute.layer_tensor(m), n)
    raise TypeError(type(m))


def trilinear_tensor(m: tnsim.nn.Trilinear) -> np.ndarray:
    """Padded vector tensor of D(Ax * Bx * Cx) (+ x), from its formula."""
    mats = []
    for lin in (m.a, m.b, m.c):
        W = _np(lin.weight)
        b = _np(lin.bias) if lin.bias is not None else np.zeros(W.shape[0])
        mats.append(np.concatenate([b[:, None], W], axis=1))
    D = _np(m.down.weight)
    db = _np(m.down.bias) if m.down.bias is not None else np.zeros(D.shape[0])
    o, d = D.shape[0], m.a.in_features
    T = np.zeros((o + 1,) + (d + 1,) * 3)
    T[1:] = np.einsum("oh,hi,hj,hk->oijk", D, *mats)
    T[1:, 0, 0, 0] += db
    T[0, 0, 0, 0] = 1
    if m.residual:
        for i in range(d):
            T[i + 1, i + 1, 0, 0] += 1
    return T


def flat_layers(model) -> list:
    """Modules in order, transformer blocks split into attention and MLP."""
    mods = list(model) if isinstance(model, torch.nn.Sequential) else [model]
    out = []
    for m in mods:
        if isinstance(m, tnsim.nn.TensorTransformerBlock):
            out += [m.attn, m.mlp]
        else:
            out.append(m)
    return out


def layer_tensors(model, n: int) -> list[np.ndarray]:
    return [layer_tensor(m, n) for m in flat_layers(model)]


def model_tensor(model, n: int) -> np.ndarray:
    T = None
    for A in layer_tensors(model, n):
        T = A if T is None else brute.compose_tensors(A, T)
    return T


def evaluate(C: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Real outputs, shape (n, o), of a canonical tensor at the sequence X."""
    y = brute.evaluate(C, X.reshape(-1))
    return y.reshape(X.shape[0], -1)


# --- measures in canonical coordinates -------------------------------------------------------


def sequence_gaussian(n: int, mean=None, cov=None, d: int | None = None):
    """Mean and covariance of vec X for i.i.d. positions (``I_n (x) Sigma``)."""
    mean = np.zeros(d) if mean is None else _np(torch.as_tensor(mean))
    cov = np.eye(len(mean)) if cov is None else _np(torch.as_tensor(cov))
    return np.tile(mean, n), np.kron(np.eye(n), cov)


def out_index(n: int, o: int, positions=None, features=None) -> list[int]:
    """Real canonical output indices of the selected positions and features."""
    positions = range(n) if positions is None else positions
    features = range(o) if features is None else features
    return [t * o + j for t in positions for j in features]


def tensor_inner(Ca, Cb, outputs=None) -> float:
    return brute.tensor_inner(Ca, Cb, outputs)


def gaussian_inner(Ca, Cb, n, mean=None, cov=None, d=None, outputs=None, centred=False) -> float:
    m, C = sequence_gaussian(n, mean, cov, d)
    return brute.gaussian_inner(Ca, Cb, m, C, outputs=outputs, centred=centred)


def hierarchical_inner(layers_a, layers_b, outputs=None) -> float:
    """What the recursive tensor method computes: each layer symmetrised over its own copies
    (after homogenising), then composed; plain Frobenius product of the compositions."""
    def comp(layers):
        T = None
        for A in layers:
            S = brute.sym(brute.homogenise(A, A.ndim - 1))
            T = S if T is None else brute.compose_tensors(S, T)
        return T

    return float(np.sum(brute._real(comp(layers_a), outputs) * brute._real(comp(layers_b), outputs)))


def closure_inner(layers_a, layers_b, n, mean=None, cov=None, d=None, centred=False) -> float:
    m, C = sequence_gaussian(n, mean, cov, d)
    return brute.gaussian_closure_inner(layers_a, layers_b, torch.tensor(m), torch.tensor(C), centred=centred)


# --- quadrature of forward passes ------------------------------------------------------------


def quadrature_inner(fa, fb, n: int, d: int, degree: int, mean=None, cov=None, centred=False,
                     select=None) -> float:
    """E[f_a(X) . f_b(X)] by tensor-product Gauss-Hermite quadrature (exact for polynomials).

    ``degree`` bounds the degree of ``f_a . f_b``; ``select`` maps an output (batch, ...) to
    the compared part.
    """
    p = degree // 2 + 1
    nodes, weights = np.polynomial.hermite_e.hermegauss(p)
    weights = weights / math.sqrt(2 * math.pi)
    dim = n * d
    grid = np.array(list(itertools.product(range(p), repeat=dim)))
    z = nodes[grid]  # (N, dim)
    w = np.prod(weights[grid], axis=1)
    mean = np.zeros(d) if mean is None else _np(torch.as_tensor(mean))
    cov = np.eye(d) if cov is None else _np(torch.as_tensor(cov))
    L = np.linalg.cholesky(cov)
    X = z.reshape(-1, n, d) @ L.T + mean
    X = torch.tensor(X)
    with torch.no_grad():
        ya, yb = fa(X), fb(X)
    if select is not None:
        ya, yb = select(ya), select(yb)
    ya = _np(ya).reshape(len(w), -1)
    yb = _np(yb).reshape(len(w), -1)
    if centred:
        ya = ya - w @ ya
        yb = yb - w @ yb
    return float(w @ np.sum(ya * yb, axis=1))


def monte_carlo(fa, fb, n, d, samples=1_000_000, mean=None, cov=None, seed=0, chunks=10):
    """Monte Carlo estimate of E[f_a . f_b] and its standard error."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.zeros(d, dtype=torch.float64) if mean is None else torch.as_tensor(mean)
    cov = torch.eye(d, dtype=torch.float64) if cov is None else torch.as_tensor(cov)
    L = torch.linalg.cholesky(cov)
    vals = []
    with torch.no_grad():
        for _ in range(chunks):
            X = torch.randn(samples // chunks, n, d, generator=g, dtype=torch.float64) @ L.T + mean
            vals.append((fa(X) * fb(X)).flatten(1).sum(1))
    v = torch.cat(vals)
    return float(v.mean()), float(v.std() / math.sqrt(len(v)))
