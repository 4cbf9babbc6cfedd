"""Orbit enumeration against explicit group actions and hand counts."""

import itertools

import pytest

import tnsim

from tnsim.ir import _groups as groups
from brute import partial_matchings, tree_automorphisms


def tree_gens(depth: int):
    return [g for g in tree_automorphisms(depth) if g != tuple(range(2**depth))][:8]


def explicit_orbits(objects, elements, act):
    """Orbits by applying every group element to every object (the slow, obvious way)."""
    seen, orbits = set(), []
    for x in objects:
        if x in seen:
            continue
        orbit = {act(g, x) for g in elements}
        seen |= orbit
        orbits.append(orbit)
    return orbits


def act_bij(g, sigma):
    ga, gb = g
    inv = {ga[i]: i for i in range(len(ga))}
    return tuple(gb[sigma[inv[j]]] for j in range(len(sigma)))


def act_match(g, m):
    out = [0] * len(m)
    for i, j in enumerate(m):
        out[g[i]] = g[j]
    return tuple(out)


@pytest.mark.parametrize("depth", [1, 2])
def test_double_cosets_match_explicit(depth):
    k = 2**depth
    els = tree_automorphisms(depth)
    want = explicit_orbits(list(itertools.permutations(range(k))), list(itertools.product(els, els)), act_bij)
    got = groups.bijection_orbits(k, tree_gens(depth), tree_gens(depth))
    assert sorted(s for _, s in got) == sorted(len(o) for o in want)
    for rep, size in got:  # each representative's orbit has the reported size
        assert any(rep in o and len(o) == size for o in want)
    assert groups.count_bijection_orbits(k, tree_gens(depth), tree_gens(depth)) == len(want)


def all_matchings(n, partial):
    for pairs, singles in partial_matchings(n):
        if singles and not partial:
            continue
        m = list(range(n))
        for p, q in pairs:
            m[p], m[q] = q, p
        yield tuple(m)


@pytest.mark.parametrize("depth,partial", [(1, False), (1, True), (2, False), (2, True)])
def test_matching_orbits_match_explicit(depth, partial):
    k = 2**depth
    n = 2 * k
    els_a = tree_automorphisms(depth)
    els = [tuple(ga) + tuple(k + x for x in gb) for ga in els_a for gb in els_a]
    want = explicit_orbits(list(all_matchings(n, partial)), els, act_match)
    gens = groups.shift(tree_gens(depth), 0, n) + groups.shift(tree_gens(depth), k, n)
    got = groups.matching_orbits(n, gens, partial)
    assert sorted(s for _, s in got) == sorted(len(o) for o in want)
    for rep, size in got:
        assert any(rep in o and len(o) == size for o in want)
    assert groups.count_matching_orbits(k, tree_gens(depth), k, tree_gens(depth), partial) == len(want)


def test_hand_counts():
    """Two layers: 105 perfect Wick matchings, 764 partial, 24 permutations; depth 3 totals."""
    assert groups.count_matchings(8, False) == 105
    assert groups.count_matchings(8, True) == 764
    assert groups.count_matchings(16, False) == 2027025
    g3 = tree_gens(3)
    assert groups.count_bijection_orbits(8, g3, g3) == 16
    assert groups.count_matching_orbits(8, g3, 8, g3, False) == 606


def test_tuple_orbits_merge_equivalent_assignments():
    swap = [(1, 0)]
    orbits = groups.tuple_orbits(2, swap, 2)
    assert sorted(size for _, size, _ in orbits) == [1, 1, 2]
    assert sum(size for _, size, _ in orbits) == 4


def test_unaffordable_partial_matchings_are_refused_before_any_is_listed(monkeypatch):
    """The refusal comes from counts (per orbit of unpaired sets, the perfect matchings of the
    rest), not after listing up to the limit: listing is switched off here."""
    from tnsim.ir import _groups as groups_module

    def never(*args):
        raise AssertionError("matchings were listed before the refusal")

    monkeypatch.setattr(groups_module, "_perfect_matchings", never)
    with pytest.raises(tnsim.UnaffordableError, match="Wick matchings"):
        groups_module.matching_orbits(12, [], partial=True, limit=1000)
    # 12 points, no symmetry: the telephone number T(12) = 140152 partial matchings in all
    assert groups_module.count_matchings(12, True) == 140152


def test_cycle_type_histogram_counts_every_element_by_hand():
    """The vectorised cycle-type histogram (Burnside's counts) against listing the group and
    following each element's cycles one by one."""
    import collections

    import numpy as np

    from tnsim.ir import _groups

    def by_hand(p):
        seen, lengths = set(), collections.Counter()
        for i in range(len(p)):
            if i in seen:
                continue
            j, n = i, 0
            while j not in seen:
                seen.add(j)
                j, n = p[j], n + 1
            lengths[n] += 1
        return tuple(sorted(lengths.items()))

    rng = np.random.default_rng(0)
    cases = [(4, [(1, 0, 2, 3), (0, 1, 3, 2)]), (6, [(1, 2, 0, 3, 4, 5), (3, 4, 5, 0, 1, 2)]),
             (7, [tuple(int(i) for i in rng.permutation(7)) for _ in range(2)]), (5, []), (0, [])]
    for n, gens in cases:
        want = collections.Counter(by_hand(list(g)) for g in _groups.closure(gens, n))
        assert _groups._type_histogram(gens, n) == want
