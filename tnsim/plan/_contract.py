r"""Plan (cotengra) and run (torch) the doubled networks of one term pair, summed over orbits.

Plans are keyed by *structure* only (indices, shapes, pairing), so checkpoints with new weights
reuse the contraction tree; trees come from cotengra and are cached in memory and on disk
(:mod:`tnsim.plan._paths`). Every term tensor is scaled to unit norm per model before contracting,
and the logarithms of the scales are tracked, so float32 contractions of deep networks neither
overflow nor underflow.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import weakref
from dataclasses import dataclass, field

import torch

from .. import _caches
from ..progress import bar
from .._memory import check_allocation, memory_limit, slice_overhead
from ..doubled import Equation, Side, aligned_blocks, build_equation, count_orbits, gather, live_pairings
from ..doubled._sides import LABELS
from ..errors import UnaffordableError
from ..ir._term import Term
from . import _paths as paths
from ._execute import execute
from . import _masked
from ._masked import masked_plan, run_masked
from ._peel import candidates, split, split_like
from ._readers import read_through

__all__ = [
    "Scaled", "planned", "contract_pairings", "normalised", "dry_run", "is_dry", "quiet", "Contraction",
]


@dataclass
class Scaled:
    """A value ``mantissa * exp(log_a[i] + log_b[j])`` kept apart to avoid overflow.

    ``mantissa`` has the batch axes (a, b) first where present, then any open output axes.
    """

    mantissa: torch.Tensor
    log_a: torch.Tensor | float = 0.0
    log_b: torch.Tensor | float = 0.0

    def value(self) -> torch.Tensor:
        la, lb = torch.as_tensor(self.log_a, dtype=torch.float64), torch.as_tensor(
            self.log_b, dtype=torch.float64
        )
        m = self.mantissa
        extra = m.dim() - la.dim() - lb.dim()
        la = la.to(m.device).reshape(la.shape + (1,) * (lb.dim() + extra))
        lb = lb.to(m.device).reshape(lb.shape + (1,) * extra)
        return m * torch.exp(la + lb)


# --- normalisation ---------------------------------------------------------------------------


#: Smallest float32 array whose norm is summed in float32 (below, the copy costs less than the
#: check's extra calls).
NORM_IN_PLACE_MIN = 1 << 16


def _norms(x: torch.Tensor, per_row: bool) -> torch.Tensor:
    """Frobenius norms in float64, of all of ``x`` or (``per_row``) of each ``x[i]``. On the
    CPU a float32 array is summed in its own precision where that neither overflows nor
    underflows: reading it as float64 first costs a copy, 25x the sum (on a GPU that check
    would be a host round trip, so float64 it is)."""
    dim = 1 if per_row else None
    if x.dtype == torch.float32 and x.device.type == "cpu" and x.numel() >= NORM_IN_PLACE_MIN:
        n = torch.linalg.vector_norm(x, dim=dim).to(torch.float64)
        if bool(((n > 1e-15) & (n < 1e15)).all()):
            return n
    return torch.linalg.vector_norm(x, dim=dim, dtype=torch.float64)


def normalised(term: Term, dtype: torch.dtype) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Arrays scaled to unit Frobenius norm per model, and the summed log-norms per model.

    An array that occurs several times in the term (one weight on several input copies) is
    scaled once and returned as one object, so :mod:`tnsim.execute` can share its products.
    """
    arrays, logs = [], []
    done: dict = {}
    for x0 in term.arrays:
        if id(x0) not in done:
            done[id(x0)] = _normalised_array(x0, dtype, term.batch is not None)
        y, n = done[id(x0)]
        arrays.append(y)
        logs.append(n)
    total = torch.stack(logs).sum(0) if logs else torch.zeros((), dtype=torch.float64)
    return arrays, total


#: Normalised weights, kept per (array, in-place version, dtype): a model's weights are
#: normalised once, not at every step of every pair it is in (the depth-12 Gaussian pair spent
#: a fifth of its time here). An entry holds a weak reference, so a recycled ``id`` never hits;
#: arrays of :data:`NORMALISED_CACHE_MAX` entries or more (embeddings) are not kept.
_NORMALISED = _caches.memo("normalised arrays", maxsize=4096)
NORMALISED_CACHE_MAX = 1 << 20


