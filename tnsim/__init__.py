"""tnsim: exact, symmetry-invariant similarity of multilinear (tensor-network) models.

Compile a model into a sum of tensor-network terms, build the doubled network of two models,
let cotengra plan the contraction and torch run it.
"""

from . import errors, nn
from .api import (
    EXACT_BUDGET_CONTRACTIONS,
    EXACT_BUDGET_FLOPS,
    Comparison,
    Cost,
    as_network,
    compare,
    cost,
    inner,
    norm,
    similarity,
)
from .compile import compile, register
from .errors import (
    CheckpointError,
    NonFiniteError,
    NotMultilinearError,
    ShapeMismatchError,
    StructureError,
    TnsimError,
    UnaffordableError,
)
from .matrix import similarity_matrix
from .measures import GaussianMeasure, TensorMeasure
from .network import Network, add, compose, stack, unstack
from .paths import cache_dir, clear_cache, memory_limit, set_memory_limit
from .term import Term, cp_term

__version__ = "0.1.0"

__all__ = [
    "nn",
    "errors",
    "compile",
    "register",
    "inner",
    "norm",
    "similarity",
    "similarity_matrix",
    "compare",
    "cost",
    "Comparison",
    "Cost",
    "as_network",
    "Network",
    "Term",
    "cp_term",
    "compose",
    "add",
    "stack",
    "unstack",
    "TensorMeasure",
    "GaussianMeasure",
    "cache_dir",
    "clear_cache",
    "set_memory_limit",
    "memory_limit",
    "EXACT_BUDGET_FLOPS",
    "EXACT_BUDGET_CONTRACTIONS",
    "TnsimError",
    "NotMultilinearError",
    "ShapeMismatchError",
    "NonFiniteError",
    "UnaffordableError",
    "StructureError",
    "CheckpointError",
]
