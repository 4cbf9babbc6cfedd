"""Tiny float64 sequence models and helpers shared by the sequence tests."""

from __future__ import annotations

import torch

import tnsim
from tnsim.ir._term import evaluate_term

N, D = 2, 2  # context length and width used throughout (canonical dimension 1 + N*D = 5)


def attention(seed=0, n=N, d=D, **kw) -> tnsim.nn.BilinearAttention:
    torch.manual_seed(seed)
    return tnsim.nn.BilinearAttention(d, n, **kw).double()


def block(seed=0, n=N, d=D, d_hidden=2, **kw) -> tnsim.nn.TensorTransformerBlock:
    torch.manual_seed(seed)
    return tnsim.nn.TensorTransformerBlock(d, n, d_hidden=d_hidden, **kw).double()


def gaussian_params(d=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = 0.4 * torch.randn(d, generator=g, dtype=torch.float64)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    return mean, A @ A.T / d + 0.3 * torch.eye(d, dtype=torch.float64)


def run_network(net: tnsim.Network, x: torch.Tensor) -> torch.Tensor:
    """Evaluate a compiled network on one input (sum of its terms), real outputs only."""
    x = x.to(torch.float64)
    if net.in_padded:
        ones = torch.ones(x.shape[:-1] + (1,), dtype=x.dtype)
        x = torch.cat([ones, x], dim=-1)
    y = sum(evaluate_term(t.map_arrays(lambda a: a.double()), [x] * t.degree) for t in net.terms)
    return y[..., 1:] if net.out_padded else y


def rel(a, b) -> float:
    return abs(a - b) / max(abs(b), 1e-300)
