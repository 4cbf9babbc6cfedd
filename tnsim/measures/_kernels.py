r"""Measures (what an inner product of two models means) and the kernels that realise them.

* :class:`TensorMeasure`: the Frobenius inner product of the fully symmetrised, padded,
  homogenised tensors, :math:`\langle \mathrm{Sym}\,T_a, \mathrm{Sym}\,T_b\rangle` — a pure
  weight-space quantity.
* :class:`GaussianMeasure`: :math:`\mathbb E_{x\sim\mathcal N(\mu,\Sigma)}[f_a(x)\cdot f_b(x)]`
  (raw second moment, the default) or, with ``centred=True``, the output covariance
  :math:`\mathbb E[(f_a-\mathbb E f_a)\cdot(f_b-\mathbb E f_b)]`. For sequences, positions are
  independent: :math:`\Sigma_{\text{seq}} = I_n\otimes\Sigma`.

A *kernel* supplies the tensors that join input copies in a doubled network: ``pair(s1, s2)``
(metric or covariance between a copy of side ``s1`` and one of ``s2``), ``single(s)`` (mean of
an unpaired copy) and ``pad(s)`` (the constant coordinate, for homogenising lower-degree
terms). Each returns :class:`~tnsim.contract.Piece` objects whose legs name the copy axes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..plan._contract import Piece
from ..errors import NonFiniteError, ShapeMismatchError

__all__ = ["TensorMeasure", "GaussianMeasure", "as_measure", "Space"]


@dataclass(frozen=True)
class Space:
    """Shape of one input copy (``(d,)`` or ``(n, d)``, padding included) and its padding."""

    shape: tuple[int, ...]
    padded: bool

    @property
    def d(self) -> int:
        return self.shape[-1] - int(self.padded)

    @property
    def sequence(self) -> bool:
        return len(self.shape) == 2


@dataclass(frozen=True)
class TensorMeasure:
    """Frobenius inner product of fully symmetrised (padded) tensors."""

    name = "tensor"

    def describe(self) -> str:
        return "tensor"


@dataclass(frozen=True, eq=False)
class GaussianMeasure:
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

    def __post_init__(self):
        for label, x in (("mean", self.mean), ("cov", self.cov)):
            if x is not None and not torch.isfinite(torch.as_tensor(x)).all():
                raise NonFiniteError(f"Gaussian {label} contains NaN or infinity")
        if self.cov is not None:
            c = torch.as_tensor(self.cov, dtype=torch.float64)
            if c.dim() != 2 or c.shape[0] != c.shape[1]:
                raise ShapeMismatchError(f"cov must be a square matrix, got shape {tuple(c.shape)}")
            if not torch.allclose(c, c.T, atol=1e-8 * (1 + c.abs().max())):
                raise ValueError("cov must be symmetric")
            if torch.linalg.eigvalsh(c).min() < -1e-8 * (1 + c.abs().max()):
                raise ValueError("cov must be positive semi-definite")
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

    def check(self, d: int) -> None:
        if self.mean is not None and torch.as_tensor(self.mean).shape[0] != d:
            raise ShapeMismatchError(
                f"mean has shape {tuple(torch.as_tensor(self.mean).shape)} but the models take "
                f"inputs with {d} features"
            )
        if self.cov is not None and torch.as_tensor(self.cov).shape[0] != d:
            raise ShapeMismatchError(
                f"cov has shape {tuple(torch.as_tensor(self.cov).shape)} but the models take "
                f"inputs with {d} features"
            )

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


def as_measure(measure, mean=None, cov=None, centred: bool = False):
    """Normalise ``measure`` (a name or an object) plus keyword options to a measure object."""
    if isinstance(measure, (TensorMeasure, GaussianMeasure)):
        if mean is not None or cov is not None or centred:
            raise ValueError("pass mean/cov/centred inside the measure object, not beside it")
        return measure
    if measure == "tensor":
        if mean is not None or cov is not None or centred:
            raise ValueError("mean, cov and centred apply to the Gaussian measure only")
        return TensorMeasure()
    if measure == "gaussian":
        return GaussianMeasure(mean, cov, centred)
    raise ValueError(f"unknown measure {measure!r}: use 'tensor' or 'gaussian'")


# --- helpers ---------------------------------------------------------------------------------


def selector(space: Space, like: torch.Tensor) -> torch.Tensor:
    """``S`` of shape ``(d, dim)`` picking the real features out of a (padded) copy."""
    s = torch.zeros(space.d, space.shape[-1], dtype=like.dtype, device=like.device)
    s[:, int(space.padded) :] = torch.eye(space.d, dtype=like.dtype, device=like.device)
    return s


def embedded(matrix: torch.Tensor, sa: Space, sb: Space) -> torch.Tensor:
    """:math:`S_a^\top M S_b` for a ``(d, d)`` feature matrix, without forming the products.

    The selectors only prepend a zero row / column for a padded frame, so this is a copy of
    ``matrix`` into the real block (``(d+1)^2`` work instead of ``d^3``).
    """
    pa, pb = int(sa.padded), int(sb.padded)
    out = matrix.new_zeros(sa.d + pa, sb.d + pb)
    out[pa:, pb:] = matrix
    return out


def e0(space: Space, like: torch.Tensor) -> torch.Tensor:
    v = torch.zeros(space.shape[-1], dtype=like.dtype, device=like.device)
    v[0] = 1
    return v


def _feature_pieces(
    matrix: torch.Tensor, sa: Space, sb: Space, like, identity: bool = False
) -> tuple[Piece, ...]:
    """Pieces for a feature matrix between two copies, times the identity on positions.

    ``identity`` declares that ``matrix`` is the identity (the doubled network then joins the
    two legs directly instead of contracting an identity matrix).
    """
    if not sa.sequence:
        return (Piece(matrix, (("p", 0), ("q", 0)), identity=identity),)
    n = sa.shape[0]
    eye = torch.eye(n, dtype=like.dtype, device=like.device)
    return (
        Piece(eye, (("p", 0), ("q", 0)), identity=True),
        Piece(matrix, (("p", 1), ("q", 1)), identity=identity),
    )


def pad_pieces(space: Space, like: torch.Tensor) -> tuple[Piece, ...]:
    """The constant coordinate of a padded copy (averaged over positions for sequences)."""
    if not space.padded:
        raise ShapeMismatchError("homogenising a term needs a padded input space")
    if not space.sequence:
        return (Piece(e0(space, like), (("p", 0),)),)
    n = space.shape[0]
    ones = torch.full((n,), 1.0 / n, dtype=like.dtype, device=like.device)
    return (Piece(ones, (("p", 0),)), Piece(e0(space, like), (("p", 1),)))


class TensorKernel:
    r"""Metric of the tensor measure: the identity on real features, plus the constant.

    For padded sequences the constant coordinate is shared by all positions, so the metric is
    :math:`P_{(t,i),(s,j)} = \delta_{ts}\,[i=j\ge 1] + [i=0][j=0]` (one constant for the whole
    input, making the padded tensor canonical).
    """

    kind = "tensor"
    partial = False
    decoupled = True  # constant meets constant, real features meet real features

    def __init__(self, space_a: Space, space_b: Space, like: torch.Tensor):
        if space_a.d != space_b.d or space_a.shape[:-1] != space_b.shape[:-1]:
            raise ShapeMismatchError(f"input spaces differ: {space_a.shape} vs {space_b.shape}")
        self.spaces = {"a": space_a, "b": space_b}
        self.like = like
        m = embedded(torch.eye(space_a.d, dtype=like.dtype, device=like.device), space_a, space_b)
        both = space_a.padded and space_b.padded
        if both and not space_a.sequence:
            m[0, 0] = 1
            self._pair = (Piece(m, (("p", 0), ("q", 0)), identity=True),)
        elif both:
            n = space_a.shape[0]
            from ..plan._paths import check_allocation

            check_allocation((n, m.shape[0], n, m.shape[1]), like.dtype.itemsize, "the padded sequence metric")
            eye = torch.eye(n, dtype=like.dtype, device=like.device)
            dense = torch.einsum("ts,ij->tisj", eye, m)
            dense[:, 0, :, 0] = 1
            self._pair = (Piece(dense, (("p", 0), ("p", 1), ("q", 0), ("q", 1))),)
        else:
            same = space_a.padded == space_b.padded
            self._pair = _feature_pieces(m, space_a, space_b, like, identity=same)
        self._pads = {s: None for s in "ab"}
        self.structure = ("tensor", space_a, space_b)

    def pair(self, s1: str, s2: str):
        if (s1, s2) != ("a", "b"):
            raise AssertionError("the tensor measure pairs copies of a with copies of b only")
        return self._pair

    def pad(self, s: str):
        if self._pads[s] is None:
            self._pads[s] = pad_pieces(self.spaces[s], self.like)
        return self._pads[s]

    def single(self, s: str):
        raise AssertionError("the tensor measure has no unpaired copies")


class GaussianKernel:
    """Covariance and mean of :math:`\\tilde x` for the Gaussian measure in each side's frame."""

    kind = "gaussian"
    decoupled = True  # the covariance of the constant coordinate is zero

    def __init__(self, measure: GaussianMeasure, space_a: Space, space_b: Space, like):
        if space_a.d != space_b.d or space_a.shape[:-1] != space_b.shape[:-1]:
            raise ShapeMismatchError(f"input spaces differ: {space_a.shape} vs {space_b.shape}")
        d = space_a.d
        measure.check(d)
        self.spaces = {"a": space_a, "b": space_b}
        self.like = like
        mean, cov = measure.dense(d, like)
        self.partial = (not measure.zero_mean) or space_a.padded or space_b.padded
        self.real_mean_zero = measure.zero_mean  # an unpaired copy sees e_0 only
        self._pairs = {}
        for s1, s2 in (("a", "a"), ("a", "b"), ("b", "b")):
            sa, sb = self.spaces[s1], self.spaces[s2]
            m = embedded(cov, sa, sb)
            unit = measure.cov is None and not sa.padded and not sb.padded
            self._pairs[(s1, s2)] = _feature_pieces(m, sa, sb, like, identity=unit)
        self._singles = {}
        for s in "ab":
            sp = self.spaces[s]
            v = mean.new_zeros(sp.shape[-1])
            v[int(sp.padded) :] = mean
            if sp.padded:
                v[0] = 1
            if sp.sequence:
                ones = torch.ones(sp.shape[0], dtype=like.dtype, device=like.device)
                self._singles[s] = (Piece(ones, (("p", 0),)), Piece(v, (("p", 1),)))
            else:
                self._singles[s] = (Piece(v, (("p", 0),)),)
        # identity covariances are joined as plain legs: part of the plan's structure
        self.structure = ("gaussian", space_a, space_b, self.partial, measure.cov is None)

    def pair(self, s1: str, s2: str):
        return self._pairs[(s1, s2)]

    def single(self, s: str):
        return self._singles[s]

    def pad(self, s: str):
        return pad_pieces(self.spaces[s], self.like)
