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

import torch

from .._memory import check_allocation
from ..errors import StructureError
from ..ir._network import Network, compose
from ..measures import GaussianMeasure, Kernel, Piece, Space, TensorKernel
from ..measures._base import embedded
from ..plan._contract import Scaled
from ._exact import choose_variants, exact, sum_term_pairs
from ._prepare import Mode, Prepared, output_maps

__all__ = ["recursive", "canonical_chain"]


def canonical_chain(net: Network) -> list[Network]:
    """Layers of ``net`` with degree-<=1 layers fused into a neighbouring layer."""
    layers = list(net.chain)
    if len(layers) == 1:
        return layers
    out: list[Network] = []
    pending: Network | None = None  # linear layers waiting for the next non-linear one
    for layer in layers:
        if layer.degree <= 1:
            pending = layer if pending is None else compose(layer, pending)
            continue
        if pending is not None:
            layer = compose(layer, pending)
            pending = None
        out.append(layer)
    if pending is not None:
        if out:
            out[-1] = compose(pending, out[-1])
        else:
            out.append(pending)
    return out


def _space(net: Network) -> Space:
    return Space(tuple(net.in_shape), net.in_padded)


def _out_space(net: Network) -> Space:
    return Space(tuple(net.out_shape), net.out_padded)


def _legs(rank: int, slot: int) -> tuple[tuple[int, int], ...]:
    return tuple((slot, i) for i in range(rank))


class _StateTensorKernel(Kernel):
    """The propagated metric between the layer inputs of a and b (tensor measure)."""

    scheme = "bijections"
    const_blocks = True

    def __init__(self, g: torch.Tensor, roles: tuple[str, ...], space_a: Space, space_b: Space,
                 decoupled: bool = False, identity: bool = False):
        self.g, self.roles = g, roles
        self.decoupled = decoupled  # true for the input metric (first layer) only
        self.spaces = {"a": space_a, "b": space_b}
        ra, rb = len(space_a.shape), len(space_b.shape)
        # the input metric of the first layer is often the identity: join legs, skip the d x d
        identity = identity and not roles and ra == rb == 1
        self._pair = (Piece(g, _legs(ra, 0) + _legs(rb, 1), roles, identity=identity),)
        self.like = g
        self.structure = ("state-tensor", roles, tuple(g.shape[len(roles) :]), space_a, space_b, identity)

    def pair(self, s1, s2):
        return self._pair

    def single(self, s):
        return None


class _StateGaussianKernel(Kernel):
    """Propagated means and covariances of the layer inputs (Gaussian closure)."""

    scheme = "matchings"

    def __init__(self, cov: dict, mean: dict, spaces: dict, partial: bool,
                 decoupled: bool = False, real_mean_zero: bool = False, identity=frozenset()):
        self.cov, self.mean, self.spaces, self.partial = cov, mean, spaces, partial
        # the input measure (first layer) keeps constant and real coordinates apart
        self.decoupled, self.real_mean_zero = decoupled, real_mean_zero
        self._pairs = {}
        # covariances declared the identity (the first layer's unit covariance) join legs
        identity = frozenset(
            k for k in identity
            if not cov[k][1] and len(spaces[k[0]].shape) == len(spaces[k[1]].shape) == 1
        )
        for (s1, s2), (c, roles) in cov.items():
            r1, r2 = len(spaces[s1].shape), len(spaces[s2].shape)
            piece = Piece(c, _legs(r1, 0) + _legs(r2, 1), roles, identity=(s1, s2) in identity)
            self._pairs[(s1, s2)] = (piece,)
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
            tuple(sorted(identity)),
        )

    def pair(self, s1, s2):
        return self._pairs.get((s1, s2))

    def single(self, s):
        return self._singles[s]


def _initial_tensor(space_a: Space, space_b: Space, like) -> torch.Tensor:
    """The tensor-measure metric between input copies as one dense array."""
    pieces = TensorKernel(space_a, space_b, like).pair("a", "b")
    if len(pieces) == 1 and len(pieces[0].legs) == len(space_a.shape) + len(space_b.shape):
        return pieces[0].array
    eye, m = pieces[0].array, pieces[1].array
    n = eye.shape[0]
    check_allocation((n, m.shape[0], n, m.shape[1]), like.dtype.itemsize,
                           "the recursive method's dense input metric for sequences")
    return torch.einsum("ts,ij->tisj", eye, m)


