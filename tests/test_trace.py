"""Traced PyTorch modules: same networks as the hand-built forms, clear errors otherwise."""

import math

import brute_seq as bs
import pytest
import torch
import torch.nn.functional as F
from models import stack2
from seqmodels import D, N, gaussian_params, rel, run_network

import tnsim

METHODS = [("tensor", "exact"), ("tensor", "recursive"), ("gaussian", "exact"), ("gaussian", "recursive")]


class MyAttention(torch.nn.Module):
    """Polynomial attention written with plain torch ops (weights laid out as in tnsim.nn)."""

    def __init__(self, d, n_ctx, heads=1, d_head=None, causal=True, squared=False, residual=False):
        super().__init__()
        self.h, self.e = heads, d_head or d // heads
        self.q = torch.nn.Linear(d, heads * self.e, bias=False)
        self.k = torch.nn.Linear(d, heads * self.e, bias=False)
        self.v = torch.nn.Linear(d, heads * self.e, bias=False)
        self.o = torch.nn.Linear(heads * self.e, d, bias=False)
        ones = torch.ones(n_ctx, n_ctx)
        self.register_buffer("mask", torch.tril(ones) if causal else ones)
        self.squared, self.residual = squared, residual

    def forward(self, x):
        n = x.shape[-2]
        q = self.q(x).view(n, self.h, self.e).transpose(0, 1)  # (h, n, e)
        k = self.k(x).view(n, self.h, self.e).transpose(0, 1)
        v = self.v(x).view(n, self.h, self.e).transpose(0, 1)
        s = q @ k.transpose(-1, -2) / math.sqrt(self.e)  # (h, t, s)
        if self.squared:
            s = s**2
        s = s * self.mask[:n, :n]
        z = (s @ v).transpose(0, 1).reshape(n, self.h * self.e)
        y = self.o(z)
        return x + y if self.residual else y


class MyBlock(torch.nn.Module):
    def __init__(self, d, n_ctx, d_hidden):
        super().__init__()
        self.attn = MyAttention(d, n_ctx)
        self.left = torch.nn.Linear(d, d_hidden, bias=False)
        self.right = torch.nn.Linear(d, d_hidden, bias=False)
        self.down = torch.nn.Linear(d_hidden, d, bias=False)

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.down(self.left(x) * self.right(x))


def hand_built_attention(my: MyAttention, residual: bool) -> tnsim.nn.BilinearAttention:
    ref = tnsim.nn.BilinearAttention(
        my.q.in_features, my.mask.shape[0], my.h, my.e, causal=bool(my.mask[0, -1] == 0),
        squared=my.squared, residual=residual,
    ).double()
    with torch.no_grad():
        for name in "qkvo":
            getattr(ref, name).weight.copy_(getattr(my, name).weight)
    return ref


ATTN = {
    "one head": dict(),
    "two heads, no mask, residual": dict(heads=2, d_head=1, causal=False, residual=True),
    "squared": dict(squared=True),
}


@pytest.mark.parametrize("case", list(ATTN))
def test_traced_attention_equals_hand_built(case):
    kw = ATTN[case]
    torch.manual_seed(0)
    my = MyAttention(D, N, **kw).double()
    ref = hand_built_attention(my, kw.get("residual", False))
    other = hand_built_attention(MyAttention(D, N, **kw).double(), kw.get("residual", False))
    x = torch.randn(N, D, dtype=torch.float64)
    traced = tnsim.compile(my, input_shape=x.shape)  # not registered: traced (unbatched form)
    assert torch.allclose(run_network(traced, x), my(x), atol=1e-12)
    # every measure and method for the plain head; the others are covered on the hand-built
    # form in test_attention.py, here one exact and one recursive value each
    combos = METHODS if case == "one head" else [("tensor", "recursive"), ("gaussian", "exact")]
    for measure, method in combos:
        got = tnsim.inner(traced, other, measure=measure, method=method)
        want = tnsim.inner(ref, other, measure=measure, method=method)
        assert rel(got, want) < 1e-10, (measure, method)
    if kw.get("squared"):  # the swap of the (query, key) pairs is found on the traced term too
        assert max(t.group_order for t in traced.terms) >= 2