def _normalised_array(x0: torch.Tensor, dtype: torch.dtype, batched: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``x0`` in ``dtype`` scaled to unit norm (per model when ``batched``), and the log-norm."""
    key = (id(x0), x0._version, dtype, batched)
    hit = _NORMALISED.get(key)
    if hit is not None and hit[0]() is x0:
        return hit[1], hit[2]
    x = x0 if x0.dtype == dtype else x0.to(dtype)
    n = _norms(x.reshape(x.shape[0], -1), True) if batched else _norms(x, False)
    n = torch.where(n > 0, n, torch.ones_like(n))
    y, log = x / n.to(dtype).reshape(n.shape + (1,) * (x.dim() - n.dim())), torch.log(n)
    if x0.numel() < NORMALISED_CACHE_MAX:
        _NORMALISED[key] = (weakref.ref(x0), y, log)
    return y, log


# --- planning and execution -----------------------------------------------------------------


@dataclass
class Contraction:
    """A planned doubled network: its equation, cotengra tree and cost."""

    equation: Equation
    tree: object
    sliced: dict = field(default_factory=dict)  # (limit, itemsize) -> sliced tree or None
    masked: dict = field(default_factory=dict)  # mask pattern -> MaskedPlan or None

    @property
    def flops(self) -> float:
        return float(self.tree.total_flops())

    @property
    def max_size(self) -> float:
        return float(self.tree.max_size())


_PLANS = _caches.memo("plans")
_DRY = contextvars.ContextVar("tnsim_dry_run", default=False)
_QUIET = contextvars.ContextVar("tnsim_quiet", default=False)
#: Orbit loops at least this long get a progress bar (shown once they have run 2 s).
PROGRESS_MIN_ORBITS = 200
PROGRESS_DELAY = 2.0


@contextlib.contextmanager
def _switched_on(flag: contextvars.ContextVar, value=True):
    token = flag.set(value)
    try:
        yield
    finally:
        flag.reset(token)


def quiet():
    """Within this context orbit loops show no progress bar (callers with their own bar)."""
    return _switched_on(_QUIET)


def dry_run(samples: int | None = None):
    """Within this context contractions are planned and costed but not executed (zeros).

    ``samples``: plan at most this many orbits per term pair (spread over them) and scale
    their cost by the count (:data:`DRY_SAMPLES` is what :func:`tnsim.cost` uses); ``None``
    plans every one.
    """
    return _switched_on(_DRY, ("dry", samples))


def plan(key, build, estimate: bool = False) -> Contraction:
    """The contraction for structure ``key``, built with ``build()`` and planned on first use.

    ``estimate``: for a cost estimate, a structure not planned yet gets a quick greedy path
    (:func:`tnsim.plan._paths.known_or_greedy_tree`), which is neither kept nor written to
    the disk cache, so a later run still searches properly.
    """
    hit = _PLANS.get(key)
    if hit is None:
        eq = build()
        if estimate:
            return Contraction(eq, paths.known_or_greedy_tree(eq.inputs, eq.output, eq.size_dict))
        tree = paths.find_tree(eq.inputs, eq.output, eq.size_dict)
        hit = Contraction(eq, tree)
        _PLANS[key] = hit
    return hit


def fitted(contraction: Contraction, itemsize: int):
    """The tree to execute within the memory limit (:func:`tnsim.paths.memory_limit`).

    The plan's own tree if its largest intermediate fits; otherwise a sliced copy (cotengra
    loops over the values of the sliced indices) if one fits at an acceptable flop overhead
    (:func:`tnsim.paths.slice_tree`); otherwise ``None``.
    """
    limit = memory_limit()
    if limit is None or contraction.max_size * itemsize <= limit:
        return contraction.tree
    key = (limit, itemsize, slice_overhead())
    if key not in contraction.sliced:
        tree = paths.slice_tree(contraction.tree, limit / itemsize)
        if tree is None:  # a quick path may not slice well: search carefully, then slice that
            eq = contraction.equation
            careful = paths.careful_tree(eq.inputs, eq.output, eq.size_dict)
            fits = careful.max_size() * itemsize <= limit
            tree = careful if fits else paths.slice_tree(careful, limit / itemsize)
        contraction.sliced[key] = tree
    return contraction.sliced[key]


def run(contraction: Contraction, arrays: list[torch.Tensor], itemsize: int) -> torch.Tensor:
    """Execute a planned contraction; slice it, or refuse it, if it exceeds the memory limit."""
    eq = contraction.equation
    check_allocation([eq.size_dict[i] for i in eq.output], itemsize, "a contraction's result")
    tree = fitted(contraction, itemsize)
    if tree is None:
        limit = memory_limit()
        need = contraction.max_size * itemsize
        overhead = slice_overhead()
        why = (
            "slicing is off (set_memory_limit(..., slice_overhead=None))"
            if overhead is None
            else f"slicing cannot bring it under the limit within {overhead}x the flops"
        )
        raise UnaffordableError(
            f"contraction needs an intermediate of {need / 2**20:.3g} MiB "
            f"({contraction.max_size:.3g} elements), above the memory limit of "
            f"{limit / 2**20:.3g} MiB (tnsim.set_memory_limit), and {why}; use smaller "
            "batches, raise the limit or use method='recursive'"
        )
    return execute(tree, arrays)


def structure_key(sides: list[Side], kernel, open_outputs: bool) -> tuple:
    """Everything a doubled network's plan depends on, except the pairing."""
    return (
        kernel.scheme,
        tuple((s.term.structure, s.virtual, s.batch_label, s.term.batch) for s in sides),
        kernel.structure,
        open_outputs,
        tuple(
            tuple(None if m is None else tuple(m.shape) for m in (s.out_map or ())) for s in sides
        ),
    )


