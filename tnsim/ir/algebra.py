r"""Tensor algebra on networks: the operations traced modules and specs are made of.

A :class:`~tnsim.Network` is a tensor-valued polynomial of its input,
:math:`F(x)_{a_1\dots a_r} = \sum_t t(x)_{a_1\dots a_r}`; every operation here acts on the
*output legs* of its terms and never materialises anything:

* :func:`einsum` — products and contractions of networks (one term per choice of a term from
  each operand; legs sharing a letter are identified, letters missing from the output summed).
  Elementwise products (:func:`mul`), matrix products and ``F.linear`` are special cases;
  copies of the operands are concatenated, so degrees add.
* :func:`reshape`, :func:`permute`, :func:`index`, :func:`broadcast_to`, :func:`sum_axes`,
  :func:`cat` — linear maps on the output legs (a matrix or a reshaping delta tensor attached
  to the leg, or folded into the one weight that carries the leg).
* :func:`plus` — sums with broadcasting; :func:`constant` — a degree-0 network.

Outputs here are unpadded and of any rank; inputs may be padded (the constant coordinate of
the input is what biases and constants hang on for the tensor measure).
"""

from __future__ import annotations

import itertools
import math
import string
from dataclasses import replace

import torch

from ..errors import ShapeMismatchError, StructureError
from ._groups import Generators, shift
from ._network import Network, pad_input, strip_output_pad
from ._term import Term

__all__ = [
    "broadcast_to",
    "cat",
    "combine_terms",
    "constant",
    "einsum",
    "index",
    "merge_terms",
    "mul",
    "permute",
    "plus",
    "reshape",
    "simplify",
    "sum_axes",
]

_fresh = itertools.count()


def _new(prefix: str = "n") -> str:
    return f"{prefix}#{next(_fresh)}"


# --- term level ------------------------------------------------------------------------------


def _diagonalise(inds, arrays):
    """Replace every tensor with a repeated index by its diagonal (the same hyperindex sum)."""
    out_i, out_a = [], []
    for ix, x in zip(inds, arrays):
        if len(set(ix)) == len(ix):
            out_i.append(tuple(ix))
            out_a.append(x)
            continue
        seen = list(dict.fromkeys(ix))
        letters = {i: string.ascii_letters[k] for k, i in enumerate(seen)}
        spec = "".join(letters[i] for i in ix) + "->" + "".join(letters[i] for i in seen)
        out_i.append(tuple(seen))
        out_a.append(torch.einsum(spec, x))
    return tuple(out_i), tuple(out_a)


def combine_terms(parts: list[Term], specs: list[str], out: str, coeff: float = 1.0) -> Term:
    """One term from ``parts`` whose output legs are identified by einsum letters.

    ``specs[p]`` has one letter per output axis of ``parts[p]``; equal letters become one index
    (a hyperindex when more than two legs meet), letters in ``out`` are the new outputs (in
    that order), the others are summed. Copies are concatenated in part order and each part's
    group acts on its own block (a direct product: the order is the product of the orders).
    """
    if len(set(out)) != len(out):
        raise StructureError(f"output letters {out!r} repeat")
    inds, arrays, tags, copies, gens = [], [], [], [], []
    total = sum(t.degree for t in parts)
    offset = 0
    for p, (t, spec) in enumerate(zip(parts, specs)):
        if len(spec) != len(t.outputs):
            raise StructureError(f"operand {p} has {len(t.outputs)} axes but spec {spec!r}")
        rename = {leg: f"L{c}" for leg, c in zip(t.outputs, spec)}
        rename.update({i: f"{p}:{i}" for i in t.size_dict if i not in rename})
        inds += [tuple(rename[i] for i in ix) for ix in t.inds]
        arrays += list(t.arrays)
        tags += list(t.tags)
        copies += [tuple(rename[i] for i in c) for c in t.copies]
        gens += shift(t.group, offset, total)
        offset += t.degree
        coeff *= t.coeff
    for c, legs in enumerate(copies):
        if len(set(legs)) != len(legs):
            raise StructureError(
                f"identifying output legs {legs} would make copy {c} use one index twice"
            )
    inds, arrays = _diagonalise(inds, arrays)
    return Term(
        inds=inds,
        arrays=arrays,
        copies=tuple(copies),
        outputs=tuple(f"L{c}" for c in out),
        tags=tuple(tags),
        group=Generators(gens, math.prod(t.group_order for t in parts)),
        coeff=coeff,
    )


