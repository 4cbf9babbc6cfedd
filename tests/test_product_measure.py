"""ProductMeasure and CategoricalMeasure against oracles that never touch the engine.

Finite supports and one-hot tokens: enumeration of every input; Uniform: tensor
Gauss-Legendre quadrature (exact for these degrees). Float64, relative tolerance 1e-10.
"""

from __future__ import annotations

import math

import brute_measures as bm
import numpy as np
import pytest
import torch

import tnsim
from tnsim.measures._cumulants import one_hot_cumulant

torch.set_num_threads(1)

RTOL = 1e-10
F64 = {"dtype": torch.float64}
RADEMACHER = {"values": torch.tensor([-1.0, 1.0], **F64)}
SKEWED = {"values": torch.tensor([-1.0, 0.5, 2.0], **F64), "probs": torch.tensor([0.3, 0.5, 0.2], **F64)}


def rel(a, b) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def one_layer(seed, d=3, bias=False, residual=False, o=2):
    torch.manual_seed(seed)
    return tnsim.nn.Bilinear(d, 3, d if residual else o, bias=bias, residual=residual).double()


def two_layer(seed, d=3, bias=False, residual=False, o=2, h=2):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        tnsim.nn.Bilinear(d, h, d, bias=bias, residual=residual), tnsim.nn.Bilinear(d, h, o, bias=bias)
    ).double()


def attention(seed, n=2, d=2, residual=True):
    torch.manual_seed(seed)
    return tnsim.nn.BilinearAttention(d, n, residual=residual).double()


def check_all(a, b, make, x, w, *, outputs=(1,), full=True):
    """Against the oracle, the inner product and the centred inner product of a class slice
    (``outputs``); with ``full`` also the inner product, similarity and centred similarity of
    all outputs (without, the two share their contraction plans). ``make(centred)`` builds
    the measure."""
    m, c = make(False), make(True)
    sl = list(outputs)
    assert rel(tnsim.inner(a, b, measure=c, method="exact", outputs=sl),
               bm.inner(a, b, x, w, centred=True, outputs=outputs)) < RTOL
    if not full:
        assert rel(tnsim.inner(a, b, measure=m, method="exact", outputs=sl),
                   bm.inner(a, b, x, w, outputs=outputs)) < RTOL
        return
    assert rel(tnsim.inner(a, b, measure=m, method="exact"), bm.inner(a, b, x, w)) < RTOL
    assert rel(tnsim.similarity(a, b, measure=m, method="exact"), bm.similarity(a, b, x, w)) < RTOL
    assert rel(tnsim.similarity(a, b, measure=c, method="exact"),
               bm.similarity(a, b, x, w, centred=True)) < RTOL


def product(**spec):
    return lambda centred: tnsim.ProductMeasure(**spec, centred=centred)


def uniform(low, high):
    def make(centred):
        dist = torch.distributions.Uniform(torch.tensor(low, **F64), torch.tensor(high, **F64))
        return tnsim.ProductMeasure(dist, centred=centred)

    return make


def categorical(probs):
    return lambda centred: tnsim.CategoricalMeasure(probs, centred=centred)


# --- finite supports: enumeration --------------------------------------------------------------


@pytest.mark.parametrize("bias,residual", [(False, False), (True, False), (False, True), (True, True)])
def test_finite_support_one_layer(bias, residual):
    a, b = one_layer(1, bias=bias, residual=residual), one_layer(2, bias=not bias, residual=residual)
    for spec in (SKEWED, RADEMACHER):
        x, w = bm.finite_points(spec["values"], spec.get("probs", torch.full((len(spec["values"]),), 0.5)), (3,))
        check_all(a, b, product(**spec), x, w)


def test_symmetric_and_skewed_marginals_do_not_share_filtered_orbits():
    """Two product measures of one kind (``values=``) with the same models: a symmetric marginal
    drops the odd blocks as zero, a skewed one must not (regression: the filtered orbit list was
    cached without the vanishing block sizes, so the second gave a wrong value or crashed)."""
    a, b = one_layer(5), one_layer(6)
    symmetric = {"values": torch.tensor([0.5, 1.5], **F64)}  # odd cumulants 0, mean not (as SKEWED)
    for spec in (symmetric, SKEWED, symmetric):
        x, w = bm.finite_points(spec["values"], spec.get("probs", torch.full((len(spec["values"]),), 0.5)), (3,))
        m = tnsim.ProductMeasure(**spec)
        assert rel(tnsim.inner(a, b, measure=m), bm.inner(a, b, x, w)) < RTOL, spec
        assert rel(tnsim.similarity_matrix([a, b], measure=m, progress=False)[0, 1].item(),
                   bm.similarity(a, b, x, w)) < RTOL, spec


