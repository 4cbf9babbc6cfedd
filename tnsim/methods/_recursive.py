r"""The recursive (layer-wise) method: propagate metrics through aligned layers.

Both networks are split into chains of layers (degree-1 layers are fused into their
neighbours, which changes nothing: a linear map has no copies to symmetrise). Layer by layer:

* **tensor measure** — a metric :math:`G` between the layer inputs of *a* and *b*, starting
  from the input metric, maps to
  :math:`G'_{o o'} = \frac{1}{K!}\sum_\sigma \langle T^a_{o}, \sigma T^b_{o'}\rangle_G`,
  the exact single-layer pairing with :math:`G` on every copy pair (for a bilinear layer:
  :math:`G' = D_a[\tfrac12((L_aGL_b^\top)\odot(R_aGR_b^\top)+(L_aGR_b^\top)\odot(R_aGL_b^\top))]D_b^\top`).
  The result is the inner product of tensors symmetrised under the composition tree's
  automorphisms only (*hierarchical* symmetrisation), not the full symmetrisation of the exact
  method.
* **Gaussian measure** (*Gaussian closure*) — each layer's inputs are treated as jointly
  Gaussian with the exact means :math:`m_a, m_b` and covariances
  :math:`C_{aa}, C_{ab}, C_{bb}` of the previous layer's outputs; the layer's output moments are
  computed exactly by Wick's theorem. Exact for one layer, an approximation beyond.

Cost is linear in depth. Every state is kept per model in units of a running scale
(:math:`G_{ab} = \hat G_{ab}\,e^{\ell_a+\ell_b}`), renormalised after each layer from the
diagonal (a with a) states, so deep float32 networks do not overflow; similarities never see
the scales.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import StructureError
from ..ir._network import Network, compose, identity_network
from ..measures import Kernel, Piece, Space
from ..measures._base import real_weights
from ..plan._contract import Scaled, is_dry
from ._exact import choose_variants, exact, sum_term_pairs
from ._prepare import Mode, Prepared, as_matrix, make_kernel, output_maps

__all__ = ["recursive", "self_chain", "Chain", "canonical_chain"]


def canonical_chain(net: Network) -> list[Network]:
    """Layers of ``net`` with degree-<=1 layers fused into a neighbouring layer."""
    segments, suffix = _segments(net)
    if not segments:
        return [suffix] if suffix is not None else list(net.chain)
    out = [layer if prefix is None else compose(layer, prefix) for prefix, layer in segments]
    if suffix is not None:
        out[-1] = compose(suffix, out[-1])
    return out


def _segments(net: Network) -> tuple[list[tuple[Network | None, Network]], Network | None]:
    """``(linear prefix or None, layer)`` per non-linear layer, and the trailing linear part."""
    segments: list[tuple[Network | None, Network]] = []
    pending: Network | None = None  # linear layers waiting for the next non-linear one
    for layer in net.chain:
        if layer.degree <= 1:
            pending = layer if pending is None else compose(layer, pending)
        else:
            segments.append((pending, layer))
            pending = None
    return segments, pending


def _shrinks(net: Network) -> bool:
    return math.prod(net.out_shape) < math.prod(net.in_shape)


def _split(net_a: Network, net_b: Network) -> tuple:
    """How both sides are cut into steps: per non-linear layer whether its linear prefix is a
    step of its own, and whether trailing linear maps close the last state (see :func:`_steps`)."""
    sa, suf_a = _segments(net_a)
    sb, suf_b = _segments(net_b)
    if len(sa) != len(sb):
        raise StructureError(
            f"the recursive method aligns layers, but {net_a.name} has {len(sa)} non-linear "
            f"layers and {net_b.name} has {len(sb)}; use method='exact'"
        )
    own = tuple(
        pa is not None and pb is not None and _shrinks(pa) and _shrinks(pb)
        for (pa, _), (pb, _) in zip(sa, sb)
    )
    return own, bool(sa) and suf_a is not None and suf_b is not None


def _side(net: Network, split: tuple) -> tuple[list[Network], Network | None]:
    """One side's steps under ``split``, and its closing linear map (or ``None``)."""
    own, close = split
    segments, suffix = _segments(net)
    if not segments:
        return [canonical_chain(net)[0]], None
    layers: list[Network] = []
    for own_step, (prefix, layer) in zip(own, segments):
        if own_step:
            layers += [prefix, layer]
        else:
            layers.append(layer if prefix is None else compose(layer, prefix))
    if close:
        return layers, suffix
    if suffix is not None:
        layers[-1] = compose(suffix, layers[-1])
    return layers, None


