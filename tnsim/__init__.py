"""tnsim: exact, symmetry-invariant similarity of multilinear (tensor-network) models.

Compile a model into a sum of tensor-network terms, build the doubled network of two models,
let cotengra plan the contraction and torch run it.
"""

from . import algebra, authors, baselines, checkpoints, data, errors, nn, plot  # plot: lazily
from ._memory import memory_limit, set_memory_limit
from .api import Comparison, compare, cost, inner, norm, similarity
from .errors import (
    CheckpointError,
    NonFiniteError,
    NotMultilinearError,
    ShapeMismatchError,
    StructureError,
    TnsimError,
    UnaffordableError,
)
from .frontends import (
    as_network,
    compile,
    from_quimb,
    head,
    network_from_spec,
    network_from_terms,
    register,
    slice,  # tnsim.slice (kept out of __all__: it is also a builtin)
    term_from_spec,
    trace,
)
from .ir import (
    Network,
    Term,
    add,
    at_positions,
    chain_slice,
    compose,
    concat,
    cp_term,
    find_symmetries,
    positionwise,
    stack,
    unstack,
    with_symmetries,
)
from .measures import CategoricalMeasure, GaussianMeasure, Measure, ProductMeasure, TensorMeasure
from .methods import EXACT_BUDGET_CONTRACTIONS, EXACT_BUDGET_FLOPS, Cost, similarity_matrix
from .plan import cache_dir, clear_cache

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
    "ProductMeasure",
    "CategoricalMeasure",
    "Measure",
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
