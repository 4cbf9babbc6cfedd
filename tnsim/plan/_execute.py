r"""Execute cotengra contraction trees with torch, sharing repeated intermediates.

A doubled network often computes the same intermediate more than once: a composed model
carries one copy of its embedding :math:`W` per input copy, so the pairing of copy 1 with
copy 1 and of copy 2 with copy 2 both form :math:`W_a \Sigma W_b^\top`; and every orbit of a
comparison forms it again. :func:`execute` walks the tree top-down and looks each node up by
a *structural key* before computing it:

.. math::
    \text{key}(v) = \big(\text{ids of the arrays under } v,\;
        \text{their index pattern and } v\text{'s output legs, relabelled canonically}\big)

Two nodes with equal keys contract the same arrays in the same way, so the second reuses the
first's result (opt_einsum's ``shared_intermediates`` does the same for einsum calls). Within a
:func:`shared_intermediates` context the cache spans calls (every orbit and term pair of one
comparison); otherwise it spans one contraction. Only intermediates that occur at least twice
within one contraction are stored (so memory stays that of a plain contraction unless there is
something to share); shared entries keep their input arrays alive, so an id cannot be recycled
while its entry exists, and the shared cache stops growing at :data:`SHARED_BYTES` bytes.

Each pairwise step is one batched GEMM (``torch.bmm``) on operands viewed in their memory
order (:class:`_Pair`; ``torch.einsum`` below :data:`GEMM_MIN_SIZE`), or a broadcast product;
nothing leaves the arrays' device.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections import Counter
from dataclasses import dataclass
from operator import itemgetter

import torch

__all__ = ["execute", "shared_intermediates", "count_flops", "new_cache", "SHARED_BYTES"]

#: Largest total size (bytes) of intermediates kept for reuse within one context.
SHARED_BYTES = 2**30
#: Share repeated intermediates (set ``False`` to execute every pairwise step of every tree).
SHARING = True
#: ``torch.einsum`` without its Python wrapper (which parses the arguments and looks for
#: ``__torch_function__`` overrides and opt_einsum before calling this, for two operands): a
#: fifth of a small contraction's cost (the exact attention layer runs 44,000 of them).
_einsum = getattr(torch._C._VariableFunctions, "einsum", None) or (lambda eq, ops: torch.einsum(eq, *ops))
#: Pairwise steps with an operand of at least this many entries run as a GEMM on operands in
#: their memory order (:class:`_Pair`); smaller ones as ``torch.einsum``, whose fixed cost is
#: lower (the exact attention layer's many small steps were 1.5x slower through ``_Pair``).
GEMM_MIN_SIZE = 1 << 16

_SHARED: contextvars.ContextVar = contextvars.ContextVar("tnsim_shared", default=None)
_COUNT: contextvars.ContextVar = contextvars.ContextVar("tnsim_count", default=None)
_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


class _Cache:
    def __init__(self, limit: float):
        self.entries: dict = {}
        self.bytes = 0
        self.limit = limit
        self.hits = 0

    def get(self, key):
        hit = self.entries.get(key)
        if hit is not None:
            self.hits += 1
            return hit[0]
        return None

    def put(self, key, value: torch.Tensor, keep: tuple) -> None:
        size = value.numel() * value.element_size()
        if self.bytes + size <= self.limit:
            self.entries[key] = (value, keep)
            self.bytes += size


def new_cache(limit: float | None = None) -> _Cache:
    """A private intermediate cache for :func:`execute`'s ``keep`` (at most ``limit`` bytes,
    default :data:`SHARED_BYTES`); it lives as long as its owner."""
    return _Cache(SHARED_BYTES if limit is None else limit)


@contextlib.contextmanager
def count_flops():
    """Count the multiply-adds actually executed inside the context (shared ones once).

    Yields a dict whose ``"flops"`` entry grows as contractions run (cotengra's measure: the
    product of the sizes of all indices of each pairwise step).
    """
    counter = {"flops": 0.0, "steps": 0}
    token = _COUNT.set(counter)
    try:
        yield counter
    finally:
        _COUNT.reset(token)


@contextlib.contextmanager
def shared_intermediates(limit: float | None = None):
    """Share equal intermediates between all contractions executed inside the context.

    Yields the cache (``.hits`` counts reused intermediates). Nested contexts reuse the
    outer cache.
    """
    outer = _SHARED.get()
    if outer is not None:
        yield outer
        return
    cache = _Cache(SHARED_BYTES if limit is None else limit)
    token = _SHARED.set(cache)
    try:
        yield cache
    finally:
        _SHARED.reset(token)


class _Recipe:
    """Per tree, computed once: the pairwise steps (children and how each is contracted), the
    leaves (input and pre-reduction), and each step's structural key pattern."""

    def __init__(self, tree):
        self.tree = tree
        self.children: dict = {}
        self.leaf: dict = {}  # leaf node -> (input index, pre-reduction equation or None)
        self.leaves: dict = {}  # step -> input indices under it
        self.keyed: dict = {}  # step -> (pattern, the ids of its leaves' arrays, from all ids)
        self.steps: dict = {}  # step -> (left child, right child, how: see _pairwise)
        self.flops: dict = {}
        inputs = [tuple(i) for i in tree.inputs]
        for p, l, r in tree.traverse():
            self.children[p] = (l, r)
            for c in (l, r):
                if tree.is_leaf(c):
                    i = int(tree.node_to_input(c))
                    # cotengra may pre-reduce a leaf (sum an index no other tensor has, take
                    # the diagonal of a repeated one): apply that before the pairwise steps
                    have, want = inputs[i], tuple(tree.get_inds(c))
                    self.leaf[c] = (i, _reduction(have, want) if have != want else None)
        for p, (l, r) in self.children.items():
            leaves = tuple(sorted(int(i) for i in tree.get_subgraph(p)))
            self.leaves[p] = leaves
            self.keyed[p] = (_pattern([inputs[i] for i in leaves], tuple(tree.get_inds(p))), itemgetter(*leaves))
            left, right, out = tree.get_inds(l), tree.get_inds(r), tree.get_inds(p)
            self.flops[p] = float(tree.get_flops(p))
            if set(left) | set(right) <= set(out):  # nothing summed: a broadcast product
                how = (_broadcast(left, out), _broadcast(right, out))
            elif max(tree.get_size(l), tree.get_size(r)) >= GEMM_MIN_SIZE:
                how = _Pair.of(tuple(left), tuple(right), tuple(out))
            else:  # small: einsum's fixed cost is lower than the layout search's
                how = _equation(left, right, out)
            self.steps[p] = (l, r, how)
        root_inds = tuple(tree.get_inds(tree.root)) if self.children else inputs[0]
        self.root_inds = root_inds
        out = tuple(tree.output)
        self.final = None
        if root_inds != out:
            letters = {i: _LETTERS[n] for n, i in enumerate(dict.fromkeys(root_inds + out))}
            self.final = "".join(letters[i] for i in root_inds) + "->" + "".join(letters[i] for i in out)