def _foldable(inds, copies, leg: str) -> int | None:
    """The one tensor carrying ``leg`` (once), if no copy and no other tensor carries it."""
    hold = [k for k, ix in enumerate(inds) if leg in ix]
    if len(hold) != 1 or any(leg in c for c in copies) or inds[hold[0]].count(leg) != 1:
        return None
    return hold[0]


def _with(t: Term, inds, arrays, tags, outputs) -> Term:
    return replace(
        t, inds=tuple(inds), arrays=tuple(arrays), tags=tuple(tags), outputs=tuple(outputs),
        _canonical=False,
    )


def apply_matrix(t: Term, axis: int, m: torch.Tensor, tag: str = "map") -> Term:
    r"""Output axis ``axis`` of ``t`` mapped by ``m``: shape ``(new, old)``, or ``(old,)`` to
    contract the axis away. Folded into the weight carrying the leg when there is exactly one."""
    leg = t.outputs[axis]
    like = t.arrays[0]
    m = m.to(dtype=like.dtype, device=like.device)
    drop = m.dim() == 1
    new = _new("m")
    outputs = [o for a, o in enumerate(t.outputs) if a != axis] if drop else [
        new if a == axis else o for a, o in enumerate(t.outputs)
    ]
    k = _foldable(t.inds, t.copies, leg)
    inds, arrays, tags = list(t.inds), list(t.arrays), list(t.tags)
    if k is not None:
        pos = inds[k].index(leg)
        x = torch.tensordot(arrays[k], m, dims=([pos], [m.dim() - 1]))  # new axis (if any) last
        ix = [i for i in inds[k] if i != leg]
        if not drop:
            x = torch.movedim(x, -1, pos)
            ix.insert(pos, new)
        inds[k], arrays[k] = tuple(ix), x
    else:
        inds.append((leg,) if drop else (new, leg))
        arrays.append(m)
        tags.append(tag)
    return _with(t, inds, arrays, tags, outputs)


def _new_unit_leg(t: Term, inds, arrays, tags) -> str:
    leg = _new("u")
    inds.append((leg,))
    arrays.append(torch.ones(1, dtype=t.arrays[0].dtype, device=t.arrays[0].device))
    tags.append("unit")
    return leg


def _factor_groups(old: list[int], new: list[int]) -> list[tuple[list[int], list[int]]]:
    """Blocks of consecutive axes (indices into ``old`` / ``new``) with equal products."""
    groups, i, j = [], 0, 0
    while i < len(old) and j < len(new):
        gi, gj = [i], [j]
        pi, pj = old[i], new[j]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                if i >= len(old):
                    raise ShapeMismatchError(f"cannot reshape {old} to {new}")
                gi.append(i)
                pi *= old[i]
                i += 1
            else:
                if j >= len(new):
                    raise ShapeMismatchError(f"cannot reshape {old} to {new}")
                gj.append(j)
                pj *= new[j]
                j += 1
        groups.append((gi, gj))
    if i != len(old) or j != len(new):
        raise ShapeMismatchError(f"cannot reshape {old} to {new}")
    return groups


def reshape_term(t: Term, shape: tuple[int, ...]) -> Term:
    """Reshape the output legs of a term (row-major, as ``torch.reshape``)."""
    sizes = t.out_shape
    if math.prod(sizes) != math.prod(shape):
        raise ShapeMismatchError(f"cannot reshape output {tuple(sizes)} to {tuple(shape)}")
    old = [(leg, s) for leg, s in zip(t.outputs, sizes) if s != 1]
    new_sizes = [s for s in shape if s != 1]
    inds, arrays, tags = list(t.inds), list(t.arrays), list(t.tags)
    new_legs: list[str] = []
    for gi, gj in _factor_groups([s for _, s in old], new_sizes):
        olds = [old[i][0] for i in gi]
        if len(gi) == 1 and len(gj) == 1:
            new_legs.append(olds[0])
            continue
        names = [_new("r") for _ in gj]
        new_legs += names
        hold = [_foldable(inds, t.copies, leg) for leg in olds]
        if hold[0] is not None and all(h == hold[0] for h in hold):
            k = hold[0]
            ix = list(inds[k])
            pos = [ix.index(leg) for leg in olds]
            rest = [a for a in range(len(ix)) if a not in pos]
            x = arrays[k].permute(pos + rest)
            x = x.reshape([new_sizes[j] for j in gj] + list(x.shape[len(pos):]))
            inds[k] = tuple(names) + tuple(ix[a] for a in rest)
            arrays[k] = x
        else:
            prod = math.prod(new_sizes[j] for j in gj)
            eye = torch.eye(prod, dtype=t.arrays[0].dtype, device=t.arrays[0].device)
            delta = eye.reshape([old[i][1] for i in gi] + [new_sizes[j] for j in gj])
            inds.append(tuple(olds) + tuple(names))
            arrays.append(delta)
            tags.append("reshape")
    outputs, it = [], iter(new_legs)
    for s in shape:
        outputs.append(_new_unit_leg(t, inds, arrays, tags) if s == 1 else next(it))
    return _with(t, inds, arrays, tags, outputs)


