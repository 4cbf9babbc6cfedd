"""Doubled networks and pairings: two models' terms joined by a measure's kernel pieces.

* :mod:`._sides` — :class:`Side`, :func:`build_equation` (one doubled network per pairing);
* :mod:`._pairings` — which pairings or partitions are summed over, one per orbit.
"""

from ._pairings import (
    aligned_blocks,
    count_orbits,
    homogenised_group,
    live_pairings,
    pairings,
    vanishing_rule,
)
from ._sides import Equation, Side, build_equation, gather, selector_matrix

__all__ = ["Side", "Equation", "build_equation", "gather", "pairings", "live_pairings", "vanishing_rule",
           "count_orbits", "aligned_blocks", "homogenised_group", "selector_matrix"]
