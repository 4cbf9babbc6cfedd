"""Brute-force oracles for tiny models, written independently of tnsim's machinery.

Everything here materialises full tensors with numpy ``einsum``: a model of polynomial degree
K with d inputs and o outputs becomes the padded homogeneous tensor ``T`` of shape
``(o+1, d+1, ..., d+1)`` with ``f~(x) = T . (x~)^{(x)K}`` and ``x~ = (1, x)``; output index 0 is
the constant. Symmetrisation enumerates ``itertools.permutations``; Gaussian moments enumerate
partial matchings by hand; hierarchical symmetrisation enumerates tree automorphisms.
"""

from __future__ import annotations

import itertools
import math
import string

import numpy as np
import torch

import tnsim


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().cpu().numpy()


def layer_tensor(module) -> np.ndarray:
    """Padded homogeneous tensor of one layer, written from its formula."""
    if isinstance(module, tnsim.nn.Bilinear):
        L, R, D = _np(module.left.weight), _np(module.right.weight), _np(module.down.weight)
        zeros = lambda n: np.zeros(n)  # noqa: E731
        lb = _np(module.left.bias) if module.left.bias is not None else zeros(L.shape[0])
        rb = _np(module.right.bias) if module.right.bias is not None else zeros(R.shape[0])
        db = _np(module.down.bias) if module.down.bias is not None else zeros(D.shape[0])
        Lt = np.concatenate([lb[:, None], L], axis=1)  # (h, d+1)
        Rt = np.concatenate([rb[:, None], R], axis=1)
        o, d = D.shape[0], L.shape[1]
        A = np.zeros((o + 1, d + 1, d + 1))
        A[1:] = np.einsum("oh,hi,hj->oij", D, Lt, Rt)
        A[1:, 0, 0] += db
        A[0, 0, 0] = 1.0
        if module.residual:
            for i in range(d):
                A[i + 1, i + 1, 0] += 1.0
        return A
    if isinstance(module, torch.nn.Linear):
        W = _np(module.weight)
        b = _np(module.bias) if module.bias is not None else np.zeros(W.shape[0])
        A = np.zeros((W.shape[0] + 1, W.shape[1] + 1))
        A[1:, 1:] = W
        A[1:, 0] = b
        A[0, 0] = 1.0
        return A
    raise TypeError(type(module))


