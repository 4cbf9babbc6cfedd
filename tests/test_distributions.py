"""The paper's distributions experiment: samplers, task labels, the generalised metric, quick run."""

import json
import math

import pytest
import torch

import tnsim
from tnsim.errors import ShapeMismatchError
from tnsim.experiments import distributions as E

N = 400_000


def draw(name, n=N, d=4, seed=0):
    return E.sample(name, n, d, torch.Generator().manual_seed(seed)).double()


# stated moments, written out by hand: (mean of every coordinate, variance, off-diagonal covariance)
STATED = {
    "gaussian": (0.0, 1.0, 0.0),
    "half_gaussian": (math.sqrt(2 / math.pi), 1 - 2 / math.pi, 0.0),  # 0.798, 0.363
    "bimodal": (0.0, 1.09, 0.0),
    "uniform": (0.0, 1 / 3, 0.0),
    "laplace": (0.0, 1.0, 0.0),
    "sparse_spikes": (0.0, 1.0, 0.0),
    "permutation": (2.5, 1.25, -5 / 12),  # values 1..4: E = 2.5, Var = 7.5 - 6.25; sum constant
}


@pytest.mark.parametrize("name", list(STATED))
def test_sampler_moments_match_the_stated_values(name):
    mean, var, off = STATED[name]
    x = draw(name)
    m, c = x.mean(0), torch.cov(x.T, correction=0)
    tol = 0.02 * max(1.0, var)
    assert torch.allclose(m, torch.full((4,), mean, dtype=torch.float64), atol=tol), m
    assert torch.allclose(c.diagonal(), torch.full((4,), var, dtype=torch.float64), atol=tol)
    offdiag = c[~torch.eye(4, dtype=torch.bool)]
    assert torch.allclose(offdiag, torch.full_like(offdiag, off), atol=tol), c
    em, ec = E.moments(name, 4)  # the exact moments the metrics use agree with the same numbers
    assert torch.allclose(em, torch.full((4,), mean, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(ec.diagonal(), torch.full((4,), var, dtype=torch.float64), atol=1e-12)


def test_correlated_and_neg10_distributions():
    c = torch.cov(draw("correlated_gaussian").T, correction=0)
    assert abs(c[0, 1] - 0.8) < 0.01 and abs(c[0, 2] - 0.64) < 0.01 and abs(c[0, 3] - 0.512) < 0.01
    assert abs(c[1, 3] - 0.64) < 0.01 and abs(c[2, 2] - 1) < 0.01
    mean, cov = E.moments("correlated_gaussian", 4)
    assert float(cov[0, 3]) == pytest.approx(0.512) and float(mean.abs().max()) == 0
    x = draw("neg10_last_gaussian")
    assert bool((x[:, 3] == -10).all())
    assert torch.allclose(x[:, :3].var(0), torch.ones(3, dtype=torch.float64), atol=0.02)
    mean, cov = E.moments("neg10_last_gaussian", 4)
    assert mean.tolist() == [0, 0, 0, -10] and cov.diagonal().tolist() == [1, 1, 1, 0]


def test_shapes_of_the_discrete_distributions():
    p = draw("permutation", n=2000)
    assert bool((p.sort(1).values == torch.tensor([1.0, 2, 3, 4], dtype=torch.float64)).all())
    s = draw("sparse_spikes")
    assert abs(float((s == 0).double().mean()) - 0.75) < 0.005
    b = draw("bimodal")
    assert abs(float((b > 0).double().mean()) - 0.5) < 0.005 and abs(float(b.abs().mean()) - 1) < 0.01
    u = draw("uniform")
    assert float(u.min()) >= -1 and float(u.max()) < 1
    h = draw("half_gaussian")
    assert float(h.min()) >= 0


def brute_second_largest(row):
    """The index whose entry exactly one other entry beats; ties: the higher index is larger."""
    vals = row.tolist()
    for i, v in enumerate(vals):
        beaten_by = sum(1 for j, w in enumerate(vals) if (w, j) > (v, i))
        if beaten_by == 1:
            return i
    raise AssertionError(vals)


@pytest.mark.parametrize("name", ["gaussian", "sparse_spikes", "permutation", "neg10_last_gaussian"])
def test_task_labels_match_brute_force(name):
    x = draw(name, n=3000, seed=3)
    labels = E.second_largest(x)
    assert labels.tolist() == [brute_second_largest(r) for r in x]
    if name == "neg10_last_gaussian":  # the constant -10 is never second-largest of four
        assert bool((labels != 3).all())
    if name == "permutation":  # the entry 3 is the second-largest of 1..4
        assert bool((x[torch.arange(len(x)), labels] == 3).all())


def test_task_labels_by_hand_and_bad_shape():
    x = torch.tensor([[0.1, 0.9, 0.5, -2.0], [3.0, 2.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert E.second_largest(x).tolist() == [2, 1, 2]
    with pytest.raises(ShapeMismatchError, match="x"):
        E.second_largest(torch.zeros(4))


def test_unknown_distribution_is_named():
    with pytest.raises(ValueError, match="distribution.*'cauchy'"):
        E.sample("cauchy", 3, 4, torch.Generator())


def sym_tensor(f):
    with torch.no_grad():
        T = torch.einsum("oh,hi,hj->oij", f.down.weight, f.left.weight, f.right.weight).double()
    return 0.5 * (T + T.transpose(1, 2))


def test_generalised_metric_is_the_covariance_weighted_tensor_cosine():
    """The authors' generalised similarity, computed by hand from the explicit tensors:
    <T_a, T_b>_Σ = Σ_o tr(T_a^o Σ T_b^o Σ), normalised."""
    cfg = E.MODES["quick"]
    a, b = E.model(0, cfg), E.model(1, cfg)
    _, cov = E.moments("permutation", 4)
    Ta, Tb = sym_tensor(a), sym_tensor(b)

    def ip(s, t):
        return float(torch.einsum("oij,jk,okl,li->", s, cov, t, cov))

    expected = ip(Ta, Tb) / math.sqrt(ip(Ta, Ta) * ip(Tb, Tb))
    m = E.weight_metrics([a, b], "permutation")
    assert float(m["Σ-generalised"][0, 1]) == pytest.approx(expected, abs=1e-6)
    plain = float((Ta * Tb).sum() / (Ta.norm() * Tb.norm()))
    assert float(m["tensor"][0, 1]) == pytest.approx(plain, abs=1e-6)
    assert abs(expected - plain) > 1e-3  # the covariance changes the number


def test_matched_gaussian_is_the_output_cosine_under_that_gaussian():
    cfg = E.MODES["quick"]
    a, b = E.model(0, cfg), E.model(1, cfg)
    x = draw("correlated_gaussian", n=400_000, seed=5).float()
    with torch.no_grad():
        ya, yb = a(x).double(), b(x).double()
    empirical = float((ya * yb).sum() / (ya.norm() * yb.norm()))
    m = E.weight_metrics([a, b], "correlated_gaussian")
    assert float(m["N(μ,Σ)"][0, 1]) == pytest.approx(empirical, abs=0.01)


def test_gauss_rule_by_hand():
    # the 3-node Gauss-Hermite rule of N(0, 1): nodes 0, ±√3, weights 2/3, 1/6
    nodes, weights = E.gauss_rule(torch.tensor([1.0, 0, 1, 0, 3, 0], dtype=torch.float64), points=3)
    s3 = math.sqrt(3)
    assert nodes.tolist() == pytest.approx([-s3, 0, s3], abs=1e-12)
    assert weights.tolist() == pytest.approx([1 / 6, 2 / 3, 1 / 6], abs=1e-12)
    # two atoms: a fair coin on {0, 2} has m_n = 2^n / 2 for n >= 1
    nodes, weights = E.gauss_rule(torch.tensor([1.0, 1, 2, 4], dtype=torch.float64), points=2)
    assert nodes.tolist() == pytest.approx([0, 2], abs=1e-12) and weights.tolist() == pytest.approx([0.5, 0.5])
    with pytest.raises(ShapeMismatchError, match="moments"):
        E.gauss_rule(torch.ones(5, dtype=torch.float64), points=3)


@pytest.mark.parametrize("name", ["half_gaussian", "bimodal", "sparse_spikes"])
def test_marginal_moments_match_samples(name):
    """The closed-form moments behind the product measure, against 400 000 samples."""
    x = draw(name)[:, 0]
    exact = E.marginal_moments(name, 4)
    sampled = torch.stack([(x**n).mean() for n in range(5)])
    spread = torch.stack([(x**n).std() for n in range(5)]) / math.sqrt(len(x))
    assert bool(((exact - sampled).abs() <= 5 * spread + 1e-12).all()), (exact, sampled)
    # the product measure's marginal carries those moments (cumulants 2 and 4, by hand)
    k = E.marginal(name).cumulants(4)
    m1, m2, m3, m4 = exact[1:].tolist()
    c2, c4 = m2 - m1**2, m4 - 4 * m3 * m1 - 3 * m2**2 + 12 * m2 * m1**2 - 6 * m1**4
    assert float(k[2]) == pytest.approx(c2) and float(k[4]) == pytest.approx(c4)


def monte_carlo_cosine(f, g, name, n=400_000, seed=11):
    """E[f·g] / sqrt(E|f|² E|g|²) from ``n`` samples and its delta-method standard error."""
    x = draw(name, n=n, seed=seed)
    with torch.no_grad():
        ya, yb = f(x), g(x)
    parts = torch.stack([(ya * yb).sum(1), (ya * ya).sum(1), (yb * yb).sum(1)])
    u, v, w = parts.mean(1)
    r = u / (v * w).sqrt()
    grad = torch.stack([1 / (v * w).sqrt(), -r / (2 * v), -r / (2 * w)])
    return float(r), float((grad @ torch.cov(parts) @ grad / n).sqrt())


@pytest.mark.parametrize("name", ["half_gaussian", "bimodal", "sparse_spikes"])
def test_product_measure_is_the_sampled_cosine_where_coordinates_are_independent(name):
    cfg = E.MODES["quick"]
    a, b = E.model(0, cfg).double(), E.model(0, cfg).double()
    with torch.no_grad():  # share D and R, differ in L: a similarity well away from 0 and 1
        b.left.weight.copy_(E.model(1, cfg).left.weight.double())
    mc, se = monte_carlo_cosine(a, b, name)
    m = E.weight_metrics([a, b], name)
    assert abs(float(m["product measure"][0, 1]) - mc) < 4 * se, (m["product measure"], mc, se)
    # the matched Gaussian is not: the higher cumulants move the number by many standard errors
    assert abs(float(m["N(μ,Σ)"][0, 1]) - mc) > 8 * se


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributions")
    res = tnsim.experiments.run("distributions", out, mode="quick", progress=False, log=lambda m: None)
    return out, res, json.loads((out / "results.json").read_text())


def test_quick_run(quick):
    out, res, results = quick
    for f in ("scatter.png", "correlations.png", "training.png"):
        data = (out / f).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(data) < 300_000, f
        assert f"]({f})" in (out / "report.md").read_text()
    rows = {r["distribution"]: r for r in res["rows"]}
    assert list(rows) == list(E.DISTRIBUTIONS)
    n = len(E.MODES["quick"]["seeds"]) * len(E.MODES["quick"]["steps"])
    assert all(r["pairs"] == n * (n - 1) // 2 for r in rows.values())
    # under a Gaussian the matched measure is the sampled quantity: r near 1
    for name in ("gaussian", "correlated_gaussian", "neg10_last_gaussian"):
        assert rows[name]["pearson N(μ,Σ)"] > 0.99, name
    # for an isotropic covariance the Σ-generalised metric is the tensor similarity
    assert rows["uniform"]["pearson Σ-generalised"] == pytest.approx(rows["uniform"]["pearson tensor"])
    # the shifted constant coordinate breaks the isotropic metric
    assert rows["neg10_last_gaussian"]["pearson tensor"] < 0.9
    # permutations are learned (the entry 3's position is a quadratic read-out), chance is 0.25
    assert rows["permutation"]["accuracy"] > 0.9 and rows["gaussian"]["accuracy"] > 0.35
    # the product-measure column is filled for all nine; for the Gaussian and the Gaussian with a
    # constant coordinate the product of the marginals *is* N(μ,Σ), so the two columns agree
    assert all(isinstance(r["pearson product measure"], float) for r in rows.values())
    for name in ("gaussian", "neg10_last_gaussian"):
        assert rows[name]["pearson product measure"] == pytest.approx(rows[name]["pearson N(μ,Σ)"], abs=1e-6)
    # independent, non-Gaussian coordinates: the exact product measure is the sampled quantity
    for name in ("half_gaussian", "bimodal", "uniform", "laplace", "sparse_spikes"):
        assert rows[name]["pearson product measure"] > 0.99, name
    assert set(results["product_marginals"]) == set(E.DISTRIBUTIONS)
    assert "dependence dropped" in results["product_marginals"]["permutation"]
