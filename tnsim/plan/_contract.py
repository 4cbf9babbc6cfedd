r"""Doubled networks: build, plan (cotengra) and execute (torch).

The inner product of two terms for one pairing of their input copies is a single tensor
network, the *doubled network*: the tensors of side *a*, the tensors of side *b*, and for
every pair of copies the kernel tensors joining their legs (a metric :math:`M` for the tensor
measure, a covariance :math:`\Sigma` for a Wick pair, a mean vector for an unpaired copy).
Output legs are either contracted through per-side output maps (a scalar per model pair) or
left open (a matrix, as the recursive method needs).

Plans are keyed by *structure* only (indices, shapes, pairing), so checkpoints with new weights
reuse the contraction tree; trees come from cotengra and are cached in memory and on disk
(:mod:`tnsim.paths`). Every term tensor is scaled to unit norm per model before contracting,
and the logarithms of the scales are tracked, so float32 contractions of deep networks neither
overflow nor underflow.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from tqdm.auto import tqdm

from . import _paths as paths
from ..errors import UnaffordableError
from ._execute import execute
from ..ir._groups import Perm, bijection_orbits, matching_orbits
from ..ir._term import Term

__all__ = [
    "Piece", "Side", "Scaled", "pair_orbits", "pairings", "planned", "contract_pairings",
    "evaluate_term", "dry_run",
]


@dataclass(frozen=True, eq=False)
class Piece:
    """A kernel tensor attached to the legs of one or two input copies.

    ``legs`` names, for each non-batch axis of ``array``, the copy (``'p'`` first, ``'q'``
    second) and the axis of that copy's space. ``batch`` names the leading batch axes
    (``'a'`` and/or ``'b'``: one per side whose model stack the tensor depends on).
    ``identity`` declares an unbatched identity matrix between one leg of each copy: the
    doubled network then joins the two legs into one index instead of contracting it.
    """

    array: torch.Tensor
    legs: tuple[tuple[str, int], ...]
    batch: tuple[str, ...] = ()
    identity: bool = False

    @property
    def structure(self) -> tuple:
        return (self.legs, self.batch, tuple(self.array.shape[len(self.batch) :]), self.identity)

    @property
    def joins(self) -> bool:
        """An identity between a leg of ``p`` and a leg of ``q`` (contracted by renaming)."""
        return self.identity and not self.batch and [w for w, _ in self.legs] == ["p", "q"]


@dataclass(frozen=True, eq=False)
class Side:
    """One side of a doubled network: a term, its homogenising copies, its batch label."""

    term: Term
    virtual: int = 0  # extra copies attached to the kernel's pad vector (tensor measure)
    batch_label: str | None = None  # index name of the model axis; equal labels = diagonal
    out_map: tuple[torch.Tensor | None, ...] | None = None  # per output axis, (k, dim) or None

    @property
    def degree(self) -> int:
        return self.term.degree + self.virtual


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


# --- orbit enumeration (cached per structure) -------------------------------------------------


@lru_cache(maxsize=4096)
def pair_orbits(kind: str, k_a: int, gens_a: tuple, k_b: int, gens_b: tuple, partial: bool):
    """Orbit representatives and sizes for one pair of copy sets.

    ``kind='tensor'``: bijections (``k_a == k_b``); ``kind='gaussian'``: matchings of the
    ``k_a + k_b`` copies (``k_b = 0`` for a single side).
    """
    from ..ir._groups import shift

    if kind == "tensor":
        return tuple(bijection_orbits(k_a, list(gens_a), list(gens_b)))
    n = k_a + k_b
    gens = shift(list(gens_a), 0, n) + shift(list(gens_b), k_a, n)
    return tuple(matching_orbits(n, gens, partial))


def homogenised_group(term: Term, virtual: int) -> tuple[Perm, ...]:
    """The term's group extended by all permutations of its virtual (padding) copies."""
    k, n = term.degree, term.degree + virtual
    gens = [tuple(g) + tuple(range(k, n)) for g in term.group]
    for i in range(k, n - 1):
        p = list(range(n))
        p[i], p[i + 1] = i + 1, i
        gens.append(tuple(p))
    return tuple(gens)


# --- building a doubled network -------------------------------------------------------------


@dataclass
class Equation:
    inputs: list[tuple[str, ...]]
    output: tuple[str, ...]
    size_dict: dict[str, int]
    sources: list[tuple] = field(default_factory=list)


