r"""Trace an ordinary ``torch.nn.Module`` into a :class:`~tnsim.Network` (torch.fx).

:func:`trace` records the module's ``forward`` with :mod:`torch.fx`, with every value's
concrete shape known (an example input is run alongside), then replays the graph on
*symbolic* values: tensor-valued polynomials of the input held as networks
(:mod:`tnsim.algebra`). Supported:

* modules with a registered compiler (``torch.nn.Linear``, :class:`tnsim.nn.Bilinear`,
  :class:`tnsim.nn.BilinearAttention`, ...) are leaves compiled exactly as
  :func:`tnsim.compile` compiles them, so traced and hand-built forms coincide; a vector layer
  meeting a sequence is applied at every position;
* ``+``, ``-``, elementwise ``*`` (with broadcasting), scalar and constant factors, division by
  constants, integer powers, ``@`` / ``matmul`` / ``einsum`` / ``F.linear``, ``sum`` / ``mean``,
  ``reshape`` / ``view`` / ``flatten`` / ``unflatten`` / ``squeeze`` / ``unsqueeze`` /
  ``expand``, ``permute`` / ``transpose`` / ``.T``, indexing and slicing, ``cat`` / ``stack``
  / ``chunk`` / ``split``, ``masked_fill`` with a constant mask, and any computation on
  constants (parameters, buffers, masks built from shapes).

Anything else raises :class:`~tnsim.errors.NotMultilinearError` naming the operation and the
source line: non-polynomial functions (ReLU, GELU, softmax, exp, ...), normalisation
(LayerNorm, RMS norms), division by a data-dependent value, data-dependent control flow,
reading values out of the input (``.item()``), in-place updates, unknown modules.

Layers for the recursive method are read off the data flow: applying a module starts a new
layer; the residual pattern ``h + f(h)`` stays one layer on top of ``h``. A transformer block
``x = x + attn(x); x = x + mlp(x)`` therefore has two layers, like its hand-built form.
"""

from __future__ import annotations

import builtins
import math
import operator
import os
import re
import string
import traceback
from dataclasses import dataclass, replace

import torch
from torch import fx
from torch.fx.node import map_aggregate

from ..ir import algebra as alg
from ..errors import ArgumentTypeError, NotMultilinearError, ShapeMismatchError, StructureError, TnsimError
from ..ir._network import Network, compose, identity_network, positionwise
from ..ir._symmetry import with_symmetries
from ._registry import (
    _COMPILERS,
    _SKIP,
    _check_finite,
    _compile,
    _uses_padding,
    check_batched,
    unbatched_example,
)

__all__ = ["trace"]


# --- tracing with concrete shapes ------------------------------------------------------------


class _Proxy(fx.Proxy):
    """An fx proxy that knows the concrete shape of its value (shapes are never symbolic)."""

    def _example(self):
        return self.node.meta["example"]

    @property
    def shape(self):
        return self._example().shape

    def size(self, dim=None):
        v = self._example()
        return v.size() if dim is None else v.size(dim)

    def dim(self):
        return self._example().dim()

    @property
    def ndim(self):
        return self._example().dim()

    def __len__(self):
        return len(self._example())

    def numel(self):
        return self._example().numel()

    @property
    def dtype(self):
        return self._example().dtype

    @property
    def device(self):
        return self._example().device

    def __iter__(self):
        v = self._example()
        if isinstance(v, (tuple, list)):
            return iter([self[i] for i in range(len(v))])
        return super().__iter__()


def _is_leaf(m: torch.nn.Module) -> bool:
    if isinstance(m, (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)):
        return False
    if any(cls in _COMPILERS for cls in type(m).__mro__):
        return True
    return type(m).__module__.startswith("torch.nn")