def _initial_gaussian(measure: GaussianMeasure, space: Space, other: Space, like):
    """Mean of a copy and covariance between copies of two (possibly differently padded) frames."""
    mean, cov = measure.dense(space.d, like)
    c = embedded(cov, space, other)  # S^T cov S_o without the (d+1)^3 products
    m = mean.new_zeros(space.shape[-1])
    m[int(space.padded) :] = mean
    if space.padded:
        m[0] = 1
    if space.sequence:
        n = space.shape[0]
        check_allocation((n, c.shape[0], n, c.shape[1]), like.dtype.itemsize,
                               "the recursive method's dense input covariance for sequences")
        c = torch.einsum("ts,ij->tisj", torch.eye(n, dtype=like.dtype, device=like.device), c)
        m = m.expand(n, -1).clone()
    return m, c


def _max_abs(x: torch.Tensor, batch_dims: int) -> torch.Tensor:
    """Largest absolute entry per model (over all non-batch axes)."""
    if batch_dims == 0:
        return x.abs().max()
    return x.abs().reshape(x.shape[:batch_dims] + (-1,)).amax(-1)


def _safe_log(x: torch.Tensor) -> torch.Tensor:
    return torch.log(torch.where(x > 0, x, torch.ones_like(x)))


def _expand(x, dims):
    return x.reshape(tuple(x.shape) + (1,) * dims)


def _aligned(net_a: Network, net_b: Network) -> list[tuple[Network, Network]]:
    ca, cb = canonical_chain(net_a), canonical_chain(net_b)
    if len(ca) != len(cb):
        raise StructureError(
            f"the recursive method aligns layers, but {net_a.name} has {len(ca)} non-linear "
            f"layers and {net_b.name} has {len(cb)}; use method='exact'"
        )
    return list(zip(ca, cb))


def recursive(prepared: Prepared, outputs=None, *, stats: dict | None = None):
    """Recursive inner products: returns ``(ab, aa, bb)`` as :class:`Scaled` values.

    ``ab`` has batch axes (a, b) where the networks are stacks; ``aa`` and ``bb`` are the
    per-model squared norms (diagonal). The state propagated is the measure's
    :attr:`~tnsim.measures.Measure.closure`; a measure without one is computed exactly when
    both models are one layer deep, and refused otherwise.
    """
    net_a, net_b, measure, dtype = prepared.a, prepared.b, prepared.measure, prepared.dtype
    if measure.closure == "hierarchical":
        return _recursive_tensor(net_a, net_b, outputs, dtype, stats)
    if measure.closure == "gaussian":
        return _recursive_gaussian(net_a, net_b, measure, outputs, dtype, stats)
    _aligned(net_a, net_b)  # same number of layers, or a clear error
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