def planned(sides, kernel, open_outputs, rep, blocks, estimate: bool = False) -> Contraction:
    """The (cached) planned contraction of one pairing (see :func:`plan` for ``estimate``)."""
    return plan(
        (structure_key(sides, kernel, open_outputs), rep),
        lambda: build_equation(sides, blocks, kernel, open_outputs),
        estimate,
    )


_PEELS = _caches.memo("peels")
#: Peel only if the planned flops drop by at least this fraction.
PEEL_GAIN = 0.05
#: Most orbits of one term pair considered for peeling (each orbit's equation is built to
#: check that they line up).
PEEL_MAX_ORBITS = 2048
#: ... in a cost estimate (which then prices larger term pairs unpeeled, from above: building
#: every orbit's equation of a composed model's term pair took minutes)
PEEL_MAX_ESTIMATE = 64
#: Largest orbit sum kept open for peeling (bytes; it is held while the orbits run).
PEEL_MAX_BYTES = 2**28


@dataclass(eq=False)
class Peeling:
    """How one term pair's orbits run peeled (see :mod:`tnsim.plan._peel`): each orbit's rest,
    planned per orbit; the shared tensors (``shared``: their equation entries) and the final
    contraction of the orbit sum with them."""

    key: tuple
    rests: dict
    shared: Equation
    final: Contraction

    def rest(self, rep, estimate: bool = False) -> Contraction:
        return plan(("peeled", self.key, rep), lambda: self.rests[rep], estimate)


def peeling(sides, kernel, open_outputs: bool, reps, estimate: bool = False) -> Peeling | None:
    """The peeling of this term pair's orbits, or ``None`` where it does not pay (decided once
    per structure from planned flops: ``n`` peeled orbits plus the final contraction against
    ``n`` whole orbits, the first orbit standing for all)."""
    if not 2 <= len(reps) <= (PEEL_MAX_ESTIMATE if estimate else PEEL_MAX_ORBITS):
        return None
    key = (structure_key(sides, kernel, open_outputs), tuple(rep for rep, _, _ in reps))
    if key in _PEELS:
        return _PEELS[key]
    if estimate and ("estimate",) + key in _PEELS:  # priced with quick paths: kept apart
        return _PEELS[("estimate",) + key]
    decision = None
    eqs = [build_equation(sides, blocks, kernel, open_outputs) for _, _, blocks in reps]
    outputs = set()  # output legs that are no copy's legs (an output map's, not a position's)
    for si, side in enumerate(sides):
        copy_legs = {leg for legs in side.term.copies for leg in legs}
        outputs |= {f"{LABELS[si]}|{o}" for o in side.term.outputs if o not in copy_legs}
    peel = candidates(eqs[0], outputs)
    first = split(eqs[0], peel)
    rests = [None] if first is None else [first[0]] + [split_like(eq, eqs[0], peel, first[1]) for eq in eqs[1:]]
    if all(r is not None for r in rests):
        rest_eq, final_eq = first
        rest_bytes = 8 * math.prod(rest_eq.size_dict[i] for i in rest_eq.output)  # summed in float64
        limit = memory_limit()
        if rest_bytes <= PEEL_MAX_BYTES and (limit is None or rest_bytes <= limit):
            shared = Equation(final_eq.inputs[1:], (), final_eq.size_dict, final_eq.sources[1:])
            tree = (paths.known_or_greedy_tree if estimate else paths.find_tree)(
                final_eq.inputs, final_eq.output, final_eq.size_dict
            )
            candidate = Peeling(key, {rep: r for (rep, _, _), r in zip(reps, rests)}, shared,
                                Contraction(final_eq, tree))
            whole = planned(sides, kernel, open_outputs, reps[0][0], reps[0][2], estimate)
            peeled = candidate.rest(reps[0][0], estimate)
            n = len(reps)
            if n * peeled.flops + candidate.final.flops < (1 - PEEL_GAIN) * n * whole.flops:
                decision = candidate
    _PEELS[("estimate",) + key if estimate else key] = decision
    return decision