class _Tracer(fx.Tracer):
    def __init__(self, example):
        super().__init__()
        self.example = example
        self.record_stack_traces = True
        self._concrete = False

    def proxy(self, node):
        return _Proxy(node, self)

    def is_leaf_module(self, m, qualname):
        return _is_leaf(m)

    def call_module(self, m, forward, args, kwargs):
        if self._concrete:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if self._concrete:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None):
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        a = map_aggregate(node.args, _example_of)
        k = map_aggregate(node.kwargs, _example_of)
        self._concrete = True
        try:
            if kind == "placeholder":
                val = self.example
            elif kind == "call_function":
                val = target(*a, **k)
            elif kind == "call_method":
                val = getattr(a[0], target)(*a[1:], **k)
            elif kind == "call_module":
                val = self.root.get_submodule(target)(*a, **k)
            elif kind == "get_attr":
                val = self.root
                for part in target.split("."):
                    val = getattr(val, part)
            else:
                val = None
        except TnsimError:
            raise
        except Exception as err:  # the operation fails on real values: report where
            raise NotMultilinearError(
                f"{_describe(kind, target)} failed on the example input{_where(node)}: {err}"
            ) from err
        finally:
            self._concrete = False
        node.meta["example"] = val
        return node


def _example_of(a):
    return a.meta["example"] if isinstance(a, fx.Node) else a


# --- source locations ------------------------------------------------------------------------

_TORCH_DIR = os.path.dirname(torch.__file__)
_HERE = os.path.dirname(os.path.abspath(__file__))
_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<fn>\S+)\n\s*(?P<code>[^\n]*)')


def _user_frame(frames) -> str:
    for file, line, fn, code in frames:
        path = os.path.abspath(file)
        if path.startswith((_TORCH_DIR, _HERE)):
            continue
        return f" at {file}:{line} in {fn}: `{(code or '').strip()}`"
    return ""


def _where(node: fx.Node) -> str:
    st = getattr(node, "stack_trace", None) or ""
    frames = [(m["file"], m["line"], m["fn"], m["code"]) for m in _FRAME.finditer(st)]
    return _user_frame(frames)


def _describe(kind: str, target) -> str:
    if kind == "call_method":
        return f"method .{target}()"
    if kind == "call_module":
        return f"module {target!r}"
    name = getattr(target, "__name__", None) or str(target)
    mod = getattr(target, "__module__", None) or ""
    if mod.startswith("torch._C._nn"):
        return f"torch.nn.functional.{name}"
    if mod in ("", "torch") or mod.startswith(("torch._C", "torch._tensor")):
        return f"torch.{name}"
    if mod.startswith("torch"):
        return f"{mod}.{name}"
    if mod in ("_operator", "operator"):
        return f"operator.{name}"
    return f"{mod}.{name}" if mod != "builtins" else name


# --- symbolic values -------------------------------------------------------------------------


@dataclass(eq=False)
class Sym:
    """A traced value: ``local`` applied to the value ``anchor``.

    The model input is the one ``Sym`` without an anchor (its ``local`` is the identity).
    Applying a module to a value anchors the result there, so anchors mark layer boundaries.
    """

    anchor: Sym | None
    local: Network
    boundary: bool = False  # the input or a module's output: where layers begin

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.local.real_out_shape if self.local.out_padded else self.local.out_shape)

    @property
    def is_input(self) -> bool:
        return self.anchor is None

    def relative(self) -> tuple[Sym, Network]:
        """(anchor, local) with the input as its own anchor."""
        return (self, self.local) if self.is_input else (self.anchor, self.local)


def _chain(v: Sym) -> list[Sym]:
    out = [v]
    while out[-1].anchor is not None:
        out.append(out[-1].anchor)
    return out


def _rebase(v: Sym, target: Sym) -> Network:
    """The network mapping ``target``'s value to ``v``'s (``target`` is on ``v``'s chain)."""
    if v is target:
        like = target.local.terms[0].arrays[0]
        return identity_network(tuple(target.local.out_shape), target.local.out_padded, like)
    phi, a = v.local, v.anchor
    while a is not target:
        phi = compose(phi, a.local)
        a = a.anchor
    return phi


def _full(v: Sym) -> Network:
    """The whole network of ``v`` as a function of the model input, layers kept."""
    if v.is_input or v.anchor.is_input:
        return v.local
    return compose(v.local, _full(v.anchor))


def _aligned(values: list[Sym]) -> tuple[Sym, list[Network]]:
    """The latest common anchor of symbolic values and their locals relative to it."""
    chains = [_chain(v) for v in values]
    ids = [set(map(id, c)) for c in chains[1:]]
    anchor = next(c for c in chains[0] if c.boundary and all(id(c) in s for s in ids))
    return anchor, [_rebase(v, anchor) for v in values]


