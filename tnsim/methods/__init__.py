"""Methods: turn two prepared networks into inner products and similarities.

* :mod:`._prepare` — :class:`Prepared`: the pair checked, padded and given kernels once;
* :mod:`._exact` — one doubled network per orbit of pairings, summed over term pairs;
* :mod:`._recursive` — the layer-wise closure named by the measure;
* :mod:`._choose` — ``method="auto"``, :class:`Cost`, cosines;
* :mod:`._matrix` — similarity matrices as batched blocks.
"""

from ._choose import EXACT_BUDGET_CONTRACTIONS, EXACT_BUDGET_FLOPS, Cost, cosine, resolve_method
from ._exact import exact
from ._matrix import MatrixPlan, matrix_cost, plan_matrix, similarity_matrix
from ._prepare import Mode, Prepared, prepare
from ._recursive import canonical_chain, recursive

__all__ = ["EXACT_BUDGET_CONTRACTIONS", "EXACT_BUDGET_FLOPS", "Cost", "cosine", "resolve_method",
           "exact", "MatrixPlan", "matrix_cost", "plan_matrix", "similarity_matrix", "Mode",
           "Prepared", "prepare", "canonical_chain", "recursive"]
