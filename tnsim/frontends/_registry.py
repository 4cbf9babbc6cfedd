"""The registry of layer compilers: ``type -> fn(module, path, padded) -> Network``.

:func:`register` adds a compiler; :func:`_compile` dispatches a module to the compiler of the
first registered class in its MRO. The tracer (:mod:`._trace`) and the layer compilers
(:mod:`._compile`) both dispatch through here, so neither imports the other for it.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import NonFiniteError, NotMultilinearError
from ..nn import Bilinear, BilinearAttention, Embedding, Trilinear

__all__ = ["register"]

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
    for name, p in module.named_parameters():
        if not torch.isfinite(p).all():
            bad = int((~torch.isfinite(p)).sum())
            where = f"{path}.{name}" if path else name
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