# --- network level ---------------------------------------------------------------------------


def _same_input(*nets: Network) -> tuple[Network, ...]:
    first = nets[0]
    for n in nets[1:]:
        if n.real_in_shape != first.real_in_shape:
            raise ShapeMismatchError(
                f"operands take different inputs: {first.real_in_shape} and {n.real_in_shape}"
            )
    padded = any(n.in_padded for n in nets)
    return tuple(strip_output_pad(pad_input(n) if padded else n) for n in nets)


def _per_term(net: Network, fn, out_shape, name=None) -> Network:
    net = strip_output_pad(net)
    return replace(
        net,
        terms=tuple(fn(t) for t in net.terms),
        raw=tuple(fn(t) for t in net.raw) if net.raw is not None else None,
        out_shape=tuple(out_shape),
        out_padded=False,
        layers=None,
        name=name or net.name,
    )


def constant(array: torch.Tensor, in_shape, in_padded: bool, name: str = "constant") -> Network:
    """The degree-0 network whose value is ``array`` for every input."""
    array = torch.as_tensor(array)
    if array.dim() == 0:
        array = array.reshape(1)
        legs = ("c0",)
        term = Term((legs,), (array,), (), legs, (name,))
        return reshape(Network((term,), tuple(in_shape), (1,), in_padded, False, None, None, name), ())
    legs = tuple(f"c{a}" for a in range(array.dim()))
    term = Term((legs,), (array,), (), legs, (name,))
    return Network((term,), tuple(in_shape), tuple(array.shape), in_padded, False, None, None, name)


def einsum(spec: str, *operands: Network, name: str | None = None) -> Network:
    """``torch.einsum`` over networks (no ellipsis): every combination of one term per operand.

    Operands that are the same object in every position of a symmetric product are not merged
    here (see :func:`mul` for ``x * x``).
    """
    spec = spec.replace(" ", "")
    if "->" not in spec:
        raise StructureError(f"einsum spec {spec!r} needs an explicit '->' output")
    lhs, out = spec.split("->")
    ins = lhs.split(",")
    if len(ins) != len(operands):
        raise StructureError(f"einsum spec {spec!r} has {len(ins)} operands, got {len(operands)}")
    if "." in spec:
        raise StructureError("einsum ellipsis is expanded by the caller")
    ops = _same_input(*operands)
    sizes: dict[str, int] = {}
    for op, sub in zip(ops, ins):
        if len(sub) != len(op.out_shape):
            raise ShapeMismatchError(f"operand {sub!r} of {spec!r} has shape {op.out_shape}")
        for c, s in zip(sub, op.out_shape):
            if sizes.setdefault(c, s) != s:
                raise ShapeMismatchError(f"letter {c!r} of {spec!r} has sizes {sizes[c]} and {s}")
    terms = tuple(
        combine_terms(list(combo), ins, out) for combo in itertools.product(*(o.terms for o in ops))
    )
    raw = None
    if any(o.raw is not None for o in ops):
        raw = tuple(
            combine_terms(list(combo), ins, out)
            for combo in itertools.product(*(o.raw_terms for o in ops))
        )
    return Network(
        terms, tuple(ops[0].in_shape), tuple(sizes[c] for c in out), ops[0].in_padded, False,
        None, raw, name or f"einsum({spec})",
    )


def _broadcast_shape(*shapes) -> tuple[int, ...]:
    try:
        return tuple(torch.broadcast_shapes(*[torch.Size(s) for s in shapes]))
    except RuntimeError as err:
        raise ShapeMismatchError(f"shapes {shapes} do not broadcast") from err