def _steps(net_a: Network, net_b: Network):
    r"""Aligned steps ``[(layer_a, layer_b), ...]`` and the closing linear pair (or ``None``).

    A linear map is its own exact step (:math:`G' = W_a G W_b^\top`, or the moments' images)
    when both sides have one and it narrows the state (an embedding: the state is then
    ``d_model``-wide, not ``vocab``-wide); otherwise it is fused into its neighbour. Trailing
    linear maps on both sides (an unembedding, a readout) close the last state with the output
    maps directly, so the ``vocab x vocab`` output state is never formed.
    """
    split = _split(net_a, net_b)
    layers_a, close_a = _side(net_a, split)
    layers_b, close_b = _side(net_b, split)
    return list(zip(layers_a, layers_b)), (None if close_a is None else (close_a, close_b))


def _space(net: Network) -> Space:
    return Space(tuple(net.in_shape), net.in_padded)


def _legs(rank: int, slot: int) -> tuple[tuple[int, int], ...]:
    return tuple((slot, i) for i in range(rank))


class _StateTensorKernel(Kernel):
    """A propagated metric between the inputs of a and b: one piece per copy pair.

    The tensor measure's state, and the second moments (or covariances) that close a Gaussian
    pass through trailing linear maps.
    """

    scheme = "bijections"
    const_blocks = True
    readable = True  # plain dense pieces: blocks can be pre-contracted with their readers

    def __init__(self, g: torch.Tensor, roles: tuple[str, ...], space_a: Space, space_b: Space):
        self.g, self.roles = g, roles
        self.spaces = {"a": space_a, "b": space_b}
        ra, rb = len(space_a.shape), len(space_b.shape)
        self._pair = (Piece(g, _legs(ra, 0) + _legs(rb, 1), roles),)
        self.like = g
        self.structure = ("state-tensor", roles, tuple(g.shape[len(roles) :]), space_a, space_b)

    def pair(self, s1, s2):
        return self._pair

    def single(self, s):
        return None


class _StateGaussianKernel(Kernel):
    """Propagated means and covariances of the layer inputs (Gaussian closure)."""

    scheme = "matchings"
    readable = True

    def __init__(self, cov: dict, mean: dict, spaces: dict, partial: bool, min_cross: int = 0):
        self.cov, self.mean, self.spaces, self.partial = cov, mean, spaces, partial
        self.min_cross = min_cross  # pairings with fewer a-b pairs are added in closed form
        self._pairs = {}
        for (s1, s2), (c, roles) in cov.items():
            r1, r2 = len(spaces[s1].shape), len(spaces[s2].shape)
            self._pairs[(s1, s2)] = (Piece(c, _legs(r1, 0) + _legs(r2, 1), roles),)
        self._singles = {
            s: (Piece(m, _legs(len(spaces[s].shape), 0), roles),) for s, (m, roles) in mean.items()
        }
        self.like = next(iter(cov.values()))[0]
        self.structure = (
            "state-gaussian",
            tuple(sorted((k, roles, tuple(c.shape[len(roles) :])) for k, (c, roles) in cov.items())),
            tuple(sorted((k, roles, tuple(m.shape[len(roles) :])) for k, (m, roles) in mean.items())),
            tuple(sorted(spaces.items())),
            partial,
            min_cross,
        )

    def pair(self, s1, s2):
        return self._pairs.get((s1, s2))

    def single(self, s):
        return self._singles[s]


def _max_abs(x: torch.Tensor, batch_dims: int) -> torch.Tensor:
    """Largest absolute entry per model (over all non-batch axes); ones in a dry run (whose
    stand-in zeros are not materialised)."""
    if is_dry():
        return torch.ones(x.shape[:batch_dims], dtype=x.dtype, device=x.device)
    if batch_dims == 0:
        return x.abs().max()
    return x.abs().reshape(x.shape[:batch_dims] + (-1,)).amax(-1)


def _safe_log(x: torch.Tensor) -> torch.Tensor:
    return torch.log(torch.where(x > 0, x, torch.ones_like(x)))


def _expand(x, dims):
    return x.reshape(tuple(x.shape) + (1,) * dims)


def _zeros(batch, like) -> torch.Tensor:
    return torch.zeros(batch or (), dtype=torch.float64, device=like.device)


