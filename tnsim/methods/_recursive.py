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

import torch

from ..errors import StructureError
from ..ir._network import Network, compose
from ..measures import Kernel, Piece, Space
from ..plan._contract import Scaled
from ._exact import choose_variants, exact, sum_term_pairs
from ._prepare import Mode, Prepared, as_matrix, make_kernel, output_maps

__all__ = ["recursive", "canonical_chain"]


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


def _steps(net_a: Network, net_b: Network):
    """Aligned steps ``[(layer_a, layer_b), ...]`` and the closing linear pair (or ``None``).

    A linear map is its own exact step (:math:`G' = W_a G W_b^\top`, or the moments' images)
    when both sides have one and it narrows the state (an embedding: the state is then
    ``d_model``-wide, not ``vocab``-wide); otherwise it is fused into its neighbour. Trailing
    linear maps on both sides (an unembedding, a readout) close the last state with the output
    maps directly, so the ``vocab x vocab`` output state is never formed.
    """
    sa, suf_a = _segments(net_a)
    sb, suf_b = _segments(net_b)
    if len(sa) != len(sb):
        raise StructureError(
            f"the recursive method aligns layers, but {net_a.name} has {len(sa)} non-linear "
            f"layers and {net_b.name} has {len(sb)}; use method='exact'"
        )
    if not sa:
        return [(canonical_chain(net_a)[0], canonical_chain(net_b)[0])], None
    steps: list[tuple[Network, Network]] = []
    for (pa, la), (pb, lb) in zip(sa, sb):
        if pa is not None and pb is not None and _shrinks(pa) and _shrinks(pb):
            steps.append((pa, pb))
        else:
            la = la if pa is None else compose(la, pa)
            lb = lb if pb is None else compose(lb, pb)
        steps.append((la, lb))
    if suf_a is not None and suf_b is not None:
        return steps, (suf_a, suf_b)
    la, lb = steps[-1]
    steps[-1] = (la if suf_a is None else compose(suf_a, la), lb if suf_b is None else compose(suf_b, lb))
    return steps, None


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

    def __init__(self, cov: dict, mean: dict, spaces: dict, partial: bool):
        self.cov, self.mean, self.spaces, self.partial = cov, mean, spaces, partial
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
        )

    def pair(self, s1, s2):
        return self._pairs.get((s1, s2))

    def single(self, s):
        return self._singles[s]


def _max_abs(x: torch.Tensor, batch_dims: int) -> torch.Tensor:
    """Largest absolute entry per model (over all non-batch axes)."""
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


def _step(x: Network, y: Network, kernel, virtual, mode: Mode, dtype, stats, out_maps=None) -> Scaled:
    """One layer pair contracted with ``kernel`` on its inputs: outputs left open, or (with
    ``out_maps``) compared through the output maps."""
    open_outputs = out_maps is None
    maps = (None, None) if open_outputs else out_maps
    tx, ty, _, _ = choose_variants(x, y, kernel, virtual, maps, open_outputs=open_outputs, mode=mode, price=False)
    return sum_term_pairs(
        tx, ty, kernel, open_outputs=open_outputs, mode=mode, virtual_a=virtual, virtual_b=virtual,
        out_maps=maps, dtype=dtype, stats=stats,
    )


def recursive(prepared: Prepared, outputs=None, *, stats: dict | None = None):
    """Recursive inner products: returns ``(ab, aa, bb)`` as :class:`Scaled` values.

    ``ab`` has batch axes (a, b) where the networks are stacks; ``aa`` and ``bb`` are the
    per-model squared norms (diagonal). The state propagated is the measure's
    :attr:`~tnsim.measures.Measure.closure`; a measure without one is computed exactly when
    both models are one layer deep, and refused otherwise.
    """
    net_a, net_b, measure = prepared.a, prepared.b, prepared.measure
    if measure.closure == "hierarchical":
        return _recursive_tensor(prepared, outputs, stats)
    if measure.closure == "gaussian":
        return _recursive_gaussian(prepared, outputs, stats)
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


def _roles(ba, bb):
    """Batch roles of the (aa, bb, ab) states: a diagonal state follows one stack."""
    return ("a",) if ba else (), ("a",) if bb else (), tuple(r for r, b in (("a", ba), ("b", bb)) if b)


