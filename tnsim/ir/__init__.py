"""The network IR: a model is a sum of :class:`Term` s, each a tensor network with input
copies and output legs (:mod:`._term`); :class:`Network` holds the terms and the layer
structure (:mod:`._network`); :mod:`.algebra` combines networks; :mod:`._symmetry` finds the
copy permutations a term is invariant under; :mod:`._groups` enumerates orbits."""

from . import algebra
from ._network import (
    Network,
    add,
    at_positions,
    chain_slice,
    compose,
    concat,
    pad_input,
    positionwise,
    stack,
    unstack,
)
from ._symmetry import find_symmetries, with_symmetries
from ._term import Term, copy_support, cp_term, evaluate_term

__all__ = ["Term", "cp_term", "evaluate_term", "copy_support", "Network", "add", "at_positions",
           "chain_slice", "compose", "concat", "pad_input", "positionwise", "stack", "unstack",
           "find_symmetries", "with_symmetries", "algebra"]