def broadcast_to(net: Network, shape) -> Network:
    """Broadcast the output to ``shape`` (new leading axes and size-1 axes repeat)."""
    net = strip_output_pad(net)
    shape = tuple(shape)
    old = tuple(net.out_shape)
    if old == shape:
        return net
    if _broadcast_shape(old, shape) != shape:
        raise ShapeMismatchError(f"cannot broadcast output {old} to {shape}")
    lead = len(shape) - len(old)

    def fn(t: Term) -> Term:
        inds, arrays, tags = list(t.inds), list(t.arrays), list(t.tags)
        like = t.arrays[0]
        new_out = []
        for a in range(lead):
            leg = _new("b")
            inds.append((leg,))
            arrays.append(torch.ones(shape[a], dtype=like.dtype, device=like.device))
            tags.append("broadcast")
            new_out.append(leg)
        t2 = _with(t, inds, arrays, tags, tuple(new_out) + tuple(t.outputs))
        for a, (s_old, s_new) in enumerate(zip(old, shape[lead:])):
            if s_old == 1 and s_new != 1:
                ones = torch.ones(s_new, 1, dtype=like.dtype, device=like.device)
                t2 = apply_matrix(t2, lead + a, ones, "broadcast")
        return t2

    return _per_term(net, fn, shape)


def mul(a: Network, b: Network) -> Network:
    """Elementwise product with broadcasting; ``mul(x, x)`` merges the two mixed orders."""
    same = a is b
    a = strip_output_pad(a)
    b = a if same else strip_output_pad(b)
    shape = _broadcast_shape(a.out_shape, b.out_shape)
    a2, b2 = broadcast_to(a, shape), broadcast_to(b, shape)
    letters = string.ascii_letters[: len(shape)]
    if not same or len(a2.terms) == 1:
        return einsum(f"{letters},{letters}->{letters}", a2, b2, name="mul")
    # (sum_i t_i)^2 = sum_i t_i^2 + sum_{i<j} 2 t_i t_j
    (ops,) = _same_input(a2)
    terms = []
    for i, ti in enumerate(ops.terms):
        for j in range(i, len(ops.terms)):
            t = combine_terms([ti, ops.terms[j]], [letters, letters], letters)
            terms.append(t if i == j else t.scaled(2.0))
    return Network(tuple(terms), tuple(ops.in_shape), shape, ops.in_padded, False, None, None, "mul")


def plus(*nets: Network) -> Network:
    """Sum with broadcasting (a single layer)."""
    nets = [strip_output_pad(n) for n in nets]
    shape = _broadcast_shape(*[n.out_shape for n in nets])
    ops = _same_input(*[broadcast_to(n, shape) for n in nets])
    raw = None
    if any(o.raw is not None for o in ops):
        raw = tuple(t for o in ops for t in o.raw_terms)
    return Network(
        tuple(t for o in ops for t in o.terms), tuple(ops[0].in_shape), shape, ops[0].in_padded,
        False, None, raw, "+".join(o.name for o in ops),
    )


def reshape(net: Network, shape) -> Network:
    """``torch.reshape`` of the output (``-1`` allowed)."""
    net = strip_output_pad(net)
    shape = list(shape)
    total = math.prod(net.out_shape)
    if shape.count(-1) > 1:
        raise ShapeMismatchError(f"reshape {shape} has more than one -1")
    if -1 in shape:
        rest = math.prod(s for s in shape if s != -1)
        shape[shape.index(-1)] = total // rest if rest else 0
    shape = tuple(int(s) for s in shape)
    if math.prod(shape) != total:
        raise ShapeMismatchError(f"cannot reshape output {net.out_shape} to {shape}")
    return _per_term(net, lambda t: reshape_term(t, shape), shape)


def permute(net: Network, dims) -> Network:
    """``torch.permute`` of the output axes."""
    net = strip_output_pad(net)
    r = len(net.out_shape)
    dims = [d % r for d in dims] if r else []
    if sorted(dims) != list(range(r)):
        raise ShapeMismatchError(f"{list(dims)} is not a permutation of {r} axes")
    shape = tuple(net.out_shape[d] for d in dims)
    return _per_term(net, lambda t: _with(t, t.inds, t.arrays, t.tags, [t.outputs[d] for d in dims]), shape)


