"""Symmetries experiment: every transformed copy computes the original's function (checked by
forward passes, independently of tnsim), function-level metrics see 1 and weight-level ones
do not."""

import pytest
import torch
from test_experiments import check_outputs  # the checks every experiment's output passes

from tnsim.experiments import deep
from tnsim.experiments import symmetries as S


@pytest.fixture(scope="module")
def model():
    g = torch.Generator().manual_seed(3)
    return deep.randomise(deep.pure_stack([6, 5, 3], 7, bias=True).double(), g)


def test_every_copy_computes_the_same_function(model, rng):
    x = torch.randn(1000, 6, generator=rng, dtype=torch.float64)
    cps = S.copies(model, S.MODES["quick"], torch.Generator().manual_seed(0))
    assert set(cps) == set(S.TRANSFORMS)
    with torch.no_grad():
        y = model(x)
        for label, c in cps.items():
            assert torch.allclose(c(x), y, rtol=0, atol=1e-12 * float(y.abs().max())), label
            changed = [not torch.equal(p, q) for p, q in zip(model.parameters(), c.parameters())]
            assert any(changed), label


def test_hidden_permutation_changes_matrix_cosine_but_not_hidden_products(model, rng):
    c = deep.permute_hidden(model, rng)
    x = torch.randn(50, 6, generator=rng, dtype=torch.float64)
    with torch.no_grad():
        h, hc = model[0].left(x) * model[0].right(x), c[0].left(x) * c[0].right(x)
    # the same set of hidden products, in another order
    assert torch.allclose(h.sort(1).values, hc.sort(1).values, atol=1e-12)
    assert not torch.allclose(h, hc)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("symmetries")
    return out, S.run(out, mode="quick", progress=False, log=lambda _: None)


def test_quick_run_function_metrics_are_one_weight_metrics_are_not(quick):
    out, res = quick
    check_outputs(out, ["symmetries.png"])
    rows = {r["copy"]: r for r in res["rows"]}
    for label in S.TRANSFORMS:
        r = rows[label]
        assert r["max output difference (random inputs)"] < 1e-12, label
        for m in ("tensor", "Gaussian N(0,I)", "output cosine (test digits)"):
            assert r[m] == pytest.approx(1, abs=1e-9), (label, m)
        assert r["parameter cosine"] < 0.99, label
    assert rows["permuted"]["matrix cosine"] < 0.5
    assert rows["L↔R swapped"]["matrix cosine"] < 0.9
    # CKA is invariant to orthogonal maps of the hidden units (permutations) and to anything
    # that leaves the products L x * R x unchanged; not to per-unit rescaling of the products
    # (D compensating) nor to a non-orthogonal basis change of the bond
    for label in ("permuted", "rescaled L·c, R/c", "L↔R swapped", "gauge on the bond"):
        assert rows[label]["CKA, last hidden layer"] == pytest.approx(1, abs=1e-9), label
    assert rows["rescaled L·c, D/c"]["CKA, last hidden layer"] < 0.999
    assert rows["gauge on the bond"]["CKA, bond between layers"] < 0.999
    ref = rows[next(k for k in rows if k.startswith("reference"))]
    assert ref["tensor"] < 0.9 and ref["Gaussian N(0,I)"] < 0.9