@pytest.mark.parametrize("bias", [False, True])
def test_finite_support_two_layers(bias):
    a, b = two_layer(3, bias=bias), two_layer(4, bias=bias)
    x, w = bm.finite_points([-1.0, 1.0], [0.5, 0.5], (3,))
    check_all(a, b, product(**RADEMACHER), x, w, outputs=(0,), full=False)


def test_finite_support_two_layers_residual():
    """A residual first layer: terms of degrees 2, 3 and 4 on each side."""
    a, b = two_layer(41, residual=True), two_layer(42, residual=True)
    x, w = bm.finite_points([-1.0, 1.0], [0.5, 0.5], (3,))
    assert rel(tnsim.inner(a, b, measure=tnsim.ProductMeasure(**RADEMACHER), method="exact"),
               bm.inner(a, b, x, w)) < RTOL


def test_finite_support_two_layers_skewed():
    """Non-zero mean, every block size up to 8: all set partitions contribute."""
    a, b = two_layer(5, d=2, o=1), two_layer(6, d=2, o=1)
    x, w = bm.finite_points(SKEWED["values"], SKEWED["probs"], (2,))
    check_all(a, b, product(**SKEWED), x, w, outputs=(0,), full=False)


def test_finite_support_attention():
    a, b = attention(7), attention(8)
    x, w = bm.finite_points([-1.0, 1.0], [0.5, 0.5], (2, 2))
    check_all(a, b, product(**RADEMACHER), x, w, full=False)
    # per-coordinate marginals: one support per (position, feature)
    vals = torch.tensor([[[-1.0, 2.0], [0.0, 1.0]], [[1.0, 3.0], [-2.0, 0.5]]], **F64)
    probs = torch.tensor([[[0.25, 0.75], [0.5, 0.5]], [[0.6, 0.4], [0.1, 0.9]]], **F64)
    m = tnsim.ProductMeasure(values=vals, probs=probs)
    a, b = attention(7, residual=False), attention(8, residual=False)
    x, w = bm.finite_points(vals.reshape(4, 2), probs.reshape(4, 2), (2, 2))
    assert rel(tnsim.inner(a, b, measure=m, method="exact"), bm.inner(a, b, x, w)) < RTOL


def test_finite_support_padded_and_mixed_sequences():
    """Real-valued inputs (n, V) to token models: a padded frame (positional vectors) against
    another and against an unpadded one (attention on the raw inputs)."""
    a, b = token_model(49, vocab=3, n=2), token_model(50, vocab=3, n=2, bias=True)
    c = attention(51, n=2, d=3, residual=False)
    assert tnsim.compile(a).in_padded and not tnsim.compile(c).in_padded
    x, w = bm.finite_points(SKEWED["values"], SKEWED["probs"], (2, 3))
    m = tnsim.ProductMeasure(**SKEWED)
    for f, g in ((a, b), (a, c)):
        assert rel(tnsim.inner(f, g, measure=m, method="exact"), bm.inner(f, g, x, w)) < RTOL


def test_bernoulli_distribution_is_enumerated_per_coordinate():
    p = torch.tensor([0.2, 0.5, 0.9], **F64)
    assert tnsim.ProductMeasure(torch.distributions.Bernoulli(probs=p)).exact
    a, b = one_layer(9, bias=True), one_layer(10)
    x, w = bm.finite_points(torch.tensor([[0.0, 1.0]] * 3), torch.stack([1 - p, p], 1), (3,))
    check_all(a, b, lambda centred: tnsim.ProductMeasure(torch.distributions.Bernoulli(probs=p), centred=centred), x, w)


