"""The tree executor against cotengra's own contraction, and sharing of repeated intermediates."""

import cotengra as ctg
import pytest
import torch

import tnsim
from tnsim.plan import _contract
from tnsim.plan import _execute as execute
from tnsim.plan._contract import _norms


def random_network(seed):
    """A random network with hyperindices, a repeated array, broadcast steps and open legs."""
    g = torch.Generator().manual_seed(seed)
    size = {"a": 3, "b": 4, "c": 2, "d": 5, "e": 3, "f": 2, "h": 4}
    inputs = [("a", "b"), ("b", "c", "h"), ("c", "d"), ("a", "b"), ("d", "e", "h"), ("e", "f"), ("h",)]
    output = ("f", "h", "a")
    arrays = [torch.randn([size[i] for i in t], generator=g, dtype=torch.float64) for t in inputs]
    arrays[3] = arrays[0]  # the same array twice, with the same index pattern
    return inputs, output, size, arrays


@pytest.mark.parametrize("seed", range(4))
def test_execute_equals_cotengra(seed):
    inputs, output, size, arrays = random_network(seed)
    for opt in ("greedy", "optimal"):
        tree = ctg.array_contract_tree(inputs, output, size, optimize=opt)
        torch.testing.assert_close(execute.execute(tree, arrays), tree.contract(arrays), rtol=1e-12, atol=1e-12)


def test_single_tensor_and_pure_broadcast():
    x = torch.randn(3, 4, dtype=torch.float64)
    tree = ctg.array_contract_tree([("i", "j")], ("j",), {"i": 3, "j": 4}, optimize="greedy")
    torch.testing.assert_close(execute.execute(tree, [x]), x.sum(0))
    y = torch.randn(4, 3, dtype=torch.float64)
    tree = ctg.array_contract_tree([("i", "j"), ("j", "i")], ("j", "i"), {"i": 3, "j": 4}, optimize="greedy")
    torch.testing.assert_close(execute.execute(tree, [x, y]), x.T * y)
    tree = ctg.array_contract_tree([("i",), ("j",)], ("i", "j"), {"i": 3, "j": 4}, optimize="greedy")
    torch.testing.assert_close(execute.execute(tree, [x[:, 0], y[:, 0]]), torch.outer(x[:, 0], y[:, 0]))


def test_repeated_products_are_computed_once_and_shared_across_calls():
    """<x|A|y><x|A|y>-like networks: W_a W_b^T appears twice (two input copies)."""
    g = torch.Generator().manual_seed(0)
    W, V = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(6, 7, generator=g, dtype=torch.float64)
    C = torch.randn(5, 6, generator=g, dtype=torch.float64)
    inputs = [("i", "x"), ("k", "x"), ("j", "y"), ("l", "y"), ("i", "k"), ("j", "l")]
    size = {"i": 5, "j": 5, "k": 6, "l": 6, "x": 7, "y": 7}
    tree = ctg.array_contract_tree(inputs, (), size, optimize="optimal")
    arrays = [W, V, W, V, C, C]
    expected = torch.einsum("ix,kx,ik->", W, V, C) ** 2
    with execute.count_flops() as n:
        value = execute.execute(tree, arrays)
    torch.testing.assert_close(value, expected)
    assert n["flops"] < tree.total_flops()
    with execute.shared_intermediates() as cache:
        execute.execute(tree, arrays)
        with execute.count_flops() as again:
            torch.testing.assert_close(execute.execute(tree, arrays), expected)
    assert cache.hits > 0 and again["flops"] < n["flops"]
    # new arrays with the same shapes are never mistaken for the cached ones
    with execute.shared_intermediates():
        execute.execute(tree, arrays)
        other = [2 * W, V, 2 * W, V, C, C]
        torch.testing.assert_close(execute.execute(tree, other), 4 * expected)


@pytest.mark.parametrize("scale", [1.0, 1e25, 1e-25])
def test_norms_of_float32_arrays_are_float64_norms(scale):
    """Normalisation sums float32 arrays in float32 where that cannot overflow or underflow,
    and in float64 where it could (squares of 1e25 overflow float32, of 1e-25 underflow)."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 200, 120, generator=g, dtype=torch.float64) * scale).to(torch.float32)
    want = torch.linalg.vector_norm(x.to(torch.float64))
    got = _norms(x, False)
    assert got.dtype == torch.float64 and torch.isfinite(got)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    rows = _norms(x.reshape(3, -1), True)
    torch.testing.assert_close(rows, torch.linalg.vector_norm(x.reshape(3, -1).to(torch.float64), dim=1),
                               rtol=1e-6, atol=0)



def test_orbit_sums_in_float32_keep_float64_accuracy(monkeypatch):
    """Whole-state orbit sums (``ACCUMULATE_IN_DTYPE_MIN`` entries and more; lowered here to
    one, so that every sum of this small model is one) accumulate in float32 for a float32
    pair, and its recursive similarity agrees with the float64 pair of the same weights to
    float32 accuracy."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*(tnsim.nn.BilinearAttention(8, 3, n_heads=2, residual=True) for _ in range(2)))
    other = torch.nn.Sequential(*(tnsim.nn.BilinearAttention(8, 3, n_heads=2, residual=True) for _ in range(2)))
    with torch.no_grad():
        for p, q in zip(other.parameters(), model.parameters()):
            p.copy_(q + 0.3 * q.std() * torch.randn_like(q))
    x = torch.zeros(1, 3, 8, dtype=torch.float64)
    wide = [tnsim.compile(m.double(), x) for m in (model, other)]
    want = tnsim.similarity(*wide, method="recursive")
    want_inner = tnsim.inner(*wide, method="recursive")
    monkeypatch.setattr(_contract, "ACCUMULATE_IN_DTYPE_MIN", 1)
    seen = []
    accumulator = _contract._accumulator
    monkeypatch.setattr(_contract, "_accumulator", lambda v, o: seen.append(accumulator(v, o)) or seen[-1])
    a, b = (tnsim.compile(m.float(), x.float()) for m in (model, other))
    got, got_inner = tnsim.similarity(a, b, method="recursive"), tnsim.inner(a, b, method="recursive")
    assert torch.float32 in seen  # the open-output orbit sums ran in float32 (inner products in float64)
    assert abs(got - want) < 1e-6 * abs(want)
    assert abs(got_inner - want_inner) < 1e-5 * abs(want_inner)
    assert abs(float(want) - 1) > 1e-3  # not a trivial cosine


