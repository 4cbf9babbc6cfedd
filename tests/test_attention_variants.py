"""Attention as the field writes it: Q/K/V biases, rotary embeddings, two score pairs,
multi-head, causal or no mask.

Each variant is checked two independent ways: the compiled network, evaluated term by term on
random inputs, equals the module's forward pass; and the exact Gaussian inner product equals
Gauss–Hermite quadrature of the forward passes (exact for polynomials) and a Monte Carlo
estimate within 4 standard errors; the two-score-pair form's tensor measure against its
canonical tensor written from the formula. Sizes: n_ctx = 2, d_model = 2, float64.
"""

import brute_seq as bs
import numpy as np
import pytest
import torch
from seqmodels import D, N, rel, run_network

import tnsim

VARIANTS = {
    "biases": dict(bias=True),
    "rope": dict(rope=True),
    "two score pairs": dict(paired=True),
    "two pairs, rope, biases, residual, two heads": dict(
        paired=True, rope=True, bias=True, residual=True, n_heads=2, d_head=2
    ),
    "squared, rope, biases, no mask": dict(squared=True, rope=True, bias=True, causal=False),
    "rope, biases, two heads, no mask": dict(rope=True, bias=True, n_heads=2, d_head=2, causal=False),
}


def layer(seed: int, n: int = N, d: int = D, **kw) -> tnsim.nn.BilinearAttention:
    """Weights and biases N(0, 0.7^2), so every coefficient matters."""
    torch.manual_seed(seed)
    m = tnsim.nn.BilinearAttention(d, n, rope_base=3.0, **kw).double()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.7)
    return m


def degree(kw) -> int:
    return 5 if kw.get("squared") or kw.get("paired") else 3


@pytest.mark.parametrize("case", list(VARIANTS))
def test_compiled_network_is_the_forward_pass(case):
    m = layer(1, n=3, d=4, **{**VARIANTS[case], **({"d_head": 2} if "n_heads" not in VARIANTS[case] else {})})
    net = tnsim.compile(m)
    X = torch.randn(5, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for x in X:
        want = m(x).detach()
        assert torch.allclose(run_network(net, x), want, rtol=1e-10, atol=1e-10 * want.abs().max())


#: degree-3 variants (a few dozen Wick orbits; degree 5 with biases needs thousands)
CUBIC = ["biases", "rope", "rope, biases, two heads, no mask"]


@pytest.mark.parametrize("case", CUBIC)
def test_exact_gaussian_against_quadrature(case):
    kw = VARIANTS[case]
    a, b = layer(3, **kw), layer(4, **kw)
    for x, y in ((a, b), (a, a)):
        want = bs.quadrature_inner(x, y, N, D, 2 * degree(kw))
        assert rel(tnsim.inner(x, y, measure="gaussian", method="exact"), want) < 1e-10


def paired_tensor(m: tnsim.nn.BilinearAttention, n: int) -> np.ndarray:
    """Canonical tensor of two-score-pair attention with rotary embeddings (no biases), from
    its formula: per-position query/key maps R_t W."""
    H, E, d = m.n_heads, m.d_head, m.d_model
    R = m.rope[:n].numpy() if m.rope is not None else np.broadcast_to(np.eye(E), (n, E, E))
    def per_position(lin):
        return np.einsum("tef,hfi->thei", R, lin.weight.detach().numpy().reshape(H, E, d))
    Q, K, Q2, K2 = (per_position(x) for x in (m.q, m.k, m.q2, m.k2))
    V = m.v.weight.detach().numpy().reshape(H, E, d)
    O = m.o.weight.detach().numpy().reshape(d, H, E)
    M, I = m.mask[:n, :n].numpy(), np.eye(n)
    T = m.scale**2 * np.einsum(
        "ohf,thei,shej,thgu,shgv,hfk,ta,tb,ts,sc,sp,sq->toaicjbupvqk",
        O, Q, K, Q2, K2, V, I, I, M, I, I, I,
    )
    return bs.padded_from_real(T, n, d, d)


@pytest.mark.parametrize("kw", [dict(paired=True), dict(paired=True, rope=True, n_heads=2, d_head=2)])
def test_two_score_pairs_tensor_measure_against_brute_force(kw):
    a, b = layer(9, **kw), layer(10, **kw)
    Ca, Cb = paired_tensor(a, N), paired_tensor(b, N)
    X = np.random.default_rng(0).normal(size=(N, D))  # the oracle is the forward pass
    np.testing.assert_allclose(bs.evaluate(Ca, X), a(torch.tensor(X)).detach().numpy(), atol=1e-10)
    assert rel(tnsim.inner(a, b, measure="tensor", method="exact"), bs.tensor_inner(Ca, Cb)) < 1e-10


def test_exact_gaussian_against_monte_carlo():
    """Rotary embeddings, biases, residual, two heads, three positions, a non-zero mean and a
    full covariance: the exact inner product within 4 standard errors of 4*10^5 samples (the
    standard error is printed on failure)."""
    kw = dict(rope=True, bias=True, residual=True, n_heads=2, d_head=2)
    a, b = layer(5, n=3, **kw), layer(6, n=3, **kw)
    g = torch.Generator().manual_seed(7)
    mean = 0.3 * torch.randn(D, generator=g, dtype=torch.float64)
    A = torch.randn(D, D, generator=g, dtype=torch.float64)
    cov = A @ A.T / D + 0.3 * torch.eye(D, dtype=torch.float64)
    exact = tnsim.inner(a, b, mean=mean, cov=cov, method="exact")
    est, se = bs.monte_carlo(a, b, 3, D, samples=400_000, mean=mean, cov=cov)
    assert abs(exact - est) < 4 * se, (exact, est, se)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def test_rope_matrices_are_the_rotate_half_rotation():
    n, e, base = 5, 6, 100.0
    R = tnsim.nn.rope_matrices(n, e, base).double()
    q = torch.randn(n, e, dtype=torch.float64)
    inv = base ** (-torch.arange(0, e, 2, dtype=torch.float64) / e)
    ang = torch.arange(n, dtype=torch.float64)[:, None] * inv
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    assert torch.allclose(torch.einsum("tef,tf->te", R, q), q * cos + rotate_half(q) * sin, atol=1e-12)


def test_heads_sum_to_the_layer():
    m = layer(8, n=3, d=4, paired=True, rope=True, bias=True, n_heads=2, d_head=2)
    x = torch.randn(3, 4, dtype=torch.float64)
    assert torch.allclose(m.head(0)(x) + m.head(1)(x), m(x), atol=1e-10)


def test_default_layer_draws_the_weights_it_always_drew():
    """New options default off: same parameters, same order, same random draws."""
    torch.manual_seed(0)
    want = [torch.nn.Linear(4, 4, bias=False).weight for _ in range(4)]
    torch.manual_seed(0)
    m = tnsim.nn.BilinearAttention(4, 3)
    assert list(m.state_dict()) == ["q.weight", "k.weight", "v.weight", "o.weight"]
    assert all(torch.equal(p, w) for p, w in zip(m.parameters(), want))


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="squared=True or paired=True"):
        tnsim.nn.BilinearAttention(4, 3, squared=True, paired=True)
    with pytest.raises(ValueError, match="d_head=3"):
        tnsim.nn.BilinearAttention(6, 3, d_head=3, rope=True)
    with pytest.raises(tnsim.NotMultilinearError, match="bias=True"):
        tnsim.compile(tnsim.nn.BilinearAttention(4, 3, bias=True), pad=False)
