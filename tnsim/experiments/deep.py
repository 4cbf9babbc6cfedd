r"""Deep polynomial models for the cross-layer and symmetry experiments: stacks, transformations
that keep the function, per-layer comparisons, and Monte Carlo estimates of both measures.

Models are ``torch.nn.Sequential`` stacks of :class:`tnsim.nn.Bilinear` layers
:math:`y = D(Lx\odot Rx)` (optionally residual, :math:`y = x + D(Lx\odot Rx)`) and
:class:`tnsim.nn.Linear` maps (embeddings, heads).

Transformations that leave the function unchanged (each returns a new model):

* :func:`permute_hidden` — :math:`L\to PL,\ R\to PR,\ D\to DP^\top` in every bilinear layer;
* :func:`rescale_hidden` — :math:`L\to CL` with :math:`R\to C^{-1}R` (``"right"``) or
  :math:`D\to DC^{-1}` (``"down"``), :math:`C` diagonal and positive;
* :func:`swap_left_right` — :math:`L\leftrightarrow R` (the product is commutative);
* :func:`change_basis` — a basis change :math:`M` of the bond(s) between layers: the layer that
  writes the bond maps :math:`W\to MW`, residual layers on the bond are conjugated
  (:math:`L\to LM^{-1},\ R\to RM^{-1},\ D\to MD`), and the layer that reads it maps
  :math:`W\to WM^{-1}`.

Monte Carlo ground truths (plain sample averages, with a delta-method standard error from
:func:`tnsim.baselines.monte_carlo`):

* :func:`gaussian_mc` — the cosine :math:`E[f_a\cdot f_b]/\sqrt{E|f_a|^2 E|f_b|^2}` under
  :math:`x\sim\mathcal N(0, I)`, what ``measure="gaussian"`` computes;
* :func:`tensor_mc` — the tensor measure as an expectation. For a polynomial of degree at most
  :math:`K` let :math:`P(z_0, z) = z_0^K f(z/z_0)` be its homogenisation on the padded
  coordinates :math:`\tilde z = (z_0, z)\in\mathbb C^{d+1}`. For :math:`\tilde z` standard complex
  Gaussian (:math:`E\,\tilde z\tilde z^{*} = I`, :math:`E\,\tilde z\tilde z^\top = 0`) the
  monomials are orthogonal, :math:`E[\tilde z^\alpha\,\overline{\tilde z^\beta}] =
  \delta_{\alpha\beta}\,\alpha!`, while the symmetrised tensor of :math:`\sum_\alpha c_\alpha
  \tilde z^\alpha` has :math:`K!/\alpha!` entries :math:`c_\alpha\,\alpha!/K!` per monomial, so

  .. math:: \langle \mathrm{Sym}\,T_a, \mathrm{Sym}\,T_b\rangle
            = \frac{1}{K!}\,E\big[\mathrm{Re}\,P_a(\tilde z)\cdot\overline{P_b(\tilde z)}\big]

  (the Fischer inner product). The cosine of the two sides is the tensor similarity, estimated
  here from samples without any tensor network.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence

import torch

from .. import baselines, similarity
from .. import compile as compile_network
from ..errors import InvalidArgumentError, ShapeMismatchError, StructureError
from ..nn import Bilinear, Linear

__all__ = [
    "change_basis",
    "gaussian_mc",
    "max_output_difference",
    "parameter_cosine",
    "per_layer",
    "permute_hidden",
    "pure_stack",
    "random_invertible",
    "random_orthogonal",
    "randomise",
    "rescale_hidden",
    "residual_stack",
    "standard_errors",
    "swap_left_right",
    "tensor_mc",
]


# --- models ----------------------------------------------------------------------------------


def pure_stack(dims: Sequence[int], hidden: int, bias: bool = False) -> torch.nn.Sequential:
    """``Bilinear(dims[0], hidden, dims[1]) → … → Bilinear(dims[-2], hidden, dims[-1])``.

    A stack of :math:`n` layers is a polynomial of degree :math:`2^n`.
    """
    if len(dims) < 2:
        raise ShapeMismatchError(f"dims needs at least an input and an output size, got {dims}")
    return torch.nn.Sequential(
        *[Bilinear(dims[i], hidden, dims[i + 1], bias=bias) for i in range(len(dims) - 1)]
    )


def residual_stack(
    d_in: int, d_stream: int, hidden: int, d_out: int, blocks: int
) -> torch.nn.Sequential:
    """``Linear(d_in, d_stream)``, ``blocks`` residual ``Bilinear(d_stream, hidden)``,
    ``Linear(d_stream, d_out)``: :math:`y_{l+1} = y_l + D_l(L_l y_l\\odot R_l y_l)`."""
    if blocks < 1:
        raise StructureError(f"blocks must be at least 1, got {blocks}")
    return torch.nn.Sequential(
        Linear(d_in, d_stream),
        *[Bilinear(d_stream, hidden, d_stream, residual=True) for _ in range(blocks)],
        Linear(d_stream, d_out),
    )


def randomise(model: torch.nn.Module, generator: torch.Generator, std: float = 1.0):
    """Draw every parameter of ``model`` (in place) from :math:`\\mathcal N(0, \\mathrm{std}^2/
    \\mathrm{fan\\_in})`, so that every layer keeps its input's scale; returns ``model``."""
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p.shape[1] if p.dim() == 2 else 1
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * std / fan_in**0.5)
    return model


