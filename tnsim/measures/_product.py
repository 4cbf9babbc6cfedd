r"""Product measures: inputs with independent coordinates, :math:`x_i \sim P_i` independently.

:math:`\mathbb E[f_a(x)\cdot f_b(x)]` (or, ``centred``, the output covariance) is the cumulant
expansion over set partitions of the input copies (:mod:`._cumulants`): a block of :math:`r`
copies is the hyperedge :math:`\delta_{i_1\dots i_r}\,\kappa_r(x_i)`, every copy reading the
same coordinate, weighted by that coordinate's :math:`r`-th cumulant. For sequences
(inputs ``(n, d)``) positions are independent too: the block's copies also share a position.
The Gaussian is the case :math:`\kappa_{r\ge 3} = 0`.

The marginal is a univariate :mod:`torch.distributions` object (i.i.d. coordinates, or one
per coordinate through its batch shape), a finite support with probabilities, or the
per-coordinate empirical distribution of samples (:meth:`ProductMeasure.fit`).
"""

from __future__ import annotations

import math

import torch
from torch import distributions as D

from ..errors import InvalidArgumentError, NonFiniteError, ShapeMismatchError
from ..results import tensor_digest
from ._base import Measure, Piece, Space
from ._cumulants import CumulantKernel, checked_probs, cumulants_from_moments

__all__ = ["ProductMeasure", "ProductKernel"]

#: moments computed at least to this order at once (a two-layer bilinear pair needs 8)
MIN_ORDER = 8
#: Gauss-Legendre nodes on the quantile scale for marginals without closed-form moments
QUANTILE_NODES = 256

_F64 = {"dtype": torch.float64}


def _t(x) -> torch.Tensor:
    """A float64 CPU snapshot (later in-place edits of ``x`` do not reach the measure)."""
    return torch.as_tensor(x).detach().to("cpu", torch.float64, copy=True)


def _moments_finite(values: torch.Tensor, probs: torch.Tensor, order: int) -> torch.Tensor:
    r""":math:`m_n = \sum_k p_k v_k^n`, support on the last axis; shape ``(order+1, ...)``."""
    powers = torch.stack([values**n for n in range(order + 1)])
    return (powers * probs).sum(-1)


def _rising(a: torch.Tensor, order: int) -> torch.Tensor:
    """Rising factorials :math:`a^{(n)} = a(a+1)\\cdots(a+n-1)`, ``n = 0..order``."""
    out = [torch.ones_like(a)]
    for n in range(order):
        out.append(out[-1] * (a + n))
    return torch.stack(out)


def _closed_form(dist: D.Distribution, order: int) -> tuple[str, torch.Tensor] | None:
    """``("moments" | "cumulants", tensor (order+1, *batch))`` for families with known
    moments, exactly; ``None`` for other families."""
    n = torch.arange(order + 1, **_F64)
    shape = (order + 1,) + tuple(dist.batch_shape)

    def col(x):
        return _t(x).expand(dist.batch_shape)

    if isinstance(dist, D.Normal):  # kappa_1 = mu, kappa_2 = sigma^2, the rest zero
        k = torch.zeros(shape, **_F64)
        k[1] = col(dist.loc)
        if order >= 2:
            k[2] = col(dist.scale) ** 2
        return "cumulants", k
    if isinstance(dist, D.Uniform):  # m_n = (b^{n+1} - a^{n+1}) / ((n+1)(b-a))
        a, b = col(dist.low), col(dist.high)
        m = torch.stack([(b ** (j + 1) - a ** (j + 1)) / ((j + 1) * (b - a)) for j in range(order + 1)])
        return "moments", m
    if isinstance(dist, D.Laplace):  # E[(x-loc)^k] = k! b^k for even k
        loc, b = col(dist.loc), col(dist.scale)
        central = [math.factorial(k) * b**k if k % 2 == 0 else torch.zeros_like(b) for k in range(order + 1)]
        m = torch.stack([
            sum(math.comb(j, k) * loc ** (j - k) * central[k] for k in range(j + 1)) for j in range(order + 1)
        ])
        return "moments", m
    if isinstance(dist, D.Gamma):  # includes Chi2; m_n = alpha^(n) / beta^n
        a, rate = col(dist.concentration), col(dist.rate)
        return "moments", _rising(a, order) / rate ** n.reshape((-1,) + (1,) * a.dim())
    if isinstance(dist, D.Exponential):  # m_n = n! / lambda^n
        rate = col(dist.rate)
        fact = torch.tensor([math.factorial(j) for j in range(order + 1)], **_F64)
        return "moments", fact.reshape((-1,) + (1,) * rate.dim()) / rate ** n.reshape((-1,) + (1,) * rate.dim())
    if isinstance(dist, D.Beta):  # m_n = a^(n) / (a+b)^(n)
        a, b = col(dist.concentration1), col(dist.concentration0)
        return "moments", _rising(a, order) / _rising(a + b, order)
    if isinstance(dist, D.Poisson):  # every cumulant is the rate
        k = col(dist.rate).expand(shape).clone()
        k[0] = 0
        return "cumulants", k
    return None


