"""tnsim: exact, symmetry-invariant similarity of multilinear (tensor-network) models.

Compile a model into a sum of tensor-network terms, build the doubled network of two models,
let cotengra plan the contraction and torch run it.
"""

from . import algebra, errors, nn
from . import authors, baselines, checkpoints, data, plot  # plot imports matplotlib lazily
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
    MeasureError,
    NonFiniteError,
    NotMultilinearError,
    ShapeMismatchError,
    StructureError,
    TnsimError,
    UnaffordableError,
)
from .matrix import similarity_matrix
from .measures import GaussianMeasure, TensorMeasure
from .network import (
    Network,
    add,
    at_positions,
    chain_slice,
    compose,
    concat,
    positionwise,
    stack,
    unstack,
)
from .parts import head, slice  # tnsim.slice (kept out of __all__: it is also a builtin)
from .paths import cache_dir, clear_cache, memory_limit, set_memory_limit
from .spec import from_quimb, network_from_spec, network_from_terms, term_from_spec
from .symmetry import find_symmetries, with_symmetries
from .term import Term, cp_term
from .trace import trace

__version__ = "0.1.0"

__all__ = [
    "nn",
    "errors",
    "baselines",
    "checkpoints",
    "authors",
    "data",
    "plot",
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
    "concat",
    "positionwise",
    "at_positions",
    "chain_slice",
    "head",
    "term_from_spec",
    "network_from_spec",
    "network_from_terms",
    "from_quimb",
    "find_symmetries",
    "with_symmetries",
    "trace",
    "algebra",
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
    "MeasureError",
]
