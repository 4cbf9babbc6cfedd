r"""Masked contractions: contract a sparse position mask row by row, over its support only.

A causal attention layer carries its mask :math:`M_{ts}` (:math:`s \le t`) into every orbit
of a comparison; as a dense tensor it lets every key position :math:`s` meet every query
position :math:`t`. Contracted row by row — :math:`t` fixed, :math:`s` restricted to the row's
support :math:`S_t = \{s : M_{ts} \ne 0\}`, the row's values a vector on :math:`s` —

.. math::
    \sum_{t,s} M_{ts}\, F(t, s) = \sum_t \sum_{s \in S_t} M_{ts}\, F(t, s),

the work falls to :math:`\sum_t |S_t| / (T S)` of the dense contraction: 10/16 for a causal
mask over 4 positions, :math:`(10/16)^2` for an orbit that holds both models' masks (all
combinations of rows are contracted, each with its own cached path). The rows' contractions
are smaller tensors too, so less memory traffic.

A *mask* is an input with exactly two indices of size above one, at most
:data:`MAX_ELEMENTS` entries, at most :data:`MAX_DENSITY` of them non-zero, and indices that
no other mask holds. Either index may be an output: a row fills its slice of the looped one
and, for the restricted one, the block of its support, which must then be a range of
positions in every row (a causal mask's :math:`s \le t`, the diagonal :math:`\delta_{ts}`
that joins two output positions, see :meth:`tnsim.measures.TensorKernel.linear_parts`). It pays only
for large contractions (one call per row combination): below :data:`MIN_FLOPS`, or when the
rows' planned flops save less than :data:`MIN_GAIN`, the dense tree runs. Values are exact:
only structural zeros are skipped.
"""

from __future__ import annotations

import itertools
import math
import weakref
from dataclasses import dataclass

import torch

from .._memory import check_allocation, memory_limit
from . import _paths as paths
from ._execute import execute

__all__ = ["MaskedPlan", "masked_plan", "run_masked", "MIN_FLOPS", "MAX_DENSITY", "MAX_ELEMENTS", "MAX_LOOPED", "MAX_COMBOS", "MAX_MASKS", "ESTIMATE_MAX_INPUTS", "MIN_GAIN"]

#: Only contractions of at least this many flops are masked (a row costs a few torch calls).
MIN_FLOPS = 1e8
#: Largest fraction of non-zero entries for an input to count as a mask.
MAX_DENSITY = 0.75
#: Largest mask (entries): position masks are small; weight matrices are never masks.
MAX_ELEMENTS = 4096
#: At most this many masks are looped together (an orbit of composed layers holds one per
#: copy: every subset would be exponentially many), and at most this many row combinations.
MAX_LOOPED = 2
MAX_COMBOS = 64
#: Contractions holding more masks than this run dense (planning their subsets would cost
#: more than it saves).
MAX_MASKS = 4
#: A cost estimate prices rows only for networks of at most this many tensors (one layer's
#: orbits; an estimate does not plan rows of composed models' large networks).
ESTIMATE_MAX_INPUTS = 32
#: Least fraction of the dense flops the rows must save.
MIN_GAIN = 0.2

_PATTERNS: dict = {}  # id(array) -> (weakref, pattern): masks are constants, read once


@dataclass(frozen=True)
class _Mask:
    """Input ``k`` as a mask: looped index ``t`` (axis of ``k``), restricted index ``s``, and
    per row of ``t`` the support on ``s``."""

    k: int
    t: str
    s: str
    rows: tuple[tuple[int, ...], ...]


@dataclass
class MaskedPlan:
    """The rows of a masked contraction: per combination of looped rows, the sub-network's
    tree and how each input is cut (see :func:`run_masked`)."""

    masks: tuple[_Mask, ...]
    combos: list  # [(tree, [(input k, [(axis, row or support)] or ("row", r))], out_index)]
    flops: float


def _matrix(x: torch.Tensor, inds, m_t: str, m_s: str, sizes) -> torch.Tensor:
    """A mask input as its ``(t, s)`` matrix (its other axes have size one)."""
    a, b = [i for i in inds if sizes[i] > 1]
    matrix = x.reshape(sizes[a], sizes[b])
    return matrix if a == m_t else matrix.T


def _pattern(x: torch.Tensor, matrix: torch.Tensor, key) -> tuple[tuple[int, ...], ...]:
    """Per row of ``matrix`` (a view of ``x``), the columns of its non-zero entries; cached per
    array, so a constant mask is read to the host once, not once per orbit."""
    hit = _PATTERNS.get((id(x), key))
    if hit is not None and hit[0]() is x:
        return hit[1]
    nz = (matrix != 0).cpu()
    pattern = tuple(tuple(int(j) for j in torch.nonzero(row).flatten()) for row in nz)
    _PATTERNS[(id(x), key)] = (weakref.ref(x), pattern)
    if len(_PATTERNS) > 4096:
        for k in [k for k, (ref, _) in _PATTERNS.items() if ref() is None]:
            del _PATTERNS[k]
    return pattern


def _contiguous(cols: tuple[int, ...]) -> bool:
    return list(cols) == list(range(cols[0], cols[0] + len(cols))) if cols else True


def _masks(equation, arrays) -> list[_Mask]:
    sizes, output = equation.size_dict, set(equation.output)
    found, used = [], set()
    for k, (inds, x) in enumerate(zip(equation.inputs, arrays)):
        big = [i for i in inds if sizes[i] > 1]
        if len(big) != 2 or x.numel() > MAX_ELEMENTS or x.device.type == "meta" or used & set(big):
            continue
        a, b = big
        t, s = (a, b) if b not in output or a in output else (b, a)  # prefer an s summed over
        pattern = _pattern(x, _matrix(x, inds, t, s, sizes), t == a)
        nonzero = sum(len(r) for r in pattern)
        if nonzero > MAX_DENSITY * sizes[t] * sizes[s] or nonzero == 0:
            continue
        if s in output and not all(_contiguous(r) for r in pattern):
            continue  # a row fills a block of the output: its support must be a range
        found.append(_Mask(k, t, s, pattern))
        used |= {t, s}
    return found