def sum_axes(net: Network, dims, keepdim: bool = False, scale: float = 1.0) -> Network:
    """Sum (times ``scale``: ``mean`` passes ``1/size``) over output axes ``dims``."""
    net = strip_output_pad(net)
    r = len(net.out_shape)
    dims = sorted({d % r for d in ([dims] if isinstance(dims, int) else dims)})
    shape = tuple(1 if a in dims else s for a, s in enumerate(net.out_shape)) if keepdim else tuple(
        s for a, s in enumerate(net.out_shape) if a not in dims
    )

    def fn(t: Term) -> Term:
        like = t.arrays[0]
        for a in reversed(dims):
            ones = torch.ones(t.out_shape[a], dtype=like.dtype, device=like.device)
            t = apply_matrix(t, a, ones[None] if keepdim else ones, "sum")
        return t.scaled(scale) if scale != 1.0 else t

    return _per_term(net, fn, shape)


def _normalise_key(key, shape):
    """Expand an indexing key to one entry per input axis (plus ``None`` insertions)."""
    if not isinstance(key, tuple):
        key = (key,)
    n_real = sum(1 for k in key if k is not None and k is not Ellipsis)
    out = []
    for k in key:
        if k is Ellipsis:
            out += [slice(None)] * (len(shape) - n_real)
        else:
            out.append(k)
    if Ellipsis not in key:
        out += [slice(None)] * (len(shape) - n_real)
    return out


def index(net: Network, key) -> Network:
    """Basic indexing of the output: ints, slices (any step), ``None``, ``...`` and one
    integer list / tensor per axis (applied as a selection matrix)."""
    net = strip_output_pad(net)
    shape = tuple(net.out_shape)
    key = _normalise_key(key, shape)
    plan = []  # (axis or None, matrix or None, kind)
    axis = 0
    out_shape = []
    like = net.terms[0].arrays[0]
    for k in key:
        if k is None:
            plan.append((None, None, "new"))
            out_shape.append(1)
            continue
        if axis >= len(shape):
            raise ShapeMismatchError(f"too many indices for an output of shape {shape}")
        n = shape[axis]
        if isinstance(k, bool) or (isinstance(k, torch.Tensor) and k.dtype == torch.bool):
            raise StructureError("boolean-mask indexing of a data-dependent value is not supported")
        if isinstance(k, int):
            if not -n <= k < n:
                raise ShapeMismatchError(f"index {k} out of range for an axis of size {n}")
            m = torch.zeros(n, dtype=like.dtype, device=like.device)
            m[k] = 1
            plan.append((axis, m, "drop"))
        else:
            if isinstance(k, slice):
                idx = list(range(n))[k]
            else:
                idx = [int(i) for i in (k.tolist() if isinstance(k, torch.Tensor) else k)]
                if any(not -n <= i < n for i in idx):
                    raise ShapeMismatchError(f"indices {idx} out of range for an axis of size {n}")
            m = torch.eye(n, dtype=like.dtype, device=like.device)[idx]
            plan.append((axis, m, "keep"))
            out_shape.append(len(idx))
        axis += 1

    def fn(t: Term) -> Term:
        cur = t
        for ax, m, kind in reversed([p for p in plan if p[2] != "new"]):
            cur = apply_matrix(cur, ax, m, "index")
        inds, arrays, tags = list(cur.inds), list(cur.arrays), list(cur.tags)
        kept, outputs = iter(cur.outputs), []
        for _, _, kind in plan:
            if kind == "new":
                outputs.append(_new_unit_leg(cur, inds, arrays, tags))
            elif kind == "keep":
                outputs.append(next(kept))
        return _with(cur, inds, arrays, tags, outputs)

    return _per_term(net, fn, out_shape)


def cat(nets: list[Network], dim: int) -> Network:
    """``torch.cat`` of outputs along ``dim``."""
    nets = [strip_output_pad(n) for n in nets]
    r = len(nets[0].out_shape)
    dim = dim % r
    for n in nets:
        if len(n.out_shape) != r or any(
            a != dim and s != nets[0].out_shape[a] for a, s in enumerate(n.out_shape)
        ):
            raise ShapeMismatchError(
                f"cannot concatenate outputs of shapes {[n.out_shape for n in nets]} on axis {dim}"
            )
    total = sum(n.out_shape[dim] for n in nets)
    like = nets[0].terms[0].arrays[0]
    parts, offset = [], 0
    for n in nets:
        d = n.out_shape[dim]
        inj = torch.zeros(total, d, dtype=like.dtype, device=like.device)
        inj[offset : offset + d] = torch.eye(d, dtype=like.dtype, device=like.device)
        offset += d
        shape = tuple(total if a == dim else s for a, s in enumerate(n.out_shape))
        parts.append(_per_term(n, lambda t, inj=inj: apply_matrix(t, dim, inj, "cat"), shape))
    return plus(*parts)


