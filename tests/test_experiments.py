"""Quick mode of every experiment, asserting on what it finds (not only that it runs)."""

import json

import pytest
import torch

from tnsim import experiments
from tnsim.data import Dataset
from tnsim.experiments import common as C


def quiet(_msg):
    pass


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            out = tmp_path_factory.mktemp(name)
            res = experiments.run(name, out, mode="quick", progress=False, log=quiet)
            cache[name] = (out, res, json.loads((out / "results.json").read_text()))
        return cache[name]

    return get


def check_outputs(out, figures):
    for f in figures:
        data = (out / f).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(data) < 200_000, f
    report = (out / "report.md").read_text()
    for f in figures:
        assert f"]({f})" in report
    json.loads((out / "matrices.json").read_text())


def _end_models(out, phases, names):
    """The saved models at the end of each named phase of seed 0 (loaded from the checkpoints)."""
    from tnsim import checkpoints

    last = {p[0]: p[2] - 1 for p in phases}
    folder = out / "checkpoints" / "seed0"
    return {n: checkpoints.load(folder / f"ckpt_{last[n]:03d}.safetensors") for n in names}


def test_invisible_backdoor_keeps_clean_behaviour_and_tensor_similarity_sees_it(runs):
    from tnsim import baselines, data as D

    out, res, results = runs("backdoor")
    check_outputs(
        out,
        [
            "training.png",
            "heatmaps.png",
            "reference.png",
            "contrasts.png",
            "slices_tensor.png",
            "class_contrasts.png",
            "class_contrasts_classic.png",
        ],
    )
    assert [p[0] for p in results["phases"]["0"]] == ["clean", "control", "invisible", "classic"]
    # clean behaviour, recomputed here from the saved checkpoints: the invisible fine-tune keeps
    # clean test accuracy and the clean logits; the classic one moves the logits far more
    split = D.digits(seed=0)
    m = _end_models(out, results["phases"]["0"], ["clean", "invisible", "classic"])
    with torch.no_grad():
        f0 = m["clean"](split.test.x)
        change = {k: float((m[k](split.test.x) - f0).norm() / f0.norm()) for k in ("invisible", "classic")}
        acc = {k: float((v(split.test.x).argmax(1) == split.test.y).float().mean()) for k, v in m.items()}
        others = split.test.where(split.test.y != 9)
        trig = D.add_trigger(others.x)
        success = float((m["invisible"](trig).argmax(1) == 9).float().mean())
        before = float((m["clean"](trig).argmax(1) == 9).float().mean())
    assert abs(acc["invisible"] - acc["clean"]) <= 0.01
    assert change["invisible"] < 0.05 and change["classic"] > 5 * change["invisible"]
    assert baselines.output_cosine(m["clean"], m["invisible"], split.test.x) > 0.999
    assert success > 0.5 > before + 0.3  # the trigger works, and did not before
    rows = {(r["fine-tune"], r["metric"]): r for r in res["rows"]}
    # tensor similarity sees the invisible fine-tune (well above the control) and its class
    # slices name class 9; output cosine on clean data does not tell it from the control
    assert rows[("invisible", "tensor")]["ratio_to_control"] > 3
    assert rows[("invisible", "tensor")]["flagged"] == 9 and rows[("invisible", "tensor")]["flags_9"] == "1/1"
    assert rows[("invisible", "output cosine (clean test)")]["ratio_to_control"] < 1.5
    # the classic fine-tune: flagged by tensor slices too; contrasts against the whole clean
    # block are inflated by the early checkpoints
    assert rows[("classic", "tensor")]["flagged"] == 9 and rows[("classic", "tensor")]["flags_9"] == "1/1"
    for b in ("invisible", "classic"):
        for metric in ("tensor", "matrix cosine"):
            r = rows[(b, metric)]
            assert r["delta_whole_clean"] > r["delta_late_clean"] > 0
    # for this bias-free model the tensor cosine is the centred Gaussian cosine
    assert results["tensor_equals_centred_gaussian_max_abs_diff"] < 1e-6
    assert results["monte_carlo_check"]["fraction_within_3_stderr"] > 0.95