def _check_mixed(layer: Network, k: int) -> None:
    if any(t.degree < k for t in layer.terms) and not layer.in_padded:
        raise StructureError(
            f"layer {layer.name} mixes degrees but has no constant coordinate; compile "
            "with pad=True or use method='exact'"
        )


def _step(x: Network, y: Network, kernel, virtual, mode: Mode, dtype, stats, out_maps=None, parts=None) -> Scaled:
    """One layer pair contracted with ``kernel`` on its inputs: outputs left open, or (with
    ``out_maps``) compared through the output maps. ``parts``: kernels summing to ``kernel``
    to contract with instead (see :func:`_linear_step`); the term variants are chosen for the
    whole kernel."""
    open_outputs = out_maps is None
    maps = (None, None) if open_outputs else out_maps
    tx, ty, _, _ = choose_variants(x, y, kernel, virtual, maps, open_outputs=open_outputs, mode=mode, price=False)
    return sum_term_pairs(
        tx, ty, parts or kernel, open_outputs=open_outputs, mode=mode, virtual_a=virtual, virtual_b=virtual,
        out_maps=maps, dtype=dtype, stats=stats,
    )


def _linear_step(x: Network, y: Network, kernel, k: int, mode: Mode, dtype, stats) -> Scaled:
    """:func:`_step` with outputs open, summed over the kernel's
    :meth:`~tnsim.measures.Kernel.linear_parts` where the pairing is linear in the metric (both
    layers linear, so no virtual copies)."""
    linear = k == 1 and all(t.degree == 1 for t in (*x.terms, *y.terms))
    return _step(x, y, kernel, lambda t: k - t.degree, mode, dtype, stats,
                 parts=kernel.linear_parts() if linear else None)


@dataclass(eq=False)
class Chain:
    r"""One model (or stack) propagated against itself: what every pair it is in reuses.

    A pair's recursion needs, besides its own cross state, each side's running scale
    :math:`\ell` and (Gaussian closure) each side's means and covariances entering every step;
    all of them depend on one model only. A similarity matrix computes them once per chunk of
    models instead of once per block (:func:`self_chain`), which leaves a third of the work per
    pair (a fifth for the Gaussian closure: means and two diagonal second moments).

    Attributes
    ----------
    key
        The cut into steps and the degrees it was computed for; a pair cut differently
        (a partner with another layout) recomputes the chain.
    scales
        :math:`\ell` before each step, and after the last (per model for a stack).
    states
        Gaussian closure, per step: ``(mean, covariance)`` entering it (``None`` for the
        first), the output mean's mantissa, :math:`\sqrt{c}` (the renormalisation; ``None``
        after the last step), whether the input is known to have zero mean, and the expected
        Jacobian :math:`J` (``None`` for the first step, or for a chain built for its norm
        alone). Empty for the tensor closure.
    norm
        :math:`\langle f, f\rangle` (per model for a stack), as :class:`Scaled`.
    """

    key: tuple
    scales: list
    states: list
    norm: Scaled

    @property
    def nbytes(self) -> int:
        return sum(
            x.numel() * x.element_size() for s in self.states for x in (s[0], s[1], s[5]) if isinstance(x, torch.Tensor)
        )


def _chain_key(split, layers, close, partner_layers=None, partner_close=None, closure="", dtype=None,
               for_pairs: bool = True) -> tuple:
    """What a chain was computed for: the cut, the degrees it is homogenised to (the larger of
    the two sides' at every step), and whether it carries what pairs need beyond the norm."""
    other = partner_layers or layers
    ks = tuple(max(x.degree, y.degree) for x, y in zip(layers, other))
    kc = None if close is None else max(close.degree, (partner_close or close).degree)
    return (closure, split, ks, kc, dtype, for_pairs and closure == "gaussian" and FIRST_ORDER)