def _recursive_tensor(prepared: Prepared, outputs, stats):
    net_a, net_b, measure, dtype, like = prepared.a, prepared.b, prepared.measure, prepared.dtype, prepared.like
    steps, close = _steps(net_a, net_b)
    ba, bb = net_a.batch, net_b.batch
    diag_a = Mode("diag") if ba else Mode()
    diag_b = Mode("diag") if bb else Mode()
    ls_a, ls_b = _zeros(ba, like), _zeros(bb, like)
    roles_aa, roles_bb, roles_ab = _roles(ba, bb)
    g_aa = g_bb = g_ab = None
    for index, (la, lb) in enumerate(steps):
        k = max(la.degree, lb.degree)
        _check_mixed(la, k)
        _check_mixed(lb, k)
        sa, sb = _space(la), _space(lb)
        virtual = lambda t, k=k: k - t.degree  # noqa: E731
        if index == 0:  # the measure's own metric between input copies
            kernels = [make_kernel(measure, x, y, like) for x, y in ((la, la), (lb, lb), (la, lb))]
        else:
            kernels = [
                _StateTensorKernel(g_aa, roles_aa, sa, sa),
                _StateTensorKernel(g_bb, roles_bb, sb, sb),
                _StateTensorKernel(g_ab, roles_ab, sa, sb),
            ]
        raw_aa = _step(la, la, kernels[0], virtual, diag_a, dtype, stats)
        raw_bb = _step(lb, lb, kernels[1], virtual, diag_b, dtype, stats)
        raw_ab = _step(la, lb, kernels[2], virtual, Mode(), dtype, stats)
        nb_aa = 1 if ba else 0
        nb_bb = 1 if bb else 0
        c_a = _max_abs(raw_aa.mantissa, nb_aa)
        c_b = _max_abs(raw_bb.mantissa, nb_bb)
        g_aa = raw_aa.mantissa / _expand(c_a, raw_aa.mantissa.dim() - nb_aa)
        g_bb = raw_bb.mantissa / _expand(c_b, raw_bb.mantissa.dim() - nb_bb)
        # units: raw_xx is in exp(k*ls_x*2 + log_a + log_b); renormalise per model
        w_a = _total_log(raw_aa) / 2
        w_b = _total_log(raw_bb) / 2
        new_a = k * ls_a + w_a.to(ls_a) + 0.5 * _safe_log(c_a.to(torch.float64))
        new_b = k * ls_b + w_b.to(ls_b) + 0.5 * _safe_log(c_b.to(torch.float64))
        la_ab = torch.as_tensor(raw_ab.log_a, dtype=torch.float64).to(ls_a.device) + k * ls_a - new_a
        lb_ab = torch.as_tensor(raw_ab.log_b, dtype=torch.float64).to(ls_b.device) + k * ls_b - new_b
        factor = torch.exp(_outer_add(la_ab, lb_ab, ba, bb))
        rest = raw_ab.mantissa.dim() - factor.dim()
        g_ab = raw_ab.mantissa * _expand(factor, rest)
        ls_a, ls_b = new_a, new_b
        g_aa, g_bb, g_ab = g_aa.to(dtype), g_bb.to(dtype), g_ab.to(dtype)
    if close is not None:
        return _closed(close, (g_aa, g_bb, g_ab), (ls_a, ls_b), prepared, outputs, stats)
    last_a, last_b = steps[-1]
    maps_a = output_maps(last_a, outputs, like)
    maps_b = output_maps(last_b, outputs, like)
    return (
        Scaled(_close(g_ab, maps_a, maps_b, ba, bb), ls_a, ls_b),
        Scaled(_close_diag(g_aa, maps_a, ba), 2 * ls_a, 0.0),
        Scaled(_close_diag(g_bb, maps_b, bb), 2 * ls_b, 0.0),
    )


