"""The registry of layer compilers: ``type -> fn(module, path, padded) -> Network``.

:func:`register` adds a compiler; :func:`_compile` dispatches a module to the compiler of the
first registered class in its MRO. The tracer (:mod:`._trace`) and the layer compilers
(:mod:`._compile`) both dispatch through here, so neither imports the other for it.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import (
    ArgumentTypeError,
    NonFiniteError,
    NotMultilinearError,
    ShapeMismatchError,
    StructureError,
)
from ..ir._term import evaluate_term
from ..nn import Bilinear, BilinearAttention, Embedding, Trilinear

__all__ = ["register", "unbatched_example", "check_batched"]

#: batch rows of a batched example checked against the traced network
CHECK_ROWS = 2

_COMPILERS: dict[type, Callable] = {}
_NON_POLYNOMIAL = (
    "ReLU GELU SiLU Sigmoid Tanh Softmax LogSoftmax Softplus ELU LeakyReLU Mish Hardtanh "
    "LayerNorm BatchNorm1d BatchNorm2d GroupNorm RMSNorm MultiheadAttention"
).split()


def register(module_type: type):
    """Register ``fn(module, path, padded) -> Network`` as the compiler of ``module_type``."""

    def deco(fn):
        _COMPILERS[module_type] = fn
        return fn

    return deco


def _check_finite(module: torch.nn.Module, path: str) -> None:
    """Refuse parameters tnsim cannot compute with: without values (meta), not real floating
    point (integer, complex), or with NaN / infinity. Low precision (float16, bfloat16) is
    accepted: comparisons compute in float32 or better (:func:`tnsim.methods.prepare`)."""
    for name, p in module.named_parameters():
        where = f"{path}.{name}" if path else name
        if p.device.type == "meta":
            raise StructureError(
                f"parameter {where!r} (shape {tuple(p.shape)}) is on the meta device and has no "
                "values; load or initialise the weights (module.to_empty(...), load_state_dict) first"
            )
        if not p.is_floating_point():
            raise ArgumentTypeError(
                f"parameter {where!r} has dtype {p.dtype}; tnsim compares real floating-point "
                "weights (convert with module.float() or module.double())"
            )
        if not torch.isfinite(p).all():
            bad = int((~torch.isfinite(p)).sum())
            raise NonFiniteError(
                f"parameter {where!r} (shape {tuple(p.shape)}) has {bad} NaN/inf entries"
            )


def _uses_padding(module: torch.nn.Module) -> bool:
    for m in module.modules():
        if isinstance(m, torch.nn.Linear) and m.bias is not None:
            return True
        if isinstance(m, (Bilinear, Trilinear, BilinearAttention)) and m.residual:
            return True
        if isinstance(m, Embedding) and m.pos is not None:
            return True
    return False


_SKIP = object()


def _compile(module: torch.nn.Module, path: str, padded: bool):
    for cls in type(module).__mro__:
        if cls in _COMPILERS:
            return _COMPILERS[cls](module, path, padded)
    where = path or "the model"
    kind = type(module).__name__
    if kind in _NON_POLYNOMIAL:
        raise NotMultilinearError(
            f"{where} ({kind}) is not a polynomial of its input; tnsim compiles linear, bilinear "
            "and other multilinear layers only"
        )
    raise NotMultilinearError(
        f"{where} ({kind}) is not a layer tnsim knows; pass example_input= to trace it, or "
        "register a compiler with tnsim.register"
    )


def unbatched_example(module, example_input, input_shape) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(one unbatched input, the batched example or None)`` from torch's convention.

    ``example_input`` is what ``forward`` receives, batch axis included: ``(B, d)`` for vector
    models, ``(B, n, d)`` for sequence models (a 1-D ``(d,)`` is one unbatched vector, as torch
    layers accept). ``input_shape`` gives the unbatched shape instead (``(d,)`` or ``(n, d)``).
    """
    if example_input is not None and input_shape is not None:
        raise ArgumentTypeError("pass example_input= (batched, as forward receives it) or input_shape=, not both")
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
    if input_shape is not None:
        shape = (int(input_shape),) if isinstance(input_shape, int) else tuple(int(s) for s in input_shape)
        if len(shape) not in (1, 2):
            raise ShapeMismatchError(
                f"input_shape must be (d,) or (n, d) without the batch axis, got {shape}"
            )
        return torch.zeros(shape, dtype=dtype or torch.get_default_dtype()), None
    if example_input is None:
        return None, None
    x = torch.as_tensor(example_input)
    if dtype is not None and x.is_floating_point():
        x = x.to(dtype)  # run the example in the model's precision
    if x.dim() == 1:
        return x, None
    if x.dim() not in (2, 3) or x.shape[0] == 0:
        raise ShapeMismatchError(
            f"example_input has shape {tuple(x.shape)}: pass what forward receives, batch axis "
            "first, (B, d) for vector models or (B, n, d) for sequence models, or give the "
            "unbatched shape as input_shape=(d,) / (n, d)"
        )
    return x[0], x


def check_batched(net, module, batched: torch.Tensor, label: str) -> None:
    """Refuse a traced network that does not reproduce ``module(batched)`` row by row (the
    example's first axis was not a batch axis, or the module mixes batch rows)."""
    rows = batched[:CHECK_ROWS]
    with torch.no_grad():
        want = module(rows)
    got = torch.stack([
        sum(evaluate_term(t, [row.to(t.arrays[0].dtype if t.arrays else row.dtype)] * t.degree)
            for t in net.terms)
        for row in rows
    ])
    tol = 1e-4 if rows.dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-9
    if tuple(want.shape) != tuple(got.shape) or not torch.allclose(
        got.to(want.dtype), want, rtol=tol, atol=tol * (1 + float(want.abs().max()))
    ):
        raise StructureError(
            f"{label}: the network traced from one row of example_input (shape "
            f"{tuple(batched.shape)}) does not reproduce module(example_input) row by row "
            f"(output shape {tuple(want.shape)}); example_input must carry a batch axis first, "
            "(B, d) or (B, n, d), with rows that do not interact — or pass the unbatched shape "
            "as input_shape=(d,) or (n, d)"
        )
