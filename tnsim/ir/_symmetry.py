r"""Symmetries of a term found from its structure, checked numerically.

A permutation :math:`\pi` of a term's input copies is a symmetry when
:math:`T(x_{\pi(1)},\dots,x_{\pi(k)}) = T(x_1,\dots,x_k)`. Whenever the tensor network has a
graph automorphism that fixes the output legs, maps every tensor to one holding *identical
data* on the same axes, and permutes the copies by :math:`\pi`, then :math:`\pi` is a symmetry
(the relabelled network is the same network). Examples: the two (query, key) factor pairs of a
squared attention score, or the blocks of a product ``x * x``.

The graph is bipartite: tensor nodes (labelled by their data class) and index nodes (output
legs labelled by their axis, all other indices alike), plus one node per copy joined to its
legs; edges carry the axis position. Automorphisms come from networkx's VF2 matcher (capped),
and each generator kept is confirmed with :meth:`Term.check_invariance` before use: the
exact method relies on these groups, so a wrong one must never slip through.
"""

from __future__ import annotations

from dataclasses import replace

import networkx as nx
import torch
from networkx.algorithms.isomorphism import GraphMatcher

from ..errors import StructureError
from ._groups import Perm, StabiliserChain, minimal_generators
from ._term import Term

__all__ = ["find_symmetries", "verify_symmetries", "with_symmetries"]

#: stop listing graph automorphisms after this many (the group they generate is kept)
MAX_AUTOMORPHISMS = 2000


def _data_classes(term: Term) -> list[int]:
    """Class label per tensor: equal shape, dtype and values share a label."""
    reps: list[torch.Tensor] = []
    labels = []
    for x in term.arrays:
        for k, r in enumerate(reps):
            if r.shape == x.shape and r.dtype == x.dtype and (r is x or torch.equal(r, x)):
                labels.append(k)
                break
        else:
            reps.append(x)
            labels.append(len(reps) - 1)
    return labels


def term_graph(term: Term) -> nx.Graph:
    """The labelled graph whose automorphisms fixing outputs are the structural symmetries."""
    g = nx.Graph()
    out_axis = {leg: a for a, leg in enumerate(term.outputs)}
    for i in term.size_dict:
        g.add_node(("i", i), label=("out", out_axis[i]) if i in out_axis else ("index", term.size_dict[i]))
    for k, (ix, lab) in enumerate(zip(term.inds, _data_classes(term))):
        g.add_node(("t", k), label=("tensor", lab))
        for a, i in enumerate(ix):
            g.add_edge(("t", k), ("i", i), axis=("t", a))
    for c, legs in enumerate(term.copies):
        g.add_node(("c", c), label=("copy",))
        for a, i in enumerate(legs):
            g.add_edge(("c", c), ("i", i), axis=("c", a))
    return g


def find_symmetries(term: Term, limit: int = MAX_AUTOMORPHISMS) -> tuple[Perm, ...]:
    """Generators of the copy permutations induced by graph automorphisms (not yet verified)."""
    k = term.degree
    if k < 2 or term.batch is not None:
        return ()
    g = term_graph(term)
    matcher = GraphMatcher(
        g, g,
        node_match=lambda a, b: a["label"] == b["label"],
        edge_match=lambda a, b: a["axis"] == b["axis"],
    )
    found: list[Perm] = []
    seen = {tuple(range(k))}
    for count, mapping in enumerate(matcher.isomorphisms_iter()):
        perm = tuple(mapping[("c", c)][1] for c in range(k))
        if perm not in seen:
            seen.add(perm)
            found.append(perm)
        if count + 1 >= limit:
            break
    return minimal_generators(found, k)


def verify_symmetries(term: Term, gens) -> None:
    """Raise :class:`StructureError` unless every generator leaves the term unchanged."""
    k = term.degree
    for g in gens:
        g = tuple(int(v) for v in g)
        if sorted(g) != list(range(k)):
            raise StructureError(f"{g} is not a permutation of the term's {k} input copies")
        if not term.check_invariance(g):
            raise StructureError(
                f"the term ({', '.join(term.tags)}) is not invariant under the copy permutation {g}"
            )


def with_symmetries(term: Term, declared=None, detect: bool = True) -> Term:
    """The term with its group enlarged by ``declared`` generators and detected automorphisms.

    Every new generator is verified numerically; declared ones that fail raise
    :class:`StructureError`, detected ones that fail (never expected) are dropped.
    """
    k = term.degree
    gens = list(term.group)
    if declared:
        declared = [tuple(int(v) for v in g) for g in declared]
        verify_symmetries(term, declared)
        gens += declared
    if detect and k >= 2:
        known = StabiliserChain(gens, k)
        for g in find_symmetries(term):
            if not known.contains(g) and term.check_invariance(g):
                gens.append(g)
                known.add(g)
    gens = minimal_generators(gens, k)
    if gens == tuple(term.group):
        return term
    return replace(term, group=gens)