def test_traced_block_equals_hand_built_and_has_two_layers():
    torch.manual_seed(1)
    my = MyBlock(D, N, 2).double()
    ref = tnsim.nn.TensorTransformerBlock(D, N, d_hidden=2).double()
    with torch.no_grad():
        for name in "qkvo":
            getattr(ref.attn, name).weight.copy_(getattr(my.attn, name).weight)
        for name in ("left", "right", "down"):
            getattr(ref.mlp, name).weight.copy_(getattr(my, name).weight)
    other = tnsim.nn.TensorTransformerBlock(D, N, d_hidden=2).double()
    x = torch.randn(N, D, dtype=torch.float64)
    assert torch.allclose(my(x), ref(x), atol=1e-12)
    traced = tnsim.trace(my, input_shape=x.shape)
    assert len(traced.chain) == 2 and traced.in_padded  # residual layers are padded
    assert torch.allclose(run_network(traced, x), my(x), atol=1e-12)
    for measure, method in (("tensor", "recursive"), ("gaussian", "recursive")):
        got = tnsim.inner(traced, other, measure=measure, method=method)
        want = tnsim.inner(ref, other, measure=measure, method=method)
        assert rel(got, want) < 1e-10, (measure, method)


def test_traced_sequential_of_leaves_equals_compiled():
    class Wrap(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    a, b = stack2(bias=True, residual=True, seed=1), stack2(bias=True, residual=True, seed=2)
    traced = tnsim.compile(Wrap(a), torch.zeros(3, dtype=torch.float64))
    hand = tnsim.compile(a)
    assert len(traced.chain) == len(hand.chain) == 2
    for measure, method in METHODS:
        assert rel(tnsim.inner(traced, b, measure=measure, method=method),
                   tnsim.inner(hand, b, measure=measure, method=method)) < 1e-10


def test_traced_trilinear_equals_shipped_layer():
    class MyTri(torch.nn.Module):
        def __init__(self, tri):
            super().__init__()
            self.a, self.b, self.c, self.down = tri.a, tri.b, tri.c, tri.down

        def forward(self, x):
            return self.down(self.a(x) * self.b(x) * self.c(x))

    torch.manual_seed(3)
    tri = tnsim.nn.Trilinear(3, 4, 2).double()
    other = tnsim.nn.Trilinear(3, 4, 2).double()
    traced = tnsim.trace(MyTri(tri), torch.zeros(3, dtype=torch.float64))
    for measure in ("tensor", "gaussian"):
        assert rel(tnsim.inner(traced, other, measure=measure, method="exact"),
                   tnsim.inner(tri, other, measure=measure, method="exact")) < 1e-10


class Ops(torch.nn.Module):
    """Every supported operation once, on a (2, 2) sequence."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(3, 2))
        self.b = torch.nn.Parameter(torch.randn(3))
        self.lin = torch.nn.Linear(2, 4)
        self.register_buffer("mask", torch.tensor([[1.0, 0.0], [1.0, 1.0]]))

    def forward(self, x):
        h = F.linear(x, self.w, self.b)  # (2, 3), affine
        a, c = torch.chunk(self.lin(x), 2, dim=-1)  # (2, 2) each
        p = torch.einsum("...i,...i->...", a, c)  # (2,), quadratic
        g = (x.mT @ x) * self.mask / 2.0  # (2, 2)
        s = torch.stack([x[:, 0], x[:, 1] ** 2], dim=0).sum(0, keepdim=True)  # (1, 2)
        y = torch.cat([h[..., :2], g.transpose(0, 1), s.expand(2, 2)], dim=-1)  # (2, 6)
        y = y.reshape(2, 3, 2).flatten(1).unsqueeze(0).squeeze(0)
        first, rest = torch.split(y, [1, 5], dim=-1)
        y = torch.cat([rest, -first], dim=1).permute(0, 1)
        z = y.masked_fill(torch.eye(2, 6, dtype=torch.bool), 0.0) - p.unsqueeze(-1) + h.mean()
        return z - 0.5 * x.sum() + x[-1].mean()


def test_every_supported_operation_traces_to_the_same_function():
    torch.manual_seed(4)
    m = Ops().double()
    x = torch.randn(N, D, dtype=torch.float64)
    net = tnsim.trace(m, input_shape=x.shape)
    assert net.real_out_shape == (2, 6)
    for _ in range(3):
        x = torch.randn(N, D, dtype=torch.float64)
        assert torch.allclose(run_network(net, x), m(x), atol=1e-12)
    m2 = Ops().double()
    mean, cov = gaussian_params(seed=5)
    def per_input(f):  # Ops takes one input at a time
        return lambda X: torch.stack([f(x) for x in X])

    want = bs.quadrature_inner(per_input(m), per_input(m2), N, D, 4, mean, cov)
    got = tnsim.inner(net, tnsim.trace(m2, input_shape=x.shape), mean=mean, cov=cov, method="exact")
    assert rel(got, want) < 1e-10


def test_tracing_leaves_the_module_unchanged():
    m = Ops().double()
    before = set(vars(m)) | set(dict(m.named_buffers()))
    tnsim.trace(m, input_shape=(N, D))
    assert set(vars(m)) | set(dict(m.named_buffers())) == before


# --- errors ----------------------------------------------------------------------------------


class Bad(torch.nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.lin = torch.nn.Linear(D, D)
        self.relu = torch.nn.ReLU()
        self.norm = torch.nn.LayerNorm(D)

    def forward(self, x):
        y = self.lin(x)
        k = self.kind
        if k == "relu":
            return torch.relu(y)
        if k == "relu module":
            return self.relu(y)
        if k == "gelu":
            return F.gelu(y)
        if k == "softmax":
            return y.softmax(-1)
        if k == "exp":
            return torch.exp(y)
        if k == "layernorm":
            return self.norm(y)
        if k == "rmsnorm":
            return y / y.pow(2).mean(-1, keepdim=True)
        if k == "control flow":
            if y.sum() > 0:
                return y
            return -y
        if k == "item":
            return y * y.sum().item()
        if k == "sqrt":
            return y**0.5
        if k == "masked softmax":
            return y.masked_fill(torch.ones(N, D, dtype=torch.bool).triu(1), float("-inf"))
        if k == "in-place":
            return y.mul_(2)
        raise AssertionError(k)


ERRORS = {
    "relu": r"relu",
    "relu module": r"relu \(ReLU\) is not a polynomial",
    "gelu": r"gelu",
    "softmax": r"softmax",
    "exp": r"exp",
    "layernorm": r"LayerNorm",
    "rmsnorm": r"division by a data-dependent value",
    "control flow": r"data-dependent control flow",
    "item": r"item",
    "sqrt": r"power 0\.5",
    "masked softmax": r"masked_fill with -inf",
    "in-place": r"in-place method \.mul_\(\)",
}


@pytest.mark.parametrize("kind", list(ERRORS))
def test_unsupported_operations_are_named_with_their_line(kind):
    m = Bad(kind).double()
    with pytest.raises(tnsim.NotMultilinearError, match=ERRORS[kind]) as err:
        tnsim.compile(m, input_shape=(N, D))
    assert "test_trace.py:" in str(err.value)
    assert isinstance(err.value, TypeError)


def test_module_without_compiler_and_second_input_are_named():
    class Conv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv1d(N, N, 1)  # linear, but no compiler registered

        def forward(self, x):
            return self.conv(x)

    with pytest.raises(tnsim.NotMultilinearError, match=r"'conv' \(Conv1d\) at .*test_trace\.py:\d+.* has no tnsim compiler"):
        tnsim.trace(Conv(), input_shape=(N, D))

    class Two(torch.nn.Module):
        def forward(self, x, y):
            return x * y

    with pytest.raises(tnsim.StructureError, match="second tensor argument"):
        tnsim.trace(Two(), input_shape=(N, D))


def test_untraceable_module_without_example_input_asks_for_one():
    with pytest.raises(tnsim.NotMultilinearError, match="example_input"):
        tnsim.compile(MyAttention(D, N))


def test_example_input_is_batched_as_forward_receives_it():
    with pytest.raises(tnsim.ShapeMismatchError, match="batch axis first"):
        tnsim.trace(MyAttention(D, N), torch.zeros(4, 1, N, D))
    with pytest.raises(tnsim.errors.ArgumentTypeError, match="not both"):
        tnsim.trace(MyAttention(D, N), torch.zeros(4, N, D), input_shape=(N, D))


def test_vector_model_given_a_sequence_is_applied_per_position():
    a = stack2(seed=1)
    net = tnsim.compile(a, input_shape=(N, 3))
    assert net.in_shape == (N, 3) and net.out_shape == (N, 2)
    x = torch.randn(N, 3, dtype=torch.float64)
    assert torch.allclose(run_network(net, x), a(x), atol=1e-12)
    # i.i.d. positions: the Gaussian inner product is n times the per-vector one
    b = stack2(seed=2)
    nb = tnsim.compile(b, input_shape=(N, 3))
    assert rel(tnsim.inner(net, nb, method="exact"), N * tnsim.inner(a, b, method="exact")) < 1e-10


class BroadcastEinsum(torch.nn.Module):
    """einsum whose operands broadcast size-1 axes, under an ellipsis and an explicit letter."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2, bias=False)

    def forward(self, x):  # x: (2, 2)
        a = self.lin(x)
        p = torch.einsum("...i,...i->...", a, x[:1])  # (2,): row t of a against row 0 of x
        q = torch.einsum("ti,ti->t", x, a[-1:])  # (2,): row t of x against the last row of a
        return torch.stack([p, q], dim=-1)


def test_einsum_broadcasting_traces_to_the_same_function():
    torch.manual_seed(6)
    m = BroadcastEinsum().double()
    net = tnsim.trace(m, input_shape=(N, D))
    for _ in range(3):
        x = torch.randn(N, D, dtype=torch.float64)
        assert torch.allclose(run_network(net, x), m(x), atol=1e-12)


# --- torch's batch convention (issue 12) -------------------------------------------------------


class BatchedAttention(torch.nn.Module):
    """Squared-score attention written for batches, as torch code usually is: (B, n, d)."""

    def __init__(self, d, n):
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(d, d, bias=False) for _ in range(3))
        self.register_buffer("mask", torch.tril(torch.ones(n, n)))

    def forward(self, x):
        scores = (self.q(x) @ self.k(x).transpose(-1, -2)) ** 2 * self.mask
        return scores @ self.v(x)


