"""Doubled networks and pairings: two models' terms joined by a measure's kernel pieces.

* :mod:`._sides` — :class:`Side`, :func:`build_equation` (one doubled network per pairing);
* :mod:`._pairings` — which pairings or partitions are summed over, one per orbit.
"""

from ._pairings import aligned_blocks, count_orbits, homogenised_group, pairings, vanishing_rule
from ._sides import Equation, Side, build_equation, gather

__all__ = ["Side", "Equation", "build_equation", "gather", "pairings", "vanishing_rule",
           "count_orbits", "aligned_blocks", "homogenised_group"]
