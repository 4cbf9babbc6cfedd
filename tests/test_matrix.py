"""similarity_matrix: blocks, symmetry, rectangles, mixed structures, budgets, results files."""

import numpy as np
import pytest
import torch

import tnsim
from tnsim import baselines
from tnsim.methods import _matrix as matrix
from models import bilinear, residual_stack, stack2

RTOL = 1e-12


def pairwise(models_a, models_b, **kw):
    return torch.tensor(
        [[tnsim.similarity(a, b, **kw) for b in models_b] for a in models_a], dtype=torch.float64
    )


@pytest.mark.parametrize("measure", ["tensor", "gaussian"])
@pytest.mark.parametrize("method", ["exact", "recursive"])
def test_blocks_and_mirroring_equal_the_pairwise_matrix(measure, method):
    # (exact Gaussian with biases at depth 2 has ~100 orbits: keep that case bias-free)
    bias = not (measure == "gaussian" and method == "exact")
    models = [stack2(bias=bias, seed=s) for s in range(5)]
    ref = pairwise(models, models, measure=measure, method=method)
    one = tnsim.similarity_matrix(models, measure=measure, method=method, block_size=5, progress=False)
    plan = matrix.plan_matrix(models, measure=measure, method=method, block_size=2)
    assert [c.rows for c in plan.chunks_a] == [(0, 1), (2, 3), (4,)]
    assert plan.blocks == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]  # upper triangle only
    blocked = tnsim.similarity_matrix(models, measure=measure, method=method, block_size=2, progress=False)
    for M in (one, blocked):
        assert M.dtype == torch.float64 and M.shape == (5, 5)
        torch.testing.assert_close(M, ref, rtol=RTOL, atol=RTOL)
        assert torch.equal(M, M.T)  # exactly symmetric (mirrored, diagonal blocks from one triangle)
    torch.testing.assert_close(torch.diagonal(blocked), torch.ones(5, dtype=torch.float64), rtol=0, atol=1e-12)


def test_symmetric_run_computes_each_unordered_block_once(monkeypatch):
    models = [bilinear(seed=s) for s in range(6)]
    calls = []
    original = matrix.block_task

    def spy(stack_a, stack_b, spec, *args):
        calls.append((stack_a.batch, stack_b.batch))
        return original(stack_a, stack_b, spec, *args)

    monkeypatch.setattr(matrix, "block_task", spy)
    tnsim.similarity_matrix(models, measure="tensor", method="exact", block_size=2, progress=False)
    assert len(calls) == 6  # 3 chunks: 3 diagonal + 3 off-diagonal blocks, not 9
    calls.clear()
    tnsim.similarity_matrix(models, models, measure="tensor", method="exact", block_size=2, progress=False)
    assert len(calls) == 9  # a rectangle (even of equal lists) computes every block


@pytest.mark.parametrize("method", ["exact", "recursive"])
def test_rectangular_matrix(method):
    a = [stack2(seed=s) for s in range(3)]
    b = [stack2(seed=s + 10) for s in range(4)]
    ref = pairwise(a, b, measure="gaussian", method=method)
    for bs in (None, 1, 2):
        M = tnsim.similarity_matrix(a, b, measure="gaussian", method=method, block_size=bs, progress=False)
        assert M.shape == (3, 4)
        torch.testing.assert_close(M, ref, rtol=RTOL, atol=RTOL)
    full = tnsim.similarity_matrix(a + b, measure="gaussian", method=method, block_size=3, progress=False)
    torch.testing.assert_close(full[:3, 3:], ref, rtol=RTOL, atol=RTOL)


def test_mixed_structures_are_grouped_and_batched_per_group():
    models = [bilinear(seed=0), stack2(seed=1), bilinear(seed=2), stack2(seed=3), bilinear(seed=4)]
    plan = matrix.plan_matrix(models, measure="tensor", method="exact")
    assert [c.rows for c in plan.chunks_a] == [(0, 2, 4), (1, 3)]
    assert plan.blocks == [(0, 0), (0, 1), (1, 1)]
    M = tnsim.similarity_matrix(models, measure="tensor", method="exact", progress=False)
    torch.testing.assert_close(M, pairwise(models, models, measure="tensor", method="exact"), rtol=RTOL, atol=RTOL)


