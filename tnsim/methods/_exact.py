r"""The exact method: one doubled network per orbit of pairings, summed over term pairs.

For networks :math:`f_a=\sum_s t^a_s` and :math:`f_b=\sum_u t^b_u`,

.. math::
    \langle f_a, f_b\rangle = \sum_{s,u} \sum_{\text{orbits } O} |O|\;
        c\big(t^a_s, t^b_u; \text{rep}(O)\big)

where the pairings are bijections of the (homogenised) copies for the tensor measure (with the
:math:`1/K!` of the symmetriser) or Wick matchings for the Gaussian measure, and the orbits are
those of the terms' symmetry groups. When a network also has an unsymmetrised (``raw``) variant,
the planner may use it on one side: fewer symmetries but cheaper contractions; the choice with
the smaller estimated cost (orbit count x flops) wins.
"""

from __future__ import annotations

import torch

from .. import _caches
from ..doubled import Side, aligned_blocks, count_orbits, live_pairings
from ..ir._network import Network
from ..ir._term import Term
from ..plan._contract import Scaled, contract_pairings, is_dry, normalised, planned
from ._prepare import Mode, Prepared, as_matrix

__all__ = ["exact", "sum_term_pairs", "choose_variants", "estimate"]


def _log_shape(la, lb, mode: Mode):
    """Split term log-scales into the (log_a, log_b) layout of :class:`Scaled`."""
    if mode.kind == "diag":
        return la + lb, torch.zeros((), dtype=torch.float64, device=la.device)
    return la, lb


