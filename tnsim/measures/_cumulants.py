r"""Cumulants and the kernel of measures with independent coordinates or positions.

For inputs whose units (coordinates, or positions of a token sequence) are independent, the
expectation of a product of copies is the cumulant expansion

.. math::
    \mathbb E\Big[\prod_c x_{u_c}\Big] = \sum_{\pi} \prod_{B\in\pi} \kappa_B,

a sum over the set partitions :math:`\pi` of the copies; the joint cumulant :math:`\kappa_B`
of a block vanishes unless every copy in it reads the same unit. :class:`CumulantKernel`
puts one tensor network per block: a position hyperedge (sequences) and a feature kernel
that a subclass supplies (a diagonal hyperedge weighted by :math:`\kappa_r` for product
measures, a dense joint cumulant for one-hot tokens).

This module holds the cumulant arithmetic both measures share:

* :func:`cumulants_from_moments` — :math:`\kappa_n = m_n - \sum_{k=1}^{n-1}\binom{n-1}{k-1}
  \kappa_k m_{n-k}` for univariate marginals;
* :func:`one_hot_cumulant` — the joint cumulant of the components of a one-hot vector.
"""

from __future__ import annotations

import itertools
import math

import torch

from .._memory import check_allocation
from ..errors import InvalidArgumentError, NonFiniteError, ShapeMismatchError
from ._base import Kernel, Piece, Space

__all__ = ["cumulants_from_moments", "one_hot_moment", "one_hot_cumulant", "checked_probs", "CumulantKernel"]


def checked_probs(p: torch.Tensor, what: str) -> torch.Tensor:
    """``p`` validated as probabilities over its last axis (``what`` names that axis) and
    renormalised to sum to exactly 1: finite, non-negative, summing to 1 within 1e-6."""
    if not torch.isfinite(p).all():
        raise NonFiniteError("probs contain NaN or infinity")
    if (p < 0).any():
        raise InvalidArgumentError("probs must be non-negative")
    total = p.sum(-1)
    if (abs(total - 1) > 1e-6).any():
        raise InvalidArgumentError(f"probs must sum to 1 over {what} (sums {total.tolist()})")
    return p / total.unsqueeze(-1)


def cumulants_from_moments(moments: torch.Tensor) -> torch.Tensor:
    r"""Cumulants :math:`\kappa_0..\kappa_R` from raw moments :math:`m_0..m_R` (axis 0).

    .. math::
        \kappa_n = m_n - \sum_{k=1}^{n-1} \binom{n-1}{k-1}\, \kappa_k\, m_{n-k},

    the moment-cumulant recursion (:math:`m_0 = 1`; :math:`\kappa_0` is returned as 0).
    Trailing axes are independent coordinates.
    """
    kappa = torch.zeros_like(moments)
    for n in range(1, moments.shape[0]):
        acc = moments[n].clone()
        for k in range(1, n):
            acc = acc - math.comb(n - 1, k - 1) * kappa[k] * moments[n - k]
        kappa[n] = acc
    return kappa


def one_hot_moment(p: torch.Tensor, r: int) -> torch.Tensor:
    r""":math:`\mathbb E[x_{i_1}\cdots x_{i_r}] = p_i\,[i_1=\dots=i_r]` for a one-hot ``x``
    with :math:`P(x = e_i) = p_i`; ``p`` of shape ``(..., V)``, result ``(..., V, ..., V)``."""
    v = p.shape[-1]
    check_allocation(tuple(p.shape[:-1]) + (v,) * r, p.dtype.itemsize, f"a one-hot moment of order {r}")
    out = p.new_zeros(tuple(p.shape[:-1]) + (v,) * r)
    idx = torch.arange(v, device=p.device)
    out[(Ellipsis,) + (idx,) * r] = p
    return out