@pytest.mark.parametrize("seed", range(40))
def test_pairwise_gemm_equals_einsum_for_any_layout(seed):
    """A pairwise step as one batched GEMM on operands in their memory order equals
    ``torch.einsum``, for random index groups (batch, summed, kept on either side), operands
    permuted, sliced or broadcast in memory, and outputs in any order."""
    g = torch.Generator().manual_seed(seed)

    def rnd(n):
        return int(torch.randint(n, (), generator=g))

    names = list("abcdefgh")[: 3 + rnd(6)]
    size = {i: 1 + rnd(4) for i in names}
    role = {i: ("batch", "summed", "left", "right")[rnd(4)] for i in names}
    role[names[rnd(len(names))]] = "summed"  # at least one: a GEMM, not a broadcast product
    left = [i for i in names if role[i] in ("batch", "summed", "left")]
    right = [i for i in names if role[i] in ("batch", "summed", "right")]
    out = [i for i in names if role[i] in ("batch", "left", "right")]
    for ix in (left, right, out):
        ix[:] = [ix[k] for k in torch.randperm(len(ix), generator=g).tolist()]

    def operand(inds):  # stored in another axis order, every other entry of a wider one, or broadcast
        order = torch.randperm(len(inds), generator=g).tolist()
        base = torch.randn([size[inds[k]] * 2 for k in order], generator=g, dtype=torch.float64)
        x = base[tuple(slice(None, None, 2) for _ in order)].permute([order.index(k) for k in range(len(inds))])
        if inds and rnd(3) == 0:  # one axis broadcast (stride 0)
            k = rnd(len(inds))
            x = x.narrow(k, 0, 1).expand(x.shape)
        return x

    x, y = operand(left), operand(right)
    pair = execute._Pair.of(tuple(left), tuple(right), tuple(out))
    assert pair.einsum is None  # runs as a GEMM
    eq = execute._equation(tuple(left), tuple(right), tuple(out))
    torch.testing.assert_close(pair(x, y), torch.einsum(eq, x, y), rtol=1e-12, atol=1e-12)


def test_pairwise_falls_back_to_einsum_for_reductions():
    """An index in one operand only and not in the output is summed by einsum."""
    pair = execute._Pair.of(("i", "j"), ("j", "k"), ("k",))
    assert pair.einsum is not None
    x, y = torch.randn(3, 4, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(pair(x, y), x.sum(0) @ y)


def test_normalised_weights_are_kept_until_changed_in_place():
    """Normalised arrays are reused across calls (``_NORMALISED``), and an in-place change of
    a network's weight (its version moves) is seen: the similarity after it equals that of a
    freshly compiled copy of the changed model."""
    torch.manual_seed(0)
    ma = torch.nn.Sequential(tnsim.nn.Bilinear(4, 6, 4, residual=True), tnsim.nn.Bilinear(4, 6, 3)).double()
    mb = torch.nn.Sequential(tnsim.nn.Bilinear(4, 6, 4, residual=True), tnsim.nn.Bilinear(4, 6, 3)).double()
    a, b = tnsim.compile(ma), tnsim.compile(mb)
    before = tnsim.similarity(a, b, method="recursive")
    held = [k for k in _contract._NORMALISED if k[0] in {id(x) for t in a.terms for x in t.arrays}]
    assert held  # a's weights were kept
    assert tnsim.similarity(a, b, method="recursive") == before  # and reused
    with torch.no_grad():
        a.terms[0].arrays[0].add_(torch.randn_like(a.terms[0].arrays[0]))
    after = tnsim.similarity(a, b, method="recursive")
    assert abs(after - before) > 1e-6
    fresh = tnsim.compile(ma)
    with torch.no_grad():
        fresh.terms[0].arrays[0].copy_(a.terms[0].arrays[0])
    assert abs(tnsim.similarity(fresh, b, method="recursive") - after) < 1e-12