class _Source:
    """Raw moments (or cumulants) of the marginals, computed to the order asked for."""

    def __init__(self, kind: str, shape: tuple[int, ...], exact: bool, cumulants, max_block=None):
        self.kind, self.shape, self.exact = kind, tuple(shape), exact
        self._fn, self.max_block = cumulants, max_block
        self._cache: torch.Tensor | None = None

    def cumulants(self, order: int) -> torch.Tensor:
        """Cumulants ``0..order`` of every coordinate, float64 on the CPU, shape
        ``(order+1, *shape)``."""
        if self._cache is None or self._cache.shape[0] <= order:
            k = self._fn(max(order, MIN_ORDER))
            if not torch.isfinite(k).all():
                raise NonFiniteError(f"the marginal's cumulants up to order {k.shape[0] - 1} are not finite")
            self._cache = k
        return self._cache[: order + 1]


def _finite_source(values, probs, kind: str) -> _Source:
    v = _t(values)
    if v.dim() == 0 or v.shape[-1] == 0:
        raise ShapeMismatchError(f"values must have a support axis (last), got shape {tuple(v.shape)}")
    p = torch.full_like(v, 1.0 / v.shape[-1]) if probs is None else _t(probs)
    if p.shape != v.shape:
        try:
            v, p = torch.broadcast_tensors(v, p)
        except RuntimeError:
            raise ShapeMismatchError(
                f"probs has shape {tuple(p.shape)}, values has shape {tuple(v.shape)}"
            ) from None
    if not torch.isfinite(v).all():
        raise NonFiniteError("values contain NaN or infinity")
    p = checked_probs(p, "the support axis")
    return _Source(kind, v.shape[:-1], True,
                   lambda order: cumulants_from_moments(_moments_finite(v, p, order)))


def _distribution_source(dist: D.Distribution) -> _Source:
    if tuple(dist.event_shape) != ():
        raise ShapeMismatchError(
            f"the marginal must be univariate (event shape ()), got event shape {tuple(dist.event_shape)}"
        )
    name = type(dist).__name__
    probe = _closed_form(dist, 2)
    if probe is not None:
        def fn(order):
            kind, x = _closed_form(dist, order)
            return x if kind == "cumulants" else cumulants_from_moments(x)

        return _Source(name, dist.batch_shape, True, fn, 2 if isinstance(dist, D.Normal) else None)
    if dist.has_enumerate_support:  # Bernoulli, Binomial, Categorical, ...: exact enumeration
        support = _t(dist.enumerate_support(expand=True))  # (K, *batch)
        probs = torch.exp(_t(dist.log_prob(dist.enumerate_support(expand=True))))
        src = _finite_source(torch.movedim(support, 0, -1), torch.movedim(probs, 0, -1), name)
        return src
    try:  # numerical: Gauss-Legendre on the quantile scale, m_n = int_0^1 icdf(u)^n du
        nodes, weights = _legendre(QUANTILE_NODES)
        u = (nodes + 1) / 2
        q = _t(dist.icdf(u.reshape((-1,) + (1,) * len(dist.batch_shape)).to(dist.mean.dtype)
                         .expand((len(u),) + tuple(dist.batch_shape))))
    except NotImplementedError:
        raise InvalidArgumentError(
            f"no moments for torch.distributions.{name}: it has no closed form here, no finite "
            "support and no icdf; pass values=/probs= or use ProductMeasure.fit(samples)"
        ) from None
    w = (weights / 2).reshape((-1,) + (1,) * len(dist.batch_shape))
    return _Source(name + "~quadrature", dist.batch_shape, False,
                   lambda order: cumulants_from_moments(_moments_finite(torch.movedim(q, 0, -1),
                                                                        torch.movedim(w.expand_as(q), 0, -1), order)))


