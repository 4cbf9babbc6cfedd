r"""What every method does first: check two networks against each other and a measure, pad
them as the measure needs, pick a dtype, build the kernels, map the compared outputs.

:class:`Prepared` is the result, computed once per comparison and shared by the exact and
recursive methods (and by the three inner products ``ab``, ``aa``, ``bb`` of a similarity).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .. import _caches
from ..errors import InvalidArgumentError, ShapeMismatchError, StructureError
from ..ir._network import Network, pad_input
from ..measures import Kernel, Measure, Space
from ..doubled import selector_matrix
from ..measures._base import real_weights, selector

__all__ = ["Prepared", "prepare", "Mode", "output_maps", "output_indices", "make_kernel", "space_of", "as_matrix"]

_KERNELS = _caches.memo("kernels", maxsize=8)


@dataclass(frozen=True)
class Mode:
    """How model stacks meet: ``pair`` (all a x b), ``diag`` (same stack, model i with i)."""

    kind: str = "pair"

    def labels(self, a, b) -> tuple[str | None, str | None]:
        if self.kind == "diag":
            return "n#", "n#"
        return ("a#" if a.batch else None), ("b#" if b.batch else None)


def space_of(net: Network) -> Space:
    """The input space of a network's copies."""
    return Space(tuple(net.in_shape), net.in_padded)


@dataclass(frozen=True, eq=False)
class Prepared:
    """Two networks checked against each other and padded for ``measure``, once.

    ``a`` / ``b`` are the padded networks, ``dtype`` the common precision, ``like`` an empty
    tensor of that dtype on the models' device.
    """

    a: Network
    b: Network
    measure: Measure
    dtype: torch.dtype
    like: torch.Tensor
    _kernels: dict = field(default_factory=dict, repr=False)

    def nets(self, which: str) -> tuple[Network, Network]:
        """The two networks of ``which`` (``"ab"``, ``"aa"`` or ``"bb"``)."""
        side = {"a": self.a, "b": self.b}
        return side[which[0]], side[which[1]]

    def kernel(self, which: str = "ab") -> Kernel:
        """The measure's kernel between the input frames of ``which`` (built once)."""
        if which not in self._kernels:
            self._kernels[which] = make_kernel(self.measure, *self.nets(which), self.like)
        return self._kernels[which]

    def maps(self, outputs) -> tuple:
        """Output maps of both sides (see :func:`output_maps`)."""
        return output_maps(self.a, outputs, self.like), output_maps(self.b, outputs, self.like)


def prepare(net_a: Network, net_b: Network, measure: Measure) -> Prepared:
    """Check that two networks can be compared, pad as the measure needs, pick a dtype."""
    if net_a.real_in_shape != net_b.real_in_shape:
        raise ShapeMismatchError(
            f"input shapes differ: {net_a.name} takes {net_a.real_in_shape}, "
            f"{net_b.name} takes {net_b.real_in_shape}"
        )
    if net_a.real_out_shape != net_b.real_out_shape:
        raise ShapeMismatchError(
            f"output shapes differ: {net_a.name} gives {net_a.real_out_shape}, "
            f"{net_b.name} gives {net_b.real_out_shape}"
        )
    for net in (net_a, net_b):
        if 0 in net.real_out_shape or 0 in net.real_in_shape:
            raise ShapeMismatchError(
                f"{net.name} maps inputs of shape {net.real_in_shape} to outputs of shape "
                f"{net.real_out_shape}: an empty axis leaves nothing to compare"
            )
    if net_a.device != net_b.device:
        raise StructureError(
            f"models are on different devices ({net_a.device} and {net_b.device}); move one"
        )
    # float16 / bfloat16 weights overflow and lose the sums: compute in float32 or better
    dtype = torch.promote_types(torch.promote_types(net_a.dtype, net_b.dtype), torch.float32)
    if measure.homogenise:
        k = max(net_a.degree, net_b.degree)
        if any(t.degree < k for t in net_a.terms) and not net_a.in_padded:
            net_a = pad_input(net_a)
        if any(t.degree < k for t in net_b.terms) and not net_b.in_padded:
            net_b = pad_input(net_b)
    measure.check(space_of(net_a))
    return Prepared(net_a, net_b, measure, dtype, torch.empty((), dtype=dtype, device=net_a.device))


