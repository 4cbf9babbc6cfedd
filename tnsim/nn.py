"""PyTorch modules whose compositions are polynomials of their input (train them as usual).

``Linear``, ``Bilinear`` and ``Sequential`` are ordinary ``torch.nn`` modules; :func:`tnsim.compile`
turns any composition of them (plain ``torch.nn.Sequential`` and ``torch.nn.Linear`` included)
into a :class:`~tnsim.Network`.
"""

from __future__ import annotations

import torch

__all__ = ["Linear", "Bilinear", "Sequential"]


class Linear(torch.nn.Linear):
    """``torch.nn.Linear`` with ``bias=False`` by default (embeddings, heads, projections)."""

    def __init__(self, d_in: int, d_out: int, bias: bool = False, **kwargs):
        super().__init__(d_in, d_out, bias=bias, **kwargs)


class Bilinear(torch.nn.Module):
    r"""A bilinear layer :math:`f(x) = D\,(Lx \odot Rx)` (plus :math:`x` when residual).

    Parameters
    ----------
    d_in
        Input dimension.
    d_hidden
        Number of hidden units (rows of ``left`` and ``right``).
    d_out
        Output dimension (default ``d_in``).
    bias
        Give ``left``, ``right`` and ``down`` a bias each.
    residual
        Add the input to the output (requires ``d_out == d_in``).
    """

    def __init__(
        self,
        d_in: int,
        d_hidden: int,
        d_out: int | None = None,
        bias: bool = False,
        residual: bool = False,
    ):
        super().__init__()
        d_out = d_in if d_out is None else d_out
        if residual and d_out != d_in:
            raise ValueError(f"a residual Bilinear needs d_out == d_in, got {d_in} -> {d_out}")
        self.left = torch.nn.Linear(d_in, d_hidden, bias=bias)
        self.right = torch.nn.Linear(d_in, d_hidden, bias=bias)
        self.down = torch.nn.Linear(d_hidden, d_out, bias=bias)
        self.residual = residual

    @property
    def d_in(self) -> int:
        return self.left.in_features

    @property
    def d_out(self) -> int:
        return self.down.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down(self.left(x) * self.right(x))
        return x + y if self.residual else y

    def extra_repr(self) -> str:
        return f"residual={self.residual}"


class Sequential(torch.nn.Sequential):
    """``torch.nn.Sequential`` (kept for symmetry; plain ``torch.nn.Sequential`` works too)."""