def recursive(prepared: Prepared, outputs=None, *, stats: dict | None = None, chains=(None, None)):
    """Recursive inner products: returns ``(ab, aa, bb)`` as :class:`Scaled` values.

    ``ab`` has batch axes (a, b) where the networks are stacks; ``aa`` and ``bb`` are the
    per-model squared norms (diagonal). The state propagated is the measure's
    :attr:`~tnsim.measures.Measure.closure`; a measure without one is computed exactly when
    both models are one layer deep, and refused otherwise. ``chains`` are the sides'
    :class:`Chain` (from :func:`self_chain` with the same measure and outputs), reused where
    they fit and computed otherwise.
    """
    net_a, net_b, measure = prepared.a, prepared.b, prepared.measure
    if measure.closure in ("hierarchical", "gaussian"):
        split = _split(net_a, net_b)
        la, ca = _side(net_a, split)
        lb, cb = _side(net_b, split)
        closure, dtype = measure.closure, prepared.dtype
        key_a = _chain_key(split, la, ca, lb, cb, closure, dtype)
        key_b = _chain_key(split, lb, cb, la, ca, closure, dtype)
        chain_a, chain_b = chains
        if chain_a is None or chain_a.key != key_a:
            chain_a = _chain(prepared, net_a, la, ca, key_a, outputs, stats)
        if net_b is net_a and key_b == key_a:
            chain_b = chain_a
        elif chain_b is None or chain_b.key != key_b:
            chain_b = _chain(prepared, net_b, lb, cb, key_b, outputs, stats)
        pair = _pair_tensor if closure == "hierarchical" else _pair_gaussian
        ab = pair(prepared, (la, ca), (lb, cb), chain_a, chain_b, outputs, stats)
        return ab, chain_a.norm, chain_b.norm
    _steps(net_a, net_b)  # same number of layers, or a clear error
    if len(canonical_chain(net_a)) == 1:
        diag_a = Mode("diag") if net_a.batch else Mode()
        diag_b = Mode("diag") if net_b.batch else Mode()
        return (
            exact(prepared, outputs, stats=stats),
            exact(prepared, outputs, which="aa", mode=diag_a, stats=stats),
            exact(prepared, outputs, which="bb", mode=diag_b, stats=stats),
        )
    raise StructureError(
        f"the recursive method has no closure for the {measure.describe()} measure beyond the "
        f"first layer ({net_a.name} has {len(canonical_chain(net_a))} non-linear layers); use "
        "method='exact', or the Gaussian measure with the same mean and covariance for the "
        "Gaussian closure"
    )


def self_chain(prepared: Prepared, outputs=None, *, stats: dict | None = None, for_pairs: bool = True) -> Chain | None:
    """The :class:`Chain` of ``prepared.a`` cut as against itself (``None`` for a measure
    without a closure): the per-model half of every recursive pair it is in
    (``for_pairs=False``: only its norm is wanted, so the Gaussian closure's expected
    Jacobians are skipped)."""
    net, measure = prepared.a, prepared.measure
    if measure.closure not in ("hierarchical", "gaussian"):
        return None
    split = _split(net, net)
    layers, close = _side(net, split)
    key = _chain_key(split, layers, close, closure=measure.closure, dtype=prepared.dtype, for_pairs=for_pairs)
    return _chain(prepared, net, layers, close, key, outputs, stats)


def _chain(prepared: Prepared, net: Network, layers, close, key, outputs, stats) -> Chain:
    build = _tensor_chain if prepared.measure.closure == "hierarchical" else _gaussian_chain
    return build(prepared, net, layers, close, key, outputs, stats)


#: Gaussian closure: pairings of a layer pair with no a-b pair, or one, are summed in closed
#: form (the means' product; the expected Jacobians :math:`J_a C_{ab} J_b^\top`, computed once
#: per model) instead of orbit by orbit. ``False`` sums every pairing (the reference).
FIRST_ORDER = True


def _batch(net: Network):
    """(number of batch axes, batch roles of a diagonal state, mode of a diagonal step)."""
    return (1, ("a",), Mode("diag")) if net.batch else (0, (), Mode())


def _log(x, like) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64).to(like.device)


def _roles(ba, bb):
    """Batch roles of a cross (a with b) state."""
    return tuple(r for r, b in (("a", ba), ("b", bb)) if b)


# --- tensor measure: hierarchical symmetrisation ----------------------------------------------


def _tensor_chain(prepared: Prepared, net, layers, close, key, outputs, stats) -> Chain:
    """``G_aa`` through every step, renormalised from its largest entry; scales kept."""
    measure, dtype, like = prepared.measure, prepared.dtype, prepared.like
    nb, roles, mode = _batch(net)
    ls = _zeros(net.batch, like)
    scales, g = [ls], None
    for index, (layer, k) in enumerate(zip(layers, key[2])):
        _check_mixed(layer, k)
        space = _space(layer)
        kernel = make_kernel(measure, layer, layer, like) if index == 0 else _StateTensorKernel(g, roles, space, space)
        raw = _linear_step(layer, layer, kernel, k, mode, dtype, stats)
        c = _max_abs(raw.mantissa, nb)
        g = (raw.mantissa / _expand(c, raw.mantissa.dim() - nb)).to(dtype)
        # units: raw is in exp(2k*ls + log_a + log_b); renormalise per model
        ls = k * ls + (_total_log(raw) / 2).to(ls) + 0.5 * _safe_log(c.to(torch.float64))
        scales.append(ls)
    if close is not None:
        norm = _closed_pair(close, close, key[3], g, roles, mode, (ls, ls), prepared, outputs, stats)
        norm = Scaled(norm.mantissa, norm.log_a + norm.log_b, 0.0)
    else:
        maps = output_maps(layers[-1], outputs, like)
        norm = Scaled(_close_diag(g, maps, net.batch), 2 * ls, 0.0)
    return Chain(key, scales, [], norm)