#: Orbit sums with open outputs of at least this many entries (whole states) accumulate in
#: the contraction's dtype; inner products and smaller outputs in float64. Each orbit's value
#: is the output of float32 GEMMs that already sum hundreds of products in float32, so adding
#: a dozen of them in float64 buys no accuracy, and it cost a cast and a float64 pass (4x the
#: memory traffic) per orbit of a state.
ACCUMULATE_IN_DTYPE_MIN = 1 << 16


def _accumulator(x: torch.Tensor, open_outputs: bool) -> torch.dtype:
    wide = open_outputs and x.numel() >= ACCUMULATE_IN_DTYPE_MIN
    return x.dtype if wide and x.dtype in (torch.float32, torch.float64) else torch.float64


def _owned(x: torch.Tensor, dtype: torch.dtype, weight: float) -> torch.Tensor:
    """``weight * x`` as a fresh ``dtype`` tensor (the caller may change it in place)."""
    out = x.to(dtype, copy=True)
    return out if weight == 1 else out.mul_(weight)


def contract_pairings(
    sides: list[Side],
    kernel,
    *,
    open_outputs: bool,
    arrays: list[list[torch.Tensor]],
    dtype: torch.dtype,
    stats: dict | None = None,
) -> torch.Tensor:
    r"""Sum over orbits of pairings of the doubled network of ``sides``.

    The kernel's scheme says what is summed (:func:`tnsim.doubled.pairings`): bijections
    between the (homogenised) copies of two sides,
    :math:`\frac{1}{K!}\sum_\sigma \langle T_a, \sigma T_b\rangle`; Wick matchings of all
    copies, :math:`\sum_m \prod_{pairs}\Sigma \prod_{singles}\mu`; or set partitions,
    :math:`\sum_\pi \prod_{B\in\pi}\kappa_B`. Coefficients of the terms are included; arrays
    must already be normalised. Returns a fresh tensor (the caller may change it in place):
    float64, or the contraction's dtype for open outputs of a whole state
    (:data:`ACCUMULATE_IN_DTYPE_MIN`).
    """
    itemsize = dtype.itemsize
    like = arrays[0][0] if arrays[0] else torch.empty((), dtype=dtype)
    dry = _DRY.get()
    if dry and dry[1] is not None:  # an estimate: too many orbits are counted, not listed
        counted = _counted(sides, kernel, open_outputs, stats, itemsize, like)
        if counted is not None:
            return counted
    reps, norm = live_pairings(sides, kernel)
    coeff = math.prod(s.term.coeff for s in sides) * norm
    if len(reps) > 1:  # blocks met by several orbits: contract them with their readers once
        read = read_through(sides, kernel, arrays, bool(_DRY.get()), stats)
        if read is not None:
            sides, kernel, arrays = read
    peel = peeling(sides, kernel, open_outputs, reps, estimate=bool(dry) and dry[1] is not None)
    if dry:
        return _dry(sides, kernel, open_outputs, reps, stats, itemsize, like, dry[1], peel, arrays)
    total = None
    if len(reps) >= PROGRESS_MIN_ORBITS and not _QUIET.get():
        reps = bar(reps, desc="exact orbits", unit="contraction", delay=PROGRESS_DELAY, leave=False)
    for rep, size, blocks in reps:
        con = planned(sides, kernel, open_outputs, rep, blocks) if peel is None else peel.rest(rep)
        ops = gather(con.equation, sides, arrays, kernel, like)
        ops = [x if x.dtype == dtype else x.to(dtype) for x in ops]
        masked = masked_plan(con, ops, itemsize)  # a causal mask, contracted over its support
        if stats is not None:
            _record(stats, con, itemsize, flops=None if masked is None else masked.flops)
        value = (run(con, ops, itemsize) if masked is None else run_masked(masked, con.equation, ops))
        weight = size if peel is not None else size * coeff  # the coefficient rides along
        if total is None:
            total = _owned(value, _accumulator(value, open_outputs), weight)
        else:  # in place, one pass per orbit
            total.add_(value.to(total.dtype), alpha=weight)
    if total is not None and peel is not None:  # the shared tensors, applied once
        if stats is not None:
            _record(stats, peel.final, itemsize)
        ops = [total.to(dtype)] + [x.to(dtype) for x in gather(peel.shared, sides, arrays, kernel, like)]
        final = run(peel.final, ops, itemsize)
        total = _owned(final, _accumulator(final, open_outputs), coeff)
    if total is None:
        # no pairing at all (an odd number of copies under a zero-mean, unpadded Gaussian):
        # the expectation is exactly zero
        return _zeros_result(sides, open_outputs, like)
    return total  # fresh: float64, or the contraction's dtype for a whole state (_accumulator)


