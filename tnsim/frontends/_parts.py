"""Parts of models as networks: a range of layers, one attention head.

Any part can be compared with any other part whose input and output spaces agree (a layer of
model A with a layer of model B, a two-layer block with its one-layer distillation, a head of
one checkpoint with the same head later)::

    tnsim.similarity(tnsim.slice(a, 1, 3), tnsim.slice(b, 1, 2))
    tnsim.similarity(tnsim.head(a[0].attn, 2), tnsim.head(b[0].attn, 2), measure="tensor")
"""

from __future__ import annotations

import torch

from ._compile import compile as _compile
from ..errors import StructureError
from ..ir._network import Network, chain_slice
from ..nn import BilinearAttention, TensorTransformerBlock

__all__ = ["head", "slice"]

_slice = slice  # the builtin, shadowed below


def _bound(i: int | None) -> str:
    return "" if i is None else str(i)


def slice(model, start: int | None = None, stop: int | None = None, *, pad: bool | None = None) -> Network:
    """Layers ``start:stop`` of a model as one network.

    For a ``torch.nn.Sequential`` the layers are its children (``model[start:stop]`` compiled);
    for a :class:`~tnsim.Network` they are its chain of layers (:attr:`Network.chain`).
    """
    if isinstance(model, Network):
        return chain_slice(model, start, stop)
    if isinstance(model, torch.nn.Sequential):
        part = model[_slice(start, stop)]
        if len(part) == 0:
            raise StructureError(f"the model has {len(model)} layers; slice {start}:{stop} is empty")
        return _compile(part, pad=pad, name=f"{type(model).__name__}[{_bound(start)}:{_bound(stop)}]")
    raise StructureError(
        f"cannot slice a {type(model).__name__}: pass a torch.nn.Sequential or a compiled Network"
    )


def head(module, h: int, *, pad: bool | None = None) -> Network:
    """Attention head ``h`` (its own contribution, without residual) as a network.

    ``module`` is a :class:`tnsim.nn.BilinearAttention` or a
    :class:`tnsim.nn.TensorTransformerBlock` (its attention).
    """
    if isinstance(module, TensorTransformerBlock):
        module = module.attn
    if not isinstance(module, BilinearAttention):
        raise StructureError(
            f"head() takes a BilinearAttention or TensorTransformerBlock, not {type(module).__name__}"
        )
    return _compile(module.head(h), pad=pad, name=f"head{h}")