def _pair_tensor(prepared: Prepared, side_a, side_b, chain_a: Chain, chain_b: Chain, outputs, stats) -> Scaled:
    """``G_ab`` through every step, in the units of the two chains' scales."""
    (layers_a, close_a), (layers_b, close_b) = side_a, side_b
    measure, dtype, like = prepared.measure, prepared.dtype, prepared.like
    ba, bb = prepared.a.batch, prepared.b.batch
    roles = _roles(ba, bb)
    g = None
    for index, (la, lb) in enumerate(zip(layers_a, layers_b)):
        k = chain_a.key[2][index]
        if index == 0:
            kernel = make_kernel(measure, la, lb, like)
        else:
            kernel = _StateTensorKernel(g, roles, _space(la), _space(lb))
        raw = _linear_step(la, lb, kernel, k, Mode(), dtype, stats)
        before_a, before_b = chain_a.scales[index], chain_b.scales[index]
        after_a, after_b = chain_a.scales[index + 1], chain_b.scales[index + 1]
        log_a = _log(raw.log_a, like) + k * before_a - after_a
        log_b = _log(raw.log_b, like) + k * before_b - after_b
        factor = torch.exp(_outer_add(log_a, log_b, ba, bb))
        g = (raw.mantissa * _expand(factor, raw.mantissa.dim() - factor.dim())).to(dtype)
    ls_a, ls_b = chain_a.scales[-1], chain_b.scales[-1]
    if close_a is not None:
        return _closed_pair(close_a, close_b, chain_a.key[3], g, roles, Mode(), (ls_a, ls_b), prepared, outputs, stats)
    maps_a = output_maps(layers_a[-1], outputs, like)
    maps_b = output_maps(layers_b[-1], outputs, like)
    return Scaled(_close(g, maps_a, maps_b, ba, bb), ls_a, ls_b)


def _closed_pair(ua, ub, k, g, roles, mode, scales, prepared: Prepared, outputs, stats) -> Scaled:
    r"""An inner product through the trailing linear maps :math:`U_a, U_b`, outputs closed.

    With the last state :math:`S` (a metric, a second moment or a covariance, in units of
    :math:`e^{\ell_a+\ell_b}`), :math:`\langle a, b\rangle = \mathrm{tr}(M_a U_a S U_b^\top
    M_b^\top)` for the output maps :math:`M`: exact for every closure, since the maps are linear.
    """
    like = prepared.like
    maps = (output_maps(ua, outputs, like), output_maps(ub, outputs, like))
    kernel = _StateTensorKernel(g, roles, _space(ua), _space(ub))
    value = _step(ua, ub, kernel, lambda t: k - t.degree, mode, prepared.dtype, stats, maps)
    ls_a, ls_b = scales
    return Scaled(value.mantissa.to(torch.float64), _log(value.log_a, like) + k * ls_a,
                  _log(value.log_b, like) + k * ls_b)


def _total_log(x: Scaled) -> torch.Tensor:
    return torch.as_tensor(x.log_a, dtype=torch.float64) + torch.as_tensor(x.log_b, dtype=torch.float64)


def _outer_add(x: torch.Tensor, y: torch.Tensor, bx, by) -> torch.Tensor:
    if bx and by:
        return x[:, None] + y[None, :]
    return x + y


def _outer(x: torch.Tensor, y: torch.Tensor, bx, by) -> torch.Tensor:
    if bx and by:
        return x[:, None] * y[None, :]
    return x * y


def _apply_maps(g: torch.Tensor, maps, start: int) -> torch.Tensor:
    """Apply per-axis output maps to the axes of ``g`` starting at ``start``."""
    for axis, m in enumerate(maps):
        m = as_matrix(m)
        if m is not None:
            ax = start + axis
            g = torch.movedim(torch.tensordot(g, m.to(g.dtype), dims=([ax], [1])), -1, ax)
    return g


