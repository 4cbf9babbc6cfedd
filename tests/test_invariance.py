"""Weight-space symmetries leave every similarity at 1 (to 1e-9) and similarity to a third model unchanged."""

import copy

import pytest
import torch

import tnsim
from models import residual_stack, stack2

METHODS = [("tensor", "exact"), ("tensor", "recursive"), ("gaussian", "exact"), ("gaussian", "recursive")]


def permute_rescale_swap(layer: tnsim.nn.Bilinear, seed: int) -> None:
    """Permute hidden units, rescale left/right/down per unit, swap left and right."""
    g = torch.Generator().manual_seed(seed)
    h = layer.left.out_features
    perm = torch.randperm(h, generator=g)
    alpha = torch.rand(h, generator=g, dtype=torch.float64) + 0.5
    beta = -(torch.rand(h, generator=g, dtype=torch.float64) + 0.5)
    with torch.no_grad():
        L, R, D = layer.left.weight.clone(), layer.right.weight.clone(), layer.down.weight.clone()
        layer.left.weight.copy_((R * beta[:, None])[perm])
        layer.right.weight.copy_((L * alpha[:, None])[perm])
        layer.down.weight.copy_((D / (alpha * beta)[None, :])[:, perm])
        if layer.left.bias is not None:
            lb, rb = layer.left.bias.clone(), layer.right.bias.clone()
            layer.left.bias.copy_((rb * beta)[perm])
            layer.right.bias.copy_((lb * alpha)[perm])


def rotate_residual(model: torch.nn.Sequential, seed: int) -> None:
    """Rotate the residual stream of embed -> residual blocks -> unembed by an orthogonal Q."""
    g = torch.Generator().manual_seed(seed)
    width = model[0].out_features
    Q, _ = torch.linalg.qr(torch.randn(width, width, generator=g, dtype=torch.float64))
    with torch.no_grad():
        model[0].weight.copy_(Q @ model[0].weight)
        for block in list(model)[1:-1]:
            for lin in (block.left, block.right):
                lin.weight.copy_(lin.weight @ Q.T)
            block.down.weight.copy_(Q @ block.down.weight)
            if block.down.bias is not None:
                block.down.bias.copy_(Q @ block.down.bias)
        model[-1].weight.copy_(model[-1].weight @ Q.T)


def gauge(model: torch.nn.Sequential, seed: int) -> None:
    """Insert an invertible (non-orthogonal) M between two bilinear layers."""
    g = torch.Generator().manual_seed(seed)
    d = model[0].down.out_features
    M = torch.randn(d, d, generator=g, dtype=torch.float64) + 3 * torch.eye(d, dtype=torch.float64)
    Minv = torch.linalg.inv(M)
    with torch.no_grad():
        model[0].down.weight.copy_(M @ model[0].down.weight)
        if model[0].down.bias is not None:
            model[0].down.bias.copy_(M @ model[0].down.bias)
        model[1].left.weight.copy_(model[1].left.weight @ Minv)
        model[1].right.weight.copy_(model[1].right.weight @ Minv)


def check(a, a2, c, measure, method):
    assert abs(tnsim.similarity(a, a2, measure=measure, method=method) - 1) < 1e-9
    s1 = tnsim.similarity(a, c, measure=measure, method=method)
    s2 = tnsim.similarity(a2, c, measure=measure, method=method)
    assert abs(s1 - s2) < 1e-9
    assert abs(s1) < 1 - 1e-6  # the third model is genuinely different


@pytest.mark.parametrize("measure,method", METHODS)
@pytest.mark.parametrize("bias", [False, True])
def test_hidden_permutation_rescaling_swap(measure, method, bias):
    a = stack2(bias=bias, seed=1)
    a2 = copy.deepcopy(a)
    permute_rescale_swap(a2[0], 10)
    permute_rescale_swap(a2[1], 11)
    check(a, a2, stack2(bias=bias, seed=2), measure, method)


@pytest.mark.parametrize("measure,method", METHODS)
def test_residual_stream_rotation(measure, method):
    a = residual_stack(layers=2, bias=True, seed=1)
    a2 = copy.deepcopy(a)
    rotate_residual(a2, 3)
    check(a, a2, residual_stack(layers=2, bias=True, seed=2), measure, method)


@pytest.mark.parametrize("measure,method", METHODS)
@pytest.mark.parametrize("bias", [False, True])
def test_gauge_between_layers(measure, method, bias):
    a = stack2(bias=bias, seed=1)
    a2 = copy.deepcopy(a)
    gauge(a2, 4)
    check(a, a2, stack2(bias=bias, seed=2), measure, method)


def test_weight_cosine_is_fooled_but_tensor_similarity_is_not():
    """A hidden permutation drops the naive weight cosine; tensor similarity stays at 1."""
    a = stack2(seed=1)
    a2 = copy.deepcopy(a)
    permute_rescale_swap(a2[0], 10)
    wa = torch.cat([p.detach().flatten() for p in a.parameters()])
    wb = torch.cat([p.detach().flatten() for p in a2.parameters()])
    assert float(torch.nn.functional.cosine_similarity(wa, wb, dim=0)) < 0.9
    assert abs(tnsim.similarity(a, a2, measure="tensor") - 1) < 1e-9
