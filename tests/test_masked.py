"""Masked contractions (tnsim.plan._masked): row by row over a mask's support, against einsum."""

import pytest
import torch

import tnsim
from tnsim.doubled import Equation
from tnsim.plan import _contract as contract
from tnsim.plan import _masked as masked
from tnsim.plan import _paths as paths


def contraction(inputs, output, sizes):
    eq = Equation([tuple(i) for i in inputs], tuple(output), dict(sizes))
    return contract.Contraction(eq, paths.find_tree(eq.inputs, eq.output, eq.size_dict))


def einsum(inputs, output, arrays):
    return torch.einsum(",".join(inputs) + "->" + output, *arrays)


def attention_like(mask_a, mask_b, g):
    """Two masks on (t, s) and (u, r), three blocks as in an attention orbit."""
    inputs = ["ts", "ur", "htpuq", "hsprq", "hsurp"]
    output = "tuhq"
    sizes = dict(t=4, s=4, u=4, r=4, h=3, p=5, q=6)
    arrays = [mask_a, mask_b] + [
        torch.randn([sizes[i] for i in x], generator=g, dtype=torch.float64) for x in inputs[2:]
    ]
    return inputs, output, sizes, arrays


@pytest.fixture
def always(monkeypatch):
    monkeypatch.setattr(masked, "MIN_FLOPS", 0)
    monkeypatch.setattr(masked, "MIN_GAIN", -1.0)  # take the rows even where they cost more


def causal(n=4, scale=1.0):
    return scale * torch.tril(torch.ones(n, n, dtype=torch.float64))


def test_causal_masks_contract_row_by_row_to_the_dense_value(always):
    g = torch.Generator().manual_seed(0)
    inputs, output, sizes, arrays = attention_like(causal(scale=0.5), causal(scale=2.0), g)
    con = contraction(inputs, output, sizes)
    want = einsum(inputs, output, arrays)
    masks = masked._masks(con.equation, arrays)
    assert [(m.t, m.s) for m in masks] == [("t", "s"), ("u", "r")]
    for subset in ((masks[0],), (masks[1],), tuple(masks)):  # one mask looped, or both
        plan = masked._rows(con.equation, subset, 8, None)
        assert len(plan.combos) == 4 ** len(subset)  # every combination of rows
        got = masked.run_masked(plan, con.equation, arrays)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert masked.masked_plan(con, arrays, 8) is not None


def test_scattered_supports_and_summed_rows(always):
    """A mask whose rows are not contiguous (index_select), one empty row, and a looped index
    that is summed rather than an output."""
    g = torch.Generator().manual_seed(1)
    m = torch.tensor([[1.0, 0, 0, 3.0], [0, 0, 0, 0], [0, 2.0, 0, 0], [1.0, 0, 1.0, 0]], dtype=torch.float64)
    inputs, _, sizes, arrays = attention_like(m, causal(), g)
    output = "uhq"  # t summed
    con = contraction(inputs, output, sizes)
    masks = masked._masks(con.equation, arrays)
    assert {mk.t for mk in masks} == {"t", "u"}
    plan = masked._rows(con.equation, tuple(masks), 8, None)
    assert len(plan.combos) == 3 * 4  # the empty row is skipped
    got = masked.run_masked(plan, con.equation, arrays)
    torch.testing.assert_close(got, einsum(inputs, output, arrays), rtol=1e-12, atol=1e-12)


def test_dense_masks_and_cheap_contractions_stay_dense(monkeypatch):
    g = torch.Generator().manual_seed(2)
    full = torch.ones(4, 4, dtype=torch.float64)
    inputs, output, sizes, arrays = attention_like(full, full, g)
    con = contraction(inputs, output, sizes)
    monkeypatch.setattr(masked, "MIN_FLOPS", 0)
    assert masked.masked_plan(con, arrays, 8) is None  # density 1 > MAX_DENSITY: no mask
    monkeypatch.setattr(masked, "MIN_FLOPS", 1e12)
    arrays[:2] = [causal(), causal()]
    assert masked.masked_plan(con, arrays, 8) is None  # too small to pay for the row loop


