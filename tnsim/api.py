r"""The similarity API: inner products, norms, cosines, matrices, comparisons and costs.

Every function accepts ``torch.nn.Module`` objects (compiled on the fly) or compiled
:class:`~tnsim.Network` objects.

``method``:

* ``"exact"`` — sum over orbits of leg pairings (see :mod:`tnsim.exact`); the Gaussian measure
  is exact for any depth, the tensor measure uses the full symmetrisation;
* ``"recursive"`` — layer-wise propagation (see :mod:`tnsim.recursive`): hierarchical
  symmetrisation / Gaussian closure, cost linear in depth;
* ``"auto"`` (default) — exact if its estimated cost is within :data:`EXACT_BUDGET`
  (:data:`EXACT_BUDGET_FLOPS` flops and :data:`EXACT_BUDGET_CONTRACTIONS` contractions),
  otherwise recursive. :func:`compare` reports which ran.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from .errors import ArgumentTypeError
from .frontends._compile import as_network
from .measures import as_measure
from .methods._choose import (
    EXACT_BUDGET_CONTRACTIONS,
    EXACT_BUDGET_FLOPS,
    Cost,
    check_norms,
    cosine,
    cost_from_stats,
    resolve_method,
)
from .methods._exact import exact
from .methods._matrix import matrix_cost
from .methods._prepare import Mode, Prepared, prepare
from .methods._recursive import recursive, self_chain
from .plan._contract import DRY_SAMPLES, Scaled, dry_run

__all__ = [
    "inner",
    "norm",
    "similarity",
    "compare",
    "cost",
    "Comparison",
    "Cost",
    "as_network",
    "EXACT_BUDGET_FLOPS",
    "EXACT_BUDGET_CONTRACTIONS",
]


@dataclass
class Comparison:
    """Result of :func:`compare`.

    ``value`` is the similarity (cosine); ``inner``, ``norm_a`` and ``norm_b`` the pieces it
    is made of (``inf`` if they overflow float64: the similarity is still exact).
    """

    value: float
    inner: float
    norm_a: float
    norm_b: float
    measure: str
    method: str
    cost: Cost

    def __float__(self) -> float:
        return self.value

    def __repr__(self) -> str:
        return (
            f"Comparison(similarity={self.value:.6f}, measure={self.measure!r}, "
            f"method={self.method!r}, contractions={self.cost.contractions}, "
            f"flops={self.cost.flops:.3g}, largest_intermediate={self.cost.largest_intermediate:.3g})"
        )


def _inputs(a, b, measure, mean, cov, centred, example_input) -> Prepared:
    """Both models compiled, checked and padded for the measure, once per call."""
    meas = as_measure(measure, mean, cov, centred)
    return prepare(as_network(a, example_input), as_network(b, example_input), meas)


def _scaled_inner(p: Prepared, method, outputs, stats=None) -> Scaled:
    if method == "exact":
        return exact(p, outputs, stats=stats)
    return recursive(p, outputs, stats=stats)[0]


def inner(
    a,
    b,
    *,
    measure="gaussian",
    method: str = "auto",
    mean=None,
    cov=None,
    outputs=None,
    centred: bool = False,
    example_input=None,
):
    r"""Inner product of two multilinear models.

    ``measure="gaussian"``: :math:`\mathbb E_{x\sim\mathcal N(\text{mean},\text{cov})}
    [f_a(x)\cdot f_b(x)]` (``centred=True``: the covariance of the outputs);
    ``measure="tensor"``: :math:`\langle\mathrm{Sym}\,T_a,\mathrm{Sym}\,T_b\rangle`.

    Returns a float, or a tensor of shape ``(N_a, N_b)`` when given stacked networks.

    Examples
    --------
    >>> import torch, tnsim
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> f = tnsim.nn.Bilinear(4, 6, 3)
    >>> round(tnsim.inner(f, f, measure="tensor") / tnsim.norm(f, measure="tensor") ** 2, 12)
    1.0
    """
    p = _inputs(a, b, measure, mean, cov, centred, example_input)
    value = _scaled_inner(p, resolve_method(method, p, outputs), outputs).value()
    return float(value) if value.dim() == 0 else value


def _self_inner(p: Prepared, which: str, method, outputs, stats=None) -> Scaled:
    """``<a, a>`` (``which="aa"``) or ``<b, b>`` per model (a vector for stacks)."""
    net = p.a if which == "aa" else p.b
    if method == "exact":
        return exact(p, outputs, which=which, mode=Mode("diag") if net.batch else Mode(), stats=stats)
    chain = self_chain(p if which == "aa" else replace(p, a=p.b, _kernels={}), outputs, stats=stats, for_pairs=False)
    if chain is not None:  # the model against itself only
        return chain.norm
    return recursive(p, outputs, stats=stats)[1 if which == "aa" else 2]


def norm(a, *, measure="gaussian", method: str = "auto", mean=None, cov=None, outputs=None,
         centred: bool = False, example_input=None):
    """``sqrt(inner(a, a))`` (a vector of norms for a stacked network)."""
    p = _inputs(a, a, measure, mean, cov, centred, example_input)
    value = _self_inner(p, "aa", resolve_method(method, p, outputs), outputs).value()
    value = torch.sqrt(torch.clamp(value, min=0))
    return float(value) if value.dim() == 0 else value


def _similarity_scaled(p: Prepared, method, outputs, stats=None):
    if method == "exact":
        ab = exact(p, outputs, stats=stats)
        return ab, _self_inner(p, "aa", method, outputs, stats), _self_inner(p, "bb", method, outputs, stats)
    return recursive(p, outputs, stats=stats)


def similarity(a, b, *, measure="gaussian", method: str = "auto", mean=None, cov=None,
               outputs=None, centred: bool = False, example_input=None):
    r"""Cosine similarity ``inner(a, b) / (norm(a) norm(b))``.

    Examples
    --------
    >>> import torch, tnsim
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> f = tnsim.nn.Bilinear(4, 6, 3)
    >>> g = tnsim.nn.Bilinear(4, 6, 3)
    >>> with torch.no_grad():  # swap left and right, permute hidden units: same function
    ...     perm = torch.randperm(6)
    ...     _ = g.left.weight.copy_(f.right.weight[perm])
    ...     _ = g.right.weight.copy_(f.left.weight[perm])
    ...     _ = g.down.weight.copy_(f.down.weight[:, perm])
    >>> round(tnsim.similarity(f, g, measure="tensor"), 6)  # float32 weights
    1.0
    """
    p = _inputs(a, b, measure, mean, cov, centred, example_input)
    ab, aa, bb = _similarity_scaled(p, resolve_method(method, p, outputs), outputs)
    check_norms(aa, bb, p.a.name, p.b.name, p.measure.describe())
    value = cosine(ab, aa, bb)
    return float(value) if value.dim() == 0 else value


def compare(a, b, *, measure="gaussian", method: str = "auto", mean=None, cov=None,
            outputs=None, centred: bool = False, example_input=None) -> Comparison:
    """Similarity together with the measure, the method that ran and the contraction cost."""
    p = _inputs(a, b, measure, mean, cov, centred, example_input)
    method = resolve_method(method, p, outputs)
    stats: dict = {}
    ab, aa, bb = _similarity_scaled(p, method, outputs, stats)
    check_norms(aa, bb, p.a.name, p.b.name, p.measure.describe())
    value = float(cosine(ab, aa, bb))
    meas = p.measure
    method = _ran(method, p)
    c = cost_from_stats(stats, method, meas.describe(), p.dtype, p.a.device)
    na, nb = float(aa.value()), float(bb.value())
    return Comparison(
        value=value,
        inner=float(ab.value()),
        norm_a=math.sqrt(max(na, 0.0)),
        norm_b=math.sqrt(max(nb, 0.0)),
        measure=meas.describe(),
        method=method,
        cost=c,
    )


def cost(a, b=None, *, measure="gaussian", method: str = "auto", mean=None, cov=None,
         outputs=None, centred: bool = False, example_input=None, samples: int | None = DRY_SAMPLES,
         **matrix_options) -> Cost:
    """Estimate what ``similarity(a, b, ...)`` costs, in seconds, without contracting anything.

    Every orbit of pairings is counted exactly (after the zero rules); per term pair a spread
    sample of at most :data:`tnsim.plan._contract.DRY_SAMPLES` orbits is planned and its flops
    and intermediates scaled by the count, so the answer comes in seconds even where the run
    takes hours; ``Cost.estimated`` says when the figures are such an estimate;
    ``samples=None`` plans every orbit instead (exact figures, at the price of a full planning
    pass: slow for large models). With lists of
    models, ``cost(models)`` / ``cost(models_a, models_b)`` costs
    :func:`tnsim.similarity_matrix` instead (same blocks, same options, e.g. ``block_size``,
    ``memory``). Structures not planned yet are priced with a greedy path that is not cached, so a
    later run still searches properly.

    Examples
    --------
    >>> import torch, tnsim
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> f, g = tnsim.nn.Bilinear(4, 6, 3), tnsim.nn.Bilinear(4, 6, 3)
    >>> c = tnsim.cost(f, g, measure="gaussian", method="exact")
    >>> c.contractions, c.fits
    (6, True)
    """
    if isinstance(a, (list, tuple)):
        return matrix_cost(a, b, measure=measure, method=method, mean=mean, cov=cov, outputs=outputs,
                           centred=centred, example_input=example_input, samples=samples,
                           **matrix_options)
    if matrix_options:
        raise ArgumentTypeError(f"unexpected options {sorted(matrix_options)} (they apply to lists of models)")
    if b is None:
        raise ArgumentTypeError("cost(a, b) compares two models; pass a list to cost a matrix")
    p = _inputs(a, b, measure, mean, cov, centred, example_input)
    method = resolve_method(method, p, outputs)
    stats: dict = {"paths": []}
    with dry_run(samples):
        _similarity_scaled(p, method, outputs, stats)
    return cost_from_stats(stats, _ran(method, p), p.measure.describe(), p.dtype, p.a.device)


def _ran(method: str, p: Prepared) -> str:
    """The method that actually ran: the recursive method of a measure without a closure
    (``closure=None``) runs the exact method (one layer) or refuses."""
    return "exact" if method == "recursive" and p.measure.closure is None else method
