"""The exact Gaussian measure against Monte Carlo (10^6 samples), judged by standard errors."""

import torch

import tnsim
from models import residual_stack, stack2

N = 1_000_000


def mc(a, b, mean, cov, centred=False, seed=0):
    """Monte Carlo estimate of E[f_a . f_b] (or the covariance) and its standard error."""
    g = torch.Generator().manual_seed(seed)
    chol = torch.linalg.cholesky(cov)
    vals = []
    ya_all, yb_all = [], []
    with torch.no_grad():
        for _ in range(10):
            z = torch.randn(N // 10, len(mean), generator=g, dtype=torch.float64)
            x = mean + z @ chol.T
            ya, yb = a(x), b(x)
            ya_all.append(ya)
            yb_all.append(yb)
    ya, yb = torch.cat(ya_all), torch.cat(yb_all)
    if centred:
        ya, yb = ya - ya.mean(0), yb - yb.mean(0)
    vals = (ya * yb).sum(1)
    return float(vals.mean()), float(vals.std() / N**0.5)


def params(d, seed):
    g = torch.Generator().manual_seed(seed)
    mean = 0.7 * torch.randn(d, generator=g, dtype=torch.float64)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    return mean, A @ A.T / d + 0.3 * torch.eye(d, dtype=torch.float64)


def test_two_layers_bias_residual_mean_full_cov():
    a, b = stack2(d=4, h=5, o=3, bias=True, residual=True, seed=1), stack2(d=4, h=5, o=3, bias=True, residual=True, seed=2)
    mean, cov = params(4, 3)
    exact = tnsim.inner(a, b, method="exact", mean=mean, cov=cov)
    est, se = mc(a, b, mean, cov)
    assert abs(exact - est) < 4 * se, (exact, est, se)
    # the recursive (Gaussian closure) value is a different number beyond one layer
    closure = tnsim.inner(a, b, method="recursive", mean=mean, cov=cov)
    assert abs(closure - exact) > 1e-6 * abs(exact)


def test_embed_residual_unembed_centred():
    a, b = residual_stack(d=3, layers=2, bias=True, seed=4), residual_stack(d=3, layers=2, bias=True, seed=5)
    mean, cov = params(3, 6)
    exact = tnsim.inner(a, b, method="exact", mean=mean, cov=cov, centred=True)
    est, se = mc(a, b, mean, cov, centred=True)
    # the sample covariance has O(1/N) bias, far below the standard error here
    assert abs(exact - est) < 4 * se, (exact, est, se)