def test_similarity_matrix_and_cost():
    models = [one_layer(s) for s in (11, 12, 13)]
    m = tnsim.ProductMeasure(**SKEWED)
    x, w = bm.finite_points(SKEWED["values"], SKEWED["probs"], (3,))
    got = tnsim.similarity_matrix(models, measure=m, method="exact")
    np.testing.assert_allclose(np.asarray(got), bm.similarity_matrix(models, x, w), rtol=RTOL, atol=1e-12)
    # one contraction per orbit of set partitions of 2 + 2 copies that is not exactly zero;
    # the planner may use an unsymmetrised variant on one side (fewer symmetries)
    sym, raw = [(0, 1)], []
    for spec, keep in ((SKEWED, lambda blocks: True),
                       (RADEMACHER, lambda blocks: all(len(bl) % 2 == 0 for bl in blocks))):
        counts = {bm.set_partition_orbits(2, 2, ga, gb, keep) for ga, gb in ((sym, sym), (sym, raw), (raw, sym))}
        c = tnsim.cost(models[0], models[1], measure=tnsim.ProductMeasure(**spec), method="exact")
        assert c.contractions % 3 == 0 and c.contractions // 3 in counts, (c.contractions, counts)


def test_marginal_cumulants_match_textbook_formulas():
    def t(x):
        return torch.tensor(x, **F64)

    fact = math.factorial
    cases = [
        (torch.distributions.Laplace(t(0.5), t(2.0)), [0.5, 2 * 2.0**2, 0.0, 2 * fact(3) * 2.0**4]),
        (torch.distributions.Gamma(t(2.0), t(3.0)), [2.0 * fact(n - 1) / 3.0**n for n in range(1, 5)]),
        (torch.distributions.Exponential(t(2.0)), [fact(n - 1) / 2.0**n for n in range(1, 5)]),
        (torch.distributions.Poisson(t(1.5)), [1.5] * 4),
        # kappa_n = B_n (b - a)^n / n for n >= 2 (Bernoulli numbers B_2 = 1/6, B_4 = -1/30)
        (torch.distributions.Uniform(t(-1.0), t(2.0)), [0.5, 9 / 12, 0.0, -(3.0**4) / 120]),
        (torch.distributions.Normal(t(0.3), t(2.0)), [0.3, 4.0, 0.0, 0.0]),
    ]
    for dist, want in cases:
        got = tnsim.ProductMeasure(dist).cumulants(4)[1:]
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12, err_msg=type(dist).__name__)
    approx = tnsim.ProductMeasure(torch.distributions.HalfNormal(t(1.0)))
    assert not approx.exact and "quadrature" in approx.describe()
    assert abs(float(approx.cumulants(2)[1]) - math.sqrt(2 / math.pi)) < 1e-4


def test_normal_marginal_is_the_gaussian_measure():
    mu, sd = torch.tensor([0.3, -0.2, 0.5], **F64), torch.tensor([1.0, 2.0, 0.5], **F64)
    a, b = one_layer(47, bias=True), one_layer(48, bias=True)
    m = tnsim.ProductMeasure(torch.distributions.Normal(mu, sd), centred=True)
    assert rel(tnsim.inner(a, b, measure=m, method="exact"),
               tnsim.inner(a, b, mean=mu, cov=torch.diag(sd**2), centred=True, method="exact")) < RTOL


# --- uniform: Gauss-Legendre quadrature --------------------------------------------------------


@pytest.mark.parametrize("bias,residual", [(False, False), (True, True)])
def test_uniform_one_layer(bias, residual):
    a, b = one_layer(14, bias=bias, residual=residual), one_layer(15, bias=bias, residual=residual)
    x, w = bm.legendre_points(-1.0, 2.0, (3,), 3)  # degree 4: 3 nodes integrate degree 5
    check_all(a, b, uniform(-1.0, 2.0), x, w)


@pytest.mark.parametrize("bias", [False, True])
def test_uniform_two_layers(bias):
    a, b = two_layer(16, d=2, bias=bias), two_layer(17, d=2, bias=bias)
    x, w = bm.legendre_points(-1.0, 1.0, (2,), 5)  # degree 8
    check_all(a, b, uniform(-1.0, 1.0), x, w, outputs=(0,), full=False)


def test_uniform_attention():
    a, b = attention(18), attention(19)
    x, w = bm.legendre_points(-1.0, 1.0, (2, 2), 4)  # degree 6
    check_all(a, b, uniform(-1.0, 1.0), x, w)


# --- one-hot tokens: enumeration of all sequences ----------------------------------------------


def token_model(seed, vocab=4, dm=2, n=3, layers=1, bias=False, residual=False, attn=False,
                positional=True):
    """Embedding (positional: a sequence model even without attention), layers, Unembedding."""
    torch.manual_seed(seed)
    mids = []
    if attn:
        mids.append(tnsim.nn.BilinearAttention(dm, n, residual=True))
    for i in range(layers):
        mids.append(tnsim.nn.Bilinear(dm, 2, dm, bias=bias, residual=residual))
    return torch.nn.Sequential(tnsim.nn.Embedding(vocab, dm, n_ctx=n, positional=positional), *mids, tnsim.nn.Unembedding(dm, vocab)).double()