#: a dry run (:func:`dry_run`, :func:`tnsim.cost`) plans at most this many orbits of one term
#: pair, spread over the list, and scales their cost by the orbit count
DRY_SAMPLES = 8
#: an estimate lists the orbits of a term pair only up to this many (Burnside's count, before
#: the zero rules); beyond, it prices the count times the aligned pairing's plan, a lower bound
#: on flops (listing 10^7 orbits took minutes and gigabytes)
DRY_LIST_LIMIT = 20000
#: ... and lists bijection orbits only if that enumerates at most this many permutations of
#: the copies (8!): listing orbits of 9 and more copies enumerates k! rows for every term pair
#: of a composed model (the two-layer LM's exact estimate spent minutes there), so those are
#: priced from the count, before the zero rules (an upper bound on the contractions)
DRY_ENUMERATE_LIMIT = 40320
_COUNTS = _caches.memo("orbit counts")


def _counted(sides, kernel, open_outputs, stats, itemsize, like) -> torch.Tensor | None:
    """A term pair's estimated cost from its orbit count, or ``None`` if few enough to list
    (:data:`DRY_LIST_LIMIT`, :data:`DRY_ENUMERATE_LIMIT`)."""
    if len(sides) != 2:
        return None
    key = (kernel.scheme, bool(getattr(kernel, "partial", False)), getattr(kernel, "max_block", None),
           tuple((s.term.structure, s.virtual) for s in sides))
    if key not in _COUNTS:  # counted once per structure (cost() prices many blocks of one kind)
        try:
            _COUNTS[key] = count_orbits(kernel, sides[0].term, sides[1].term, sides[0].virtual, sides[1].virtual)
        except UnaffordableError:  # a group too large to list: the orbits are listed (and refused) as before
            _COUNTS[key] = None
    n = _COUNTS[key]
    if n is None:
        return None
    listing = math.factorial(sides[0].degree) if kernel.scheme == "bijections" else 0
    if n <= DRY_LIST_LIMIT and listing <= DRY_ENUMERATE_LIMIT:
        return None
    con = planned(sides, kernel, open_outputs, ("aligned",), aligned_blocks(sides, kernel), estimate=True)
    if stats is not None:
        _record(stats, con, itemsize, n)
        stats["estimated"] = stats.get("estimated", 0) + 1
    shape = [con.equation.size_dict[i] for i in con.equation.output]
    check_allocation(shape, 8, "a contraction's result")
    return _zero(shape, like)


