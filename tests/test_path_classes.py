"""Isomorphic networks share one searched path (tnsim.plan._classes), checked against einsum."""

import random

import pytest
import torch

import tnsim
from tnsim.plan import _classes as classes
from tnsim.plan import _paths as paths


def ring(perm=None, names=None, sizes=(5, 6, 7, 8, 9, 10, 11)):
    """A ring of matrices with one chord and one open leg (a network worth a search)."""
    n = len(sizes)
    inputs = [(f"r{k}", f"r{(k + 1) % n}") for k in range(n)] + [("r0", "r3", "x")]
    output = ("x",)
    size_dict = {f"r{k}": s for k, s in enumerate(sizes)} | {"x": 4}
    if names is not None:
        inputs = [tuple(names[i] for i in t) for t in inputs]
        output = tuple(names[i] for i in output)
        size_dict = {names[i]: v for i, v in size_dict.items()}
    if perm is not None:
        inputs = [inputs[p] for p in perm]
    return inputs, output, size_dict


def einsum_value(inputs, output, size_dict, arrays):
    letters = {i: chr(97 + k) for k, i in enumerate(size_dict)}
    eq = ",".join("".join(letters[i] for i in t) for t in inputs) + "->" + "".join(letters[i] for i in output)
    return torch.einsum(eq, *arrays)


@pytest.fixture
def searches(monkeypatch, tmp_path):
    monkeypatch.setenv("TNSIM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(paths, "QUICK_FLOPS", 0)  # every network goes past the greedy shortcut
    tnsim.clear_cache(disk=False)
    count = [0]
    search = paths._search

    def counted(*args):
        count[0] += 1
        return search(*args)

    monkeypatch.setattr(paths, "_search", counted)
    yield count
    tnsim.clear_cache(disk=False)


def test_an_isomorphic_network_reuses_the_path_and_contracts_the_same(searches):
    first = ring()
    tree = paths.find_tree(*first)
    assert searches[0] == 1
    rng = random.Random(0)
    perm = list(range(len(first[0])))
    rng.shuffle(perm)
    names = {i: f"renamed_{i}" for i in first[2]}
    other = ring(perm=perm, names=names)
    carried = paths.find_tree(*other)
    assert searches[0] == 1  # no second search
    assert carried.total_flops() == tree.total_flops() and carried.max_size() == tree.max_size()
    # the carried path contracts the permuted network correctly (einsum is the oracle)
    g = torch.Generator().manual_seed(0)
    inputs, output, size_dict = other
    canon_in, canon_out, canon_sizes = paths._canonical(inputs, output, size_dict)
    arrays = [torch.randn([size_dict[i] for i in t], generator=g, dtype=torch.float64) for t in inputs]
    got = carried.contract(arrays)
    torch.testing.assert_close(got, einsum_value(inputs, output, size_dict, arrays), rtol=1e-12, atol=1e-12)


def test_a_network_that_only_shares_the_hash_is_searched(searches, monkeypatch):
    """Same bucket (the hash forced equal), different graph: VF2 finds no isomorphism and
    the network gets its own search, whose path is right for it."""
    real = classes.structure_class
    monkeypatch.setattr(paths, "structure_class", lambda *a: ("one bucket", real(*a)[1]))
    paths.find_tree(*ring())
    other = ring(sizes=(5, 6, 7, 8, 9, 10, 12))  # one size differs: not isomorphic
    tree = paths.find_tree(*other)
    assert searches[0] == 2
    g = torch.Generator().manual_seed(1)
    inputs, output, size_dict = other
    arrays = [torch.randn([size_dict[i] for i in t], generator=g, dtype=torch.float64) for t in inputs]
    torch.testing.assert_close(tree.contract(arrays), einsum_value(inputs, output, size_dict, arrays),
                               rtol=1e-12, atol=1e-12)


def test_a_carried_path_that_costs_more_is_not_used(searches, monkeypatch):
    """A mapping that is not an isomorphism (forced here) is caught by the cost check and the
    network is searched."""
    first = ring()
    tree = paths.find_tree(*first)
    shift = {k: (k + 3) % 8 for k in range(8)}  # tensors matched wrongly

    class Wrong:
        def __init__(self, known, graph, node_match=None):
            self.mapping = shift

        def is_isomorphic(self):
            return True

    canon = paths._canonical(*first)
    wrong = classes._carried(tree, shift, *canon)
    assert wrong.total_flops() != tree.total_flops()  # the forced mapping really is worse
    monkeypatch.setattr(classes.nx.isomorphism, "GraphMatcher", Wrong)
    monkeypatch.setattr(paths, "_key", lambda *a: "another key")  # not found in memory
    paths.find_tree(*first)
    assert searches[0] == 2
