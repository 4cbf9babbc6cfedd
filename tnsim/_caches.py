"""The one owner of tnsim's in-memory caches.

Every module that remembers something per structure (contraction plans, variant choices,
kernels, orbit lists, block sizes, found paths) asks :func:`memo` for a named dictionary
instead of keeping a private global, so :func:`clear` forgets all of them at once. Nothing here knows what is cached: keys and values belong to
the caller. The disk cache of contraction paths is in :mod:`tnsim.plan._paths`.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["memo", "cached", "clear"]

_MEMOS: dict[str, "Memo"] = {}


class Memo(OrderedDict):
    """A dictionary that keeps at most ``maxsize`` entries (oldest dropped first)."""

    def __init__(self, name: str, maxsize: int | None = None):
        super().__init__()
        self.name, self.maxsize = name, maxsize

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        if self.maxsize is not None and len(self) > self.maxsize:
            self.popitem(last=False)


def memo(name: str, maxsize: int | None = None) -> Memo:
    """The registered cache called ``name`` (created on first request)."""
    if name not in _MEMOS:
        _MEMOS[name] = Memo(name, maxsize)
    return _MEMOS[name]


def cached(name: str, maxsize: int | None = None):
    """Decorator: memoise a function of hashable arguments in the registered cache ``name``."""

    def deco(fn):
        store = memo(name, maxsize)

        def wrapper(*args):
            try:
                return store[args]
            except KeyError:
                value = store[args] = fn(*args)
                return value

        wrapper.__wrapped__ = fn
        wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
        return wrapper

    return deco


def clear() -> None:
    """Forget every in-memory cache."""
    for m in _MEMOS.values():
        m.clear()
