"""Choosing the method, costing it, and turning inner products into cosines.

``method="auto"`` runs the exact method when its estimated cost is within
:data:`EXACT_BUDGET_FLOPS` flops and :data:`EXACT_BUDGET_CONTRACTIONS` contractions,
otherwise the recursive one. :class:`Cost` is what :func:`tnsim.cost` reports.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .. import _caches
from .._memory import memory_limit
from ..errors import InvalidArgumentError, UnaffordableError, ZeroNormError
from ..plan import _paths as paths
from ..plan._contract import Scaled
from ._exact import choose_variants, virtual_copies
from ._prepare import Prepared
from ._recursive import canonical_chain

__all__ = ["Cost", "cost_from_stats", "resolve_method", "cosine", "check_norms", "EXACT_BUDGET_FLOPS",
           "EXACT_BUDGET_CONTRACTIONS"]

#: ``method="auto"`` runs the exact method when its estimated flops are at most this ...
EXACT_BUDGET_FLOPS = 2e10
#: ... and one inner product needs at most this many orbit contractions. Each costs Python
#: overhead (milliseconds) and, on first use, a path search (tens of milliseconds), so the
#: budget keeps a cold ``similarity`` (three inner products sharing plans) within about a minute.
EXACT_BUDGET_CONTRACTIONS = 500


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
    seconds
        Estimated run time on this machine: ``2 * flops`` at :data:`EINSUM_EFFICIENCY` times
        the matrix-multiply rate measured once per process for the models' dtype and device
        (:func:`gemm_rate`), plus :data:`CONTRACTION_OVERHEAD_S` per contraction. A guide, not
        a promise: oddly shaped contractions can run slower still. Computed on first access, so a
        comparison that never asks runs no timing product.
    dtype, device
        The models' compute dtype and device, which ``seconds`` is priced for.
    estimated
        ``True`` when the flops, intermediates and slicing come from a sample of each term
        pair's orbit contractions scaled by their count (:data:`tnsim.plan._contract.DRY_SAMPLES`
        planned per term pair) rather than from planning every one; ``contractions`` is exact.
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
    estimated: bool = False
    dtype: torch.dtype = field(default=torch.float32, repr=False)
    device: str = field(default="cpu", repr=False)

    @property
    def seconds(self) -> float:
        """Estimated run time (see the class docstring); the GEMM rate is measured on first use."""
        if not self.flops:
            return 0.0
        rate = EINSUM_EFFICIENCY * gemm_rate(self.dtype, self.device)
        return 2 * self.flops / rate + CONTRACTION_OVERHEAD_S * self.contractions

    def __repr__(self) -> str:
        mib = self.largest_intermediate_bytes / 2**20
        parts = [
            f"flops={self.flops:.3g}",
            f"largest_intermediate={self.largest_intermediate:.3g} ({mib:.3g} MiB)",
            f"width={self.width:.1f}",
            f"contractions={self.contractions}",
            f"seconds={self.seconds:.3g}",
            f"method={self.method!r}",
            f"measure={self.measure!r}",
        ]
        if self.blocks != 1 or self.block_size is not None:
            parts.append(f"blocks={self.blocks}, block_size={self.block_size}")
        if self.sliced:
            parts.append(f"sliced={self.sliced}")
        if self.estimated:
            parts.append("estimated=True")
        if not self.fits:
            parts.append("fits=False")
        return "Cost(" + ", ".join(parts) + ")"


#: Python and small-call overhead per orbit contraction (seconds; measured ~1 ms warm on CPU)
CONTRACTION_OVERHEAD_S = 1e-3
#: Fraction of the square-GEMM rate that doubled-network contractions reach: their pairwise
#: steps are batched, permuted, many-index einsums (measured on the language-model workload,
#: 2 CPU cores: 3.3e10 multiply-adds per second against a GEMM rate of 1.76e11 flops, 0.38;
#: docs/performance.md)
EINSUM_EFFICIENCY = 0.4

_RATES = _caches.memo("GEMM rates")


def gemm_rate(dtype: torch.dtype, device) -> float:
    """Floating point operations per second of one ``1024 x 1024`` matrix product (measured
    once per process, dtype and device; the best of three)."""
    device = torch.device(device)
    if device.type == "meta":  # no arithmetic happens there: price it as the host
        device = torch.device("cpu")
    key = (dtype, str(device))
    if key not in _RATES:
        x = torch.ones(1024, 1024, dtype=dtype, device=device)
        best = float("inf")
        for _ in range(3):
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            t = time.perf_counter()
            (x @ x).sum().item()
            best = min(best, time.perf_counter() - t)
        _RATES[key] = 2 * 1024**3 / max(best, 1e-9)
    return _RATES[key]


def cost_from_stats(stats: dict, method: str, measure: str, dtype: torch.dtype, device="cpu", **extra) -> Cost:
    """A :class:`Cost` from the statistics the contraction loop records."""
    itemsize = dtype.itemsize
    largest = stats.get("max_size", 0.0)
    opts = sorted(stats.get("optimizers", ()))
    return Cost(
        flops=stats.get("flops", 0.0),
        largest_intermediate=largest,
        largest_intermediate_bytes=largest * itemsize,
        width=math.log2(largest) if largest > 0 else 0.0,
        contractions=round(stats.get("contractions", 0)),
        method=method,
        measure=measure,
        optimizer="; ".join(opts) + f"; paths cached on disk under {paths.cache_dir()}",
        paths=stats.get("paths", []),
        memory_limit=memory_limit(),
        sliced=round(stats.get("sliced", 0)),
        estimated=bool(stats.get("estimated", 0)),
        fits=not stats.get("unaffordable", 0),
        unsliced_largest_intermediate=stats.get("unsliced_max_size", 0.0),
        dtype=dtype,
        device=str(device),
        **extra,
    )


def estimate_exact(prepared: Prepared, outputs) -> tuple[int, float]:
    """(orbit contractions, estimated flops) of the exact ``<a, b>``; contracts nothing."""
    kernel = prepared.kernel("ab")
    try:
        _, _, n, flops = choose_variants(
            prepared.a, prepared.b, kernel, virtual_copies(prepared), prepared.maps(outputs)
        )
    except UnaffordableError:
        return 10**18, float("inf")
    return n, flops


def resolve_method(method: str, prepared: Prepared, outputs) -> str:
    """``"exact"`` or ``"recursive"`` for ``method`` (``"auto"`` decides by the estimate)."""
    if method in ("exact", "recursive"):
        return method
    if method != "auto":
        raise InvalidArgumentError(f"unknown method {method!r}: use 'auto', 'exact' or 'recursive'")
    n, flops = estimate_exact(prepared, outputs)
    if n <= EXACT_BUDGET_CONTRACTIONS and flops <= EXACT_BUDGET_FLOPS:
        return "exact"
    net_a, net_b = prepared.a, prepared.b
    if len(canonical_chain(net_a)) != len(canonical_chain(net_b)):
        raise UnaffordableError(
            f"exact comparison of {net_a.name} and {net_b.name} is estimated at {n} contractions "
            f"and {flops:.3g} flops (budget {EXACT_BUDGET_CONTRACTIONS} / {EXACT_BUDGET_FLOPS:.3g}), "
            "and the recursive method needs equal numbers of layers; call with method='exact' "
            "to run it anyway"
        )
    return "recursive"


def check_norms(aa: Scaled, bb: Scaled, name_a: str, name_b: str, measure: str) -> None:
    """Raise :class:`~tnsim.errors.ZeroNormError` where a model's squared norm is not positive
    (a cosine with it is 0/0; one host synchronisation)."""
    for s, name in ((aa, name_a), (bb, name_b)):
        if s.mantissa.device.type == "meta":
            continue  # no values: nothing to check (a structure-only run)
        bad = torch.nonzero(~(s.mantissa > 0)).flatten().tolist() if s.mantissa.dim() else (
            [] if bool(s.mantissa > 0) else [None])
        if bad:
            which = "" if bad == [None] else f" (models {bad} of the stack)"
            raise ZeroNormError(
                f"{name}{which} has zero norm under the {measure} measure and the compared outputs, "
                "so its similarity is undefined (an all-zero model, a point-mass measure such as "
                "cov=0 on a model without constant term, or outputs it does not produce)"
            )


def cosine(ab: Scaled, aa: Scaled, bb: Scaled) -> torch.Tensor:
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