def compose_tensors(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """Tensor of outer(inner(x), ..., inner(x)): inner plugged into every input leg."""
    k = outer.ndim - 1
    out = outer
    for _ in range(k):
        # contract the first remaining input leg of ``out`` with inner's output leg; the new
        # legs go to the end, so blocks end up in copy order
        out = np.tensordot(out, inner, axes=([1], [0]))
    return out


def model_tensor(model: torch.nn.Module) -> np.ndarray:
    layers = list(model) if isinstance(model, torch.nn.Sequential) else [model]
    T = None
    for layer in layers:
        A = layer_tensor(layer)
        T = A if T is None else compose_tensors(A, T)
    return T


def evaluate(T: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Real outputs of the padded tensor at input x."""
    xt = np.concatenate([[1.0], x])
    out = T
    for _ in range(T.ndim - 1):
        out = out @ xt
    return out[1:]


def homogenise(T: np.ndarray, K: int) -> np.ndarray:
    e0 = np.zeros(T.shape[1] if T.ndim > 1 else 1)
    e0[0] = 1
    while T.ndim - 1 < K:
        T = np.multiply.outer(T, e0)
    return T


def sym(T: np.ndarray) -> np.ndarray:
    """Average over all permutations of the input axes (axis 0 is the output)."""
    k = T.ndim - 1
    if k > 5:
        return sym_recursive(T)
    perms = list(itertools.permutations(range(1, k + 1)))
    return sum(np.transpose(T, (0,) + p) for p in perms) / len(perms)


def sym_recursive(T: np.ndarray) -> np.ndarray:
    """The same average via the coset decomposition S_m = U_j (j m) S_{m-1}:
    Sym_m = (1/m) sum_{j<=m} (j m) . Sym_{m-1}  (checked against ``sym`` in the tests)."""
    k = T.ndim - 1
    S = T
    for m in range(2, k + 1):
        acc = S.copy()
        for j in range(1, m):
            axes = list(range(k + 1))
            axes[j], axes[m] = axes[m], axes[j]
            acc += np.transpose(S, axes)
        S = acc / m
    return S


def _real(T: np.ndarray, outputs=None) -> np.ndarray:
    T = T[1:]
    if outputs is not None:
        T = T[list(outputs)]
    return T


def tensor_inner(Ta, Tb, outputs=None) -> float:
    K = max(Ta.ndim, Tb.ndim) - 1
    Sa, Sb = sym(homogenise(Ta, K)), sym(homogenise(Tb, K))
    return float(np.sum(_real(Sa, outputs) * _real(Sb, outputs)))


def tree_automorphisms(depth: int) -> list[tuple[int, ...]]:
    """Leaf permutations of the complete binary tree of the given depth."""
    if depth == 0:
        return [(0,)]
    sub = tree_automorphisms(depth - 1)
    h = 2 ** (depth - 1)
    out = []
    for g1 in sub:
        for g2 in sub:
            left, right = list(g1), [h + x for x in g2]
            out.append(tuple(left + right))
            out.append(tuple(right + left))
    return out


def hierarchical_inner(Ta, Tb, depth: int, outputs=None) -> float:
    group = tree_automorphisms(depth)
    Sa = sum(np.transpose(Ta, (0,) + tuple(1 + g for g in p)) for p in group) / len(group)
    Sb = sum(np.transpose(Tb, (0,) + tuple(1 + g for g in p)) for p in group) / len(group)
    return float(np.sum(_real(Sa, outputs) * _real(Sb, outputs)))


def partial_matchings(n: int):
    """All partial matchings of range(n) as (pairs, singles)."""
    if n == 0:
        yield [], []
        return

    def rec(items):
        if not items:
            yield [], []
            return
        first, rest = items[0], items[1:]
        for pairs, singles in rec(rest):  # first unpaired
            yield pairs, [first] + singles
        for j, other in enumerate(rest):
            for pairs, singles in rec(rest[:j] + rest[j + 1 :]):
                yield [(first, other)] + pairs, singles

    yield from rec(list(range(n)))


def moment_tensor(n: int, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """E[z^{(x)n}] for z ~ N(mean, cov) (cov may be singular), by Isserlis with means."""
    dim = len(mean)
    M = np.zeros((dim,) * n)
    letters = string.ascii_letters
    for pairs, singles in partial_matchings(n):
        ops, specs = [], []
        for p, q in pairs:
            ops.append(cov)
            specs.append(letters[p] + letters[q])
        for s in singles:
            ops.append(mean)
            specs.append(letters[s])
        if not ops:
            M += 1
            continue
        M += np.einsum(",".join(specs) + "->" + letters[:n], *ops)
    return M


def padded_gaussian(d: int, mean=None, cov=None):
    mean = np.zeros(d) if mean is None else _np(torch.as_tensor(mean))
    cov = np.eye(d) if cov is None else _np(torch.as_tensor(cov))
    m = np.concatenate([[1.0], mean])
    C = np.zeros((d + 1, d + 1))
    C[1:, 1:] = cov
    return m, C


def _contract_all(T: np.ndarray, M_part: np.ndarray) -> np.ndarray:
    return np.tensordot(T, M_part, axes=(list(range(1, T.ndim)), list(range(T.ndim - 1))))


def gaussian_inner(Ta, Tb, mean=None, cov=None, outputs=None, centred=False) -> float:
    d = Ta.shape[1] - 1
    m, C = padded_gaussian(d, mean, cov)
    ka, kb = Ta.ndim - 1, Tb.ndim - 1
    M = moment_tensor(ka + kb, m, C)
    A, B = _real(Ta, outputs), _real(Tb, outputs)
    # sum_o A[o, I] B[o, J] M[I, J]
    AM = np.tensordot(A, M, axes=(list(range(1, ka + 1)), list(range(ka))))  # (o, J...)
    value = float(np.sum(AM * B))
    if centred:
        ma = np.tensordot(A, moment_tensor(ka, m, C), axes=ka)
        mb = np.tensordot(B, moment_tensor(kb, m, C), axes=kb)
        value -= float(ma @ mb)
    return value


def joint_layer_moments(Ta, Tb, m, C_aa, C_ab, C_bb, m_a=None, m_b=None):
    """Exact first and second moments of (T_a(z_a), T_b(z_b)) for jointly Gaussian inputs."""
    m_a = m if m_a is None else m_a
    m_b = m if m_b is None else m_b
    na, nb = len(m_a), len(m_b)
    mj = np.concatenate([m_a, m_b])
    Cj = np.block([[C_aa, C_ab], [C_ab.T, C_bb]])
    ka, kb = Ta.ndim - 1, Tb.ndim - 1
    # embed each side's tensor in the joint space
    Ea = np.zeros((Ta.shape[0],) + (na + nb,) * ka)
    Ea[(slice(None),) + (slice(0, na),) * ka] = Ta
    Eb = np.zeros((Tb.shape[0],) + (na + nb,) * kb)
    Eb[(slice(None),) + (slice(na, na + nb),) * kb] = Tb
    M2 = moment_tensor(ka + kb, mj, Cj)
    S_ab = np.tensordot(np.tensordot(Ea, M2, axes=(list(range(1, ka + 1)), list(range(ka)))), Eb,
                        axes=(list(range(1, kb + 1)), list(range(1, kb + 1))))
    mean_a = np.tensordot(Ea, moment_tensor(ka, mj, Cj), axes=ka)
    mean_b = np.tensordot(Eb, moment_tensor(kb, mj, Cj), axes=kb)
    return mean_a, mean_b, S_ab


def gaussian_closure_inner(layers_a, layers_b, mean=None, cov=None, centred=False) -> float:
    """Gaussian closure by brute force: exact moments layer by layer, Gaussian in between."""
    d = layers_a[0].shape[1] - 1
    m, C = padded_gaussian(d, mean, cov)
    m_a = m_b = m
    C_aa = C_ab = C_bb = C
    for i, (A, B) in enumerate(zip(layers_a, layers_b)):
        ma, _, S_aa = joint_layer_moments(A, A, None, C_aa, C_aa, C_aa, m_a, m_a)
        mb, _, S_bb = joint_layer_moments(B, B, None, C_bb, C_bb, C_bb, m_b, m_b)
        _, _, S_ab = joint_layer_moments(A, B, None, C_aa, C_ab, C_bb, m_a, m_b)
        C_aa = S_aa - np.outer(ma, ma)
        C_bb = S_bb - np.outer(mb, mb)
        C_ab = S_ab - np.outer(ma, mb)
        m_a, m_b = ma, mb
        last = (S_ab, C_ab)
    S_ab, C_ab = last
    M = C_ab if centred else S_ab
    return float(np.trace(M[1:, 1:]))


def layer_tensors(model) -> list[np.ndarray]:
    layers = list(model) if isinstance(model, torch.nn.Sequential) else [model]
    return [layer_tensor(layer) for layer in layers]


def merge_linear(tensors: list[np.ndarray]) -> list[np.ndarray]:
    """Fuse degree-1 layers into the next non-linear layer (last ones into the previous)."""
    out, pending = [], None
    for A in tensors:
        if A.ndim == 2:
            pending = A if pending is None else A @ pending
            continue
        if pending is not None:
            A = compose_tensors(A, pending)
            pending = None
        out.append(A)
    if pending is not None:
        out[-1] = np.tensordot(pending, out[-1], axes=([1], [0]))
    return out