def _closed(close, states, scales, prepared: Prepared, outputs, stats):
    r"""Inner products through the trailing linear maps :math:`U_a, U_b`, outputs closed.

    With the last state :math:`S` (a metric, a second moment or a covariance, in units of
    :math:`e^{\ell_a+\ell_b}`), :math:`\langle a, b\rangle = \mathrm{tr}(M_a U_a S U_b^\top
    M_b^\top)` for the output maps :math:`M`: exact for every closure, since the maps are linear.
    """
    (ua, ub), (g_aa, g_bb, g_ab), (ls_a, ls_b) = close, states, scales
    dtype, like = prepared.dtype, prepared.like
    ba, bb = ua.batch, ub.batch
    roles_aa, roles_bb, roles_ab = _roles(ba, bb)
    sa, sb = _space(ua), _space(ub)
    k = max(ua.degree, ub.degree)
    virtual = lambda t: k - t.degree  # noqa: E731
    maps_a, maps_b = output_maps(ua, outputs, like), output_maps(ub, outputs, like)

    def one(x, y, g, roles, sx, sy, mx, my, mode):
        return _step(x, y, _StateTensorKernel(g, roles, sx, sy), virtual, mode, dtype, stats, (mx, my))

    ab = one(ua, ub, g_ab, roles_ab, sa, sb, maps_a, maps_b, Mode())
    aa = one(ua, ua, g_aa, roles_aa, sa, sa, maps_a, maps_a, Mode("diag") if ba else Mode())
    bb_ = one(ub, ub, g_bb, roles_bb, sb, sb, maps_b, maps_b, Mode("diag") if bb else Mode())

    def log(x):
        return torch.as_tensor(x, dtype=torch.float64).to(like.device)

    return (
        Scaled(ab.mantissa.to(torch.float64), log(ab.log_a) + k * ls_a, log(ab.log_b) + k * ls_b),
        Scaled(aa.mantissa.to(torch.float64), log(aa.log_a) + log(aa.log_b) + 2 * k * ls_a, 0.0),
        Scaled(bb_.mantissa.to(torch.float64), log(bb_.log_a) + log(bb_.log_b) + 2 * k * ls_b, 0.0),
    )


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
    dims_a = list(range(nb, nb + r))
    dims_b = list(range(nb + r, nb + 2 * r))
    # trace over matching output axes
    letters = "ijklmnop"
    batch = "xy"[:nb]
    spec = batch + letters[:r] + letters[:r] + "->" + batch
    assert len(dims_a) == len(dims_b)
    return torch.einsum(spec, g.to(torch.float64))


def _close_diag(g: torch.Tensor, maps, batched) -> torch.Tensor:
    nb = 1 if batched else 0
    r = len(maps)
    g = _apply_maps(g, maps, nb)
    g = _apply_maps(g, maps, nb + r)
    letters = "ijklmnop"
    batch = "x"[:nb]
    return torch.einsum(batch + letters[:r] + letters[:r] + "->" + batch, g.to(torch.float64))