def _copy_legs(side_idx: int, side: Side, c: int, rank: int = 1) -> tuple[str, ...]:
    """Leg names of copy ``c``; a virtual copy gets ``rank`` fresh legs (the input space's)."""
    lab = "ab"[side_idx]
    t = side.term
    if c < t.degree:
        return tuple(f"{lab}|{leg}" for leg in t.copies[c])
    return tuple(f"{lab}|v{c}.{a}" for a in range(len(t.in_shape) or rank))


def _space_rank(kernel, label: str) -> int:
    """Rank of one input copy, read off the kernel's pad pieces (1 for vectors, 2 for sequences)."""
    try:
        pieces = kernel.pad(label)
    except Exception:  # a kernel without a padded space has no virtual copies either
        return 1
    return 1 + max(axis for p in pieces for _, axis in p.legs)


def build_equation(
    sides: list[Side],
    pairs: list[tuple[tuple[int, int], tuple[int, int]]],
    singles: list[tuple[int, int]],
    kernel,
    open_outputs: bool,
) -> Equation:
    """Doubled network of ``sides`` joined by kernel pieces for ``pairs`` and ``singles``.

    Copies are addressed as ``(side index, copy index)``; copy indices past a term's degree are
    its virtual (padding) copies, which carry the kernel's pad vector.
    """
    eq = Equation([], (), {})
    labels = "ab"
    rename = _joined_legs(sides, pairs, kernel, open_outputs)

    def add(inds, source, shape):
        inds = tuple(rename.get(i, i) for i in inds)
        if len(inds) != len(shape):
            raise AssertionError(f"indices {inds} do not fit a tensor of shape {tuple(shape)}")
        # repeated index on one tensor (a pairing of copies that share a position): diagonal
        if len(set(inds)) != len(inds):
            source = ("diag", source, inds)
            seen = []
            for i in inds:
                if i not in seen:
                    seen.append(i)
            new_shape = [shape[inds.index(i)] for i in seen]
            inds, shape = tuple(seen), new_shape
        for i, s in zip(inds, shape):
            eq.size_dict[i] = int(s)
        eq.inputs.append(inds)
        eq.sources.append(source)

    # term tensors
    for si, side in enumerate(sides):
        lab = labels[si]
        t = side.term
        pre = (side.batch_label,) if side.batch_label else ()
        if bool(pre) != (t.batch is not None):
            raise AssertionError("a batched term needs a batch label and vice versa")
        for ti, (ix, x) in enumerate(zip(t.inds, t.arrays)):
            add(pre + tuple(f"{lab}|{i}" for i in ix), ("t", si, ti), tuple(x.shape))

    # a piece's batch roles name the side whose model stack it depends on
    side_of_role = {"a": 0, "b": min(1, len(sides) - 1)}

    def batch_inds(piece: Piece) -> tuple[str, ...]:
        return tuple(sides[side_of_role[role]].batch_label for role in piece.batch)

    def attach(pieces, legs_p, legs_q, tag):
        for pi, piece in enumerate(pieces):
            if piece.joins:
                continue  # its two legs were renamed into one index (see _joined_legs)
            inds = batch_inds(piece)
            for who, axis in piece.legs:
                inds += ((legs_p if who == "p" else legs_q)[axis],)
            shape = tuple(piece.array.shape)
            add(inds, ("k", tag, pi), shape)

    # virtual copies: pad vectors (a degree-0 term's virtual copies take the space's rank)
    rank = [
        1 if side.term.degree or side.degree == 0 else _space_rank(kernel, labels[si])
        for si, side in enumerate(sides)
    ]
    for si, side in enumerate(sides):
        for c in range(side.term.degree, side.degree):
            attach(kernel.pad(labels[si]), _copy_legs(si, side, c, rank[si]), (), ("pad", labels[si]))
    for (si, ci), (sj, cj) in pairs:
        s1, s2 = labels[si], labels[sj]
        attach(
            kernel.pair(s1, s2),
            _copy_legs(si, sides[si], ci, rank[si]),
            _copy_legs(sj, sides[sj], cj, rank[sj]),
            ("pair", s1, s2),
        )
    for si, ci in singles:
        s = labels[si]
        attach(kernel.single(s), _copy_legs(si, sides[si], ci, rank[si]), (), ("single", s))

    # outputs
    batch_out = []
    for side in sides:
        if side.batch_label and side.batch_label not in batch_out:
            batch_out.append(side.batch_label)
    if open_outputs:
        outs = [f"{labels[si]}|{o}" for si, side in enumerate(sides) for o in side.term.outputs]
        eq.output = tuple(batch_out) + tuple(outs)
    else:
        a, b = sides
        for axis, (oa, ob) in enumerate(zip(a.term.outputs, b.term.outputs)):
            ma = a.out_map[axis] if a.out_map else None
            mb = b.out_map[axis] if b.out_map else None
            la, lb = f"a|{oa}", f"b|{ob}"
            k = f"k.{axis}"
            if ma is None and mb is None:
                continue  # identity: the two legs were joined into one index (_joined_legs)
            for si, (m, leg) in enumerate(((ma, la), (mb, lb))):
                if m is None:
                    dim = sides[si].term.size_dict[leg.split("|", 1)[1]]
                    add((k, leg), ("eye", dim), (dim, dim))
                else:
                    add((k, leg), ("map", si, axis), tuple(m.shape))
        eq.output = tuple(batch_out)
    return eq