def _dry(sides, kernel, open_outputs, reps, stats, itemsize, like, samples: int | None, peel=None,
         arrays=None) -> torch.Tensor:
    """Cost ``reps`` without contracting: plan a spread sample of ``samples`` of them (all if
    ``None``), scale by the count.

    Path searches dominate a cold cost estimate (milliseconds per distinct doubled network),
    so pricing every orbit could take longer than running them warm; a sample of
    :data:`DRY_SAMPLES` keeps :func:`tnsim.cost` to seconds. Largest intermediates are the
    largest seen in the sample (every orbit of a term pair joins the same tensors).
    """
    if not reps:
        return _zeros_result(sides, open_outputs, like)
    if getattr(kernel, "copy_aware", False):  # every block tensor is formed once: price them all
        for _, _, blocks in reps:
            for block in blocks:
                kernel.block_of(tuple(block))
    quick = samples is not None  # an estimate: greedy paths where none is known yet
    samples = len(reps) if samples is None else samples
    step = max(1, len(reps) // samples)
    sample = reps[::step][:samples]
    weight = len(reps) / len(sample)
    con = None
    for rep, _, blocks in sample:
        if peel is None:
            con = planned(sides, kernel, open_outputs, rep, blocks, estimate=samples < len(reps) or quick)
        else:
            con = peel.rest(rep, estimate=samples < len(reps) or quick)
        if stats is not None:
            masked = _masked_flops(con, sides, arrays, kernel, like, itemsize, samples < len(reps) or quick)
            _record(stats, con, itemsize, weight, flops=masked)
    if peel is not None:
        con = peel.final
        if stats is not None:
            _record(stats, con, itemsize)
    if stats is not None and quick:
        stats["estimated"] = stats.get("estimated", 0) + 1
    shape = [con.equation.size_dict[i] for i in con.equation.output]
    check_allocation(shape, 8, "a contraction's result")
    return _zero(shape, like)


_UNRESOLVED = torch.empty((), device="meta")


def _masked_flops(con: Contraction, sides, arrays, kernel, like, itemsize: int, estimate: bool) -> float | None:
    """What a contraction costs run row by row over its masks (``None``: it runs dense). The
    masks are term tensors or small kernel pieces, real in a dry run too; stand-ins are never
    taken for masks."""
    if arrays is None or con.flops < _masked.MIN_FLOPS:
        return None
    # only term tensors and small pieces of a plain kernel block (the tensor metric's position
    # identity) can be masks: the rest stay unresolved (a composed model's kernel pieces and
    # diagonals are large, and a dry run need not form them)
    ops = [arrays[src[1]][src[2]] if src[0] == "t" else _small_piece(src, kernel) for src in con.equation.sources]
    masked = masked_plan(con, ops, itemsize, estimate)
    return None if masked is None else masked.flops


def _small_piece(src, kernel) -> torch.Tensor:
    if src[0] != "k" or src[1][0] != "block":
        return _UNRESOLVED
    x = kernel.block(src[1][1:])[src[2]].array  # the equation names only pieces that exist
    return x if x.numel() <= _masked.MAX_ELEMENTS else _UNRESOLVED


def _record(stats: dict, con: Contraction, itemsize: int, weight: float = 1.0, flops: float | None = None) -> None:
    """Add one contraction's cost (as it would run: sliced if need be) to ``stats``; ``weight``
    counts it as that many contractions (a sample standing for its term pair's orbits);
    ``flops``: what it runs instead (a masked contraction's rows)."""
    tree = fitted(con, itemsize)
    stats["contractions"] = stats.get("contractions", 0) + weight
    stats["unsliced_max_size"] = max(stats.get("unsliced_max_size", 0.0), con.max_size)
    if tree is None:
        stats["unaffordable"] = stats.get("unaffordable", 0) + weight
        tree = con.tree
    elif tree is not con.tree:
        stats["sliced"] = stats.get("sliced", 0) + weight
        stats["slices"] = max(stats.get("slices", 1), int(tree.nslices))
    stats["flops"] = stats.get("flops", 0.0) + weight * (float(tree.total_flops()) if flops is None else flops)
    stats["max_size"] = max(stats.get("max_size", 0.0), float(tree.max_size()))
    stats.setdefault("optimizers", set()).add(paths.optimizer_name(len(con.equation.inputs)))
    if "paths" in stats:
        stats["paths"].append(con.tree.get_path())


def _zeros_result(sides: list[Side], open_outputs: bool, like: torch.Tensor) -> torch.Tensor:
    """A zero of the shape :func:`build_equation` gives the result (batch axes, open outputs)."""
    shape, seen = [], []
    for s in sides:
        if s.batch_label and s.batch_label not in seen:
            seen.append(s.batch_label)
            shape.append(s.term.batch)
    if open_outputs:
        shape += [s.term.size_dict[o] for s in sides for o in s.term.outputs]
    return _zero(shape, like) if _DRY.get() else torch.zeros(shape, dtype=torch.float64, device=like.device)


def _zero(shape, like) -> torch.Tensor:
    """A zero of ``shape`` that allocates nothing (a dry run's stand-in result)."""
    return torch.zeros((), dtype=torch.float64, device=like.device).expand(shape)


def is_dry() -> bool:
    """Whether contractions are only being planned and costed (:func:`dry_run`)."""
    return bool(_DRY.get())
