"""Three stacked bilinear layers (degree 8): exact and recursive against independent oracles."""

import numpy as np
import torch

import brute
import tnsim


def depth3(seed, bias=False, d=2, h=3):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        tnsim.nn.Bilinear(d, h, d, bias=bias),
        tnsim.nn.Bilinear(d, h, d, bias=bias),
        tnsim.nn.Bilinear(d, h, 2, bias=bias),
    ).double()


def rel(a, b):
    return abs(a - b) / abs(b)


def test_recursive_symmetriser_matches_permutation_sum():
    T = np.random.default_rng(0).normal(size=(2, 3, 3, 3, 3, 3))
    np.testing.assert_allclose(brute.sym_recursive(T), brute.sym(T), rtol=1e-12, atol=1e-14)


def test_depth3_tensor_measure_exact_and_recursive():
    a, b = depth3(1, bias=True), depth3(2, bias=True)
    Ta, Tb = brute.model_tensor(a), brute.model_tensor(b)
    assert Ta.ndim == 9
    assert rel(tnsim.inner(a, b, measure="tensor", method="exact"), brute.tensor_inner(Ta, Tb)) < 1e-10
    hier = brute.hierarchical_inner(Ta, Tb, depth=3)
    assert rel(tnsim.inner(a, b, measure="tensor", method="recursive"), hier) < 1e-10


def test_depth3_gaussian_exact_against_monte_carlo():
    """Materialising the order-16 Wick moment is out of reach; 10^6 samples are not."""
    a, b = depth3(3), depth3(4)
    exact = tnsim.inner(a, b, method="exact")
    g = torch.Generator().manual_seed(0)
    vals = []
    with torch.no_grad():
        for _ in range(10):
            x = torch.randn(100_000, 2, generator=g, dtype=torch.float64)
            vals.append((a(x) * b(x)).sum(1))
    v = torch.cat(vals)
    est, se = float(v.mean()), float(v.std() / len(v) ** 0.5)
    assert abs(exact - est) < 4 * se, (exact, est, se)
    # 606 Wick orbits per inner product (of 2027025 perfect matchings) for bias-free layers
    assert tnsim.cost(a, b, method="exact").contractions == 3 * 606


def test_depth3_gaussian_closure():
    a, b = depth3(5, bias=True), depth3(6, bias=True)
    want = brute.gaussian_closure_inner(brute.layer_tensors(a), brute.layer_tensors(b))
    assert rel(tnsim.inner(a, b, method="recursive"), want) < 1e-10
