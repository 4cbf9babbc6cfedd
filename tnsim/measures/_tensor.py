r"""The tensor measure: the Frobenius inner product of fully symmetrised, padded tensors.

:math:`\langle \mathrm{Sym}\,T_a, \mathrm{Sym}\,T_b\rangle` — a pure weight-space quantity.
Lower-degree terms are homogenised to the top degree with virtual copies on the constant
coordinate, so the padded tensor is canonical; the pairings are bijections between the copies
of *a* and *b*, normalised by :math:`1/K!`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ShapeMismatchError
from ._base import Kernel, Measure, Piece, Space, embedded, feature_pieces, real_weights

__all__ = ["TensorMeasure", "TensorKernel"]


@dataclass(frozen=True)
class TensorMeasure(Measure):
    """Frobenius inner product of fully symmetrised (padded) tensors."""

    name = "tensor"
    homogenise = True
    closure = "hierarchical"

    def kernel(self, space_a: Space, space_b: Space, like: torch.Tensor) -> "TensorKernel":
        return TensorKernel(space_a, space_b, like)

    def key(self) -> tuple:
        return ("tensor",)

    def describe(self) -> str:
        return "tensor"


class TensorKernel(Kernel):
    r"""Metric of the tensor measure: the identity on real features, plus the constant.

    For padded sequences the constant coordinate is shared by all positions, so the metric is
    :math:`P_{(t,i),(s,j)} = \delta_{ts}\,[i=j\ge 1] + [i=0][j=0]` (one constant for the whole
    input, making the padded tensor canonical).
    """

    scheme = "bijections"
    decoupled = True  # constant meets constant, real features meet real features
    const_blocks = True

    def __init__(self, space_a: Space, space_b: Space, like: torch.Tensor):
        if space_a.d != space_b.d or space_a.shape[:-1] != space_b.shape[:-1]:
            raise ShapeMismatchError(f"input spaces differ: {space_a.shape} vs {space_b.shape}")
        self.spaces = {"a": space_a, "b": space_b}
        self.like = like
        m = embedded(torch.eye(space_a.d, dtype=like.dtype, device=like.device), space_a, space_b)
        both = space_a.padded and space_b.padded
        if both and not space_a.sequence:
            m[0, 0] = 1
            self._pair = (Piece(m, ((0, 0), (1, 0)), identity=True),)
        elif both:
            # both parts are diagonal in the feature: join the feature legs and put
            # Q[t, s, i] = delta_ts [i >= 1] + [i = 0] on positions and the joined feature
            n = space_a.shape[0]
            eye = torch.eye(n, dtype=like.dtype, device=like.device)
            w = real_weights(space_a, like)
            q = eye[:, :, None] * w + (1 - w)
            join = torch.eye(space_a.shape[-1], dtype=like.dtype, device=like.device)
            self._pair = (
                Piece(join, ((0, 1), (1, 1)), identity=True),
                Piece(q, ((0, 0), (1, 0), (0, 1))),
            )
        else:
            same = space_a.padded == space_b.padded
            self._pair = feature_pieces(m, space_a, space_b, like, identity=same)
        self._pads: dict = {}
        self.structure = ("tensor", space_a, space_b)
        self._sequence_pad, self._parts = both and space_a.sequence, None

    def linear_parts(self) -> tuple["Kernel", ...]:
        r"""The metric as a sum of kernels that each keep their structure: for padded sequences
        :math:`P = \delta_{ts}\,\mathrm{diag}(w) + \mathbf 1\mathbf 1^\top \otimes e_0e_0^\top`
        (``w`` the real features' indicator), one kernel here otherwise.

        A pairing with one copy pair (a linear layer, no virtual copies) is linear in the
        metric, so it may be summed part by part; the parts cost :math:`n\,d_a d_b d` and
        :math:`n\,d` instead of the joined metric's :math:`n^2 d_a d_b d`. Degree :math:`k`
        pairings are products of :math:`k` metrics and must use the whole one.
        """
        if not self._sequence_pad:
            return (self,)
        if self._parts is None:
            space, like = self.spaces["a"], self.like
            n = space.shape[0]
            eye = torch.eye(n, dtype=like.dtype, device=like.device)
            w = real_weights(space, like)
            ones = torch.ones(n, dtype=like.dtype, device=like.device)
            join = self._pair[0]  # the features' identity, joined by renaming (never read)
            # the position identity joins two output positions, so it stays a tensor: the
            # masked contraction (tnsim.plan._masked) runs it position by position
            real = (join, Piece(eye, ((0, 0), (1, 0))), Piece(w, ((0, 1),)))
            const = (Piece(1 - w, ((0, 1),)), Piece(1 - w, ((1, 1),)), Piece(ones, ((0, 0),)), Piece(ones, ((1, 0),)))
            self._parts = (_Part(self, real, "real"), _Part(self, const, "constant"))
        return self._parts

    def pair(self, s1: str, s2: str):
        return self._pair

    def pad(self, s: str):
        if s not in self._pads:
            self._pads[s] = super().pad(s)
        return self._pads[s]

    def single(self, s: str):
        return None  # every copy is paired


class _Part(TensorKernel):
    """One part of a :meth:`TensorKernel.linear_parts` sum: fixed pair pieces, same flags."""

    def __init__(self, whole: TensorKernel, pieces: tuple[Piece, ...], name: str):
        self.spaces, self.like, self._pads, self._sequence_pad = whole.spaces, whole.like, {}, False
        self._pair = pieces
        self.structure = whole.structure + (name,)