class _Interpreter:
    def __init__(self, module: torch.nn.Module, graph: fx.Graph, example: torch.Tensor, padded: bool):
        self.module, self.graph, self.example, self.padded = module, graph, example, padded
        self.dtype = example.dtype if example.is_floating_point() else torch.get_default_dtype()
        self.input: Sym | None = None
        self.node: fx.Node | None = None
        self.names: dict[int, str] = {}  # constants read from the module, for tags

    # -- errors --------------------------------------------------------------------------------

    def fail(self, what: str, why: str = "is not a polynomial of the input") -> NotMultilinearError:
        return NotMultilinearError(f"{what}{_where(self.node)} {why}")

    # -- conversions ---------------------------------------------------------------------------

    def lift(self, x, like: Sym) -> Network:
        """A concrete value as a degree-0 network on ``like``'s input space."""
        arr = torch.as_tensor(x).detach()
        if not arr.is_floating_point():
            arr = arr.to(self.dtype)
        name = self.names.get(id(x), "constant")
        return alg.constant(arr.to(self.dtype), like.local.in_shape, like.local.in_padded, name=name)

    def combine(self, args: list, fn) -> Sym:
        """Apply ``fn(networks)`` to symbolic and concrete arguments on a common anchor."""
        syms = [a for a in args if isinstance(a, Sym)]
        anchor, locals_ = _aligned(syms)
        it = iter(locals_)
        nets = [next(it) if isinstance(a, Sym) else None for a in args]
        ref = Sym(anchor, locals_[0])
        nets = [n if n is not None else self.lift(a, ref) for n, a in zip(nets, args)]
        return Sym(anchor, alg.simplify(fn(nets)))

    def unary(self, v: Sym, fn) -> Sym:
        anchor, local = v.relative()
        return Sym(anchor, alg.simplify(fn(local)))

    # -- running -------------------------------------------------------------------------------

    def run(self) -> Sym:
        env: dict[fx.Node, object] = {}
        out = None
        for node in self.graph.nodes:
            self.node = node
            args = map_aggregate(node.args, lambda n: env[n] if isinstance(n, fx.Node) else n)
            kwargs = map_aggregate(node.kwargs, lambda n: env[n] if isinstance(n, fx.Node) else n)
            if node.op == "placeholder":
                if self.input is not None:
                    env[node] = node.meta["example"]
                    if isinstance(env[node], torch.Tensor):
                        raise StructureError(
                            f"forward takes a second tensor argument {node.name!r}; tnsim traces "
                            "models of one input"
                        )
                    continue
                shape = tuple(self.example.shape[:-1]) + (self.example.shape[-1] + int(self.padded),)
                like = torch.empty((), dtype=self.dtype)
                ident = identity_network(shape, self.padded, like, name="input")
                sym = Sym(None, ident, boundary=True)
                self.input = sym
                env[node] = sym
            elif node.op == "get_attr":
                value = node.meta["example"]
                env[node] = value.detach() if isinstance(value, torch.Tensor) else value
                self.names[id(env[node])] = node.target
            elif node.op == "output":
                out = args[0]
            else:
                if not _has_sym(args) and not _has_sym(kwargs):
                    env[node] = node.meta["example"]  # constant computation: keep its value
                    continue
                env[node] = self.dispatch(node, args, kwargs)
        return out

    def dispatch(self, node: fx.Node, args, kwargs):
        if node.op == "call_module":
            return self.call_module(node.target, args, kwargs)
        if node.op == "call_method":
            return self.call_method(node.target, args, kwargs)
        return self.call_function(node.target, args, kwargs)

    # -- modules -------------------------------------------------------------------------------

    def call_module(self, target: str, args, kwargs) -> Sym:
        module = self.module.get_submodule(target)
        if len(args) != 1 or kwargs or not isinstance(args[0], Sym):
            raise self.fail(f"module {target!r} ({type(module).__name__})", "is called with more than one input")
        x = args[0]
        x.boundary = True  # a module starts a new layer on top of its input
        try:
            net = _compile(module, target, self.padded)
        except NotMultilinearError as err:
            if "is not a layer tnsim knows" in str(err):
                raise self.fail(
                    f"module {target!r} ({type(module).__name__})",
                    "has no tnsim compiler: register one with tnsim.register",
                ) from err
            raise NotMultilinearError(f"{err}{_where(self.node)}") from err
        if net is _SKIP:
            return x
        if len(net.in_shape) == 1 and len(x.shape) == 2:
            net = positionwise(net, x.shape[0])
        if tuple(net.real_in_shape) != tuple(x.shape):
            raise ShapeMismatchError(
                f"module {target!r} takes inputs of shape {net.real_in_shape} but gets {x.shape}"
                f"{_where(self.node)}"
            )
        return Sym(x, net, boundary=True)

    # -- functions -----------------------------------------------------------------------------

    def call_function(self, f, args, kwargs):
        name = getattr(f, "__name__", str(f))
        if f is builtins.getattr:
            obj, attr = args
            r = len(obj.shape)
            if attr == "T":
                return self.unary(obj, lambda n: alg.permute(n, list(range(r))[::-1]))
            if attr == "mT":
                return self.transpose(obj, -2, -1)
            value = self.node.meta["example"]
            if isinstance(value, torch.Tensor):
                raise self.fail(f"attribute .{attr}", "of a data-dependent value is not supported")
            return value
        if f is operator.getitem:
            obj, key = args
            if not isinstance(obj, Sym):
                if isinstance(key, Sym) or _has_sym(key):
                    raise self.fail("indexing with a data-dependent index")
                return obj[key]
            if _has_sym(key):
                raise self.fail("indexing with a data-dependent index")
            return self.unary(obj, lambda n: alg.index(n, key))
        if f in (operator.add, torch.add, operator.iadd):
            alpha = kwargs.get("alpha", 1)
            a, b = args[0], args[1]
            if alpha != 1:
                b = self.scale(b, alpha)
            return self.add(a, b)
        if f in (operator.sub, torch.sub, operator.isub):
            alpha = kwargs.get("alpha", 1)
            return self.add(args[0], self.scale(args[1], -alpha))
        if f in (operator.neg, torch.neg):
            return self.scale(args[0], -1)
        if f is operator.pos:
            return args[0]
        if f in (operator.mul, torch.mul, operator.imul):
            return self.mul(args[0], args[1])
        if f in (operator.truediv, torch.div, torch.true_divide, operator.itruediv):
            if kwargs.get("rounding_mode"):
                raise self.fail(f"division with rounding_mode={kwargs['rounding_mode']!r}")
            return self.div(args[0], args[1])
        if f in (operator.pow, torch.pow):
            return self.pow(args[0], args[1])
        if f in (operator.matmul, torch.matmul, torch.mm, torch.bmm):
            return self.matmul(args[0], args[1])
        if f is torch.einsum:
            spec, *ops = args
            if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
                ops = list(ops[0])
            return self.einsum(spec, ops)
        if f is torch.nn.functional.linear:
            x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            return self.linear(x, w, b)
        if f in (torch.cat, torch.concat, torch.concatenate):
            dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis", 0))
            return self.cat(list(args[0]), dim)
        if f is torch.stack:
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            parts = [self.unsqueeze(p, dim) for p in args[0]]
            return self.cat(parts, dim)
        if f in (torch.reshape,):
            return self.reshape(args[0], args[1])
        if f is torch.permute:
            return self.unary(args[0], lambda n: alg.permute(n, args[1]))
        if f in (torch.transpose, torch.swapaxes, torch.swapdims):
            return self.transpose(args[0], args[1], args[2])
        if f is torch.flatten:
            return self.flatten(args[0], *args[1:], **kwargs)
        if f is torch.unsqueeze:
            return self.unsqueeze(args[0], args[1])
        if f is torch.squeeze:
            return self.squeeze(args[0], *args[1:], **kwargs)
        if f in (torch.sum, torch.mean):
            return self.reduce(args[0], f is torch.mean, *args[1:], **kwargs)
        if f in (torch.chunk, torch.split):
            return self.split(name, *args, **kwargs)
        if f is torch.outer:
            return self.einsum("i,j->ij", list(args))
        if f in (torch.masked_fill,):
            return self.masked_fill(*args, **kwargs)
        if f in (torch.clone, torch.Tensor.contiguous):
            return args[0]
        raise self._unsupported(f, name)

    def _unsupported(self, f, name):
        what = _describe("call_function", f)
        low = name.lower()
        if any(k in low for k in ("norm", "normalize")):
            return self.fail(what, "(a normalisation divides by a data-dependent value) is not a polynomial of the input")
        if "div" in low or "reciprocal" in low or "rsqrt" in low:
            return self.fail(what, "divides by a data-dependent value: not a polynomial of the input")
        if name == "item" or name == "_local_scalar_dense":
            return self.fail(what, "reads a value out of the input: data-dependent")
        return self.fail(what)

    # -- methods -------------------------------------------------------------------------------

    def call_method(self, name: str, args, kwargs):
        obj = args[0]
        if not isinstance(obj, Sym):
            # a method of a constant with symbolic arguments, e.g. mask.mul(x)
            reflected = {"mul": self.mul, "add": self.add, "matmul": self.matmul}
            if name in reflected and len(args) == 2:
                return reflected[name](obj, args[1])
            raise self.fail(f"method .{name}() of a constant with a data-dependent argument", "is not supported")
        rest = args[1:]
        if name.endswith("_") and not name.startswith("_"):
            raise self.fail(f"in-place method .{name}()", "is not supported: write it out of place")
        if name in ("view", "reshape"):
            shape = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list, torch.Size)) else rest
            return self.reshape(obj, shape)
        if name in ("view_as", "reshape_as"):
            return self.reshape(obj, tuple(rest[0].shape) if not isinstance(rest[0], Sym) else rest[0].shape)
        if name == "permute":
            dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
            return self.unary(obj, lambda n: alg.permute(n, dims))
        if name in ("transpose", "swapaxes", "swapdims"):
            return self.transpose(obj, rest[0], rest[1])
        if name == "t":
            return self.transpose(obj, 0, -1)
        if name == "flatten":
            return self.flatten(obj, *rest, **kwargs)
        if name == "unflatten":
            dim, sizes = (rest + (kwargs.get("dim"), kwargs.get("sizes")))[:2] if rest else (kwargs["dim"], kwargs["sizes"])
            return self.unflatten(obj, dim, sizes)
        if name == "unsqueeze":
            return self.unsqueeze(obj, rest[0] if rest else kwargs["dim"])
        if name == "squeeze":
            return self.squeeze(obj, *rest, **kwargs)
        if name in ("expand", "broadcast_to"):
            shape = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list, torch.Size)) else rest
            shape = [obj.shape[i - (len(shape) - len(obj.shape))] if s == -1 else s for i, s in enumerate(shape)]
            return self.unary(obj, lambda n: alg.broadcast_to(n, shape))
        if name == "expand_as":
            return self.unary(obj, lambda n: alg.broadcast_to(n, tuple(_shape_of(rest[0]))))
        if name in ("contiguous", "clone", "detach", "float", "double", "half", "to", "type_as", "cpu", "cuda", "requires_grad_"):
            return obj
        if name in ("sum", "mean"):
            return self.reduce(obj, name == "mean", *rest, **kwargs)
        if name in ("add", "sub", "mul", "div", "matmul", "pow", "neg", "true_divide", "multiply", "subtract"):
            fn = {
                "add": torch.add, "sub": torch.sub, "subtract": torch.sub, "mul": torch.mul,
                "multiply": torch.mul, "div": torch.div, "true_divide": torch.div,
                "matmul": torch.matmul, "pow": torch.pow, "neg": torch.neg,
            }[name]
            return self.call_function(fn, args, kwargs)
        if name == "masked_fill":
            return self.masked_fill(*args, **kwargs)
        if name in ("chunk", "split"):
            return self.split(name, *args, **kwargs)
        if name in ("item", "tolist", "numpy", "nonzero", "argmax", "argmin", "__bool__"):
            raise self.fail(f"method .{name}()", "reads values out of the input: data-dependent")
        raise self.fail(f"method .{name}()")

    # -- operations ----------------------------------------------------------------------------

    def scale(self, v, c):
        if isinstance(c, Sym):
            v, c = c, v
        if isinstance(v, Sym):
            if isinstance(c, torch.Tensor) and c.dim() > 0:
                return self.mul(v, c)
            c = float(c)
            return self.unary(v, lambda n: n.scaled(c)) if c != 1 else v
        return v * c

    def add(self, a, b):
        if not isinstance(a, Sym) and not isinstance(b, Sym):
            return a + b
        return self.combine([a, b], lambda ns: alg.plus(*ns))

    def mul(self, a, b):
        if isinstance(a, Sym) and isinstance(b, Sym):
            if a is b:
                return self.unary(a, lambda n: alg.mul(n, n))
            return self.combine([a, b], lambda ns: alg.mul(ns[0], ns[1]))
        v, c = (a, b) if isinstance(a, Sym) else (b, a)
        if not isinstance(c, torch.Tensor) or c.dim() == 0:
            return self.scale(v, c)
        return self.combine([v, c], lambda ns: alg.mul(ns[0], ns[1]))

    def div(self, a, b):
        if isinstance(b, Sym):
            raise self.fail("division by a data-dependent value", "is not a polynomial of the input")
        if isinstance(b, torch.Tensor) and b.dim() > 0:
            if not bool((b != 0).all()):
                raise self.fail("division by a constant with zeros", "is undefined")
            return self.mul(a, 1.0 / b.to(self.dtype))
        if float(b) == 0:
            raise self.fail("division by zero", "is undefined")
        return self.scale(a, 1.0 / float(b))

    def pow(self, a, e):
        if isinstance(e, Sym):
            raise self.fail("a power with a data-dependent exponent")
        if not isinstance(a, Sym):
            return a**e
        if isinstance(e, torch.Tensor):
            e = e.item() if e.dim() == 0 else None
        if e is None or float(e) != int(e) or int(e) < 0:
            raise self.fail(f"power {e!r} of a data-dependent value", "is not a polynomial (use a non-negative integer exponent)")
        e = int(e)
        if e == 0:
            return torch.ones(a.shape, dtype=self.dtype)
        out = a
        for _ in range(e - 1):
            out = self.mul(out, a)
        return out

    def einsum(self, spec: str, ops: list):
        spec = spec.replace(" ", "")
        if "->" not in spec:
            lhs = spec
            letters = [c for c in lhs if c.isalpha()]
            out = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
            spec = lhs + "->" + ("..." if "..." in lhs else "") + out
        lhs, out = spec.split("->")
        ins = lhs.split(",")
        shapes = [tuple(o.shape) if isinstance(o, Sym) else tuple(torch.as_tensor(o).shape) for o in ops]
        if any("..." in s for s in ins):
            used = set(spec) - {".", ",", "-", ">"}
            free = [c for c in string.ascii_letters if c not in used]
            n_ell = max(len(sh) - (len(s) - 3) for s, sh in zip(ins, shapes) if "..." in s)
            ell = free[:n_ell]
            # ellipsis axes become right-aligned letters (size-1 ones broadcast like any letter's)
            ins = [
                s.replace("...", "".join(ell[n_ell - (len(sh) - (len(s) - 3)):])) if "..." in s else s
                for s, sh in zip(ins, shapes)
            ]
            out = out.replace("...", "".join(ell))
        ins, ops = self._unbroadcast(ins, shapes, ops)
        spec = ",".join(ins) + "->" + out
        if not any(isinstance(o, Sym) for o in ops):
            return torch.einsum(spec, *ops)
        return self.combine(list(ops), lambda ns: alg.einsum(spec, *ns))

    def matmul(self, a, b):
        sa, sb = tuple(_shape_of(a)), tuple(_shape_of(b))
        if not sa or not sb:
            return self.mul(a, b)
        letters = iter(string.ascii_letters)
        if len(sa) == 1 and len(sb) == 1:
            k = next(letters)
            return self.einsum(f"{k},{k}->", [a, b])
        batch_a, batch_b = sa[:-2] if len(sa) > 1 else (), sb[:-2] if len(sb) > 1 else ()
        nb = max(len(batch_a), len(batch_b))
        bl = "".join(next(letters) for _ in range(nb))
        i, k, j = next(letters), next(letters), next(letters)
        ea = (bl[nb - len(batch_a):] + i + k) if len(sa) > 1 else k
        eb = (bl[nb - len(batch_b):] + k + j) if len(sb) > 1 else k
        out = bl + (i if len(sa) > 1 else "") + (j if len(sb) > 1 else "")
        return self.einsum(f"{ea},{eb}->{out}", [a, b])  # batch axes written out; einsum broadcasts

    def _unbroadcast(self, ins: list[str], shapes: list[tuple], ops: list):
        """Index away size-1 axes whose letter has a larger size on another operand
        (einsum broadcasting), so that every letter has one size."""
        sizes: dict[str, int] = {}
        for s, sh in zip(ins, shapes):
            for c, n in zip(s, sh):
                if n != 1:
                    sizes[c] = n
        fixed_ops, fixed_ins = [], []
        for s, sh, o in zip(ins, shapes, ops):
            drop = [a for a, c in enumerate(s) if sh[a] == 1 and sizes.get(c, 1) != 1]
            for a in reversed(drop):
                key = tuple([slice(None)] * a + [0])
                o = self.unary(o, lambda n, key=key: alg.index(n, key)) if isinstance(o, Sym) else torch.as_tensor(o)[key]
                s = s[:a] + s[a + 1:]
            fixed_ops.append(o)
            fixed_ins.append(s)
        return fixed_ins, fixed_ops

    def linear(self, x, w, b=None):
        if isinstance(w, Sym) or isinstance(b, Sym):
            raise self.fail("F.linear with data-dependent weights", "is not supported: write it with matmul")
        y = self.matmul(x, torch.as_tensor(w).T)
        return self.add(y, b) if b is not None else y

    def reshape(self, v, shape):
        shape = [int(s) for s in shape]
        return self.unary(v, lambda n: alg.reshape(n, shape))

    def transpose(self, v, d0, d1):
        r = len(v.shape)
        dims = list(range(r))
        dims[d0 % r], dims[d1 % r] = dims[d1 % r], dims[d0 % r]
        return self.unary(v, lambda n: alg.permute(n, dims))

    def flatten(self, v, start_dim=0, end_dim=-1):
        shape = list(v.shape)
        r = len(shape)
        if r == 0:
            return self.reshape(v, [1])
        s, e = start_dim % r, end_dim % r
        new = shape[:s] + [math.prod(shape[s : e + 1])] + shape[e + 1 :]
        return self.reshape(v, new)

    def unflatten(self, v, dim, sizes):
        shape = list(v.shape)
        dim = dim % len(shape)
        sizes = list(sizes)
        if -1 in sizes:
            rest = math.prod(s for s in sizes if s != -1)
            sizes[sizes.index(-1)] = shape[dim] // rest
        return self.reshape(v, shape[:dim] + sizes + shape[dim + 1 :])

    def unsqueeze(self, v, dim):
        if not isinstance(v, Sym):
            return torch.as_tensor(v).unsqueeze(dim)
        shape = list(v.shape)
        dim = dim % (len(shape) + 1)
        return self.reshape(v, shape[:dim] + [1] + shape[dim:])

    def squeeze(self, v, dim=None):
        shape = list(v.shape)
        if dim is None:
            new = [s for s in shape if s != 1]
        else:
            dims = {d % len(shape) for d in ([dim] if isinstance(dim, int) else dim)}
            new = [s for a, s in enumerate(shape) if not (a in dims and s == 1)]
        return self.reshape(v, new)

    def reduce(self, v, mean: bool, dim=None, keepdim=False, dtype=None):
        shape = list(v.shape)
        dims = list(range(len(shape))) if dim is None else ([dim] if isinstance(dim, int) else list(dim))
        size = math.prod(shape[d] for d in dims) if dims else 1
        scale = 1.0 / size if mean else 1.0
        return self.unary(v, lambda n: alg.sum_axes(n, dims, keepdim=keepdim, scale=scale))

    def cat(self, parts: list, dim: int):
        if not any(isinstance(p, Sym) for p in parts):
            return torch.cat(parts, dim)
        return self.combine(list(parts), lambda ns: alg.cat(ns, dim))

    def split(self, name, v, size_or_chunks, dim=0):
        if not isinstance(v, Sym):
            return getattr(torch, name)(v, size_or_chunks, dim)
        example = torch.zeros(v.shape)
        pieces = getattr(torch, name)(example, size_or_chunks, dim)
        out, start = [], 0
        dim = dim % len(v.shape)
        for p in pieces:
            stop = start + p.shape[dim]
            key = tuple([slice(None)] * dim + [slice(start, stop)])
            out.append(self.unary(v, lambda n, key=key: alg.index(n, key)))
            start = stop
        return tuple(out)

    def masked_fill(self, v, mask, value):
        if isinstance(mask, Sym) or _has_sym(mask):
            raise self.fail("masked_fill with a data-dependent mask")
        if isinstance(value, Sym):
            raise self.fail("masked_fill with a data-dependent value", "is not supported")
        value = float(value)
        if not math.isfinite(value):
            raise self.fail(
                f"masked_fill with {value} (as before a softmax)",
                "is not a polynomial of the input; multiply by a 0/1 mask instead",
            )
        keep = (~torch.as_tensor(mask).bool()).to(self.dtype)
        out = self.mul(v, keep)
        if value != 0:
            out = self.add(out, torch.as_tensor(mask).to(self.dtype) * value)
        return out


