"""Polynomial attention and tensor-transformer blocks against canonical brute force.

Sizes: n_ctx = 2, d_model = 2 (canonical input dimension 1 + 4 = 5), float64, rtol 1e-10.
"""

import itertools

import brute_seq as bs
import numpy as np
import pytest
import torch
from seqmodels import D, N, attention, block, gaussian_params, rel

import tnsim

RTOL = 1e-10

ATTENTION = {
    "one head, causal": dict(),
    "two heads, no mask": dict(n_heads=2, d_head=1, causal=False),
    "residual": dict(residual=True),
    "squared": dict(squared=True),
    "squared, residual, two heads": dict(squared=True, residual=True, n_heads=2, d_head=1),
}


def degree(kw) -> int:
    return 5 if kw.get("squared") else 3


@pytest.mark.parametrize("case", list(ATTENTION))
def test_oracle_reproduces_forward(case):
    """The canonical tensors evaluate to the modules' outputs (the oracle itself is right)."""
    m = attention(seed=3, **ATTENTION[case])
    C = bs.model_tensor(m, N)
    X = np.random.default_rng(1).normal(size=(N, D))
    np.testing.assert_allclose(bs.evaluate(C, X), m(torch.tensor(X)).detach().numpy(), atol=1e-12)


def test_oracle_reproduces_block_forward():
    m = block(seed=3)
    C = bs.model_tensor(m, N)
    X = np.random.default_rng(2).normal(size=(N, D))
    np.testing.assert_allclose(bs.evaluate(C, X), m(torch.tensor(X)).detach().numpy(), atol=1e-12)


@pytest.mark.parametrize("case", list(ATTENTION))
def test_attention_both_measures_both_methods(case):
    kw = ATTENTION[case]
    a, b = attention(seed=1, **kw), attention(seed=2, **kw)
    Ca, Cb = bs.model_tensor(a, N), bs.model_tensor(b, N)
    want_t = bs.tensor_inner(Ca, Cb)
    want_g = bs.quadrature_inner(a, b, N, D, 2 * degree(kw))
    for method in ("exact", "recursive"):  # one layer: the recursive method is exact
        assert rel(tnsim.inner(a, b, measure="tensor", method=method), want_t) < RTOL
        # (time: for squared scores the Gaussian recursive pass repeats the exact one's
        # contractions with open outputs; it is checked on the other variants)
        if method == "exact" or not kw.get("squared"):
            assert rel(tnsim.inner(a, b, method=method), want_g) < RTOL
    if degree(kw) == 3:  # Wick moments of the materialised tensors agree with quadrature
        assert rel(bs.gaussian_inner(Ca, Cb, N, d=D), want_g) < RTOL


def test_attention_gaussian_with_mean_cov_and_centred():
    a, b = attention(seed=4, residual=True), attention(seed=5, residual=True)
    mean, cov = gaussian_params(seed=6)
    for centred in (False, True):
        want = bs.quadrature_inner(a, b, N, D, 6, mean, cov, centred=centred)
        assert rel(tnsim.inner(a, b, mean=mean, cov=cov, centred=centred, method="exact"), want) < RTOL
        assert rel(tnsim.inner(a, b, mean=mean, cov=cov, centred=centred, method="recursive"), want) < RTOL


def test_attention_monte_carlo_three_positions():
    """n_ctx = 3 with a non-trivial mean and covariance, against 10^6 samples."""
    a = attention(seed=7, n=3, d=2, residual=True, n_heads=2, d_head=1)
    b = attention(seed=8, n=3, d=2, residual=True, n_heads=2, d_head=1)
    mean, cov = gaussian_params(seed=9)
    exact = tnsim.inner(a, b, mean=mean, cov=cov, method="exact")
    est, se = bs.monte_carlo(a, b, 3, 2, mean=mean, cov=cov)
    assert abs(exact - est) < 4 * se, (exact, est, se)


def test_similarity_matrix_of_attention_checkpoints():
    """Stacked (batched) contractions give the pairwise similarities."""
    models = [attention(seed=s, n_heads=2, d_head=1, residual=True) for s in range(3)]
    for measure in ("tensor", "gaussian"):
        M = tnsim.similarity_matrix(models, measure=measure, method="exact")
        for i in range(3):
            for j in range(3):
                s = tnsim.similarity(models[i], models[j], measure=measure, method="exact")
                assert abs(M[i, j] - s) < 1e-10