def test_causal_rows_save_flops_on_an_attention_crossing(monkeypatch):
    """Without forcing: the crossing pairing of two causal attention layers (both masks in one
    orbit) is planned row by row, with fewer flops than dense, and gives the dense value."""
    monkeypatch.setattr(masked, "MIN_FLOPS", 0)
    g = torch.Generator().manual_seed(3)
    sizes = dict(t=4, s=4, u=4, r=4, h=2, e=16, f=16, i=16, j=16)
    inputs = ["ts", "ur", "hetgiu", "hesgfr", "hjsgir"]  # q.q, k.v, v.k of two heads' blocks
    sizes["g"] = 2
    output = "tuhjgf"
    arrays = [causal(), causal()] + [
        torch.randn([sizes[i] for i in x], generator=g, dtype=torch.float64) for x in inputs[2:]
    ]
    con = contraction(inputs, output, sizes)
    plan = masked.masked_plan(con, arrays, 8)
    assert plan is not None and plan.flops < 0.8 * con.flops
    got = masked.run_masked(plan, con.equation, arrays)
    torch.testing.assert_close(got, einsum(inputs, output, arrays), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("measure", ["tensor", "gaussian"])
def test_masked_orbits_change_no_similarity(measure, monkeypatch):
    """Causal attention through the whole engine — the exact method on one layer, the
    recursive method on two — with every masked orbit run row by row equals the dense runs."""
    torch.manual_seed(0)
    one = lambda: tnsim.nn.BilinearAttention(6, 3, n_heads=2, residual=True).double()  # noqa: E731
    a, b = one(), one()
    c, d = torch.nn.Sequential(one(), one()), torch.nn.Sequential(one(), one())
    calls = []
    real = masked.run_masked

    def spy(*args):
        calls.append(1)
        return real(*args)

    def values():
        return [tnsim.similarity(a, b, measure=measure, method="exact"),
                tnsim.similarity(c, d, measure=measure, method="recursive")]

    monkeypatch.setattr(contract, "run_masked", spy)
    monkeypatch.setattr(masked, "MIN_FLOPS", 0)
    monkeypatch.setattr(masked, "MIN_GAIN", -1.0)
    got = values()
    assert calls
    monkeypatch.setattr(contract, "masked_plan", lambda *args: None)
    tnsim.clear_cache(disk=False)
    assert got == pytest.approx(values(), rel=1e-10)


def priced_as_run(a, b, monkeypatch) -> tuple[float, float]:
    """The recursive tensor estimate's flops, checked equal to the run's, and the flops of the
    same estimate with every contraction dense."""
    ran = tnsim.compare(a, b, measure="tensor", method="recursive").cost
    est = tnsim.cost(a, b, measure="tensor", method="recursive", samples=None)
    assert est.flops == pytest.approx(ran.flops, rel=1e-12)
    monkeypatch.setattr(contract, "masked_plan", lambda *args: None)
    return est.flops, tnsim.cost(a, b, measure="tensor", method="recursive", samples=None).flops


def test_cost_prices_the_masked_rows(monkeypatch):
    """tnsim.cost plans what runs: with every orbit planned, its flops are the run's, rows
    included, and below what the dense trees cost (two causal layers, recursive: the
    crossing pairings hold both models' masks)."""
    monkeypatch.setattr(masked, "MIN_FLOPS", 0)
    monkeypatch.setattr(masked, "MIN_GAIN", 0.0)  # any saving
    torch.manual_seed(1)
    make = lambda: torch.nn.Sequential(  # noqa: E731
        tnsim.nn.BilinearAttention(16, 4, n_heads=2, residual=True),
        tnsim.nn.BilinearAttention(16, 4, n_heads=2, residual=True),
    ).double()
    est, dense = priced_as_run(make(), make(), monkeypatch)
    assert est < 0.8 * dense


def test_a_mask_between_two_outputs_fills_blocks(always):
    """Both mask indices open (the tensor metric's position identity between two output
    positions, a causal mask between two): each row fills the block of its support; a row
    support that is not a range of positions cannot be a block, so that mask stays dense."""
    g = torch.Generator().manual_seed(5)
    inputs, output = ["ts", "tiv", "sjv"], "tisj"
    sizes = dict(t=4, s=4, i=3, j=2, v=5)
    operands = [torch.randn([sizes[i] for i in x], generator=g, dtype=torch.float64) for x in inputs[1:]]
    for mask in (torch.eye(4, dtype=torch.float64), causal(scale=0.5)):
        arrays = [mask] + operands
        con = contraction(inputs, output, sizes)
        masks = masked._masks(con.equation, arrays)
        assert [(m.t, m.s) for m in masks] == [("t", "s")]
        plan = masked._rows(con.equation, tuple(masks), 8, None)
        got = masked.run_masked(plan, con.equation, arrays)
        torch.testing.assert_close(got, einsum(inputs, output, arrays), rtol=1e-12, atol=1e-12)
    scattered = torch.tensor([[1.0, 0, 1.0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]], dtype=torch.float64)
    con = contraction(inputs, output, sizes)
    assert masked._masks(con.equation, [scattered] + operands) == []


def test_cost_prices_the_embedding_step_by_position(monkeypatch):
    """The tensor metric's position identity (a kernel piece, see
    TensorKernel.linear_parts) is priced as it runs, position by position: the estimate's
    flops are the run's, and below the dense ones."""
    monkeypatch.setattr(masked, "MIN_FLOPS", 0)
    monkeypatch.setattr(masked, "MIN_GAIN", 0.0)
    torch.manual_seed(2)
    make = lambda: torch.nn.Sequential(  # noqa: E731
        tnsim.nn.Embedding(40, 6, n_ctx=3, positional=True),
        tnsim.nn.BilinearAttention(6, 3, residual=True),
        tnsim.nn.Unembedding(6, 40),
    ).double()
    est, dense = priced_as_run(make(), make(), monkeypatch)
    assert est < dense
