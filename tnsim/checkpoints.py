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
there is one, else it is inferred from the parameter names and shapes (residual connections
have no parameters, so a residual model needs the sidecar).

Architecture nodes: ``Linear`` (``d_in``, ``d_out``, ``bias``), ``Bilinear`` (``d_in``,
``d_hidden``, ``d_out``, ``bias``, ``residual``), ``Sequential`` (``layers``: a list of
nodes), ``Identity``.

Every problem — a missing, unreadable, corrupt, pickled or mismatched file — raises
:class:`~tnsim.errors.CheckpointError` whose message starts with the file name.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import torch

from .errors import CheckpointError
from .nn import Bilinear, Linear

__all__ = ["save", "load", "load_state_dict", "describe", "build", "sidecar"]

FORMAT = "tnsim-checkpoint"
VERSION = 1
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def describe(module: torch.nn.Module) -> dict:
    """The architecture of ``module`` as a JSON-able dict (the layer types tnsim can rebuild).

    Examples
    --------
    >>> import tnsim
    >>> describe(tnsim.nn.Bilinear(4, 6, 3))
    {'type': 'Bilinear', 'd_in': 4, 'd_hidden': 6, 'd_out': 3, 'bias': False, 'residual': False}
    """
    if isinstance(module, Bilinear):
        return {
            "type": "Bilinear",
            "d_in": module.d_in,
            "d_hidden": module.left.out_features,
            "d_out": module.d_out,
            "bias": module.left.bias is not None,
            "residual": bool(module.residual),
        }
    if isinstance(module, torch.nn.Linear):
        return {
            "type": "Linear",
            "d_in": module.in_features,
            "d_out": module.out_features,
            "bias": module.bias is not None,
        }
    if isinstance(module, torch.nn.Sequential):
        return {"type": "Sequential", "layers": [describe(m) for m in module]}
    if isinstance(module, (torch.nn.Identity, torch.nn.Dropout)):
        return {"type": "Identity"}
    raise TypeError(
        f"cannot describe {type(module).__name__} in a tnsim checkpoint: save models built from "
        "Linear, tnsim.nn.Bilinear, Sequential and Identity"
    )


def build(arch: dict, where: str = "model") -> torch.nn.Module:
    """Rebuild a module from :func:`describe`'s dict (raises ``ValueError`` naming the node)."""
    if not isinstance(arch, dict) or "type" not in arch:
        raise ValueError(f"{where}: expected an object with a 'type'")
    kind = arch["type"]

    def ints(*keys):
        vals = []
        for k in keys:
            v = arch.get(k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{where} ({kind}): {k!r} must be a positive integer, got {v!r}")
            vals.append(v)
        return vals

    if kind == "Linear":
        d_in, d_out = ints("d_in", "d_out")
        return Linear(d_in, d_out, bias=bool(arch.get("bias", False)))
    if kind == "Bilinear":
        d_in, d_hidden, d_out = ints("d_in", "d_hidden", "d_out")
        try:
            return Bilinear(
                d_in,
                d_hidden,
                d_out,
                bias=bool(arch.get("bias", False)),
                residual=bool(arch.get("residual", False)),
            )
        except ValueError as e:
            raise ValueError(f"{where} (Bilinear): {e}") from None
    if kind == "Sequential":
        layers = arch.get("layers")
        if not isinstance(layers, list) or not layers:
            raise ValueError(f"{where} (Sequential): 'layers' must be a non-empty list")
        return torch.nn.Sequential(*[build(a, f"{where}.{i}") for i, a in enumerate(layers)])
    if kind == "Identity":
        return torch.nn.Identity()
    raise ValueError(
        f"{where}: unknown layer type {kind!r} (use Linear, Bilinear, Sequential, Identity)"
    )


def sidecar(path) -> Path:
    """The architecture JSON that goes with a weights file: same name, suffix ``.json``."""
    return Path(path).with_suffix(".json")


def save(model: torch.nn.Module, path, meta: dict | None = None) -> Path:
    """Write ``model``'s weights to ``path`` (safetensors) and its architecture to the sidecar.

    Returns the path of the weights file.
    """
    from safetensors.torch import save_file

    path = Path(path)
    header = {"format": FORMAT, "version": VERSION, "model": describe(model), "meta": meta or {}}
    text = json.dumps(header, sort_keys=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"tnsim": text})
    sidecar(path).write_text(json.dumps(header, indent=1, sort_keys=True) + "\n")
    return path