def test_trainer_branches_from_a_snapshot_reproduce_a_straight_run():
    split = Dataset(torch.randn(40, 3), torch.randint(0, 2, (40,)))

    def trainer():
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2, bias=False)
        return C.Trainer(model, lr=1e-2, weight_decay=0.1, seed=0, batch_size=8,
                         evaluate=lambda m: {}, progress=False)

    straight = trainer()
    straight.stage("a", split, 5, 5)
    straight.stage("b", split, 5, 5)
    branched = trainer()
    branched.stage("a", split, 5, 5)
    snap = branched.snapshot()
    branched.stage("detour", split, 7, 7, penalty=lambda m, idx: m.weight.square().sum())
    branched.restore(snap)
    branched.stage("b", split, 5, 5)
    w_straight = straight.traj.models[-1].weight
    assert torch.equal(branched.traj.models[-1].weight, w_straight)
    assert not torch.equal(branched.traj.models[1].weight, w_straight)  # the detour differed
    assert branched.traj.records[-1]["step"] == 10


def test_forgetting_names_the_forgotten_class(runs):
    out, res, results = runs("forgetting")
    check_outputs(
        out,
        [
            "training.png",
            "heatmaps.png",
            "slices_tensor.png",
            "slices_data_gaussian.png",
            "class_contrasts.png",
            "stage_means.png",
        ],
    )
    rows = {r["metric"]: r for r in res["rows"]}
    # the class slices of the exact Gaussian similarity under the data's moments name class 9
    data_gaussian = experiments.get("forgetting").DATA_GAUSSIAN
    assert rows[data_gaussian]["named_class"] == 9 and rows[data_gaussian]["names_9"] == "1/1"
    assert rows[data_gaussian]["margin"] > 3
    b = {(r["metric"], r["boundary"]): r for r in res["boundaries"]}
    for k in (5, 6, 9):  # and at the stages where classes are added, the class added
        assert b[(data_gaussian, f"+{k}")]["flagged"] == k
    rec = results["records"]["0"]
    last = {p[0]: p[2] - 1 for p in results["phases"]["0"]}
    # class 9 is learnt, (partly) forgotten, and relearnt
    assert rec[last["+9"]]["acc_9"] > 0.8
    assert rec[last["-9"]]["acc_9"] < rec[last["+9"]]["acc_9"] - 0.3
    assert rec[last["+9 again"]]["acc_9"] > rec[last["-9"]]["acc_9"] + 0.3
    assert [p[0] for p in results["phases"]["0"]] == [
        s for s, _ in experiments.get("forgetting").STAGES
    ]


def test_forgetting_the_papers_way_removes_the_class_from_a_two_layer_model(runs):
    from tnsim import checkpoints

    out, res, results = runs("forgetting")
    check_outputs(out, ["deep_training.png", "deep_heatmaps.png", "deep_slices_tensor.png",
                        "deep_class_contrasts.png"])
    deep = results["deep"]
    phases = deep["phases"]["0"]
    assert [p[0] for p in phases] == ["0-9", "control", "-9"]
    # a two-layer model, read back from its checkpoint
    model = checkpoints.load(out / "checkpoints" / "deep" / "seed0" / "ckpt_000.safetensors")
    assert isinstance(model, torch.nn.Sequential) and len(model) == 2
    rec = deep["records"]["0"]
    last = {p[0]: p[2] - 1 for p in phases}
    assert rec[last["control"]]["acc_9"] > 0.7
    assert all(r["acc_9"] < 0.05 for r in rec[phases[2][1] :])  # fully removed throughout −9
    assert sum(rec[last["-9"]][f"acc_{k}"] for k in range(9)) / 9 > 0.7  # the rest still works
    rows = {r["metric"]: r for r in res["deep"]["rows"]}
    data_gaussian = experiments.get("forgetting").DATA_GAUSSIAN
    assert rows[data_gaussian]["named_class"] == 9 and rows[data_gaussian]["names_9"] == "1/1"
    # both Δ definitions are reported for every boundary
    quantities = {(r["metric"], r["quantity"]) for r in res["deep"]["stage_contrast"]}
    assert ("tensor", "delta") in quantities and ("tensor", "delta_paper") in quantities