def _close(g: torch.Tensor, maps_a, maps_b, ba, bb) -> torch.Tensor:
    """Contract a (batch..., out_a..., out_b...) metric with the output maps to a number."""
    nb = int(bool(ba)) + int(bool(bb))
    r = len(maps_a)
    g = _apply_maps(g, maps_a, nb)
    g = _apply_maps(g, maps_b, nb + r)
    letters = "ijklmnop"
    batch = "xy"[:nb]
    return torch.einsum(batch + letters[:r] + letters[:r] + "->" + batch, g.to(torch.float64))


def _close_diag(g: torch.Tensor, maps, batched) -> torch.Tensor:
    nb = 1 if batched else 0
    r = len(maps)
    g = _apply_maps(g, maps, nb)
    g = _apply_maps(g, maps, nb + r)
    letters = "ijklmnop"
    batch = "x"[:nb]
    return torch.einsum(batch + letters[:r] + letters[:r] + "->" + batch, g.to(torch.float64))


# --- Gaussian closure ---------------------------------------------------------------------------


def _virtual(first: bool, k: int):
    """Homogenising copies: none on the raw input; after it every term scales like degree k."""
    return (lambda t: 0) if first else (lambda t, k=k: k - t.degree)


def _gaussian_chain(prepared: Prepared, net, layers, close, key, outputs, stats) -> Chain:
    r"""Means and covariances of one model's layer inputs through every step.

    Per step the exact moments of the layer's outputs under a Gaussian with the propagated
    mean :math:`m` and covariance :math:`C` (Wick's theorem), renormalised by
    :math:`c = \max(\max|C|, \max|m|^2)`.
    """
    measure, dtype, like = prepared.measure, prepared.dtype, prepared.like
    nb, roles, mode = _batch(net)
    measure.check(_space(layers[0]))
    ls = _zeros(net.batch, like)
    scales, states = [ls], []
    m = c = None
    odd = measure.zero_mean  # x itself is odd; its mean is zero iff the measure's is
    for index, layer in enumerate(layers):
        first, k, space = index == 0, layer.degree, _space(layer)
        if not first:  # the state is rescaled: lower-degree terms homogenise with the constant
            _check_mixed(layer, k)
        virtual = _virtual(first, k)
        # unpaired copies (means) can contribute unless the input is an odd function of a
        # centred Gaussian (then its mean vanishes): decided from structure, no host sync
        zero = odd and not space.padded
        odd = zero and not layer.out_padded and all(t.degree % 2 for t in layer.terms)
        if first:
            k_mean = k_pair = make_kernel(measure, layer, layer, like)
        else:
            spaces = {"a": space, "b": space}
            k_mean = _StateGaussianKernel({("a", "a"): (c, roles)}, {"a": (m, roles)}, spaces, not zero)
            k_pair = _StateGaussianKernel(
                {("a", "a"): (c, roles), ("a", "b"): (c, roles), ("b", "b"): (c, roles)},
                {"a": (m, roles), "b": (m, roles)}, spaces, not zero,
            )
        mean = sum_term_pairs(layer.terms, None, k_mean, open_outputs=True, mode=Mode("pair"),
                              virtual_a=virtual, dtype=dtype, stats=stats)
        second = sum_term_pairs(layer.terms, layer.terms, k_pair, open_outputs=True, mode=mode,
                                virtual_a=virtual, virtual_b=virtual, dtype=dtype, stats=stats)
        mu = mean.mantissa
        cov = second.mantissa - _outer_moments(mu, mu, nb, diag=True)
        w = _log(mean.log_a, like)
        jac = _mean_jacobian(prepared, layer, virtual, c, m, roles, w, zero, stats) if key[5] and not first else None
        if index == len(layers) - 1:
            states.append((m, c, mu, None, zero, jac))
            final = cov if measure.centred else second.mantissa
            ls = k * ls + w
            scales.append(ls)
            break
        scale = torch.maximum(_max_abs(cov, nb), _max_abs(mu, nb) ** 2)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale)).to(torch.float64)
        sq = torch.sqrt(scale)
        states.append((m, c, mu, sq, zero, jac))
        ls = k * ls + w + 0.5 * torch.log(scale)
        scales.append(ls)
        m = (mu / _expand(sq, mu.dim() - nb)).to(dtype)
        c = (cov / _expand(scale, cov.dim() - nb)).to(dtype)
    if close is not None:  # second moments (or covariances) through the trailing maps
        norm = _closed_pair(close, close, key[3], final.to(dtype), roles, mode, (ls, ls), prepared, outputs, stats)
        norm = Scaled(norm.mantissa, norm.log_a + norm.log_b, 0.0)
    else:
        maps = output_maps(layers[-1], outputs, like)
        norm = Scaled(_close_diag(final, maps, net.batch), 2 * ls, 0.0)
    return Chain(key, scales, states, norm)


