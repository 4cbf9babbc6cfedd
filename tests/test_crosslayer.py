"""Cross-layer experiment: the constructed pairs are what they claim to be, the Monte Carlo
ground truths are right, and the quick run finds what the report says."""

import pytest
import torch
from test_experiments import check_outputs  # the checks every experiment's output passes

import tnsim
from tnsim.experiments import crosslayer as X
from tnsim.experiments import deep

CFG = dict(X.MODES["quick"])


def outputs_equal(a, b, d_in, rng, tol=1e-12):
    x = torch.randn(500, d_in, generator=rng, dtype=torch.float64)
    with torch.no_grad():
        ya, yb = a(x), b(x)
    return float((ya - yb).abs().max() / ya.abs().max()) < tol


@pytest.fixture(scope="module")
def pairs():
    return {p.name: p for p in X.pairs(CFG)}


def test_same_function_pairs_compute_the_same_function(pairs, rng):
    for p in pairs.values():
        assert outputs_equal(p.a, p.b, CFG["d_in"], rng) == p.same_function, p.name
        # ... and are not trivially equal copies: some weight matrix differs
        assert deep.parameter_cosine(p.a, p.b) < 0.999, p.name


def test_read_and_unread_perturbations_have_equal_per_layer_statistics(pairs):
    unread, read = (
        pairs["perturbed where unread (2 layers)"],
        pairs["perturbed where read (2 layers)"],
    )
    assert unread.a is read.a
    for measure in ("tensor", "gaussian"):
        pu, pr = (
            deep.per_layer(unread.a, unread.b, measure),
            deep.per_layer(read.a, read.b, measure),
        )
        assert pu == pytest.approx(pr, abs=1e-12)
        assert min(pu) < 0.99  # the perturbation is visible in layer 1
    mu = tnsim.baselines.matrix_cosine(unread.a, unread.b, per_matrix=True)
    mr = tnsim.baselines.matrix_cosine(read.a, read.b, per_matrix=True)
    assert mu == pytest.approx(mr, abs=1e-12)


def test_work_moved_blocks_really_swap_jobs(pairs):
    p = pairs["blocks' jobs swapped (2 blocks)"]
    blocks_a, blocks_b = list(p.a)[1:-1], list(p.b)[1:-1]
    assert torch.equal(blocks_a[0].down.weight, blocks_b[1].down.weight)
    assert not torch.equal(blocks_a[0].down.weight, blocks_b[0].down.weight)


def test_tensor_monte_carlo_is_the_tensor_similarity(rng):
    """The complex-Gaussian (Fischer) expectation reproduces the exact tensor similarity of
    a random residual pair with biases (padded, mixed degree), within 4 standard errors."""

    def model():
        m = deep.residual_stack(3, 4, 3, 2, 2).double()
        for lin in (m[0], m[-1]):
            lin.bias = torch.nn.Parameter(torch.zeros(lin.out_features, dtype=torch.float64))
        return deep.randomise(m, rng)

    a, b = model(), model()
    est = deep.tensor_mc(a, b, n=400_000, seed=1)
    exact = tnsim.similarity(a, b, measure="tensor", method="exact")
    assert 0.05 < abs(exact) < 0.95  # a non-trivial value
    assert abs(exact - est.value) < 4 * est.stderr, (exact, est)


def test_exact_agrees_with_monte_carlo_on_a_different_function(pairs):
    row = X.compare_pair(pairs["perturbed where read (2 layers)"], {**CFG, "mc_samples": 200_000})
    for measure in ("tensor", "gaussian"):
        assert row[f"{measure} MC stderr"] < 0.01
        assert abs(row[f"{measure} exact z"]) < 4, row


def test_change_basis_errors_name_the_argument(rng):
    res = deep.randomise(deep.residual_stack(3, 4, 3, 2, 2).double(), rng)
    with pytest.raises(tnsim.StructureError, match="start=1"):
        deep.change_basis(res, torch.eye(4), 1, 2)
    with pytest.raises(tnsim.ShapeMismatchError, match="width 4"):
        deep.change_basis(res, torch.eye(3), 0, 3)
    with pytest.raises(tnsim.StructureError, match="stop"):
        deep.change_basis(res, torch.eye(4), 0, 9)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("crosslayer")
    return out, X.run(out, mode="quick", progress=False, log=lambda _: None)


def test_quick_run_finds_who_is_right(quick):
    out, res = quick
    check_outputs(out, ["pairs.png", "heatmaps_depth2.png"])
    rows = {r["pair"]: r for r in res["summary"]["pairs"]}
    for r in rows.values():  # the exact method is right on every pair it ran on
        assert r["tensor exact agrees"] and r["gaussian exact agrees"] in (True, None), r["pair"]
    assert sum(r["gaussian exact agrees"] is True for r in rows.values()) >= 3
    moved = rows["blocks' jobs swapped (2 blocks)"]
    assert not moved["tensor recursive agrees"] and moved["tensor recursive"] < 0.95
    # per-layer statistics cannot tell the read from the unread perturbation; composed can
    read, unread = (
        rows["perturbed where read (2 layers)"],
        rows["perturbed where unread (2 layers)"],
    )
    assert read["per-layer tensor (mean)"] == pytest.approx(unread["per-layer tensor (mean)"])
    assert unread["tensor exact"] > 0.999
    assert read["tensor exact"] < read["per-layer tensor (mean)"] - 0.05


def test_quick_training_per_layer_misses_what_seeds_share(quick):
    _, res = quick
    s = res["summary"]["training"][2]
    m = {r["metric"]: r for r in s["metrics"]}
    composed, layers = m["composed tensor (exact)"], m["per-layer tensor (mean over layers)"]
    # within a run all metrics agree on the order; across seeds per-layer sees ~nothing
    assert s["within_seed_spearman_composed_vs_per_layer"] > 0.8
    assert composed["across seeds"] > 0.05 > abs(layers["across seeds"])
    al = s["alignment"]
    assert al["composed after alignment"] == pytest.approx(al["composed before"], abs=1e-6)
    assert al["per-layer after alignment"] > al["per-layer before"] + 0.05
    assert al["output difference after alignment"] < 1e-5
