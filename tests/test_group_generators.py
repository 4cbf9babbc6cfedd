"""Groups kept as generators: Schreier–Sims against listing, orders carried through composition.

A depth-12 residual bilinear stack has a term of 4096 input copies whose symmetry group
(the composition tree's automorphisms, 2^4095 elements) is never listed.
"""

import itertools
import random

import pytest
import torch

import tnsim
from tnsim.ir import _groups as groups
from tnsim.ir._term import compose_terms, cp_term


def random_gens(n: int, count: int, seed: int):
    rnd = random.Random(seed)
    out = []
    for _ in range(count):
        p = list(range(n))
        if rnd.random() < 0.5:  # a transposition or a random permutation
            i, j = rnd.sample(range(n), 2)
            p[i], p[j] = p[j], p[i]
        else:
            rnd.shuffle(p)
        out.append(tuple(p))
    return out


@pytest.mark.parametrize("n,count,seed", [(4, 1, 0), (5, 2, 1), (6, 2, 2), (7, 3, 3), (8, 2, 4), (8, 3, 5)])
def test_schreier_sims_order_and_membership_match_listing(n, count, seed):
    gens = random_gens(n, count, seed)
    listed = {tuple(int(v) for v in row) for row in groups.closure(gens, n)}
    chain = groups.StabiliserChain(gens, n)
    assert chain.order == len(listed)
    for p in itertools.islice(itertools.permutations(range(n)), 0, None, max(1, len(listed) // 50 or 1)):
        assert chain.contains(p) == (p in listed)


def test_minimal_generators_generate_the_same_group():
    gens = random_gens(6, 3, 7)
    gens = gens + [groups._compose(gens[0], gens[1]), tuple(range(6)), gens[2]]  # redundant ones
    kept = groups.minimal_generators(gens, 6)
    assert len(kept) <= 3
    full = {tuple(int(v) for v in row) for row in groups.closure(gens, 6)}
    assert {tuple(int(v) for v in row) for row in groups.closure(kept, 6)} == full
    assert kept.order == len(full)


def tree_term(depth: int, leaves_differ: bool = False):
    """A composition tree of symmetric bilinear nodes (d = 2)."""
    torch.manual_seed(depth)
    node = lambda: cp_term(torch.randn(2, 3).double(), [torch.randn(3, 2).double(), torch.randn(3, 2).double()])  # noqa: E731
    t = node()
    for _ in range(depth - 1):
        outer = node()
        t = compose_terms(outer, [t, node()] if leaves_differ else [t, t])
    return t


@pytest.mark.parametrize("depth,differ", [(2, False), (3, False), (3, True), (4, False)])
def test_composed_order_is_the_listed_order(depth, differ):
    t = tree_term(depth, differ)
    listed = len(groups.closure(t.group, t.degree))
    assert t.group.order == listed  # carried from the composition
    assert groups.StabiliserChain(t.group, t.degree).order == listed  # and recomputed
    assert all(t.check_invariance(g) for g in t.group)


def test_composed_tree_with_different_subtrees_only_swaps_equal_ones():
    t = tree_term(3, leaves_differ=True)
    # ((t1, n1), n2) with t1 = one node: each node swaps its copies; no subtrees are swapped
    assert t.degree == 6 and t.group.order == 2**3
    swap_blocks = (2, 3, 0, 1, 4, 5)  # t1 <-> n1: equal degrees, different weights
    assert not groups.StabiliserChain(t.group, 6).contains(swap_blocks)


@pytest.mark.parametrize("depth", [6, 12])
def test_deep_residual_stack_compiles_with_generators(depth):
    torch.manual_seed(0)
    m = torch.nn.Sequential(*[tnsim.nn.Bilinear(4, 6, 4, bias=True, residual=True) for _ in range(depth)])
    net = tnsim.compile(m)
    top = max(net.terms, key=lambda t: t.degree)
    assert top.degree == 2**depth
    assert len(top.group) == depth  # one swap per level of the tree
    assert top.group_order == 2 ** (2**depth - 1)
    assert len(net.chain) == depth
