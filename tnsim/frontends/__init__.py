"""Front-ends: from what a user has to the network IR.

* :func:`compile` — registered layers (``tnsim.nn``, ``torch.nn.Linear``, ...) by their
  compilers (:mod:`._compile`, registry in :mod:`._registry`), anything else traced;
* :func:`trace` — torch.fx tracing of a polynomial ``forward`` (:mod:`._trace`);
* :func:`network_from_spec` / :func:`from_quimb` — einsum strings and quimb networks
  (:mod:`._spec`);
* :func:`slice` / :func:`head` — parts of a model (:mod:`._parts`).
"""

from ._compile import as_network, compile, trace
from ._parts import head, slice
from ._registry import register
from ._spec import from_quimb, network_from_spec, network_from_terms, term_from_spec

__all__ = ["compile", "trace", "register", "as_network", "head", "slice", "from_quimb",
           "network_from_spec", "network_from_terms", "term_from_spec"]
