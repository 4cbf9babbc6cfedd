r"""Checkpoints without pickle: safetensors weights plus a small JSON describing the architecture.

``save(model, "run/step100.safetensors")`` writes the weights and ``run/step100.json``::

    {"format": "tnsim-checkpoint", "version": 1,
     "model": {"type": "Bilinear", "d_in": 64, "d_hidden": 32, "d_out": 10,
               "bias": false, "residual": false},
     "meta": {"step": 100}}

(the same JSON is also stored in the safetensors header, so a lone ``.safetensors`` file still
loads). :func:`load` rebuilds the module from the JSON — only the layer types below, never
arbitrary code — and loads the tensors. ``torch.save`` state dicts (``.pt``/``.pth``/``.bin``)
load with ``torch.load(weights_only=True)``; their architecture comes from a JSON sidecar if
there is one, or ``arch=``, else it is inferred from the parameter names and shapes when that
is unambiguous (a residual connection has no parameters: a layer that could have one, and
attention layers, need the sidecar or ``arch=``).

Architecture nodes (every :mod:`tnsim.nn` module): ``Linear`` (``d_in``, ``d_out``, ``bias``),
``Unembedding`` (``d_in``, ``d_out``), ``Bilinear`` and ``Trilinear`` (``d_in``,
``d_hidden``, ``d_out``, ``bias``, ``residual``), ``BilinearAttention`` (``d_model``,
``n_ctx``, ``n_heads``, ``d_head``, ``causal``, ``squared``, ``residual``, ``scale``),
``TensorTransformerBlock`` (``d_model``, ``n_ctx``, ``n_heads``, ``d_head``, ``d_hidden``,
``causal``, ``squared``, ``bias``), ``Embedding`` (``vocab``, ``d_model``, ``n_ctx``,
``positional``), ``Sequential`` (``layers``: a list of nodes), ``Identity``; and ``Network``,
a compiled :class:`~tnsim.Network` (its terms: index structure, input copies, output legs,
tags, symmetry generators, coefficients; padding flags, layers and raw terms), which loads
as a :class:`~tnsim.Network` without the module class that produced it.

The JSON is checked before anything is allocated: nesting depth (:data:`MAX_DEPTH`), known
types and fields with values of the right type, and the architecture's tensor shapes against
those in the weights file (the module is first built on PyTorch's ``meta`` device, which
allocates nothing); buffers the file does not hold (attention masks) must fit the memory
limit (:func:`tnsim.memory_limit`).

Every problem — a missing, unreadable, corrupt, pickled or mismatched file — raises
:class:`~tnsim.errors.CheckpointError` whose message starts with the file name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections import OrderedDict
from pathlib import Path

import torch

from ._memory import check_allocation
from .errors import CheckpointError, UnaffordableError
from .ir import Network, Term
from .nn import (
    Bilinear,
    BilinearAttention,
    Embedding,
    Linear,
    TensorTransformerBlock,
    Trilinear,
    Unembedding,
)

__all__ = ["save", "load", "load_state_dict", "describe", "build", "sidecar", "infer", "meta"]

FORMAT = "tnsim-checkpoint"
VERSION = 1
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
#: Deepest nesting accepted in an architecture JSON (objects and lists).
MAX_DEPTH = 64


# --- describing modules ----------------------------------------------------------------------


def _product_layer(kind: str, m) -> dict:
    first = getattr(m, m.FACTORS[0])
    return {
        "type": kind,
        "d_in": m.d_in,
        "d_hidden": first.out_features,
        "d_out": m.d_out,
        "bias": first.bias is not None,
        "residual": bool(m.residual),
    }


def _attention(m: BilinearAttention) -> dict:
    return {
        "type": "BilinearAttention",
        "d_model": m.d_model,
        "n_ctx": m.n_ctx,
        "n_heads": m.n_heads,
        "d_head": m.d_head,
        "causal": bool(m.causal),
        "squared": bool(m.squared),
        "residual": bool(m.residual),
        "scale": float(m.scale),
        "bias": m.q.bias is not None,
        "rope": m.rope is not None,
        "paired": bool(m.paired),
        "rope_base": float(m.rope_base),
    }


def _block(m: TensorTransformerBlock) -> dict:
    a = _attention(m.attn)
    return {
        "type": "TensorTransformerBlock",
        **{k: a[k] for k in ("d_model", "n_ctx", "n_heads", "d_head", "causal", "squared")},
        "d_hidden": m.mlp.left.out_features,
        "bias": m.mlp.left.bias is not None,
    }


def _embedding(m: Embedding) -> dict:
    n_ctx = None if m.pos is None else m.pos.shape[0]
    return {
        "type": "Embedding",
        "vocab": m.vocab,
        "d_model": m.weight.shape[1],
        "n_ctx": n_ctx,
        "positional": m.pos is not None,
    }


def _linear(kind: str, m: torch.nn.Linear) -> dict:
    node = {"type": kind, "d_in": m.in_features, "d_out": m.out_features}
    if kind == "Linear":
        node["bias"] = m.bias is not None
    return node


def _describe(module: torch.nn.Module, where: str) -> dict:
    if isinstance(module, Trilinear):
        return _product_layer("Trilinear", module)
    if isinstance(module, Bilinear):
        return _product_layer("Bilinear", module)
    if isinstance(module, BilinearAttention):
        return _attention(module)
    if isinstance(module, TensorTransformerBlock):
        return _block(module)
    if isinstance(module, Embedding):
        return _embedding(module)
    if isinstance(module, Unembedding) and module.bias is None:
        return _linear("Unembedding", module)
    if isinstance(module, torch.nn.Linear):
        return _linear("Linear", module)
    if isinstance(module, torch.nn.Sequential):
        return {"type": "Sequential", "layers": [_describe(m, f"{where}.{i}") for i, m in enumerate(module)]}
    if isinstance(module, (torch.nn.Identity, torch.nn.Dropout)):
        return {"type": "Identity"}
    raise TypeError(
        f"cannot describe {where} ({type(module).__name__}) in a tnsim checkpoint: save models "
        "built from tnsim.nn modules, Linear, Sequential and Identity, or save the compiled "
        "network, save(tnsim.compile(module, example_input), path), which loads as a tnsim.Network"
    )


def _config(module: torch.nn.Module) -> dict:
    """Plain (non-tensor) attributes of a module: its hyper-parameters."""
    simple = (bool, int, float, str, type(None), tuple)
    return {
        k: v for k, v in vars(module).items()
        if not k.startswith("_") and k != "training" and isinstance(v, simple)
    }


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Shapes of a module's parameters and buffers (persistent or not), by name."""
    return {k: tuple(v.shape) for k, v in [*module.named_parameters(), *module.named_buffers()]}