def _joined_legs(sides, pairs, kernel, open_outputs: bool) -> dict[str, str]:
    """Index renames that replace identity kernel pieces (and identity output joins).

    Each identity piece between a leg of copy ``p`` and a leg of copy ``q`` (and, with closed
    outputs, each output axis compared without a map) merges its two indices; merged classes
    (a shared position hyperindex can chain several) are named after their first member.
    Contracting with :math:`\\delta_{ij}` is the same as naming ``i`` and ``j`` alike, and
    saves the work of multiplying by an identity matrix.
    """
    parent: dict[str, str] = {}

    def find(i):
        while parent.get(i, i) != i:
            i = parent[i]
        return i

    def union(i, j):
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)

    labels = "ab"
    for (si, ci), (sj, cj) in pairs:
        legs_p, legs_q = _copy_legs(si, sides[si], ci), _copy_legs(sj, sides[sj], cj)
        for piece in kernel.pair(labels[si], labels[sj]):
            if piece.joins:
                (_, ap), (_, aq) = piece.legs
                union(legs_p[ap], legs_q[aq])
    if not open_outputs and len(sides) == 2:
        a, b = sides
        for axis, (oa, ob) in enumerate(zip(a.term.outputs, b.term.outputs)):
            ma = a.out_map[axis] if a.out_map else None
            mb = b.out_map[axis] if b.out_map else None
            if ma is None and mb is None:
                union(f"a|{oa}", f"b|{ob}")
    return {i: find(i) for i in parent}


def _gather(eq: Equation, sides: list[Side], arrays: list[list[torch.Tensor]], kernel, like):
    pieces_cache: dict = {}
    out = []
    for src in eq.sources:
        out.append(_resolve(src, sides, arrays, kernel, like, pieces_cache))
    return out


def _resolve(src, sides, arrays, kernel, like, cache):
    kind = src[0]
    if kind == "t":
        return arrays[src[1]][src[2]]
    if kind == "k":
        tag, pi = src[1], src[2]
        if tag not in cache:
            if tag[0] == "pad":
                cache[tag] = kernel.pad(tag[1])
            elif tag[0] == "pair":
                cache[tag] = kernel.pair(tag[1], tag[2])
            else:
                cache[tag] = kernel.single(tag[1])
        return cache[tag][pi].array
    if kind == "eye":
        return torch.eye(src[1], dtype=like.dtype, device=like.device)
    if kind == "map":
        return sides[src[1]].out_map[src[2]]
    if kind == "diag":
        x = _resolve(src[1], sides, arrays, kernel, like, cache)
        inds = src[2]
        seen = []
        for i in inds:
            if i not in seen:
                seen.append(i)
        letters = {i: chr(97 + n) for n, i in enumerate(seen)}
        extra = x.dim() - len(inds)  # leading batch axes are part of inds already
        assert extra == 0
        spec = "".join(letters[i] for i in inds) + "->" + "".join(letters[i] for i in seen)
        return torch.einsum(spec, x)
    raise AssertionError(src)


# --- normalisation ---------------------------------------------------------------------------


