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
from dataclasses import dataclass, field

import torch

from .plan._contract import Scaled
from .errors import UnaffordableError
from .methods._exact import Mode, choose_variants, exact, make_kernel, output_maps, prepare
from .measures._kernels import TensorMeasure, as_measure
from .ir._network import Network
from .methods._recursive import recursive

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

#: ``method="auto"`` runs the exact method when its estimated flops are at most this ...
EXACT_BUDGET_FLOPS = 2e10
#: ... and one inner product needs at most this many orbit contractions. Each costs Python
#: overhead (milliseconds) and, on first use, a path search (tens of milliseconds), so the
#: budget keeps a cold ``similarity`` (three inner products sharing plans) within about a minute.
EXACT_BUDGET_CONTRACTIONS = 500


def as_network(x, example_input=None) -> Network:
    """A :class:`Network` from a module (compiled) or a network (returned as is)."""
    from .frontends._compile import compile as _compile

    net = x if isinstance(x, Network) else _compile(x, example_input)
    if net.out_shape == ():  # a scalar-valued model compares as a function with one output
        from .ir.algebra import reshape

        net = reshape(net, (1,))
    return net


@dataclass
class Cost:
    r"""What a comparison costs, computed without contracting anything.

    Attributes
    ----------
    flops
        Multiply-adds over all contractions (cotengra's count: for each pairwise step the
        product of the sizes of all its indices; a floating point operation count is about
        twice this). Includes the overhead of any slicing.
    largest_intermediate
        Elements of the largest tensor any contraction creates (as it would run).
    largest_intermediate_bytes
        The same in bytes for the models' dtype.
    width
        :math:`\log_2` of ``largest_intermediate`` (cotengra's contraction width).
    contractions
        Number of doubled networks contracted, after symmetry deduplication (one per orbit of
        pairings per term pair, plus the norms; for a matrix, summed over blocks).
    method, measure
        What was costed.
    optimizer
        How the paths were found (cotengra's exhaustive ``optimal`` search up to
        :data:`tnsim.paths.OPTIMAL_CUTOFF` tensors, random-greedy above), and whether the disk
        cache (:func:`tnsim.cache_dir`) makes them free next time.
    paths
        The contraction path of each contraction (pairs of positions, cotengra's format).
    memory_limit
        The limit in force (bytes, :func:`tnsim.set_memory_limit`).
    sliced
        Contractions that exceed the limit and would be sliced to fit (their flops and
        intermediates above are the sliced ones).
    fits
        ``False`` if some contraction exceeds the limit even after slicing: running it raises
        :class:`~tnsim.errors.UnaffordableError`.
    unsliced_largest_intermediate
        Elements of the largest intermediate without slicing.
    blocks, block_size
        For a matrix (:func:`cost` of lists of models): blocks computed and models per chunk.
    """

    flops: float
    largest_intermediate: float
    largest_intermediate_bytes: float
    width: float
    contractions: int
    method: str
    measure: str
    optimizer: str = ""
    paths: list = field(default_factory=list, repr=False)
    memory_limit: float | None = None
    sliced: int = 0
    fits: bool = True
    unsliced_largest_intermediate: float = 0.0
    blocks: int = 1
    block_size: int | None = None

    def __repr__(self) -> str:
        mib = self.largest_intermediate_bytes / 2**20
        parts = [
            f"flops={self.flops:.3g}",
            f"largest_intermediate={self.largest_intermediate:.3g} ({mib:.3g} MiB)",
            f"width={self.width:.1f}",
            f"contractions={self.contractions}",
            f"method={self.method!r}",
            f"measure={self.measure!r}",
        ]
        if self.blocks != 1 or self.block_size is not None:
            parts.append(f"blocks={self.blocks}, block_size={self.block_size}")
        if self.sliced:
            parts.append(f"sliced={self.sliced}")
        if not self.fits:
            parts.append("fits=False")
        return "Cost(" + ", ".join(parts) + ")"