def _shape_of(x):
    return x.shape if isinstance(x, Sym) else torch.as_tensor(x).shape


def _has_sym(x) -> bool:
    found = []
    map_aggregate(x, lambda a: found.append(True) if isinstance(a, Sym) else None)
    return bool(found)


# --- layers of the result --------------------------------------------------------------------


def _needs_padding(net: Network) -> bool:
    """Whether a non-first layer mixes degrees without a constant coordinate."""
    for layer in net.chain[1:]:
        if not layer.in_padded and len({t.degree for t in layer.terms}) > 1:
            return True
    return False


def trace(module: torch.nn.Module, example_input=None, *, input_shape=None, pad: bool | None = None,
          name: str | None = None) -> Network:
    """Trace ``module`` on an example into a network.

    Parameters
    ----------
    module
        Any ``torch.nn.Module`` whose forward is a polynomial of its one tensor input, written
        for one input or for a batch (the trace runs on one row).
    example_input
        What ``forward`` receives, batch axis included, as in torch: ``(B, d)`` for vector
        models, ``(B, n, d)`` for sequence models (``(d,)``: one unbatched vector). The traced
        network is checked against ``module(example_input)`` on its first rows.
    input_shape
        Instead of an example: the unbatched input shape, ``(d,)`` or ``(n, d)``.
    pad
        Force or forbid the padded representation (default: as :func:`tnsim.compile` decides
        from the leaves, and padded when a later layer mixes degrees, e.g. residuals).
    name
        Label used in messages.
    """
    x, batched = unbatched_example(module, example_input, input_shape)
    if x is None:
        raise ArgumentTypeError(
            "trace needs example_input= (batched, as forward receives it) or input_shape="
        )
    _check_finite(module, "")
    label = name or type(module).__name__
    tracer = _Tracer(x)
    before = set(vars(module))
    try:
        graph = tracer.trace(module)
    except fx.proxy.TraceError as err:
        where = _user_frame(
            [(f.filename, f.lineno, f.name, f.line) for f in reversed(traceback.extract_tb(err.__traceback__))]
        )
        raise NotMultilinearError(
            f"{label}: data-dependent control flow{where} cannot be traced: a polynomial model "
            "must run the same operations for every input"
        ) from err
    finally:
        for attr in set(vars(module)) - before:  # fx stores constants on the module
            delattr(module, attr)
    padded = _uses_padding(module) if pad is None else bool(pad)
    net = _interpret(module, graph, x, padded)
    if pad is None and not padded and _needs_padding(net):
        net = _interpret(module, graph, x, True)
    if batched is not None:
        check_batched(net, module, batched, label)
    return replace(net, name=label)


def _interpret(module, graph, x, padded) -> Network:
    interp = _Interpreter(module, graph, x, padded)
    out = interp.run()
    if isinstance(out, (tuple, list)):
        raise StructureError("the traced module returns several outputs; return one tensor")
    if not isinstance(out, Sym):
        raise StructureError("the traced module's output does not depend on its input")
    if len(out.shape) == 0:
        out = interp.reshape(out, [1])
    if len(out.shape) > 2:
        raise ShapeMismatchError(
            f"the traced output has shape {out.shape}; reshape it to (d,) or (n, d)"
        )
    return _with_groups(alg.simplify(_full(out)))


def _with_groups(net: Network) -> Network:
    """Symmetry groups of the final terms, found from their structure and verified."""
    layers = tuple(_with_groups(layer) for layer in net.layers) if net.layers else None
    return replace(net, terms=tuple(with_symmetries(t) for t in net.terms), layers=layers)