def normalised(term: Term, dtype: torch.dtype) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Arrays scaled to unit Frobenius norm per model, and the summed log-norms per model.

    An array that occurs several times in the term (one weight on several input copies) is
    scaled once and returned as one object, so :mod:`tnsim.execute` can share its products.
    """
    arrays, logs = [], []
    done: dict = {}
    for x0 in term.arrays:
        if id(x0) in done:
            y, n = done[id(x0)]
            arrays.append(y)
            logs.append(n)
            continue
        x = x0.to(dtype)
        if term.batch is None:
            n = torch.linalg.vector_norm(x, dtype=torch.float64)
            n = torch.where(n > 0, n, torch.ones_like(n))
            arrays.append(x / n.to(dtype))
            logs.append(torch.log(n))
        else:
            n = torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1, dtype=torch.float64)
            n = torch.where(n > 0, n, torch.ones_like(n))
            arrays.append(x / n.to(dtype).reshape((-1,) + (1,) * (x.dim() - 1)))
            logs.append(torch.log(n))
        done[id(x0)] = (arrays[-1], logs[-1])
    total = torch.stack(logs).sum(0) if logs else torch.zeros((), dtype=torch.float64)
    return arrays, total


# --- planning and execution -----------------------------------------------------------------


@dataclass
class Contraction:
    """A planned doubled network: its equation, cotengra tree and cost."""

    equation: Equation
    tree: object
    sliced: dict = field(default_factory=dict)  # (limit, itemsize) -> sliced tree or None

    @property
    def flops(self) -> float:
        return float(self.tree.total_flops())

    @property
    def max_size(self) -> float:
        return float(self.tree.max_size())


_PLANS: dict = {}
_DRY = contextvars.ContextVar("tnsim_dry_run", default=False)
_QUIET = contextvars.ContextVar("tnsim_quiet", default=False)
#: Orbit loops at least this long get a progress bar (shown once they have run 2 s).
PROGRESS_MIN_ORBITS = 200
PROGRESS_DELAY = 2.0


@contextlib.contextmanager
def _switched_on(flag: contextvars.ContextVar):
    token = flag.set(True)
    try:
        yield
    finally:
        flag.reset(token)


def quiet():
    """Within this context orbit loops show no progress bar (callers with their own bar)."""
    return _switched_on(_QUIET)


def dry_run():
    """Within this context contractions are planned and costed but not executed (zeros)."""
    return _switched_on(_DRY)


def plan(key, build) -> Contraction:
    """The contraction for structure ``key``, built with ``build()`` and planned on first use."""
    hit = _PLANS.get(key)
    if hit is None:
        eq = build()
        tree = paths.find_tree(eq.inputs, eq.output, eq.size_dict)
        hit = Contraction(eq, tree)
        _PLANS[key] = hit
    return hit


def clear_memory_cache() -> None:
    """Forget in-memory plans and orbit enumerations (the disk path cache is kept)."""
    _PLANS.clear()
    pair_orbits.cache_clear()


def fitted(contraction: Contraction, itemsize: int):
    """The tree to execute within the memory limit (:func:`tnsim.paths.memory_limit`).

    The plan's own tree if its largest intermediate fits; otherwise a sliced copy (cotengra
    loops over the values of the sliced indices) if one fits at an acceptable flop overhead
    (:func:`tnsim.paths.slice_tree`); otherwise ``None``.
    """
    limit = paths.memory_limit()
    if limit is None or contraction.max_size * itemsize <= limit:
        return contraction.tree
    key = (limit, itemsize, paths.slice_overhead())
    if key not in contraction.sliced:
        contraction.sliced[key] = paths.slice_tree(contraction.tree, limit / itemsize)
    return contraction.sliced[key]


def run(contraction: Contraction, arrays: list[torch.Tensor], itemsize: int) -> torch.Tensor:
    """Execute a planned contraction; slice it, or refuse it, if it exceeds the memory limit."""
    tree = fitted(contraction, itemsize)
    if tree is None:
        limit = paths.memory_limit()
        need = contraction.max_size * itemsize
        overhead = paths.slice_overhead()
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


def pairings(sides: list[Side], kernel, kind: str):
    """Orbit representatives as ``(rep, size, pairs, singles)``, and the normalisation.

    Copies are addressed as ``(side index, copy index)``. For the tensor measure every copy
    of *a* (virtual ones included) is paired with one of *b*; for the Gaussian measure copies
    are Wick-paired or left single, and virtual copies are fixed singletons on the constant.
    """
    partial = bool(getattr(kernel, "partial", False))
    out = []
    if kind == "tensor":
        ks = [s.degree for s in sides]
        gens = [homogenised_group(s.term, s.virtual) for s in sides]
        for rep, size in pair_orbits("tensor", ks[0], gens[0], ks[1], gens[1], False):
            out.append((rep, size, [((0, i), (1, j)) for i, j in enumerate(rep)], []))
        return out, 1.0 / math.factorial(ks[0])
    ks = [s.term.degree for s in sides]
    k_b = ks[1] if len(sides) > 1 else 0
    g_b = sides[1].term.group if len(sides) > 1 else ()
    fixed = [(si, c) for si, s in enumerate(sides) for c in range(s.term.degree, s.degree)]

    def where(p):
        return (0, p) if p < ks[0] else (1, p - ks[0])

    for rep, size in pair_orbits("gaussian", ks[0], sides[0].term.group, k_b, g_b, partial):
        pairs = [(where(p), where(q)) for p, q in enumerate(rep) if p < q]
        singles = list(fixed) + [where(p) for p, q in enumerate(rep) if p == q]
        out.append((rep, size, pairs, singles))
    return out, 1.0


def structure_key(sides: list[Side], kernel, kind: str, open_outputs: bool) -> tuple:
    """Everything a doubled network's plan depends on, except the pairing."""
    return (
        kind,
        tuple((s.term.structure, s.virtual, s.batch_label, s.term.batch) for s in sides),
        kernel.structure,
        open_outputs,
        tuple(
            tuple(None if m is None else tuple(m.shape) for m in (s.out_map or ())) for s in sides
        ),
    )


