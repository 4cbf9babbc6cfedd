r"""Doubled networks: the tensors of both models joined by kernel pieces for one pairing.

The inner product of two terms for one pairing of their input copies is a single tensor
network: the tensors of side *a*, the tensors of side *b*, and for every block of copies the
measure's kernel tensors joining their legs (a metric :math:`M` for the tensor measure, a
covariance :math:`\Sigma` for a Wick pair, a mean vector for an unpaired copy, a cumulant
for a larger block). Output legs are either contracted through per-side output maps (a scalar
per model pair) or left open (a matrix, as the recursive method needs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..ir._term import Term
from ..measures import Piece

__all__ = ["Side", "Equation", "build_equation", "gather", "selector_matrix"]

LABELS = "ab"


@dataclass(frozen=True, eq=False)
class Side:
    """One side of a doubled network: a term, its homogenising copies, its batch label."""

    term: Term
    virtual: int = 0  # extra copies attached to the kernel's pad vector (tensor measure)
    batch_label: str | None = None  # index name of the model axis; equal labels = diagonal
    out_map: tuple[torch.Tensor | None, ...] | None = None  # per axis: (k, dim), a (dim,) 0/1 weight, or None

    @property
    def degree(self) -> int:
        return self.term.degree + self.virtual


@dataclass
class Equation:
    """A doubled network as an einsum: indices per tensor, output, sizes, and where each
    tensor comes from (``sources``, resolved to arrays by :func:`gather`)."""

    inputs: list[tuple[str, ...]]
    output: tuple[str, ...]
    size_dict: dict[str, int]
    sources: list[tuple] = field(default_factory=list)


def _copy_legs(side_idx: int, side: Side, c: int, rank: int = 1) -> tuple[str, ...]:
    """Leg names of copy ``c``; a virtual copy gets ``rank`` fresh legs (the input space's)."""
    lab = LABELS[side_idx]
    t = side.term
    if c < t.degree:
        return tuple(f"{lab}|{leg}" for leg in t.copies[c])
    return tuple(f"{lab}|v{c}.{a}" for a in range(len(t.in_shape) or rank))


def _space_rank(kernel, label: str) -> int:
    """Rank of one input copy of side ``label`` (1 for vectors, 2 for sequences)."""
    return len(kernel.spaces[label].shape)


def _block_key(sides, block, kernel) -> tuple:
    """How a block's pieces are looked up: by the sides of its copies, or (a copy-aware
    kernel, see :mod:`tnsim.plan._readers`) by the copies themselves."""
    if getattr(kernel, "copy_aware", False):
        return ("cblock",) + tuple(block)
    return ("block",) + tuple(LABELS[si] for si, _ in block)


def _pieces(kernel, tag):
    if tag[0] == "pad":
        return kernel.pad(tag[1])
    if tag[0] == "cblock":
        return kernel.block_of(tag[1:])
    return kernel.block(tag[1:])


def build_equation(sides: list[Side], blocks: list[tuple], kernel, open_outputs: bool) -> Equation:
    """Doubled network of ``sides`` joined by kernel pieces for the given ``blocks``.

    Copies are addressed as ``(side index, copy index)``; copy indices past a term's degree are
    its virtual (padding) copies, which carry the kernel's pad vector.
    """
    eq = Equation([], (), {})
    rank = [
        1 if side.term.degree or side.degree == 0 else _space_rank(kernel, LABELS[si])
        for si, side in enumerate(sides)
    ]
    rename, unjoined = _joined_legs(sides, blocks, kernel, open_outputs, rank)

    def add(inds, source, shape):
        inds = tuple(rename.get(i, i) for i in inds)
        if len(inds) != len(shape):
            raise AssertionError(f"indices {inds} do not fit a tensor of shape {tuple(shape)}")
        if len(set(inds)) != len(inds):  # copies that share a position: take the diagonal
            seen = list(dict.fromkeys(inds))
            source = ("diag", source, inds)
            inds, shape = tuple(seen), [shape[inds.index(i)] for i in seen]
        for i, s in zip(inds, shape):
            eq.size_dict[i] = int(s)
        eq.inputs.append(inds)
        eq.sources.append(source)

    for si, side in enumerate(sides):  # term tensors
        t = side.term
        pre = (side.batch_label,) if side.batch_label else ()
        if bool(pre) != (t.batch is not None):
            raise AssertionError("a batched term needs a batch label and vice versa")
        for ti, (ix, x) in enumerate(zip(t.inds, t.arrays)):
            add(pre + tuple(f"{LABELS[si]}|{i}" for i in ix), ("t", si, ti), tuple(x.shape))

    side_of_role = {"a": 0, "b": min(1, len(sides) - 1)}  # whose model stack a piece follows

    def attach(pieces: tuple[Piece, ...], legs: list[tuple[str, ...]], tag, where=None) -> None:
        for pi, piece in enumerate(pieces):
            if piece.joins and (where, pi) not in unjoined:
                continue  # its two legs were renamed into one index (see _joined_legs)
            inds = tuple(sides[side_of_role[r]].batch_label for r in piece.batch)
            inds += tuple(legs[slot][axis] for slot, axis in piece.legs)
            add(inds, ("k", tag, pi), tuple(piece.array.shape))

    for si, side in enumerate(sides):
        for c in range(side.term.degree, side.degree):
            attach(kernel.pad(LABELS[si]), [_copy_legs(si, side, c, rank[si])], ("pad", LABELS[si]))
    for bi, block in enumerate(blocks):  # a virtual copy carries its pad vector and its block's pieces
        tag = _block_key(sides, block, kernel)
        legs = [_copy_legs(si, sides[si], c, rank[si]) for si, c in block]
        attach(_pieces(kernel, tag), legs, tag, bi)

    batch_out = list(dict.fromkeys(s.batch_label for s in sides if s.batch_label))
    if open_outputs:
        outs = [f"{LABELS[si]}|{o}" for si, side in enumerate(sides) for o in side.term.outputs]
        eq.output = tuple(batch_out) + tuple(rename.get(o, o) for o in outs)
        return eq
    a, b = sides
    for axis, (oa, ob) in enumerate(zip(a.term.outputs, b.term.outputs)):
        ma = a.out_map[axis] if a.out_map else None
        mb = b.out_map[axis] if b.out_map else None
        if _joined_output(ma, mb):
            if ma is not None:  # a diagonal weight on the joined index (see _joined_legs)
                add((f"a|{oa}",), ("map", 0, axis), tuple(ma.shape))
            continue
        for si, (m, leg) in enumerate(((ma, f"a|{oa}"), (mb, f"b|{ob}"))):
            if m is None:
                dim = sides[si].term.size_dict[leg.split("|", 1)[1]]
                add((f"k.{axis}", leg), ("eye", dim), (dim, dim))
            elif m.dim() == 1:
                add((f"k.{axis}", leg), ("selector", si, axis), (m.shape[0] - 1, m.shape[0]))
            else:
                add((f"k.{axis}", leg), ("map", si, axis), tuple(m.shape))
    eq.output = tuple(batch_out)
    return eq


def _joined_output(ma, mb) -> bool:
    """Whether one output axis is compared by joining its two legs: no map on either side, or
    the same diagonal weight (a padded output's ``(0, 1, ..., 1)``) on both."""
    if ma is None and mb is None:
        return True
    return ma is not None and mb is not None and ma.dim() == 1 and mb.dim() == 1


def selector_matrix(weights: torch.Tensor) -> torch.Tensor:
    """The ``(dim - 1, dim)`` selector of a padded output's weight ``(0, 1, ..., 1)`` (the only
    diagonal weight there is: decided from the shape, so no host sync and no data access)."""
    return torch.eye(weights.shape[0], dtype=weights.dtype, device=weights.device)[1:]


def _joined_legs(sides, blocks, kernel, open_outputs: bool, rank):
    """Index renames that replace identity kernel pieces (and identity output joins).

    Each identity piece between legs of two slots of a block (and, with
    closed outputs, each output axis compared without a map) merges its two indices; merged
    classes (a shared position hyperindex can chain several) are named after their first
    member. Contracting with :math:`\\delta_{ij}` is the same as naming ``i`` and ``j`` alike.
    With open outputs, two output legs are never merged (an einsum output names each index
    once): such a piece stays a tensor. Returns the renames and the ``(block, piece)`` pairs
    left as tensors.
    """
    parent: dict[str, str] = {}
    unjoined: set[tuple[int, int]] = set()
    outs: set[str] = set()
    if open_outputs:
        outs = {f"{LABELS[si]}|{o}" for si, side in enumerate(sides) for o in side.term.outputs}
    holds_output: dict[str, bool] = {}

    def find(i):
        while parent.get(i, i) != i:
            i = parent[i]
        return i

    def union(i, j) -> bool:
        ri, rj = find(i), find(j)
        if ri == rj:
            return True
        oi, oj = holds_output.get(ri, ri in outs), holds_output.get(rj, rj in outs)
        if oi and oj:
            return False
        parent[max(ri, rj)] = min(ri, rj)
        holds_output[min(ri, rj)] = oi or oj
        return True

    for bi, block in enumerate(blocks):
        if len(block) < 2:
            continue
        pieces = _pieces(kernel, _block_key(sides, block, kernel)) or ()
        legs = [_copy_legs(si, sides[si], c, rank[si]) for si, c in block]
        for pi, piece in enumerate(pieces):
            if piece.joins:
                (wp, ap), (wq, aq) = piece.legs
                if not union(legs[wp][ap], legs[wq][aq]):
                    unjoined.add((bi, pi))
    if not open_outputs and len(sides) == 2:
        a, b = sides
        for axis, (oa, ob) in enumerate(zip(a.term.outputs, b.term.outputs)):
            if _joined_output(a.out_map[axis] if a.out_map else None, b.out_map[axis] if b.out_map else None):
                union(f"a|{oa}", f"b|{ob}")
    return {i: find(i) for i in parent}, unjoined


def gather(eq: Equation, sides: list[Side], arrays: list[list[torch.Tensor]], kernel, like) -> list[torch.Tensor]:
    """The arrays of a doubled network, in the order of ``eq.inputs``."""
    cache: dict = {}
    return [_resolve(src, sides, arrays, kernel, like, cache) for src in eq.sources]


def _resolve(src, sides, arrays, kernel, like, cache):
    kind = src[0]
    if kind == "t":
        return arrays[src[1]][src[2]]
    if kind == "k":
        tag, pi = src[1], src[2]
        if tag not in cache:
            cache[tag] = _pieces(kernel, tag)
        return cache[tag][pi].array
    if kind == "eye":
        return torch.eye(src[1], dtype=like.dtype, device=like.device)
    if kind == "map":
        return sides[src[1]].out_map[src[2]]
    if kind == "selector":
        return selector_matrix(sides[src[1]].out_map[src[2]])
    if kind == "diag":
        x = _resolve(src[1], sides, arrays, kernel, like, cache)
        inds = src[2]
        seen = list(dict.fromkeys(inds))
        letters = {i: chr(97 + n) for n, i in enumerate(seen)}
        return torch.einsum("".join(letters[i] for i in inds) + "->" + "".join(letters[i] for i in seen), x)
    raise AssertionError(src)