def _fail(path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: {what}")


def _read_header(path: Path, embedded: str | None) -> dict | None:
    side = sidecar(path)
    if side.exists() and side != path:
        try:
            return json.loads(side.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _fail(side, f"unreadable architecture JSON ({e})") from None
    if embedded is not None:
        try:
            return json.loads(embedded)
        except json.JSONDecodeError as e:
            raise _fail(
                path, f"corrupt architecture JSON in the safetensors header ({e})"
            ) from None
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


def infer(tensors: dict[str, torch.Tensor]) -> dict:
    """Guess the architecture of a state dict from its names and shapes (no residuals).

    Recognises a lone ``Linear`` (``weight``), a lone ``Bilinear`` (``left.weight``,
    ``right.weight``, ``down.weight``) and ``Sequential`` models of them (``0.weight``,
    ``1.left.weight``, ...).
    """

    def node(prefix: str) -> dict:
        keys = {k[len(prefix) :] for k in tensors if k.startswith(prefix)}
        if {"left.weight", "right.weight", "down.weight"} <= keys:
            L, D = tensors[prefix + "left.weight"], tensors[prefix + "down.weight"]
            return {
                "type": "Bilinear",
                "d_in": L.shape[1],
                "d_hidden": L.shape[0],
                "d_out": D.shape[0],
                "bias": "left.bias" in keys,
                "residual": False,
            }
        if "weight" in keys and tensors[prefix + "weight"].dim() == 2:
            w = tensors[prefix + "weight"]
            return {
                "type": "Linear",
                "d_in": w.shape[1],
                "d_out": w.shape[0],
                "bias": "bias" in keys,
            }
        raise ValueError(f"cannot infer a layer from parameters {sorted(keys)}")

    heads = {k.split(".", 1)[0] for k in tensors}
    if all(h.isdigit() for h in heads):
        idx = sorted(int(h) for h in heads)
        if idx != list(range(len(idx))):
            raise ValueError(f"Sequential layers {idx} are not numbered 0..{len(idx) - 1}")
        return {"type": "Sequential", "layers": [node(f"{i}.") for i in idx]}
    return node("")


def load(path) -> torch.nn.Module:
    """Load a checkpoint into a fresh module (float weights as saved); never unpickles.

    Raises
    ------
    CheckpointError
        The file is missing, corrupt, pickled, or its tensors do not match the architecture;
        the message starts with the file's name.
    """
    path = Path(path)
    tensors, header = load_state_dict(path)
    if header is not None:
        source = sidecar(path) if sidecar(path).exists() else path
        arch = _header_model(header, source)
        try:
            model = build(arch)
        except ValueError as e:
            raise _fail(source, f"bad architecture: {e}") from None
    else:
        source = path
        try:
            model = build(infer(tensors))
        except (ValueError, KeyError) as e:
            raise _fail(
                path,
                f"no architecture JSON ({sidecar(path).name}) and none can be inferred "
                f"from the parameters: {e}",
            ) from None
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    extra = [k for k in tensors if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:4])}{' ...' if len(extra) > 4 else ''}")
        raise _fail(
            path, f"tensors do not match the architecture in {source.name}: {'; '.join(parts)}"
        )
    for k, v in expected.items():
        t = tensors[k]
        if tuple(t.shape) != tuple(v.shape):
            raise _fail(
                path,
                f"tensor {k!r} has shape {tuple(t.shape)} but the architecture in "
                f"{source.name} needs {tuple(v.shape)}",
            )
        if not t.is_floating_point():
            raise _fail(path, f"tensor {k!r} has dtype {t.dtype}, expected floating point")
        if not torch.isfinite(t).all():
            raise _fail(path, f"tensor {k!r} contains NaN or infinity")
    dtype = next(iter(tensors.values())).dtype
    model = model.to(dtype)
    model.load_state_dict(OrderedDict((k, tensors[k]) for k in expected), strict=True)
    model.eval()
    return model


def meta(path) -> dict:
    """The ``meta`` dict saved with a checkpoint (empty if none)."""
    _, header = load_state_dict(path)
    return dict((header or {}).get("meta") or {})
