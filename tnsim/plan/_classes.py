r"""Isomorphic doubled networks share one searched path.

The orbits of one comparison are mostly the same network up to relabelling: pairing copy 1
with copy 2 and copy 2 with copy 1 swaps which tensors meet, not the shapes that meet (the
two-score-pair attention layer's 977 orbits fall into 9 classes). A path is a sequence of
pairwise merges of input positions, so a path searched for one network is a valid path for
any other, and for an isomorphic one (tensors and indices matched, sizes and output legs kept)
it has the same cost.

Networks are bucketed by a Weisfeiler–Lehman hash of their tensor/index graph (networkx),
nodes labelled by index size and whether the index is an output. Within a bucket, an
isomorphism with a network searched before (networkx's VF2, about a millisecond against
about ten for a search) carries its path over, tensor by tensor; the path is kept only if its
flops and largest intermediate equal those it was searched with, so a wrong match costs one
check and falls back to a search, never a worse path.
"""

from __future__ import annotations

import cotengra as ctg
import networkx as nx

from .. import _caches

__all__ = ["structure_class", "transferred", "remember", "WL_ITERATIONS", "CLASS_MEMBERS"]

#: Colour refinement rounds (enough to separate the copies of one doubled network).
WL_ITERATIONS = 3
#: Searched representatives kept per hash bucket.
CLASS_MEMBERS = 8

_CLASSES = _caches.memo("isomorphism classes", maxsize=4096)


def _graph(inputs, output, size_dict) -> nx.Graph:
    """Tensors (integer nodes, label ``T``) joined to their indices (nodes ``i<name>``,
    labelled by size, ``o`` marking an output)."""
    graph = nx.Graph()
    outs = set(output)
    for k, inds in enumerate(inputs):
        graph.add_node(k, label="T")
        for i in inds:
            graph.add_node(f"i{i}", label=f"{size_dict[i]}{'o' if i in outs else ''}")
            graph.add_edge(k, f"i{i}")
    for i in output:  # an output index no tensor holds (a broadcast leg)
        graph.add_node(f"i{i}", label=f"{size_dict[i]}o")
    return graph


def structure_class(inputs, output, size_dict) -> tuple[str, nx.Graph]:
    """``(hash, graph)``: the network's bucket (Weisfeiler–Lehman hash of its graph) and the
    graph itself."""
    graph = _graph(inputs, output, size_dict)
    return nx.weisfeiler_lehman_graph_hash(graph, node_attr="label", iterations=WL_ITERATIONS), graph


def _same_label(x: dict, y: dict) -> bool:
    return x["label"] == y["label"]


def _carried(tree: ctg.ContractionTree, mapping: dict, inputs, output, size_dict):
    """``tree``'s merges replayed on another network, tensor ``k`` becoming ``mapping[k]``."""
    n = len(inputs)
    ssa = [tuple(mapping[i] if i < n else i for i in pair) for pair in tree.get_ssa_path()]
    return ctg.ContractionTree.from_path(inputs, output, size_dict, ssa_path=ssa)


def transferred(key: str, graph: nx.Graph, inputs, output, size_dict) -> ctg.ContractionTree | None:
    """The path of an isomorphic network searched before (matched by VF2), carried over and
    checked to cost the same, or ``None``."""
    for known, tree in _CLASSES.get(key, ()):
        matcher = nx.isomorphism.GraphMatcher(known, graph, node_match=_same_label)
        if not matcher.is_isomorphic():
            continue
        mapping = {k: v for k, v in matcher.mapping.items() if isinstance(k, int)}
        candidate = _carried(tree, mapping, inputs, output, size_dict)
        if candidate.total_flops() == tree.total_flops() and candidate.max_size() == tree.max_size():
            return candidate
    return None


def remember(key: str, graph: nx.Graph, tree: ctg.ContractionTree) -> None:
    """Keep a freshly searched tree as a representative of its bucket."""
    members = _CLASSES.setdefault(key, [])
    if len(members) < CLASS_MEMBERS:
        members.append((graph, tree))
