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

from .errors import InvalidArgumentError

__all__ = [
    "Linear",
    "Bilinear",
    "Trilinear",
    "Sequential",
    "BilinearAttention",
    "TensorTransformerBlock",
    "Embedding",
    "Unembedding",
    "rope_matrices",
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
            raise InvalidArgumentError(
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


def rope_matrices(n_ctx: int, d_head: int, base: float = 10000.0) -> torch.Tensor:
    r"""Rotary position embedding as one rotation per position, shape ``(n_ctx, d, d)``.

    The rotate-half convention (GPT-NeoX, Llama): with :math:`h = d/2` and
    :math:`\theta_i = \mathrm{base}^{-2i/d}`, position :math:`t` maps
    :math:`q \mapsto q\cos(t\theta) + \mathrm{rot}(q)\sin(t\theta)`, where
    :math:`\mathrm{rot}(q) = (-q_{h:}, q_{:h})` and :math:`\theta` repeats over both halves:
    a rotation by :math:`t\theta_i` in each plane :math:`(i, i+h)`. ``R[t] @ q`` applies it.
    """
    if d_head % 2:
        raise InvalidArgumentError(f"rotary embeddings need an even head width, got d_head={d_head}")
    half = d_head // 2
    theta = base ** (-torch.arange(half, dtype=torch.float64) * 2 / d_head)
    angle = torch.arange(n_ctx, dtype=torch.float64)[:, None] * theta  # (n, half)
    cos, sin = torch.cos(angle), torch.sin(angle)
    R = torch.zeros(n_ctx, d_head, d_head, dtype=torch.float64)
    i = torch.arange(half)
    R[:, i, i] = cos
    R[:, i + half, i + half] = cos
    R[:, i, i + half] = -sin
    R[:, i + half, i] = sin
    return R.to(torch.get_default_dtype())


class BilinearAttention(torch.nn.Module):
    r"""Multi-head attention with a polynomial score, on sequences ``(..., n, d_model)``.

    .. math::
        y_t = \sum_h W_O^{h} \sum_{s} M_{ts}\, \sigma^h_{ts}\, v^h_s,\qquad
        q^h_t = R_t(W_Q^h x_t + b_Q^h),\; k^h_s = R_s(W_K^h x_s + b_K^h),\;
        v^h_s = W_V^h x_s + b_V^h

    with the score :math:`\sigma_{ts} = c\,(q_t\cdot k_s)` (degree 3 in :math:`X`),
    :math:`(c\,q_t\cdot k_s)^2` with ``squared=True``, or the product of two score pairs
    :math:`c^2 (q_t\cdot k_s)(q'_t\cdot k'_s)` with ``paired=True`` (its own :math:`W_{Q'},
    W_{K'}`; degree 5); :math:`c` = ``scale`` (default :math:`1/\sqrt{d_{head}}`), :math:`M`
    the causal mask (:math:`s \le t`) or all ones, :math:`R_t` the rotary embedding of
    position :math:`t` (:func:`rope_matrices`; identity without ``rope``), biases :math:`b`
    only with ``bias=True``. No softmax: the score is a polynomial, so the layer is a tensor
    network.

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
    scale
        The score factor :math:`c`.
    bias
        Biases on the query, key and value maps (and on the second pair's).
    rope
        Rotate queries and keys by their position (rotary embedding, ``rope_base``).
    paired
        Score with two (query, key) pairs, :math:`(q\cdot k)(q'\cdot k')`.
    rope_base
        The rotary embedding's base.
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
        bias: bool = False,
        rope: bool = False,
        paired: bool = False,
        rope_base: float = 10000.0,
    ):
        super().__init__()
        if squared and paired:
            raise InvalidArgumentError("BilinearAttention: choose squared=True or paired=True, not both")
        d_head = d_head or max(1, d_model // n_heads)
        self.n_heads, self.d_head, self.n_ctx = n_heads, d_head, n_ctx
        self.causal, self.squared, self.residual = causal, squared, residual
        self.paired, self.rope_base = paired, float(rope_base)
        self.scale = 1 / math.sqrt(d_head) if scale is None else float(scale)
        width = n_heads * d_head
        self.q = torch.nn.Linear(d_model, width, bias=bias)
        self.k = torch.nn.Linear(d_model, width, bias=bias)
        self.v = torch.nn.Linear(d_model, width, bias=bias)
        self.o = torch.nn.Linear(width, d_model, bias=False)
        # created after the first four so that default layers draw the same weights as before
        self.q2 = torch.nn.Linear(d_model, width, bias=bias) if paired else None
        self.k2 = torch.nn.Linear(d_model, width, bias=bias) if paired else None
        mask = torch.ones(n_ctx, n_ctx)
        self.register_buffer("mask", torch.tril(mask) if causal else mask, persistent=False)
        rot = rope_matrices(n_ctx, d_head, rope_base) if rope else None
        self.register_buffer("rope", rot, persistent=False)

    @property
    def d_model(self) -> int:
        return self.q.in_features

    @property
    def bias(self) -> bool:
        return self.q.bias is not None

    def score_pairs(self) -> list[tuple[torch.nn.Linear, torch.nn.Linear]]:
        """The (query, key) maps whose dot products multiply into the score."""
        if self.paired:
            return [(self.q, self.k), (self.q2, self.k2)]
        return [(self.q, self.k)] * (2 if self.squared else 1)

    def _heads(self, lin: torch.nn.Linear, x: torch.Tensor, rotate: bool) -> torch.Tensor:
        y = lin(x).unflatten(-1, (self.n_heads, self.d_head))  # (..., n, heads, d_head)
        if rotate and self.rope is not None:
            n = x.shape[-2]
            y = torch.einsum("tef,...thf->...the", self.rope[:n].to(y.dtype), y)
        return y

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Masked scores of shape ``(..., heads, n, n)`` (query position first)."""
        n = x.shape[-2]
        s = None
        for q_map, k_map in self.score_pairs():
            q, k = self._heads(q_map, x, True), self._heads(k_map, x, True)
            pair = torch.einsum("...the,...she->...hts", q, k) * self.scale
            s = pair if s is None else s * pair
        return s * self.mask[:n, :n].to(s.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] > self.n_ctx:
            raise InvalidArgumentError(f"input has {x.shape[-2]} positions, the layer at most {self.n_ctx}")
        v = self._heads(self.v, x, False)
        z = torch.einsum("...hts,...shf->...thf", self.scores(x), v).flatten(-2)
        y = self.o(z)
        return x + y if self.residual else y

    def head(self, h: int) -> "BilinearAttention":
        """A single-head copy of head ``h`` (no residual): the head's own contribution."""
        if not -self.n_heads <= h < self.n_heads:
            raise IndexError(f"head {h} out of range for {self.n_heads} heads")
        h = h % self.n_heads
        out = BilinearAttention(
            self.d_model, self.n_ctx, 1, self.d_head, self.causal, self.squared, False,
            self.scale, self.bias, self.rope is not None, self.paired, self.rope_base,
        ).to(dtype=self.q.weight.dtype, device=self.q.weight.device)
        rows = slice(h * self.d_head, (h + 1) * self.d_head)
        with torch.no_grad():
            for name in ("q", "k", "v", "q2", "k2"):
                src, dst = getattr(self, name), getattr(out, name)
                if src is None:
                    continue
                dst.weight.copy_(src.weight[rows])
                if src.bias is not None:
                    dst.bias.copy_(src.bias[rows])
            out.o.weight.copy_(self.o.weight[:, rows])
        return out

    def extra_repr(self) -> str:
        return (
            f"n_ctx={self.n_ctx}, n_heads={self.n_heads}, d_head={self.d_head}, "
            f"causal={self.causal}, squared={self.squared}, paired={self.paired}, "
            f"rope={self.rope is not None}, bias={self.bias}, residual={self.residual}"
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
            raise InvalidArgumentError("a positional embedding needs n_ctx")
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