class PairProduct(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.left, self.right = torch.nn.Linear(4, 6, bias=False), torch.nn.Linear(4, 6, bias=False)
        self.down = torch.nn.Linear(6, 3, bias=False)

    def forward(self, x):
        return self.down(self.left(x) * self.right(x))


def test_a_batched_vector_example_gives_the_vector_model():
    """torch.randn(8, 4) is 8 inputs of a vector model, not one sequence of 8 positions."""
    torch.manual_seed(7)
    m = PairProduct().double()
    ref = tnsim.nn.Bilinear(4, 6, 3).double()
    with torch.no_grad():
        for name in ("left", "right", "down"):
            getattr(ref, name).weight.copy_(getattr(m, name).weight)
    net = tnsim.compile(m, torch.randn(8, 4, dtype=torch.float64))
    assert net.in_shape == (4,) and net.out_shape == (3,)
    other = tnsim.nn.Bilinear(4, 6, 3).double()
    for measure in ("tensor", "gaussian"):
        assert rel(tnsim.inner(net, other, measure=measure), tnsim.inner(ref, other, measure=measure)) < 1e-12
    assert tnsim.compile(ref, torch.randn(8, 4)).in_shape == (4,)  # registered layers alike
    assert tnsim.compile(ref, torch.randn(2, 5, 4)).in_shape == (5, 4)  # sequences: positionwise


def test_a_batched_attention_module_traces_from_a_batched_example():
    torch.manual_seed(8)
    m = BatchedAttention(D, N).double()
    x = torch.randn(2, N, D, dtype=torch.float64)
    net = tnsim.compile(m, x)
    assert net.in_shape == (N, D)
    for row in torch.randn(3, N, D, dtype=torch.float64):
        assert torch.allclose(run_network(net, row), m(row[None])[0], atol=1e-12)


def test_an_example_whose_rows_interact_is_refused():
    class MixesRows(torch.nn.Module):  # treats the first axis as positions, not a batch
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(D, D, bias=False)

        def forward(self, x):
            return self.lin(x) * x.sum(0)

    with pytest.raises(tnsim.StructureError, match="input_shape="):
        tnsim.compile(MixesRows().double(), torch.randn(N, D, dtype=torch.float64))
