"""PyTorch modules whose compositions are polynomials of their input (train them as usual).

``Linear``, ``Bilinear``, ``Trilinear`` and ``Sequential`` act on vectors (and, like every
``torch.nn.Linear``, at every position of a sequence); ``BilinearAttention``,
``TensorTransformerBlock``, ``Embedding`` and ``Unembedding`` build sequence models on inputs of
shape ``(n_ctx, d)``. :func:`tnsim.compile` turns any composition of them (plain
``torch.nn.Sequential`` and ``torch.nn.Linear`` included) into a :class:`~tnsim.Network`.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "Linear",
    "Bilinear",
    "Trilinear",
    "Sequential",
    "BilinearAttention",
    "TensorTransformerBlock",
    "Embedding",
    "Unembedding",
]


class Linear(torch.nn.Linear):
    """``torch.nn.Linear`` with ``bias=False`` by default (embeddings, heads, projections)."""

    def __init__(self, d_in: int, d_out: int, bias: bool = False, **kwargs):
        super().__init__(d_in, d_out, bias=bias, **kwargs)


class _ProductLayer(torch.nn.Module):
    """``down(f_1(x) * ... * f_k(x))`` (plus ``x`` when residual), one ``torch.nn.Linear``
    (``d_in -> d_hidden``) per factor name in ``FACTORS``."""

    FACTORS: tuple[str, ...] = ()

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
            raise ValueError(
                f"a residual {type(self).__name__} needs d_out == d_in, got {d_in} -> {d_out}"
            )
        for name in self.FACTORS:
            setattr(self, name, torch.nn.Linear(d_in, d_hidden, bias=bias))
        self.down = torch.nn.Linear(d_hidden, d_out, bias=bias)
        self.residual = residual

    @property
    def d_in(self) -> int:
        return getattr(self, self.FACTORS[0]).in_features

    @property
    def d_out(self) -> int:
        return self.down.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, *rest = self.FACTORS
        y = getattr(self, first)(x)
        for name in rest:
            y = y * getattr(self, name)(x)
        y = self.down(y)
        return x + y if self.residual else y

    def extra_repr(self) -> str:
        return f"residual={self.residual}"


class Bilinear(_ProductLayer):
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

    FACTORS = ("left", "right")


class Sequential(torch.nn.Sequential):
    """``torch.nn.Sequential`` (kept for symmetry; plain ``torch.nn.Sequential`` works too)."""


class Trilinear(_ProductLayer):
    r"""A trilinear layer :math:`f(x) = D\,(Ax \odot Bx \odot Cx)` (plus :math:`x` when residual).

    Compiled as one symmetric CP node of degree 3 (group :math:`S_3`).
    """

    FACTORS = ("a", "b", "c")


class BilinearAttention(torch.nn.Module):
    r"""Multi-head attention with a polynomial score, on sequences ``(..., n, d_model)``.

    .. math::
        y_t = \sum_h W_O^{h} \sum_{s} M_{ts}\, \sigma(q^h_t\cdot k^h_s)\, v^h_s,\qquad
        q^h_t = W_Q^h x_t,\; k^h_s = W_K^h x_s,\; v^h_s = W_V^h x_s

    with :math:`\sigma(a) = c\,a` (degree 3 in :math:`X`) or, with ``squared=True``,
    :math:`\sigma(a) = (c\,a)^2` (degree 5); :math:`c` = ``scale`` (default
    :math:`1/\sqrt{d_{head}}`), :math:`M` the causal mask (:math:`s \le t`) or all ones.
    No softmax: the score is a polynomial, so the layer is a tensor network.

    Parameters
    ----------
    d_model
        Width of the residual stream (input and output features).
    n_ctx
        Context length (the mask is ``n_ctx x n_ctx``; shorter inputs use its top-left block).
    n_heads, d_head
        Number of heads and their width (default ``d_model // n_heads``).
    causal
        Mask future positions.
    squared
        Square the score.
    residual
        Add the input to the output.
    """

    def __init__(
        self,
        d_model: int,
        n_ctx: int,
        n_heads: int = 1,
        d_head: int | None = None,
        causal: bool = True,
        squared: bool = False,
        residual: bool = False,
        scale: float | None = None,
    ):
        super().__init__()
        d_head = d_head or max(1, d_model // n_heads)
        self.n_heads, self.d_head, self.n_ctx = n_heads, d_head, n_ctx
        self.causal, self.squared, self.residual = causal, squared, residual
        self.scale = 1 / math.sqrt(d_head) if scale is None else float(scale)
        self.q = torch.nn.Linear(d_model, n_heads * d_head, bias=False)
        self.k = torch.nn.Linear(d_model, n_heads * d_head, bias=False)
        self.v = torch.nn.Linear(d_model, n_heads * d_head, bias=False)
        self.o = torch.nn.Linear(n_heads * d_head, d_model, bias=False)
        mask = torch.ones(n_ctx, n_ctx)
        self.register_buffer("mask", torch.tril(mask) if causal else mask, persistent=False)

    @property
    def d_model(self) -> int:
        return self.q.in_features

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Masked scores of shape ``(..., heads, n, n)`` (query position first)."""
        n = x.shape[-2]
        q = self.q(x).unflatten(-1, (self.n_heads, self.d_head))
        k = self.k(x).unflatten(-1, (self.n_heads, self.d_head))
        s = torch.einsum("...the,...she->...hts", q, k) * self.scale
        if self.squared:
            s = s * s
        return s * self.mask[:n, :n].to(s.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] > self.n_ctx:
            raise ValueError(f"input has {x.shape[-2]} positions, the layer at most {self.n_ctx}")
        v = self.v(x).unflatten(-1, (self.n_heads, self.d_head))
        z = torch.einsum("...hts,...shf->...thf", self.scores(x), v).flatten(-2)
        y = self.o(z)
        return x + y if self.residual else y

    def head(self, h: int) -> "BilinearAttention":
        """A single-head copy of head ``h`` (no residual): the head's own contribution."""
        if not -self.n_heads <= h < self.n_heads:
            raise IndexError(f"head {h} out of range for {self.n_heads} heads")
        h = h % self.n_heads
        out = BilinearAttention(
            self.d_model, self.n_ctx, 1, self.d_head, self.causal, self.squared, False, self.scale
        ).to(dtype=self.q.weight.dtype, device=self.q.weight.device)
        rows = slice(h * self.d_head, (h + 1) * self.d_head)
        with torch.no_grad():
            for name in "qkv":
                getattr(out, name).weight.copy_(getattr(self, name).weight[rows])
            out.o.weight.copy_(self.o.weight[:, rows])
        return out

    def extra_repr(self) -> str:
        return (
            f"n_ctx={self.n_ctx}, n_heads={self.n_heads}, d_head={self.d_head}, "
            f"causal={self.causal}, squared={self.squared}, residual={self.residual}"
        )


class TensorTransformerBlock(torch.nn.Module):
    r"""Attention then bilinear MLP, each with a residual: :math:`y = g(x + A(x))`,
    :math:`g(u) = u + D(Lu \odot Ru)` at every position. Two layers for the recursive method."""

    def __init__(
        self,
        d_model: int,
        n_ctx: int,
        n_heads: int = 1,
        d_head: int | None = None,
        d_hidden: int | None = None,
        causal: bool = True,
        squared: bool = False,
        bias: bool = False,
    ):
        super().__init__()
        self.attn = BilinearAttention(
            d_model, n_ctx, n_heads, d_head, causal=causal, squared=squared, residual=True
        )
        self.mlp = Bilinear(d_model, d_hidden or 2 * d_model, d_model, bias=bias, residual=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attn(x))


class Embedding(torch.nn.Module):
    r"""Token embedding :math:`x_t \mapsto W_E^\top x_t` (+ a learned positional vector).

    Takes token ids (integers, shape ``(..., n)``; one-hot encoded) or real vectors of shape
    ``(..., n, vocab)``: tnsim compares models on the real input space, where one-hot tokens
    are particular points.
    """

    def __init__(self, vocab: int, d_model: int, n_ctx: int | None = None, positional: bool = False):
        super().__init__()
        if positional and n_ctx is None:
            raise ValueError("a positional embedding needs n_ctx")
        self.vocab = vocab
        self.weight = torch.nn.Parameter(torch.randn(vocab, d_model) / math.sqrt(d_model))
        self.pos = torch.nn.Parameter(0.1 * torch.randn(n_ctx, d_model)) if positional else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            x = torch.nn.functional.one_hot(x, self.vocab).to(self.weight.dtype)
        y = x @ self.weight
        if self.pos is not None:
            y = y + self.pos[: x.shape[-2]]
        return y


class Unembedding(Linear):
    """Read-out to token logits at every position (a ``Linear`` without bias)."""