def _layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    if not isinstance(model, torch.nn.Sequential):
        raise StructureError(f"model must be a torch.nn.Sequential, got {type(model).__name__}")
    return list(model)


def _bilinears(model: torch.nn.Module) -> list[Bilinear]:
    return [m for m in _layers(model) if isinstance(m, Bilinear)]


# --- transformations that keep the function --------------------------------------------------


def _rows(linear: torch.nn.Linear, matrix: torch.Tensor) -> None:
    """``W -> matrix @ W`` and ``b -> matrix @ b`` (in place)."""
    linear.weight.copy_(matrix.to(linear.weight) @ linear.weight)
    if linear.bias is not None:
        linear.bias.copy_(matrix.to(linear.bias) @ linear.bias)


def _cols(linear: torch.nn.Linear, matrix: torch.Tensor) -> None:
    """``W -> W @ matrix`` (in place; the bias is untouched)."""
    linear.weight.copy_(linear.weight @ matrix.to(linear.weight))


def _transformed(model, fn):
    out = copy.deepcopy(model)
    with torch.no_grad():
        for layer in _bilinears(out):
            fn(layer)
    return out


def permute_hidden(model: torch.nn.Module, generator: torch.Generator) -> torch.nn.Module:
    r"""A copy with the hidden units of every bilinear layer permuted:
    :math:`L\to PL,\ R\to PR,\ D\to DP^\top`."""

    def fn(layer):
        h = layer.left.out_features
        p = torch.eye(h, dtype=layer.left.weight.dtype)[torch.randperm(h, generator=generator)]
        _rows(layer.left, p)
        _rows(layer.right, p)
        _cols(layer.down, p.T)

    return _transformed(model, fn)


def rescale_hidden(
    model: torch.nn.Module,
    generator: torch.Generator,
    spread: float = 1.0,
    compensate: str = "right",
) -> torch.nn.Module:
    r"""A copy with hidden unit :math:`h` of every bilinear layer rescaled by
    :math:`c_h = e^{\mathrm{spread}\,g_h}`, :math:`g_h\sim\mathcal N(0,1)`: :math:`L\to CL` and
    :math:`R\to C^{-1}R` (``compensate="right"``) or :math:`D\to DC^{-1}` (``"down"``)."""
    if compensate not in ("right", "down"):
        raise InvalidArgumentError(f"compensate must be 'right' or 'down', got {compensate!r}")

    def fn(layer):
        g = torch.randn(layer.left.out_features, generator=generator, dtype=torch.float64)
        c = torch.exp(spread * g)
        _rows(layer.left, torch.diag(c))
        if compensate == "right":
            _rows(layer.right, torch.diag(1 / c))
        else:
            _cols(layer.down, torch.diag(1 / c))

    return _transformed(model, fn)