def planned(sides, kernel, kind, open_outputs, rep, pairs, singles) -> Contraction:
    """The (cached) planned contraction of one pairing."""
    return plan(
        (structure_key(sides, kernel, kind, open_outputs), rep),
        lambda: build_equation(sides, pairs, singles, kernel, open_outputs),
    )


def contract_pairings(
    sides: list[Side],
    kernel,
    *,
    kind: str,
    open_outputs: bool,
    arrays: list[list[torch.Tensor]],
    dtype: torch.dtype,
    stats: dict | None = None,
) -> torch.Tensor:
    r"""Sum over orbits of pairings of the doubled network of ``sides``.

    ``kind='tensor'``: two sides, bijections between their (homogenised) copies; the result
    is :math:`\frac{1}{K!}\sum_\sigma \langle T_a, \sigma T_b\rangle`.
    ``kind='gaussian'``: one or two sides, Wick (partial, if the kernel says so) matchings of
    all copies: :math:`\sum_m \prod_{pairs}\Sigma \prod_{singles}\mu`.
    Coefficients of the terms are included; arrays must already be normalised.
    """
    reps, norm = pairings(sides, kernel, kind)
    coeff = math.prod(s.term.coeff for s in sides) * norm
    vanishes = _vanishing_rule(sides, kernel, kind)
    itemsize = dtype.itemsize
    like = arrays[0][0] if arrays[0] else torch.empty((), dtype=dtype)
    total = None
    if len(reps) >= PROGRESS_MIN_ORBITS and not _QUIET.get() and not _DRY.get():
        reps = tqdm(reps, desc="exact orbits", unit="contraction", delay=PROGRESS_DELAY, leave=False)
    for rep, size, pairs, singles in reps:
        if vanishes is not None and vanishes(pairs, singles):
            continue
        con = planned(sides, kernel, kind, open_outputs, rep, pairs, singles)
        if stats is not None:
            _record(stats, con, itemsize)
        if _DRY.get():
            shape = [con.equation.size_dict[i] for i in con.equation.output]
            paths.check_allocation(shape, 8, "a contraction's result")
            value = torch.zeros(shape, dtype=torch.float64, device=like.device)
            total = value if total is None else total + value
            continue
        ops = _gather(con.equation, sides, arrays, kernel, like)
        ops = [x.to(dtype) for x in ops]
        value = run(con, ops, itemsize).to(torch.float64) * (size * coeff)
        total = value if total is None else total + value
    if total is None:
        # no pairing at all (an odd number of copies under a zero-mean, unpadded Gaussian):
        # the expectation is exactly zero
        return _zeros_result(sides, open_outputs, like)
    return total