def _check_faithful(module: torch.nn.Module, arch: dict) -> None:
    """Raise ``TypeError`` unless ``build(arch)`` has the module's parameters, buffers and
    hyper-parameters (catches attributes this file does not know, e.g. of a newer layer)."""
    with torch.device("meta"):
        rebuilt = build(arch)
    mods_a, mods_b = dict(module.named_modules()), dict(rebuilt.named_modules())
    if _shapes(module) != _shapes(rebuilt) or mods_a.keys() != mods_b.keys():
        raise TypeError(
            f"cannot save {type(module).__name__} faithfully: its tensors {_shapes(module)} "
            f"differ from those of the described architecture {_shapes(rebuilt)}"
        )
    for name, m in mods_a.items():
        ca, cb = _config(m), _config(mods_b[name])
        for key in sorted(ca.keys() & cb.keys()):
            if ca[key] != cb[key]:
                raise TypeError(
                    f"cannot save {name or 'the model'} ({type(m).__name__}) faithfully: its "
                    f"attribute {key!r} = {ca[key]!r} is not captured by the checkpoint format "
                    f"(which would rebuild {cb[key]!r})"
                )


def describe(module: torch.nn.Module) -> dict:
    """The architecture of ``module`` as a JSON-able dict (the layer types tnsim can rebuild).

    Raises ``TypeError`` for a module outside that vocabulary, or one whose attributes the
    description would not reproduce.

    Examples
    --------
    >>> import tnsim
    >>> describe(tnsim.nn.Bilinear(4, 6, 3))
    {'type': 'Bilinear', 'd_in': 4, 'd_hidden': 6, 'd_out': 3, 'bias': False, 'residual': False}
    >>> describe(tnsim.nn.Embedding(5, 4))["type"]
    'Embedding'
    """
    arch = _describe(module, "model")
    _check_faithful(module, arch)
    return arch