def _pattern(inds: list[tuple], output: tuple) -> tuple:
    names: dict = {}
    canon = tuple(tuple(names.setdefault(i, len(names)) for i in term) for term in inds)
    return canon, tuple(names[i] for i in output)


def _reduction(have: tuple, want: tuple) -> str:
    """Einsum equation taking an input with indices ``have`` to ``want`` (sum / diagonal)."""
    letters = {i: _LETTERS[n] for n, i in enumerate(dict.fromkeys(tuple(have) + tuple(want)))}
    return "".join(letters[i] for i in have) + "->" + "".join(letters[i] for i in want)


def _broadcast(inds: str, out: str) -> tuple[tuple[int, ...] | None, tuple | None]:
    """Permutation and index (``None`` inserts a length-one axis) that align an operand with
    ``out`` for broadcasting."""
    order = tuple(sorted(range(len(inds)), key=lambda k: out.index(inds[k])))
    present = set(inds)
    index = tuple(slice(None) if i in present else None for i in out)
    return (None if order == tuple(range(len(inds))) else order), (None if None not in index else index)


@dataclass(frozen=True)
class _Pair:
    r"""A pairwise contraction with summed indices, run as one batched GEMM.

    The indices fall into four groups: *batch* (both operands and the output), *summed* (both
    operands only) and each operand's *kept* ones (it and the output). With the groups merged,
    :math:`Z_{b,m,n} = \sum_k X_{b,m,k} Y_{b,k,n}`. ``torch.einsum`` orders every group by the
    equation's letters, so an operand whose memory order differs (most intermediates: an
    einsum's result is a permuted view of its GEMM's output) is copied before the GEMM. Here
    each group follows the memory order of the operand that holds it (the batch and summed
    groups that of the larger operand), so an operand is copied only where its groups
    interleave in memory or the smaller one disagrees; the result is the GEMM's output, viewed
    in the output's index order. Equations this does not cover (an index in one operand only
    and not in the output, or twice in one operand) run as einsum.
    """

    left: tuple
    right: tuple
    out: tuple
    batch: frozenset
    summed: frozenset
    einsum: str | None  # the fallback

    @classmethod
    def of(cls, left: tuple, right: tuple, out: tuple) -> "_Pair":
        l, r, o = set(left), set(right), set(out)
        plain = len(l) == len(left) and len(r) == len(right) and (l ^ r) <= o and l | r >= o
        return cls(left, right, out, frozenset(l & r & o), frozenset((l & r) - o),
                   None if plain else _equation(left, right, out))

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.einsum is not None:
            return _einsum(self.einsum, (x, y))
        size = dict(zip(self.left, x.shape)) | dict(zip(self.right, y.shape))
        mx, my = _memory_order(self.left, x), _memory_order(self.right, y)
        big = mx if x.numel() >= y.numel() else my
        batch = [i for i in big if i in self.batch]
        summed = [i for i in big if i in self.summed]
        kx = [i for i in mx if i not in self.batch and i not in self.summed]
        ky = [i for i in my if i not in self.batch and i not in self.summed]
        product = torch.bmm(_matrices(x, self.left, batch, kx, summed, size),
                            _matrices(y, self.right, batch, summed, ky, size))
        have = batch + kx + ky
        return product.view([size[i] for i in have]).permute([have.index(i) for i in self.out])


