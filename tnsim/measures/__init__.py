"""Measures: what an inner product of two models means, and the kernels between input copies.

* :class:`TensorMeasure` — Frobenius inner product of the fully symmetrised padded tensors;
* :class:`GaussianMeasure` — expectation under :math:`\\mathcal N(\\mu, \\Sigma)`;
* :class:`ProductMeasure` — expectation over independent coordinates (any marginal);
* :class:`CategoricalMeasure` — expectation over one-hot tokens at independent positions.

Every measure implements the :class:`Measure` protocol (see :mod:`._base`); adding one is a
new module here that subclasses it, plus its tests.
"""

from ..errors import InvalidArgumentError
from ._base import Kernel, Measure, Piece, Space
from ._categorical import CategoricalKernel, CategoricalMeasure
from ._gaussian import GaussianKernel, GaussianMeasure
from ._product import ProductKernel, ProductMeasure
from ._tensor import TensorKernel, TensorMeasure

__all__ = ["Measure", "Kernel", "Piece", "Space", "TensorMeasure", "GaussianMeasure",
           "ProductMeasure", "CategoricalMeasure", "TensorKernel", "GaussianKernel",
           "ProductKernel", "CategoricalKernel", "as_measure"]

_NAMED = {"tensor": TensorMeasure, "gaussian": GaussianMeasure}


def as_measure(measure, mean=None, cov=None, centred: bool = False) -> Measure:
    """Normalise ``measure`` (a name or a :class:`Measure`) plus keyword options to an object."""
    if isinstance(measure, Measure):
        if mean is not None or cov is not None or centred:
            raise InvalidArgumentError("pass mean/cov/centred inside the measure object, not beside it")
        return measure
    if measure == "tensor":
        if mean is not None or cov is not None or centred:
            raise InvalidArgumentError("mean, cov and centred apply to the Gaussian measure only")
        return TensorMeasure()
    if measure == "gaussian":
        return GaussianMeasure(mean, cov, centred)
    raise InvalidArgumentError(
        f"unknown measure {measure!r}: use 'tensor', 'gaussian' or a tnsim measure object "
        "(tnsim.GaussianMeasure, tnsim.ProductMeasure, tnsim.CategoricalMeasure, ...)"
    )