def _weights(ls: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return torch.exp(ls - ref)


def sum_term_pairs(
    terms_a: tuple[Term, ...],
    terms_b: tuple[Term, ...] | None,
    kernel,
    *,
    open_outputs: bool,
    mode: Mode,
    virtual_a=lambda t: 0,
    virtual_b=lambda t: 0,
    out_maps=(None, None),
    dtype: torch.dtype,
    stats: dict | None = None,
    normalise: bool = True,
) -> Scaled:
    """Sum of :func:`~tnsim.plan._contract.contract_pairings` over all term pairs, with scales.

    ``kernel`` may be a tuple of kernels whose sum is the metric (its
    :meth:`~tnsim.measures.Kernel.linear_parts`, valid for linear pairings only): every term
    pair is contracted with each and the values added, the arrays normalised once.
    ``terms_b=None`` computes a single-side Gaussian expectation (means). Returns a
    :class:`Scaled` whose per-model logs are the largest log-norm over each side's terms.
    """
    device = terms_a[0].arrays[0].device if terms_a and terms_a[0].arrays else None
    parts = kernel if isinstance(kernel, tuple) else (kernel,)

    normalise = normalise and not is_dry()  # a dry run reads no values

    def prep(terms):
        out = []
        for t in terms:
            arrs, ls = normalised(t, dtype) if normalise else (list(t.arrays), torch.zeros(t.batch or (), dtype=torch.float64, device=device))
            out.append((t, arrs, ls.to(t.arrays[0].device) if t.arrays else ls))
        ref = torch.stack([ls for _, _, ls in out]).amax(0)
        return out, ref

    pa, ref_a = prep(terms_a)
    pb, ref_b = prep(terms_b) if terms_b is not None else ([None], torch.zeros((), dtype=torch.float64, device=device))
    total = None
    for ta, arr_a, ls_a in pa:
        for item in pb:
            if item is None:
                lab_a = "n#" if mode.kind == "diag" else ("a#" if ta.batch else None)
                sides = [Side(ta, virtual_a(ta), lab_a, out_maps[0])]
                arrays = [arr_a]
                w = _weights(ls_a, ref_a)
            else:
                tb, arr_b, ls_b = item
                lab_a, lab_b = mode.labels(ta, tb)
                sides = [
                    Side(ta, virtual_a(ta), lab_a, out_maps[0]),
                    Side(tb, virtual_b(tb), lab_b, out_maps[1]),
                ]
                arrays = [arr_a, arr_b]
                wa, wb = _weights(ls_a, ref_a), _weights(ls_b, ref_b)
                if mode.kind == "diag" or wa.dim() == 0 or wb.dim() == 0:
                    w = wa * wb
                else:
                    w = wa[:, None] * wb[None, :]
            values = [
                contract_pairings(sides, part, open_outputs=open_outputs, arrays=arrays, dtype=dtype, stats=stats)
                for part in parts
            ]
            if is_dry():  # zero stand-ins: keep the shape, skip the arithmetic
                total = values[0] if total is None else total
                continue
            value = values[0]  # each result is fresh (float64, or float32 for a whole state): summed in place
            for v in values[1:]:
                value.add_(v)
            # the terms' relative scales, at most 1: in float32 one below 1e-38 is a term
            # negligible against the largest
            w = w.to(device=value.device, dtype=value.dtype)
            w = w.reshape(tuple(w.shape) + (1,) * (value.dim() - w.dim()))
            if total is None:
                total = value.mul_(w) if _fits(w.shape, value.shape) else value * w
            elif _fits(value.shape, total.shape) and _fits(w.shape, total.shape):
                total.addcmul_(value, w)
            else:
                total = total + value * w
    la, lb = _log_shape(ref_a, ref_b, mode)
    if terms_b is None:
        return Scaled(total, ref_a, torch.zeros((), dtype=torch.float64, device=total.device))
    return Scaled(total, la, lb)


def _fits(shape, into) -> bool:
    """Whether ``shape`` broadcasts to ``into`` without growing it (an in-place update is
    possible; ``torch.broadcast_shapes`` would do, but its first call imports sympy, 0.35 s)."""
    return len(shape) <= len(into) and all(s in (1, t) for s, t in zip(reversed(shape), reversed(into)))


# --- variant choice --------------------------------------------------------------------------


#: plan sampled representatives to estimate flops when there are at most this many orbits
SAMPLE_BELOW = 5000
SAMPLES = 5


def _estimated_flops(ta, tb, va, vb, kernel, out_maps, open_outputs, mode, count):
    """``(contractions, flops)`` of all orbit contractions of one term pair; runs none.

    With few orbits they are enumerated, exactly-zero pairings dropped (as the executor
    does), and representatives spread over the rest planned; their mean cost is scaled by the
    count (the aligned pairing alone is the cheapest and would underestimate). With many, the
    Burnside count times the aligned pairing's cost is a lower bound.
    """
    la, lb = mode.labels(ta, tb)
    sides = [Side(ta, va, la, out_maps[0]), Side(tb, vb, lb, out_maps[1])]
    if count <= SAMPLE_BELOW:
        reps, _ = live_pairings(sides, kernel)
        if not reps:
            return 0, 0.0
        step = max(1, len(reps) // SAMPLES)
        sample = reps[::step][:SAMPLES]
        flops = [planned(sides, kernel, open_outputs, r[0], r[2]).flops for r in sample]
        return len(reps), len(reps) * sum(flops) / len(flops)
    blocks = aligned_blocks(sides, kernel)
    return count, count * planned(sides, kernel, open_outputs, ("aligned",), blocks).flops


def estimate(terms_a, terms_b, kernel, virtual, out_maps, open_outputs=False, mode=Mode()) -> tuple[int, float]:
    """(number of orbit contractions, estimated flops); contracts nothing."""
    n, flops = 0, 0.0
    for ta in terms_a:
        for tb in terms_b:
            va, vb = virtual(ta), virtual(tb)
            c = count_orbits(kernel, ta, tb, va, vb)
            c, f = _estimated_flops(ta, tb, va, vb, kernel, out_maps, open_outputs, mode, c)
            n += c
            flops += f
    return n, flops


_CHOICES = _caches.memo("variant choices")


def choose_variants(net_a: Network, net_b: Network, kernel, virtual, out_maps, open_outputs=False, mode=Mode(),
                    price: bool = True):
    """Pick (symmetrised, symmetrised) or one raw side, whichever is estimated cheaper.

    The choice depends on structure only and is remembered per structure (the blocks of a
    matrix and repeated comparisons of checkpoints skip the estimate). With ``price=False``
    and nothing to choose between (no raw variant), nothing is estimated (path searches cost
    more than some contractions) and the counts returned are ``None``.
    """
    options = [(net_a.terms, net_b.terms)]
    if net_b.raw is not None:
        options.append((net_a.terms, net_b.raw))
    if net_a.raw is not None:
        options.append((net_a.raw, net_b.terms))
    if len(options) == 1 and not price:
        return net_a.terms, net_b.terms, None, None
    key = (
        net_a.structure, net_b.structure, net_a.batch, net_b.batch, kernel.structure,
        open_outputs, mode,
        tuple(tuple(None if m is None else tuple(m.shape) for m in om or ()) for om in out_maps),
        tuple(virtual(t) for ta, tb in options for t in ta + tb),
    )
    hit = _CHOICES.get(key)
    if hit is None:
        best = None
        for i, (ta, tb) in enumerate(options):
            n, flops = estimate(ta, tb, kernel, virtual, out_maps, open_outputs, mode)
            score = flops + 2e5 * n  # per-contraction overhead of roughly 0.1 ms
            if best is None or score < best[0]:
                best = (score, i, n, flops)
        hit = _CHOICES[key] = best[1:]
    i, n, flops = hit
    return options[i][0], options[i][1], n, flops


# --- the exact method ------------------------------------------------------------------------


def virtual_copies(prepared: Prepared, which: str = "ab"):
    """Virtual (homogenising) copies per term: up to the top degree of the pair ``which`` for
    measures that homogenise (the tensor measure), none otherwise. A norm homogenises to its
    own model's degree, as ``inner(a, a)`` does."""
    if not prepared.measure.homogenise:
        return lambda t: 0
    k = max(net.degree for net in prepared.nets(which))
    return lambda t: k - t.degree


def exact(
    prepared: Prepared,
    outputs=None,
    *,
    which: str = "ab",
    mode: Mode = Mode(),
    stats: dict | None = None,
) -> Scaled:
    """Exact inner product of the pair ``which`` of ``prepared`` (``"ab"``, ``"aa"``, ``"bb"``):
    a number, a matrix for model stacks, a vector in ``diag`` mode."""
    net_a, net_b = prepared.nets(which)
    kernel = prepared.kernel(which)
    maps = prepared.maps(outputs)
    maps = (maps[0] if which[0] == "a" else maps[1], maps[0] if which[1] == "a" else maps[1])
    virtual = virtual_copies(prepared, which)
    terms_a, terms_b, _, _ = choose_variants(net_a, net_b, kernel, virtual, maps, mode=mode, price=False)
    if stats is not None:
        stats["variant"] = (
            "sym" if terms_a is net_a.terms else "raw",
            "sym" if terms_b is net_b.terms else "raw",
        )
    result = sum_term_pairs(
        terms_a, terms_b, kernel, open_outputs=False, mode=mode,
        virtual_a=virtual, virtual_b=virtual, out_maps=maps, dtype=prepared.dtype, stats=stats,
    )
    if prepared.measure.centred:
        mean_a = _mean(terms_a, kernel.seen_from("a"), maps[0], mode, prepared.dtype, stats)
        mean_b = _mean(terms_b, kernel.seen_from("b"), maps[1], mode, prepared.dtype, stats)
        result = _subtract_mean_product(result, mean_a, mean_b, mode)
    return result


def _mean(terms, kernel, out_map, mode, dtype, stats) -> Scaled:
    """:math:`\\mathbb E f` mapped to compared outputs: shape (batch..., k...)."""
    value = sum_term_pairs(
        terms, None, kernel, open_outputs=True,
        mode=Mode("pair") if mode.kind == "pair" else mode, out_maps=(out_map, None),
        dtype=dtype, stats=stats,
    )
    m = value.mantissa
    batched = terms[0].batch is not None
    for axis, mat in enumerate(out_map):
        mat = as_matrix(mat)
        if mat is not None:
            ax = axis + (1 if batched else 0)
            m = torch.movedim(torch.tensordot(m, mat.to(m.dtype), dims=([ax], [1])), -1, ax)
    return Scaled(m, value.log_a, 0.0)


def _subtract_mean_product(result: Scaled, ma: Scaled, mb: Scaled, mode: Mode) -> Scaled:
    """``result - E f_a . E f_b`` in the scale of ``result`` (same per-model references)."""
    xa, xb = ma.mantissa, mb.mantissa
    la = torch.as_tensor(ma.log_a, dtype=torch.float64)
    lb = torch.as_tensor(mb.log_a, dtype=torch.float64)
    ra = torch.as_tensor(result.log_a, dtype=torch.float64)
    rb = torch.as_tensor(result.log_b, dtype=torch.float64)
    if mode.kind == "diag":
        prod = (xa.flatten(1) * xb.flatten(1)).sum(1)
        scale = torch.exp(la + lb - ra - rb)
        return Scaled(result.mantissa - prod * scale.to(prod.device), result.log_a, result.log_b)
    ba = xa.dim() > 0 and la.dim() > 0
    bb = xb.dim() > 0 and lb.dim() > 0
    fa = xa.reshape(xa.shape[0], -1) if ba else xa.reshape(1, -1)
    fb = xb.reshape(xb.shape[0], -1) if bb else xb.reshape(1, -1)
    prod = fa @ fb.T
    sa = torch.exp(la - ra).reshape(-1, 1)
    sb = torch.exp(lb - rb).reshape(1, -1)
    prod = prod * sa.to(prod.device) * sb.to(prod.device)
    prod = prod.reshape(result.mantissa.shape)
    return Scaled(result.mantissa - prod, result.log_a, result.log_b)