#: tags of structural tensors (a weight's tag wins when the two are contracted together)
_GENERIC_TAGS = {
    "pad", "unpad", "noconst", "identity", "const", "unit", "map", "sum", "index", "position",
    "reshape", "broadcast", "concat", "cat", "residual",
}


def _is_ones_vector(x: torch.Tensor) -> bool:
    return x.dim() == 1 and bool((x == 1).all())


def simplify_term(t: Term) -> Term:
    """The same term with fewer tensors.

    * vectors of ones whose index another tensor also carries are dropped (they multiply by 1),
      and so are size-1 vectors of ones on a summed index;
    * a vector or matrix joined by a summed index to exactly one other tensor is contracted
      into it (pad embeddings, selections, output maps), when that does not make it larger
      than the two together.
    """
    if t.batch is not None:
        return t
    inds, arrays, tags = list(t.inds), list(t.arrays), list(t.tags)
    open_legs = set(t.outputs) | {i for c in t.copies for i in c}
    changed = True
    while changed and len(inds) > 1:
        changed = False
        for k in range(len(inds)):
            ix, x = inds[k], arrays[k]
            others = [j for j in range(len(inds)) if j != k]
            if len(ix) == 1 and _is_ones_vector(x):
                leg = ix[0]
                if any(leg in inds[j] for j in others) or (x.shape[0] == 1 and leg not in open_legs):
                    del inds[k], arrays[k], tags[k]
                    changed = True
                    break
            if len(ix) > 2 or len(set(ix)) != len(ix):
                continue
            for a, leg in enumerate(ix):
                if leg in open_legs:
                    continue
                hold = [j for j in others if leg in inds[j]]
                if len(hold) != 1 or inds[hold[0]].count(leg) != 1:
                    continue
                j = hold[0]
                rest = [i for i in ix if i != leg]
                if any(i in inds[j] for i in rest):
                    continue
                y = arrays[j]
                pos = inds[j].index(leg)
                new_size = y.numel() // y.shape[pos] * (x.numel() // x.shape[a])
                if new_size > y.numel() + x.numel():
                    continue
                z = torch.tensordot(y, x, dims=([pos], [a]))
                new_ix = [i for i in inds[j] if i != leg]
                if rest:
                    z = torch.movedim(z, -1, pos)
                    new_ix.insert(pos, rest[0])
                inds[j], arrays[j] = tuple(new_ix), z
                if tags[j] in _GENERIC_TAGS:
                    tags[j] = tags[k]
                del inds[k], arrays[k], tags[k]
                changed = True
                break
            if changed:
                break
    _merge_pairs(inds, arrays, tags, open_legs)
    if len(inds) == len(t.inds):
        return t
    return _with(t, inds, arrays, tags, t.outputs)


def _merge_pairs(inds: list, arrays: list, tags: list, open_legs: set) -> None:
    """Contract neighbouring tensors whose product is no larger than the two together
    (e.g. ``W_Q`` with ``W_K`` into the bilinear form ``W_Q^T W_K`` when ``d <= 2 d_head``), in
    place, smallest products first. Indices carried by a third tensor or open stay."""
    def count(i):
        return sum(i in ix for ix in inds)

    changed = True
    while changed and len(inds) > 1:
        changed = False
        best = None
        for a, b in itertools.combinations(range(len(inds)), 2):
            shared = set(inds[a]) & set(inds[b])
            if not shared:
                continue
            gone = {i for i in shared if i not in open_legs and count(i) == 2}
            if not gone:
                continue
            sizes = dict(zip(inds[a], arrays[a].shape)) | dict(zip(inds[b], arrays[b].shape))
            keep = [i for i in dict.fromkeys(inds[a] + inds[b]) if i not in gone]
            new_size = math.prod(sizes[i] for i in keep)
            fits = new_size <= arrays[a].numel() + arrays[b].numel()
            if fits and (best is None or new_size < best[0]):
                best = (new_size, a, b, keep)
        if best is not None:
            _, a, b, keep = best
            letters = {i: string.ascii_letters[k] for k, i in enumerate(dict.fromkeys(inds[a] + inds[b]))}
            spec = (
                "".join(letters[i] for i in inds[a]) + "," + "".join(letters[i] for i in inds[b])
                + "->" + "".join(letters[i] for i in keep)
            )
            z = torch.einsum(spec, arrays[a], arrays[b])
            tag = tags[a] if tags[b] in _GENERIC_TAGS else (tags[b] if tags[a] in _GENERIC_TAGS else f"{tags[a]}*{tags[b]}")
            for k in sorted((a, b), reverse=True):
                del inds[k], arrays[k], tags[k]
            inds.append(tuple(keep))
            arrays.append(z)
            tags.append(tag)
            changed = True


