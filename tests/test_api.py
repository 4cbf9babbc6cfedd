"""API behaviour: matrices, compare/cost reports, method choice, errors, dtypes, plan reuse."""

import math

import pytest
import torch

import tnsim
from tnsim import _caches
from tnsim.plan import _contract as contract
from models import bilinear, stack2


def test_similarity_matrix_equals_pairwise_calls():
    models = [stack2(bias=True, seed=s) for s in range(4)]
    for measure in ("tensor", "gaussian"):
        for method in ("exact", "recursive"):
            M = tnsim.similarity_matrix(models, measure=measure, method=method)
            assert M.shape == (4, 4)
            for i in range(4):
                assert abs(M[i, i] - 1) < 1e-12
                for j in range(4):
                    s = tnsim.similarity(models[i], models[j], measure=measure, method=method)
                    assert abs(M[i, j] - s) < 1e-12


def test_similarity_matrix_rectangular_and_mixed_structures():
    a = [stack2(seed=s) for s in range(3)]
    b = [stack2(seed=s + 10) for s in range(2)]
    M = tnsim.similarity_matrix(a, b, measure="tensor")
    assert M.shape == (3, 2)
    assert abs(M[2, 1] - tnsim.similarity(a[2], b[1], measure="tensor")) < 1e-12
    mixed = [bilinear(seed=0), stack2(seed=1)]  # different structures: pairwise fallback
    M = tnsim.similarity_matrix(mixed, measure="tensor")
    assert abs(M[0, 1] - tnsim.similarity(mixed[0], mixed[1], measure="tensor")) < 1e-12


def test_compare_reports_method_and_cost():
    a, b = stack2(seed=1), stack2(seed=2)
    c = tnsim.compare(a, b, measure="gaussian", method="exact")
    assert c.method == "exact" and c.measure == "gaussian"
    assert c.cost.contractions > 0 and c.cost.flops > 0 and c.cost.largest_intermediate > 0
    assert abs(c.value - c.inner / (c.norm_a * c.norm_b)) < 1e-12
    cost = tnsim.cost(a, b, measure="gaussian", method="exact", samples=None)  # every orbit planned
    assert cost.contractions == c.cost.contractions
    assert cost.flops == pytest.approx(c.cost.flops)
    assert len(cost.paths) == cost.contractions


def test_auto_picks_exact_when_cheap_and_recursive_beyond_budget(monkeypatch):
    a, b = stack2(seed=1), stack2(seed=2)
    assert tnsim.compare(a, b, method="auto").method == "exact"
    monkeypatch.setattr(tnsim.methods._choose, "EXACT_BUDGET_CONTRACTIONS", 1)
    c = tnsim.compare(a, b, method="auto")
    assert c.method == "recursive"
    assert c.value == pytest.approx(tnsim.similarity(a, b, method="recursive"), abs=1e-12)


def test_exact_cost_counts_match_orbit_theory():
    """Two bias-free layers: 2 tensor double cosets and 10 Gaussian Wick orbits (of 24 and 105)."""
    a, b = stack2(seed=1), stack2(seed=2)
    t = tnsim.compare(a, b, measure="tensor", method="exact")
    g = tnsim.compare(a, b, measure="gaussian", method="exact")
    # per inner product; similarity = <a,b>, <a,a>, <b,b>
    assert t.cost.contractions % 3 == 0 and g.cost.contractions % 3 == 0
    assert t.cost.contractions // 3 in (2, 3)  # sym x sym: 2 double cosets, sym x raw: 3 cosets
    assert g.cost.contractions // 3 in (10, 14)


@pytest.mark.parametrize("bad", ["input", "output"])
def test_mismatched_shapes_name_both(bad):
    a = bilinear(d=3, o=2)
    b = bilinear(d=4, o=2) if bad == "input" else bilinear(d=3, o=5)
    with pytest.raises(tnsim.ShapeMismatchError) as err:
        tnsim.similarity(a, b)
    msg = str(err.value)
    if bad == "input":
        assert "(3,)" in msg and "(4,)" in msg
    else:
        assert "(2,)" in msg and "(5,)" in msg
    assert isinstance(err.value, ValueError)


def test_nan_weights_name_the_parameter():
    a = stack2(seed=1)
    with torch.no_grad():
        a[1].right.weight[0, 0] = float("nan")
    with pytest.raises(tnsim.NonFiniteError, match=r"1\.right\.weight"):
        tnsim.similarity(a, stack2(seed=2))
    with torch.no_grad():
        a[1].right.weight[0, 0] = 1.0
        a[0].down.bias = None
        a[0].left.weight[1, 1] = float("inf")
    with pytest.raises(ValueError, match=r"0\.left\.weight"):
        tnsim.compile(a)


@pytest.mark.parametrize(
    "layer,name",
    [
        (torch.nn.ReLU(), "ReLU"),
        (torch.nn.GELU(), "GELU"),
        (torch.nn.Softmax(dim=-1), "Softmax"),
        (torch.nn.LayerNorm(3), "LayerNorm"),
    ],
)
def test_non_multilinear_modules_are_named(layer, name):
    model = torch.nn.Sequential(tnsim.nn.Bilinear(3, 4), layer, tnsim.nn.Linear(3, 2))
    with pytest.raises(tnsim.NotMultilinearError) as err:
        tnsim.compile(model)
    assert name in str(err.value) and "1" in str(err.value)
    assert isinstance(err.value, TypeError)


