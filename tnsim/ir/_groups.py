r"""Permutation groups on input copies, and the orbits the exact method sums over.

A term of a network is invariant under a group :math:`G` of permutations of its input copies
(for a composition tree of symmetric nodes: swapping the two inputs of a node). The exact
inner products are sums over combinatorial objects that :math:`G_a \times G_b` acts on:

* tensor measure: bijections :math:`\sigma` from the copies of *a* to the copies of *b*,
  acted on by :math:`\sigma \mapsto g_b \circ \sigma \circ g_a^{-1}` (orbits are double cosets);
* Gaussian measure: (partial) matchings of the copies of both sides (Wick pairings), acted on
  by relabelling.

Every summand is constant on an orbit, so the sum is one representative per orbit weighted by
the orbit size. Orbits are found by union-find over the group generators (scipy), never by
touching every group element per object; the number of orbits can be counted beforehand with
Burnside's lemma to decide whether enumeration is affordable.

Permutations are tuples ``p`` with ``p[i]`` the image of ``i``. A matching is a tuple
``m`` with ``m[i]`` the partner of ``i`` (``m[i] == i`` for an unpaired copy).

Groups are kept as generators (:class:`Generators`), never listed at compile time: the tree
automorphism group of a depth-12 bilinear stack has :math:`2^{4095}` elements but 12
generators. Orders are carried along when a group is built from smaller ones (direct and
semidirect products: :func:`tnsim.ir._term.compose_terms`) and otherwise found by Schreier–Sims
(:class:`StabiliserChain`); only the exact method lists elements (:func:`closure`).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from functools import lru_cache

import numpy as np

from ..errors import UnaffordableError

__all__ = [
    "Generators",
    "StabiliserChain",
    "closure",
    "group_order",
    "minimal_generators",
    "point_orbits",
    "shift",
    "bijection_orbits",
    "matching_orbits",
    "count_bijection_orbits",
    "count_matching_orbits",
    "count_matchings",
    "tuple_orbits",
    "partition_orbits",
    "count_partitions",
    "count_partition_orbits",
]

Perm = tuple[int, ...]

#: refuse to enumerate more objects than this in one orbit computation
MAX_ENUMERATION = 60_000_000
#: refuse to list more group elements than this
MAX_GROUP = 1 << 20


class Generators(tuple):
    """Generators of a permutation group of input copies (a tuple of :data:`Perm`), with the
    group's order when it is known from how the group was built (``None``: unknown, found by
    Schreier–Sims on request, :func:`group_order`).

    Behaves as the plain tuple of generators everywhere (equality, hashing, iteration), so a
    term's structure does not depend on whether the order is known.
    """

    order: int | None

    def __new__(cls, gens=(), order: int | None = None) -> "Generators":
        self = super().__new__(cls, (tuple(g) for g in gens))
        self.order = order
        return self

    def __reduce__(self):
        return (Generators, (tuple(self), self.order))


def _compose(a: Perm, b: Perm) -> Perm:
    """``a`` then ``b``: the permutation ``i -> b[a[i]]``."""
    return tuple(b[i] for i in a)


def _inverse(a: Perm) -> Perm:
    out = [0] * len(a)
    for i, j in enumerate(a):
        out[j] = i
    return tuple(out)


class StabiliserChain:
    r"""Base and strong generating set of :math:`\langle S\rangle` by deterministic
    Schreier–Sims (Seress, *Permutation Group Algorithms*, sec. 4.2).

    Level :math:`i` holds base point :math:`b_i`, the strong generators fixing
    :math:`b_0..b_{i-1}` and a transversal :math:`u_x` (:math:`u_x(b_i) = x`) of their orbit
    :math:`\Delta_i`. :math:`|G| = \prod_i |\Delta_i|`, and :math:`g \in G` iff sifting
    :math:`g` through the levels leaves the identity. Meant for the small groups found by
    structure detection (a few dozen points); composed groups carry their order instead.
    """

    def __init__(self, gens, n: int):
        self.n = n
        self.identity = tuple(range(n))
        self.base: list[int] = []
        self.strong: list[Perm] = []
        self._trans: list[dict[int, Perm]] = []
        for g in gens:
            self.add(tuple(int(v) for v in g))

    def _level_gens(self, i: int) -> list[Perm]:
        fixed = self.base[:i]
        return [s for s in self.strong if all(s[b] == b for b in fixed)]

    def _orbit(self, i: int) -> dict[int, Perm]:
        b = self.base[i]
        trans = {b: self.identity}
        frontier = [b]
        gens = self._level_gens(i)
        while frontier:
            new = []
            for x in frontier:
                for s in gens:
                    y = s[x]
                    if y not in trans:
                        trans[y] = _compose(trans[x], s)
                        new.append(y)
            frontier = new
        return trans

    def sift(self, g: Perm, start: int = 0) -> tuple[Perm, int]:
        """The residue of ``g`` and the level where sifting stopped (``len(base)``: all
        levels passed; the residue is the identity iff ``g`` is in the group)."""
        for i in range(start, len(self.base)):
            x = g[self.base[i]]
            u = self._trans[i].get(x)
            if u is None:
                return g, i
            g = _compose(g, _inverse(u))
        return g, len(self.base)

    def contains(self, g: Perm) -> bool:
        return self.sift(tuple(g))[0] == self.identity

    def add(self, g: Perm) -> bool:
        """Add ``g`` to the group; ``False`` if it was already a member."""
        residue, level = self.sift(g)
        if residue == self.identity:
            return False
        self._insert(residue, level)
        i = len(self.base) - 1
        while i >= 0:
            bad = self._schreier_failure(i)
            if bad is None:
                i -= 1
                continue
            residue, level = bad
            self._insert(residue, level)
            i = level
        return True

    def _insert(self, residue: Perm, level: int) -> None:
        if level == len(self.base):
            self.base.append(next(p for p in range(self.n) if residue[p] != p))
        self.strong.append(residue)
        self._trans = [self._orbit(i) for i in range(len(self.base))]

    def _schreier_failure(self, i: int):
        """A Schreier generator of level ``i`` that does not sift below it, or ``None``."""
        trans = self._trans[i]
        for x, u in trans.items():
            for s in self._level_gens(i):
                h = _compose(_compose(u, s), _inverse(trans[s[x]]))
                if h == self.identity:
                    continue
                residue, level = self.sift(h, i + 1)
                if residue != self.identity:
                    return residue, level
        return None

    @property
    def order(self) -> int:
        return math.prod(len(t) for t in self._trans)


def group_order(gens, n: int) -> int:
    """Order of the group generated by ``gens`` on ``n`` points (known, or by Schreier–Sims)."""
    known = getattr(gens, "order", None)
    if known is not None:
        return known
    return StabiliserChain(gens, n).order


def minimal_generators(gens, n: int) -> Generators:
    """``gens`` without the generators already generated by the earlier ones (keeps orbit
    searches fast), with the order of the group."""
    chain = StabiliserChain((), n)
    kept = [g for g in (tuple(int(v) for v in g) for g in gens) if chain.add(g)]
    return Generators(kept, chain.order)


def point_orbits(gens, n: int) -> list[list[int]]:
    """Orbits of the points ``range(n)`` under ``gens``, each sorted, by first point."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for g in gens:
        for i, j in enumerate(g):
            a, b = root(i), root(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    orbits: dict[int, list[int]] = {}
    for i in range(n):
        orbits.setdefault(root(i), []).append(i)
    return list(orbits.values())


def shift(gens: tuple[Perm, ...] | list[Perm], offset: int, n: int) -> list[Perm]:
    """Embed permutations of ``len(g)`` points at ``offset`` into permutations of ``n`` points."""
    out = []
    for g in gens:
        full = list(range(n))
        for i, gi in enumerate(g):
            full[offset + i] = offset + gi
        out.append(tuple(full))
    return out


def closure(gens: tuple[Perm, ...] | list[Perm], n: int, limit: int = MAX_GROUP) -> np.ndarray:
    """All elements of the group generated by ``gens`` as an ``(|G|, n)`` integer array.

    Breadth-first search over right multiplication by generators.
    """
    gens = [np.asarray(g, dtype=np.int64) for g in gens if tuple(g) != tuple(range(n))]
    ident = np.arange(n, dtype=np.int64)
    if not gens:
        return ident[None]
    seen = {ident.tobytes()}
    frontier = [ident]
    elements = [ident]
    while frontier:
        new = []
        for p in frontier:
            for g in gens:
                q = p[g]
                key = q.tobytes()
                if key not in seen:
                    seen.add(key)
                    new.append(q)
        elements.extend(new)
        frontier = new
        if len(elements) > limit:
            raise UnaffordableError(
                f"symmetry group has more than {limit} elements; the exact method cannot list it"
            )
    return np.stack(elements)


def _row_keys(x: np.ndarray, bits: int, cols=None, values=None) -> np.ndarray:
    """Injective keys of the rows of ``y`` with ``y[:, j] = values[x[:, cols[j]]]``.

    Entries must be below ``2**bits``. ``cols``/``values`` default to the identity, so the keys
    of an image under a group element are computed column by column without materialising it.
    """
    n = x.shape[1]
    cols = range(n) if cols is None else cols
    if n * bits <= 64:
        key = np.zeros(len(x), dtype=np.uint64)
        for j, c in enumerate(cols):
            col = x[:, c] if values is None else values[x[:, c]]
            key |= col.astype(np.uint64) << np.uint64(j * bits)
        return key
    y = x[:, list(cols)] if values is None else values[x[:, list(cols)]]
    dtype = np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32
    y = np.ascontiguousarray(y.astype(dtype))
    return y.view(np.dtype((np.void, n * y.itemsize))).ravel()


def _components(images: list[np.ndarray], m: int) -> np.ndarray:
    """Label each of ``m`` objects with the smallest index in its orbit.

    ``images[g][i]`` is the index of the image of object ``i`` under generator ``g``. Min-label
    propagation along both directions of every generator, with pointer jumping.
    """
    lab = np.arange(m)
    while True:
        old = lab
        for img in images:
            lab = np.minimum(lab, lab[img])
            back = np.empty_like(lab)
            back[img] = lab
            lab = np.minimum(lab, back)
        lab = lab[lab]
        if np.array_equal(lab, old):
            return lab


def _orbit_reps(x: np.ndarray, acts: list[tuple]) -> list[tuple[tuple[int, ...], int]]:
    """Orbit representatives and orbit sizes of the rows of ``x``.

    ``acts`` holds one ``(cols, values)`` pair per generator: the image of a row ``r`` is
    ``values[r[cols]]`` (``values=None`` for no relabelling). The set of rows must be closed
    under the action.
    """
    bits = max(1, int(np.max(x, initial=0)).bit_length())
    keys = _row_keys(x, bits)
    order = np.argsort(keys, kind="stable")
    x, keys = x[order], keys[order]
    images = [np.searchsorted(keys, _row_keys(x, bits, c, v)) for c, v in acts]
    labels = _components(images, len(x))
    counts = np.bincount(labels, minlength=len(x))
    reps = np.flatnonzero(labels == np.arange(len(x)))
    return [(tuple(int(v) for v in x[i]), int(counts[i])) for i in reps]


def bijection_orbits(
    k: int, gens_a: list[Perm], gens_b: list[Perm], limit: int = MAX_ENUMERATION
) -> list[tuple[Perm, int]]:
    r"""Double cosets :math:`G_a \backslash S_k / G_b` as ``(sigma, size)`` pairs.

    ``sigma[i]`` is the copy of *b* paired with copy ``i`` of *a*; sizes sum to ``k!``.
    """
    if math.factorial(k) > limit:
        raise UnaffordableError(
            f"exact tensor measure would enumerate {k}! = {math.factorial(k)} leg permutations"
        )
    x = np.array(list(itertools.permutations(range(k))), dtype=np.int64).reshape(-1, k)

    # sigma -> sigma o g_a^-1  and  sigma -> g_b o sigma
    acts = [(np.argsort(g), None) for g in gens_a] + [(None, np.asarray(g)) for g in gens_b]
    return _orbit_reps(x, acts)


@lru_cache(maxsize=64)
def _perfect_matchings(points: tuple[int, ...], n: int) -> np.ndarray:
    """All perfect matchings of ``points`` as rows of partner arrays of length ``n``."""
    if not points:
        return np.arange(n, dtype=np.int8)[None]
    p, rest = points[0], points[1:]
    blocks = []
    for j, q in enumerate(rest):
        sub = _perfect_matchings(rest[:j] + rest[j + 1 :], n).copy()
        sub[:, p] = q
        sub[:, q] = p
        blocks.append(sub)
    if not blocks:
        return np.zeros((0, n), dtype=np.int8)
    return np.concatenate(blocks)


def count_matchings(n: int, partial: bool) -> int:
    """Number of perfect (``(n-1)!!``) or partial (telephone number) matchings of n points."""
    if partial:
        a, b = 1, 1
        for i in range(2, n + 1):
            a, b = b, b + (i - 1) * a
        return b if n >= 1 else 1
    return 0 if n % 2 else math.prod(range(n - 1, 0, -2))


def _conjugate_matchings(gens: list[Perm]) -> list[tuple]:
    """Actions ``m -> g m g^-1`` on partner arrays, one per generator."""
    return [(np.argsort(g), np.asarray(g, dtype=np.int8)) for g in gens]


def _small_generating_set(elements: np.ndarray) -> list[Perm]:
    """A generating set (at most log2 |H| elements) of the group whose elements are given."""
    n = elements.shape[1]
    target = len(elements)
    gens: list[Perm] = []
    known = {np.arange(n).tobytes()}
    for e in elements:
        if len(known) >= target:
            break
        if e.tobytes() not in known:
            gens.append(tuple(int(v) for v in e))
            known = {row.tobytes() for row in closure(gens, n)}
    return gens


def matching_orbits(
    n: int, gens: list[Perm], partial: bool, limit: int = MAX_ENUMERATION
) -> list[tuple[tuple[int, ...], int]]:
    """Orbits of (partial) matchings of ``n`` points under the group generated by ``gens``.

    Perfect matchings are enumerated directly. Partial matchings are split by their set of
    unpaired points: orbits of subsets first, then orbits of the subset's stabiliser on the
    perfect matchings of the complement, so no more than the orbit representatives' complements
    are ever listed.
    """
    total = count_matchings(n, partial)
    if total == 0:
        return []
    if not partial:
        if total > limit:
            raise UnaffordableError(f"exact Gaussian measure would enumerate {total} Wick matchings")
        return _orbit_reps(_perfect_matchings(tuple(range(n)), n), _conjugate_matchings(gens))

    # orbits of singleton sets (bitmasks) of the right parity
    masks = np.array([s for s in range(1 << n) if (n - bin(s).count("1")) % 2 == 0], dtype=np.int64)
    bits = (masks[:, None] >> np.arange(n)) & 1

    subset_orbits = _orbit_reps(bits, [(np.argsort(g), None) for g in gens])
    # counted before anything is listed: a refusal comes at once, not after the limit's worth
    listed = sum(count_matchings(n - sum(bitrow), False) for bitrow, _ in subset_orbits)
    if listed > limit:
        raise UnaffordableError(
            f"exact Gaussian measure would enumerate {listed:.3g} Wick matchings (more than "
            f"{limit}) for {n} input copies"
        )
    elements = closure(gens, n) if gens else np.arange(n)[None]
    out = []
    for bitrow, size_s in subset_orbits:
        singles = tuple(i for i in range(n) if bitrow[i])
        rest = tuple(i for i in range(n) if not bitrow[i])
        sset = np.zeros(n, dtype=bool)
        sset[list(singles)] = True
        stab = elements[np.all(sset[elements] == sset[None], axis=1)]
        stab_gens = _small_generating_set(stab)
        for m, size_m in _orbit_reps(
            _perfect_matchings(rest, n), _conjugate_matchings(stab_gens)
        ):
            out.append((m, size_s * size_m))
    return out


def _type_histogram(gens: list[Perm], n: int) -> Counter:
    """How many elements of the group generated by ``gens`` have each cycle type (memoised:
    the same terms' groups meet in many term pairs)."""
    return Counter(_type_histogram_of(tuple(tuple(int(i) for i in g) for g in gens), n))


@lru_cache(maxsize=256)
def _type_histogram_of(gens: tuple[tuple[int, ...], ...], n: int) -> dict:
    if n == 0:
        return {(): 1}  # the empty permutation, of no cycles
    elements = closure(list(gens), n)
    # cycle length of every point of every element, all elements at once: the first power
    # of the permutation that brings the point back
    lengths = np.zeros(elements.shape, dtype=np.int64)
    power = elements.copy()
    points = np.arange(n)[None, :]
    for m in range(1, n + 1):
        back = (power == points) & (lengths == 0)
        lengths[back] = m
        if (lengths > 0).all():
            break
        power = np.take_along_axis(elements, power, axis=1)
    # cycles of length L per element: (points on such cycles) / L
    counts = np.stack([(lengths == L).sum(axis=1) // L for L in range(1, n + 1)], axis=1)
    rows, freq = np.unique(counts, axis=0, return_counts=True)
    return {
        tuple((L + 1, int(c)) for L, c in enumerate(row) if c): int(f) for row, f in zip(rows, freq)
    }


def count_bijection_orbits(k: int, gens_a: list[Perm], gens_b: list[Perm]) -> int:
    """Number of double cosets by Burnside: fixed bijections of (g_a, g_b) conjugate them."""
    ha, hb = _type_histogram(gens_a, k), _type_histogram(gens_b, k)
    total = 0
    for ta, ca in ha.items():
        if ta in hb:
            fixed = math.prod(math.factorial(c) * length**c for length, c in ta)
            total += ca * hb[ta] * fixed
    return total // (sum(ha.values()) * sum(hb.values()))


def _fixed_matchings(ct: dict[int, int], partial: bool) -> int:
    """Matchings invariant under a permutation of the given cycle type."""
    total = 1
    for length, c in ct.items():
        s = (1 if length % 2 == 0 else 0) + (1 if partial else 0)
        f = [1, s]
        for m in range(2, c + 1):
            f.append(s * f[m - 1] + (m - 1) * length * f[m - 2])
        total *= f[c]
    return total


def count_matching_orbits(
    k_a: int, gens_a: list[Perm], k_b: int, gens_b: list[Perm], partial: bool
) -> int:
    r"""Number of orbits of matchings of ``k_a + k_b`` points under :math:`G_a \times G_b`."""
    ha, hb = _type_histogram(gens_a, k_a), _type_histogram(gens_b, k_b)
    total = 0
    for ta, ca in ha.items():
        for tb, cb in hb.items():
            ct: Counter = Counter(dict(ta))
            ct.update(dict(tb))
            total += ca * cb * _fixed_matchings(ct, partial)
    return total // (sum(ha.values()) * sum(hb.values()))


def tuple_orbits(k: int, gens: list[Perm], m: int) -> list[tuple[tuple[int, ...], int, list[Perm]]]:
    """Orbits of ``G`` on tuples in ``range(m)**k`` (which term feeds which copy).

    Returns ``(representative, orbit size, stabiliser generators)`` for each orbit; used when a
    symmetric term is composed with a sum of terms, so that equivalent assignments are merged.
    """
    if m == 1:  # one term feeds every copy: one orbit, stabilised by all of G
        return [((0,) * k, 1, list(gens))]
    elements = closure(gens, k)
    seen: set[tuple[int, ...]] = set()
    out = []
    for tup in itertools.product(range(m), repeat=k):
        if tup in seen:
            continue
        orbit = {tuple(tup[int(i)] for i in np.argsort(g)) for g in elements}
        seen |= orbit
        stab = np.array([g for g in elements if tuple(tup[int(i)] for i in g) == tup])
        out.append((tup, len(orbit), _small_generating_set(stab)))
    return out


# --- set partitions (cumulant expansions of independent inputs) ------------------------------


def count_partitions(n: int, max_block: int | None = None) -> int:
    """Number of set partitions of ``n`` points into blocks of at most ``max_block`` points
    (the Bell number without a bound)."""
    m = n if max_block is None else min(n, max_block)
    # p[k] = partitions of k points; the block holding the last point has size j
    p = [1]
    for k in range(1, n + 1):
        p.append(sum(math.comb(k - 1, j - 1) * p[k - j] for j in range(1, min(k, m) + 1)))
    return p[n]


def _partitions(n: int, max_block: int | None) -> np.ndarray:
    """All set partitions as rows of block bitmasks: entry ``i`` is the set of ``i``'s block."""
    rows: list[list[int]] = []
    cap = n if max_block is None else max_block

    def grow(i: int, blocks: list[int]) -> None:
        if i == n:
            row = [0] * n
            for b in blocks:
                for j in range(n):
                    if b >> j & 1:
                        row[j] = b
            rows.append(row)
            return
        for k, b in enumerate(blocks):
            if bin(b).count("1") < cap:
                blocks[k] = b | (1 << i)
                grow(i + 1, blocks)
                blocks[k] = b
        blocks.append(1 << i)
        grow(i + 1, blocks)
        blocks.pop()

    grow(0, [])
    return np.array(rows, dtype=np.int64).reshape(-1, n)


def _mask_map(g: Perm, n: int) -> np.ndarray:
    """``values[mask]``: the image of every subset (bitmask) of ``n`` points under ``g``."""
    masks = np.arange(1 << n, dtype=np.int64)
    out = np.zeros_like(masks)
    for i, gi in enumerate(g):
        out |= ((masks >> i) & 1) << gi
    return out


def partition_orbits(
    n: int, gens: list[Perm], max_block: int | None = None, limit: int = MAX_ENUMERATION
) -> list[tuple[tuple[tuple[int, ...], ...], int]]:
    """Orbits of set partitions of ``n`` points under the group generated by ``gens``.

    Returns ``(blocks, size)`` per orbit, ``blocks`` a tuple of sorted point tuples (the
    representative), sizes summing to the number of partitions.
    """
    total = count_partitions(n, max_block)
    if total > limit:
        raise UnaffordableError(f"exact measure would enumerate {total} set partitions of {n} copies")
    if n == 0:
        return [((), 1)]
    x = _partitions(n, max_block)
    acts = [(np.argsort(g), _mask_map(g, n)) for g in gens]
    out = []
    for row, size in _orbit_reps(x, acts):
        blocks = sorted({m for m in row})
        out.append((tuple(tuple(j for j in range(n) if m >> j & 1) for m in blocks), size))
    return out


def count_partition_orbits(
    k_a: int, gens_a: list[Perm], k_b: int, gens_b: list[Perm], max_block: int | None = None
) -> int:
    """Number of orbits of set partitions of ``k_a + k_b`` copies under :math:`G_a \times G_b`.

    Enumerated (exact) up to :data:`COUNT_PARTITIONS_BELOW` partitions; above, the Burnside
    lower bound ``partitions / |G|`` (most partitions have a trivial stabiliser).
    """
    n = k_a + k_b
    total = count_partitions(n, max_block)
    if total <= COUNT_PARTITIONS_BELOW:
        gens = shift(list(gens_a), 0, n) + shift(list(gens_b), k_a, n)
        return len(partition_orbits(n, gens, max_block))
    order = len(closure(gens_a, k_a)) * len(closure(gens_b, k_b))
    return max(1, total // order)


#: count partition orbits exactly (by enumeration) up to this many partitions
COUNT_PARTITIONS_BELOW = 200_000
