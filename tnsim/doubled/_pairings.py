r"""Which pairings of input copies a doubled network sums over, one per orbit.

A measure's kernel declares a *scheme* (:attr:`tnsim.measures.Kernel.scheme`):

* ``"bijections"`` — every copy of *a* (virtual copies included) with one of *b*; the sum is
  :math:`\frac{1}{K!}\sum_\sigma`, one term per double coset of the two terms' groups;
* ``"matchings"`` — Wick matchings (partial if the kernel says so) of all copies of the
  sides, up to relabelling by the terms' groups; virtual copies are fixed singletons;
* ``"partitions"`` — set partitions of all copies into blocks of at most
  :attr:`~tnsim.measures.Kernel.max_block` copies (the cumulant expansion of independent
  inputs), up to the terms' groups.

A pairing is ``(rep, size, blocks)``: the orbit representative (hashable, part of the plan
key), the orbit size, and the blocks as tuples of copies ``(side index, copy index)``.
"""

from __future__ import annotations

import math

from .. import _caches
from ..errors import StructureError
from ..ir._groups import (
    Perm,
    bijection_orbits,
    count_bijection_orbits,
    count_matching_orbits,
    count_partition_orbits,
    matching_orbits,
    partition_orbits,
    shift,
)
from ..ir._term import Term, copy_support
from ._sides import Side

__all__ = ["pairings", "live_pairings", "vanishing_rule", "count_orbits", "aligned_blocks", "homogenised_group"]

Copy = tuple[int, int]
Pairing = tuple[tuple, int, list[tuple[Copy, ...]]]


def homogenised_group(term: Term, virtual: int) -> tuple[Perm, ...]:
    """The term's group extended by all permutations of its virtual (padding) copies."""
    k, n = term.degree, term.degree + virtual
    gens = [tuple(g) + tuple(range(k, n)) for g in term.group]
    for i in range(k, n - 1):
        p = list(range(n))
        p[i], p[i + 1] = i + 1, i
        gens.append(tuple(p))
    return tuple(gens)


@_caches.cached("orbits")
def _orbits(scheme: str, k_a: int, gens_a: tuple, k_b: int, gens_b: tuple, flag) -> tuple:
    """Orbit representatives and sizes of one pair of copy sets (cached per structure)."""
    if scheme == "bijections":
        return tuple(bijection_orbits(k_a, list(gens_a), list(gens_b)))
    n = k_a + k_b
    gens = shift(list(gens_a), 0, n) + shift(list(gens_b), k_a, n)
    if scheme == "matchings":
        return tuple(matching_orbits(n, gens, flag))
    if scheme == "partitions":
        return tuple(partition_orbits(n, gens, flag))
    raise StructureError(f"unknown pairing scheme {scheme!r}")


def _flag(kernel) -> object:
    return kernel.max_block if kernel.scheme == "partitions" else bool(kernel.partial)


def pairings(sides: list[Side], kernel) -> tuple[list[Pairing], float]:
    """Orbit representatives as ``(rep, size, blocks)``, and the normalisation."""
    scheme = kernel.scheme
    if scheme == "bijections":
        if len(sides) != 2:
            raise StructureError("the tensor measure pairs two models; it has no single-model mean")
        ks = [s.degree for s in sides]
        gens = [homogenised_group(s.term, s.virtual) for s in sides]
        out = [
            (rep, size, [((0, i), (1, j)) for i, j in enumerate(rep)])
            for rep, size in _orbits(scheme, ks[0], gens[0], ks[1], gens[1], False)
        ]
        return out, 1.0 / math.factorial(ks[0])
    ks = [s.term.degree for s in sides]
    k_b = ks[1] if len(sides) > 1 else 0
    g_b = sides[1].term.group if len(sides) > 1 else ()
    fixed = [((si, c),) for si, s in enumerate(sides) for c in range(s.term.degree, s.degree)]

    def where(p: int) -> Copy:
        return (0, p) if p < ks[0] else (1, p - ks[0])

    out = []
    for rep, size in _orbits(scheme, ks[0], sides[0].term.group, k_b, g_b, _flag(kernel)):
        if scheme == "matchings":  # rep[p] is p's partner (p itself when unpaired)
            blocks = [(where(p), where(q)) for p, q in enumerate(rep) if p < q]
            blocks += [(where(p),) for p, q in enumerate(rep) if p == q]
        else:  # rep is a tuple of blocks of positions
            blocks = [tuple(where(p) for p in b) for b in rep]
        out.append((rep, size, fixed + blocks))
    return out, 1.0


def count_orbits(kernel, ta: Term, tb: Term, va: int, vb: int) -> int:
    """Number of orbits of pairings of one term pair (Burnside's lemma; enumerates nothing)."""
    if kernel.scheme == "bijections":
        k = ta.degree + va
        return count_bijection_orbits(k, list(homogenised_group(ta, va)), list(homogenised_group(tb, vb)))
    if kernel.scheme == "matchings":
        return count_matching_orbits(ta.degree, list(ta.group), tb.degree, list(tb.group), bool(kernel.partial))
    return count_partition_orbits(ta.degree, list(ta.group), tb.degree, list(tb.group), kernel.max_block)