def test_one_hot_cumulants_match_definition():
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], **F64)
    assert torch.allclose(one_hot_cumulant(p, 2), torch.diag(p) - torch.outer(p, p), atol=1e-15)
    # third cumulant of one-hot components by its closed form (Mobius inversion, 5 partitions)
    d = torch.eye(4, **F64)
    m3 = torch.einsum("i,ij,ik->ijk", p, d, d)
    m2 = torch.diag(p)
    k3 = (m3 - torch.einsum("ij,k->ijk", m2, p) - torch.einsum("ik,j->ijk", m2, p)
          - torch.einsum("jk,i->ijk", m2, p) + 2 * torch.einsum("i,j,k->ijk", p, p, p))
    assert torch.allclose(one_hot_cumulant(p, 3), k3, atol=1e-15)


@pytest.mark.parametrize("bias,residual", [(False, False), (True, True)])
def test_categorical_one_layer(bias, residual):
    a = token_model(20, bias=bias, residual=residual)
    b = token_model(21, bias=bias, residual=residual)
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4], **F64)
    x, w = bm.token_points(probs, 3)
    check_all(a, b, categorical(probs), x, w, outputs=(2,))
    per_pos = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25], [0.0, 0.5, 0.2, 0.3]], **F64)
    x, w = bm.token_points(per_pos, 3)
    assert rel(tnsim.inner(a, b, measure=tnsim.CategoricalMeasure(per_pos), method="exact"),
               bm.inner(a, b, x, w)) < RTOL
    if bias:  # a padded frame against an unpadded one (attention on the one-hot inputs)
        c = attention(52, n=3, d=4, residual=False)
        assert not tnsim.compile(c).in_padded
        assert rel(tnsim.inner(a, c, measure=tnsim.CategoricalMeasure(per_pos), method="exact"),
                   bm.inner(a, c, x, w)) < RTOL


def test_categorical_two_layers():
    """A position-wise model compiles to one-token inputs (V,): one position, 8 copies."""
    a = token_model(22, vocab=3, n=1, layers=2, positional=False)
    b = token_model(23, vocab=3, n=1, layers=2, positional=False)
    assert tnsim.compile(a).in_shape == (3,)
    probs = torch.tensor([0.5, 0.3, 0.2], **F64)
    x, w = bm.token_points(probs, 1)
    check_all(a, b, categorical(probs), x[:, 0], w, outputs=(0,), full=False)


def test_categorical_attention():
    a = token_model(24, vocab=3, n=2, layers=0, attn=True, positional=False)
    b = token_model(25, vocab=3, n=2, layers=0, attn=True, positional=False)
    probs = torch.tensor([0.4, 0.35, 0.25], **F64)
    x, w = bm.token_points(probs, 2)
    check_all(a, b, categorical(probs), x, w, outputs=(2,), full=False)


def test_categorical_similarity_matrix():
    models = [token_model(s) for s in (44, 45, 46)]
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4], **F64)
    x, w = bm.token_points(probs, 3)
    for centred in (False, True):
        got = tnsim.similarity_matrix(models, measure=tnsim.CategoricalMeasure(probs, centred=centred),
                                      method="exact")
        want = bm.similarity_matrix(models, x, w, centred=centred)
        np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=1e-12)


def test_categorical_fit_counts_unigrams():
    ids = torch.tensor([[0, 1, 1], [2, 1, 0], [1, 1, 3]])
    m = tnsim.CategoricalMeasure.fit(ids, vocab=5)
    assert torch.equal(m.probs, torch.tensor([2, 5, 1, 1, 0], **F64) / 9)
    per = tnsim.CategoricalMeasure.fit(ids, vocab=4, per_position=True)
    assert torch.equal(per.probs[1], torch.tensor([0.0, 1.0, 0.0, 0.0], **F64))


# --- fitted marginals --------------------------------------------------------------------------


def test_fit_is_the_product_of_empirical_marginals():
    g = torch.Generator().manual_seed(0)
    samples = torch.randn(4, 3, generator=g, **F64)
    a, b = one_layer(27, bias=True), one_layer(28)
    x, w = bm.finite_points(samples.T, torch.full((3, 4), 0.25, **F64), (3,))
    check_all(a, b, lambda centred: tnsim.ProductMeasure.fit(samples, centred=centred), x, w)


