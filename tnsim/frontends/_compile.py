r"""Compile PyTorch modules into :class:`~tnsim.Network` objects.

Supported building blocks (by module type; subclasses count):

* ``torch.nn.Linear`` — one degree-1 term, :math:`W\tilde x`;
* :class:`tnsim.nn.Bilinear` — one degree-2 CP term (stored symmetrised, with an
  unsymmetrised ``raw`` twin), plus an identity term when residual;
* ``torch.nn.Sequential`` — composition in order; ``torch.nn.Identity`` and ``Dropout`` in eval
  mode are skipped;
* :class:`tnsim.nn.Trilinear` — one degree-3 symmetric CP term;
* sequence layers: :class:`tnsim.nn.BilinearAttention` (one term of degree 3, or 5 with
  squared scores, whose symmetry group is found from its structure),
  :class:`tnsim.nn.TensorTransformerBlock` (attention then MLP: two layers),
  :class:`tnsim.nn.Embedding` and :class:`tnsim.nn.Unembedding`; vector layers meeting a
  sequence are applied at every position;
* further layer types registered with :func:`register`; any other module is traced
  (:func:`tnsim.trace.trace`) when an example input is given.

A network that uses biases or residuals anywhere is compiled *padded* throughout: every layer
maps :math:`\tilde x = (1, x)` to :math:`\tilde y = (1, y)`; the constant rides on one extra
hidden unit of each bilinear layer (:math:`\tilde L_{0} = \tilde R_{0} = e_0`,
:math:`\tilde D_{00} = 1`). Anything else raises :class:`~tnsim.errors.NotMultilinearError`
naming the module and its position in the model.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..ir.algebra import reshape, simplify
from ..errors import ArgumentTypeError, NotMultilinearError, ShapeMismatchError
from ..ir._network import Network, compose, pad_input, pad_output, positionwise
from ..nn import (
    Bilinear,
    BilinearAttention,
    Embedding,
    TensorTransformerBlock,
    Trilinear,
)
from ..ir._symmetry import with_symmetries
from ..ir._term import Term, cp_term
from ._registry import _SKIP, _check_finite, _compile, _uses_padding, register, unbatched_example
from ._trace import trace

__all__ = ["compile", "register", "as_network"]


def compile(module, example_input=None, *, input_shape=None, pad: bool | None = None,
            name: str | None = None) -> Network:
    """Compile a multilinear module (or pass a :class:`Network` through).

    Parameters
    ----------
    module
        A ``torch.nn.Module`` built from supported layers, or a :class:`Network`.
    example_input
        What ``forward`` receives, batch axis included, as in torch: ``(B, d)`` for vector
        models, ``(B, n, d)`` for sequence models (a 1-D ``(d,)`` is one unbatched vector).
        Modules outside the registered layer types are traced on its first row (torch.fx) into
        the same networks the hand-built form gives, and the result is checked against
        ``module(example_input)``; a vector model given sequences is applied at every position.
    input_shape
        Instead of an example: the unbatched input shape, ``(d,)`` or ``(n, d)``.
    pad
        Force (``True``) or forbid (``False``) the padded representation; default: padded iff
        the model has biases or residual connections.
    name
        Label used in messages (default: the module's class name).

    Returns
    -------
    Network
        Weights are shared with the module (no copies), detached from autograd.
    """
    if isinstance(module, Network):
        return module
    if not isinstance(module, torch.nn.Module):
        raise ArgumentTypeError(f"cannot compile {type(module).__name__}: expected a torch.nn.Module")
    _check_finite(module, "")
    padded = _uses_padding(module) if pad is None else bool(pad)
    label = name or type(module).__name__
    try:
        net = _compile(module, "", padded)
    except NotMultilinearError:
        if example_input is None and input_shape is None:
            raise
        net = None
    if net is None:
        return trace(module, example_input, input_shape=input_shape, pad=pad, name=label)
    if net is _SKIP:
        raise NotMultilinearError(f"{label} computes the identity; nothing to compile")
    x, _ = unbatched_example(module, example_input, input_shape)
    if x is not None:
        if len(net.in_shape) == 1 and x.dim() == 2:
            net = positionwise(net, x.shape[0])  # a vector model applied at every position
        if tuple(net.real_in_shape) != tuple(x.shape):
            raise ShapeMismatchError(
                f"{label} takes inputs of shape {net.real_in_shape} (unbatched), but the example "
                f"gives {tuple(x.shape)}; example_input is batched as forward receives it, (B, d) "
                "or (B, n, d), and input_shape= is the unbatched shape"
            )
    return _named(net, label)


def _named(net: Network, name: str) -> Network:
    return replace(net, name=name)


def _param(x: torch.Tensor) -> torch.Tensor:
    return x.detach()


@register(torch.nn.Sequential)
def _sequential(module: torch.nn.Sequential, path: str, padded: bool):
    net = None
    for key, child in module.named_children():
        sub = f"{path}.{key}" if path else key
        layer = _compile(child, sub, padded)
        if layer is _SKIP:
            continue
        net = layer if net is None else compose(layer, net)
    return _SKIP if net is None else net


@register(torch.nn.Identity)
def _identity(module, path, padded):
    return _SKIP


@register(torch.nn.Dropout)
def _dropout(module: torch.nn.Dropout, path: str, padded: bool):
    if module.training and module.p > 0:
        raise NotMultilinearError(
            f"{path or 'the model'} (Dropout) is random in training mode; call model.eval() first"
        )
    return _SKIP


@register(torch.nn.Bilinear)
def _torch_bilinear(module, path, padded):
    raise NotMultilinearError(
        f"{path or 'the model'} (torch.nn.Bilinear) takes two inputs; use tnsim.nn.Bilinear, "
        "which applies D(Lx * Rx) to one input"
    )


def padded_matrix(w: torch.Tensor, b: torch.Tensor | None, constant: bool) -> torch.Tensor:
    r"""``[[1, 0], [b, W]]`` (or ``[[0, 0], [b, W]]`` without the constant unit)."""
    o, d = w.shape
    out = torch.zeros(o + 1, d + 1, dtype=w.dtype, device=w.device)
    out[1:, 1:] = w
    if b is not None:
        out[1:, 0] = b
    if constant:
        out[0, 0] = 1
    return out


@register(torch.nn.Linear)
def _linear(module: torch.nn.Linear, path: str, padded: bool) -> Network:
    w = _param(module.weight)
    b = _param(module.bias) if module.bias is not None else None
    tag = f"{path}.weight" if path else "weight"
    mat = padded_matrix(w, b, True) if padded else w
    term = Term(inds=(("y", "x"),), arrays=(mat,), copies=(("x",),), outputs=("y",), tags=(tag,))
    return Network((term,), (mat.shape[1],), (mat.shape[0],), padded, padded, None, None, path or "Linear")


def bilinear_factors(module: Bilinear, padded: bool):
    """``(D, L, R)`` of a bilinear layer, padded with the constant hidden unit if asked."""
    left, right, down = module.left, module.right, module.down
    L, R, D = _param(left.weight), _param(right.weight), _param(down.weight)
    if not padded:
        return D, L, R
    lb = _param(left.bias) if left.bias is not None else None
    rb = _param(right.bias) if right.bias is not None else None
    db = _param(down.bias) if down.bias is not None else None
    # hidden unit 0 is the constant: L~_0 = R~_0 = e_0, so its product is 1
    Lp = padded_matrix(L, lb, True)
    Rp = padded_matrix(R, rb, True)
    Dp = padded_matrix(D, db, True)
    return Dp, Lp, Rp


@register(Bilinear)
def _bilinear(module: Bilinear, path: str, padded: bool) -> Network:
    D, L, R = bilinear_factors(module, padded)
    pre = f"{path}." if path else ""
    tags = (f"{pre}down", f"{pre}left", f"{pre}right")
    terms, raws = product_terms(D, [L, R], tags, module.residual, padded, f"{pre}residual")
    d_in, d_out = L.shape[1], D.shape[0]
    return Network(terms, (d_in,), (d_out,), padded, padded, None, raws, path or "Bilinear")


@register(Trilinear)
def _trilinear(module: Trilinear, path: str, padded: bool) -> Network:
    pre = f"{path}." if path else ""
    mats = []
    for lin in (module.down, module.a, module.b, module.c):
        w = _param(lin.weight)
        b = _param(lin.bias) if lin.bias is not None else None
        mats.append(padded_matrix(w, b, True) if padded else w)
    D, A, B, C = mats
    tags = (f"{pre}down", f"{pre}a", f"{pre}b", f"{pre}c")
    terms, raws = product_terms(D, [A, B, C], tags, module.residual, padded, f"{pre}residual")
    d_in, d_out = A.shape[1], D.shape[0]
    return Network(terms, (d_in,), (d_out,), padded, padded, None, raws, path or "Trilinear")


def residual_units(core: torch.Tensor, factors: list[torch.Tensor]):
    r"""A padded CP node with the residual :math:`x` folded in as :math:`d` more units.

    On padded inputs :math:`x_i = \tilde x_i \tilde x_0^{k-1}`, so
    :math:`\tilde y = \tilde T(\tilde x, \dots) + (0, x)` is again one degree-:math:`k` CP node:
    unit :math:`r = 1..d` reads :math:`e_r` with the first factor and the constant
    :math:`e_0` with the others, and writes output :math:`r` (a square layer). One term per
    layer keeps a residual stack of depth :math:`L` at one term (two terms per layer would
    compose into doubly exponentially many) and gives the same homogenised tensor.
    """
    d = factors[0].shape[1] - 1
    like = factors[0]
    eye = torch.eye(d + 1, dtype=like.dtype, device=like.device)[1:]  # rows e_1..e_d
    const = torch.zeros(d, d + 1, dtype=like.dtype, device=like.device)
    const[:, 0] = 1
    new = [torch.cat([factors[0], eye])] + [torch.cat([f, const]) for f in factors[1:]]
    return torch.cat([core, eye.T.to(core.dtype)], dim=1), new


def product_terms(core, factors, tags, residual: bool, padded: bool, residual_tag: str):
    """``(terms, raw terms)`` of a CP product layer: the node symmetrised and raw, plus the
    residual (folded into the node when padded, an identity term otherwise)."""
    if residual and padded:
        core, factors = residual_units(core, factors)
    sym = cp_term(core, factors, symmetric=True, tags=tags)
    raw = cp_term(core, factors, symmetric=False, tags=tags)
    if not residual or padded:
        return (sym,), (raw,)
    d_in = factors[0].shape[1]
    eye = torch.eye(d_in, dtype=core.dtype, device=core.device)
    ident = Term((("y", "x"),), (eye,), (("x",),), ("y",), (residual_tag,))
    return (sym, ident), (raw, ident)


def _head_maps(lin: torch.nn.Linear, heads: int, padded: bool) -> torch.Tensor:
    """A query/key/value map per head, ``(heads, d_head, d)`` (``d + 1`` with the bias column
    on padded inputs)."""
    w = _param(lin.weight)
    if padded:
        b = _param(lin.bias) if lin.bias is not None else None
        w = padded_matrix(w, b, False)[1:]
    return w.reshape(heads, -1, w.shape[-1])


def attention_term(module: BilinearAttention, path: str = "") -> Term:
    r"""The attention term: one (query at t, key at s) copy pair per score factor, then the
    value at s; the mask is a tensor on the (t, s) position legs.

    .. math::
        y_{to} = c^P \sum_{s,h} M_{ts} W_O[o,h,f]\, \prod_{p=1}^{P}
        (R_t W^{(p)}_Q \tilde x_t)_{he}(R_s W^{(p)}_K \tilde x_s)_{he}\; (W_V \tilde x_s)_{hf}

    with :math:`P` = 1, or 2 score pairs (``squared``: the same maps twice; ``paired``: two),
    :math:`R` the rotary embedding (a ``(position, e, e')`` tensor on the query and key legs;
    absent without ``rope``) and :math:`\tilde x = (1, x)` when the maps have biases (their
    bias is column 0). Its symmetry group (for squared scores the swap of the two (query, key)
    pairs) is found from the structure and verified numerically
    (:func:`tnsim.symmetry.with_symmetries`).
    """
    pre = f"{path}." if path else ""
    H = module.n_heads
    n = module.n_ctx
    padded = module.bias
    wv = _head_maps(module.v, H, padded)
    wo = _param(module.o.weight).reshape(-1, H, module.d_head)
    mask = _param(module.mask)[:n, :n].to(wv.dtype)
    rope = _param(module.rope)[:n].to(wv.dtype) if module.rope is not None else None
    inds, arrays, tags, copies = [], [], [], []
    names = {id(module.q): "q", id(module.k): "k", id(module.q2): "q2", id(module.k2): "k2"}
    for p, (q_map, k_map) in enumerate(module.score_pairs()):
        for lin, pos, leg in ((q_map, "t", f"i{p}"), (k_map, "s", f"j{p}")):
            inner = f"e{p}{pos}" if rope is not None else f"e{p}"
            inds.append(("h", inner, leg))
            arrays.append(_head_maps(lin, H, padded))
            tags.append(pre + names[id(lin)])
            copies.append((pos, leg))
            if rope is not None:
                inds.append((pos, f"e{p}", inner))
                arrays.append(rope)
                tags.append(f"{pre}rope")
    inds += [("h", "f", "k"), ("o", "h", "f"), ("t", "s")]
    arrays += [wv, wo, mask]
    tags += [f"{pre}v", f"{pre}o", f"{pre}mask"]
    copies.append(("s", "k"))
    coeff = module.scale ** len(module.score_pairs())
    term = Term(tuple(inds), tuple(arrays), tuple(copies), ("t", "o"), tuple(tags), coeff=coeff)
    return with_symmetries(term)


def _position_identity(n: int, d: int, like: torch.Tensor, tag: str, padded_input: bool) -> Term:
    """``x -> x`` at every position, reading the real coordinates of a padded input if asked."""
    eye = torch.eye(d + 1, dtype=like.dtype, device=like.device)[1:] if padded_input else torch.eye(
        d, dtype=like.dtype, device=like.device
    )
    ones = torch.ones(n, dtype=like.dtype, device=like.device)
    return Term((("t",), ("o", "i")), (ones, eye), (("t", "i"),), ("t", "o"), (tag, tag))


@register(BilinearAttention)
def _attention(module: BilinearAttention, path: str, padded: bool) -> Network:
    if module.bias and not padded:
        raise NotMultilinearError(
            f"{path or 'the model'} (BilinearAttention with bias=True) needs the padded input "
            "(1, x) for its biases; compile with pad=True (the default for biased models)"
        )
    term = attention_term(module, path)
    n, d = module.n_ctx, module.d_model
    biased = module.bias
    terms = (term,)
    if module.residual:
        like = term.arrays[0]
        tag = f"{path}.residual" if path else "residual"
        terms += (_position_identity(n, d, like, tag, biased),)
    net = Network(terms, (n, d + biased), (n, d), biased, False, None, None, path or "BilinearAttention")
    return simplify(pad_output(pad_input(net))) if padded else net


@register(TensorTransformerBlock)
def _block(module: TensorTransformerBlock, path: str, padded: bool) -> Network:
    pre = f"{path}." if path else ""
    attn = _compile(module.attn, pre + "attn", padded)
    mlp = _compile(module.mlp, pre + "mlp", padded)
    return _named(simplify(compose(mlp, attn)), path or "TensorTransformerBlock")


@register(Embedding)
def _token_embedding(module: Embedding, path: str, padded: bool) -> Network:
    w = _param(module.weight).T  # (d_model, vocab)
    tag = f"{path}.weight" if path else "weight"
    if module.pos is None:
        mat = padded_matrix(w, None, True) if padded else w
        term = Term((("y", "x"),), (mat,), (("x",),), ("y",), (tag,))
        return Network((term,), (mat.shape[1],), (mat.shape[0],), padded, padded, None, None, path or "Embedding")
    pos = _param(module.pos)
    n = pos.shape[0]
    # position-dependent affine map on padded inputs: W~[t] = [[1, 0], [P_t, W]]
    mat = padded_matrix(w, None, True)
    wt = mat.expand(n, -1, -1).clone()
    wt[:, 1:, 0] = pos
    term = Term((("t", "o", "i"),), (wt,), (("t", "i"),), ("t", "o"), (tag,))
    return Network((term,), (n, mat.shape[1]), (n, mat.shape[0]), True, True, None, None, path or "Embedding")


def as_network(x, example_input=None) -> Network:
    """A :class:`Network` from a module (compiled) or a network (returned as is).

    A scalar-valued model compares as a function with one output.
    """
    net = x if isinstance(x, Network) else compile(x, example_input)
    return reshape(net, (1,)) if net.out_shape == () else net
