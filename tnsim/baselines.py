r"""Baseline similarity metrics, in the same API as :func:`tnsim.similarity`.

=================  ============================================================================
name               what it compares
=================  ============================================================================
``"matrix"``       *local* weight cosine: for each weight matrix :math:`W^{(l)}`, the cosine of
                   the flattened matrices of the two models, averaged over matrices. Fooled by
                   hidden-unit permutations, left/right swaps, rescalings and gauges.
``"output"``       *behavioural* cosine on a data set or a chosen input distribution:
                   :math:`\sum_n f_a(x_n)\cdot f_b(x_n) / \sqrt{\sum_n |f_a(x_n)|^2
                   \sum_n |f_b(x_n)|^2}` (``centred=True``: outputs minus their means).
``"cka"``          linear CKA (Kornblith et al., 2019) of hidden activations on a data set,
                   :math:`\|H_b^\top H_a\|_F^2 / (\|H_a^\top H_a\|_F\,\|H_b^\top H_b\|_F)` with
                   column-centred :math:`H`.
``"monte_carlo"``  the empirical approximation of ``tnsim.similarity(measure="gaussian")``: the
                   output cosine on ``n`` samples of :math:`\mathcal N(\text{mean},\text{cov})`
                   (or another distribution), with a delta-method standard error.
=================  ============================================================================

Each is a pairwise function returning a float (:func:`monte_carlo`: an :class:`Estimate`, value
and standard error) and a matrix function registered in :data:`METRICS` under its name, so that
``tnsim.similarity_matrix(models, measure=name, **options)`` draws any heat-map for any metric.
Options common to the output-based metrics: ``outputs`` (a list of output indices, or a
``(k, d_out)`` projection, as in :func:`tnsim.similarity`) and ``centred``.

Baselines run forward passes or read parameters, so they take ``torch.nn.Module`` objects
(compiled :class:`~tnsim.Network` objects are refused with a clear error).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .errors import ArgumentTypeError, InvalidArgumentError, ShapeMismatchError
from .measures import GaussianMeasure

__all__ = [
    "METRICS",
    "Estimate",
    "matrix",
    "matrix_cosine",
    "output_cosine",
    "cka",
    "monte_carlo",
    "matrix_cosine_matrix",
    "output_cosine_matrix",
    "cka_matrix",
    "monte_carlo_matrix",
]


@dataclass(frozen=True)
class Estimate:
    """A Monte Carlo estimate: ``value`` with its standard error ``stderr`` from ``n`` samples."""

    value: float
    stderr: float
    n: int

    def __float__(self) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"Estimate({self.value:.6f} ± {self.stderr:.2g}, n={self.n})"


# --- helpers ---------------------------------------------------------------------------------


def _modules(models, metric: str) -> list[torch.nn.Module]:
    models = list(models)
    if not models:
        raise InvalidArgumentError(f"baseline {metric!r} needs at least one model on each side")
    for i, m in enumerate(models):
        if not isinstance(m, torch.nn.Module):
            raise ArgumentTypeError(
                f"baseline {metric!r} runs the models, so it needs torch.nn.Module objects; "
                f"model {i} is a {type(m).__name__}"
            )
    return models


def _dtype(model: torch.nn.Module) -> torch.dtype:
    p = next(model.parameters(), None)
    return torch.float32 if p is None else p.dtype


def _project(y: torch.Tensor, outputs) -> torch.Tensor:
    """Outputs ``y`` (shape ``(n, d_out)``) restricted to ``outputs`` (indices or a projection)."""
    if outputs is None:
        return y
    d = y.shape[-1]
    if isinstance(outputs, torch.Tensor) and outputs.dim() == 2:
        if outputs.shape[1] != d:
            raise ShapeMismatchError(
                f"output projection has shape {tuple(outputs.shape)}, the models have {d} outputs"
            )
        return y @ outputs.to(y.dtype).T
    idx = [int(i) for i in (outputs.tolist() if isinstance(outputs, torch.Tensor) else outputs)]
    bad = [i for i in idx if not -d <= i < d]
    if bad:
        raise ShapeMismatchError(f"output indices {bad} out of range for {d} outputs")
    return y[:, idx]


def _forward(model: torch.nn.Module, x: torch.Tensor, outputs, label: str = "model") -> torch.Tensor:
    """Outputs of ``model`` on the batch ``x``, flattened per sample, float64.

    Raises :class:`~tnsim.errors.ShapeMismatchError` naming the model and the input shape when
    the model cannot take the inputs (torch's own error is a ``RuntimeError``).
    """
    with torch.no_grad():
        try:
            y = model(x.to(_dtype(model)))
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ShapeMismatchError(
                f"{label} ({type(model).__name__}) cannot take inputs of shape "
                f"{tuple(x.shape[1:])} (per sample): {first}"
            ) from None
    return _project(y.reshape(len(x), -1), outputs).to(torch.float64)


def _gaussian_factor(mean, cov, d: int):
    r"""``(mean, A)`` with ``A @ A.T == cov`` for sampling :math:`\mathcal N(\text{mean},
    \text{cov})` in ``d`` dimensions, checked like the exact measure checks them.

    Cholesky when ``cov`` is positive definite, else (positive semi-definite but singular) the
    eigendecomposition, eigenvalues at rounding level set to zero.
    """
    GaussianMeasure(mean=mean, cov=cov)  # the checks and messages of the exact measure
    for label, x, want in (("mean", mean, (d,)), ("cov", cov, (d, d))):
        if x is not None and tuple(torch.as_tensor(x).shape) != want:
            raise ShapeMismatchError(
                f"{label} has shape {tuple(torch.as_tensor(x).shape)}, the models take "
                f"{d} input features (expected {want})"
            )
    mu = None if mean is None else torch.as_tensor(mean, dtype=torch.float64)
    if cov is None:
        return mu, None
    c = torch.as_tensor(cov, dtype=torch.float64)
    factor, info = torch.linalg.cholesky_ex(c)
    if int(info) != 0:  # singular: cov = V diag(w) V^T, rounding-level eigenvalues set to 0
        w, v = torch.linalg.eigh(c)
        tol = len(w) * torch.finfo(torch.float64).eps * float(w.abs().max())
        factor = v * torch.where(w > tol, w, torch.zeros_like(w)).sqrt()
    return mu, factor


def _sampler(distribution, seed: int, mean, cov, data):
    """``start(d)`` opens a fresh seeded stream ``nxt(count) -> (count, d)`` of inputs, so that a
    second pass over the samples sees exactly the same inputs."""
    from .data import sample

    def start(d: int) -> Callable[[int], torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        gaussian = distribution == "gaussian" and (mean is not None or cov is not None)
        mu, factor = _gaussian_factor(mean, cov, d) if gaussian else (None, None)

        def nxt(count: int) -> torch.Tensor:
            if callable(distribution):
                return distribution(count, g)
            if gaussian:
                z = torch.randn(count, d, generator=g, dtype=torch.float64)
                if factor is not None:
                    z = z @ factor.T
                return z + (0 if mu is None else mu)
            return sample(distribution, count, d, g, data=data, dtype=torch.float64)

        return nxt

    return start


def _input_dim(model: torch.nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            return m.in_features
    raise InvalidArgumentError(f"cannot tell the input dimension of {type(model).__name__}; pass data=")


# --- output cosine and Monte Carlo (one engine) ----------------------------------------------


def _chunks(n: int, chunk: int):
    start = 0
    while start < n:
        yield start, min(chunk, n - start)
        start += chunk


def _cosine_stats(models_a, models_b, batches, centred: bool, outputs, stderr: bool):
    """Cosines (and delta-method standard errors) of outputs accumulated over input batches.

    ``batches()`` yields input batches (called twice when ``centred``: the first pass gets the
    output means). Per sample :math:`u_{ab} = y_a\\cdot y_b`, :math:`v_a = |y_a|^2`,
    :math:`w_b = |y_b|^2`; the cosine is :math:`\\bar u/\\sqrt{\\bar v\\bar w}` and its variance
    :math:`g^\\top\\mathrm{Cov}(u, v, w)\\,g/n` with :math:`g = (1, -r/2\\bar v\\cdot\\bar u,
    -r/2\\bar w\\cdot\\bar u)/\\sqrt{\\bar v\\bar w}`.
    """
    same = models_b is models_a

    def outs(models, x, side):
        ys = [_forward(m, x, outputs, f"model {i}{side}") for i, m in enumerate(models)]
        shapes = {tuple(y.shape[1:]) for y in ys}
        if len(shapes) > 1:
            raise ShapeMismatchError(
                f"the models{side} have outputs of different sizes {sorted(shapes)}"
            )
        return torch.stack(ys)  # (N, c, k)

    def both(x):
        ya = outs(models_a, x, "" if same else " (first list)")
        yb = ya if same else outs(models_b, x, " (second list)")
        if ya.shape[-1] != yb.shape[-1]:
            raise ShapeMismatchError(
                f"the models have {ya.shape[-1]} and {yb.shape[-1]} outputs per sample; "
                "output cosines compare outputs of one size"
            )
        return ya, yb

    mu_a = mu_b = None
    if centred:
        n, sa, sb = 0, 0.0, 0.0
        for x in batches():
            ya, yb = both(x)
            sa = sa + ya.sum(1)
            sb = sa if same else sb + yb.sum(1)
            n += len(x)
        mu_a, mu_b = sa[:, None] / n, (sa if same else sb)[:, None] / n
    acc: dict[str, torch.Tensor | float] = {}

    def add(key, value):
        acc[key] = acc[key] + value if key in acc else value

    n = 0
    for x in batches():
        ya, yb = both(x)
        if centred:
            ya, yb = ya - mu_a, yb - mu_b
        u = torch.einsum("ack,bck->cab", ya, yb)  # (c, N_a, N_b)
        v, w = (ya * ya).sum(-1).T, (yb * yb).sum(-1).T  # (c, N_a), (c, N_b)
        add("u", u.sum(0))
        add("v", v.sum(0))
        add("w", w.sum(0))
        if stderr:
            add("uu", (u * u).sum(0))
            add("uv", (u * v[:, :, None]).sum(0))
            add("uw", (u * w[:, None, :]).sum(0))
            add("vw", v.T @ w)
            add("vv", (v * v).sum(0))
            add("ww", (w * w).sum(0))
        n += len(x)
    if n == 0:
        raise InvalidArgumentError("no input samples")
    m = {k: val / n for k, val in acc.items()}
    eu, ev, ew = m["u"], m["v"][:, None], m["w"][None, :]
    denom = torch.sqrt(torch.clamp(ev * ew, min=torch.finfo(torch.float64).tiny))
    r = eu / denom
    if same:
        r.diagonal().clamp_(-1, 1)
    if not stderr:
        return r, None
    cuu = m["uu"] - eu * eu
    cuv = m["uv"] - eu * ev
    cuw = m["uw"] - eu * ew
    cvw = m["vw"] - ev * ew
    cvv = (m["vv"] - m["v"] ** 2)[:, None]
    cww = (m["ww"] - m["w"] ** 2)[None, :]
    gu, gv, gw = 1 / denom, -r / (2 * ev), -r / (2 * ew)
    var = (
        gu * gu * cuu
        + gv * gv * cvv
        + gw * gw * cww
        + 2 * gu * gv * cuv
        + 2 * gu * gw * cuw
        + 2 * gv * gw * cvw
    )
    se = torch.sqrt(torch.clamp(var, min=0) / n)
    if same:
        se.diagonal().zero_()
    return r, se


def _data_batches(data: torch.Tensor, chunk: int):
    data = torch.as_tensor(data)
    if data.dim() == 1:
        raise ShapeMismatchError(
            f"data must have a leading sample axis, got shape {tuple(data.shape)}"
        )

    def batches():
        for start, count in _chunks(len(data), chunk):
            yield data[start : start + count]

    return batches


def _chunk_size(n_a: int, n_b: int) -> int:
    return max(256, int(4e6 // max(1, n_a * n_b)))


def output_cosine_matrix(
    models,
    models_b=None,
    *,
    data=None,
    distribution=None,
    n: int = 10_000,
    seed: int = 0,
    mean=None,
    cov=None,
    centred: bool = False,
    outputs=None,
) -> torch.Tensor:
    """Matrix of output cosines on ``data`` (rows are inputs) or on ``n`` samples of
    ``distribution`` (a name from :data:`tnsim.data.DISTRIBUTIONS`, ``"gaussian"`` with
    ``mean``/``cov``, or ``fn(count, generator) -> inputs``; ``data`` then feeds the
    data-based distributions). See :func:`output_cosine`."""
    ma = _modules(models, "output")
    mb = ma if models_b is None else _modules(models_b, "output")
    chunk = _chunk_size(len(ma), len(mb))
    if distribution is None:
        if data is None:
            raise InvalidArgumentError("baseline 'output' needs data= (inputs) or distribution=")
        batches = _data_batches(data, chunk)
    else:
        batches = _stream(distribution, n, seed, mean, cov, data, _input_dim(ma[0]), chunk)
    r, _ = _cosine_stats(ma, mb, batches, centred, outputs, stderr=False)
    return r


def _stream(distribution, n, seed, mean, cov, data, d, chunk):
    start = _sampler(distribution, seed, mean, cov, data)

    def batches():
        nxt = start(d)
        for _, count in _chunks(n, chunk):
            yield nxt(count)

    return batches


def output_cosine(
    a,
    b,
    data=None,
    *,
    distribution=None,
    n: int = 10_000,
    seed: int = 0,
    mean=None,
    cov=None,
    centred: bool = False,
    outputs=None,
) -> float:
    r"""Behavioural similarity: cosine of the two models' outputs over a set of inputs.

    .. math:: \frac{\sum_n f_a(x_n)\cdot f_b(x_n)}{\sqrt{\sum_n |f_a(x_n)|^2\,\sum_n |f_b(x_n)|^2}}

    — the empirical counterpart of ``tnsim.similarity(measure="gaussian")`` on the inputs
    given: the rows of ``data``, or ``n`` samples of ``distribution`` (seeded by ``seed``).

    Examples
    --------
    >>> import torch, tnsim
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> f = tnsim.nn.Bilinear(4, 6, 3)
    >>> x = torch.randn(100, 4)
    >>> round(tnsim.baselines.output_cosine(f, f, x), 9)
    1.0
    >>> round(tnsim.baselines.output_cosine(f, torch.nn.Sequential(f, tnsim.nn.Linear(3, 3)), x), 2) < 1
    True
    """
    return float(
        output_cosine_matrix(
            [a],
            [b],
            data=data,
            distribution=distribution,
            n=n,
            seed=seed,
            mean=mean,
            cov=cov,
            centred=centred,
            outputs=outputs,
        )[0, 0]
    )


def monte_carlo_matrix(
    models,
    models_b=None,
    *,
    n: int = 100_000,
    distribution="gaussian",
    mean=None,
    cov=None,
    centred: bool = False,
    outputs=None,
    seed: int = 0,
    data=None,
    return_stderr: bool = False,
):
    """Matrix of Monte Carlo functional cosines on ``n`` samples (shared by all models).

    With ``return_stderr=True`` returns ``(values, standard_errors)``. See :func:`monte_carlo`.
    """
    ma = _modules(models, "monte_carlo")
    mb = ma if models_b is None else _modules(models_b, "monte_carlo")
    if n < 2:
        raise InvalidArgumentError(f"monte_carlo needs n >= 2 samples, got {n}")
    chunk = _chunk_size(len(ma), len(mb))
    batches = _stream(distribution, n, seed, mean, cov, data, _input_dim(ma[0]), chunk)
    r, se = _cosine_stats(ma, mb, batches, centred, outputs, stderr=True)
    return (r, se) if return_stderr else r


def monte_carlo(
    a,
    b,
    *,
    n: int = 100_000,
    distribution="gaussian",
    mean=None,
    cov=None,
    centred: bool = False,
    outputs=None,
    seed: int = 0,
    data=None,
) -> Estimate:
    r"""Monte Carlo estimate of the functional (Gaussian) cosine, with a standard error.

    Draws ``n`` inputs :math:`x\sim\mathcal N(\text{mean},\text{cov})` (or another
    ``distribution``) and returns :math:`\hat r = \bar u/\sqrt{\bar v\,\bar w}` with
    :math:`u = f_a\cdot f_b`, :math:`v = |f_a|^2`, :math:`w = |f_b|^2` (outputs minus their
    sample means when ``centred``), and its delta-method standard error. This is the empirical
    approximation that ``tnsim.similarity(a, b, measure="gaussian", mean=..., cov=...)``
    computes exactly.

    Examples
    --------
    >>> import torch, tnsim
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> f, g = tnsim.nn.Bilinear(4, 6, 3).double(), tnsim.nn.Bilinear(4, 6, 3).double()
    >>> est = tnsim.baselines.monte_carlo(f, g, n=200_000)
    >>> abs(est.value - tnsim.similarity(f, g)) < 5 * est.stderr
    True
    """
    r, se = monte_carlo_matrix(
        [a],
        [b],
        n=n,
        distribution=distribution,
        mean=mean,
        cov=cov,
        centred=centred,
        outputs=outputs,
        seed=seed,
        data=data,
        return_stderr=True,
    )
    return Estimate(float(r[0, 0]), float(se[0, 0]), n)


# --- matrix (local) cosine -------------------------------------------------------------------


def _weights(model: torch.nn.Module, include_bias: bool) -> list[tuple[str, torch.Tensor]]:
    ws = [(k, p.detach()) for k, p in model.named_parameters() if p.dim() >= 2 or include_bias]
    if not ws:
        raise InvalidArgumentError(f"{type(model).__name__} has no weight matrices")
    return ws


def _restrict_last(ws, outputs, include_bias: bool):
    """Keep only the ``outputs`` rows of the read-out (the last weight matrix, and its bias)."""
    if outputs is None:
        return ws
    last = max(i for i, (_, w) in enumerate(ws) if w.dim() >= 2)
    name = ws[last][0]
    prefix = name.rsplit(".", 1)[0] + "." if "." in name else ""
    out = list(ws)
    for i, (k, w) in enumerate(ws):
        if i == last or (include_bias and k == prefix + "bias" and w.dim() == 1):
            out[i] = (k, _project(w.reshape(w.shape[0], -1).T, outputs).T)
    return out


def matrix_cosine_matrix(
    models, models_b=None, *, include_bias: bool = False, outputs=None, per_matrix: bool = False
):
    """Matrix of local (per-weight-matrix) cosines averaged over matrices.

    With ``per_matrix=True`` returns ``{parameter name: (N_a, N_b) matrix}`` instead.
    See :func:`matrix_cosine`.
    """
    ma = _modules(models, "matrix")
    mb = ma if models_b is None else _modules(models_b, "matrix")

    def flat(models):
        per = [_restrict_last(_weights(m, include_bias), outputs, include_bias) for m in models]
        names = [k for k, _ in per[0]]
        shapes = [tuple(w.shape) for _, w in per[0]]
        for i, p in enumerate(per[1:], 1):
            for (k, w), k0, s0 in zip(p, names, shapes):
                if k != k0 or tuple(w.shape) != s0:
                    raise ShapeMismatchError(
                        f"matrix cosine compares matrices one by one: model {i} has {k} of shape "
                        f"{tuple(w.shape)}, model 0 has {k0} of shape {s0}"
                    )
            if len(p) != len(names):
                raise ShapeMismatchError(
                    f"model {i} has {len(p)} weight matrices, model 0 {len(names)}"
                )
        return (
            names,
            shapes,
            [
                torch.stack([p[j][1].reshape(-1) for p in per]).to(torch.float64)
                for j in range(len(names))
            ],
        )

    names_a, shapes_a, wa = flat(ma)
    names_b, shapes_b, wb = (names_a, shapes_a, wa) if models_b is None else flat(mb)
    for k, sa, kb, sb in zip(names_a, shapes_a, names_b, shapes_b):
        if sa != sb or k != kb:
            raise ShapeMismatchError(
                f"matrix cosine compares matrices one by one: the first models have {k} of shape "
                f"{sa}, the second {kb} of shape {sb}"
            )
    if len(names_a) != len(names_b):
        raise ShapeMismatchError(
            f"the models have {len(names_a)} and {len(names_b)} weight matrices"
        )
    mats = {}
    for k, xa, xb in zip(names_a, wa, wb):
        na = xa.norm(dim=1, keepdim=True)
        nb = xb.norm(dim=1, keepdim=True)
        mats[k] = (xa @ xb.T) / torch.clamp(na * nb.T, min=torch.finfo(torch.float64).tiny)
    if per_matrix:
        return mats
    return torch.stack(list(mats.values())).mean(0)


def matrix_cosine(a, b, *, include_bias: bool = False, outputs=None, per_matrix: bool = False):
    r"""Local similarity: the cosine of each weight matrix, averaged over matrices.

    .. math:: \frac1L\sum_l \frac{\langle W_a^{(l)}, W_b^{(l)}\rangle_F}
              {\|W_a^{(l)}\|_F\,\|W_b^{(l)}\|_F}

    ``per_matrix=True`` returns ``{parameter name: cosine}``. ``outputs`` keeps only those rows
    of the read-out (the last weight matrix); the other matrices are shared by every output.
    Not invariant to weight-space symmetries: permuting the hidden units of a bilinear layer
    leaves the function unchanged but not this number.

    Examples
    --------
    >>> import torch, tnsim
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> f = tnsim.nn.Bilinear(4, 6, 3).double()
    >>> g = tnsim.nn.Bilinear(4, 6, 3).double()
    >>> with torch.no_grad():  # the same function, hidden units permuted
    ...     perm = torch.arange(5, -1, -1)
    ...     for name in ("left", "right"):
    ...         _ = getattr(g, name).weight.copy_(getattr(f, name).weight[perm])
    ...     _ = g.down.weight.copy_(f.down.weight[:, perm])
    >>> round(tnsim.similarity(f, g, measure="tensor"), 9), tnsim.baselines.matrix_cosine(f, g) < 0.9
    (1.0, True)
    """
    res = matrix_cosine_matrix(
        [a], [b], include_bias=include_bias, outputs=outputs, per_matrix=per_matrix
    )
    if per_matrix:
        return {k: float(v[0, 0]) for k, v in res.items()}
    return float(res[0, 0])


# --- linear CKA ------------------------------------------------------------------------------


def _hidden(model: torch.nn.Module, x: torch.Tensor, layer: str | None) -> torch.Tensor:
    """Activations: the output of submodule ``layer``, or (default) the input of the last
    ``torch.nn.Linear`` (for a bilinear read-out, :math:`Lx\\odot Rx`)."""
    named = dict(model.named_modules())
    if layer is None:
        linears = [k for k, m in named.items() if isinstance(m, torch.nn.Linear)]
        if not linears:
            raise InvalidArgumentError(f"{type(model).__name__} has no Linear layer; pass layer=")
        target, use_input = named[linears[-1]], True
    else:
        if layer not in named:
            raise InvalidArgumentError(
                f"no submodule {layer!r} in {type(model).__name__}: "
                f"use one of {', '.join(k for k in named if k)}"
            )
        target, use_input = named[layer], False
    seen = []

    def hook(mod, inputs, output):
        seen.append(inputs[0] if use_input else output)

    handle = target.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(x.to(_dtype(model)))
    finally:
        handle.remove()
    h = seen[-1].reshape(len(x), -1).to(torch.float64)
    return h - h.mean(0)


def cka_matrix(models, models_b=None, *, data=None, layer: str | None = None) -> torch.Tensor:
    """Matrix of linear CKA values of hidden activations on ``data``. See :func:`cka`."""
    ma = _modules(models, "cka")
    mb = ma if models_b is None else _modules(models_b, "cka")
    if data is None:
        raise InvalidArgumentError("baseline 'cka' needs data= (the inputs whose activations are compared)")
    x = torch.as_tensor(data)
    ha = [_hidden(m, x, layer) for m in ma]
    hb = ha if models_b is None else [_hidden(m, x, layer) for m in mb]

    def cross(hs1, hs2, symmetric: bool):
        # ||H_i^T H_j||_F^2, one GEMM per row of blocks (upper triangle only when symmetric)
        out = torch.empty(len(hs1), len(hs2), dtype=torch.float64)
        for i, h in enumerate(hs1):
            start = i if symmetric else 0
            rest = hs2[start:]
            g = h.T @ torch.cat(rest, 1)
            edges = [0, *torch.cumsum(torch.tensor([r.shape[1] for r in rest]), 0).tolist()]
            for j in range(len(rest)):
                out[i, start + j] = g[:, edges[j] : edges[j + 1]].square().sum()
                if symmetric:
                    out[start + j, i] = out[i, start + j]
        return out

    ab = cross(ha, hb, models_b is None)
    saa = torch.stack([(h.T @ h).square().sum() for h in ha]).sqrt()
    sbb = saa if models_b is None else torch.stack([(h.T @ h).square().sum() for h in hb]).sqrt()
    return ab / torch.clamp(saa[:, None] * sbb[None, :], min=torch.finfo(torch.float64).tiny)


def cka(a, b, data, *, layer: str | None = None) -> float:
    r"""Linear CKA of hidden activations on ``data``.

    :math:`\mathrm{CKA}(H_a, H_b) = \|H_b^\top H_a\|_F^2 / (\|H_a^\top H_a\|_F\,
    \|H_b^\top H_b\|_F)` with column-centred activations :math:`H` of shape
    ``(samples, units)``: the input of the last ``Linear`` layer by default (for a bilinear
    read-out :math:`D(Lx\odot Rx)` the products :math:`Lx\odot Rx`), or the output of the
    submodule named ``layer``. Invariant to orthogonal maps and isotropic scaling of the
    activations, not to general invertible maps or per-unit rescaling.

    Examples
    --------
    >>> import torch, tnsim
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> f = tnsim.nn.Bilinear(4, 6, 3)
    >>> round(tnsim.baselines.cka(f, f, torch.randn(50, 4)), 9)
    1.0
    """
    return float(cka_matrix([a], [b], data=data, layer=layer)[0, 0])


# --- registry --------------------------------------------------------------------------------

#: Baseline matrix functions by name: ``fn(models, models_b=None, **options) -> (N_a, N_b)``.
METRICS: dict[str, Callable] = {
    "matrix": matrix_cosine_matrix,
    "output": output_cosine_matrix,
    "cka": cka_matrix,
    "monte_carlo": monte_carlo_matrix,
}


def matrix(name: str, models, models_b=None, **options):
    """Similarity matrix of a baseline metric by name (what ``tnsim.similarity_matrix`` calls)."""
    if name not in METRICS:
        known = ", ".join(["tensor", "gaussian", *sorted(METRICS)])
        raise InvalidArgumentError(f"unknown measure {name!r}: use one of {known}")
    return METRICS[name](models, models_b, **options)
