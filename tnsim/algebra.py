"""``tnsim.algebra``: operations on networks (the public face of :mod:`tnsim.ir.algebra`)."""

from .ir.algebra import *  # noqa: F403 (an explicit re-export: the names are ir.algebra's __all__)
from .ir.algebra import __all__  # noqa: F401