def test_stacked_network_input_and_options():
    models = [residual_stack(layers=1, bias=True, seed=s) for s in range(3)]
    st = tnsim.stack([tnsim.compile(m) for m in models])
    mean = torch.linspace(-0.5, 0.5, 3, dtype=torch.float64)
    kw = dict(measure="gaussian", method="exact", mean=mean, centred=True, outputs=[1])
    M = tnsim.similarity_matrix(st, progress=False, **kw)
    torch.testing.assert_close(M, pairwise(models, models, **kw), rtol=RTOL, atol=RTOL)
    with pytest.raises(tnsim.StructureError, match="list"):
        tnsim.similarity_matrix(tnsim.compile(models[0]))


def test_memory_budget_shrinks_blocks_and_refuses_what_cannot_fit():
    models = [stack2(seed=s) for s in range(6)]
    big = matrix.plan_matrix(models, measure="gaussian", method="exact", block_size=6)
    need = matrix._block_bytes(big.chunks_a[0].stack, big.chunks_a[0].stack, big.spec(0, 0))
    small = matrix.plan_matrix(models, measure="gaussian", method="exact", block_size=6, memory=need / 3)
    assert small.block_size < 6
    for c in small.chunks_a:
        assert matrix._block_bytes(c.stack, c.stack, small.spec(0, 0)) <= need / 3
    M = matrix.run_plan(small, progress=False)
    torch.testing.assert_close(M, tnsim.similarity_matrix(models, block_size=6, progress=False), rtol=RTOL, atol=RTOL)
    with pytest.raises(tnsim.UnaffordableError, match=r"MiB.*memory budget"):
        tnsim.similarity_matrix(models, memory=64, progress=False)


def test_default_block_size_uses_symmetry_and_the_cache_target():
    assert matrix.default_block_size(24, 24, True) == 12
    assert matrix.default_block_size(5, 5, True) == 5
    assert matrix.default_block_size(30, 7, False) == 30
    # intermediates grow like size^2: 100 bytes per pair, target 6400 bytes -> 8 models
    assert matrix.default_block_size(64, 64, True, probe=lambda s: 100.0 * s * s, target=6400) == 8
    # one pair already over the target (large contractions): no stacking at all
    assert matrix.default_block_size(64, 64, True, probe=lambda s: 1e4 * s * s, target=6400) == 1
    # between the two: never below MIN_CHUNK
    assert matrix.default_block_size(64, 64, True, probe=lambda s: 1e3 * s * s, target=6400) == matrix.MIN_CHUNK


def test_progress_bar(monkeypatch, capsys):
    models = [bilinear(seed=s) for s in range(4)]
    tnsim.similarity_matrix(models, block_size=2, progress=False)
    assert "similarity blocks" not in capsys.readouterr().err
    monkeypatch.setattr(matrix, "PROGRESS_DELAY", 0.0)
    tnsim.similarity_matrix(models, block_size=2)
    err = capsys.readouterr().err
    assert "similarity blocks" in err and "3/3" in err


def test_baseline_names_dispatch_to_the_baselines_registry(monkeypatch):
    seen = {}

    def fake(models, models_b=None, **options):
        seen.update(n=len(models), b=models_b, **options)
        return torch.zeros(len(models), len(models))

    monkeypatch.setitem(baselines.METRICS, "fake", fake)
    out = tnsim.similarity_matrix([bilinear(), bilinear()], measure="fake", samples=7)
    assert out.shape == (2, 2) and seen == {"n": 2, "b": None, "samples": 7}
    with pytest.raises(ValueError, match="unknown measure"):
        tnsim.similarity_matrix([bilinear()], measure="nope")


# --- results files -------------------------------------------------------------------------


class Interrupt(Exception):
    pass