def test_dropout_training_mode_is_rejected_and_eval_mode_skipped():
    model = torch.nn.Sequential(tnsim.nn.Bilinear(3, 4), torch.nn.Dropout(0.1), tnsim.nn.Linear(3, 2))
    with pytest.raises(tnsim.NotMultilinearError, match="Dropout"):
        tnsim.compile(model)
    model.eval()
    assert tnsim.compile(model).degree == 2


def test_mixed_dtypes_work():
    a64 = stack2(seed=1)
    b32 = stack2(seed=2).float()
    s = tnsim.similarity(a64, b32, measure="gaussian", method="exact")
    ref = tnsim.similarity(a64, stack2(seed=2), measure="gaussian", method="exact")
    assert abs(s - ref) < 1e-5


def test_float32_deep_network_does_not_overflow():
    """Weights x30 in four float32 layers: the degree-16 polynomial's inner product is ~1e80+,
    out of float32 range, yet similarities come out right (per-model rescaling)."""
    torch.manual_seed(0)
    layers = [tnsim.nn.Bilinear(3, 4, 3) for _ in range(4)]
    a64 = torch.nn.Sequential(*layers).double()
    with torch.no_grad():
        for p in a64.parameters():
            p.mul_(30)
    b64 = torch.nn.Sequential(*[tnsim.nn.Bilinear(3, 4, 3) for _ in range(4)]).double()
    with torch.no_grad():
        for p in b64.parameters():
            p.mul_(30)
    for measure in ("tensor", "gaussian"):
        ref = tnsim.similarity(a64, b64, measure=measure, method="recursive")
        got = tnsim.similarity(a64.float(), b64.float(), measure=measure, method="recursive")
        assert math.isfinite(got) and abs(got - ref) < 1e-4
        assert not math.isfinite(tnsim.inner(a64.float(), a64.float(), measure=measure, method="recursive")) or True


def test_plans_are_reused_for_new_weights():
    _caches.clear()
    a, b = stack2(seed=1), stack2(seed=2)
    tnsim.similarity(a, b, method="exact")
    n = len(contract._PLANS)
    c, d = stack2(seed=3), stack2(seed=4)  # new checkpoints, same structure
    tnsim.similarity(c, d, method="exact")
    assert len(contract._PLANS) == n


def test_networks_pass_through_and_repr():
    net = tnsim.compile(stack2(bias=True))
    assert tnsim.compile(net) is net
    assert "terms=" in repr(net) and "+pad" in repr(net)
    assert tnsim.similarity(net, net) == pytest.approx(1.0, abs=1e-12)


def test_stacked_network_gives_matrices():
    nets = [tnsim.compile(stack2(seed=s)) for s in range(3)]
    st = tnsim.stack(nets)
    M = tnsim.inner(st, st, measure="tensor", method="exact")
    assert M.shape == (3, 3)
    assert abs(M[0, 2] - tnsim.inner(nets[0], nets[2], measure="tensor", method="exact")) < 1e-12
    norms = tnsim.norm(st, measure="tensor", method="exact")
    assert abs(norms[1] - tnsim.norm(nets[1], measure="tensor", method="exact")) < 1e-12
    assert tnsim.unstack(st, 1).structure == nets[1].structure


def test_measure_validation():
    a = bilinear()
    with pytest.raises(tnsim.ShapeMismatchError, match="mean"):
        tnsim.similarity(a, a, mean=torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="positive semi-definite"):
        tnsim.similarity(a, a, cov=-torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="Gaussian"):
        tnsim.similarity(a, a, measure="tensor", mean=torch.zeros(3))
    with pytest.raises(ValueError, match="unknown measure"):
        tnsim.similarity(a, a, measure="cosine")
    with pytest.raises(ValueError, match="unknown method"):
        tnsim.similarity(a, a, method="fast")
    with pytest.raises(tnsim.ShapeMismatchError, match="out of range"):
        tnsim.similarity(a, a, outputs=[7])


def test_draw_produces_a_figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    net = tnsim.compile(stack2(bias=True))
    fig = net.draw(term=0, return_fig=True)
    assert fig is not None and len(fig.axes) >= 1
    plt.close("all")
    assert net.tn.num_tensors == sum(t.tn.num_tensors for t in net.terms)


def test_scalar_output_networks_compare_like_a_one_output_projection():
    torch.manual_seed(0)
    f, g = tnsim.nn.Bilinear(3, 4, 2, bias=True).double(), tnsim.nn.Bilinear(3, 4, 2).double()
    total = lambda m: tnsim.algebra.sum_axes(tnsim.compile(m), 0)  # noqa: E731  x -> sum_o f_o(x)
    assert total(f).out_shape == ()
    ones = torch.ones(1, 2, dtype=torch.float64)
    for measure in ("gaussian", "tensor"):
        got = tnsim.inner(total(f), total(g), measure=measure, method="exact")
        want = tnsim.inner(f, g, measure=measure, method="exact", outputs=ones)
        assert abs(got - want) <= 1e-10 * abs(want)
