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

import math
from dataclasses import dataclass

import torch

from ..plan._contract import Scaled, Side, contract_pairings, homogenised_group, normalised, pair_orbits, plan
from ..errors import ShapeMismatchError, StructureError
from ..ir._groups import count_bijection_orbits, count_matching_orbits
from ..measures._kernels import GaussianKernel, GaussianMeasure, Space, TensorKernel, TensorMeasure, selector
from ..ir._network import Network, pad_input
from ..ir._term import Term

__all__ = ["exact", "output_maps", "sum_term_pairs", "Mode"]


@dataclass(frozen=True)
class Mode:
    """How model stacks meet: ``pair`` (all a x b), ``diag`` (same stack, model i with i)."""

    kind: str = "pair"

    def labels(self, a: Network | Term, b: Network | Term) -> tuple[str | None, str | None]:
        if self.kind == "diag":
            return "n#", "n#"
        return ("a#" if a.batch else None), ("b#" if b.batch else None)


def output_maps(net: Network, outputs, like: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    """Per output axis, the matrix applied before outputs are compared (``None``: identity).

    ``outputs`` is ``None`` (all real outputs), a list of output indices, or a ``(k, d_out)``
    projection. The constant coordinate of a padded output is always dropped.
    """
    d = net.d_out
    space = Space(tuple(net.out_shape), net.out_padded)
    if outputs is None:
        proj = None
    elif isinstance(outputs, torch.Tensor) and outputs.dim() == 2:
        if outputs.shape[1] != d:
            raise ShapeMismatchError(
                f"output projection has shape {tuple(outputs.shape)}, the models have {d} outputs"
            )
        proj = outputs.to(dtype=like.dtype, device=like.device)
    else:
        idx = [int(i) for i in (outputs.tolist() if isinstance(outputs, torch.Tensor) else outputs)]
        bad = [i for i in idx if not -d <= i < d]
        if bad:
            raise ShapeMismatchError(f"output indices {bad} out of range for {d} outputs")
        proj = torch.eye(d, dtype=like.dtype, device=like.device)[idx]
    if proj is None and not net.out_padded:
        feat = None
    else:
        sel = selector(space, like)
        feat = sel if proj is None else proj @ sel
    return (None,) * (len(net.out_shape) - 1) + (feat,)


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
    kind: str,
    open_outputs: bool,
    mode: Mode,
    virtual_a=lambda t: 0,
    virtual_b=lambda t: 0,
    out_maps=(None, None),
    dtype: torch.dtype,
    stats: dict | None = None,
    normalise: bool = True,
) -> Scaled:
    """Sum of :func:`~tnsim.contract.contract_pairings` over all term pairs, with scales.

    ``terms_b=None`` computes a single-side Gaussian expectation (means). Returns a
    :class:`Scaled` whose per-model logs are the largest log-norm over each side's terms.
    """
    device = terms_a[0].arrays[0].device if terms_a and terms_a[0].arrays else None

    def prep(terms):
        out = []
        for t in terms:
            arrs, ls = normalised(t, dtype) if normalise else (list(t.arrays), torch.zeros((), dtype=torch.float64, device=device))
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
            value = contract_pairings(
                sides, kernel, kind=kind, open_outputs=open_outputs, arrays=arrays, dtype=dtype, stats=stats
            )
            w = w.to(value.device)
            value = value * w.reshape(tuple(w.shape) + (1,) * (value.dim() - w.dim()))
            total = value if total is None else total + value
    la, lb = _log_shape(ref_a, ref_b, mode)
    if terms_b is None:
        return Scaled(total, ref_a, torch.zeros((), dtype=torch.float64, device=total.device))
    return Scaled(total, la, lb)


# --- variant choice --------------------------------------------------------------------------


def _orbit_count(kind: str, ta: Term, tb: Term, va: int, vb: int, partial: bool) -> int:
    if kind == "tensor":
        k = ta.degree + va
        return count_bijection_orbits(
            k, list(homogenised_group(ta, va)), list(homogenised_group(tb, vb))
        )
    return count_matching_orbits(ta.degree, list(ta.group), tb.degree, list(tb.group), partial)


#: plan sampled representatives to estimate flops when there are at most this many orbits
SAMPLE_BELOW = 5000
SAMPLES = 5


