"""Exact and recursive methods against brute-force materialisation (float64, rtol 1e-10)."""

import numpy as np
import pytest
import torch

import brute
import tnsim
from models import bilinear, residual_stack, stack2

RTOL = 1e-10


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


def gaussian_params(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = 0.5 * torch.randn(d, generator=g, dtype=torch.float64)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = A @ A.T / d + 0.2 * torch.eye(d, dtype=torch.float64)
    return mean, cov


CASES = {
    "one layer": lambda s: bilinear(seed=s),
    "one layer bias": lambda s: bilinear(bias=True, seed=s),
    "two layers": lambda s: stack2(seed=s),
    "two layers bias": lambda s: stack2(bias=True, seed=s),
    "two layers residual": lambda s: stack2(residual=True, seed=s),
    "two layers bias residual": lambda s: stack2(bias=True, residual=True, seed=s),
    "embed-residual-unembed": lambda s: residual_stack(layers=1, bias=True, seed=s),
}


def test_oracle_reproduces_forward():
    """The brute-force tensors evaluate to the modules' outputs (the oracle is right)."""
    for make in CASES.values():
        m = make(3)
        T = brute.model_tensor(m)
        for _ in range(3):
            x = np.random.default_rng(0).normal(size=T.shape[1] - 1)
            np.testing.assert_allclose(brute.evaluate(T, x), m(torch.tensor(x)).detach().numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", list(CASES))
def test_exact_tensor_measure(case):
    a, b = CASES[case](1), CASES[case](2)
    Ta, Tb = brute.model_tensor(a), brute.model_tensor(b)
    assert rel(tnsim.inner(a, b, measure="tensor", method="exact"), brute.tensor_inner(Ta, Tb)) < RTOL
    assert rel(tnsim.inner(a, a, measure="tensor", method="exact"), brute.tensor_inner(Ta, Ta)) < RTOL


@pytest.mark.parametrize("case", list(CASES))
def test_exact_gaussian_measure(case):
    a, b = CASES[case](1), CASES[case](2)
    Ta, Tb = brute.model_tensor(a), brute.model_tensor(b)
    mean, cov = gaussian_params(Ta.shape[1] - 1)
    assert rel(tnsim.inner(a, b, method="exact"), brute.gaussian_inner(Ta, Tb)) < RTOL
    got = tnsim.inner(a, b, method="exact", mean=mean, cov=cov)
    assert rel(got, brute.gaussian_inner(Ta, Tb, mean, cov)) < RTOL
    got = tnsim.inner(a, b, method="exact", mean=mean, cov=cov, centred=True)
    assert rel(got, brute.gaussian_inner(Ta, Tb, mean, cov, centred=True)) < RTOL


@pytest.mark.parametrize("case", ["two layers", "two layers bias residual"])
def test_recursive_tensor_is_hierarchical_symmetrisation(case):
    a, b = CASES[case](1), CASES[case](2)
    Ta, Tb = brute.model_tensor(a), brute.model_tensor(b)
    hier = brute.hierarchical_inner(Ta, Tb, depth=2)
    full = brute.tensor_inner(Ta, Tb)
    got = tnsim.inner(a, b, measure="tensor", method="recursive")
    assert rel(got, hier) < RTOL
    assert rel(hier, full) > 1e-6  # the two symmetrisations really differ


def test_recursive_equals_exact_for_one_layer():
    a, b = bilinear(bias=True, seed=1), bilinear(bias=True, seed=2)
    mean, cov = gaussian_params(3)
    for kw in ({"measure": "tensor"}, {"mean": mean, "cov": cov}, {"mean": mean, "centred": True}):
        e = tnsim.inner(a, b, method="exact", **kw)
        r = tnsim.inner(a, b, method="recursive", **kw)
        assert rel(r, e) < RTOL


@pytest.mark.parametrize("case", ["two layers", "two layers bias", "two layers bias residual"])
def test_recursive_gaussian_is_gaussian_closure(case):
    a, b = CASES[case](1), CASES[case](2)
    mean, cov = gaussian_params(3)
    for centred in (False, True):
        want = brute.gaussian_closure_inner(
            brute.layer_tensors(a), brute.layer_tensors(b), mean, cov, centred=centred
        )
        got = tnsim.inner(a, b, method="recursive", mean=mean, cov=cov, centred=centred)
        assert rel(got, want) < RTOL


def test_recursive_fuses_linear_layers():
    a, b = residual_stack(layers=2, bias=True, seed=1), residual_stack(layers=2, bias=True, seed=2)
    layers_a = brute.merge_linear(brute.layer_tensors(a))
    layers_b = brute.merge_linear(brute.layer_tensors(b))
    assert len(layers_a) == 2
    Ta = brute.compose_tensors(layers_a[1], layers_a[0])
    Tb = brute.compose_tensors(layers_b[1], layers_b[0])
    got = tnsim.inner(a, b, measure="tensor", method="recursive")
    assert rel(got, brute.hierarchical_inner(Ta, Tb, depth=2)) < RTOL
    got = tnsim.inner(a, b, method="recursive")
    assert rel(got, brute.gaussian_closure_inner(layers_a, layers_b)) < RTOL


def test_one_layer_identities():
    """E[f_a f_b] = sum_o tr A_o tr B_o + 2 <Sym A, Sym B>, and centred drops the trace term."""
    a, b = bilinear(seed=5), bilinear(seed=6)
    A = torch.einsum("oh,hi,hj->oij", a.down.weight, a.left.weight, a.right.weight).detach()
    B = torch.einsum("oh,hi,hj->oij", b.down.weight, b.left.weight, b.right.weight).detach()
    sA, sB = (A + A.transpose(1, 2)) / 2, (B + B.transpose(1, 2)) / 2
    trace = float((torch.einsum("oii->o", A) * torch.einsum("oii->o", B)).sum())
    sym = float((sA * sB).sum())
    assert rel(tnsim.inner(a, b), trace + 2 * sym) < RTOL
    assert rel(tnsim.inner(a, b, centred=True), 2 * sym) < RTOL
    assert rel(tnsim.inner(a, b, measure="tensor"), sym) < RTOL


@pytest.mark.parametrize("outputs", [[1], [0, 1], "projection"])
def test_output_slices(outputs):
    a, b = stack2(bias=True, seed=1), stack2(bias=True, seed=2)
    Ta, Tb = brute.model_tensor(a), brute.model_tensor(b)
    if outputs == "projection":
        P = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
        Pa = np.einsum("ko,o...->k...", P.numpy(), Ta[1:])
        Pb = np.einsum("ko,o...->k...", P.numpy(), Tb[1:])
        Ta = np.concatenate([Ta[:1], Pa])
        Tb = np.concatenate([Tb[:1], Pb])
        want_t, want_g = brute.tensor_inner(Ta, Tb), brute.gaussian_inner(Ta, Tb)
        outputs = P
    else:
        want_t = brute.tensor_inner(Ta, Tb, outputs)
        want_g = brute.gaussian_inner(Ta, Tb, outputs=outputs)
    assert rel(tnsim.inner(a, b, measure="tensor", method="exact", outputs=outputs), want_t) < RTOL
    assert rel(tnsim.inner(a, b, method="exact", outputs=outputs), want_g) < RTOL


def test_different_degrees_tensor_measure_homogenises():
    """A one-layer and a two-layer model: the lower degree is padded with the constant."""
    a = bilinear(d=3, h=4, o=2, bias=True, seed=1)
    b = stack2(d=3, h=4, o=2, bias=True, seed=2)
    Ta, Tb = brute.model_tensor(a), brute.model_tensor(b)
    assert rel(tnsim.inner(a, b, measure="tensor", method="exact"), brute.tensor_inner(Ta, Tb)) < RTOL
    assert rel(tnsim.inner(a, b, method="exact"), brute.gaussian_inner(Ta, Tb)) < RTOL


def test_bias_free_against_biased_model():
    """Unpadded and padded networks meet through the cross metric."""
    a = stack2(bias=False, seed=1)
    b = stack2(bias=True, seed=2)
    Ta, Tb = brute.model_tensor(a), brute.model_tensor(b)
    assert rel(tnsim.inner(a, b, measure="tensor", method="exact"), brute.tensor_inner(Ta, Tb)) < RTOL
    assert rel(tnsim.inner(a, b, measure="tensor", method="recursive"), brute.hierarchical_inner(Ta, Tb, 2)) < RTOL
    assert rel(tnsim.inner(a, b, method="exact"), brute.gaussian_inner(Ta, Tb)) < RTOL
