r"""Read-through: contract every block of copies with the tensors that read them, once.

In a doubled network each input copy's feature leg is usually held by one tensor of its term,
its *reader* (:math:`W_Q`, :math:`W_K`, :math:`W_V` of an attention head; :math:`L`, :math:`R`
of a bilinear layer). An orbit of pairings joins copies in blocks through kernel pieces, so
for a block :math:`\{c_a, c_b\}` with kernel piece :math:`G`, every orbit containing it forms

.. math::
    C_{c_a c_b} = W^{a}_{c_a}\, G\, W^{b\top}_{c_b}

(:math:`n^2 (d+1)^2 h` multiply-adds for a dense ``(n, d+1, n, d+1)`` state) and then combines
small head-space tensors. With :math:`k` copies per side and :math:`k!` bijections, the
plain loop forms :math:`k \cdot k!` such products; read-through forms the :math:`k^2` distinct
ones once per term pair and hands the orbits networks made of the rest of the terms and the
:math:`C` blocks (a copy-aware kernel, :class:`ReadKernel`). Blocks with a virtual
(homogenising) copy absorb its pad vector, singletons (means) their reader.

It applies to kernels whose pieces are plain arrays (no joined identity legs): the recursive
method's propagated states, where the pieces are dense and the saving is largest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch

from .._memory import check_allocation
from ..doubled import Side
from ..doubled._sides import LABELS
from ..measures import Kernel, Piece
from ..measures._base import KERNEL_FLAGS
from . import _paths as paths
from ._execute import execute, new_cache

__all__ = ["ReadTerm", "ReadKernel", "read_through"]


@dataclass(frozen=True, eq=False)
class ReadTerm:
    """A term without its readers: each copy's legs are its reader's other legs (and the
    copy's position legs). Quacks like :class:`~tnsim.ir._term.Term` for the planner."""

    inds: tuple[tuple[str, ...], ...]
    arrays: tuple[torch.Tensor, ...]
    copies: tuple[tuple[str, ...], ...]
    outputs: tuple[str, ...]
    batch: int | None
    coeff: float
    sizes: dict = field(repr=False)
    in_shape: tuple = ()

    @property
    def degree(self) -> int:
        return len(self.copies)

    @property
    def size_dict(self) -> dict[str, int]:
        return self.sizes

    @cached_property
    def structure(self) -> tuple:
        off = 0 if self.batch is None else 1
        shapes = tuple(tuple(int(s) for s in x.shape[off:]) for x in self.arrays)
        copy_sizes = tuple(tuple(self.sizes[i] for i in c) for c in self.copies)
        return ("read", self.inds, shapes, self.copies, copy_sizes, self.outputs)


def _readers(term) -> list[int] | None:
    """Per copy, the only tensor holding its feature leg (``None`` if some copy has none, or
    one tensor reads two copies)."""
    out = []
    for legs in term.copies:
        hold = [i for i, ix in enumerate(term.inds) if legs[-1] in ix]
        if len(hold) != 1:
            return None
        out.append(hold[0])
    return out if len(set(out)) == len(out) else None


def _diagonal(inds: tuple[str, ...], leg: str, x: torch.Tensor, batch) -> tuple[str, torch.Tensor] | None:
    r"""``(other leg, d)`` for a reader that is a diagonal matrix :math:`\mathrm{diag}(d)` (a
    residual's identity, without the pad coordinate and scaled by normalisation), whose product
    with a block only scales the block's leg by ``d``; ``None`` for any other reader."""
    off = 0 if batch is None else 1
    if len(inds) != 2 or x.dim() != 2 + off or x.shape[-1] != x.shape[-2] or x.device.type == "meta":
        return None
    d = torch.diagonal(x, dim1=-2, dim2=-1)
    if not torch.equal(x, torch.diag_embed(d)):
        return None
    return (inds[0] if inds[1] == leg else inds[1]), d


def _read_term(term, readers: list[int], arrays) -> tuple[ReadTerm, list[list[str]]]:
    """The term without its readers, and per copy the legs its blocks keep."""
    rest = [i for i in range(len(term.inds)) if i not in readers]
    candidates = []
    for c, legs in enumerate(term.copies):
        own = [i for i in term.inds[readers[c]] if i != legs[-1]] + list(legs[:-1])
        candidates.append(list(dict.fromkeys(own)))
    elsewhere: dict[str, int] = {}
    for i in rest:
        for leg in term.inds[i]:
            elsewhere[leg] = elsewhere.get(leg, 0) + 1
    for leg in term.outputs:
        elsewhere[leg] = elsewhere.get(leg, 0) + 1
    for legs in candidates:
        for leg in legs:
            elsewhere[leg] = elsewhere.get(leg, 0) + 1
    # a leg only one block holds (and nothing else) is summed inside that block
    kept = [[leg for leg in legs if elsewhere[leg] > 1] for legs in candidates]
    sizes = dict(term.size_dict)
    read = ReadTerm(
        inds=tuple(term.inds[i] for i in rest),
        arrays=tuple(arrays[i] for i in rest),
        copies=tuple(tuple(k) for k in kept),
        outputs=term.outputs,
        batch=term.batch,
        coeff=term.coeff,
        sizes=sizes,
    )
    return read, kept


class ReadKernel(Kernel):
    """Block tensors :math:`C` of a base kernel pre-contracted with the copies' readers,
    computed on first use and kept for every orbit of the term pair."""

    copy_aware = True

    def __init__(self, base: Kernel, sides: list[Side], arrays, readers, kept, dry: bool, stats: dict | None):
        for name in KERNEL_FLAGS:
            setattr(self, name, getattr(base, name, None))
        self.base, self.sides, self.arrays = base, sides, arrays
        self.readers, self.kept, self.dry, self.stats = readers, kept, dry, stats
        self.spaces = base.spaces
        self.structure = ("read", base.structure)
        self._blocks: dict = {}
        # the blocks of one base kernel share their first products (W_a G for every reader
        # of b, in every term pair of the step): kept on the base kernel, which lives as
        # long as the step
        if getattr(base, "_read_cache", None) is None:
            base._read_cache = new_cache()
        self._shared = base._read_cache

    def pad(self, s):
        return ()  # a virtual copy's pad vector is part of its block's tensor

    def block_of(self, block: tuple[tuple[int, int], ...]) -> tuple[Piece, ...] | None:
        if block not in self._blocks:
            self._blocks[block] = self._contract(block)
        return self._blocks[block]

    def _contract(self, block):
        base_pieces = self.base.block(tuple(LABELS[si] for si, _ in block))
        if base_pieces is None:
            return None
        inputs, arrays, sizes = [], [], {}
        side_of_role = {"a": 0, "b": min(1, len(self.sides) - 1)}

        def add(inds, x):
            inputs.append(tuple(inds))
            arrays.append(x)
            for i, s in zip(inds, x.shape):
                sizes[i] = int(s)

        slot_legs, out = [], []
        for k, (si, c) in enumerate(block):
            side = self.sides[si]
            term = side.term
            pre = (side.batch_label,) if term.batch is not None else ()
            if c < term.degree:
                legs = [f"{k}:{leg}" for leg in term.copies[c]]
                r = self.readers[si][c]
                diagonal = _diagonal(term.inds[r], legs[-1][len(f"{k}:"):], self.arrays[si][r], term.batch)
                if diagonal is None:
                    add(pre + tuple(f"{k}:{i}" for i in term.inds[r]), self.arrays[si][r])
                else:  # a diagonal reader (a residual's x): the piece's leg is scaled, not mapped
                    legs[-1] = f"{k}:{diagonal[0]}"
                    add(pre + (legs[-1],), diagonal[1])
                out += [f"{k}:{leg}" for leg in self.kept[si][c]]
            else:  # a virtual copy: its pad vector
                rank = len(self.base.spaces[LABELS[si]].shape)
                legs = [f"{k}:v.{a}" for a in range(rank)]
                for piece in self.base.pad(LABELS[si]):
                    add(tuple(legs[axis] for _, axis in piece.legs), piece.array)
            slot_legs.append(legs)
        for piece in base_pieces:
            labels = tuple(self.sides[side_of_role[r]].batch_label for r in piece.batch)
            add(labels + tuple(slot_legs[slot][axis] for slot, axis in piece.legs), piece.array)
        # the model axes the block depends on, as roles of the sides whose labels they are
        used = {i for inds in inputs for i in inds}
        batch_roles, batch = [], []
        for role in "ab":
            label = self.sides[side_of_role[role]].batch_label
            if label is not None and label in used and label not in batch:
                batch_roles.append(role)
                batch.append(label)
        batch = tuple(batch)
        output = batch + tuple(out)
        shape = [sizes[i] for i in output]
        like = base_pieces[0].array if base_pieces else self.like
        check_allocation(shape, like.dtype.itemsize, "a read-through block tensor")
        tree = paths.find_tree(inputs, output, sizes)
        if self.stats is not None:
            self.stats["flops"] = self.stats.get("flops", 0.0) + float(tree.total_flops())
            self.stats["max_size"] = max(self.stats.get("max_size", 0.0), float(tree.max_size()))
        if self.dry:
            value = torch.empty(shape, dtype=like.dtype, device="meta")
        else:
            value = execute(tree, [x if x.dtype == like.dtype else x.to(like.dtype) for x in arrays], keep=self._shared)
        legs, n = [], len(batch)
        for k, (si, c) in enumerate(block):
            if c < self.sides[si].term.degree:
                legs += [(k, a) for a in range(len(self.kept[si][c]))]
        assert len(legs) == len(shape) - n
        return (Piece(value, tuple(legs), tuple(batch_roles)),)


def read_through(sides: list[Side], kernel: Kernel, arrays, dry: bool, stats: dict | None):
    """``(sides, kernel, arrays)`` with readers pre-contracted into the blocks, or ``None``
    when some copy has no reader or the kernel joins legs (identity pieces)."""
    if getattr(kernel, "copy_aware", False) or not getattr(kernel, "readable", False):
        return None
    readers, kept, new_sides, new_arrays = [], [], [], []
    for side, arrs in zip(sides, arrays):
        term = side.term
        r = _readers(term)
        if r is None:
            return None
        read, legs = _read_term(term, r, arrs)
        readers.append(r)
        kept.append(legs)
        new_sides.append(Side(read, side.virtual, side.batch_label, side.out_map))
        new_arrays.append(list(read.arrays))
    return new_sides, ReadKernel(kernel, sides, arrays, readers, kept, dry, stats), new_arrays