def _mean_jacobian(prepared: Prepared, layer: Network, virtual, c, m, roles, w, zero, stats) -> torch.Tensor:
    r"""The expected Jacobian :math:`J = \mathbb E[\partial f/\partial x]` of one layer under the
    propagated Gaussian, in units of its mean (per model for a stack).

    By Stein's lemma :math:`\mathrm{Cov}(f(x), y) = J\,\mathrm{Cov}(x, y)`: the cross moment of
    the layer with the identity map ``y`` of a zero-mean copy whose covariance with ``x`` is the
    identity on the real features (:math:`\mathrm{diag}(0, 1, \dots, 1)` per position) is
    :math:`J` itself; only pairings with the one copy of ``y`` paired to ``x`` survive.
    """
    like, dtype = prepared.like, prepared.dtype
    space = _space(layer)
    ident = identity_network(space.shape, space.padded, like)
    w_real = real_weights(space, like) if space.padded else torch.ones(space.d, dtype=like.dtype, device=like.device)
    eye = torch.diag(w_real)
    if space.sequence:
        n = space.shape[0]
        eye = torch.eye(n, dtype=like.dtype, device=like.device)[:, None, :, None] * eye[None, :, None, :]
    zeros = torch.zeros(space.shape, dtype=like.dtype, device=like.device)
    kernel = _StateGaussianKernel(
        {("a", "a"): (c, roles), ("a", "b"): (eye, ()), ("b", "b"): (eye, ())},
        {"a": (m, roles), "b": (zeros, ())}, {"a": space, "b": space}, not zero, min_cross=1,
    )
    jac = sum_term_pairs(layer.terms, ident.terms, kernel, open_outputs=True, mode=Mode(),
                         virtual_a=virtual, virtual_b=lambda t: 0, dtype=dtype, stats=stats)
    nb = len(roles)
    units = _log(jac.log_a, like) + _log(jac.log_b, like) - w  # to the mean's units
    return (jac.mantissa * _expand(torch.exp(units), jac.mantissa.dim() - nb)).to(dtype)


def _first_order(jac_a, c_ab, jac_b, ba, bb, out_rank: int, stats) -> torch.Tensor:
    r"""The pairings with exactly one a-b pair, :math:`J_a\,C_{ab}\,J_b^\top`: by Wick's
    theorem they factor through each side's expected Jacobian (the remaining copies of each
    side paired among themselves or with its mean). ``out_rank``: output axes of the layers
    (the Jacobians' leading axes after the batch). Batch axes (a, b) first."""
    na, nb_ = (1 if ba else 0), (1 if bb else 0)
    out_a, out_b = jac_a.shape[na:], jac_b.shape[nb_:]
    half = out_rank
    oa, xa = math.prod(out_a[:half]), math.prod(out_a[half:])
    ob, xb = math.prod(out_b[:half]), math.prod(out_b[half:])
    ja = jac_a.reshape(jac_a.shape[:na] + (oa, xa))
    jb = jac_b.reshape(jac_b.shape[:nb_] + (ob, xb))
    c = c_ab.reshape(c_ab.shape[: na + nb_] + (xa, xb))
    batch_a, batch_b = "A"[:na], "B"[:nb_]
    shape = jac_a.shape[:na] + jac_b.shape[:nb_] + tuple(out_a[:half]) + tuple(out_b[:half])
    if stats is not None:
        models = math.prod(jac_a.shape[:na]) * math.prod(jac_b.shape[:nb_])
        stats["flops"] = stats.get("flops", 0.0) + models * (oa * xa * xb + oa * xb * ob)
        stats["contractions"] = stats.get("contractions", 0) + 1
        largest = float(models * max(oa * xb, oa * ob))
        stats["max_size"] = max(stats.get("max_size", 0.0), largest)
        stats["unsliced_max_size"] = max(stats.get("unsliced_max_size", 0.0), largest)
        if "paths" in stats:
            stats["paths"].append(((0, 1), (0, 1)))  # J_a C_ab first, then J_b
    if is_dry():
        return torch.zeros((), dtype=c_ab.dtype, device=c_ab.device).expand(shape)
    left = torch.einsum(f"{batch_a}ox,{batch_a}{batch_b}xy->{batch_a}{batch_b}oy", ja, c.to(ja.dtype))
    value = torch.einsum(f"{batch_a}{batch_b}oy,{batch_b}py->{batch_a}{batch_b}op", left, jb)
    return value.reshape(shape).to(torch.float64)


