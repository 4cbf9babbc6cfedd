"""The recursive method's steps for language-model-shaped stacks.

An embedding is propagated as its own exact linear step (the state is then d_model-wide, not
vocab-wide), an unembedding closes the last state with the output maps, and blocks of copies
are pre-contracted with their readers once per term pair (read-through). Each is checked
against an independent computation: the exact method where the recursive one must agree with
it (one non-linear layer), and the same recursive computation with the optimisation off.
"""

from __future__ import annotations

import pytest
import torch

import tnsim
import tnsim.methods._recursive as recursive_module
import tnsim.plan._contract as contract
import tnsim.plan._readers as readers

V, D, N = 5, 4, 3


def lm(seed: int, layers: int = 2, positional: bool = True, heads: int = 2) -> torch.nn.Module:
    torch.manual_seed(seed)
    blocks = [tnsim.nn.BilinearAttention(D, N, n_heads=heads, residual=True) for _ in range(layers)]
    return torch.nn.Sequential(
        tnsim.nn.Embedding(V, D, n_ctx=N, positional=positional), *blocks, tnsim.nn.Unembedding(D, V)
    ).double()


def spy_returns(monkeypatch, module, name: str) -> list[bool]:
    """Replace ``module.name`` by a wrapper recording, per call, whether it returned something."""
    returned, real = [], getattr(module, name)

    def wrapper(*args):
        out = real(*args)
        returned.append(out is not None)
        return out

    monkeypatch.setattr(module, name, wrapper)
    return returned


def values(a, b, measure):
    return (
        tnsim.inner(a, b, measure=measure, method="recursive"),
        tnsim.norm(a, measure=measure, method="recursive"),
        tnsim.similarity(a, b, measure=measure, method="recursive"),
    )