def _rows(eq, masks: tuple[_Mask, ...], itemsize: int, limit, estimate: bool = False) -> MaskedPlan | None:
    """The row-by-row plan over ``masks`` (other masks stay dense inputs), or ``None`` if a
    row's contraction would not fit the memory limit (``estimate``: rows get known or greedy
    paths, never a search, as in :func:`tnsim.plan._contract.plan`)."""
    find = paths.known_or_greedy_tree if estimate else paths.find_tree
    drop = {m.k for m in masks}
    combos, total = [], 0.0
    for rows in itertools.product(*[range(len(m.rows)) for m in masks]):
        fixed = {m.t: r for m, r in zip(masks, rows)}
        support = {m.s: m.rows[r] for m, r in zip(masks, rows)}
        if any(not cols for cols in support.values()):
            continue  # an empty row contributes nothing
        inputs, cuts, sizes = [], [], dict(eq.size_dict)
        for s, cols in support.items():
            sizes[s] = len(cols)
        for k, inds in enumerate(eq.inputs):
            if k in drop:
                continue
            cut = [(a, fixed[i]) for a, i in enumerate(inds) if i in fixed]
            cut += [(a, support[i]) for a, i in enumerate(inds) if i in support]
            inputs.append(tuple(i for i in inds if i not in fixed))
            cuts.append((k, cut))
        for m, r in zip(masks, rows):  # the row's values, a vector on s
            inputs.append((m.s,))
            cuts.append((m.k, ("row", r)))
        output = tuple(i for i in eq.output if i not in fixed)
        tree = find(inputs, output, sizes)
        if limit is not None and tree.max_size() * itemsize > limit:
            return None  # the dense tree knows how to slice
        out_index = tuple(
            fixed[i] if i in fixed else slice(support[i][0], support[i][0] + len(support[i])) if i in support
            else slice(None)
            for i in eq.output
        )
        combos.append((tree, cuts, out_index))
        total += float(tree.total_flops())
    return MaskedPlan(masks, combos, total)


def masked_plan(contraction, arrays, itemsize: int, estimate: bool = False) -> MaskedPlan | None:
    """How to run ``contraction`` row by row over (some of) its masks, or ``None`` where the
    dense tree is cheaper or the contraction too small. Every set of at most
    :data:`MAX_LOOPED` of its masks with at most :data:`MAX_COMBOS` row combinations is
    planned (looping over fewer masks recomputes less of what does not depend on them) and
    the cheapest kept; a contraction with more than :data:`MAX_MASKS` masks (composed layers'
    orbits) runs dense; decided once per contraction and mask pattern (``estimate``: for a cost
    estimate, with quick paths, kept apart)."""
    eq = contraction.equation
    if contraction.flops < MIN_FLOPS:
        return None
    if estimate and len(eq.inputs) > ESTIMATE_MAX_INPUTS:
        return None  # a composed model's orbit: priced dense (planning its rows took minutes)
    masks = _masks(eq, arrays)
    if len(masks) > MAX_MASKS:
        return None
    key = (estimate,) + tuple((m.k, m.t, m.s, m.rows) for m in masks)
    cache = contraction.masked
    if key in cache:
        return cache[key]
    best, limit = None, memory_limit()
    for n in range(min(len(masks), MAX_LOOPED), 0, -1):
        for subset in itertools.combinations(masks, n):
            if math.prod(len(m.rows) for m in subset) > MAX_COMBOS:
                continue
            plan = _rows(eq, subset, itemsize, limit, estimate)
            if plan is not None and (best is None or plan.flops < best.flops):
                best = plan
    if best is not None and best.flops > (1 - MIN_GAIN) * contraction.flops:
        best = None
    cache[key] = best
    return best


def _cut(x: torch.Tensor, cut) -> torch.Tensor:
    """An input restricted to one row combination: fixed axes selected, supports taken."""
    for axis, what in sorted(cut, key=lambda c: -c[0]):  # from the last axis: positions stay valid
        if isinstance(what, int):
            x = x.select(axis, what)
        elif _contiguous(what):
            x = x.narrow(axis, what[0], len(what))  # a contiguous support: a view
        else:
            x = x.index_select(axis, torch.as_tensor(what, device=x.device))
    return x


def run_masked(plan: MaskedPlan, equation, arrays: list[torch.Tensor]) -> torch.Tensor:
    """Contract row combination by row combination (see :class:`MaskedPlan`)."""
    sizes = equation.size_dict
    shape = [sizes[i] for i in equation.output]
    like = arrays[0]
    check_allocation(shape, like.element_size(), "a contraction's result")
    out = torch.zeros(shape, dtype=like.dtype, device=like.device)
    masks = {m.k: m for m in plan.masks}
    for tree, cuts, out_index in plan.combos:
        ops = []
        for k, cut in cuts:
            if k in masks:  # a mask: its row's values on the support
                m, r = masks[k], cut[1]
                matrix = _matrix(arrays[k], equation.inputs[k], m.t, m.s, sizes)
                ops.append(matrix[r].index_select(0, torch.as_tensor(m.rows[r], device=matrix.device)))
            else:
                ops.append(_cut(arrays[k], cut))
        out[out_index] += execute(tree, ops).to(out.dtype)
    return out