def _pair_gaussian(prepared: Prepared, side_a, side_b, chain_a: Chain, chain_b: Chain, outputs, stats) -> Scaled:
    """The cross second moment (or covariance) through every step, from both chains' moments."""
    (layers_a, close_a), (layers_b, close_b) = side_a, side_b
    measure, dtype, like = prepared.measure, prepared.dtype, prepared.like
    ba, bb = prepared.a.batch, prepared.b.batch
    nba, nbb = (1 if ba else 0), (1 if bb else 0)
    ra, rb, rab = ("a",) if ba else (), ("b",) if bb else (), _roles(ba, bb)
    c_ab = None
    last = len(layers_a) - 1
    for index, (la, lb) in enumerate(zip(layers_a, layers_b)):
        first = index == 0
        m_a, c_aa, mu_a, sq_a, zero_a, jac_a = chain_a.states[index]
        m_b, c_bb, mu_b, sq_b, zero_b, jac_b = chain_b.states[index]
        closed = not first and chain_a.key[5] and chain_b.key[5]
        if first:
            kernel = make_kernel(measure, la, lb, like)
        else:  # pairings with 0 or 1 a-b pairs come in closed form (below)
            kernel = _StateGaussianKernel(
                {("a", "a"): (c_aa, ra), ("a", "b"): (c_ab, rab), ("b", "b"): (c_bb, rb)},
                {"a": (m_a, ra), "b": (m_b, rb)}, {"a": _space(la), "b": _space(lb)},
                not (zero_a and zero_b), min_cross=2 if closed else 0,
            )
        s_ab = sum_term_pairs(la.terms, lb.terms, kernel, open_outputs=True, mode=Mode(),
                              virtual_a=_virtual(first, la.degree), virtual_b=_virtual(first, lb.degree),
                              dtype=dtype, stats=stats)
        outer = _outer_moments(mu_a, mu_b, (nba, nbb), diag=False)
        if closed:
            cov = s_ab.mantissa + _first_order(jac_a, c_ab, jac_b, ba, bb, len(la.out_shape), stats)
        else:
            cov = s_ab.mantissa - outer
        if index == last:
            final = cov if measure.centred else cov + outer
            break
        scale = _outer(sq_a, sq_b, ba, bb)
        c_ab = (cov / _expand(scale, cov.dim() - scale.dim())).to(dtype)
    ls_a, ls_b = chain_a.scales[-1], chain_b.scales[-1]
    if close_a is not None:
        return _closed_pair(close_a, close_b, chain_a.key[3], final.to(dtype), rab, Mode(), (ls_a, ls_b),
                            prepared, outputs, stats)
    maps_a = output_maps(layers_a[-1], outputs, like)
    maps_b = output_maps(layers_b[-1], outputs, like)
    return Scaled(_close(final, maps_a, maps_b, ba, bb), ls_a, ls_b)


def _outer_moments(x: torch.Tensor, y: torch.Tensor, nb, diag: bool) -> torch.Tensor:
    """Outer product of mean vectors with batch handling (diag: same model on both sides)."""
    if diag:
        n = nb
        xs = x.reshape(x.shape[:n] + (-1,))
        ys = y.reshape(y.shape[:n] + (-1,))
        out = xs.unsqueeze(-1) * ys.unsqueeze(-2)
        return out.reshape(x.shape + y.shape[n:])
    na, nb_ = nb
    xs = x.reshape(x.shape[:na] + (-1,))
    ys = y.reshape(y.shape[:nb_] + (-1,))
    if na and nb_:
        out = xs[:, None, :, None] * ys[None, :, None, :]
        return out.reshape(x.shape[:1] + y.shape[:1] + x.shape[1:] + y.shape[1:])
    out = xs.unsqueeze(-1) * ys.unsqueeze(-2) if not na and not nb_ else None
    if na and not nb_:
        out = xs[:, :, None] * ys[None, None, :]
        return out.reshape(x.shape + y.shape)
    if nb_ and not na:
        out = xs[None, :, None] * ys[:, None, :]
        return out.reshape(y.shape[:1] + x.shape + y.shape[1:])
    return out.reshape(x.shape + y.shape)