#: the merge pass builds no tensor with more elements than this
MERGE_MAX_ELEMENTS = 1 << 22
#: and compares terms pairwise only in networks with at most this many terms
MERGE_MAX_TERMS = 2048


def _same_array(x: torch.Tensor, y: torch.Tensor) -> bool:
    return x is y or (x.shape == y.shape and x.dtype == y.dtype and bool(torch.equal(x, y)))


def _in_canonical_order(t: Term) -> Term:
    """The term with its tensors sorted by their open legs and shapes (internal index names
    follow), so that terms built in different orders can have equal structures."""
    open_legs = set(t.outputs) | {i for c in t.copies for i in c}
    off = 0 if t.batch is None else 1

    def key(k: int):
        return tuple(i if i in open_legs else "" for i in t.inds[k]), tuple(t.arrays[k].shape[off:])

    order = sorted(range(len(t.inds)), key=key)
    if order == list(range(len(t.inds))):
        return t
    pick = lambda xs: [xs[k] for k in order]  # noqa: E731
    return _with(t, pick(t.inds), pick(t.arrays), pick(t.tags), t.outputs)


def _differing(a: Term, b: Term) -> list[int] | None:
    """Positions of the tensors in which two terms of one structure differ (``None``: the
    structures differ, or a term is batched)."""
    if a.batch is not None or b.batch is not None or a.coeff == 0 or a.structure != b.structure:
        return None
    return [k for k, (x, y) in enumerate(zip(a.arrays, b.arrays)) if not _same_array(x, y)]


def _boundary(t: Term, part: list[int]) -> tuple[str, ...]:
    """Indices of the tensors ``part`` that are open or also on a tensor outside ``part``."""
    open_legs = set(t.outputs) | {i for c in t.copies for i in c}
    outside = {i for k, ix in enumerate(t.inds) if k not in part for i in ix}
    inside = dict.fromkeys(i for k in part for i in t.inds[k])
    return tuple(i for i in inside if i in open_legs or i in outside)


class _MergeCache:
    """Results of one merge pass, keyed by the identities of their inputs, so that terms
    merged from the same tensors share the merged tensor (and merge further)."""

    def __init__(self):
        self.results: dict = {}
        self.alive: list = []  # inputs stay alive, so their ids are not reused

    def get(self, key, inputs, make):
        if key not in self.results:
            self.results[key] = make()
            self.alive.append(inputs)
        return self.results[key]


def _contract_part(t: Term, part: list[int], out: tuple[str, ...], cache: _MergeCache) -> torch.Tensor:
    arrays = [t.arrays[k] for k in part]
    key = ("contract", tuple(id(x) for x in arrays), tuple(t.inds[k] for k in part), out)
    letters = {i: string.ascii_letters[n] for n, i in enumerate(dict.fromkeys(
        i for k in part for i in t.inds[k]))}
    spec = ",".join("".join(letters[i] for i in t.inds[k]) for k in part)
    spec += "->" + "".join(letters[i] for i in out)
    return cache.get(key, arrays, lambda: torch.einsum(spec, *arrays))