def _recursive_tensor(net_a, net_b, outputs, dtype, stats):
    like = torch.empty((), dtype=dtype, device=net_a.device)
    layers = _aligned(net_a, net_b)
    ba, bb = net_a.batch, net_b.batch
    roles_ab: tuple[str, ...] = ()  # the input metric is the same for every model
    sa0, sb0 = _space(layers[0][0]), _space(layers[0][1])
    first = [True]  # the input metric is the identity between frames padded alike
    g0 = _initial_tensor(sa0, sb0, like)
    g_aa, g_bb = _initial_tensor(sa0, sa0, like), _initial_tensor(sb0, sb0, like)
    g_ab = g0
    ls_a = torch.zeros(ba or (), dtype=torch.float64, device=like.device) if ba else torch.zeros((), dtype=torch.float64, device=like.device)
    ls_b = torch.zeros(bb or (), dtype=torch.float64, device=like.device) if bb else torch.zeros((), dtype=torch.float64, device=like.device)
    roles_aa, roles_bb = (), ()
    for index, (la, lb) in enumerate(layers):
        k = max(la.degree, lb.degree)
        for layer in (la, lb):
            if any(t.degree < k for t in layer.terms) and not layer.in_padded:
                raise StructureError(
                    f"layer {layer.name} mixes degrees but has no constant coordinate; compile "
                    "with pad=True or use method='exact'"
                )
        sa, sb = _space(la), _space(lb)
        virtual = lambda t: k - t.degree  # noqa: E731

        def step(x, y, g, roles, mode, sx, sy):
            kern = _StateTensorKernel(
                g, roles, sx, sy, decoupled=index == 0,
                identity=first[0] and sx.padded == sy.padded,
            )
            tx, ty, _, _ = choose_variants(x, y, kern, virtual, (None, None), open_outputs=True, mode=mode)
            return sum_term_pairs(
                tx, ty, kern, open_outputs=True, mode=mode,
                virtual_a=virtual, virtual_b=virtual, dtype=dtype, stats=stats,
            )

        raw_aa = step(la, la, g_aa, roles_aa, Mode("diag") if ba else Mode(), sa, sa)
        raw_bb = step(lb, lb, g_bb, roles_bb, Mode("diag") if bb else Mode(), sb, sb)
        raw_ab = step(la, lb, g_ab, roles_ab, Mode(), sa, sb)
        nb_aa = 1 if ba else 0
        nb_bb = 1 if bb else 0
        c_a = _max_abs(raw_aa.mantissa, nb_aa)
        c_b = _max_abs(raw_bb.mantissa, nb_bb)
        out_rank_a = raw_aa.mantissa.dim() - nb_aa
        out_rank_b = raw_bb.mantissa.dim() - nb_bb
        g_aa = raw_aa.mantissa / _expand(c_a, out_rank_a)
        g_bb = raw_bb.mantissa / _expand(c_b, out_rank_b)
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
        roles_aa = ("a",) if ba else ()
        roles_bb = ("a",) if bb else ()
        roles_ab = tuple(r for r, b in (("a", ba), ("b", bb)) if b)
        first[0] = False
        g_aa, g_bb, g_ab = g_aa.to(dtype), g_bb.to(dtype), g_ab.to(dtype)
    last_a, last_b = layers[-1]
    maps_a = output_maps(last_a, outputs, like)
    maps_b = output_maps(last_b, outputs, like)
    ab = _close(g_ab, maps_a, maps_b, ba, bb)
    aa = _close_diag(g_aa, maps_a, ba)
    bb_ = _close_diag(g_bb, maps_b, bb)
    return (
        Scaled(ab, ls_a, ls_b),
        Scaled(aa, 2 * ls_a, 0.0),
        Scaled(bb_, 2 * ls_b, 0.0),
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


def _recursive_gaussian(net_a, net_b, measure: GaussianMeasure, outputs, dtype, stats):
    like = torch.empty((), dtype=dtype, device=net_a.device)
    layers = _aligned(net_a, net_b)
    ba, bb = net_a.batch, net_b.batch
    sa0, sb0 = _space(layers[0][0]), _space(layers[0][1])
    measure.check(sa0)
    m_a, c_aa = _initial_gaussian(measure, sa0, sa0, like)
    m_b, c_bb = _initial_gaussian(measure, sb0, sb0, like)
    _, c_ab = _initial_gaussian(measure, sa0, sb0, like)
    roles = {"a": (), "b": ()}
    ls_a = torch.zeros(ba, dtype=torch.float64, device=like.device) if ba else torch.zeros((), dtype=torch.float64, device=like.device)
    ls_b = torch.zeros(bb, dtype=torch.float64, device=like.device) if bb else torch.zeros((), dtype=torch.float64, device=like.device)
    s_ab = s_aa = s_bb = None
    odd_a = odd_b = measure.zero_mean  # x itself is odd; its mean is zero iff the measure's is
    for index, (la, lb) in enumerate(layers):
        sa, sb = _space(la), _space(lb)
        ka, kb = la.degree, lb.degree
        first = index == 0
        # after the first layer the state is rescaled, so every term must scale alike:
        # lower-degree terms are homogenised with the constant coordinate
        for layer, k in ((la, ka), (lb, kb)):
            if not first and any(t.degree < k for t in layer.terms) and not layer.in_padded:
                raise StructureError(
                    f"layer {layer.name} mixes degrees but has no constant coordinate; compile "
                    "with pad=True or use method='exact'"
                )
        va = (lambda t: 0) if first else (lambda t: ka - t.degree)
        vb = (lambda t: 0) if first else (lambda t: kb - t.degree)
        # unpaired copies (means) can contribute unless both inputs are odd functions of a
        # centred Gaussian (then their means vanish): decided from structure, so no host sync
        zero_a, zero_b = odd_a and not sa.padded, odd_b and not sb.padded
        partial = not (zero_a and zero_b)
        odd_a = zero_a and not la.out_padded and all(t.degree % 2 for t in la.terms)
        odd_b = zero_b and not lb.out_padded and all(t.degree % 2 for t in lb.terms)
        ra = ("a",) if roles["a"] else ()

        def kern(cov, mean, spaces):
            # first layer, unit covariance: the covariance between unpadded frames is I
            unit = first and measure.cov is None
            ident = {k for k in cov if unit and not spaces[k[0]].padded and not spaces[k[1]].padded}
            return _StateGaussianKernel(
                cov, mean, spaces, partial, decoupled=first,
                real_mean_zero=first and measure.zero_mean, identity=frozenset(ident),
            )

        # single-side means, own frames
        k_ma = kern({("a", "a"): (c_aa, ra)}, {"a": (m_a, ra)}, {"a": sa, "b": sa})
        k_mb = kern({("a", "a"): (c_bb, ("a",) if roles["b"] else ())}, {"a": (m_b, ("a",) if roles["b"] else ())}, {"a": sb, "b": sb})
        mode_a = Mode("pair")
        mean_a = sum_term_pairs(la.terms, None, k_ma, open_outputs=True, mode=mode_a,
                                virtual_a=va, dtype=dtype, stats=stats)
        mean_b = sum_term_pairs(lb.terms, None, k_mb, open_outputs=True, mode=mode_a,
                                virtual_a=vb, dtype=dtype, stats=stats)
        # second moments: a with a (diagonal), b with b, a with b
        rda = ("a",) if ba and not first else ()
        rdb = ("a",) if bb and not first else ()
        k_aa = kern(
            {("a", "a"): (c_aa, rda), ("a", "b"): (c_aa, rda), ("b", "b"): (c_aa, rda)},
            {"a": (m_a, rda), "b": (m_a, rda)}, {"a": sa, "b": sa},
        )
        k_bb = kern(
            {("a", "a"): (c_bb, rdb), ("a", "b"): (c_bb, rdb), ("b", "b"): (c_bb, rdb)},
            {"a": (m_b, rdb), "b": (m_b, rdb)}, {"a": sb, "b": sb},
        )
        rab = () if first else tuple(r for r, b in (("a", ba), ("b", bb)) if b)
        rb_ = ("b",) if bb and not first else ()
        k_ab = kern(
            {("a", "a"): (c_aa, rda), ("a", "b"): (c_ab, rab), ("b", "b"): (c_bb, rb_)},
            {"a": (m_a, rda), "b": (m_b, rb_)}, {"a": sa, "b": sb},
        )
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
        last = index == len(layers) - 1
        if last:
            s_final = (s_ab.mantissa, s_aa.mantissa, s_bb.mantissa) if not measure.centred else (rab_, raa, rbb)
            w_a = torch.as_tensor(mean_a.log_a, dtype=torch.float64)
            w_b = torch.as_tensor(mean_b.log_a, dtype=torch.float64)
            ls_a = ka * ls_a + w_a.to(ls_a.device)
            ls_b = kb * ls_b + w_b.to(ls_b.device)
            break
        c_a = torch.maximum(_max_abs(raa, nba), _max_abs(ma, nba) ** 2)
        c_b = torch.maximum(_max_abs(rbb, nbb), _max_abs(mb, nbb) ** 2)
        c_a = torch.where(c_a > 0, c_a, torch.ones_like(c_a)).to(torch.float64)
        c_b = torch.where(c_b > 0, c_b, torch.ones_like(c_b)).to(torch.float64)
        w_a = torch.as_tensor(mean_a.log_a, dtype=torch.float64)
        w_b = torch.as_tensor(mean_b.log_a, dtype=torch.float64)
        ls_a = ka * ls_a + w_a.to(ls_a.device) + 0.5 * torch.log(c_a)
        ls_b = kb * ls_b + w_b.to(ls_b.device) + 0.5 * torch.log(c_b)
        sqa, sqb = torch.sqrt(c_a), torch.sqrt(c_b)
        m_a = (ma / _expand(sqa, ma.dim() - nba)).to(dtype)
        m_b = (mb / _expand(sqb, mb.dim() - nbb)).to(dtype)
        c_aa = (raa / _expand(c_a, raa.dim() - nba)).to(dtype)
        c_bb = (rbb / _expand(c_b, rbb.dim() - nbb)).to(dtype)
        scale = _outer(sqa, sqb, ba, bb)
        c_ab = (rab_ / _expand(scale, rab_.dim() - scale.dim())).to(dtype)
        roles = {"a": ("a",) if ba else (), "b": ("b",) if bb else ()}
    last_a, last_b = layers[-1]
    maps_a = output_maps(last_a, outputs, like)
    maps_b = output_maps(last_b, outputs, like)
    ab, aa, bbv = s_final
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
