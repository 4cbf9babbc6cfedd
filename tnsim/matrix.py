"""Similarity matrices over many models (checkpoints x checkpoints heat-maps)."""

from __future__ import annotations

import torch

from .api import _cosine, _resolve_method, as_network, similarity
from .exact import Mode, exact
from .measures import GaussianMeasure, TensorMeasure, as_measure
from .network import stack
from .recursive import recursive

__all__ = ["similarity_matrix"]


def similarity_matrix(models, models_b=None, *, measure="gaussian", method: str = "auto",
                      mean=None, cov=None, outputs=None, centred: bool = False,
                      example_input=None, **baseline_options) -> torch.Tensor:
    """Matrix of similarities, shape ``(N, N)`` (or ``(N_a, N_b)`` with a second list).

    ``measure`` is ``"tensor"``, ``"gaussian"`` (or a measure object), or the name of a
    baseline metric from :mod:`tnsim.baselines` (extra keyword arguments go to it).

    Models of identical structure (checkpoints of one run) are stacked and compared in batched
    contractions (the model index is a batch index of the doubled network); otherwise pairs are
    computed one by one.

    Examples
    --------
    >>> import torch, tnsim
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> ms = [tnsim.nn.Bilinear(4, 6, 3) for _ in range(3)]
    >>> tnsim.similarity_matrix(ms, measure="tensor").shape
    torch.Size([3, 3])
    """
    if isinstance(measure, str) and measure not in ("tensor", "gaussian"):
        from . import baselines

        return baselines.matrix(measure, models, models_b, **baseline_options)
    if baseline_options:
        raise TypeError(f"unexpected options {sorted(baseline_options)} for measure {measure!r}")
    meas = as_measure(measure, mean, cov, centred)
    nets_a = [as_network(m, example_input) for m in models]
    nets_b = nets_a if models_b is None else [as_network(m, example_input) for m in models_b]
    if not nets_a or not nets_b:
        raise ValueError("similarity_matrix needs at least one model on each side")
    same_a = all(n.structure == nets_a[0].structure for n in nets_a)
    same_b = all(n.structure == nets_b[0].structure for n in nets_b)
    if same_a and same_b:
        sa = stack(nets_a)
        sb = sa if models_b is None else stack(nets_b)
        m = _resolve_method(method, nets_a[0], nets_b[0], meas, outputs)
        if m == "exact":
            ab = exact(sa, sb, meas, outputs)
            aa = exact(sa, sa, meas, outputs, mode=Mode("diag"))
            bb = aa if models_b is None else exact(sb, sb, meas, outputs, mode=Mode("diag"))
        else:
            ab, aa, bb = recursive(sa, sb, meas, outputs)
        return _cosine(ab, aa, bb)
    out = torch.empty(len(nets_a), len(nets_b), dtype=torch.float64)
    for i, na in enumerate(nets_a):
        for j, nb in enumerate(nets_b):
            if models_b is None and j < i:
                out[i, j] = out[j, i]
                continue
            out[i, j] = similarity(na, nb, measure=meas, method=method, outputs=outputs)
    return out


_ = (GaussianMeasure, TensorMeasure)
