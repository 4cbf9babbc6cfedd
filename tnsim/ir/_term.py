r"""Terms: tensor networks with named input copies and output legs.

A multilinear model is a sum of terms. A term of degree :math:`k` is a tensor network whose
open legs are

* ``outputs``: the legs of the model output (one per output axis: ``(feature,)`` for vectors,
  ``(position, feature)`` for sequences), and
* ``copies``: :math:`k` groups of legs, one group per copy of the input; copy :math:`c` is
  contracted with :math:`\tilde x` (padded input where the network uses biases).

so that :math:`t(x)_{o} = \mathrm{coeff}\cdot T_{o\,i_1 \dots i_k}\,\tilde x_{i_1}\cdots\tilde x_{i_k}`.

A term also carries a *symmetry group* of copy permutations that leave its tensor unchanged
(for example the swap of the two inputs of a symmetrised bilinear node). The exact method
sums one contraction per orbit of this group.

Index names are canonicalised on construction (copies first, then outputs, then internal legs),
so two terms built the same way from different weights have equal :attr:`Term.structure` and
share contraction plans.

Arrays may carry one leading *batch* axis (a stack of models with identical structure); the
batch axis is not part of :attr:`Term.inds`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from functools import cached_property

import cotengra as ctg
import numpy as np
import torch

from ..errors import StructureError
from ._groups import (
    Generators,
    Perm,
    _small_generating_set,
    closure,
    group_order,
    point_orbits,
    shift,
    tuple_orbits,
)

__all__ = ["Term", "cp_term", "compose_terms", "evaluate_term", "copy_support"]


@dataclass(frozen=True, eq=False)
class Term:
    """One tensor network of a multilinear model.

    Parameters
    ----------
    inds
        Index names of each tensor (without the batch axis).
    arrays
        The tensors (``torch.Tensor``), in the same order as ``inds``.
    copies
        For each input copy, the index names of its legs (one per input axis). Copies may
        share position indices (a hyperindex), never feature indices.
    outputs
        Index names of the output legs, one per output axis.
    tags
        A name per tensor (the parameter it comes from), used in messages and drawings.
    group
        Generators of the copy permutations the tensor is invariant under (a plain tuple is
        wrapped as :class:`~tnsim.ir._groups.Generators`, order unknown).
    coeff
        Scalar multiplier.
    batch
        Size of the leading batch axis of every array, or ``None``.
    support
        Per copy, whether the term reads the constant / the real coordinates of a padded input
        (``None``: not known yet; see :func:`tnsim.contract.copy_support`). Lets the exact
        method skip pairings that are exactly zero.
    """

    inds: tuple[tuple[str, ...], ...]
    arrays: tuple[torch.Tensor, ...]
    copies: tuple[tuple[str, ...], ...]
    outputs: tuple[str, ...]
    tags: tuple[str, ...] = ()
    group: tuple[Perm, ...] = ()
    coeff: float = 1.0
    batch: int | None = None
    support: tuple[tuple[bool, bool], ...] | None = field(default=None, repr=False, compare=False)
    _canonical: bool = field(default=False, repr=False)

    def __post_init__(self):
        if not self.tags:
            object.__setattr__(self, "tags", tuple(f"T{i}" for i in range(len(self.inds))))
        if any(x.requires_grad for x in self.arrays):  # weights, not a graph to differentiate
            object.__setattr__(self, "arrays", tuple(x.detach() for x in self.arrays))
        if len(self.arrays) != len(self.inds) or len(self.tags) != len(self.inds):
            raise StructureError("a term needs one index tuple and one tag per array")
        off = 0 if self.batch is None else 1
        for ix, x, tag in zip(self.inds, self.arrays, self.tags):
            if x.dim() - off != len(ix):
                raise StructureError(
                    f"tensor {tag!r} has shape {tuple(x.shape)} but indices {ix}"
                    + (f" (plus a batch axis of {self.batch})" if off else "")
                )
            if off and x.shape[0] != self.batch:
                raise StructureError(f"tensor {tag!r} has batch size {x.shape[0]}, not {self.batch}")
        present = {i for ix in self.inds for i in ix}
        for leg in itertools.chain(self.outputs, *self.copies):
            if leg not in present:
                raise StructureError(f"open leg {leg!r} is on no tensor")
        for c, legs in enumerate(self.copies):
            if len(set(legs)) != len(legs):
                raise StructureError(f"copy {c} uses one index for two axes: {legs}")
        if not isinstance(self.group, Generators):
            object.__setattr__(self, "group", Generators(self.group))
        if not self._canonical:
            object.__setattr__(self, "inds", self._canonical_inds())
            object.__setattr__(self, "_canonical", True)
        self.size_dict  # validates sizes

    # --- structure -------------------------------------------------------------------------

    def _canonical_inds(self) -> tuple[tuple[str, ...], ...]:
        order: dict[str, str] = {}
        for c, legs in enumerate(self.copies):
            for a, leg in enumerate(legs):
                order.setdefault(leg, f"x{c}.{a}")
        for a, leg in enumerate(self.outputs):
            order.setdefault(leg, f"y.{a}")
        for ix in self.inds:
            for i in ix:
                order.setdefault(i, f"h{len(order)}")
        object.__setattr__(self, "copies", tuple(tuple(order[i] for i in c) for c in self.copies))
        object.__setattr__(self, "outputs", tuple(order[i] for i in self.outputs))
        return tuple(tuple(order[i] for i in ix) for ix in self.inds)

    @cached_property
    def size_dict(self) -> dict[str, int]:
        off = 0 if self.batch is None else 1
        sizes: dict[str, int] = {}
        for ix, x, tag in zip(self.inds, self.arrays, self.tags):
            for i, s in zip(ix, x.shape[off:]):
                if sizes.setdefault(i, int(s)) != int(s):
                    raise StructureError(
                        f"index {i!r} has size {sizes[i]} elsewhere but {int(s)} on {tag!r}"
                    )
        return sizes

    @property
    def degree(self) -> int:
        """Number of input copies."""
        return len(self.copies)

    @property
    def in_shape(self) -> tuple[int, ...]:
        sizes = self.size_dict
        shapes = {tuple(sizes[i] for i in c) for c in self.copies}
        if len(shapes) > 1:
            raise StructureError(f"input copies of one term have different shapes {shapes}")
        return shapes.pop() if shapes else ()

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(self.size_dict[i] for i in self.outputs)

    @cached_property
    def structure(self) -> tuple:
        """Hashable description of everything but the array values (and the coefficient)."""
        off = 0 if self.batch is None else 1
        shapes = tuple(tuple(int(s) for s in x.shape[off:]) for x in self.arrays)
        return (self.inds, shapes, self.copies, self.outputs, self.group)

    @cached_property
    def group_order(self) -> int:
        """Order of the symmetry group (carried from composition, or by Schreier–Sims)."""
        return group_order(self.group, self.degree)

    # --- views -----------------------------------------------------------------------------

    @property
    def tn(self):
        """The term as a ``quimb.tensor.TensorNetwork`` (batch axis, if any, named ``'batch'``)."""
        import quimb.tensor as qtn

        pre = () if self.batch is None else ("batch",)
        return qtn.TensorNetwork(
            [
                qtn.Tensor(x, inds=pre + ix, tags={tag})
                for ix, x, tag in zip(self.inds, self.arrays, self.tags)
            ],
            virtual=True,
        )

    def with_arrays(self, arrays, batch: int | None = None) -> "Term":
        """Same structure with new arrays (e.g. another checkpoint, or a stack of them)."""
        return replace(self, arrays=tuple(arrays), batch=batch, support=None)

    def scaled(self, c: float) -> "Term":
        return replace(self, coeff=self.coeff * float(c))

    def map_arrays(self, fn) -> "Term":
        return replace(self, arrays=tuple(fn(x) for x in self.arrays))

    def check_invariance(self, generator: Perm, atol: float = 1e-8) -> bool:
        """Numerically check that permuting copies by ``generator`` leaves the tensor unchanged."""
        gen = torch.Generator().manual_seed(0)
        dtype = self.arrays[0].dtype if self.arrays else torch.float64
        xs = [torch.randn(self.in_shape, generator=gen, dtype=torch.float64) for _ in self.copies]
        xs = [x.to(dtype=dtype, device=self.arrays[0].device) for x in xs]
        y = evaluate_term(self, xs)
        y_perm = evaluate_term(self, [xs[generator[c]] for c in range(self.degree)])
        return bool(torch.allclose(y, y_perm, atol=atol, rtol=1e-6))


def cp_term(
    core: torch.Tensor,
    factors: list[torch.Tensor],
    *,
    symmetric: bool = True,
    tags: tuple[str, ...] | None = None,
    batch: int | None = None,
) -> Term:
    r"""A CP node :math:`T_{o i_1\dots i_k} = \sum_r C_{o r}\prod_c F^{(c)}_{r i_c}`.

    With ``symmetric=True`` the node is replaced by its symmetrisation over all :math:`k!`
    orders of its inputs, written again as a CP node of rank :math:`k!\,r`
    (:math:`F'^{(c)}_{(\pi, r)} = F^{(\pi^{-1}(c))}_r`, :math:`C' = C/k!` repeated), which
    computes the same function and is invariant under the full symmetric group of its copies.
    ``batch`` marks a leading batch axis on every array.
    """
    k = len(factors)
    tags = tags or ("core",) + tuple(f"factor{c}" for c in range(k))
    if symmetric and k > 1:
        perms = list(itertools.permutations(range(k)))
        cat = -2  # hidden axis of factors is the second last, of the core the last
        new_factors = []
        for c in range(k):
            parts = [factors[p.index(c)] for p in perms]
            new_factors.append(torch.cat(parts, dim=cat))
        core = torch.cat([core] * len(perms), dim=-1) / math.factorial(k)
        factors = new_factors
        group = tuple(
            tuple(list(range(i)) + [i + 1, i] + list(range(i + 2, k))) for i in range(k - 1)
        )
    else:
        group = ()
    inds = (("o", "r"),) + tuple(("r", f"i{c}") for c in range(k))
    return Term(
        inds=inds,
        arrays=(core,) + tuple(factors),
        copies=tuple((f"i{c}",) for c in range(k)),
        outputs=("o",),
        tags=tags,
        group=group,
        batch=batch,
    )


def _prefixed(term: Term, prefix: str, rename: dict[str, str]) -> list[tuple[str, ...]]:
    return [tuple(rename.get(i, prefix + i) for i in ix) for ix in term.inds]


def compose_terms(outer: Term, inner: list[Term]) -> Term:
    """Plug ``inner[c]`` into copy ``c`` of ``outer`` (inner outputs meet outer copy legs).

    The composed group is generated by each inner term's group acting on its block of copies
    and by the block permutations of ``outer.group`` that map each block to a block fed by the
    same inner term (pass the same ``Term`` object for blocks that are equal).
    """
    if len(inner) != outer.degree:
        raise StructureError(f"outer term has {outer.degree} copies, got {len(inner)} inner terms")
    batch = outer.batch
    for u in inner:
        if u.batch != batch:
            raise StructureError("cannot compose terms with different batch sizes")
    inds = _prefixed(outer, "o.", {})
    arrays, tags = list(outer.arrays), list(outer.tags)
    copies: list[tuple[str, ...]] = []
    offsets = []
    for c, u in enumerate(inner):
        legs = tuple("o." + leg for leg in outer.copies[c])
        if len(legs) != len(u.outputs):
            raise StructureError(
                f"copy {c} has {len(legs)} legs but the plugged term has {len(u.outputs)} outputs"
            )
        rename = dict(zip(u.outputs, legs))
        inds += _prefixed(u, f"{c}.", rename)
        arrays += list(u.arrays)
        tags += list(u.tags)
        offsets.append(len(copies))
        copies += [tuple(rename.get(i, f"{c}.{i}") for i in legs_u) for legs_u in u.copies]
    n = len(copies)
    ids = [id(u) for u in inner]
    labels = [ids.index(i) for i in ids]
    stab = _outer_stabiliser(outer, labels)
    gens, lifted_order = _lifted(stab, outer.degree, offsets, [u.degree for u in inner], n)
    # inner groups: one block per orbit of the block permutations suffices (conjugates give
    # the rest); the group is (prod_c G_c) x| lifted, of order |lifted| prod_c |G_c|
    for orbit in point_orbits(stab, outer.degree):
        gens += shift(inner[orbit[0]].group, offsets[orbit[0]], n)
    order = lifted_order * math.prod(u.group_order for u in inner)
    coeff = outer.coeff * math.prod(u.coeff for u in inner)
    # each copy keeps the tensor that carries its feature leg, so it reads what it read before
    known = all(u.support is not None for u in inner)
    support = tuple(sup for u in inner for sup in u.support) if known else None
    out = Term(
        inds=tuple(inds),
        arrays=tuple(arrays),
        copies=tuple(copies),
        outputs=tuple("o." + o for o in outer.outputs),
        tags=tuple(tags),
        group=Generators(gens, order),
        coeff=coeff,
        batch=batch,
        support=support,
    )
    return out


def _outer_stabiliser(outer: Term, labels: list[int]) -> Generators:
    """The copy permutations of ``outer.group`` that map every copy to one fed by the same
    inner term: all of the group when one term feeds every copy (not listed), else listed
    (an outer term is one layer, its group small)."""
    if len(set(labels)) == 1:
        return outer.group
    elements = closure(outer.group, outer.degree)
    lab = np.asarray(labels)
    stab = elements[np.all(lab[elements] == lab[None], axis=1)]
    return Generators(_small_generating_set(stab), len(stab))


def _lifted(
    stab: Generators, k: int, offsets: list[int], degrees: list[int], n: int
) -> tuple[list[Perm], int]:
    """Generators and order of ``stab`` acting on the composed copies: block ``c`` (copies
    ``offsets[c]`` to ``offsets[c] + degrees[c] - 1``) moves as a whole to block ``g(c)``.

    The action is faithful (same order as ``stab``) unless some blocks are empty (degree-0
    inner terms)."""

    def lift(g: Perm) -> Perm:
        perm = list(range(n))
        for c, gc in enumerate(g):
            for j in range(degrees[c]):
                perm[offsets[c] + j] = offsets[gc] + j
        return tuple(perm)

    ident = tuple(range(n))
    gens = [p for p in dict.fromkeys(lift(g) for g in stab) if p != ident]
    if not gens:
        return [], 1
    return gens, group_order(stab, k) if min(degrees) > 0 else group_order(gens, n)


def expand_composition(outer: list[Term], inner: list[Term]) -> list[Term]:
    """Terms of ``sum(outer) o sum(inner)``: every outer copy fed by every inner term.

    Assignments of inner terms to copies that are equivalent under an outer term's group are
    merged into one term whose coefficient counts them.
    """
    out = []
    for t in outer:
        for tup, size, _ in tuple_orbits(t.degree, list(t.group), len(inner)):
            composed = compose_terms(t, [inner[i] for i in tup])
            out.append(composed.scaled(size))
    return out


def copy_support(term: Term, seen: dict | None = None) -> tuple[tuple[bool, bool], ...]:
    """Per copy of a term on a padded space: ``(uses constant, uses real features)``.

    Read off the one tensor carrying the copy's feature leg (``False`` only when that slice is
    exactly zero for every model of a stack, e.g. the embedding :func:`~tnsim.network.pad_input`
    puts on a copy); ``(True, True)`` when the leg is shared or several tensors carry it.
    Reading values synchronises with the device, so the result is stored on the term
    (``Term.support``) and carried over by :func:`~tnsim.network.stack`: a matrix of stacked
    checkpoints reads it once per model, never inside its block loop. Meta tensors (no values)
    get the conservative answer. ``seen`` remembers slices already read (keyed by the
    tensor's identity and axis) across the terms of one network.
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
                key = (id(x), ax)
                hit = seen.get(key) if seen is not None else None
                if hit is None:  # x is kept alive with its answer, so its id stays unique
                    hit = ((bool(x.narrow(ax, 0, 1).any()), bool(x.narrow(ax, 1, x.shape[ax] - 1).any())), x)
                    if seen is not None:
                        seen[key] = hit
                const, real = hit[0]
        out.append((const, real))
    out = tuple(out)
    object.__setattr__(term, "support", out)
    return out


def evaluate_term(term: Term, xs: list[torch.Tensor]) -> torch.Tensor:
    """Evaluate ``coeff * T(x_1, ..., x_k)`` for one input per copy (no batch axis)."""
    inputs = list(term.inds) + [tuple(c) for c in term.copies]
    arrays = list(term.arrays) + list(xs)
    return ctg.array_contract(arrays, inputs, term.outputs, optimize="greedy") * term.coeff