def _recursive_gaussian(prepared: Prepared, outputs, stats):
    net_a, net_b, measure, dtype, like = prepared.a, prepared.b, prepared.measure, prepared.dtype, prepared.like
    steps, close = _steps(net_a, net_b)
    ba, bb = net_a.batch, net_b.batch
    measure.check(_space(steps[0][0]))
    ls_a, ls_b = _zeros(ba, like), _zeros(bb, like)
    m_a = m_b = c_aa = c_bb = c_ab = None
    odd_a = odd_b = measure.zero_mean  # x itself is odd; its mean is zero iff the measure's is
    for index, (la, lb) in enumerate(steps):
        sa, sb = _space(la), _space(lb)
        ka, kb = la.degree, lb.degree
        first = index == 0
        # after the first layer the state is rescaled, so every term must scale alike:
        # lower-degree terms are homogenised with the constant coordinate
        if not first:
            _check_mixed(la, ka)
            _check_mixed(lb, kb)
        va = (lambda t: 0) if first else (lambda t, k=ka: k - t.degree)
        vb = (lambda t: 0) if first else (lambda t, k=kb: k - t.degree)
        # unpaired copies (means) can contribute unless both inputs are odd functions of a
        # centred Gaussian (then their means vanish): decided from structure, so no host sync
        zero_a, zero_b = odd_a and not sa.padded, odd_b and not sb.padded
        partial = not (zero_a and zero_b)
        odd_a = zero_a and not la.out_padded and all(t.degree % 2 for t in la.terms)
        odd_b = zero_b and not lb.out_padded and all(t.degree % 2 for t in lb.terms)
        if first:  # the measure's own kernels between the input copies
            k_ma = k_aa = make_kernel(measure, la, la, like)
            k_mb = k_bb = make_kernel(measure, lb, lb, like)
            k_ab = make_kernel(measure, la, lb, like)
        else:
            ra = ("a",) if ba else ()
            rb = ("a",) if bb else ()
            rab = tuple(r for r, b in (("a", ba), ("b", bb)) if b)
            rb_ = ("b",) if bb else ()
            k_ma = _StateGaussianKernel({("a", "a"): (c_aa, ra)}, {"a": (m_a, ra)}, {"a": sa, "b": sa}, partial)
            k_mb = _StateGaussianKernel({("a", "a"): (c_bb, rb)}, {"a": (m_b, rb)}, {"a": sb, "b": sb}, partial)
            k_aa = _StateGaussianKernel(
                {("a", "a"): (c_aa, ra), ("a", "b"): (c_aa, ra), ("b", "b"): (c_aa, ra)},
                {"a": (m_a, ra), "b": (m_a, ra)}, {"a": sa, "b": sa}, partial,
            )
            k_bb = _StateGaussianKernel(
                {("a", "a"): (c_bb, rb), ("a", "b"): (c_bb, rb), ("b", "b"): (c_bb, rb)},
                {"a": (m_b, rb), "b": (m_b, rb)}, {"a": sb, "b": sb}, partial,
            )
            k_ab = _StateGaussianKernel(
                {("a", "a"): (c_aa, ra), ("a", "b"): (c_ab, rab), ("b", "b"): (c_bb, rb_)},
                {"a": (m_a, ra), "b": (m_b, rb_)}, {"a": sa, "b": sb}, partial,
            )
        # means, each in its own frame
        mean_a = sum_term_pairs(la.terms, None, k_ma, open_outputs=True, mode=Mode("pair"),
                                virtual_a=va, dtype=dtype, stats=stats)
        mean_b = sum_term_pairs(lb.terms, None, k_mb, open_outputs=True, mode=Mode("pair"),
                                virtual_a=vb, dtype=dtype, stats=stats)
        # second moments: a with a (diagonal), b with b, a with b
        diag_a = Mode("diag") if ba else Mode()
        diag_b = Mode("diag") if bb else Mode()
        s_aa = sum_term_pairs(la.terms, la.terms, k_aa, open_outputs=True, mode=diag_a,
                              virtual_a=va, virtual_b=va, dtype=dtype, stats=stats)
        s_bb = sum_term_pairs(lb.terms, lb.terms, k_bb, open_outputs=True, mode=diag_b,
                              virtual_a=vb, virtual_b=vb, dtype=dtype, stats=stats)
        s_ab = sum_term_pairs(la.terms, lb.terms, k_ab, open_outputs=True, mode=Mode(),
                              virtual_a=va, virtual_b=vb, dtype=dtype, stats=stats)
        # everything in units of exp(k*ls + w) per side
        nba, nbb = (1 if ba else 0), (1 if bb else 0)
        ma, mb = mean_a.mantissa, mean_b.mantissa
        raa = s_aa.mantissa - _outer_moments(ma, ma, nba, diag=True)
        rbb = s_bb.mantissa - _outer_moments(mb, mb, nbb, diag=True)
        rab_ = s_ab.mantissa - _outer_moments(ma, mb, (nba, nbb), diag=False)
        w_a = torch.as_tensor(mean_a.log_a, dtype=torch.float64)
        w_b = torch.as_tensor(mean_b.log_a, dtype=torch.float64)
        if index == len(steps) - 1:
            s_final = (s_ab.mantissa, s_aa.mantissa, s_bb.mantissa) if not measure.centred else (rab_, raa, rbb)
            ls_a = ka * ls_a + w_a.to(ls_a.device)
            ls_b = kb * ls_b + w_b.to(ls_b.device)
            break
        c_a = torch.maximum(_max_abs(raa, nba), _max_abs(ma, nba) ** 2)
        c_b = torch.maximum(_max_abs(rbb, nbb), _max_abs(mb, nbb) ** 2)
        c_a = torch.where(c_a > 0, c_a, torch.ones_like(c_a)).to(torch.float64)
        c_b = torch.where(c_b > 0, c_b, torch.ones_like(c_b)).to(torch.float64)
        ls_a = ka * ls_a + w_a.to(ls_a.device) + 0.5 * torch.log(c_a)
        ls_b = kb * ls_b + w_b.to(ls_b.device) + 0.5 * torch.log(c_b)
        sqa, sqb = torch.sqrt(c_a), torch.sqrt(c_b)
        m_a = (ma / _expand(sqa, ma.dim() - nba)).to(dtype)
        m_b = (mb / _expand(sqb, mb.dim() - nbb)).to(dtype)
        c_aa = (raa / _expand(c_a, raa.dim() - nba)).to(dtype)
        c_bb = (rbb / _expand(c_b, rbb.dim() - nbb)).to(dtype)
        scale = _outer(sqa, sqb, ba, bb)
        c_ab = (rab_ / _expand(scale, rab_.dim() - scale.dim())).to(dtype)
    ab, aa, bbv = s_final
    if close is not None:  # second moments (or covariances) through the trailing maps
        return _closed(close, (aa.to(dtype), bbv.to(dtype), ab.to(dtype)), (ls_a, ls_b), prepared, outputs, stats)
    last_a, last_b = steps[-1]
    maps_a = output_maps(last_a, outputs, like)
    maps_b = output_maps(last_b, outputs, like)
    return (
        Scaled(_close(ab, maps_a, maps_b, ba, bb), ls_a, ls_b),
        Scaled(_close_diag(aa, maps_a, ba), 2 * ls_a, 0.0),
        Scaled(_close_diag(bbv, maps_b, bb), 2 * ls_b, 0.0),
    )


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
