r"""Networks: sums of terms with declared input and output spaces.

A :class:`Network` is the compiled form of a multilinear model,
:math:`f(x) = \sum_t t(x)`, together with

* ``in_shape`` / ``out_shape``: the shape of one input copy and of the output (the last axis
  is the feature axis; a leading axis, if present, is the sequence position);
* ``in_padded`` / ``out_padded``: whether feature index 0 is the constant coordinate
  (:math:`\tilde x = (1, x)`), which carries biases and lets terms of different degree share
  one homogeneous representation;
* ``layers``: the chain of layer networks whose composition this is, used by the recursive
  method (``None`` for a single layer);
* ``raw``: optionally, an unsymmetrised version of the same terms whose contractions are
  cheaper but which have smaller symmetry groups (the exact planner may use it on one side).

Composition plugs a network into every input copy of the next; sums add terms.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import torch

from ..errors import InvalidArgumentError, ShapeMismatchError, StructureError
from ._term import Term, copy_support, expand_composition

__all__ = [
    "Network",
    "compose",
    "add",
    "concat",
    "identity_network",
    "positionwise",
    "at_positions",
    "chain_slice",
]


@dataclass(frozen=True, eq=False)
class Network:
    """A multilinear model as a sum of tensor-network terms.

    Attributes
    ----------
    terms
        The terms (symmetrised where the compiler could, with their symmetry groups).
    in_shape, out_shape
        Shape of one input copy and of the output, padding included.
    in_padded, out_padded
        Whether feature index 0 of the input / output is the constant coordinate.
    layers
        Layer networks in order of application (``None``: this network is one layer).
    raw
        Unsymmetrised terms computing the same function (``None`` if not available).
    name
        Where the network came from, for messages.
    """

    terms: tuple[Term, ...]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    in_padded: bool = False
    out_padded: bool = False
    layers: tuple["Network", ...] | None = None
    raw: tuple[Term, ...] | None = None
    name: str = "network"

    def __post_init__(self):
        for variant in (self.terms, self.raw or ()):
            for t in variant:
                if t.degree and t.in_shape != tuple(self.in_shape):
                    raise StructureError(
                        f"{self.name}: a term takes inputs of shape {t.in_shape}, "
                        f"the network declares {tuple(self.in_shape)}"
                    )
                if t.out_shape != tuple(self.out_shape):
                    raise StructureError(
                        f"{self.name}: a term has output shape {t.out_shape}, "
                        f"the network declares {tuple(self.out_shape)}"
                    )
        batches = {t.batch for t in self.terms}
        if len(batches) > 1:
            raise StructureError(f"{self.name}: terms have different batch sizes {batches}")

    # --- description -----------------------------------------------------------------------

    @property
    def d_in(self) -> int:
        """Real input feature dimension (without the constant coordinate)."""
        return self.in_shape[-1] - int(self.in_padded)

    @property
    def d_out(self) -> int:
        """Real output feature dimension (without the constant coordinate)."""
        return self.out_shape[-1] - int(self.out_padded)

    @property
    def real_in_shape(self) -> tuple[int, ...]:
        return tuple(self.in_shape[:-1]) + (self.d_in,)

    @property
    def real_out_shape(self) -> tuple[int, ...]:
        return tuple(self.out_shape[:-1]) + (self.d_out,)

    @property
    def degree(self) -> int:
        """Largest number of input copies of any term (the polynomial degree)."""
        return max((t.degree for t in self.terms), default=0)

    @property
    def batch(self) -> int | None:
        return self.terms[0].batch if self.terms else None

    @property
    def chain(self) -> tuple["Network", ...]:
        """The layers for the recursive method (a single layer is its own chain)."""
        return self.layers if self.layers else (self,)

    @property
    def raw_terms(self) -> tuple[Term, ...]:
        return self.raw if self.raw is not None else self.terms

    @cached_property
    def structure(self) -> tuple:
        """Hashable structure (shapes, indices, groups; no values): equal for checkpoints."""
        return (
            tuple(t.structure for t in self.terms),
            tuple(t.structure for t in self.raw) if self.raw is not None else None,
            tuple(self.in_shape),
            tuple(self.out_shape),
            self.in_padded,
            self.out_padded,
            tuple(layer.structure for layer in self.layers) if self.layers else None,
        )

    @property
    def device(self) -> torch.device:
        return self.terms[0].arrays[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.terms[0].arrays[0].dtype

    def __repr__(self) -> str:
        degs = sorted({t.degree for t in self.terms})
        return (
            f"Network({self.name!r}, terms={len(self.terms)}, degrees={degs}, "
            f"in={tuple(self.in_shape)}{'+pad' if self.in_padded else ''}, "
            f"out={tuple(self.out_shape)}{'+pad' if self.out_padded else ''}, "
            f"layers={len(self.chain)}"
            + (f", batch={self.batch}" if self.batch else "")
            + ")"
        )

    # --- transformations -------------------------------------------------------------------

    def map_arrays(self, fn) -> "Network":
        """Apply ``fn`` to every array (e.g. ``lambda x: x.to('cuda')``), keeping structure."""
        return replace(
            self,
            terms=tuple(t.map_arrays(fn) for t in self.terms),
            raw=tuple(t.map_arrays(fn) for t in self.raw) if self.raw is not None else None,
            layers=tuple(layer.map_arrays(fn) for layer in self.layers) if self.layers else None,
        )

    def to(self, device=None, dtype=None) -> "Network":
        return self.map_arrays(lambda x: x.to(device=device, dtype=dtype))

    def scaled(self, c: float) -> "Network":
        """The network times a scalar (applied to the last layer for the recursive chain)."""
        layers = None
        if self.layers:
            layers = self.layers[:-1] + (self.layers[-1].scaled(c),)
        return replace(
            self,
            terms=tuple(t.scaled(c) for t in self.terms),
            raw=tuple(t.scaled(c) for t in self.raw) if self.raw is not None else None,
            layers=layers,
        )

    @property
    def tn(self):
        """All terms side by side as one quimb ``TensorNetwork`` (tags ``term{i}``)."""
        import quimb.tensor as qtn

        parts = []
        for i, t in enumerate(self.terms):
            tn = t.tn.reindex({ix: f"t{i}:{ix}" for ix in t.size_dict})
            tn.add_tag(f"term{i}")
            parts.append(tn)
        return qtn.TensorNetwork(parts, virtual=True)

    def draw(self, term: int | None = None, **kwargs):
        """Draw one term (or all) with quimb; extra keyword arguments go to ``tn.draw``."""
        tn = self.tn if term is None else self.terms[term].tn
        kwargs.setdefault("color", sorted({tag for t in self.terms for tag in t.tags})[:12])
        return tn.draw(**kwargs)


def _check_compatible(outer: Network, inner: Network) -> None:
    if tuple(outer.real_in_shape) != tuple(inner.real_out_shape):
        raise ShapeMismatchError(
            f"cannot feed {inner.name} (output {inner.real_out_shape}) into "
            f"{outer.name} (input {outer.real_in_shape})"
        )


def compose(outer: Network, inner: Network) -> Network:
    """The network ``outer(inner(x))``: ``inner`` is plugged into every input copy of ``outer``.

    Padding is reconciled: an unpadded inner output feeding a padded outer input gets the
    constant coordinate; a padded inner output feeding an unpadded outer input is sliced.
    A vector network meeting a sequence network is applied at every position
    (:func:`positionwise`), so ``Sequential(attention, Bilinear)`` composes as written.
    """
    if len(outer.in_shape) == 1 and len(inner.out_shape) == 2:
        outer = positionwise(outer, inner.out_shape[0])
    elif len(outer.in_shape) == 2 and len(inner.out_shape) == 1 and len(inner.in_shape) == 1:
        inner = positionwise(inner, outer.in_shape[0])
    _check_compatible(outer, inner)
    if outer.in_padded and not inner.out_padded:
        inner = pad_output(inner)
    elif inner.out_padded and not outer.in_padded:
        inner = strip_output_pad(inner)
    terms = tuple(expand_composition(list(outer.terms), list(inner.terms)))
    raw = None
    if outer.raw is not None or inner.raw is not None:
        raw = tuple(expand_composition(list(outer.raw_terms), list(inner.raw_terms)))
    return Network(
        terms=terms,
        in_shape=inner.in_shape,
        out_shape=outer.out_shape,
        in_padded=inner.in_padded,
        out_padded=outer.out_padded,
        layers=inner.chain + outer.chain,
        raw=raw,
        name=f"{outer.name}∘{inner.name}",
    )


def add(*nets: Network, name: str | None = None) -> Network:
    """The sum of networks with the same input and output spaces (residuals, mixtures).

    The sum is one layer for the recursive method (which is exact within a layer).
    """
    first = nets[0]
    for n in nets[1:]:
        if n.real_in_shape != first.real_in_shape or n.real_out_shape != first.real_out_shape:
            raise ShapeMismatchError(
                f"cannot add {n.name} ({n.real_in_shape} -> {n.real_out_shape}) to "
                f"{first.name} ({first.real_in_shape} -> {first.real_out_shape})"
            )
    padded_in = any(n.in_padded for n in nets) or len({t.degree for n in nets for t in n.terms}) > 1
    padded_out = any(n.out_padded for n in nets)
    nets = tuple(pad_input(n) if padded_in and not n.in_padded else n for n in nets)
    nets = tuple(pad_output(n) if padded_out and not n.out_padded else n for n in nets)
    if padded_out:
        # exactly one constant coordinate: keep the first summand's, strip the others'
        nets = (nets[0],) + tuple(_drop_constant(n) for n in nets[1:])
    terms = tuple(t for n in nets for t in n.terms)
    raw = None
    if any(n.raw is not None for n in nets):
        raw = tuple(t for n in nets for t in n.raw_terms)
    return Network(
        terms=terms,
        in_shape=nets[0].in_shape,
        out_shape=nets[0].out_shape,
        in_padded=padded_in,
        out_padded=padded_out,
        layers=None,
        raw=raw,
        name=name or "+".join(n.name for n in nets),
    )


def _embedding(d: int, like: torch.Tensor) -> torch.Tensor:
    """``E`` of shape ``(d, d+1)`` with ``E x~ = x`` (drops the constant coordinate)."""
    e = torch.zeros(d, d + 1, dtype=like.dtype, device=like.device)
    e[:, 1:] = torch.eye(d, dtype=like.dtype, device=like.device)
    return e


def _batched(x: torch.Tensor, batch: int | None) -> torch.Tensor:
    return x if batch is None else x.expand((batch,) + tuple(x.shape))


def _pad_term_input(t: Term) -> Term:
    if not t.degree:
        return t
    like = t.arrays[0]
    inds, arrays, tags = list(t.inds), list(t.arrays), list(t.tags)
    copies = []
    for c, legs in enumerate(t.copies):
        feat = legs[-1]
        new = f"{feat}~"
        inds.append((feat, new))
        arrays.append(_batched(_embedding(t.size_dict[feat], like), t.batch))
        tags.append("pad")
        copies.append(tuple(legs[:-1]) + (new,))
    # every copy now enters through E = [0 | I]: it never reads the constant coordinate
    return Term(
        tuple(inds), tuple(arrays), tuple(copies), t.outputs, tuple(tags), t.group, t.coeff,
        t.batch, support=((False, True),) * t.degree,
    )


def pad_input(net: Network) -> Network:
    """The same function taking padded inputs :math:`(1, x)` (an embedding on every copy)."""
    if net.in_padded:
        return net
    shape = tuple(net.in_shape[:-1]) + (net.in_shape[-1] + 1,)
    layers = None
    if net.layers:
        layers = (pad_input(net.layers[0]),) + net.layers[1:]
    return replace(
        net,
        terms=tuple(_pad_term_input(t) for t in net.terms),
        raw=tuple(_pad_term_input(t) for t in net.raw) if net.raw is not None else None,
        in_shape=shape,
        in_padded=True,
        layers=layers,
    )


def _pad_term_output(t: Term) -> Term:
    like = t.arrays[0]
    feat = t.outputs[-1]
    new = f"{feat}~"
    e = _embedding(t.size_dict[feat], like).T
    return Term(
        t.inds + ((new, feat),),
        t.arrays + (_batched(e.contiguous(), t.batch),),
        t.copies,
        tuple(t.outputs[:-1]) + (new,),
        t.tags + ("pad",),
        t.group,
        t.coeff,
        t.batch,
    )


def _constant_term(out_shape: tuple[int, ...], like: torch.Tensor, batch: int | None) -> Term:
    """The degree-0 term whose value is the constant coordinate ``e_0`` (at every position)."""
    e0 = torch.zeros(out_shape[-1], dtype=like.dtype, device=like.device)
    e0[0] = 1
    inds = [("y.f",)]
    arrays = [_batched(e0, batch)]
    outputs = ("y.f",)
    if len(out_shape) == 2:
        ones = torch.ones(out_shape[0], dtype=like.dtype, device=like.device)
        inds.append(("y.p",))
        arrays.append(_batched(ones, batch))
        outputs = ("y.p", "y.f")
    return Term(tuple(inds), tuple(arrays), (), outputs, ("const",) * len(inds), batch=batch)


def pad_output(net: Network) -> Network:
    """The same function with the constant coordinate prepended to its output."""
    if net.out_padded:
        return net
    shape = tuple(net.out_shape[:-1]) + (net.out_shape[-1] + 1,)
    like = net.terms[0].arrays[0]
    const = _constant_term(shape, like, net.batch)
    layers = None
    if net.layers:
        layers = net.layers[:-1] + (pad_output(net.layers[-1]),)
    return replace(
        net,
        terms=tuple(_pad_term_output(t) for t in net.terms) + (const,),
        raw=(tuple(_pad_term_output(t) for t in net.raw) + (const,)) if net.raw is not None else None,
        out_shape=shape,
        out_padded=True,
        layers=layers,
    )


def _strip_term_output(t: Term) -> Term:
    like = t.arrays[0]
    feat = t.outputs[-1]
    new = f"{feat}-"
    e = _embedding(t.size_dict[feat] - 1, like)
    return Term(
        t.inds + ((new, feat),),
        t.arrays + (_batched(e, t.batch),),
        t.copies,
        tuple(t.outputs[:-1]) + (new,),
        t.tags + ("unpad",),
        t.group,
        t.coeff,
        t.batch,
    )


def strip_output_pad(net: Network) -> Network:
    """The same function with the constant output coordinate removed."""
    if not net.out_padded:
        return net
    shape = tuple(net.out_shape[:-1]) + (net.out_shape[-1] - 1,)
    layers = None
    if net.layers:
        layers = net.layers[:-1] + (strip_output_pad(net.layers[-1]),)
    return replace(
        net,
        terms=tuple(_strip_term_output(t) for t in net.terms),
        raw=tuple(_strip_term_output(t) for t in net.raw) if net.raw is not None else None,
        out_shape=shape,
        out_padded=False,
        layers=layers,
    )


def _drop_constant(net: Network) -> Network:
    """Zero the constant output coordinate of a padded network (for sums: keep one constant)."""
    def project(t: Term) -> Term:
        like = t.arrays[0]
        feat = t.outputs[-1]
        new = f"{feat}0"
        n = t.size_dict[feat]
        p = torch.eye(n, dtype=like.dtype, device=like.device)
        p[0, 0] = 0
        return Term(
            t.inds + ((new, feat),),
            t.arrays + (_batched(p, t.batch),),
            t.copies,
            tuple(t.outputs[:-1]) + (new,),
            t.tags + ("noconst",),
            t.group,
            t.coeff,
            t.batch,
        )

    return replace(
        net,
        terms=tuple(project(t) for t in net.terms),
        raw=tuple(project(t) for t in net.raw) if net.raw is not None else None,
        layers=None,
    )


def identity_network(
    shape: tuple[int, ...], padded: bool, like: torch.Tensor, name="identity", constant=True
) -> Network:
    """The degree-1 network ``x -> x`` (padded: ``x~ -> x~``, or ``(0, x)`` if not ``constant``)."""
    d = shape[-1]
    m = torch.eye(d, dtype=like.dtype, device=like.device)
    if padded and not constant:
        m[0, 0] = 0
    inds = [("y.f", "x.f")]
    arrays = [m]
    copies = (("x.f",),)
    outputs = ("y.f",)
    if len(shape) == 2:
        inds.append(("y.p", "x.p"))
        arrays.append(torch.eye(shape[0], dtype=like.dtype, device=like.device))
        copies = (("x.p", "x.f"),)
        outputs = ("y.p", "y.f")
    term = Term(tuple(inds), tuple(arrays), copies, outputs, ("identity",) * len(inds))
    return Network((term,), tuple(shape), tuple(shape), padded, padded, None, None, name)


def stack(nets: list[Network], name: str | None = None) -> Network:
    """One batched network from networks of identical structure (model index = batch axis)."""
    first = nets[0]
    for i, n in enumerate(nets[1:], 1):
        if n.structure != first.structure:
            raise StructureError(f"model {i} ({n.name}) differs in structure from model 0 ({first.name})")
        if n.batch is not None:
            raise StructureError("cannot stack networks that are already stacks")

    memo: dict = {}  # the same weight appears in many terms: stack it once
    seen: dict = {}  # and its support is read once

    def stacked(xs):
        key = tuple(id(x) for x in xs)
        if key not in memo:  # one model: a view, not a copy (blocks of one model are common)
            memo[key] = (xs[0].unsqueeze(0) if len(xs) == 1 else torch.stack(xs), xs)  # keep xs alive: ids stay unique
        return memo[key][0]

    def stack_terms(groups: list[tuple[Term, ...]]) -> tuple[Term, ...]:
        out = []
        for parts in zip(*groups):
            arrays = tuple(stacked([p.arrays[i] for p in parts]) for i in range(len(parts[0].arrays)))
            # read once per model (a tensor shared by many terms, once), kept on the stack
            supports = [copy_support(p, seen) for p in parts]
            support = tuple(
                tuple(any(s[c][k] for s in supports) for k in range(2)) for c in range(parts[0].degree)
            )
            out.append(replace(parts[0].with_arrays(arrays, batch=len(parts)), support=support))
        return tuple(out)

    def stack_net(group: list[Network]) -> Network:
        head = group[0]
        layers = None
        if head.layers:
            layers = tuple(stack_net([n.layers[i] for n in group]) for i in range(len(head.layers)))
        return replace(
            head,
            terms=stack_terms([n.terms for n in group]),
            raw=stack_terms([n.raw for n in group]) if head.raw is not None else None,
            layers=layers,
        )

    out = stack_net(list(nets))
    return replace(out, name=name or f"stack[{len(nets)}]")


def unstack(net: Network, i: int) -> Network:
    """Model ``i`` of a stacked network."""
    def pick(terms):
        return tuple(t.with_arrays(tuple(x[i] for x in t.arrays), batch=None) for t in terms)

    return replace(
        net,
        terms=pick(net.terms),
        raw=pick(net.raw) if net.raw is not None else None,
        layers=tuple(unstack(layer, i) for layer in net.layers) if net.layers else None,
        name=f"{net.name}[{i}]",
    )


# --- sequences, concatenation, slices ---------------------------------------------------------


def _lift_term(t: Term, n: int, like: torch.Tensor) -> Term:
    ones = _batched(torch.ones(n, dtype=like.dtype, device=like.device), t.batch)
    return Term(
        t.inds + (("pos",),),
        t.arrays + (ones,),
        tuple(("pos",) + tuple(c) for c in t.copies),
        ("pos",) + tuple(t.outputs),
        t.tags + ("position",),
        t.group,
        t.coeff,
        t.batch,
    )


def positionwise(net: Network, n: int, name: str | None = None) -> Network:
    r"""A vector network applied independently at each of ``n`` positions.

    Every term gets one position index shared by all its copies and its output (a hyperindex
    carried by a vector of ones): :math:`Y_t = f(X_t)`. Groups are unchanged.
    """
    if len(net.in_shape) != 1 or len(net.out_shape) != 1:
        raise StructureError(
            f"positionwise needs a vector network, {net.name} maps {net.in_shape} -> {net.out_shape}"
        )
    like = net.terms[0].arrays[0]
    layers = tuple(positionwise(layer, n) for layer in net.layers) if net.layers else None
    return replace(
        net,
        terms=tuple(_lift_term(t, n, like) for t in net.terms),
        raw=tuple(_lift_term(t, n, like) for t in net.raw) if net.raw is not None else None,
        in_shape=(n,) + tuple(net.in_shape),
        out_shape=(n,) + tuple(net.out_shape),
        layers=layers,
        name=name or net.name,
    )


def _attach(t: Term, leg_axis: int, matrix: torch.Tensor, tag: str, drop: bool = False) -> Term:
    """Apply ``matrix`` (shape ``(new, old)``; a vector ``(old,)`` if ``drop``) to output axis
    ``leg_axis`` of a term."""
    old = t.outputs[leg_axis]
    new = f"{old}'"
    arr = _batched(matrix.to(dtype=t.arrays[0].dtype, device=t.arrays[0].device), t.batch)
    if drop:
        outputs = tuple(o for a, o in enumerate(t.outputs) if a != leg_axis)
        return replace(t, inds=t.inds + ((old,),), arrays=t.arrays + (arr,), outputs=outputs,
                       tags=t.tags + (tag,), _canonical=False)
    outputs = tuple(new if a == leg_axis else o for a, o in enumerate(t.outputs))
    return replace(t, inds=t.inds + ((new, old),), arrays=t.arrays + (arr,), outputs=outputs,
                   tags=t.tags + (tag,), _canonical=False)


def _map_terms(net: Network, fn) -> tuple[tuple[Term, ...], tuple[Term, ...] | None]:
    return tuple(fn(t) for t in net.terms), (tuple(fn(t) for t in net.raw) if net.raw is not None else None)


def concat(*nets: Network, name: str | None = None) -> Network:
    """Concatenate the (real) outputs of networks with the same input along the feature axis.

    The result is one layer for the recursive method; its output is unpadded.
    """
    if not nets:
        raise InvalidArgumentError("concat needs at least one network")
    first = nets[0]
    for n in nets[1:]:
        if n.real_in_shape != first.real_in_shape or n.real_out_shape[:-1] != first.real_out_shape[:-1]:
            raise ShapeMismatchError(
                f"cannot concatenate {n.name} ({n.real_in_shape} -> {n.real_out_shape}) with "
                f"{first.name} ({first.real_in_shape} -> {first.real_out_shape})"
            )
    padded_in = any(n.in_padded for n in nets)
    nets = tuple(strip_output_pad(pad_input(n) if padded_in else n) for n in nets)
    total = sum(n.out_shape[-1] for n in nets)
    like = first.terms[0].arrays[0]
    terms, raws, offset, any_raw = [], [], 0, any(n.raw is not None for n in nets)
    for n in nets:
        d = n.out_shape[-1]
        inj = torch.zeros(total, d, dtype=like.dtype, device=like.device)
        inj[offset : offset + d] = torch.eye(d, dtype=like.dtype, device=like.device)
        offset += d
        axis = len(n.out_shape) - 1
        terms += [_attach(t, axis, inj, "concat") for t in n.terms]
        raws += [_attach(t, axis, inj, "concat") for t in n.raw_terms]
    return Network(
        tuple(terms),
        tuple(nets[0].in_shape),
        tuple(nets[0].out_shape[:-1]) + (total,),
        padded_in,
        False,
        None,
        tuple(raws) if any_raw else None,
        name or "concat(" + ", ".join(n.name for n in nets) + ")",
    )


def at_positions(net: Network, positions) -> Network:
    """The outputs of a sequence network at selected positions only.

    ``positions`` is an int (the output becomes a vector, e.g. the last token's logits) or a
    list of ints (the output keeps a shorter position axis). Applied to the last layer, so the
    recursive method still sees every layer.
    """
    if len(net.out_shape) != 2:
        raise StructureError(f"{net.name} has no position axis (output shape {net.out_shape})")
    n = net.out_shape[0]
    like = net.terms[0].arrays[0]
    single = isinstance(positions, int)
    idx = [positions] if single else [int(p) for p in positions]
    bad = [p for p in idx if not -n <= p < n]
    if bad:
        raise ShapeMismatchError(f"positions {bad} out of range for {n} output positions of {net.name}")
    sel = torch.eye(n, dtype=like.dtype, device=like.device)[idx]
    if single:
        sel = sel[0]
    if net.layers:
        last = at_positions(net.layers[-1], positions)
        return replace(_select(net, sel, single), layers=net.layers[:-1] + (last,))
    return _select(net, sel, single)


def _select(net: Network, sel: torch.Tensor, single: bool) -> Network:
    terms, raw = _map_terms(net, lambda t: _attach(t, 0, sel, "position", drop=single))
    out = tuple(net.out_shape[1:]) if single else (sel.shape[0],) + tuple(net.out_shape[1:])
    return replace(net, terms=terms, raw=raw, out_shape=out, layers=None)


def chain_slice(net: Network, start: int | None = None, stop: int | None = None) -> Network:
    """Layers ``start:stop`` of a network's chain, composed into one network.

    Layers are the compiled modules in order (a ``Sequential``'s children; a transformer block
    contributes its attention and its MLP). Padding follows the layers.
    """
    chain = net.chain
    picked = chain[start:stop]
    if not picked:
        raise StructureError(f"{net.name} has {len(chain)} layers; slice {start}:{stop} is empty")
    out = picked[0]
    for layer in picked[1:]:
        out = compose(layer, out)
    lo = 0 if start is None else (start % len(chain) if start < 0 else start)
    hi = len(chain) if stop is None else (stop % len(chain) if stop < 0 else min(stop, len(chain)))
    return replace(out, name=f"{net.name}[{lo}:{hi}]")