def test_results_file_resumes_without_recomputing_finished_blocks(tmp_path, monkeypatch):
    models = [stack2(seed=s) for s in range(6)]
    path = tmp_path / "run.npz"
    kw = dict(measure="gaussian", method="exact", block_size=2, progress=False)
    reference = tnsim.similarity_matrix(models, **kw)
    original = matrix.block_task
    computed = []

    def flaky(stack_a, stack_b, spec, *args):
        if len(computed) == 3:
            raise Interrupt("killed after 3 blocks")
        out = original(stack_a, stack_b, spec, *args)
        computed.append(out)
        return out

    monkeypatch.setattr(matrix, "block_task", flaky)
    with pytest.raises(Interrupt):
        tnsim.similarity_matrix(models, results=path, **kw)
    with np.load(path) as z:
        done = z["done"]
    assert done.sum() == 4 + 8 + 8  # blocks (0,0), (0,1) and its mirror, (0,2) and its mirror

    computed.clear()
    monkeypatch.setattr(matrix, "block_task", lambda *a: computed.append(1) or original(*a))
    resumed = tnsim.similarity_matrix(models, results=path, **kw)
    assert len(computed) == 6 - 3  # only the unfinished blocks
    assert torch.equal(resumed, reference)
    computed.clear()
    again = tnsim.similarity_matrix(models, results=path, **kw)  # all done: nothing computed
    assert computed == [] and torch.equal(again, reference)


@pytest.mark.parametrize("square", [True, False])
def test_results_file_keeps_the_norms_of_an_interrupted_run(tmp_path, monkeypatch, square):
    """A run interrupted before its first block has saved every per-model norm; the resumed
    run computes none of them again and gives the uninterrupted matrix bit for bit."""
    models = [stack2(seed=s) for s in range(5)]
    left, right = (models, None) if square else (models[:3], models[3:])
    path = tmp_path / "run.npz"
    kw = dict(measure="gaussian", method="exact", block_size=2, progress=False)
    reference = tnsim.similarity_matrix(left, right, **kw)
    original_block, original_norm = matrix.block_task, matrix.norm_task
    norms = []

    def interrupted(*args):
        raise Interrupt("killed before the first block")

    monkeypatch.setattr(matrix, "norm_task", lambda *a: norms.append(1) or original_norm(*a))
    monkeypatch.setattr(matrix, "block_task", interrupted)
    with pytest.raises(Interrupt):
        tnsim.similarity_matrix(left, right, results=path, **kw)
    chunks = len(norms)
    assert chunks == (3 if square else 2 + 1)
    with np.load(path) as z:
        assert not z["done"].any() and z["norms_a_done"].all()
        assert z["norms_b_done"].all() == (not square)
    norms.clear()
    monkeypatch.setattr(matrix, "block_task", original_block)
    resumed = tnsim.similarity_matrix(left, right, results=path, **kw)
    assert norms == [] and torch.equal(resumed, reference)


def test_results_file_refuses_other_settings_and_names_the_file(tmp_path):
    models = [bilinear(seed=s) for s in range(3)]
    path = tmp_path / "run.npz"
    tnsim.similarity_matrix(models, measure="tensor", results=path, progress=False)
    with pytest.raises(tnsim.CheckpointError, match=r"run\.npz.*measure"):
        tnsim.similarity_matrix(models, measure="gaussian", results=path, progress=False)
    other = [bilinear(seed=s + 5) for s in range(3)]  # same structure, other weights
    with pytest.raises(tnsim.CheckpointError, match="weights"):
        tnsim.similarity_matrix(other, measure="tensor", results=path, progress=False)
    path.write_bytes(b"not a zip archive")
    with pytest.raises(tnsim.CheckpointError, match=r"run\.npz.*corrupt"):
        tnsim.similarity_matrix(models, measure="tensor", results=path, progress=False)
    assert isinstance(tnsim.CheckpointError("x"), ValueError)


def test_long_orbit_loops_show_progress_unless_quiet(monkeypatch, capsys):
    from tnsim.plan import _contract as contract

    monkeypatch.setattr(contract, "PROGRESS_DELAY", 0.0)
    monkeypatch.setattr(contract, "PROGRESS_MIN_ORBITS", 2)
    a, b = bilinear(seed=1), bilinear(seed=2)
    value = tnsim.inner(a, b, method="exact")  # 2 Gaussian orbits per inner product
    assert "exact orbits" in capsys.readouterr().err
    with contract.quiet():
        assert tnsim.inner(a, b, method="exact") == value
    assert "exact orbits" not in capsys.readouterr().err
    tnsim.similarity_matrix([a, b], method="exact", progress=False)  # blocks are quiet
    assert "exact orbits" not in capsys.readouterr().err