@pytest.mark.parametrize("measure", ["tensor", "gaussian"])
def test_one_attention_layer_between_embeddings_is_exact(measure):
    """Embedding -> attention -> unembedding: one non-linear layer, so the recursive method
    (embedding step, layer step, closing step) must equal the exact method."""
    a, b = lm(1, layers=1), lm(2, layers=1)
    for x, y in ((a, b), (a, a), (b, a)):
        want = tnsim.inner(x, y, measure=measure, method="exact")
        got = tnsim.inner(x, y, measure=measure, method="recursive")
        assert got == pytest.approx(want, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("measure", ["tensor", "gaussian"])
def test_embedding_step_equals_the_fused_layer(measure, monkeypatch):
    """Propagating the embedding on its own gives the same numbers as fusing it into the first
    attention layer (what the method did before; exact algebra, so agreement to rounding)."""
    a, b = lm(1), lm(2)
    split = values(a, b, measure)
    calls = []
    real_side = recursive_module._side

    def spy(net, split):
        layers, close = real_side(net, split)
        calls.append((len(layers), close is not None))
        return layers, close

    monkeypatch.setattr(recursive_module, "_side", spy)
    values(a, b, measure)
    assert calls[0] == (3, True)  # embedding, two attention layers; the unembedding closes
    monkeypatch.setattr(recursive_module, "_shrinks", lambda net: False)  # fuse the embedding
    tnsim.clear_cache(disk=False)
    calls.clear()
    fused = values(a, b, measure)
    assert calls[0] == (2, True)
    for s, f in zip(split, fused):
        assert s == pytest.approx(f, rel=1e-9)


@pytest.mark.parametrize("measure", ["tensor", "gaussian"])
def test_read_through_changes_no_value(measure, monkeypatch):
    """Blocks pre-contracted with their readers give the orbit sums of the plain loop."""
    a, b = lm(3), lm(4)
    used = spy_returns(monkeypatch, contract, "read_through")
    with_read = values(a, b, measure)
    assert any(used)
    monkeypatch.setattr(contract, "read_through", lambda *args: None)
    tnsim.clear_cache(disk=False)
    plain = values(a, b, measure)
    for r, p in zip(with_read, plain):
        assert r == pytest.approx(p, rel=1e-10)


@pytest.mark.parametrize("measure", ["tensor", "gaussian"])
def test_diagonal_readers_scale_and_change_no_value(measure, monkeypatch):
    """A residual's reader is a diagonal matrix (the identity off the pad coordinate): its
    block is the state piece scaled along one leg, not a matrix product (single models and
    stacks alike)."""
    a, b = lm(5), lm(6)
    found = spy_returns(monkeypatch, readers, "_diagonal")
    skipped = values(a, b, measure)
    matrix = tnsim.similarity_matrix([a, b], measure=measure, method="recursive", block_size=2, progress=False)
    assert any(found) and not all(found)  # W_Q, W_K, W_V multiplied; the residual's x scaled
    monkeypatch.setattr(readers, "_diagonal", lambda *args: None)
    tnsim.clear_cache(disk=False)
    multiplied = values(a, b, measure)
    for s, m in zip(skipped, multiplied):
        assert s == pytest.approx(m, rel=1e-10)
    assert float(matrix[0, 1]) == pytest.approx(multiplied[2], rel=1e-9)


def test_read_through_in_a_matrix_of_stacks():
    """Model stacks (batch axes on readers and states) give the pairwise values."""
    models = [lm(s) for s in range(3)]
    m = tnsim.similarity_matrix(models, measure="tensor", method="recursive", block_size=2, progress=False)
    for i in range(3):
        for j in range(3):
            want = tnsim.similarity(models[i], models[j], measure="tensor", method="recursive")
            assert float(m[i, j]) == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_lm_cost_reports_an_estimated_time():
    models = [lm(s) for s in range(4)]
    c = tnsim.cost(models, measure="tensor", method="recursive", block_size=2)
    assert c.seconds > 0 and c.blocks == 3 and c.contractions > 0


@pytest.mark.parametrize("measure", ["tensor", "gaussian"])
def test_matrix_propagates_each_model_against_itself_once(measure, monkeypatch):
    """A recursive matrix computes every model's chain (its states against itself) once per
    chunk and reuses it in every block: the values are the pairwise ones, and the number of
    chains computed is the number of chunks, not two per block."""
    models = [lm(s) for s in range(4)]
    built = []
    real = recursive_module._chain

    def spy(prepared, net, *args):
        if not contract.is_dry():  # block sizing prices one block first, contracting nothing
            built.append(net.batch)
        return real(prepared, net, *args)

    monkeypatch.setattr(recursive_module, "_chain", spy)
    m = tnsim.similarity_matrix(models, measure=measure, method="recursive", block_size=1, progress=False)
    assert len(built) == 4  # 4 chunks of one model; 10 blocks would have built 20 chains
    for i in range(4):
        for j in range(4):
            want = tnsim.similarity(models[i], models[j], measure=measure, method="recursive")
            assert float(m[i, j]) == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_chains_over_the_memory_budget_are_recomputed_per_block(monkeypatch):
    """Chains that do not fit the memory budget are not kept; blocks recompute them and the
    matrix is unchanged."""
    import tnsim.methods._matrix as matrix_module

    models = [lm(s) for s in range(3)]
    kept = tnsim.similarity_matrix(models, measure="gaussian", method="recursive", block_size=1, progress=False)
    monkeypatch.setattr(matrix_module, "chain_budget", lambda: 1.0)
    built = []
    real = recursive_module._chain

    def spy(*args):
        if not contract.is_dry():
            built.append(1)
        return real(*args)

    monkeypatch.setattr(recursive_module, "_chain", spy)
    dropped = tnsim.similarity_matrix(models, measure="gaussian", method="recursive", block_size=1, progress=False)
    # 3 chunks computed and dropped, then 3 diagonal blocks (one chain each: a model with
    # itself) and 3 off-diagonal blocks (two each)
    assert len(built) == 3 + 3 + 6
    assert torch.allclose(kept, dropped, rtol=1e-12, atol=0)


@pytest.mark.parametrize("measure", ["tensor", "gaussian"])
def test_peeling_changes_no_value(measure, monkeypatch):
    """Tensors shared by every orbit of a term pair (W_O, output maps) applied once to the
    orbit sum give the plain loop's values; at these tiny sizes peeling is forced on."""
    import tnsim.plan._peel as peel_module

    a, b = lm(5), lm(6)
    monkeypatch.setattr(peel_module, "PEEL_MIN_SIZE", 1)
    monkeypatch.setattr(contract, "PEEL_GAIN", -1e9)  # peel wherever the orbit sums allow it
    tnsim.clear_cache(disk=False)
    peeled = values(a, b, measure)
    assert any(v is not None for v in contract._PEELS.values())
    monkeypatch.setattr(contract, "peeling", lambda *args, **kw: None)
    tnsim.clear_cache(disk=False)
    plain = values(a, b, measure)
    for p, q in zip(peeled, plain):
        assert p == pytest.approx(q, rel=1e-10)


@pytest.mark.parametrize("measure", ["tensor", "gaussian"])
def test_peeling_in_the_exact_method_changes_no_value(measure, monkeypatch):
    """The same with the exact method (identity joins, closed outputs through output maps)."""
    import tnsim.plan._peel as peel_module

    a, b = lm(7, layers=1), lm(8, layers=1)
    monkeypatch.setattr(peel_module, "PEEL_MIN_SIZE", 1)
    monkeypatch.setattr(contract, "PEEL_GAIN", -1e9)
    tnsim.clear_cache(disk=False)
    peeled = tnsim.similarity(a, b, measure=measure, method="exact")
    assert any(v is not None for v in contract._PEELS.values())
    monkeypatch.setattr(contract, "peeling", lambda *args, **kw: None)
    tnsim.clear_cache(disk=False)
    assert peeled == pytest.approx(tnsim.similarity(a, b, measure=measure, method="exact"), rel=1e-10)


@pytest.mark.parametrize("layers", [2])
def test_gaussian_first_order_in_closed_form_changes_no_value(layers, monkeypatch):
    """The Gaussian closure's pairings with no a-b pair or one, summed in closed form (the
    means' outer product; J_a C_ab J_b^T with the expected Jacobians from Stein's lemma), give
    the orbit-by-orbit sum; matrices of stacks too."""
    models = [lm(s, layers=layers) for s in (11, 12, 13)]
    fast = [values(models[0], m, "gaussian") for m in models[1:]]
    m_fast = tnsim.similarity_matrix(models, measure="gaussian", method="recursive", block_size=2, progress=False)
    monkeypatch.setattr(recursive_module, "FIRST_ORDER", False)
    tnsim.clear_cache(disk=False)
    slow = [values(models[0], m, "gaussian") for m in models[1:]]
    m_slow = tnsim.similarity_matrix(models, measure="gaussian", method="recursive", block_size=2, progress=False)
    for f, s_ in zip(fast, slow):
        for x, y in zip(f, s_):
            assert x == pytest.approx(y, rel=1e-9)
    assert torch.allclose(m_fast, m_slow, rtol=1e-9, atol=1e-12)


def test_norm_alone_skips_the_expected_jacobians(monkeypatch):
    """norm() needs a model's chain only for its norm: no expected Jacobian is computed, and the
    value is the one similarity's chain gives."""
    a = lm(21)
    calls = []
    real = recursive_module._mean_jacobian

    def spy(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(recursive_module, "_mean_jacobian", spy)
    alone = tnsim.norm(a, measure="gaussian", method="recursive")
    assert not calls
    _, with_pairs, _ = values(a, lm(22), "gaussian")
    assert calls
    assert alone == pytest.approx(with_pairs, rel=1e-12)