def test_fit_against_monte_carlo_on_the_data():
    """Data with independent coordinates: the fitted measure's inner product and the data mean
    of f_a . f_b estimate the same number; they agree within 5 standard errors of the mean."""
    g = torch.Generator().manual_seed(1)
    n = 20000
    data = torch.stack([torch.rand(n, generator=g, **F64) ** 2,
                        torch.randn(n, generator=g, **F64) + 0.5,
                        (torch.rand(n, generator=g, **F64) < 0.3).to(torch.float64)], 1)
    a, b = one_layer(29, bias=True), one_layer(30, bias=True)
    m = tnsim.ProductMeasure.fit(data)
    with torch.no_grad():
        prod = (a(data) * b(data)).sum(-1)
    se = float(prod.std()) / math.sqrt(n)
    assert abs(tnsim.inner(a, b, measure=m, method="exact") - float(prod.mean())) < 5 * se


# --- symmetries, methods, errors ---------------------------------------------------------------


def test_invariance_under_hidden_permutation_and_rescaling():
    a, b, c = two_layer(31, h=3), two_layer(31, h=3), two_layer(32, h=3)
    perm = torch.tensor([2, 0, 1])
    with torch.no_grad():
        for name, scale in (("left", 2.5), ("right", 0.4)):
            getattr(b[0], name).weight.copy_(scale * getattr(a[0], name).weight[perm])
        b[0].down.weight.copy_(a[0].down.weight[:, perm])
    m = tnsim.ProductMeasure(**RADEMACHER, centred=True)
    assert abs(tnsim.similarity(a, b, measure=m, method="exact") - 1) < 1e-9
    assert abs(tnsim.similarity(a, c, measure=m, method="exact")
               - tnsim.similarity(b, c, measure=m, method="exact")) < 1e-9
    # one-hot tokens: the same for a positional token model's bilinear layer
    ta, tb = token_model(43, bias=True), token_model(43, bias=True)
    with torch.no_grad():
        for name, scale in (("left", 3.0), ("right", 1 / 3)):
            getattr(tb[1], name).weight.copy_(scale * getattr(ta[1], name).weight.flip(0))
            getattr(tb[1], name).bias.copy_(scale * getattr(ta[1], name).bias.flip(0))
        tb[1].down.weight.copy_(ta[1].down.weight.flip(1))
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4], **F64)
    assert abs(tnsim.similarity(ta, tb, measure=tnsim.CategoricalMeasure(probs), method="exact") - 1) < 1e-9


def test_recursive_is_exact_for_one_layer_and_refused_beyond():
    a, b = one_layer(33, bias=True), one_layer(34)
    m = tnsim.ProductMeasure(**SKEWED)
    c = tnsim.compare(a, b, measure=m, method="recursive")
    assert rel(c.value, tnsim.similarity(a, b, measure=m, method="exact")) < RTOL
    assert c.method == "exact" and c.measure == "product(values)"
    with pytest.raises(tnsim.StructureError, match="no closure for the product"):
        tnsim.similarity(two_layer(35), two_layer(36), measure=m, method="recursive")


def test_errors_name_the_argument():
    with pytest.raises(tnsim.errors.InvalidArgumentError, match="probs must sum to 1"):
        tnsim.ProductMeasure(values=torch.tensor([0.0, 1.0]), probs=torch.tensor([0.5, 0.6]))
    with pytest.raises(tnsim.errors.InvalidArgumentError, match="either a marginal"):
        tnsim.ProductMeasure()
    with pytest.raises(tnsim.ShapeMismatchError, match=r"event shape \(2,\)"):
        tnsim.ProductMeasure(torch.distributions.Dirichlet(torch.ones(2)))
    with pytest.raises(tnsim.ShapeMismatchError, match=r"marginals have shape \(4,\)"):
        tnsim.similarity(one_layer(37), one_layer(38),
                         measure=tnsim.ProductMeasure.fit(torch.zeros(5, 4, **F64)))
    with pytest.raises(tnsim.ShapeMismatchError, match="probs have 3 tokens"):
        tnsim.similarity(token_model(39), token_model(40), measure=tnsim.CategoricalMeasure([0.2, 0.3, 0.5]))
    with pytest.raises(tnsim.NonFiniteError):
        tnsim.CategoricalMeasure(torch.tensor([float("nan"), 1.0]))