def aligned_blocks(sides: list[Side], kernel) -> list[tuple[Copy, ...]]:
    """One cheap representative pairing (copy ``i`` of *a* with copy ``i`` of *b*), for cost
    estimates when the orbits are too many to enumerate."""
    if kernel.scheme == "bijections":
        return [((0, i), (1, i)) for i in range(sides[0].degree)]
    ka, kb = (s.term.degree for s in sides)
    blocks = [((0, i), (1, i)) for i in range(min(ka, kb))]
    rest = [(0, i) for i in range(len(blocks), ka)] + [(1, i) for i in range(len(blocks), kb)]
    while len(rest) >= 2 and not kernel.partial and kernel.scheme == "matchings":
        blocks.append((rest.pop(0), rest.pop(0)))
    blocks += [(c,) for c in rest]
    return blocks + [((si, c),) for si, s in enumerate(sides) for c in range(s.term.degree, s.degree)]


def vanishing_rule(sides: list[Side], kernel):
    """A test ``vanishes(blocks)`` for pairings that are exactly zero, or ``None``.

    A pairing with a block of a size whose kernel is zero
    (:meth:`tnsim.measures.Kernel.zero_size`, e.g. odd cumulants of a symmetric marginal)
    vanishes. Kernels that are ``decoupled`` (the constant coordinate of a padded copy never
    meets a real one) have support rules too: a block that joins a copy to a coordinate it
    cannot reach is zero (:meth:`tnsim.measures.Kernel.reaches`), and so is the whole orbit
    (the support pattern is invariant under a term's group).
    """
    copies = sum(s.degree for s in sides)
    zero = frozenset(r for r in range(2, copies + 1) if kernel.zero_size(r))
    support = _support_rule(sides, kernel)
    if not zero:
        return support
    if support is None:
        return lambda blocks: any(len(b) in zero for b in blocks)
    return lambda blocks: any(len(b) in zero for b in blocks) or support(blocks)


def _support_rule(sides: list[Side], kernel):
    """The ``decoupled`` kernels' rule: a block must reach the coordinates its copies use."""
    if not kernel.decoupled:
        return None
    flags = {}
    for si, s in enumerate(sides):
        padded = kernel.spaces["ab"[si]].padded
        sup = copy_support(s.term) if padded else ((False, True),) * s.term.degree
        for c in range(s.degree):
            flags[(si, c)] = sup[c] if c < s.term.degree else (True, False)
    if all(f == (True, True) for f in flags.values()) and not kernel.real_mean_zero:
        return None

    def vanishes(blocks) -> bool:
        return any(not kernel.reaches([flags[c] for c in b]) for b in blocks)

    return vanishes


_LIVE = _caches.memo("live pairings", maxsize=4096)


def live_pairings(sides: list[Side], kernel) -> tuple[list[Pairing], float]:
    """:func:`pairings` without the exactly-zero ones (:func:`vanishing_rule`), remembered per
    structure: the terms' structures, virtual copies and supports, and the kernel's rules
    (including which block sizes vanish: two product measures of one family can differ there,
    e.g. a symmetric and a skewed marginal).

    A matrix of checkpoints meets the same term pairs in every block; enumerating and
    filtering their orbits once (rather than per block) keeps the warm loop to contractions.
    A kernel with ``min_cross = k`` keeps only pairings with at least ``k`` blocks joining a
    copy of *a* to a copy of *b* (its caller adds the others in closed form: see the Gaussian
    closure's first-order term in :mod:`tnsim.methods._recursive`).
    """
    copies = sum(s.degree for s in sides)
    min_cross = getattr(kernel, "min_cross", 0)
    key = (
        min_cross, kernel.scheme, _flag(kernel), kernel.decoupled, kernel.const_blocks, kernel.real_mean_zero,
        tuple(r for r in range(2, copies + 1) if kernel.zero_size(r)),
        tuple(kernel.spaces[lab].padded for lab in "ab"),
        tuple((s.term.structure, s.virtual, copy_support(s.term) if kernel.decoupled else None) for s in sides),
    )
    hit = _LIVE.get(key)
    if hit is None:
        reps, norm = pairings(sides, kernel)
        vanishes = vanishing_rule(sides, kernel)
        if vanishes is not None:
            reps = [r for r in reps if not vanishes(r[2])]
        if min_cross:  # the kernel sums the pairings with fewer cross blocks in closed form
            reps = [r for r in reps if sum(len(b) == 2 and b[0][0] != b[1][0] for b in r[2]) >= min_cross]
        hit = _LIVE[key] = (reps, norm)
    return hit