def _memory_order(inds: tuple, x: torch.Tensor) -> list:
    """``inds`` from the outermost to the innermost axis of ``x`` in memory (length-one axes,
    which fit anywhere, last)."""
    return [inds[k] for k in sorted(range(len(inds)), key=lambda k: (x.stride(k) == 0 or x.shape[k] == 1, -x.stride(k)))]


def _matrices(x: torch.Tensor, inds: tuple, batch: list, rows: list, cols: list, size: dict) -> torch.Tensor:
    """``x`` as a ``(batch, rows, cols)`` stack of matrices: a view where its memory allows
    (a transposed matrix is a view too), a copy otherwise."""
    shape = [math.prod(size[i] for i in g) for g in (batch, rows, cols)]
    return x.permute([inds.index(i) for i in batch + rows + cols]).reshape(shape)


def _pairwise(how, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One pairwise contraction: an einsum (a small step), a batched GEMM (:class:`_Pair`), or,
    when no index is summed, a broadcast product (``torch.einsum`` would run it as a batched
    GEMM of 1x1 matrices)."""
    if isinstance(how, str):
        return _einsum(how, (x, y))
    if isinstance(how, _Pair):
        return how(x, y)
    (ox, ix), (oy, iy) = how  # None: no permutation, no new axis
    if ox is not None:
        x = x.permute(ox)
    if oy is not None:
        y = y.permute(oy)
    return (x if ix is None else x[ix]) * (y if iy is None else y[iy])


def _equation(left: str, right: str, out: str) -> str:
    letters = {i: _LETTERS[n] for n, i in enumerate(dict.fromkeys(tuple(left) + tuple(right)))}
    return (
        "".join(letters[i] for i in left) + ","
        + "".join(letters[i] for i in right) + "->"
        + "".join(letters[i] for i in out)
    )


def _recipe(tree) -> _Recipe:
    r = getattr(tree, "_tnsim_recipe", None)
    if r is None:
        r = _Recipe(tree)
        tree._tnsim_recipe = r
    return r


def execute(tree, arrays: list[torch.Tensor], keep=None) -> torch.Tensor:
    """Contract ``arrays`` (in the tree's input order) along ``tree``; returns the output.

    Intermediates that occur more than once in this contraction are computed once and, inside
    :func:`shared_intermediates`, offered to later contractions; every node is looked up in
    the shared cache first. ``keep`` (a cache from :func:`new_cache`): look nodes up there
    and keep *every* intermediate in it, for a family of small contractions known to share
    their first steps (read-through blocks: :math:`W_a G` for every reader on the other
    side). Sliced trees are handed to cotengra (which loops over the slices) without sharing.
    """
    if tree.sliced_inds:
        return tree.contract(arrays)
    recipe = _recipe(tree)
    if not recipe.children:  # a single tensor: sum what is not output
        letters = {i: _LETTERS[n] for n, i in enumerate(dict.fromkeys(recipe.root_inds))}
        eq = "".join(letters[i] for i in recipe.root_inds) + "->" + "".join(
            letters[i] for i in tree.output
        )
        return _einsum(eq, (arrays[0],))
    shared = (keep if keep is not None else _SHARED.get()) if SHARING else None
    counter = _COUNT.get()
    ids = [id(x) for x in arrays]
    keys = {p: (pattern, take(ids)) for p, (pattern, take) in recipe.keyed.items()}
    seen = Counter(keys.values())
    local: dict = {}

    steps, leaves = recipe.steps, recipe.leaf

    def compute(node):
        step = steps.get(node)
        if step is None:  # a leaf
            i, pre = leaves[node]
            return arrays[i] if pre is None else _einsum(pre, (arrays[i],))
        key = keys[node]
        hit = local.get(key) if SHARING else None
        if hit is None and shared is not None:
            hit = shared.get(key)
        if hit is not None:
            return hit
        l, r, how = step
        value = _pairwise(how, compute(l), compute(r))
        if counter is not None:
            counter["flops"] += recipe.flops[node]
            counter["steps"] += 1
        if SHARING and (seen[key] > 1 or keep is not None):
            local[key] = value
            if shared is not None:
                shared.put(key, value, tuple(arrays[i] for i in recipe.leaves[node]))
        return value

    value = compute(tree.root)
    if recipe.final is not None:
        value = _einsum(recipe.final, (value,))
    return value
