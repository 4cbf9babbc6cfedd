"""Issue 12: no silent NaN or silently different numbers; clear errors instead of raw ones."""

from __future__ import annotations

import pytest
import torch

import tnsim
from tnsim.errors import (
    ArgumentTypeError,
    InvalidArgumentError,
    ShapeMismatchError,
    StructureError,
    TnsimError,
    ZeroNormError,
)
from tnsim.nn import Bilinear, Sequential


def _pair(seed=0):
    torch.manual_seed(seed)
    return [Sequential(Bilinear(4, 6, 4), Bilinear(4, 6, 3)) for _ in range(2)]


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
def test_low_precision_weights_give_the_number_of_their_exact_values(low):
    a, b = _pair()
    a, b = a.to(low), b.to(low)
    got = tnsim.similarity(a, b, measure="tensor")
    # the same (rounded) weights in float64: the reference the low-precision run must reach
    want = tnsim.similarity(a.double(), b.double(), measure="tensor")
    assert got == pytest.approx(want, rel=1e-5)
    M = tnsim.similarity_matrix([a, b, a], measure="gaussian", method="exact", progress=False)
    assert torch.isfinite(M).all()
    assert M[0, 1].item() == pytest.approx(tnsim.similarity(a.double(), b.double(), method="exact"), rel=1e-5)


def test_zero_models_and_point_masses_raise_instead_of_nan():
    z = Bilinear(4, 6, 3)
    torch.nn.init.zeros_(z.down.weight)
    with pytest.raises(ZeroNormError, match="zero norm"):
        tnsim.similarity(z, Bilinear(4, 6, 3))
    with pytest.raises(ZeroNormError, match="gaussian\\(cov\\)"):
        tnsim.similarity(Bilinear(4, 6, 3), Bilinear(4, 6, 3), cov=torch.zeros(4, 4))
    with pytest.raises(ZeroNormError, match=r"models \[0\]"):
        tnsim.similarity_matrix([z, Bilinear(4, 6, 3)], measure="tensor", progress=False)
    with pytest.warns(UserWarning, match="zero-element"):  # torch's own warning
        empty = tnsim.nn.Linear(4, 0)
    with pytest.raises(ShapeMismatchError, match="empty axis"):
        tnsim.similarity(empty, empty)


def test_outputs_are_integer_indices_or_a_projection():
    a, b = _pair()
    for bad in ([], [1.9], torch.tensor([1.0, 0.0, 0.0]), "1", [True]):
        with pytest.raises(InvalidArgumentError):
            tnsim.similarity(a, b, measure="tensor", outputs=bad)
    one = tnsim.similarity(a, b, measure="tensor", outputs=2)
    assert one == tnsim.similarity(a, b, measure="tensor", outputs=[2])
    assert one == tnsim.similarity(a, b, measure="tensor", outputs=torch.tensor([2]))
    # a projection onto output 2 is the same slice
    assert one == pytest.approx(tnsim.similarity(a, b, measure="tensor", outputs=torch.eye(3)[2:]), rel=1e-6)


def test_weights_without_values_or_of_the_wrong_kind_are_named():
    with torch.device("meta"):
        meta = Bilinear(4, 6, 3)
    with pytest.raises(StructureError, match="'left.weight'.*meta device"):
        tnsim.compile(meta)
    ints = Bilinear(4, 6, 3)
    ints.left.weight = torch.nn.Parameter(torch.ones(6, 4, dtype=torch.int64), requires_grad=False)
    with pytest.raises(ArgumentTypeError, match="'left.weight' has dtype torch.int64"):
        tnsim.similarity(ints, ints)
    with pytest.warns(UserWarning, match="Complex modules"):  # torch's own warning
        cplx = Bilinear(4, 6, 3).to(torch.complex64)
    with pytest.raises(ArgumentTypeError, match="complex64"):
        tnsim.compile(cplx)
    assert all(issubclass(e, TnsimError) for e in (ArgumentTypeError, StructureError, ZeroNormError))