def one_hot_cumulant(p: torch.Tensor, r: int, cache: dict | None = None) -> torch.Tensor:
    r"""Joint cumulant :math:`\kappa_r(i_1, \dots, i_r)` of the components of a one-hot vector.

    By Möbius inversion of :math:`\mathbb E[x_{i_1}\cdots x_{i_r}] = p_i[i_1=\dots=i_r]`,
    :math:`\kappa_r = \sum_\sigma (-1)^{|\sigma|-1}(|\sigma|-1)!\prod_{S\in\sigma} m(i_S)`
    (e.g. :math:`\kappa_2 = \mathrm{diag}(p) - pp^\top`). Computed by the equivalent
    recursion over the block :math:`S` holding the last slot,

    .. math::
        \kappa(B) = m(B) - \sum_{S \ni \text{last},\, S \subsetneq B} \kappa(S)\, m(B\setminus S),

    :math:`2^{r-1}` outer products of :math:`V^r` entries. ``p`` has shape ``(..., V)``
    (leading axes: positions); ``cache`` (a dict) keeps lower orders between calls.
    """
    cache = {} if cache is None else cache
    if r in cache:
        return cache[r]
    letters = "abcdefghijklmnopqrstuvwxyz"
    if r > len(letters):
        raise ShapeMismatchError(f"a one-hot cumulant of order {r} has more than {len(letters)} axes")
    out = one_hot_moment(p, r)
    for s in range(1, r):
        k_s = one_hot_cumulant(p, s, cache)
        m_rest = one_hot_moment(p, r - s)
        for rest in itertools.combinations(range(r - 1), s - 1):
            S = rest + (r - 1,)
            T = tuple(j for j in range(r) if j not in S)
            spec = (
                "..." + "".join(letters[j] for j in S) + ",..." + "".join(letters[j] for j in T)
                + "->..." + letters[:r]
            )
            out = out - torch.einsum(spec, k_s, m_rest)
    cache[r] = out
    return out


def _identity(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(n, dtype=like.dtype, device=like.device)


class CumulantKernel(Kernel):
    r"""Per-block cumulant kernels for inputs with independent units (scheme ``"partitions"``).

    A block of :math:`r` copies is the tensor network
    :math:`\delta_{t_1\dots t_r}\,K_r(t; i_1, \dots, i_r)`: for sequences every copy reads
    the same position :math:`t` (identity pieces, joined into one index), and the subclass's
    :meth:`features` supplies the feature kernel. Singletons are the mean :math:`(1, \mu)` in
    a padded frame; larger blocks are zero on the constant coordinate (a constant has no
    cumulants), hence ``decoupled``.

    Subclasses set ``per_position`` (whether the feature kernel depends on the position) and
    implement :meth:`mean` (the singleton's real part, shape ``(d,)`` or ``(n, d)``),
    :meth:`features` and :meth:`zero_size`.
    """

    scheme = "partitions"
    decoupled = True
    partial = True
    per_position = False

    def __init__(self, space_a: Space, space_b: Space, like: torch.Tensor):
        if space_a.d != space_b.d or space_a.shape[:-1] != space_b.shape[:-1]:
            raise ShapeMismatchError(f"input spaces differ: {space_a.shape} vs {space_b.shape}")
        self.spaces = {"a": space_a, "b": space_b}
        self.like = like
        self._blocks: dict = {}

    # --- what a subclass supplies ------------------------------------------------------------

    def mean(self) -> torch.Tensor:
        """Mean of the real features: ``(d,)``, or ``(n, d)`` when ``per_position``."""
        raise NotImplementedError

    def features(self, spaces: tuple[Space, ...], fa: int) -> tuple[Piece, ...]:
        """Feature kernel of a block of ``len(spaces) >= 2`` copies (axis ``fa`` of each copy;
        when ``per_position``, a piece may also use leg ``(0, 0)``, the block's position)."""
        raise NotImplementedError

    # --- the shared block structure ----------------------------------------------------------

    def block(self, sides: tuple[str, ...]) -> tuple[Piece, ...] | None:
        hit = self._blocks.get(sides)
        if hit is None:
            hit = self._blocks[sides] = self._build(sides)
        return hit

    def _build(self, sides: tuple[str, ...]) -> tuple[Piece, ...] | None:
        spaces = tuple(self.spaces[s] for s in sides)
        r = len(spaces)
        if r > 1 and self.zero_size(r):
            return None
        seq = spaces[0].sequence
        fa = 1 if seq else 0
        if r == 1:
            return self._single(spaces[0])
        joins = ()
        if seq:
            n = spaces[0].shape[0]
            joins = tuple(Piece(_identity(n, self.like), ((0, 0), (j, 0)), identity=True) for j in range(1, r))
        return joins + self.features(spaces, fa)

    def _single(self, space: Space) -> tuple[Piece, ...]:
        mu = self.mean().to(self.like)
        pad = int(space.padded)
        v = mu.new_zeros(mu.shape[:-1] + (space.shape[-1],))
        v[..., pad:] = mu
        if space.padded:
            v[..., 0] = 1
        if not space.sequence:
            return (Piece(v, ((0, 0),)),)
        if self.per_position:
            return (Piece(v, ((0, 0), (0, 1))),)
        ones = torch.ones(space.shape[0], dtype=self.like.dtype, device=self.like.device)
        return (Piece(ones, ((0, 0),)), Piece(v, ((0, 1),)))