def _cost_from_stats(stats: dict, method: str, measure: str, dtype: torch.dtype, **extra) -> Cost:
    from .plan import _paths as paths

    itemsize = dtype.itemsize
    largest = stats.get("max_size", 0.0)
    opts = sorted(stats.get("optimizers", ()))
    return Cost(
        flops=stats.get("flops", 0.0),
        largest_intermediate=largest,
        largest_intermediate_bytes=largest * itemsize,
        width=math.log2(largest) if largest > 0 else 0.0,
        contractions=stats.get("contractions", 0),
        method=method,
        measure=measure,
        optimizer="; ".join(opts) + f"; paths cached on disk under {paths.cache_dir()}",
        paths=stats.get("paths", []),
        memory_limit=paths.memory_limit(),
        sliced=stats.get("sliced", 0),
        fits=not stats.get("unaffordable", 0),
        unsliced_largest_intermediate=stats.get("unsliced_max_size", 0.0),
        **extra,
    )


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


def _estimate_exact(net_a: Network, net_b: Network, measure, outputs) -> tuple[int, float]:
    net_a, net_b, dtype = prepare(net_a, net_b, measure)
    like = torch.empty((), dtype=dtype, device=net_a.device)
    kernel = make_kernel(measure, net_a, net_b, like)
    maps = (output_maps(net_a, outputs, like), output_maps(net_b, outputs, like))
    kind = "tensor" if isinstance(measure, TensorMeasure) else "gaussian"
    k = max(net_a.degree, net_b.degree)
    virtual = (lambda t: k - t.degree) if kind == "tensor" else (lambda t: 0)
    try:
        _, _, n, flops = choose_variants(net_a, net_b, kind, kernel, virtual, maps)
    except UnaffordableError:
        return 10**18, float("inf")
    return n, flops


def _resolve_method(method: str, net_a: Network, net_b: Network, measure, outputs) -> str:
    if method in ("exact", "recursive"):
        return method
    if method != "auto":
        raise ValueError(f"unknown method {method!r}: use 'auto', 'exact' or 'recursive'")
    n, flops = _estimate_exact(net_a, net_b, measure, outputs)
    if n <= EXACT_BUDGET_CONTRACTIONS and flops <= EXACT_BUDGET_FLOPS:
        return "exact"
    from .methods._recursive import canonical_chain

    if len(canonical_chain(net_a)) != len(canonical_chain(net_b)):
        raise UnaffordableError(
            f"exact comparison of {net_a.name} and {net_b.name} is estimated at {n} contractions "
            f"and {flops:.3g} flops (budget {EXACT_BUDGET_CONTRACTIONS} / {EXACT_BUDGET_FLOPS:.3g}), "
            "and the recursive method needs equal numbers of layers; call with method='exact' "
            "to run it anyway"
        )
    return "recursive"


def _inputs(a, b, measure, mean, cov, centred, example_input):
    meas = as_measure(measure, mean, cov, centred)
    return as_network(a, example_input), as_network(b, example_input), meas


def _scaled_inner(net_a, net_b, meas, method, outputs, stats=None, mode=Mode()) -> Scaled:
    if method == "exact":
        return exact(net_a, net_b, meas, outputs, mode=mode, stats=stats)
    ab, _, _ = recursive(net_a, net_b, meas, outputs, stats=stats)
    return ab


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
    net_a, net_b, meas = _inputs(a, b, measure, mean, cov, centred, example_input)
    method = _resolve_method(method, net_a, net_b, meas, outputs)
    value = _scaled_inner(net_a, net_b, meas, method, outputs).value()
    return float(value) if value.dim() == 0 else value


def _self_inner(net, meas, method, outputs, stats=None) -> Scaled:
    """``<a, a>`` per model (a vector for stacks)."""
    if method == "exact":
        mode = Mode("diag") if net.batch else Mode()
        return exact(net, net, meas, outputs, mode=mode, stats=stats)
    _, aa, _ = recursive(net, net, meas, outputs, stats=stats)
    return aa


def norm(a, *, measure="gaussian", method: str = "auto", mean=None, cov=None, outputs=None,
         centred: bool = False, example_input=None):
    """``sqrt(inner(a, a))`` (a vector of norms for a stacked network)."""
    net, _, meas = _inputs(a, a, measure, mean, cov, centred, example_input)
    method = _resolve_method(method, net, net, meas, outputs)
    value = torch.sqrt(torch.clamp(_self_inner(net, meas, method, outputs).value(), min=0))
    return float(value) if value.dim() == 0 else value