def swap_left_right(model: torch.nn.Module) -> torch.nn.Module:
    """A copy with ``left`` and ``right`` exchanged in every bilinear layer."""

    def fn(layer):
        left = copy.deepcopy(layer.left.state_dict())
        layer.left.load_state_dict(layer.right.state_dict())
        layer.right.load_state_dict(left)

    return _transformed(model, fn)


def _writes(layer: torch.nn.Module) -> torch.nn.Linear:
    return layer.down if isinstance(layer, Bilinear) else layer


def _reads(layer: torch.nn.Module) -> list[torch.nn.Linear]:
    return [layer.left, layer.right] if isinstance(layer, Bilinear) else [layer]


def change_basis(model: torch.nn.Module, matrix: torch.Tensor, start: int, stop: int):
    r"""A copy whose bonds after layers ``start .. stop-1`` are expressed in the basis ``matrix``.

    With :math:`y` the activation after layer ``start``, the copy carries :math:`My`: layer
    ``start`` writes :math:`MW`, the layers strictly between (which must be residual bilinear
    layers: their skip connection carries the bond to the next one) are conjugated, and layer
    ``stop`` reads :math:`WM^{-1}`. ``stop = start + 1`` is a gauge between two layers; for a
    residual stack ``start = 0`` (the embedding) and ``stop = len(model) - 1`` (the head)
    rotate the whole residual stream.

    Raises
    ------
    StructureError
        If ``start``/``stop`` do not bound a bond as described, or ``start`` is residual.
    ShapeMismatchError
        If ``matrix`` is not square of the bond's width.
    """
    layers = _layers(model)
    if not 0 <= start < stop < len(layers):
        raise StructureError(
            f"start={start}, stop={stop}: need 0 <= start < stop < {len(layers)} (the layers)"
        )
    if getattr(layers[start], "residual", False):
        raise StructureError(f"start={start}: a residual layer passes its input on unchanged")
    inner = layers[start + 1 : stop]
    if not all(isinstance(m, Bilinear) and m.residual for m in inner):
        raise StructureError(
            f"layers {start + 1}..{stop - 1} between start and stop must be residual Bilinear"
        )
    width = _writes(layers[start]).out_features
    if tuple(matrix.shape) != (width, width):
        raise ShapeMismatchError(
            f"matrix has shape {tuple(matrix.shape)}, the bond after layer {start} has width {width}"
        )
    m = matrix.to(torch.float64)
    m_inv = torch.linalg.inv(m)
    out = copy.deepcopy(model)
    new = list(out)
    with torch.no_grad():
        _rows(_writes(new[start]), m)
        for layer in [*new[start + 1 : stop], new[stop]]:
            for lin in _reads(layer):
                _cols(lin, m_inv)
        for layer in new[start + 1 : stop]:
            _rows(layer.down, m)
    return out


