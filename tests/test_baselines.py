"""Baselines: each against an independent computation, plus the symmetries that fool them."""

import pytest
import torch

import tnsim
from tnsim import baselines as B
from tnsim.errors import ShapeMismatchError

from models import bilinear


def permuted(f: tnsim.nn.Bilinear, seed: int = 0, rescale: bool = False) -> tnsim.nn.Bilinear:
    """The same function: hidden units permuted, left/right rescaled by s and 1/s per unit."""
    g = torch.Generator().manual_seed(seed)
    h = f.left.out_features
    perm = torch.randperm(h, generator=g)
    s = (
        torch.exp(torch.randn(h, generator=g, dtype=torch.float64))
        if rescale
        else torch.ones(h, dtype=torch.float64)
    )
    out = tnsim.nn.Bilinear(f.d_in, h, f.d_out).double()
    with torch.no_grad():
        out.left.weight.copy_(f.left.weight[perm] * s[:, None])
        out.right.weight.copy_(f.right.weight[perm] / s[:, None])
        out.down.weight.copy_(f.down.weight[:, perm])
    return out


def brute_matrix_cosine(a, b):
    cs = [
        torch.nn.functional.cosine_similarity(p.detach().flatten(), q.detach().flatten(), dim=0)
        for p, q in zip(a.parameters(), b.parameters())
        if p.dim() >= 2
    ]
    return float(sum(cs) / len(cs))


def test_matrix_cosine_by_hand_and_matrix_api():
    models = [bilinear(3, 4, 2, seed=s) for s in range(3)]
    m = tnsim.similarity_matrix(models, measure="matrix")
    assert m.shape == (3, 3)
    for i in range(3):
        for j in range(3):
            assert m[i, j].item() == pytest.approx(
                brute_matrix_cosine(models[i], models[j]), rel=1e-12
            )
            assert B.matrix_cosine(models[i], models[j]) == pytest.approx(m[i, j].item(), rel=1e-12)
    per = B.matrix_cosine(models[0], models[1], per_matrix=True)
    assert set(per) == {"left.weight", "right.weight", "down.weight"}
    w = models[0].down.weight.detach()[1], models[1].down.weight.detach()[1]
    # outputs=[1] keeps row 1 of the read-out; the shared matrices enter unchanged
    by_hand = (
        per["left.weight"]
        + per["right.weight"]
        + float(torch.nn.functional.cosine_similarity(w[0], w[1], dim=0))
    ) / 3
    assert B.matrix_cosine(models[0], models[1], outputs=[1]) == pytest.approx(by_hand, rel=1e-12)


def test_symmetries_fool_matrix_cosine_not_tensor_similarity():
    f = bilinear(4, 6, 3, seed=1)
    g = permuted(f, rescale=True)
    x = torch.randn(50, 4, dtype=torch.float64)
    torch.testing.assert_close(f(x), g(x), rtol=1e-10, atol=1e-12)  # the same function
    assert tnsim.similarity(f, g, measure="tensor") == pytest.approx(1.0, abs=1e-9)
    assert B.output_cosine(f, g, x) == pytest.approx(1.0, abs=1e-12)
    assert B.matrix_cosine(f, g) < 0.9