# --- rebuilding modules from JSON ------------------------------------------------------------

_REQUIRED = object()


def _positive(v, key):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{key!r} must be a positive integer, got {v!r}")
    return v


def _optional_positive(v, key):
    return None if v is None else _positive(v, key)


def _flag(v, key):
    if not isinstance(v, bool):
        raise ValueError(f"{key!r} must be true or false, got {v!r}")
    return v


def _finite(v, key):
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise ValueError(f"{key!r} must be a finite number, got {v!r}")
    return float(v)


_ATTENTION = {
    "d_model": (_positive, _REQUIRED),
    "n_ctx": (_positive, _REQUIRED),
    "n_heads": (_positive, 1),
    "d_head": (_optional_positive, None),
    "causal": (_flag, True),
    "squared": (_flag, False),
}
_PRODUCT = {
    "d_in": (_positive, _REQUIRED),
    "d_hidden": (_positive, _REQUIRED),
    "d_out": (_positive, _REQUIRED),
    "bias": (_flag, False),
    "residual": (_flag, False),
}
#: Fields of each layer type: ``name: (check, default)``.
SCHEMA: dict[str, dict] = {
    "Linear": {"d_in": (_positive, _REQUIRED), "d_out": (_positive, _REQUIRED), "bias": (_flag, False)},
    "Unembedding": {"d_in": (_positive, _REQUIRED), "d_out": (_positive, _REQUIRED)},
    "Bilinear": _PRODUCT,
    "Trilinear": _PRODUCT,
    "BilinearAttention": {
        **_ATTENTION, "residual": (_flag, False), "scale": (_finite, None), "bias": (_flag, False),
        "rope": (_flag, False), "paired": (_flag, False), "rope_base": (_finite, 10000.0),
    },
    "TensorTransformerBlock": {
        **_ATTENTION, "d_hidden": (_optional_positive, None), "bias": (_flag, False),
    },
    "Embedding": {
        "vocab": (_positive, _REQUIRED),
        "d_model": (_positive, _REQUIRED),
        "n_ctx": (_optional_positive, None),
        "positional": (_flag, False),
    },
    "Identity": {},
}

_MAKERS = {
    "Linear": lambda a: Linear(a["d_in"], a["d_out"], bias=a["bias"]),
    "Unembedding": lambda a: Unembedding(a["d_in"], a["d_out"]),
    "Bilinear": lambda a: Bilinear(a["d_in"], a["d_hidden"], a["d_out"], bias=a["bias"], residual=a["residual"]),
    "Trilinear": lambda a: Trilinear(a["d_in"], a["d_hidden"], a["d_out"], bias=a["bias"], residual=a["residual"]),
    "BilinearAttention": lambda a: BilinearAttention(
        a["d_model"], a["n_ctx"], a["n_heads"], a["d_head"], causal=a["causal"],
        squared=a["squared"], residual=a["residual"], scale=a["scale"], bias=a["bias"],
        rope=a["rope"], paired=a["paired"], rope_base=a["rope_base"],
    ),
    "TensorTransformerBlock": lambda a: TensorTransformerBlock(
        a["d_model"], a["n_ctx"], a["n_heads"], a["d_head"], a["d_hidden"], causal=a["causal"],
        squared=a["squared"], bias=a["bias"],
    ),
    "Embedding": lambda a: Embedding(a["vocab"], a["d_model"], a["n_ctx"], positional=a["positional"]),
    "Identity": lambda a: torch.nn.Identity(),
}