def _legendre(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Legendre nodes and weights on [-1, 1] (Golub-Welsch)."""
    k = torch.arange(1, n, **_F64)
    beta = k / torch.sqrt(4 * k**2 - 1)
    nodes, vecs = torch.linalg.eigh(torch.diag(beta, 1) + torch.diag(beta, -1))
    return nodes, 2 * vecs[0] ** 2


class ProductMeasure(Measure):
    r"""Expectation over inputs with independent coordinates.

    .. math::
        \mathbb E\Big[\prod_c x_{i_c}\Big] = \sum_{\pi}\prod_{B\in\pi}
            \kappa_{|B|}(x_i)\,[\text{all copies of } B \text{ read coordinate } i]

    summed over set partitions :math:`\pi` of the copies (one doubled network per orbit of
    the terms' symmetries). Sequences ``(n, d)`` have independent positions as well.

    Parameters
    ----------
    marginal
        A univariate :mod:`torch.distributions` distribution: batch shape ``()`` (i.i.d.
        coordinates), ``(d,)`` (one per feature) or ``(n, d)`` (one per position and feature).
        Moments are exact for ``Normal``, ``Uniform``, ``Laplace``, ``Gamma`` (and
        ``Chi2``), ``Exponential``, ``Beta`` and ``Poisson`` (closed forms), and for any
        distribution with a finite support (``Bernoulli``, ``Binomial``, ``Categorical``,
        ...: enumerated); other distributions with an ``icdf`` get moments by
        Gauss-Legendre quadrature on the quantile scale, :math:`m_n = \int_0^1
        F^{-1}(u)^n\,du` (approximate; :meth:`describe` says ``~quadrature``).
    values, probs
        Instead of ``marginal``: a finite support ``values`` (last axis; leading axes as for
        the batch shape) with probabilities ``probs`` (default uniform), e.g. Rademacher
        ``values=torch.tensor([-1., 1.])``.
    centred
        Compare :math:`f - \mathbb E f` (the output covariance).

    Notes
    -----
    Cumulants come from raw moments by
    :math:`\kappa_n = m_n - \sum_{k=1}^{n-1}\binom{n-1}{k-1}\kappa_k m_{n-k}`, computed to the
    order a comparison needs (at least :data:`MIN_ORDER`). ``values``, ``probs`` and samples are
    copied at construction (editing them later changes nothing). The recursive method has no closure
    for this measure: it is exact for one-layer models and refused beyond.
    """

    name = "product"
    closure = None

    def __init__(self, marginal: D.Distribution | None = None, *, values=None, probs=None,
                 centred: bool = False):
        if (marginal is None) == (values is None):
            raise InvalidArgumentError("pass either a marginal distribution or values= (with probs=)")
        if marginal is not None and probs is not None:
            raise InvalidArgumentError("probs= goes with values=, not with a marginal distribution")
        if marginal is not None:
            if not isinstance(marginal, D.Distribution):
                raise InvalidArgumentError(
                    f"marginal must be a torch.distributions.Distribution, got {type(marginal).__name__}"
                )
            source = _distribution_source(marginal)
            params = {k: tensor_digest(_t(v)) for k, v in sorted(vars(marginal).items())
                      if isinstance(v, torch.Tensor)}
            described = {"marginal": type(marginal).__name__, "params": params}
        else:
            source = _finite_source(values, probs, "values")
            described = {"values": tensor_digest(_t(values)),
                         "probs": None if probs is None else tensor_digest(_t(probs))}
        self._init(source, centred, described)

    def _init(self, source: _Source, centred: bool, described: dict) -> None:
        """``described``: what :meth:`header` records besides the name (digests, taken now)."""
        self.source, self.centred, self._described = source, bool(centred), described

    @classmethod
    def fit(cls, samples: torch.Tensor, *, centred: bool = False) -> "ProductMeasure":
        r"""The product of the per-coordinate empirical distributions of ``samples``.

        ``samples`` has shape ``(N, d)`` (or ``(N, n, d)``: one marginal per position and
        feature). Its raw moments :math:`m_n = \frac1N\sum_s x_s^n` are computed lazily to the
        order a comparison needs. The coordinates' dependence in the data is ignored.
        """
        x = _t(samples)
        if x.dim() < 2 or x.shape[0] < 1:
            raise ShapeMismatchError(f"samples must have shape (N, d) or (N, n, d), got {tuple(x.shape)}")
        self = cls.__new__(cls)
        self._init(_finite_source(torch.movedim(x, 0, -1), None, "fit"), centred, {"samples": tensor_digest(x)})
        return self

    @property
    def exact(self) -> bool:
        """Whether the marginal's moments are exact (not quadrature)."""
        return self.source.exact

    def cumulants(self, order: int) -> torch.Tensor:
        """Cumulants ``0..order`` per coordinate (float64, shape ``(order+1, *marginal shape)``)."""
        return self.source.cumulants(order)

    def check(self, space: Space) -> None:
        shape = self.source.shape
        real = tuple(space.shape[:-1]) + (space.d,)
        if shape and real[-len(shape):] != shape:
            raise ShapeMismatchError(
                f"the marginals have shape {shape} but the models take inputs of shape {real}"
            )

    def kernel(self, space_a: Space, space_b: Space, like: torch.Tensor) -> "ProductKernel":
        return ProductKernel(self, space_a, space_b, like)

    def tensors(self) -> tuple:
        return ()  # the values, probabilities and samples are snapshots taken at construction

    def key(self) -> tuple:
        return ("product", self.source.kind, self.source.shape, self.centred)

    def header(self) -> dict:
        return {"measure": self.describe(), **self._described, "centred": self.centred}

    def describe(self) -> str:
        opts = [self.source.kind] + (["centred"] if self.centred else [])
        return f"product({', '.join(opts)})"


class ProductKernel(CumulantKernel):
    r"""Cumulant hyperedges of a product measure between two frames.

    A block of :math:`r \ge 2` copies joins their feature legs into one index carrying the
    vector :math:`\kappa_r` (zero on a padded frame's constant coordinate); where the block
    mixes a padded and an unpadded frame, the two groups meet through
    :math:`S^\top \mathrm{diag}(\kappa_r)`. Nothing of size :math:`d^r` is formed.
    """

    def __init__(self, measure: ProductMeasure, space_a: Space, space_b: Space, like):
        super().__init__(space_a, space_b, like)
        measure.check(space_a)
        self.measure = measure
        self.per_position = len(measure.source.shape) == 2
        self.max_block = measure.source.max_block
        k1 = measure.cumulants(1)[1]
        self.real_mean_zero = not bool(k1.any())
        self._zero: dict[int, bool] = {}
        probe = tuple(r for r in range(2, MIN_ORDER + 1) if self.zero_size(r))
        self.structure = ("product", space_a, space_b, self.per_position, self.max_block,
                          self.real_mean_zero, probe)

    def zero_size(self, r: int) -> bool:
        if self.max_block is not None and r > self.max_block:
            return True
        if r not in self._zero:
            self._zero[r] = not bool(self.measure.cumulants(r)[r].any())
        return self._zero[r]

    def _kappa(self, r: int) -> torch.Tensor:
        """:math:`\\kappa_r` per real coordinate: ``(d,)`` or ``(n, d)``."""
        sp = self.spaces["a"]
        shape = (sp.shape[0], sp.d) if self.per_position else (sp.d,)
        return self.measure.cumulants(r)[r].expand(shape).to(self.like)

    def mean(self) -> torch.Tensor:
        return self._kappa(1)

    def features(self, spaces: tuple[Space, ...], fa: int) -> tuple[Piece, ...]:
        kappa = self._kappa(len(spaces))
        pre = ((0, 0),) if self.per_position else ()
        groups = [[j for j, s in enumerate(spaces) if s.padded], [j for j, s in enumerate(spaces) if not s.padded]]
        pieces, reps = [], []
        for g in groups:
            if not g:
                continue
            dim = spaces[g[0]].shape[-1]
            eye = torch.eye(dim, dtype=self.like.dtype, device=self.like.device)
            pieces += [Piece(eye, ((g[0], fa), (j, fa)), identity=True) for j in g[1:]]
            reps.append(g[0])
        if len(reps) == 1:
            pad = int(spaces[reps[0]].padded)
            v = kappa.new_zeros(kappa.shape[:-1] + (kappa.shape[-1] + pad,))
            v[..., pad:] = kappa
            pieces.append(Piece(v, pre + ((reps[0], fa),)))
        else:  # padded group first: S_p^T diag(kappa) S_u
            p, u = reps
            m = kappa.new_zeros(kappa.shape[:-1] + (kappa.shape[-1] + 1, kappa.shape[-1]))
            m[..., 1:, :] = torch.diag_embed(kappa)
            pieces.append(Piece(m, pre + ((p, fa), (u, fa))))
        return tuple(pieces)