def test_output_cosine_by_hand_centred_and_sliced():
    a, b = bilinear(3, 4, 3, bias=True, seed=2), bilinear(3, 4, 3, bias=True, seed=3)
    x = torch.randn(40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ya, yb = a(x).detach(), b(x).detach()
    raw = float((ya * yb).sum() / (ya.norm() * yb.norm()))
    assert B.output_cosine(a, b, x) == pytest.approx(raw, rel=1e-12)
    ca, cb = ya - ya.mean(0), yb - yb.mean(0)
    cen = float((ca * cb).sum() / (ca.norm() * cb.norm()))
    assert B.output_cosine(a, b, x, centred=True) == pytest.approx(cen, rel=1e-12)
    sl = float((ya[:, 2] @ yb[:, 2]) / (ya[:, 2].norm() * yb[:, 2].norm()))
    assert B.output_cosine(a, b, x, outputs=[2]) == pytest.approx(sl, rel=1e-12)
    p = torch.eye(3, dtype=torch.float64) - 1 / 3  # a projection on the outputs
    pa, pb = ya @ p.T, yb @ p.T
    assert B.output_cosine(a, b, x, outputs=p) == pytest.approx(
        float((pa * pb).sum() / (pa.norm() * pb.norm())), rel=1e-12
    )
    # chunked accumulation over a matrix of models equals the pairwise values
    models = [a, b, bilinear(3, 4, 3, bias=True, seed=4)]
    m = B.output_cosine_matrix(models, data=x, centred=True)
    assert m[0, 1].item() == pytest.approx(cen, rel=1e-12)
    assert torch.allclose(m, m.T) and torch.allclose(
        m.diagonal(), torch.ones(3, dtype=torch.float64)
    )


def test_output_cosine_on_a_distribution_is_seeded():
    a, b = bilinear(3, 4, 2, seed=5), bilinear(3, 4, 2, seed=6)
    v1 = B.output_cosine(a, b, distribution="laplace", n=3000, seed=1)
    v2 = B.output_cosine(a, b, distribution="laplace", n=3000, seed=1)
    v3 = B.output_cosine(a, b, distribution="laplace", n=3000, seed=2)
    assert v1 == v2 and v1 != v3


def brute_cka(ha: torch.Tensor, hb: torch.Tensor) -> float:
    """CKA through n x n Gram matrices and the centring matrix H (HSIC form)."""
    n = len(ha)
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k, q = ha @ ha.T, hb @ hb.T
    hsic = lambda p, q: torch.trace(p @ h @ q @ h)  # noqa: E731
    return float(hsic(k, q) / torch.sqrt(hsic(k, k) * hsic(q, q)))


def test_cka_by_hand_and_invariances():
    a, b = bilinear(3, 5, 2, seed=7), bilinear(3, 5, 2, seed=8)
    x = torch.randn(30, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    hid = lambda m: (m.left(x) * m.right(x)).detach()  # noqa: E731  the input of the read-out
    assert B.cka(a, b, x) == pytest.approx(brute_cka(hid(a), hid(b)), rel=1e-10)
    assert B.cka(a, permuted(a, seed=3), x) == pytest.approx(
        1.0, abs=1e-12
    )  # permutation-invariant
    # a named layer: the output of `left`
    assert B.cka(a, b, x, layer="left") == pytest.approx(
        brute_cka(a.left(x).detach(), b.left(x).detach()), rel=1e-10
    )
    m = tnsim.similarity_matrix([a, b, a], measure="cka", data=x)
    assert m[0, 2].item() == pytest.approx(1.0, abs=1e-12) and m[0, 1].item() == pytest.approx(
        B.cka(a, b, x), rel=1e-12
    )


def test_monte_carlo_matches_exact_within_its_standard_error():
    a, b = bilinear(3, 4, 2, bias=True, seed=9), bilinear(3, 4, 2, bias=True, seed=10)
    mean = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    cov = torch.tensor([[1.0, 0.3, 0.0], [0.3, 0.8, 0.1], [0.0, 0.1, 0.5]], dtype=torch.float64)
    for centred in (False, True):
        exact = tnsim.similarity(a, b, mean=mean, cov=cov, centred=centred, method="exact")
        est = B.monte_carlo(a, b, n=1_000_000, mean=mean, cov=cov, centred=centred, seed=3)
        assert est.n == 1_000_000 and 0 < est.stderr < 0.01
        assert abs(est.value - exact) < 4 * est.stderr, (est, exact)


def test_monte_carlo_standard_error_is_calibrated():
    """The spread of independent estimates matches the reported standard error."""
    from tnsim.experiments.common import threads

    a, b = bilinear(3, 4, 2, seed=11), bilinear(3, 4, 2, seed=12)
    with threads(1):  # 200 tiny runs: threads only add overhead
        ests = [B.monte_carlo(a, b, n=1000, seed=s) for s in range(200)]
    spread = torch.tensor([e.value for e in ests]).std().item()
    reported = sum(e.stderr for e in ests) / len(ests)
    assert 0.85 < spread / reported < 1.15, (spread, reported)
    vals, ses = B.monte_carlo_matrix([a, b], n=1000, seed=0, return_stderr=True)
    assert vals[0, 1].item() == pytest.approx(ests[0].value, rel=1e-12)
    assert ses[0, 1].item() == pytest.approx(ests[0].stderr, rel=1e-12) and ses[0, 0] == 0


def test_matrices_with_two_lists_and_errors():
    left = [bilinear(3, 4, 2, seed=s) for s in range(2)]
    right = [bilinear(3, 4, 2, seed=s) for s in range(2, 5)]
    x = torch.randn(20, 3, dtype=torch.float64)
    for name, opts in (
        ("matrix", {}),
        ("output", {"data": x}),
        ("cka", {"data": x}),
        ("monte_carlo", {"n": 500}),
    ):
        m = tnsim.similarity_matrix(left, right, measure=name, **opts)
        assert m.shape == (2, 3), name
    with pytest.raises(ValueError, match="unknown measure 'nope'.*cka.*matrix"):
        tnsim.similarity_matrix(left, measure="nope")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        B.output_cosine(tnsim.compile(left[0]), left[1], x)
    with pytest.raises(ShapeMismatchError, match="down.weight"):
        B.matrix_cosine(left[0], bilinear(3, 4, 3))
    with pytest.raises(ShapeMismatchError, match="out of range"):
        B.output_cosine(left[0], left[1], x, outputs=[5])
    with pytest.raises(ValueError, match="needs data"):
        B.cka_matrix(left)


def test_distributions_have_unit_variance_and_stay_finite():
    from tnsim import data as D

    g = torch.Generator().manual_seed(0)
    pca = torch.randn(500, 4, generator=g)
    for name in D.DISTRIBUTIONS:
        x = D.sample(name, 400_000, 4, g, data=pca)
        assert torch.isfinite(x).all(), name
        mean, cov = D.moments(name, 4, pca)
        if name in ("data", "data_noise"):
            continue
        # the empirical moments agree with the stated ones (the heavy-tailed Student-t more loosely)
        tol = 0.1 if name == "student_t" else 0.02
        assert torch.allclose(x.double().mean(0), mean, atol=0.02), name
        assert torch.allclose(x.double().var(0), cov.diagonal(), atol=tol), name


def test_similarity_matrix_passes_shared_options_to_baselines():
    """outputs= (and centred=) reach a baseline named in similarity_matrix; unknown ones fail."""
    import pytest

    torch.manual_seed(0)
    ms = [tnsim.nn.Bilinear(4, 5, 3).double() for _ in range(3)]
    x = torch.randn(50, 4, dtype=torch.float64)
    got = tnsim.similarity_matrix(ms, measure="output", data=x, outputs=[1], centred=True)
    want = tnsim.baselines.output_cosine_matrix(ms, data=x, outputs=[1], centred=True)
    assert torch.allclose(got, want)
    assert not torch.allclose(got, tnsim.similarity_matrix(ms, measure="output", data=x))
    with pytest.raises(TypeError):
        tnsim.similarity_matrix(ms, measure="cka", data=x, outputs=[1])
    with pytest.raises(TypeError, match="method"):
        tnsim.similarity_matrix(ms, measure="output", data=x, method="exact")


def test_shape_mismatches_raise_tnsim_errors_naming_the_models():
    f, wide_in, wide_out = bilinear(3, 4, 2), bilinear(5, 4, 2, seed=1), bilinear(3, 4, 6, seed=2)
    x = torch.randn(20, 3, dtype=torch.float64)
    with pytest.raises(ShapeMismatchError, match=r"model 0 \(second list\) \(Bilinear\) cannot take inputs of shape \(3,\)"):
        B.output_cosine(f, wide_in, x)
    with pytest.raises(ShapeMismatchError, match="2 and 6 outputs"):
        B.output_cosine(f, wide_out, x)
    with pytest.raises(ShapeMismatchError, match="cannot take inputs"):
        B.monte_carlo(f, wide_in, n=100)
    with pytest.raises(ShapeMismatchError, match="2 and 6 outputs"):
        B.monte_carlo(f, wide_out, n=100)
    with pytest.raises(ShapeMismatchError, match=r"cov has shape \(4, 4\).*3 input features"):
        B.monte_carlo(f, f, n=100, cov=torch.eye(4, dtype=torch.float64))
    with pytest.raises(ShapeMismatchError, match=r"mean has shape \(2,\)"):
        B.monte_carlo(f, f, n=100, mean=torch.zeros(2, dtype=torch.float64))


def test_monte_carlo_covariance_checks_match_the_exact_measure():
    f, g = bilinear(3, 4, 2), bilinear(3, 4, 2, seed=1)
    bad = torch.diag(torch.tensor([1.0, -0.5, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="positive semi-definite") as exact:
        tnsim.similarity(f, g, cov=bad)
    with pytest.raises(tnsim.errors.InvalidArgumentError, match="positive semi-definite") as sampled:
        B.monte_carlo(f, g, n=100, cov=bad)
    assert str(exact.value) == str(sampled.value)
    assert isinstance(sampled.value, tnsim.TnsimError) and isinstance(sampled.value, ValueError)
    # PSD but singular (rank 2): the inputs live on a plane, and the estimate still matches the
    # exact value within its standard error
    v = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]], dtype=torch.float64)
    singular = v @ v.T
    assert torch.linalg.matrix_rank(singular) == 2
    est = B.monte_carlo(f, g, n=50_000, cov=singular)
    assert abs(est.value - tnsim.similarity(f, g, cov=singular)) < 5 * est.stderr
    # the samples have the requested covariance (and lie in its column space)
    start = B._sampler("gaussian", 0, None, singular, None)
    z = start(3)(200_000)
    assert torch.allclose(z.T @ z / len(z), singular, atol=0.05)
    normal = torch.linalg.svd(singular).U[:, 2]
    assert (z @ normal).abs().max() < 1e-9