def _fields(arch: dict, kind: str, where: str) -> dict:
    """The node's fields checked against :data:`SCHEMA`, defaults filled in."""
    schema = SCHEMA[kind]
    unknown = sorted(set(arch) - set(schema) - {"type"})
    if unknown:
        raise ValueError(
            f"{where} ({kind}): unknown field(s) {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(schema) or 'none'})"
        )
    out = {}
    for key, (check, default) in schema.items():
        if key not in arch:
            if default is _REQUIRED:
                raise ValueError(f"{where} ({kind}): missing field {key!r}")
            out[key] = default
            continue
        try:
            out[key] = check(arch[key], key)
        except ValueError as e:
            raise ValueError(f"{where} ({kind}): {e}") from None
    return out


def build(arch: dict, where: str = "model", depth: int = 0) -> torch.nn.Module:
    """Rebuild a module from :func:`describe`'s dict (raises ``ValueError`` naming the node).

    Fields are checked (types, positive sizes, no unknown keys) and nesting is limited to
    :data:`MAX_DEPTH`. Build inside ``with torch.device("meta"):`` to check an architecture
    without allocating its weights.
    """
    if depth > MAX_DEPTH:
        raise ValueError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if not isinstance(arch, dict) or not isinstance(arch.get("type"), str):
        raise ValueError(f"{where}: expected an object with a 'type'")
    kind = arch["type"]
    if kind == "Sequential":
        layers = arch.get("layers")
        if not isinstance(layers, list) or not layers:
            raise ValueError(f"{where} (Sequential): 'layers' must be a non-empty list")
        if set(arch) - {"type", "layers"}:
            raise ValueError(f"{where} (Sequential): unknown field(s) {sorted(set(arch) - {'type', 'layers'})}")
        return torch.nn.Sequential(*[build(a, f"{where}.{i}", depth + 1) for i, a in enumerate(layers)])
    if kind not in SCHEMA:
        known = ", ".join([*SCHEMA, "Sequential", "Network"])
        raise ValueError(f"{where}: unknown layer type {kind!r} (use {known})")
    fields = _fields(arch, kind, where)
    try:
        return _MAKERS[kind](fields)
    except ValueError as e:
        raise ValueError(f"{where} ({kind}): {e}") from None


# --- compiled networks -----------------------------------------------------------------------


class _Arrays:
    """Distinct arrays of a network (by identity), numbered in order of first use."""

    def __init__(self):
        self.index: dict[int, int] = {}
        self.tensors: dict[str, torch.Tensor] = {}

    def __call__(self, x: torch.Tensor) -> int:
        if id(x) not in self.index:
            k = len(self.index)
            self.index[id(x)] = k
            self.tensors[f"arrays.{k}"] = x.detach().to("cpu").clone().contiguous()
        return self.index[id(x)]


#: The dataclass fields a saved network records (a field added to Term or Network must be
#: added here, or saving refuses rather than silently dropping it).
_SAVED_FIELDS = {
    Term: {"inds", "arrays", "copies", "outputs", "tags", "group", "coeff", "batch", "support", "_canonical"},
    Network: {"terms", "in_shape", "out_shape", "in_padded", "out_padded", "layers", "raw", "name"},
}


def _check_fields(cls) -> None:
    unknown = sorted({f.name for f in dataclasses.fields(cls)} - _SAVED_FIELDS[cls])
    if unknown:
        raise TypeError(
            f"cannot save a {cls.__name__} with field(s) {unknown}: tnsim.checkpoints does not "
            "record them yet"
        )


def _term_node(t: Term, arrays: _Arrays) -> dict:
    return {
        "inds": [list(ix) for ix in t.inds],
        "arrays": [arrays(x) for x in t.arrays],
        "copies": [list(c) for c in t.copies],
        "outputs": list(t.outputs),
        "tags": list(t.tags),
        "group": [list(map(int, g)) for g in t.group],
        "coeff": float(t.coeff),
        "batch": t.batch,
        "support": None if t.support is None else [[bool(a), bool(b)] for a, b in t.support],
    }