def make_kernel(measure: Measure, net_a: Network, net_b: Network, like: torch.Tensor) -> Kernel:
    """The measure's kernel between the two input frames (reused while nothing changed).

    Kernels hold ``(d+1) x (d+1)`` matrices; the few most recent are kept, keyed by the
    measure object, its tensors' version counters (in-place edits invalidate), the frames,
    dtype and device, so the many comparisons of a matrix build them once.
    """
    sa, sb = space_of(net_a), space_of(net_b)
    versions = tuple(x._version if isinstance(x, torch.Tensor) else None for x in measure.tensors())
    key = (id(measure), versions, sa, sb, like.dtype, like.device)
    hit = _KERNELS.get(key)
    if hit is not None and hit[0] is measure:
        return hit[1]
    kernel = measure.kernel(sa, sb, like)
    _KERNELS[key] = (measure, kernel)
    return kernel


def as_matrix(m: torch.Tensor | None) -> torch.Tensor | None:
    """An output map as a ``(k, dim)`` matrix (a 0/1 diagonal weight becomes its selector)."""
    return selector_matrix(m) if m is not None and m.dim() == 1 else m


def output_indices(outputs) -> list[int]:
    """``outputs`` as a non-empty list of integer indices (an int is one index).

    Floats (``1.9``, or a float tensor such as ``[1., 0., 0.]``) are refused rather than
    truncated: a float vector is more likely a projection or a mask than indices.
    """
    if isinstance(outputs, torch.Tensor):
        if outputs.is_floating_point() or outputs.is_complex() or outputs.dim() > 1:
            raise InvalidArgumentError(
                f"outputs must be integer indices or a (k, d_out) projection, got a {outputs.dtype} "
                f"tensor of shape {tuple(outputs.shape)}"
            )
        outputs = outputs.reshape(-1).tolist()
    elif isinstance(outputs, (int, np.integer)) and not isinstance(outputs, bool):
        outputs = [int(outputs)]
    try:
        items = list(outputs)
    except TypeError:
        raise InvalidArgumentError(
            f"outputs must be an index, a list of indices or a (k, d_out) projection, got {outputs!r}"
        ) from None
    bad = [i for i in items if isinstance(i, bool) or not isinstance(i, (int, np.integer))]
    if bad:
        raise InvalidArgumentError(f"outputs must be integer indices, got {bad!r}")
    if not items:
        raise InvalidArgumentError("outputs is empty: name at least one output to compare")
    return [int(i) for i in items]


def output_maps(net: Network, outputs, like: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    """Per output axis, the matrix applied before outputs are compared (``None``: identity).

    ``outputs`` is ``None`` (all real outputs), a list of output indices, or a ``(k, d_out)``
    projection. The constant coordinate of a padded output is always dropped: with all
    outputs compared, by the 0/1 weight ``(0, 1, ..., 1)`` (a vector, so that two padded
    outputs are joined rather than multiplied by ``(d, d+1)`` selectors; see
    :func:`as_matrix`).
    """
    d = net.d_out
    space = Space(tuple(net.out_shape), net.out_padded)
    if outputs is None:
        proj = None
    elif isinstance(outputs, torch.Tensor) and outputs.dim() == 2:
        if outputs.shape[1] != d:
            raise ShapeMismatchError(
                f"output projection has shape {tuple(outputs.shape)}, the models have {d} outputs"
            )
        proj = outputs.to(dtype=like.dtype, device=like.device)
    else:
        idx = output_indices(outputs)
        bad = [i for i in idx if not -d <= i < d]
        if bad:
            raise ShapeMismatchError(f"output indices {bad} out of range for {d} outputs")
        proj = torch.eye(d, dtype=like.dtype, device=like.device)[idx]
    if proj is None and not net.out_padded:
        feat = None
    elif proj is None:
        feat = real_weights(space, like)
    else:
        feat = proj @ selector(space, like)
    return (None,) * (len(net.out_shape) - 1) + (feat,)