def test_block_tensor_measure_exact_and_recursive():
    a, b = block(seed=1), block(seed=2)
    Ca, Cb = bs.model_tensor(a, N), bs.model_tensor(b, N)
    assert rel(tnsim.inner(a, b, measure="tensor", method="exact"), bs.tensor_inner(Ca, Cb)) < RTOL
    La, Lb = bs.layer_tensors(a, N), bs.layer_tensors(b, N)
    got = tnsim.inner(a, b, measure="tensor", method="recursive")
    assert rel(got, bs.hierarchical_inner(La, Lb)) < RTOL  # per-layer symmetrisation
    assert rel(got, bs.tensor_inner(Ca, Cb)) > 1e-6  # which really differs from the full one


def test_block_gaussian_exact_and_recursive():
    """Exact: degree 6 x 6 (12 input copies), against quadrature of the forward passes;
    recursive: Gaussian closure over the two layers (attention, MLP), by brute force."""
    a, b = block(seed=1), block(seed=2)
    exact = tnsim.inner(a, b, method="exact")
    assert rel(exact, bs.quadrature_inner(a, b, N, D, 12)) < RTOL
    La, Lb = bs.layer_tensors(a, N), bs.layer_tensors(b, N)
    mean, cov = gaussian_params(seed=3)
    for centred in (False, True):
        got = tnsim.inner(a, b, method="recursive", mean=mean, cov=cov, centred=centred)
        assert rel(got, bs.closure_inner(La, Lb, N, mean, cov, centred=centred)) < RTOL
    assert rel(tnsim.inner(a, b, method="recursive"), exact) > 1e-6  # closure != exact


# --- symmetries ------------------------------------------------------------------------------


def _orbit_count(objects, group) -> int:
    seen, orbits = set(), 0
    for o in objects:
        if o in seen:
            continue
        orbits += 1
        seen |= {g(o) for g in group}
    return orbits


def _perm_group(gens, k):
    elems = {tuple(range(k))}
    frontier = list(elems)
    while frontier:
        new = []
        for p in frontier:
            for g in gens:
                q = tuple(p[g[i]] for i in range(k))
                if q not in elems:
                    elems.add(q)
                    new.append(q)
        frontier = new
    return sorted(elems)


def _matchings(points):
    if not points:
        yield frozenset()
        return
    p, rest = points[0], points[1:]
    for j, q in enumerate(rest):
        for m in _matchings(rest[:j] + rest[j + 1:]):
            yield m | {frozenset((p, q))}


def test_squared_score_symmetry_and_contraction_counts():
    """Squared scores: the swap of the two (query, key) pairs is found; the exact method then
    needs one contraction per orbit of Wick matchings / leg bijections, counted here by
    brute-force enumeration."""
    a, b = attention(seed=1, squared=True), attention(seed=2, squared=True)
    (term,) = tnsim.compile(a).terms
    G = _perm_group(term.group, 5)
    assert len(G) == 2 and (2, 3, 0, 1, 4) in G  # copies are (q, k, q, k, v)
    # Gaussian: perfect matchings of the 10 copies of <a, b> under G x G
    both = [tuple(list(g) + [5 + h for h in g2]) for g in G for g2 in G]
    acts = [lambda m, p=p: frozenset(frozenset(p[i] for i in pair) for pair in m) for p in both]
    matchings = list(_matchings(tuple(range(10))))
    assert len(matchings) == 945
    wick = _orbit_count(matchings, acts)
    # tensor measure: bijections sigma with (g_b sigma g_a^-1)
    bij = list(itertools.permutations(range(5)))
    acts_t = [
        lambda s, ga=ga, gb=gb: tuple(gb[s[ga.index(i)]] for i in range(5)) for ga in G for gb in G
    ]
    cosets = _orbit_count(bij, acts_t)
    cost_g = tnsim.cost(a, b, measure="gaussian", method="exact")
    cost_t = tnsim.cost(a, b, measure="tensor", method="exact")
    assert cost_g.contractions == 3 * wick  # <a,b>, <a,a>, <b,b>
    assert cost_t.contractions == 3 * cosets
    assert (wick, cosets) == (265, 32)  # of 945 matchings and 120 bijections per product