def _network_node(net: Network, arrays: _Arrays) -> dict:
    return {
        "type": "Network",
        "name": net.name,
        "in_shape": list(map(int, net.in_shape)),
        "out_shape": list(map(int, net.out_shape)),
        "in_padded": bool(net.in_padded),
        "out_padded": bool(net.out_padded),
        "terms": [_term_node(t, arrays) for t in net.terms],
        "raw": None if net.raw is None else [_term_node(t, arrays) for t in net.raw],
        "layers": None if net.layers is None else [_network_node(n, arrays) for n in net.layers],
    }


def _strings(v, key: str, where: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise ValueError(f"{where}: {key!r} must be a list of strings")
    return tuple(v)


def _lists(v, key: str, where: str, item) -> tuple:
    if not isinstance(v, list):
        raise ValueError(f"{where}: {key!r} must be a list")
    return tuple(item(x, key, where) for x in v)


def _ints(v, key: str, where: str) -> tuple[int, ...]:
    if not isinstance(v, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        raise ValueError(f"{where}: {key!r} must be a list of integers")
    return tuple(v)


_TERM_KEYS = {"inds", "arrays", "copies", "outputs", "tags", "group", "coeff", "batch", "support"}
_NETWORK_KEYS = {"type", "name", "in_shape", "out_shape", "in_padded", "out_padded", "terms", "raw", "layers"}


def _term(node, tensors: dict, used: set, where: str) -> Term:
    if not isinstance(node, dict) or set(node) != _TERM_KEYS:
        raise ValueError(f"{where}: a term needs exactly the fields {sorted(_TERM_KEYS)}")
    copies = _lists(node["copies"], "copies", where, _strings)
    arrays = []
    for k in _ints(node["arrays"], "arrays", where):
        key = f"arrays.{k}"
        if key not in tensors:
            raise ValueError(f"{where}: array {k} is not in the weights file")
        used.add(key)
        arrays.append(tensors[key])
    group = _lists(node["group"], "group", where, _ints)
    for g in group:
        if sorted(g) != list(range(len(copies))):
            raise ValueError(f"{where}: symmetry generator {list(g)} is not a permutation of the {len(copies)} copies")
    support = node["support"]
    if support is not None:
        ok = isinstance(support, list) and len(support) == len(copies) and all(
            isinstance(s, list) and len(s) == 2 and all(isinstance(b, bool) for b in s) for s in support
        )
        if not ok:
            raise ValueError(f"{where}: 'support' must be null or one [bool, bool] per copy")
        support = tuple(tuple(s) for s in support)
    batch = node["batch"]
    if batch is not None:
        _positive(batch, "batch")
    return Term(
        inds=_lists(node["inds"], "inds", where, _strings),
        arrays=tuple(arrays),
        copies=copies,
        outputs=_strings(node["outputs"], "outputs", where),
        tags=_strings(node["tags"], "tags", where),
        group=group,
        coeff=_finite(node["coeff"], "coeff"),
        batch=batch,
        support=support,
    )


def _network(node, tensors: dict, used: set, where: str = "model", depth: int = 0) -> Network:
    """Rebuild a :class:`~tnsim.Network` from its JSON node (raises ``ValueError``)."""
    if depth > MAX_DEPTH:
        raise ValueError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if not isinstance(node, dict) or set(node) != _NETWORK_KEYS:
        raise ValueError(f"{where} (Network): needs exactly the fields {sorted(_NETWORK_KEYS)}")
    if not isinstance(node["name"], str):
        raise ValueError(f"{where} (Network): 'name' must be a string")
    shapes = {k: _ints(node[k], k, where) for k in ("in_shape", "out_shape")}
    flags = {k: _flag(node[k], k) for k in ("in_padded", "out_padded")}

    def terms(key):
        items = node[key]
        if items is None and key == "raw":
            return None
        if not isinstance(items, list):
            raise ValueError(f"{where} (Network): {key!r} must be a list")
        return tuple(_term(t, tensors, used, f"{where}.{key}[{i}]") for i, t in enumerate(items))

    layers = node["layers"]
    if layers is not None:
        if not isinstance(layers, list) or not layers:
            raise ValueError(f"{where} (Network): 'layers' must be null or a non-empty list")
        layers = tuple(
            _network(n, tensors, used, f"{where}.layers[{i}]", depth + 1) for i, n in enumerate(layers)
        )
    return Network(
        terms=terms("terms"), raw=terms("raw"), layers=layers, name=node["name"], **shapes, **flags
    )


# --- files -----------------------------------------------------------------------------------


def sidecar(path) -> Path:
    """The architecture JSON that goes with a weights file: same name, suffix ``.json``."""
    return Path(path).with_suffix(".json")


def save(model, path, meta: dict | None = None) -> Path:
    """Write ``model``'s weights to ``path`` (safetensors) and its architecture to the sidecar.

    ``model`` is a module built from :mod:`tnsim.nn` layers (see :func:`describe`) or a
    compiled :class:`~tnsim.Network` (any architecture, traced modules included). Returns the
    path of the weights file.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if isinstance(model, Network):
        _check_fields(Term)
        _check_fields(Network)
        arrays = _Arrays()
        arch = _network_node(model, arrays)
        tensors = arrays.tensors
    else:
        arch = describe(model)
        tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    header = {"format": FORMAT, "version": VERSION, "model": arch, "meta": meta or {}}
    try:
        text = json.dumps(header, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"meta must be JSON-serialisable (numbers, strings, lists, dicts): {e}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"tnsim": text})
    sidecar(path).write_text(json.dumps(header, indent=1, sort_keys=True) + "\n")
    return path


def _fail(path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: {what}")


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def _json_depth(text: str) -> int:
    """Deepest nesting of objects and lists in a JSON text (strings skipped), without parsing."""
    depth = deepest = 0
    for m in _JSON_BRACKET.finditer(_JSON_STRING.sub("", text)):
        depth += 1 if m.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _parse(text: str, source, what: str) -> dict:
    """``json.loads`` after refusing texts nested deeper than :data:`MAX_DEPTH`."""
    if _json_depth(text) > MAX_DEPTH:
        raise _fail(source, f"{what}: nested deeper than {MAX_DEPTH} levels, refused")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise _fail(source, f"{what} ({e})") from None


def _read_header(path: Path, embedded: str | None) -> dict | None:
    side = sidecar(path)
    if side.exists() and side != path:
        try:
            text = side.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise _fail(side, f"unreadable architecture JSON ({e})") from None
        return _parse(text, side, "unreadable architecture JSON")
    if embedded is not None:
        return _parse(embedded, path, "corrupt architecture JSON in the safetensors header")
    return None


def _header_model(header: dict, source) -> dict:
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _fail(source, f'not a tnsim checkpoint description (expected "format": "{FORMAT}")')
    if header.get("version") != VERSION:
        raise _fail(
            source, f"unsupported checkpoint version {header.get('version')!r} (expected {VERSION})"
        )
    return header.get("model")


def load_state_dict(path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Tensors of a checkpoint and its description (``None`` if it has none), no pickle."""
    path = Path(path)
    if not path.exists():
        raise _fail(path, "no such file")
    if path.is_dir():
        raise _fail(path, "is a directory, expected a checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                embedded = (f.metadata() or {}).get("tnsim")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise _fail(path, f"not a valid safetensors file ({type(e).__name__}: {e})") from None
        return tensors, _read_header(path, embedded)
    if path.suffix in STATE_DICT_SUFFIXES:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if "weights_only" in str(e) or "Unsupported global" in str(e):
                msg = "contains pickled Python objects, refused (save a state dict of tensors)"
            raise _fail(
                path, f"cannot be loaded with torch.load(weights_only=True): {msg}"
            ) from None
        if isinstance(obj, dict):
            for key in ("state_dict", "model", "model_state_dict"):
                if isinstance(obj.get(key), dict):
                    obj = obj[key]
                    break
        if (
            not isinstance(obj, dict)
            or not obj
            or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
        ):
            raise _fail(path, "is not a state dict (a mapping from parameter names to tensors)")
        return dict(obj), _read_header(path, None)
    raise _fail(
        path,
        f"unknown checkpoint type {path.suffix!r} (use .safetensors, or a torch.save "
        f"state dict: {', '.join(STATE_DICT_SUFFIXES)})",
    )


def _infer_layer(tensors: dict, prefix: str) -> dict:
    keys = {k[len(prefix) :] for k in tensors if k.startswith(prefix)}
    where = f"layer {prefix[:-1]!r}" if prefix else "the model"
    if {"q.weight", "k.weight", "v.weight", "o.weight"} <= keys or any(k.startswith("attn.") for k in keys):
        raise ValueError(
            f"{where} is an attention layer, whose context length, mask, score and residual "
            "leave no trace in its parameters"
        )
    for kind, factors in (("Trilinear", ("a", "b", "c")), ("Bilinear", ("left", "right"))):
        if {f"{f}.weight" for f in factors} | {"down.weight"} <= keys:
            first, down = tensors[f"{prefix}{factors[0]}.weight"], tensors[prefix + "down.weight"]
            d_in, d_out = first.shape[1], down.shape[0]
            if d_in == d_out:
                raise ValueError(
                    f"{where} ({kind} {d_in} -> {d_out}) may or may not have a residual "
                    "connection, which has no parameters"
                )
            return {
                "type": kind, "d_in": d_in, "d_hidden": first.shape[0], "d_out": d_out,
                "bias": f"{factors[0]}.bias" in keys, "residual": False,
            }
    if keys == {"weight", "pos"}:
        w, pos = tensors[prefix + "weight"], tensors[prefix + "pos"]
        return {"type": "Embedding", "vocab": w.shape[0], "d_model": w.shape[1],
                "n_ctx": pos.shape[0], "positional": True}
    if "weight" in keys and tensors[prefix + "weight"].dim() == 2:
        w = tensors[prefix + "weight"]
        return {"type": "Linear", "d_in": w.shape[1], "d_out": w.shape[0], "bias": "bias" in keys}
    raise ValueError(f"cannot infer {where} from parameters {sorted(keys)}")


def infer(tensors: dict[str, torch.Tensor]) -> dict:
    """The architecture of a state dict from its names and shapes, where that is unambiguous.

    Recognises a lone ``Linear`` (``weight``), ``Bilinear`` (``left.weight``, ``right.weight``,
    ``down.weight``), ``Trilinear`` (``a``, ``b``, ``c``, ``down``), a positional ``Embedding``
    (``weight``, ``pos``) and ``Sequential`` models of them (``0.weight``, ``1.left.weight``,
    ...). Raises ``ValueError`` rather than guess: a product layer with ``d_in == d_out`` may
    be residual (a residual connection has no parameters), an attention layer's context length
    and mask leave no trace in its weights.
    """
    heads = {k.split(".", 1)[0] for k in tensors}
    if all(h.isdigit() for h in heads):
        idx = sorted(int(h) for h in heads)
        if idx != list(range(len(idx))):
            raise ValueError(f"Sequential layers {idx} are not numbered 0..{len(idx) - 1}")
        return {"type": "Sequential", "layers": [_infer_layer(tensors, f"{i}.") for i in idx]}
    return _infer_layer(tensors, "")


def _architecture(path: Path, tensors: dict, header, arch) -> tuple[dict, Path | str]:
    """The architecture to rebuild and where it came from (for messages)."""
    if arch is not None:
        return (describe(arch) if isinstance(arch, torch.nn.Module) else arch), "arch="
    if header is not None:
        source = sidecar(path) if sidecar(path).exists() else path
        return _header_model(header, source), source
    try:
        return infer(tensors), path
    except (ValueError, KeyError) as e:
        raise _fail(
            path,
            f"no architecture JSON ({sidecar(path).name}) and none can be inferred from the "
            f"parameters: {e}; save the model with tnsim.checkpoints.save, write "
            f"{sidecar(path).name} (tnsim.checkpoints.describe gives its 'model'), or pass arch= "
            "to tnsim.checkpoints.load",
        ) from None


def _check_tensors(path: Path, tensors: dict, expected: dict, source_name: str) -> None:
    """The file's tensors against the architecture's (names, shapes, dtype, finite values)."""
    missing = [k for k in expected if k not in tensors]
    extra = [k for k in tensors if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:4])}{' ...' if len(extra) > 4 else ''}")
        raise _fail(path, f"tensors do not match the architecture in {source_name}: {'; '.join(parts)}")
    for k, shape in expected.items():
        t = tensors[k]
        if tuple(t.shape) != tuple(shape):
            raise _fail(
                path,
                f"tensor {k!r} has shape {tuple(t.shape)} but the architecture in "
                f"{source_name} needs {tuple(shape)}",
            )
        if not t.is_floating_point():
            raise _fail(path, f"tensor {k!r} has dtype {t.dtype}, expected floating point")
        if not torch.isfinite(t).all():
            raise _fail(path, f"tensor {k!r} contains NaN or infinity")


def _load_module(path: Path, tensors: dict, arch: dict, source) -> torch.nn.Module:
    name = source if isinstance(source, str) else source.name
    try:
        with torch.device("meta"):  # check the architecture first: allocates nothing
            skeleton = build(arch)
    except ValueError as e:
        raise _fail(source, f"bad architecture: {e}") from None
    _check_tensors(path, tensors, {k: v.shape for k, v in skeleton.state_dict().items()}, name)
    extra = [(k, b.numel()) for k, b in skeleton.named_buffers() if k not in tensors]
    if extra:  # buffers sized by the JSON alone (attention masks), float64 at most
        largest = max(extra, key=lambda kb: kb[1])[0]
        try:
            check_allocation((sum(n for _, n in extra),), 8, f"buffers (largest {largest!r})")
        except UnaffordableError as e:
            raise _fail(source, f"bad architecture: {e}") from None
    model = build(arch)
    model = model.to(next(iter(tensors.values())).dtype)
    model.load_state_dict(OrderedDict((k, tensors[k]) for k in skeleton.state_dict()), strict=True)
    return model.eval()


def _load_network(path: Path, tensors: dict, arch: dict, source) -> Network:
    used: set = set()
    try:
        net = _network(arch, tensors, used)
    except (ValueError, TypeError) as e:  # StructureError is a ValueError
        raise _fail(source, f"bad network: {e}") from None
    extra = sorted(set(tensors) - used)
    if extra:
        raise _fail(path, f"tensors not used by the network: {', '.join(extra[:4])}")
    for k in sorted(used):
        t = tensors[k]
        if not t.is_floating_point() or not torch.isfinite(t).all():
            raise _fail(path, f"tensor {k!r} is not floating point or contains NaN or infinity")
    return net


def load(path, arch: dict | torch.nn.Module | None = None) -> torch.nn.Module | Network:
    """Load a checkpoint into a fresh module (float weights as saved); never unpickles.

    Parameters
    ----------
    path
        A ``.safetensors`` file (with or without its sidecar) or a ``torch.save`` state dict.
    arch
        The architecture, when the file has none and it cannot be inferred: a dict as
        :func:`describe` returns, or a module of the same architecture (a template).

    Returns
    -------
    torch.nn.Module or Network
        The module in eval mode, or a :class:`~tnsim.Network` if a network was saved.

    Raises
    ------
    CheckpointError
        The file is missing, corrupt, pickled, ambiguous, or its tensors do not match the
        architecture; the message starts with the file's name.
    """
    path = Path(path)
    tensors, header = load_state_dict(path)
    if not tensors:
        raise _fail(path, "holds no tensors")
    arch, source = _architecture(path, tensors, header, arch)
    if isinstance(arch, dict) and arch.get("type") == "Network":
        return _load_network(path, tensors, arch, source)
    return _load_module(path, tensors, arch, source)


def meta(path) -> dict:
    """The ``meta`` dict saved with a checkpoint (empty if none)."""
    _, header = load_state_dict(path)
    return dict((header or {}).get("meta") or {})
