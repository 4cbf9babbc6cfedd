"""Quick mode of every experiment, asserting on what it finds (not only that it runs)."""

import json

import pytest
import torch

from tnsim import experiments
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


def test_backdoor_is_flagged_by_the_class_9_slice(runs):
    out, res, results = runs("backdoor")
    check_outputs(
        out,
        [
            "training.png",
            "heatmaps.png",
            "reference.png",
            "slices_tensor.png",
            "class_contrasts.png",
        ],
    )
    rec = results["records"]["0"]
    clean = [r for r in rec if r["phase"] == "clean"]
    post = [r for r in rec if r["phase"] == "poisoned"]
    # the backdoor works and clean accuracy stays flat
    assert post[-1]["attack_success"] > 0.9 > clean[-1]["attack_success"]
    assert abs(post[-1]["clean_accuracy"] - clean[-1]["clean_accuracy"]) < 0.03
    rows = {r["metric"]: r for r in res["rows"]}
    assert rows["tensor"]["flagged"] == 9 and rows["tensor"]["flags_9"] == "1/1"
    # an early-training reference inflates the contrast; tensor similarity contrasts more than matrix cosine
    for r in rows.values():
        assert r["delta_whole_clean"] > r["delta_late_clean"] > 0
    assert rows["tensor"]["delta_late_clean"] > 2 * rows["matrix cosine"]["delta_late_clean"]
    nine = {r["metric"]: r for r in res["class_nine"]}
    assert nine["tensor"]["class_9_delta"] > 1.5 * nine["tensor"]["other_classes_max_delta"]
    # for this bias-free model the tensor cosine is the centred Gaussian cosine
    assert results["tensor_equals_centred_gaussian_max_abs_diff"] < 1e-6
    assert results["monte_carlo_check"]["fraction_within_3_stderr"] > 0.95


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
    f = C.flag({0: 0.1, 9: 0.4, 4: 0.2})
    assert (
        f["flagged"] == 9
        and f["runner_up"] == 4
        and f["margin"] == pytest.approx(2.0)
        and f["clear"]
    )
    assert not C.flag({0: 0.3, 9: 0.4})["clear"]
