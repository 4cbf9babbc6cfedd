r"""The Gaussian measure: :math:`\mathbb E_{x\sim\mathcal N(\mu,\Sigma)}[f_a(x)\cdot f_b(x)]`.

The raw second moment by default, or with ``centred=True`` the output covariance
:math:`\mathbb E[(f_a-\mathbb E f_a)\cdot(f_b-\mathbb E f_b)]`. For sequences, positions are
independent: :math:`\Sigma_{\text{seq}} = I_n\otimes\Sigma`. By Isserlis' theorem the
expectation is a sum over (partial) Wick matchings of the input copies: each pair gets
:math:`\Sigma`, each unpaired copy the mean :math:`(1, \mu)` in padded form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..results import tensor_digest
from ..errors import InvalidArgumentError, NonFiniteError, ShapeMismatchError
from ._base import Kernel, Measure, Piece, Space, diagonal_pieces, embedded, feature_pieces, real_weights

__all__ = ["GaussianMeasure", "GaussianKernel"]


@dataclass(frozen=True, eq=False)
class GaussianMeasure(Measure):
    r"""Expectation over :math:`x \sim \mathcal N(\text{mean}, \text{cov})` (default N(0, I)).

    Parameters
    ----------
    mean
        Mean vector of shape ``(d,)`` or ``None`` for zero.
    cov
        Covariance of shape ``(d, d)`` (symmetric positive semi-definite) or ``None`` for I.
    centred
        Use the output covariance instead of the raw second moment.
    """

    mean: torch.Tensor | None = None
    cov: torch.Tensor | None = None
    centred: bool = False
    name = "gaussian"
    closure = "gaussian"

    def __post_init__(self):
        for label, x in (("mean", self.mean), ("cov", self.cov)):
            if x is not None and not torch.isfinite(torch.as_tensor(x)).all():
                raise NonFiniteError(f"Gaussian {label} contains NaN or infinity")
        if self.cov is not None:
            c = torch.as_tensor(self.cov, dtype=torch.float64)
            if c.dim() != 2 or c.shape[0] != c.shape[1]:
                raise ShapeMismatchError(f"cov must be a square matrix, got shape {tuple(c.shape)}")
            if not torch.allclose(c, c.T, atol=1e-8 * (1 + c.abs().max())):
                raise InvalidArgumentError("cov must be symmetric")
            if torch.linalg.eigvalsh(c).min() < -1e-8 * (1 + c.abs().max()):
                raise InvalidArgumentError("cov must be positive semi-definite")
        if self.mean is not None and torch.as_tensor(self.mean).dim() != 1:
            raise ShapeMismatchError(
                f"mean must be a vector, got shape {tuple(torch.as_tensor(self.mean).shape)}"
            )
        # decided once here (a host sync for a GPU mean), not in every contraction
        zero = self.mean is None or not bool(torch.as_tensor(self.mean).any())
        object.__setattr__(self, "_zero_mean", zero)
        object.__setattr__(self, "_dense", {})

    @property
    def zero_mean(self) -> bool:
        return self._zero_mean

    def dense(self, d: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, cov)`` as tensors of ``like``'s dtype and device (zeros / identity when
        not given), converted once per dtype and device rather than in every contraction."""
        versions = tuple(x._version if isinstance(x, torch.Tensor) else None for x in (self.mean, self.cov))
        key = (d, like.dtype, like.device, versions)
        hit = self._dense.get(key)
        if hit is None:
            opts = dict(dtype=like.dtype, device=like.device)
            mean = torch.zeros(d, **opts) if self.mean is None else torch.as_tensor(self.mean).to(**opts)
            cov = torch.eye(d, **opts) if self.cov is None else torch.as_tensor(self.cov).to(**opts)
            hit = self._dense[key] = (mean, cov)
        return hit

    def check(self, space: Space) -> None:
        d = space.d
        for label, x in (("mean", self.mean), ("cov", self.cov)):
            if x is not None and torch.as_tensor(x).shape[0] != d:
                raise ShapeMismatchError(
                    f"{label} has shape {tuple(torch.as_tensor(x).shape)} but the models take "
                    f"inputs with {d} features"
                )

    def kernel(self, space_a: Space, space_b: Space, like: torch.Tensor) -> "GaussianKernel":
        return GaussianKernel(self, space_a, space_b, like)

    def tensors(self) -> tuple:
        return (self.mean, self.cov)

    def key(self) -> tuple:
        return ("gaussian", self.mean is None, self.cov is None, self.centred)

    def header(self) -> dict:
        return {"measure": self.describe(), "mean": tensor_digest(self.mean),
                "cov": tensor_digest(self.cov), "centred": self.centred}

    def describe(self) -> str:
        opts = [
            label
            for label, on in (
                ("mean", self.mean is not None),
                ("cov", self.cov is not None),
                ("centred", self.centred),
            )
            if on
        ]
        return "gaussian" + (f"({', '.join(opts)})" if opts else "")


class GaussianKernel(Kernel):
    """Covariance and mean of :math:`\\tilde x` for the Gaussian measure in each side's frame."""

    scheme = "matchings"
    decoupled = True  # the covariance of the constant coordinate is zero

    def __init__(self, measure: GaussianMeasure, space_a: Space, space_b: Space, like):
        if space_a.d != space_b.d or space_a.shape[:-1] != space_b.shape[:-1]:
            raise ShapeMismatchError(f"input spaces differ: {space_a.shape} vs {space_b.shape}")
        measure.check(space_a)
        self.spaces = {"a": space_a, "b": space_b}
        self.like = like
        mean, cov = measure.dense(space_a.d, like)
        self.partial = (not measure.zero_mean) or space_a.padded or space_b.padded
        self.real_mean_zero = measure.zero_mean  # an unpaired copy sees e_0 only
        self._pairs = {}
        for s1, s2 in (("a", "a"), ("a", "b"), ("b", "b")):
            sa, sb = self.spaces[s1], self.spaces[s2]
            if measure.cov is None and sa.padded == sb.padded:  # a unit covariance: join legs
                w = real_weights(sa, like) if sa.padded else None
                self._pairs[(s1, s2)] = diagonal_pieces(w, sa, sb, like)
            else:
                self._pairs[(s1, s2)] = feature_pieces(embedded(cov, sa, sb), sa, sb, like)
        self._pairs[("b", "a")] = None  # copies are ordered a before b
        self._singles = {}
        for s in "ab":
            sp = self.spaces[s]
            v = mean.new_zeros(sp.shape[-1])
            v[int(sp.padded) :] = mean
            if sp.padded:
                v[0] = 1
            if sp.sequence:
                ones = torch.ones(sp.shape[0], dtype=like.dtype, device=like.device)
                self._singles[s] = (Piece(ones, ((0, 0),)), Piece(v, ((0, 1),)))
            else:
                self._singles[s] = (Piece(v, ((0, 0),)),)
        # identity covariances are joined as plain legs: part of the plan's structure
        self.structure = ("gaussian", space_a, space_b, self.partial, measure.cov is None)

    def pair(self, s1: str, s2: str):
        return self._pairs[(s1, s2)]

    def single(self, s: str):
        return self._singles[s]