def random_orthogonal(d: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random ``d × d`` orthogonal matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def random_invertible(d: int, generator: torch.Generator, spread: float = 0.5) -> torch.Tensor:
    r""":math:`Q_1\,\mathrm{diag}(e^{\mathrm{spread}\,g})\,Q_2`: random orthogonal factors and
    log-normal singular values (condition number about :math:`e^{4\,\mathrm{spread}}`)."""
    g = torch.randn(d, generator=generator, dtype=torch.float64)
    return (
        random_orthogonal(d, generator)
        @ torch.diag(torch.exp(spread * g))
        @ random_orthogonal(d, generator)
    )


# --- comparisons -----------------------------------------------------------------------------


def per_layer(a: torch.nn.Module, b: torch.nn.Module, measure: str = "tensor") -> list[float]:
    """``tnsim.similarity`` of each pair of corresponding layers, each compared on its own."""
    la, lb = _layers(a), _layers(b)
    if len(la) != len(lb):
        raise ShapeMismatchError(f"a has {len(la)} layers, b has {len(lb)}")
    return [similarity(x, y, measure=measure) for x, y in zip(la, lb)]


def parameter_cosine(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Cosine of the two models' parameter vectors (every parameter flattened and concatenated)."""
    va = torch.cat([p.detach().reshape(-1).double() for p in a.parameters()])
    vb = torch.cat([p.detach().reshape(-1).double() for p in b.parameters()])
    if va.shape != vb.shape:
        raise ShapeMismatchError(f"a has {len(va)} parameters, b has {len(vb)}")
    return float(va @ vb / (va.norm() * vb.norm()))


def max_output_difference(a, b, x: torch.Tensor) -> float:
    """:math:`\\max|f_a(x) - f_b(x)| / \\max|f_a(x)|` over the rows of ``x``."""
    with torch.no_grad():
        ya, yb = a(x).double(), b(x).double()
    return float((ya - yb).abs().max() / ya.abs().max())


def gaussian_mc(a, b, n: int, seed: int = 0) -> baselines.Estimate:
    """Monte Carlo cosine :math:`E[f_a\\cdot f_b]/\\sqrt{E|f_a|^2E|f_b|^2}`, :math:`x\\sim
    \\mathcal N(0, I)`, on ``n`` samples (:func:`tnsim.baselines.monte_carlo`)."""
    return baselines.monte_carlo(a, b, n=n, seed=seed)


class _Homogenised(torch.nn.Module):
    r"""The real view of :math:`P(z_0, z) = z_0^K f(z/z_0)` on complex inputs.

    Input rows :math:`(\mathrm{Re}\,\tilde z, \mathrm{Im}\,\tilde z)\in\mathbb R^{2(d+1)}`,
    output :math:`(\mathrm{Re}\,P, \mathrm{Im}\,P)`, so that a real dot product of outputs is
    :math:`\mathrm{Re}\,P_a\cdot\overline{P_b}`.
    """

    def __init__(self, model: torch.nn.Module, degree: int):
        super().__init__()
        with warnings.catch_warnings():  # torch flags complex modules as a new feature
            warnings.simplefilter("ignore", UserWarning)
            self.model = copy.deepcopy(model).to(torch.complex128)
        self.degree = degree

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[1] // 2
        z = torch.complex(x[:, :half].real, x[:, half:].real)
        z0 = z[:, :1]
        y = self.model(z[:, 1:] / z0) * z0**self.degree
        return torch.cat([y.real, y.imag], 1)


def tensor_mc(a, b, n: int, seed: int = 0) -> baselines.Estimate:
    r"""Monte Carlo estimate of the tensor similarity (the Fischer inner product, see the module
    docstring) on ``n`` standard complex Gaussian samples of :math:`\tilde z\in\mathbb C^{d+1}`.

    :math:`K` is the degree of the compiled network (the degree tnsim homogenises to).
    """
    degree = compile_network(a).degree
    if compile_network(b).degree != degree:
        raise ShapeMismatchError("a and b compile to different degrees; compare like with like")
    d = compile_network(a).d_in
    width = 2 * (d + 1)

    def draw(count: int, g: torch.Generator) -> torch.Tensor:
        return torch.randn(count, width, generator=g, dtype=torch.float64) / math.sqrt(2)

    return baselines.monte_carlo(
        _Homogenised(a, degree), _Homogenised(b, degree), n=n, seed=seed, distribution=draw
    )


def standard_errors(value: float, estimate: baselines.Estimate, floor: float = 1e-9) -> float:
    """``(value - estimate) / stderr``; ``nan`` when the standard error is below ``floor`` (two
    models with identical outputs: the estimate is exact and the ratio meaningless)."""
    if estimate.stderr < floor:
        return float("nan")
    return (value - estimate.value) / estimate.stderr
