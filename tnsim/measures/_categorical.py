r"""The categorical measure: one-hot tokens at independent positions.

Inputs are sequences :math:`X \in \{0,1\}^{n\times V}` whose rows are one-hot, :math:`X_t =
e_{w_t}` with the tokens :math:`w_t \sim p_t` independent across positions (or a single
one-hot vector, inputs ``(V,)``). This is the input distribution of language models built on
:class:`tnsim.nn.Embedding`.

The expectation of a product of copies is the cumulant expansion over set partitions of the
copies (:mod:`._cumulants`): a block's copies must read the same position (a position
hyperedge), and its feature kernel is the joint cumulant of the one-hot components,

.. math::
    \kappa_r(i_1..i_r) = \sum_\sigma (-1)^{|\sigma|-1}(|\sigma|-1)!\prod_{S\in\sigma} m(i_S),
    \qquad m(i_S) = p_i\,[\text{all } i_S \text{ equal}],

e.g. :math:`\kappa_1 = p`, :math:`\kappa_2 = \mathrm{diag}(p) - pp^\top`.
"""

from __future__ import annotations

import torch

from ..errors import InvalidArgumentError, ShapeMismatchError
from ..results import tensor_digest
from ._base import Measure, Piece, Space
from ._cumulants import CumulantKernel, checked_probs, one_hot_cumulant

__all__ = ["CategoricalMeasure", "CategoricalKernel"]


class CategoricalMeasure(Measure):
    r"""Expectation over one-hot tokens drawn independently at every position.

    Parameters
    ----------
    probs
        Token probabilities: ``(V,)`` (the same at every position) or ``(n_ctx, V)`` (one
        distribution per position). Non-negative, summing to 1 over the last axis.
    centred
        Compare :math:`f - \mathbb E f` (the output covariance).

    Notes
    -----
    A block of :math:`r` copies carries the dense joint cumulant :math:`\kappa_r` of
    :math:`V^r` entries (:func:`~tnsim.measures._cumulants.one_hot_cumulant`), so the cost
    grows with the vocabulary as :math:`V^r`. The recursive method has no closure for this
    measure: it is exact for one-layer models and refused beyond.
    """

    name = "categorical"
    closure = None

    def __init__(self, probs, *, centred: bool = False):
        p = torch.as_tensor(probs).detach().to("cpu", torch.float64)
        if p.dim() not in (1, 2) or p.shape[-1] == 0:
            raise ShapeMismatchError(f"probs must have shape (V,) or (n_ctx, V), got {tuple(p.shape)}")
        self.probs = checked_probs(p, "the vocabulary")
        self.centred = bool(centred)

    @classmethod
    def fit(cls, token_ids: torch.Tensor, vocab: int | None = None, *, per_position: bool = False,
            centred: bool = False) -> "CategoricalMeasure":
        """Unigram frequencies of ``token_ids`` (integers, shape ``(N, n_ctx)`` or ``(N,)``).

        ``vocab`` defaults to ``max id + 1``; ``per_position=True`` fits one distribution per
        position (shape ``(n_ctx, V)``) from the columns of a 2-d ``token_ids``.
        """
        ids = torch.as_tensor(token_ids)
        if ids.is_floating_point() or ids.numel() == 0:
            raise InvalidArgumentError("token_ids must be a non-empty integer tensor")
        if (ids < 0).any():
            raise InvalidArgumentError("token_ids must be non-negative")
        v = int(ids.max()) + 1 if vocab is None else int(vocab)
        if int(ids.max()) >= v:
            raise InvalidArgumentError(f"token id {int(ids.max())} out of range for vocab={v}")
        if per_position:
            if ids.dim() != 2:
                raise ShapeMismatchError(f"per_position needs token_ids of shape (N, n_ctx), got {tuple(ids.shape)}")
            counts = torch.stack([torch.bincount(ids[:, t], minlength=v) for t in range(ids.shape[1])])
        else:
            counts = torch.bincount(ids.reshape(-1), minlength=v)
        counts = counts.to(torch.float64)
        return cls(counts / counts.sum(-1, keepdim=True), centred=centred)

    @property
    def vocab(self) -> int:
        return self.probs.shape[-1]

    def check(self, space: Space) -> None:
        if space.d != self.vocab:
            raise ShapeMismatchError(
                f"probs have {self.vocab} tokens but the models take inputs with {space.d} features"
            )
        if self.probs.dim() == 2 and (not space.sequence or space.shape[0] != self.probs.shape[0]):
            raise ShapeMismatchError(
                f"probs have shape {tuple(self.probs.shape)} (one row per position) but the models "
                f"take inputs of shape {tuple(space.shape[:-1]) + (space.d,)}"
            )

    def kernel(self, space_a: Space, space_b: Space, like: torch.Tensor) -> "CategoricalKernel":
        return CategoricalKernel(self, space_a, space_b, like)

    def tensors(self) -> tuple:
        return ()  # ``probs`` is a normalised copy taken at construction

    def key(self) -> tuple:
        return ("categorical", tuple(self.probs.shape), self.centred)

    def header(self) -> dict:
        return {"measure": self.describe(), "probs": tensor_digest(self.probs), "centred": self.centred}

    def describe(self) -> str:
        return "categorical" + ("(centred)" if self.centred else "")


class CategoricalKernel(CumulantKernel):
    r"""Joint one-hot cumulants :math:`\kappa_r` (dense, :math:`V^r`) at a shared position."""

    def __init__(self, measure: CategoricalMeasure, space_a: Space, space_b: Space, like):
        super().__init__(space_a, space_b, like)
        measure.check(space_a)
        self.max_block = None
        self.p = measure.probs.to(like)
        self.per_position = self.p.dim() == 2
        self._cumulants: dict = {}
        self.structure = ("categorical", space_a, space_b, self.per_position)

    def zero_size(self, r: int) -> bool:
        return False  # a one-hot vector's cumulants vanish only for a point mass

    def mean(self) -> torch.Tensor:
        return self.p

    def features(self, spaces: tuple[Space, ...], fa: int) -> tuple[Piece, ...]:
        r = len(spaces)
        k = one_hot_cumulant(self.p, r, self._cumulants)
        lead = k.dim() - r
        for j, s in enumerate(spaces):  # zero on the constant coordinate of padded copies
            if s.padded:
                k = torch.cat([k.new_zeros(k.shape[: lead + j] + (1,) + k.shape[lead + j + 1 :]), k], dim=lead + j)
        pre = ((0, 0),) if self.per_position else ()
        return (Piece(k, pre + tuple((j, fa) for j in range(r))),)