def test_grokking_memorises_then_generalises(runs):
    out, res, results = runs("grokking")
    check_outputs(out, ["training.png", "heatmaps.png", "frequencies.png", "reference.png"])
    s = res["summary"]
    assert s["memorised_step"] < s["generalised_step"]
    assert s["final_test_accuracy"] > 0.9 and s["final_train_accuracy"] == 1.0
    # the read-out uses the same frequencies as the input weights
    assert len(s["key_frequency_overlap_in_out"]) >= len(s["final_key_in"]) - 1
    assert [p[0] for p in results["phases"]] == ["learning", "memorised", "generalised"]
    for row in s["metrics"]:
        assert row["spearman_vs_frequency_cosine"] > 0.5


def test_distributions_teacher_task_is_solved_everywhere_and_gaussian_is_exact(runs):
    out, res, results = runs("distributions_teacher")
    check_outputs(out, ["scatter.png", "correlations.png"])
    rows = {r["distribution"]: r for r in res["rows"]}
    assert list(rows) == [
        "gaussian",
        "uniform",
        "laplace",
        "student_t",
        "rademacher",
        "sparse",
        "shifted_gaussian",
        "data",
        "data_noise",
    ]
    for name, r in rows.items():
        assert r["accuracy_final"] > r["majority_rate"] + 0.3, name
    # an even (bias-free) student cannot learn the odd part under sign-symmetric inputs
    for name in ("gaussian", "uniform", "rademacher"):
        assert rows[name]["accuracy_even_control"] < rows[name]["accuracy_final"] - 0.3
    # under Gaussian inputs the matched Gaussian similarity *is* the output cosine (up to sampling)
    for name in ("gaussian", "shifted_gaussian"):
        assert rows[name]["mean_abs_diff_matched"] < 0.01 and rows[name]["pearson_matched"] > 0.99
    assert results["pairs"] == len(results["models"]) * (len(results["models"]) - 1) // 2


def test_difference_network_is_the_difference_of_the_functions():
    import tnsim
    from tnsim.experiments import diffing
    from tnsim.nn import Bilinear

    torch.manual_seed(0)
    a, b, g = (Bilinear(5, 4, 3).double() for _ in range(3))
    d = diffing.difference(a, b)
    zero = torch.zeros(5, 5, dtype=torch.float64)
    for _ in range(3):
        # the Gaussian measure N(x0, 0) is the point mass at x0: E[f g] = f(x0) · g(x0)
        x0 = torch.randn(5, dtype=torch.float64)
        with torch.no_grad():
            delta, gx = a(x0) - b(x0), g(x0)
        point = dict(measure="gaussian", mean=x0, cov=zero)
        assert tnsim.inner(d, g, **point) == pytest.approx(float(delta @ gx), rel=1e-9)
        for o in range(3):
            assert tnsim.inner(d, d, outputs=[o], **point) == pytest.approx(float(delta[o] ** 2), rel=1e-9)

    def tensor(m):  # T[o, i, j] = sum_h D[o, h] L[h, i] R[h, j], symmetrised in (i, j)
        with torch.no_grad():
            t = torch.einsum("oh,hi,hj->oij", m.down.weight, m.left.weight, m.right.weight)
        return (t + t.transpose(1, 2)) / 2

    dt, gt = tensor(a) - tensor(b), tensor(g)
    assert tnsim.inner(d, g, measure="tensor") == pytest.approx(float((dt * gt).sum()), rel=1e-9)
    w = diffing.weight_difference(a, b)
    assert torch.equal(w.left.weight, a.left.weight - b.left.weight)
    assert torch.equal(w.down.weight, a.down.weight - b.down.weight)
    with pytest.raises(tnsim.errors.ShapeMismatchError, match="difference"):
        diffing.difference(a, Bilinear(5, 4, 2).double())
    with pytest.raises(tnsim.errors.ShapeMismatchError, match="weight_difference"):
        diffing.weight_difference(a, Bilinear(5, 3, 3).double())


