"""The memory limit: the largest intermediate or dense array tnsim may allocate.

:func:`set_memory_limit` (bytes; default ``$TNSIM_MEMORY_LIMIT`` or 4 GiB). A contraction above
the limit is sliced (:mod:`tnsim.plan`) when that costs at most ``slice_overhead`` times its
flops, otherwise it is refused before anything is allocated; dense states and metrics built
outside contractions are checked with :func:`check_allocation`.
"""

from __future__ import annotations

import os

from .errors import UnaffordableError

__all__ = ["set_memory_limit", "memory_limit", "slice_overhead", "check_allocation", "SLICE_OVERHEAD"]

#: Default largest flop overhead accepted to slice a contraction under the memory limit.
SLICE_OVERHEAD = 2.0
_LIMIT: list[float | None] = [None]
_SLICE: list = [SLICE_OVERHEAD]


def set_memory_limit(nbytes: float | None, *, slice_overhead: float | None = SLICE_OVERHEAD) -> None:
    """Largest intermediate (bytes) a contraction may create; ``None`` restores the default.

    A contraction above the limit is *sliced* (some indices are fixed in turn and the pieces
    summed; cotengra chooses them) when that keeps the flops within ``slice_overhead`` times
    the unsliced flops; otherwise it raises :class:`~tnsim.errors.UnaffordableError` before
    allocating anything. ``slice_overhead=None`` never slices.
    """
    _LIMIT[0] = nbytes
    _SLICE[0] = slice_overhead


def memory_limit() -> float | None:
    """The memory limit in bytes: :func:`set_memory_limit`, else ``$TNSIM_MEMORY_LIMIT``,
    else 4 GiB."""
    if _LIMIT[0] is not None:
        return _LIMIT[0]
    env = os.environ.get("TNSIM_MEMORY_LIMIT")
    return float(env) if env else 4 * 2**30


def slice_overhead() -> float | None:
    """Largest flop overhead accepted for slicing (``None``: slicing is off)."""
    return _SLICE[0]


def check_allocation(shape, itemsize: int, what: str) -> None:
    """Raise :class:`~tnsim.errors.UnaffordableError` before allocating a dense array of
    ``shape`` that exceeds the memory limit (states and metrics built outside contractions)."""
    numel = 1
    for s in shape:
        numel *= int(s)
    limit = memory_limit()
    if limit is not None and numel * itemsize > limit:
        raise UnaffordableError(
            f"{what} of shape {tuple(int(s) for s in shape)} needs {numel * itemsize / 2**20:.3g} MiB, "
            f"above the memory limit of {limit / 2**20:.3g} MiB (tnsim.set_memory_limit)"
        )