def _estimated_flops(kind, ta, tb, va, vb, kernel, out_maps, open_outputs, mode, count):
    """``(contractions, flops)`` of all orbit contractions of one term pair; runs none.

    With few orbits they are enumerated, exactly-zero pairings dropped (as the executor
    does), and representatives spread over the rest planned; their mean cost is scaled by the
    count (the aligned pairing alone is the cheapest and would underestimate). With many, the
    Burnside count times the aligned pairing's cost is a lower bound.
    """
    from ..plan._contract import _vanishing_rule, pairings, planned

    la, lb = mode.labels(ta, tb)
    sides = [Side(ta, va, la, out_maps[0]), Side(tb, vb, lb, out_maps[1])]
    if count <= SAMPLE_BELOW:
        reps, _ = pairings(sides, kernel, kind)
        vanishes = _vanishing_rule(sides, kernel, kind)
        if vanishes is not None:
            reps = [r for r in reps if not vanishes(r[2], r[3])]
        if not reps:
            return 0, 0.0
        step = max(1, len(reps) // SAMPLES)
        sample = reps[::step][:SAMPLES]
        flops = [planned(sides, kernel, kind, open_outputs, r[0], r[2], r[3]).flops for r in sample]
        return len(reps), len(reps) * sum(flops) / len(flops)
    if kind == "tensor":
        k = ta.degree + va
        pairs, singles = [((0, i), (1, i)) for i in range(k)], []
    else:
        partial = bool(getattr(kernel, "partial", False))
        pairs = [((0, i), (1, i)) for i in range(min(ta.degree, tb.degree))]
        rest = [(0, i) for i in range(len(pairs), ta.degree)] + [(1, i) for i in range(len(pairs), tb.degree)]
        while len(rest) >= 2 and not partial:
            pairs.append((rest.pop(0), rest.pop(0)))
        singles = rest + [(si, c) for si, s in enumerate(sides) for c in range(s.term.degree, s.degree)]
    return count, count * planned(sides, kernel, kind, open_outputs, ("aligned",), pairs, singles).flops


def estimate(
    kind, terms_a, terms_b, kernel, virtual, out_maps, open_outputs=False, mode=Mode()
) -> tuple[int, float]:
    """(number of orbit contractions, estimated flops); contracts nothing."""
    partial = bool(getattr(kernel, "partial", False))
    n, flops = 0, 0.0
    for ta in terms_a:
        for tb in terms_b:
            va, vb = virtual(ta), virtual(tb)
            c = _orbit_count(kind, ta, tb, va, vb, partial)
            c, f = _estimated_flops(kind, ta, tb, va, vb, kernel, out_maps, open_outputs, mode, c)
            n += c
            flops += f
    return n, flops


_CHOICES: dict = {}


def choose_variants(
    net_a: Network, net_b: Network, kind, kernel, virtual, out_maps, open_outputs=False, mode=Mode()
):
    """Pick (symmetrised, symmetrised) or one raw side, whichever is estimated cheaper.

    The choice depends on structure only and is remembered per structure (the blocks of a
    matrix and repeated comparisons of checkpoints skip the estimate).
    """
    options = [(net_a.terms, net_b.terms)]
    if net_b.raw is not None:
        options.append((net_a.terms, net_b.raw))
    if net_a.raw is not None:
        options.append((net_a.raw, net_b.terms))
    key = (
        kind, net_a.structure, net_b.structure, net_a.batch, net_b.batch, kernel.structure,
        open_outputs, mode,
        tuple(tuple(None if m is None else tuple(m.shape) for m in om or ()) for om in out_maps),
        tuple(virtual(t) for ta, tb in options for t in ta + tb),
    )
    hit = _CHOICES.get(key)
    if hit is None:
        best = None
        for i, (ta, tb) in enumerate(options):
            n, flops = estimate(kind, ta, tb, kernel, virtual, out_maps, open_outputs, mode)
            score = flops + 2e5 * n  # per-contraction overhead of roughly 0.1 ms
            if best is None or score < best[0]:
                best = (score, i, n, flops)
        hit = _CHOICES[key] = best[1:]
    i, n, flops = hit
    return options[i][0], options[i][1], n, flops


# --- the exact method ------------------------------------------------------------------------


def prepare(net_a: Network, net_b: Network, measure) -> tuple[Network, Network, torch.dtype]:
    """Check that two networks can be compared, pad as the measure needs, pick a dtype."""
    if net_a.real_in_shape != net_b.real_in_shape:
        raise ShapeMismatchError(
            f"input shapes differ: {net_a.name} takes {net_a.real_in_shape}, "
            f"{net_b.name} takes {net_b.real_in_shape}"
        )
    if net_a.real_out_shape != net_b.real_out_shape:
        raise ShapeMismatchError(
            f"output shapes differ: {net_a.name} gives {net_a.real_out_shape}, "
            f"{net_b.name} gives {net_b.real_out_shape}"
        )
    if net_a.device != net_b.device:
        raise StructureError(
            f"models are on different devices ({net_a.device} and {net_b.device}); move one"
        )
    dtype = torch.promote_types(net_a.dtype, net_b.dtype)
    if isinstance(measure, TensorMeasure):
        k = max(net_a.degree, net_b.degree)
        if any(t.degree < k for t in net_a.terms) and not net_a.in_padded:
            net_a = pad_input(net_a)
        if any(t.degree < k for t in net_b.terms) and not net_b.in_padded:
            net_b = pad_input(net_b)
    return net_a, net_b, dtype


_KERNELS: dict = {}


def make_kernel(measure, net_a: Network, net_b: Network, like: torch.Tensor):
    """The measure's kernel between the two input frames (reused while nothing changed).

    Kernels hold ``(d+1) x (d+1)`` matrices; the few most recent are kept, keyed by the
    measure object, its tensors' version counters (in-place edits invalidate), the frames,
    dtype and device, so the many comparisons of a matrix build them once.
    """
    sa = Space(tuple(net_a.in_shape), net_a.in_padded)
    sb = Space(tuple(net_b.in_shape), net_b.in_padded)
    tensors = (getattr(measure, "mean", None), getattr(measure, "cov", None))
    versions = tuple(x._version if isinstance(x, torch.Tensor) else None for x in tensors)
    key = (id(measure), versions, sa, sb, like.dtype, like.device)
    hit = _KERNELS.get(key)
    if hit is not None and hit[0] is measure:
        return hit[1]
    kernel = TensorKernel(sa, sb, like) if isinstance(measure, TensorMeasure) else GaussianKernel(measure, sa, sb, like)
    if len(_KERNELS) >= 8:
        _KERNELS.pop(next(iter(_KERNELS)))
    _KERNELS[key] = (measure, kernel)
    return kernel


def exact(
    net_a: Network,
    net_b: Network,
    measure,
    outputs=None,
    *,
    mode: Mode = Mode(),
    stats: dict | None = None,
) -> Scaled:
    """Exact inner product ``<a, b>`` (a matrix for model stacks, a vector in ``diag`` mode)."""
    net_a, net_b, dtype = prepare(net_a, net_b, measure)
    like = torch.empty((), dtype=dtype, device=net_a.device)
    kernel = make_kernel(measure, net_a, net_b, like)
    maps = (output_maps(net_a, outputs, like), output_maps(net_b, outputs, like))
    kind = "tensor" if isinstance(measure, TensorMeasure) else "gaussian"
    if kind == "tensor":
        k = max(net_a.degree, net_b.degree)
        virtual = lambda t: k - t.degree  # noqa: E731
    else:
        virtual = lambda t: 0  # noqa: E731
    terms_a, terms_b, n, flops = choose_variants(net_a, net_b, kind, kernel, virtual, maps, mode=mode)
    if stats is not None:
        stats["variant"] = (
            "sym" if terms_a is net_a.terms else "raw",
            "sym" if terms_b is net_b.terms else "raw",
        )
    result = sum_term_pairs(
        terms_a, terms_b, kernel, kind=kind, open_outputs=False, mode=mode,
        virtual_a=virtual, virtual_b=virtual, out_maps=maps, dtype=dtype, stats=stats,
    )
    if kind == "gaussian" and measure.centred:
        mean_a = _mean(terms_a, kernel, maps[0], mode, dtype, stats, side="a")
        mean_b = _mean(terms_b, _swap(kernel), maps[1], mode, dtype, stats, side="b")
        result = _subtract_mean_product(result, mean_a, mean_b, mode)
    return result


class _swap:
    """A kernel seen from side b (so single-side expectations of b use b's frame)."""

    def __init__(self, kernel):
        self.k = kernel
        self.partial = kernel.partial
        self.structure = ("swap",) + tuple(kernel.structure)

    def pair(self, s1, s2):
        return self.k.pair("b", "b")

    def single(self, s):
        return self.k.single("b")

    def pad(self, s):
        return self.k.pad("b")


def _mean(terms, kernel, out_map, mode, dtype, stats, side) -> Scaled:
    """:math:`\\mathbb E f` mapped to compared outputs: shape (batch..., k...)."""
    value = sum_term_pairs(
        terms, None, kernel, kind="gaussian", open_outputs=True,
        mode=Mode("pair") if mode.kind == "pair" else mode, out_maps=(out_map, None),
        dtype=dtype, stats=stats,
    )
    m = value.mantissa
    batched = terms[0].batch is not None
    for axis, mat in enumerate(out_map):
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