def test_diffing_same_class_added_twice_gives_similar_differences(runs):
    out, res, results = runs("diffing")
    check_outputs(out, ["heatmaps.png", "kinds.png"])
    acc = {r["model"]: r for r in res["accuracy"]}
    assert acc["base"]["acc_8"] == 0 and acc["base"]["acc_9"] == 0
    assert acc["+8"]["acc_8"] > 0.8 and acc["+9"]["acc_9"] > 0.8 and acc["+8"]["acc_9"] == 0
    rows = {r["metric"]: r for r in res["rows"]}
    t, mc = rows["tensor"], rows["matrix cosine of ΔW"]
    assert t["same class, same base"] > t["different class, same base"] + 0.3
    # across bases (hidden units not aligned) tensor similarity still tells the added class
    # apart; the weight-difference cosine barely does
    gap = lambda r: r["same class, other base"] - r["different class, other base"]  # noqa: E731
    assert gap(t) > 0.15 and gap(t) > 3 * gap(mc)
    assert t["nearest_neighbour_same_class"] == 1.0
    sliced = {r["metric"]: r for r in res["slice_rows"]}["tensor"]
    assert sliced["same class, other base"] > sliced["different class, other base"]


def test_trajectories_resume_from_saved_checkpoints(tmp_path):
    model = torch.nn.Linear(3, 2, bias=False)
    calls = []

    def train():
        calls.append(1)
        t = C.Trajectory()
        t.begin("a")
        for s in range(3):
            with torch.no_grad():
                model.weight.add_(1.0)
            t.add(model, step=s)
        t.end()
        return t

    cfg = {"x": 1}
    first = C.cached(tmp_path, cfg, train, log=quiet)
    again = C.cached(tmp_path, cfg, train, log=quiet)
    assert len(calls) == 1 and again.phases == first.phases and again.records == first.records
    for a, b in zip(first.models, again.models):
        assert torch.equal(a.weight, b.weight)
    C.cached(tmp_path, {"x": 2}, train, log=quiet)  # another configuration trains again
    assert len(calls) == 2


def test_contrast_and_flag_definitions():
    m = torch.tensor(
        [[1.0, 0.9, 0.5, 0.5], [0.9, 1.0, 0.5, 0.5], [0.5, 0.5, 1.0, 0.7], [0.5, 0.5, 0.7, 1.0]],
        dtype=torch.float64,
    )
    c = C.contrast(m, [0, 1], [2, 3])
    assert c["within_ref"] == 0.9 and c["within_post"] == 0.7 and c["cross"] == 0.5
    assert c["delta"] == pytest.approx(0.3) and c["separation"] == pytest.approx(0.5 / 0.2)
    assert c["delta_paper"] == pytest.approx(0.7 - 0.5)
    # unequal blocks, by hand: R = {0, 1}, P = {2, 3, 4}
    m5 = torch.full((5, 5), 0.2, dtype=torch.float64)
    m5[0, 1] = m5[1, 0] = 0.8
    for i, j, v in ((2, 3, 0.6), (2, 4, 0.5), (3, 4, 0.4)):
        m5[i, j] = m5[j, i] = v
    m5.fill_diagonal_(1.0)
    c5 = C.contrast(m5, [0, 1], [2, 3, 4])
    assert c5["within_post"] == pytest.approx(0.5) and c5["cross"] == pytest.approx(0.2)
    assert c5["delta_paper"] == pytest.approx(0.3)  # 0.5 - 0.2
    assert c5["delta"] == pytest.approx(0.45)  # (0.8 + 0.5) / 2 - 0.2
    assert c5["separation"] == pytest.approx(0.8 / 0.35)
    f = C.flag({0: 0.1, 9: 0.4, 4: 0.2})
    assert (
        f["flagged"] == 9
        and f["runner_up"] == 4
        and f["margin"] == pytest.approx(2.0)
        and f["clear"]
    )
    assert not C.flag({0: 0.3, 9: 0.4})["clear"]