def _cosine(ab: Scaled, aa: Scaled, bb: Scaled) -> torch.Tensor:
    """``ab / sqrt(aa bb)`` computed from mantissas and logs (never overflows).

    ``ab`` has shape ``()``, ``(N_a,)``, ``(N_b,)`` or ``(N_a, N_b)``; ``aa`` / ``bb`` match
    the batch axes of their side.
    """
    m_ab = ab.mantissa.to(torch.float64)
    dev = m_ab.device

    def t(x):  # on the mantissa's device without a host round trip
        if isinstance(x, torch.Tensor):
            return x.to(device=dev, dtype=torch.float64)
        return torch.full((), float(x), dtype=torch.float64, device=dev)

    ma, mb = torch.clamp(t(aa.mantissa), min=0), torch.clamp(t(bb.mantissa), min=0)
    la, lb = t(ab.log_a), t(ab.log_b)
    laa, lbb = t(aa.log_a) + t(aa.log_b), t(bb.log_a) + t(bb.log_b)
    if m_ab.dim() == 2:  # both sides batched
        def col(x):
            return x.reshape(-1, 1) if x.dim() else x

        def row(x):
            return x.reshape(1, -1) if x.dim() else x

        ma, laa, la = col(ma), col(laa), col(la)
        mb, lbb, lb = row(mb), row(lbb), row(lb)
    return m_ab * torch.exp(la + lb - 0.5 * laa - 0.5 * lbb) / torch.sqrt(ma * mb)


def _similarity_scaled(net_a, net_b, meas, method, outputs, stats=None):
    if method == "exact":
        ab = exact(net_a, net_b, meas, outputs, stats=stats)
        aa = _self_inner(net_a, meas, method, outputs, stats)
        bb = _self_inner(net_b, meas, method, outputs, stats)
        return ab, aa, bb
    return recursive(net_a, net_b, meas, outputs, stats=stats)


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
    net_a, net_b, meas = _inputs(a, b, measure, mean, cov, centred, example_input)
    method = _resolve_method(method, net_a, net_b, meas, outputs)
    value = _cosine(*_similarity_scaled(net_a, net_b, meas, method, outputs))
    return float(value) if value.dim() == 0 else value


def compare(a, b, *, measure="gaussian", method: str = "auto", mean=None, cov=None,
            outputs=None, centred: bool = False, example_input=None) -> Comparison:
    """Similarity together with the measure, the method that ran and the contraction cost."""
    net_a, net_b, meas = _inputs(a, b, measure, mean, cov, centred, example_input)
    method = _resolve_method(method, net_a, net_b, meas, outputs)
    stats: dict = {}
    ab, aa, bb = _similarity_scaled(net_a, net_b, meas, method, outputs, stats)
    value = float(_cosine(ab, aa, bb))
    dtype = torch.promote_types(net_a.dtype, net_b.dtype)
    c = _cost_from_stats(stats, method, meas.describe(), dtype)
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
         outputs=None, centred: bool = False, example_input=None, **matrix_options) -> Cost:
    """Plan every contraction of ``similarity(a, b, ...)`` and report its cost; runs none.

    With lists of models, ``cost(models)`` / ``cost(models_a, models_b)`` costs
    :func:`tnsim.similarity_matrix` instead (same blocks, same options, e.g. ``block_size``,
    ``memory``). Paths are searched (or read from the disk cache) as for a real run, so a
    later run starts warm; no tensor is contracted.

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
        from .methods._matrix import matrix_cost

        return matrix_cost(a, b, measure=measure, method=method, mean=mean, cov=cov, outputs=outputs,
                           centred=centred, example_input=example_input, **matrix_options)
    if matrix_options:
        raise TypeError(f"unexpected options {sorted(matrix_options)} (they apply to lists of models)")
    if b is None:
        raise TypeError("cost(a, b) compares two models; pass a list to cost a matrix")
    from .plan._contract import dry_run

    net_a, net_b, meas = _inputs(a, b, measure, mean, cov, centred, example_input)
    method = _resolve_method(method, net_a, net_b, meas, outputs)
    stats: dict = {"paths": []}
    with dry_run():
        _similarity_scaled(net_a, net_b, meas, method, outputs, stats)
    dtype = torch.promote_types(net_a.dtype, net_b.dtype)
    return _cost_from_stats(stats, method, meas.describe(), dtype)