def _record(stats: dict, con: Contraction, itemsize: int) -> None:
    """Add one contraction's cost (as it would run: sliced if need be) to ``stats``."""
    tree = fitted(con, itemsize)
    stats["contractions"] = stats.get("contractions", 0) + 1
    stats["unsliced_max_size"] = max(stats.get("unsliced_max_size", 0.0), con.max_size)
    if tree is None:
        stats["unaffordable"] = stats.get("unaffordable", 0) + 1
        tree = con.tree
    elif tree is not con.tree:
        stats["sliced"] = stats.get("sliced", 0) + 1
        stats["slices"] = max(stats.get("slices", 1), int(tree.nslices))
    stats["flops"] = stats.get("flops", 0.0) + float(tree.total_flops())
    stats["max_size"] = max(stats.get("max_size", 0.0), float(tree.max_size()))
    stats.setdefault("optimizers", set()).add(paths.optimizer_name(len(con.equation.inputs)))
    if "paths" in stats:
        stats["paths"].append(con.tree.get_path())


def copy_support(term: Term) -> tuple[tuple[bool, bool], ...]:
    """Per copy of a term on a padded space: ``(uses constant, uses real features)``.

    Read off the one tensor carrying the copy's feature leg (``False`` only when that slice is
    exactly zero for every model of a stack, e.g. the embedding :func:`~tnsim.network.pad_input`
    puts on a copy); ``(True, True)`` when the leg is shared or several tensors carry it.
    Reading values synchronises with the device, so the result is stored on the term
    (``Term.support``) and carried over by :func:`~tnsim.network.stack`: a matrix of stacked
    checkpoints reads it once per model, never inside its block loop. Meta tensors (no values)
    get the conservative answer.
    """
    if term.support is not None:
        return term.support
    off = 0 if term.batch is None else 1
    out = []
    for legs in term.copies:
        f = legs[-1]
        hold = [k for k, ix in enumerate(term.inds) if f in ix]
        const = real = True
        if len(hold) == 1 and term.inds[hold[0]].count(f) == 1:
            x = term.arrays[hold[0]]
            if x.device.type != "meta":
                ax = term.inds[hold[0]].index(f) + off
                const = bool(x.narrow(ax, 0, 1).any())
                real = bool(x.narrow(ax, 1, x.shape[ax] - 1).any())
        out.append((const, real))
    out = tuple(out)
    object.__setattr__(term, "support", out)
    return out


def _vanishing_rule(sides: list[Side], kernel, kind: str):
    """A test for pairings that are exactly zero, or ``None`` when the kernel allows none.

    Kernels that set ``decoupled`` join constant coordinates only with constant coordinates
    (tensor metric) or not at all (covariance), and real features only with real features; a
    Gaussian kernel with ``real_mean_zero`` gives unpaired copies the mean ``e_0``. A pairing
    that joins a copy to a kernel piece it cannot reach is zero and is skipped (whole orbits
    at once: the support pattern is invariant under a term's group).
    """
    if not getattr(kernel, "decoupled", False):
        return None
    flags = {}
    for si, s in enumerate(sides):
        padded = kernel.spaces["ab"[si]].padded
        sup = copy_support(s.term) if padded else ((False, True),) * s.term.degree
        for c in range(s.degree):
            flags[(si, c)] = sup[c] if c < s.term.degree else (True, False)
    if all(f == (True, True) for f in flags.values()):
        return None
    mean_zero = bool(getattr(kernel, "real_mean_zero", False))

    def vanishes(pairs, singles) -> bool:
        for p, q in pairs:
            (cp, rp), (cq, rq) = flags[p], flags[q]
            if not ((rp and rq) or (kind == "tensor" and cp and cq)):
                return True
        if mean_zero:
            return any(not flags[p][0] for p in singles)
        return False

    return vanishes


def _zeros_result(sides: list[Side], open_outputs: bool, like: torch.Tensor) -> torch.Tensor:
    """A zero of the shape :func:`build_equation` gives the result (batch axes, open outputs)."""
    shape, seen = [], []
    for s in sides:
        if s.batch_label and s.batch_label not in seen:
            seen.append(s.batch_label)
            shape.append(s.term.batch)
    if open_outputs:
        shape += [s.term.size_dict[o] for s in sides for o in s.term.outputs]
    return torch.zeros(shape, dtype=torch.float64, device=like.device)


def evaluate_term(term: Term, xs: list[torch.Tensor]) -> torch.Tensor:
    """Evaluate ``coeff * T(x_1, ..., x_k)`` for one input per copy (no batch axis)."""
    import cotengra as ctg

    inputs = list(term.inds) + [tuple(c) for c in term.copies]
    arrays = list(term.arrays) + list(xs)
    return ctg.array_contract(arrays, inputs, term.outputs, optimize="greedy") * term.coeff
