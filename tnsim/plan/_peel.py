r"""Peeling: tensors that every orbit of a term pair shares are applied once, to the orbit sum.

All orbits of one term pair join the same term tensors; they differ only in the kernel pieces
(or read-through blocks) between the copies. A tensor far from the copies, such as an output
map :math:`W_O` of an attention layer or the output maps of a comparison, is contracted into
every orbit:

.. math::
    \sum_{o} \mathrm{contract}(R_o, P) = \mathrm{contract}\Big(\sum_o R_o,\; P\Big)

for the peeled tensors :math:`P` and each orbit's rest :math:`R_o`, left open on the legs
:math:`P` shares with it. With :math:`n` orbits this saves :math:`(n-1)` applications of
:math:`P`. A tensor is a candidate when it holds an output leg and is not tiny; whether to peel
is decided from the planned flops (:func:`tnsim.plan._contract.contract_pairings`).
"""

from __future__ import annotations

import math

from ..doubled import Equation

__all__ = ["candidates", "split", "split_like", "PEEL_MIN_SIZE"]

#: Smallest tensor (elements) worth peeling: smaller ones (masks, pad vectors) are cheap to
#: apply per orbit, and peeling them would leave their legs open in the orbit sum.
PEEL_MIN_SIZE = 1024


def candidates(eq: Equation, outputs: set[str]) -> tuple[int, ...]:
    """Positions of the inputs of ``eq`` worth peeling: term tensors holding one of the
    ``outputs`` legs (output legs that are no copy's legs), and output maps, of at least
    :data:`PEEL_MIN_SIZE` elements."""
    out = []
    for k, (inds, src) in enumerate(zip(eq.inputs, eq.sources)):
        size = math.prod(eq.size_dict[i] for i in inds)
        if size < PEEL_MIN_SIZE:
            continue
        if src[0] in ("map", "selector", "eye") or (src[0] == "t" and outputs & set(inds)):
            out.append(k)
    return tuple(out)


def split(eq: Equation, peel: tuple[int, ...]) -> tuple[Equation, Equation] | None:
    """``(rest, final)``: the orbit without the peeled inputs, left open on the legs they share
    with it (after its own outputs), and the contraction of that rest with them to ``eq``'s
    output. ``None`` if nothing would be left to peel."""
    if not peel or len(peel) == len(eq.inputs):
        return None
    rest, open_legs = _rest(eq, peel)
    final = Equation(
        [open_legs] + [eq.inputs[k] for k in peel], eq.output, dict(eq.size_dict),
        [("sum",)] + [eq.sources[k] for k in peel],
    )
    return rest, final


def split_like(eq: Equation, like: Equation, peel: tuple[int, ...], final: Equation) -> Equation | None:
    """The rest of another orbit ``eq`` of the term pair whose first orbit ``like`` split into
    ``final`` (peeling ``peel``), with its open legs in ``final``'s order; ``None`` if the
    orbits do not line up.

    Identity joins rename indices per orbit, so the peeled tensors are found by source and
    this orbit's names are read through them (every orbit shares them) into the first's.
    """
    found: list[int] = []
    for k0 in peel:
        at = [k for k, src in enumerate(eq.sources) if src == like.sources[k0] and k not in found]
        if not at:
            return None
        found.append(at[0])
    if len(found) == len(eq.inputs):
        return None
    rest, open_legs = _rest(eq, tuple(found))
    to_first: dict = {}
    pairs = [zip(eq.inputs[k], like.inputs[k0]) for k, k0 in zip(found, peel)] + [zip(eq.output, like.output)]
    for legs in pairs:
        for here, there in legs:
            if to_first.setdefault(here, there) != there:
                return None
    if len(set(to_first.values())) != len(to_first):
        return None
    if {to_first.get(i) for i in open_legs} != set(final.inputs[0]):
        return None
    back = {there: here for here, there in to_first.items()}
    return Equation(rest.inputs, tuple(back[i] for i in final.inputs[0]), rest.size_dict, rest.sources)


def _rest(eq: Equation, peel: tuple[int, ...]) -> tuple[Equation, tuple[str, ...]]:
    """The orbit without the inputs ``peel``, open on its outputs and the legs it shares with them."""
    keep = [k for k in range(len(eq.inputs)) if k not in peel]
    held = {i for k in keep for i in eq.inputs[k]}
    peeled = [i for k in peel for i in eq.inputs[k]]
    open_legs = tuple(dict.fromkeys([i for i in eq.output if i in held] + [i for i in peeled if i in held]))
    rest = Equation([eq.inputs[k] for k in keep], open_legs, dict(eq.size_dict), [eq.sources[k] for k in keep])
    return rest, open_legs
