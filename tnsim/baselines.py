"""Baseline similarity metrics (to be filled in): matrix cosine, output cosine, CKA, Monte Carlo.

Contract: every baseline is registered in :data:`METRICS` under a name, as a function
``fn(models, models_b=None, **options) -> torch.Tensor`` returning the ``(N, N_b)`` matrix;
:func:`tnsim.similarity_matrix` dispatches to it when ``measure`` is that name.
"""

from __future__ import annotations

METRICS: dict = {}


def matrix(name: str, models, models_b=None, **options):
    """Similarity matrix of a baseline metric by name."""
    if name not in METRICS:
        known = ", ".join(["tensor", "gaussian", *sorted(METRICS)])
        raise ValueError(f"unknown measure {name!r}: use one of {known}")
    return METRICS[name](models, models_b, **options)
