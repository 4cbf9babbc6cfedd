"""Terms that share a structure are merged (``tnsim.ir.algebra.merge_terms``).

Rotary embeddings written the standard way (rotate-half with chunk and cat) trace into three
terms per query and key, so a squared score would have 3^4 = 81 terms and 81^2 term pairs per
inner product; merged, the layer is one term, the same one as the per-position einsum form.
"""

import pytest
import torch
from seqmodels import run_network

import tnsim
from tnsim.ir._term import Term
from tnsim.ir.algebra import merge_terms
from tnsim.ir._term import evaluate_term


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryAttention(torch.nn.Module):
    """Squared-score attention with rotary embeddings as the field writes them."""

    def __init__(self, d: int, n: int, base: float = 10.0):
        super().__init__()
        self.q, self.k, self.v, self.o = (torch.nn.Linear(d, d, bias=False) for _ in range(4))
        inv = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        angle = torch.arange(n, dtype=torch.float64)[:, None] * inv
        self.register_buffer("cos", torch.cat([angle.cos()] * 2, -1))
        self.register_buffer("sin", torch.cat([angle.sin()] * 2, -1))
        self.register_buffer("mask", torch.tril(torch.ones(n, n, dtype=torch.float64)))

    def forward(self, x):
        q, k = self.q(x), self.k(x)
        q = q * self.cos + rotate_half(q) * self.sin
        k = k * self.cos + rotate_half(k) * self.sin
        s = (q @ k.transpose(-1, -2) / 2) ** 2
        return self.o((s * self.mask) @ self.v(x))


def test_traced_rotate_half_rope_is_one_term_and_the_same_function():
    torch.manual_seed(0)
    m = RotaryAttention(4, 3).double()
    net = tnsim.compile(m, input_shape=(3, 4))  # written for one (n, d) sequence
    assert len(net.terms) == 1 and net.terms[0].degree == 5
    assert net.terms[0].group_order == 2  # the two (query, key) pairs still swap
    X = torch.randn(4, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for x in X:
        assert torch.allclose(run_network(net, x), m(x).detach(), atol=1e-12)
    # the built-in layer with the same weights computes the same function
    ref = tnsim.nn.BilinearAttention(4, 3, squared=True, rope=True, rope_base=10.0, scale=0.5).double()
    ref.load_state_dict(m.state_dict(), strict=False)
    assert torch.allclose(ref(X), m(X), atol=1e-12)


def term(arrays, coeff=1.0) -> Term:
    """x -> coeff * A (B x) with a summed index between A and B."""
    return Term((("o", "h"), ("h", "i")), tuple(arrays), (("i",),), ("o",), ("A", "B"), coeff=coeff)


def value(terms, x):
    return sum(evaluate_term(t, [x]) for t in terms)


def test_merge_one_differing_tensor_keeps_the_structure():
    g = torch.Generator().manual_seed(2)
    A1, A2, B = (torch.randn(3, 3, generator=g, dtype=torch.float64) for _ in range(3))
    terms = (term([A1, B]), term([A2, B], coeff=-2.5))
    merged = merge_terms(terms)
    x = torch.randn(3, generator=g, dtype=torch.float64)
    assert len(merged) == 1 and len(merged[0].arrays) == 2  # A1 - 2.5 A2, and B
    assert torch.allclose(value(merged, x), A1 @ B @ x - 2.5 * A2 @ B @ x)


def test_merge_two_differing_tensors_contracts_them():
    g = torch.Generator().manual_seed(3)
    A1, A2, B1, B2 = (torch.randn(3, 3, generator=g, dtype=torch.float64) for _ in range(4))
    merged = merge_terms((term([A1, B1]), term([A2, B2], coeff=3.0)))
    x = torch.randn(3, generator=g, dtype=torch.float64)
    assert len(merged) == 1 and len(merged[0].arrays) == 1  # one (o, i) matrix
    assert torch.allclose(value(merged, x), A1 @ B1 @ x + 3 * A2 @ B2 @ x)


def test_equal_terms_add_coefficients_and_different_structures_stay():
    g = torch.Generator().manual_seed(4)
    A, B = (torch.randn(3, 3, generator=g, dtype=torch.float64) for _ in range(2))
    same = merge_terms((term([A, B]), term([A, B], coeff=2.0)))
    assert len(same) == 1 and same[0].coeff == 3.0
    other = Term((("o", "i"),), (A,), (("i",),), ("o",))
    assert len(merge_terms((term([A, B]), other))) == 2
    quadratic = Term((("o", "i", "j"),), (torch.randn(3, 3, 3, dtype=torch.float64),), (("i",), ("j",)), ("o",))
    assert len(merge_terms((quadratic, term([A, B])))) == 2


@pytest.mark.parametrize("shift", [0.0, 1.5])
def test_merged_network_keeps_similarities(shift):
    """Merging changes no inner product: a traced sum of two linear maps (one term after
    merging) against the single map, Gaussian with a mean."""
    g = torch.Generator().manual_seed(5)
    W1, W2 = (torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(2))

    class Two(torch.nn.Module):
        def forward(self, x):
            return x @ W1.T + x @ W2.T

    net = tnsim.compile(Two(), torch.zeros(4, dtype=torch.float64))
    assert len(net.terms) == 1
    one = tnsim.network_from_spec("oi->o", W1 + W2, inputs="i")
    mean = torch.full((4,), shift, dtype=torch.float64)
    assert abs(tnsim.similarity(net, one, mean=mean) - 1) < 1e-12
