"""Tiny float64 models used across the tests."""

from __future__ import annotations

import torch

import tnsim


def bilinear(d=3, h=4, o=2, bias=False, residual=False, seed=0) -> tnsim.nn.Bilinear:
    torch.manual_seed(seed)
    return tnsim.nn.Bilinear(d, h, o if not residual else d, bias=bias, residual=residual).double()


def stack2(d=3, h=4, o=2, bias=False, residual=False, seed=0) -> torch.nn.Sequential:
    """Two bilinear layers; the first residual if asked."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        tnsim.nn.Bilinear(d, h, d, bias=bias, residual=residual),
        tnsim.nn.Bilinear(d, h, o, bias=bias),
    ).double()


def residual_stack(d=3, width=4, h=5, o=2, layers=2, bias=False, seed=0) -> torch.nn.Sequential:
    """embed -> residual bilinear blocks -> unembed."""
    torch.manual_seed(seed)
    mods = [tnsim.nn.Linear(d, width)]
    mods += [tnsim.nn.Bilinear(width, h, width, bias=bias, residual=True) for _ in range(layers)]
    mods += [tnsim.nn.Linear(width, o)]
    return torch.nn.Sequential(*mods).double()