def _gauge_heads(m: tnsim.nn.BilinearAttention, seed: int) -> None:
    """Per head: q -> A q, k -> A^-T k (plain scores) / any orthogonal-free gauge, v -> B v,
    o -> o B^-1; then permute the heads."""
    g = torch.Generator().manual_seed(seed)
    H, E = m.n_heads, m.d_head
    perm = torch.randperm(H, generator=g)
    with torch.no_grad():
        Q, K = m.q.weight.view(H, E, -1).clone(), m.k.weight.view(H, E, -1).clone()
        V, O = m.v.weight.view(H, E, -1).clone(), m.o.weight.view(-1, H, E).clone()
        for h in range(H):
            A = torch.randn(E, E, generator=g, dtype=torch.float64) + 2 * torch.eye(E, dtype=torch.float64)
            B = torch.randn(E, E, generator=g, dtype=torch.float64) + 2 * torch.eye(E, dtype=torch.float64)
            Q[h], K[h] = A @ Q[h], torch.linalg.inv(A).T @ K[h]
            V[h], O[:, h] = B @ V[h], O[:, h] @ torch.linalg.inv(B)
        m.q.weight.copy_(Q[perm].reshape(H * E, -1))
        m.k.weight.copy_(K[perm].reshape(H * E, -1))
        m.v.weight.copy_(V[perm].reshape(H * E, -1))
        m.o.weight.copy_(O[:, perm].reshape(-1, H * E))


@pytest.mark.parametrize("squared", [False, True])
def test_attention_invariant_to_head_gauges_and_permutations(squared):
    kw = dict(n_heads=2, d_head=2, squared=squared, residual=not squared)
    a, a2, c = attention(seed=1, **kw), attention(seed=1, **kw), attention(seed=2, **kw)
    _gauge_heads(a2, 5)
    X = torch.randn(N, D, dtype=torch.float64)
    assert torch.allclose(a(X), a2(X), atol=1e-12)  # same function, different weights
    for measure in ("tensor", "gaussian"):
        for method in ("exact",) if squared else ("exact", "recursive"):
            assert abs(tnsim.similarity(a, a2, measure=measure, method=method) - 1) < 1e-9
            s1 = tnsim.similarity(a, c, measure=measure, method=method)
            s2 = tnsim.similarity(a2, c, measure=measure, method=method)
            assert abs(s1 - s2) < 1e-9 and abs(s1) < 1 - 1e-6


def _rotate_stream(model: torch.nn.Sequential, seed: int) -> None:
    """Rotate the residual stream of embed -> attention or block -> unembed by an orthogonal Q."""
    g = torch.Generator().manual_seed(seed)
    d = model[0].weight.shape[1]
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    emb, mid, unemb = model
    attn = mid.attn if isinstance(mid, tnsim.nn.TensorTransformerBlock) else mid
    reads, writes = [attn.q, attn.k, attn.v], [attn.o]
    if attn is not mid:
        reads, writes = reads + [mid.mlp.left, mid.mlp.right], writes + [mid.mlp.down]
    with torch.no_grad():
        emb.weight.copy_(emb.weight @ Q.T)
        for lin in reads:
            lin.weight.copy_(lin.weight @ Q.T)
        for lin in writes:
            lin.weight.copy_(Q @ lin.weight)
        unemb.weight.copy_(unemb.weight @ Q.T)


@pytest.mark.parametrize("layer", ["attention", "block"])
def test_residual_stream_rotation_of_a_sequence_model(layer):
    def make(seed):
        torch.manual_seed(seed)
        mid = (tnsim.nn.TensorTransformerBlock(D, N, d_hidden=2) if layer == "block"
               else tnsim.nn.BilinearAttention(D, N, residual=True))
        return torch.nn.Sequential(tnsim.nn.Embedding(3, D), mid, tnsim.nn.Unembedding(D, 3)).double()

    a, c = make(1), make(2)
    a2 = make(1)
    _rotate_stream(a2, 4)
    X = torch.randn(N, 3, dtype=torch.float64)
    assert torch.allclose(a(X), a2(X), atol=1e-12)
    # the block's exact values are checked in the tests above; here its recursive ones
    methods = ("recursive",) if layer == "block" else ("exact", "recursive")
    for measure in ("tensor", "gaussian"):
        for method in methods:
            assert abs(tnsim.similarity(a, a2, measure=measure, method=method) - 1) < 1e-9
            s1 = tnsim.similarity(a, c, measure=measure, method=method)
            s2 = tnsim.similarity(a2, c, measure=measure, method=method)
            assert abs(s1 - s2) < 1e-9 and abs(s1) < 1 - 1e-6


def test_softmax_attention_is_rejected_with_its_line():
    class SoftmaxAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q = torch.nn.Linear(D, D, bias=False)

        def forward(self, x):
            s = self.q(x) @ x.T
            return torch.softmax(s, dim=-1) @ x

    with pytest.raises(tnsim.NotMultilinearError, match=r"softmax.*test_attention\.py:\d+"):
        tnsim.compile(SoftmaxAttention().double(), input_shape=(N, D))
