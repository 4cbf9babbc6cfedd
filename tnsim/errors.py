"""Errors raised by tnsim.

Every error subclasses :class:`TnsimError` and one of the built-in ``ValueError`` /
``TypeError`` so that ordinary ``except ValueError`` code keeps working. Messages name the
module, parameter, shape or file at fault.
"""

from __future__ import annotations

__all__ = [
    "TnsimError",
    "NotMultilinearError",
    "ShapeMismatchError",
    "NonFiniteError",
    "UnaffordableError",
    "StructureError",
    "CheckpointError",
    "InvalidArgumentError",
    "ArgumentTypeError",
]


class TnsimError(Exception):
    """Base class of every error tnsim raises on purpose."""


class NotMultilinearError(TnsimError, TypeError):
    """A module or operation is not a polynomial of its input (ReLU, softmax, LayerNorm...)."""


class ShapeMismatchError(TnsimError, ValueError):
    """Two models (or a model and a measure) disagree on input or output shape."""


class NonFiniteError(TnsimError, ValueError):
    """A weight contains NaN or infinity."""


class UnaffordableError(TnsimError, ValueError):
    """A contraction or enumeration would exceed the configured cost or memory budget."""


class StructureError(TnsimError, ValueError):
    """A network is malformed, or two networks cannot be compared with the chosen method."""


class CheckpointError(TnsimError, ValueError):
    """A checkpoint file is missing, corrupt, untrusted or does not match its description."""


class InvalidArgumentError(TnsimError, ValueError):
    """An argument has a value tnsim cannot use (an unknown name, a negative size, ...)."""


class ArgumentTypeError(TnsimError, TypeError):
    """An argument has the wrong type, or an option is passed where it does not apply."""