def _merged(a: Term, b: Term, part: list[int], cache: _MergeCache) -> Term | None:
    r"""One term equal to ``a + b``, for terms of one structure that differ only in the
    tensors ``part``: :math:`c_a T(X_a) + c_b T(X_b) = c_a T(X_a + (c_b/c_a) X_b)`, where
    :math:`X` is the contraction of the tensors ``part`` over their internal indices (the
    tensor itself when ``part`` is one tensor). ``None`` if :math:`X` would be too large."""
    ratio = b.coeff / a.coeff
    support = None
    if a.support is not None and b.support is not None:
        support = tuple(tuple(p or q for p, q in zip(sa, sb)) for sa, sb in zip(a.support, b.support))
    if not part:
        return replace(a, coeff=a.coeff + b.coeff, support=support)
    out = _boundary(a, part) if len(part) > 1 else a.inds[part[0]]
    sizes = a.size_dict
    if len(part) > 1 and math.prod(sizes[i] for i in out) > MERGE_MAX_ELEMENTS:
        return None
    xa, xb = (_contract_part(t, part, out, cache) if len(part) > 1 else t.arrays[part[0]] for t in (a, b))
    summed = cache.get(("sum", id(xa), id(xb), ratio), (xa, xb), lambda: xa + ratio * xb)
    if len(part) == 1:
        arrays = list(a.arrays)
        arrays[part[0]] = summed
        return replace(a, arrays=tuple(arrays), support=support)
    first = min(part)
    keep = [k for k in range(len(a.inds)) if k not in part or k == first]
    inds = [out if k == first else a.inds[k] for k in keep]
    arrays = [summed if k == first else a.arrays[k] for k in keep]
    named = [k for k in part if a.tags[k] not in _GENERIC_TAGS] or part
    main = max(named, key=lambda k: a.arrays[k].numel())  # the weight, not a cos or mask
    tags = [a.tags[main] if k == first else a.tags[k] for k in keep]
    return replace(_with(a, inds, arrays, tags, a.outputs), support=support)


def _merge_once(terms: list[Term], merged: list[bool], max_part: int | None, cache: _MergeCache) -> bool:
    """Merge the first mergeable pair (differing in at most ``max_part`` tensors), in place."""
    for i in range(len(terms)):
        for j in range(i + 1, len(terms)):
            part = _differing(terms[i], terms[j])
            if part is None or (max_part is not None and len(part) > max_part):
                continue
            new = _merged(terms[i], terms[j], part, cache)
            if new is not None:
                terms[i], merged[i] = _in_canonical_order(new), True
                del terms[j], merged[j]
                return True
    return False


def merge_terms(terms: tuple[Term, ...]) -> tuple[Term, ...]:
    r"""Sum terms that share a structure into fewer terms.

    Two terms with equal structure (indices, shapes, copies, outputs, group) whose tensors are
    the same except the tensors ``P`` are one term:
    :math:`c_a T(X_a) + c_b T(X_b) = c_a T(X_a + \tfrac{c_b}{c_a} X_b)`, with :math:`X` the
    contraction of ``P`` over the indices no other tensor carries. Pairs differing in one
    tensor (or none) are merged first, which keeps the structure, then pairs differing in
    more, which contracts ``P`` (at most :data:`MERGE_MAX_ELEMENTS` elements). For example
    rotary embeddings written as ``q * cos + rotate_half(q) * sin`` trace into three terms per
    query, which merge into one per-position map :math:`R_t W_Q`; the group of the merged
    term is the terms' common group.
    """
    if len(terms) < 2 or len(terms) > MERGE_MAX_TERMS:
        return terms
    out, cache = [_in_canonical_order(t) for t in terms], _MergeCache()
    merged = [False] * len(out)
    for max_part in (1, None):
        while _merge_once(out, merged, max_part, cache):
            pass
    if not any(merged):
        return terms
    return tuple(out)


def _nonzero(terms: tuple[Term, ...]) -> tuple[Term, ...]:
    """Terms without an all-zero tensor (at least one term is kept)."""
    kept = tuple(t for t in terms if t.coeff != 0 and all(bool(x.any()) for x in t.arrays))
    return kept or terms[:1]


def simplify(net: Network) -> Network:
    """:func:`simplify_term` on every term (layers too), terms that share a structure merged
    (:func:`merge_terms`); terms that vanish are dropped."""
    layers = tuple(simplify(layer) for layer in net.layers) if net.layers else None

    def clean(terms: tuple[Term, ...]) -> tuple[Term, ...]:
        return _nonzero(merge_terms(tuple(simplify_term(t) for t in terms)))

    return replace(
        net,
        terms=clean(net.terms),
        raw=clean(net.raw) if net.raw is not None else None,
        layers=layers,
    )
