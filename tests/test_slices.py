"""Comparing parts: layer ranges, one attention head, a block against its replacement."""

import brute
import pytest
import torch
from models import bilinear, residual_stack, stack2
from seqmodels import D, N, attention, block, rel

import tnsim


def test_slice_of_a_sequential_is_its_compiled_children():
    a, b = residual_stack(layers=2, seed=1), residual_stack(layers=2, seed=2)
    part = tnsim.slice(a, 1, 3)
    ref = tnsim.compile(a[1:3])
    chain = tnsim.slice(tnsim.compile(a), 1, 3)  # the same layers from the compiled chain
    assert len(part.chain) == len(chain.chain) == 2
    for measure, method in (("tensor", "exact"), ("tensor", "recursive"), ("gaussian", "recursive")):
        want = tnsim.inner(ref, b[1:3], measure=measure, method=method)
        for got in (part, chain):
            assert rel(tnsim.inner(got, b[1:3], measure=measure, method=method), want) < 1e-10


def test_two_layer_block_against_its_one_layer_replacement():
    """Faithfulness of a distillation: a degree-4 block vs a degree-2 layer on the same spaces."""
    two = stack2(d=3, h=4, o=2, bias=True, seed=1)
    one = bilinear(d=3, h=4, o=2, bias=True, seed=2)
    T2, T1 = brute.model_tensor(two), brute.model_tensor(one)
    part = tnsim.slice(two, 0, 2)
    got_t = tnsim.similarity(part, one, measure="tensor", method="exact")
    want_t = brute.tensor_inner(T2, T1) / (brute.tensor_inner(T2, T2) * brute.tensor_inner(T1, T1)) ** 0.5
    assert abs(got_t - want_t) < 1e-10
    got_g = tnsim.inner(part, one, method="exact")
    assert rel(got_g, brute.gaussian_inner(T2, T1)) < 1e-10
    with pytest.raises(tnsim.StructureError, match="aligns layers"):
        tnsim.inner(part, one, method="recursive")


def test_layer_of_one_model_against_layer_of_another():
    a, b = stack2(seed=1), stack2(seed=2)
    got = tnsim.similarity(tnsim.slice(a, 1, 2), tnsim.slice(b, 1, 2), measure="tensor")
    assert abs(got - tnsim.similarity(a[1], b[1], measure="tensor")) < 1e-12


def test_heads_are_parts_of_the_attention():
    m = attention(seed=1, n_heads=2, d_head=1)
    heads = [tnsim.head(m, h) for h in range(2)]
    whole = tnsim.add(*heads)
    for measure in ("tensor", "gaussian"):
        assert abs(tnsim.similarity(whole, m, measure=measure) - 1) < 1e-10
    x = torch.randn(N, D, dtype=torch.float64)
    assert torch.allclose(m.head(0)(x) + m.head(1)(x), m(x), atol=1e-12)


def test_same_head_in_a_later_checkpoint_with_reordered_heads():
    a = attention(seed=1, n_heads=2, d_head=1, residual=True)
    b = attention(seed=1, n_heads=2, d_head=1, residual=True)
    with torch.no_grad():  # b stores the heads in the other order
        for name in "qkv":
            getattr(b, name).weight.copy_(getattr(a, name).weight.flip(0))
        b.o.weight.copy_(a.o.weight.flip(1))
    for measure in ("tensor", "gaussian"):
        assert abs(tnsim.similarity(tnsim.head(a, 0), tnsim.head(b, 1), measure=measure) - 1) < 1e-9
        assert abs(tnsim.similarity(tnsim.head(a, 0), tnsim.head(b, 0), measure=measure)) < 1 - 1e-6
        assert abs(tnsim.similarity(a, b, measure=measure) - 1) < 1e-9


def test_block_parts_of_a_sequence_model():
    blk = block(seed=3)
    torch.manual_seed(4)
    model = torch.nn.Sequential(tnsim.nn.Embedding(3, D), blk, tnsim.nn.Unembedding(D, 3)).double()
    part = tnsim.slice(model, 1, 2)
    assert part.in_shape == (N, D + 1) and len(part.chain) == 2
    other = block(seed=5)
    assert rel(tnsim.inner(part, other, measure="tensor", method="recursive"),
               tnsim.inner(blk, other, measure="tensor", method="recursive")) < 1e-10
    # attention sublayer of the block against a lone attention layer, head by head
    h = tnsim.head(blk, 0)
    assert rel(tnsim.inner(h, attention(seed=6), method="exact"),
               tnsim.inner(tnsim.compile(blk.attn.head(0)), attention(seed=6), method="exact")) < 1e-12


def test_part_errors():
    with pytest.raises(tnsim.StructureError, match="empty"):
        tnsim.slice(stack2(), 5, 7)
    with pytest.raises(tnsim.StructureError, match="empty"):
        tnsim.slice(tnsim.compile(stack2()), 3, 4)
    with pytest.raises(tnsim.StructureError, match="Sequential or a compiled Network"):
        tnsim.slice(bilinear(), 0, 1)
    with pytest.raises(IndexError, match="head 3 out of range"):
        tnsim.head(attention(n_heads=2, d_head=1), 3)
    with pytest.raises(tnsim.StructureError, match="BilinearAttention"):
        tnsim.head(bilinear(), 0)
