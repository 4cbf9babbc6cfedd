r"""Models written down directly: einsum-style specs and quimb tensor networks.

A *spec* is an einsum equation over the weights plus the declaration of which letters are
input legs. A trilinear layer :math:`D(Ax \odot Bx \odot Cx)`::

    term_from_spec("oh,hi,hj,hk->o", D, A, B, C, inputs="i,j,k")

has three copies of the input, on legs ``i``, ``j`` and ``k``. For sequences an input copy
carries a position and a feature letter, e.g. single-head attention with mask ``M``::

    term_from_spec("ei,ej,fk,of,ts->to", Q, K, V, O, M, inputs="ti,sj,sk")

(the key and value copies share the position ``s``, the query copy shares ``t`` with the
output). A letter used only by copies and outputs (a position that no weight carries) needs
its size in ``sizes``.

``symmetry`` adds copy permutations the term is invariant under: ``"auto"`` (default) finds
them from the structure (tensors holding identical data are interchangeable), a list of
permutations declares them, ``None`` adds none. Every one is verified numerically (a wrong
declaration raises :class:`~tnsim.errors.StructureError`): the exact method sums one
contraction per orbit of this group, so symmetries make it cheaper, never different.

Terms combine into models with :func:`network_from_terms` (a sum), :func:`tnsim.compose`
(plugging one network into every input copy of another), :func:`tnsim.add`,
:func:`tnsim.concat` and :meth:`Network.scaled`.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ShapeMismatchError, StructureError
from ..ir._network import Network
from ..ir._symmetry import with_symmetries
from ..ir._term import Term

__all__ = ["from_quimb", "network_from_spec", "network_from_terms", "term_from_spec"]


def _parse_inputs(inputs) -> list[tuple[str, ...]]:
    if isinstance(inputs, str):
        parts = [p.strip() for p in inputs.replace(" ", "").split(",")]
        return [tuple(p) for p in parts if p]
    return [tuple(c) for c in inputs]


def _common_dtype(arrays) -> torch.dtype:
    dtype = arrays[0].dtype
    for x in arrays[1:]:
        dtype = torch.promote_types(dtype, x.dtype)
    return dtype


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    return torch.as_tensor(np.asarray(x))


def term_from_spec(
    spec: str,
    *arrays,
    inputs,
    symmetry="auto",
    sizes: dict[str, int] | None = None,
    tags=None,
    coeff: float = 1.0,
) -> Term:
    """A :class:`~tnsim.Term` from an einsum spec over its weights.

    Parameters
    ----------
    spec
        ``"ab,bc,...->out"``: one group of letters per array, then the output letters.
    *arrays
        The weights (torch tensors or array-likes), one per group.
    inputs
        The input copies: ``"i,j,k"`` (vector inputs) or ``"ti,sj,sk"`` (sequence inputs,
        position letter first), or a list of letter tuples.
    symmetry
        ``"auto"``, a list of copy permutations (``p[c]`` is the image of copy ``c``), or
        ``None``.
    sizes
        Sizes of letters that no array carries (e.g. a position index shared only by copies).
    tags
        A name per array (default: ``"T0"``, ``"T1"``, ...).
    coeff
        Scalar factor.
    """
    spec = spec.replace(" ", "")
    if "->" not in spec:
        raise StructureError(f"spec {spec!r} needs an explicit output: 'ab,bc->ac'")
    lhs, out = spec.split("->")
    groups = lhs.split(",") if lhs else []
    if len(groups) != len(arrays):
        raise StructureError(f"spec {spec!r} names {len(groups)} arrays, got {len(arrays)}")
    arrays = [_as_tensor(x) for x in arrays]
    dtype = _common_dtype(arrays)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    arrays = [x.to(dtype) for x in arrays]
    for g, x in zip(groups, arrays):
        if len(g) != x.dim():
            raise ShapeMismatchError(f"array for {g!r} has shape {tuple(x.shape)}")
    copies = _parse_inputs(inputs)
    letters = set("".join(groups))
    inds, arrs, names = [tuple(g) for g in groups], list(arrays), list(tags or [f"T{i}" for i in range(len(arrays))])
    for leg in dict.fromkeys([c for cp in copies for c in cp] + list(out)):
        if leg not in letters:
            if not sizes or leg not in sizes:
                raise StructureError(
                    f"letter {leg!r} is on no array; give its size with sizes={{{leg!r}: n}}"
                )
            inds.append((leg,))
            arrs.append(torch.ones(int(sizes[leg]), dtype=dtype, device=arrays[0].device))
            names.append(f"ones[{leg}]")
            letters.add(leg)
    feats = [cp[-1] for cp in copies]
    shared = {f for f in feats if feats.count(f) > 1}
    if shared:
        raise StructureError(f"input copies share the feature letter(s) {sorted(shared)}")
    if any(f in out for f in feats):
        raise StructureError("an input feature letter cannot also be an output letter")
    if len({len(cp) for cp in copies}) > 1:
        raise StructureError(f"input copies have different ranks: {copies}")
    term = Term(tuple(inds), tuple(arrs), tuple(copies), tuple(out), tuple(names), coeff=coeff)
    _ = term.in_shape  # raises unless the copies have equal shapes
    if symmetry == "auto":
        return with_symmetries(term)
    if symmetry is None:
        return term
    return with_symmetries(term, declared=symmetry, detect=False)


def network_from_terms(terms, *, in_padded: bool = False, out_padded: bool = False, name: str = "spec") -> Network:
    """A network that is the sum of ``terms`` (all with the same input and output shapes)."""
    terms = tuple(terms)
    if not terms:
        raise StructureError("a network needs at least one term")
    in_shapes = {t.in_shape for t in terms if t.degree}
    out_shapes = {t.out_shape for t in terms}
    if len(in_shapes) != 1 or len(out_shapes) != 1:
        raise ShapeMismatchError(f"terms disagree on shapes: inputs {in_shapes}, outputs {out_shapes}")
    in_shape = in_shapes.pop()
    if len(in_shape) not in (1, 2):
        raise ShapeMismatchError(f"inputs must be vectors or sequences, got copies of shape {in_shape}")
    return Network(terms, tuple(in_shape), tuple(out_shapes.pop()), in_padded, out_padded, None, None, name)


def network_from_spec(spec: str, *arrays, inputs, name: str = "spec", **kwargs) -> Network:
    """A one-term network from a spec (see :func:`term_from_spec` for the arguments).

    Examples
    --------
    >>> import torch, tnsim
    >>> g = torch.Generator().manual_seed(0)
    >>> D, A, B, C = (torch.randn(*s, generator=g, dtype=torch.float64) for s in [(2, 5), (5, 3), (5, 3), (5, 3)])
    >>> tri = tnsim.network_from_spec("oh,hi,hj,hk->o", D, A, B, C, inputs="i,j,k")
    >>> tri
    Network('spec', terms=1, degrees=[3], in=(3,), out=(2,), layers=1)
    >>> swapped = tnsim.network_from_spec("oh,hi,hj,hk->o", D, C, A, B, inputs="i,j,k")
    >>> round(tnsim.similarity(tri, swapped, measure="tensor"), 12)  # same function
    1.0
    """
    return network_from_terms([term_from_spec(spec, *arrays, inputs=inputs, **kwargs)], name=name)


def from_quimb(tn, inputs, outputs, *, symmetry="auto", name: str = "quimb") -> Network:
    """A one-term network from a ``quimb.tensor.TensorNetwork`` with tagged open legs.

    Parameters
    ----------
    tn
        The tensor network (numpy or torch data).
    inputs
        One entry per input copy: an index name (vector inputs) or a ``(position, feature)``
        pair of index names (sequences). Copies may share a position index.
    outputs
        The output index names, in order.
    symmetry
        As for :func:`term_from_spec`.
    """
    copies = [(c,) if isinstance(c, str) else tuple(c) for c in inputs]
    outputs = (outputs,) if isinstance(outputs, str) else tuple(outputs)
    open_legs = set(tn.outer_inds())
    named = {i for c in copies for i in c} | set(outputs)
    missing = open_legs - named
    if missing:
        raise StructureError(f"open indices {sorted(missing)} are neither inputs nor outputs")
    unknown = {i for i in named if i not in tn.ind_map}
    if unknown:
        raise StructureError(f"indices {sorted(unknown)} are not in the network")
    inds, arrays, tags = [], [], []
    for t in tn:
        inds.append(tuple(t.inds))
        arrays.append(_as_tensor(t.data))
        tags.append(",".join(sorted(t.tags)) or "tensor")
    dtype = _common_dtype(arrays)
    arrays = [x.to(dtype) for x in arrays]
    term = Term(tuple(inds), tuple(arrays), tuple(copies), outputs, tuple(tags))
    if symmetry == "auto":
        term = with_symmetries(term)
    elif symmetry is not None:
        term = with_symmetries(term, declared=symmetry, detect=False)
    return network_from_terms([term], name=name)
