"""The character-level language-model experiment: corpus, n-gram tables and scores, quick run."""

import json
import math

import pytest
import torch

import tnsim
from tnsim.errors import ShapeMismatchError
from tnsim.experiments import common as C
from tnsim.experiments import lm as E

LN2 = math.log(2)


def test_encoding_by_hand():
    # lower-cased, whitespace runs -> one space, '1' and '!' -> '#'
    assert E.encode("Hi,\n\t (x1)!").tolist() == [8, 9, 28, 0, 29, 24, 31, 30, 31]
    assert E.VOCAB == 32 and E.SYMBOLS[31] == "#"


def test_docstrings_in_walk_order_and_unparseable_files():
    src = '"""Mod."""\nclass A:\n    """Cls."""\n    def f(self):\n        """Fn."""\n'
    assert E.docstrings(src) == ["Mod.", "Cls.", "Fn."]
    assert E.docstrings("def (:\n") == []


def test_corpus_files_are_sorted_and_deterministic():
    files = E.stdlib_files(12)
    assert [f.name for f in files] == sorted(f.name for f in files) and len(files) == 12
    a, b = E.corpus(files), E.corpus(files)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert len(a[0]) > 1000 and int(a[0].max()) < E.VOCAB


TOKENS = torch.tensor([0, 1, 0, 1, 1])


def test_ngram_tables_by_hand_without_smoothing():
    p1, p2, p3 = E.ngram_tables(TOKENS, 2, alpha=0.0)
    assert p1.tolist() == pytest.approx([2 / 5, 3 / 5])
    # bigrams 01, 10, 01, 11
    assert p2.tolist() == [[0.0, 1.0], [0.5, 0.5]]
    # trigrams 010, 101, 011; contexts 00 and 11 never occur: uniform
    assert p3[0, 1].tolist() == [0.5, 0.5] and p3[1, 0].tolist() == [0.0, 1.0]
    assert p3[0, 0].tolist() == [0.5, 0.5] and p3[1, 1].tolist() == [0.5, 0.5]


def test_ngram_tables_by_hand_with_add_one():
    p1, p2, p3 = E.ngram_tables(TOKENS, 2, alpha=1.0)
    assert p1.tolist() == pytest.approx([3 / 7, 4 / 7])
    assert p2[0].tolist() == pytest.approx([1 / 4, 3 / 4]) and p2[1].tolist() == pytest.approx([0.5, 0.5])
    assert p3[1, 0].tolist() == pytest.approx([1 / 3, 2 / 3]) and p3[1, 1].tolist() == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="alpha"):
        E.ngram_tables(TOKENS, 2, alpha=-1.0)


def test_ngram_scores_by_hand():
    tables = E.ngram_tables(TOKENS, 2, alpha=0.0)
    inputs = torch.tensor([[0, 1, 0]])  # positions 1 (context 0,1) and 2 (context 1,0)
    uniform = torch.zeros(1, 3, 2)
    s = E.ngram_scores(uniform, inputs, tables)
    kl1 = 0.4 * math.log(0.4) + 0.6 * math.log(0.6) + LN2
    assert s["kl_1gram"] == pytest.approx(kl1)
    # bigram: p2[1] = (.5,.5) -> 0; p2[0] = (0, 1) -> ln 2
    assert s["kl_2gram"] == pytest.approx(LN2 / 2)
    # trigram: p3[0,1] = (.5,.5) -> 0; p3[1,0] = (0, 1) -> ln 2
    assert s["kl_3gram"] == pytest.approx(LN2 / 2)
    # a model predicting exactly the smoothed bigram has KL 0 to it and > 0 to the others
    t1 = E.ngram_tables(TOKENS, 2, alpha=1.0)
    logits = t1[1][inputs].log().float()
    s = E.ngram_scores(logits, inputs, t1)
    assert s["kl_2gram"] == pytest.approx(0, abs=1e-6) and s["kl_1gram"] > 0.01
    with pytest.raises(ShapeMismatchError, match="logits"):
        E.ngram_scores(torch.zeros(1, 2, 2), inputs, tables)


def test_cross_entropy_and_windows():
    log_p = torch.log(torch.tensor([[0.25, 0.75], [0.5, 0.5]], dtype=torch.float64))
    assert E.cross_entropy(log_p, torch.tensor([1, 0])) == pytest.approx(
        -(math.log(0.75) + math.log(0.5)) / 2
    )
    w = E.windows(torch.arange(10), 3, 50, seed=0)
    assert w.shape == (50, 3) and bool((w[:, 1:] - w[:, :-1] == 1).all())
    with pytest.raises(ShapeMismatchError, match="tokens"):
        E.windows(torch.arange(3), 3, 5, seed=0)


def test_phases_from_nearest_orders():
    assert E.phases_from([1, 1, 2, 2, 3, 1]) == [
        ("1-gram", 0, 2), ("2-gram", 2, 4), ("3-gram", 4, 5), ("1-gram", 5, 6)
    ]
    recs = [{"kl_1gram": 0.1, "kl_2gram": 0.2, "kl_3gram": 0.3},
            {"kl_1gram": 0.5, "kl_2gram": 0.2, "kl_3gram": 0.3}]
    assert E.closest_ngram(recs) == [1, 2]


def test_full_mode_has_at_least_50_log_spaced_checkpoints():
    steps = E.checkpoint_steps(E.MODES["full"])
    assert len(steps) >= 51 and steps[0] == 0 and steps == sorted(set(steps))
    assert steps[-1] == E.MODES["full"]["steps"]


def test_checkpoints_round_trip(tmp_path):
    cfg = E.MODES["quick"]
    traj = C.Trajectory()
    traj.begin("training")
    traj.add(E.model(0, cfg), step=0)
    traj.add(E.model(1, cfg), step=1)
    traj.end()
    E.save(traj, tmp_path, {"a": 1})
    back = E.load(tmp_path, {"a": 1}, cfg)
    assert back is not None and back.records == traj.records
    x = torch.tensor([[1, 2, 3, 4]])
    for m, n in zip(traj.models, back.models):
        assert torch.equal(m(x), n(x))
    assert E.load(tmp_path, {"a": 2}, cfg) is None  # another configuration: retrain


def test_first_layer_categorical_similarity_by_hand():
    """E[emb_a(x)·emb_b(x)] over i.i.d. tokens with the text's unigram frequencies, from the
    modules' own forward passes: positions are independent and each reads one token."""
    cfg = E.MODES["quick"]
    models = [E.model(s, cfg).double() for s in (0, 1, 2)]
    text = torch.tensor([0, 1, 1, 2, 5, 5, 5, 31, 0, 0])
    probs = torch.bincount(text, minlength=E.VOCAB).double() / len(text)
    same = torch.arange(E.VOCAB)[:, None].expand(E.VOCAB, cfg["n_ctx"])  # token t at every position
    with torch.no_grad():
        emb = [m[0](same) for m in models]  # (V, n_ctx, d)

    def inner(i, j):
        return float((probs * (emb[i] * emb[j]).sum((1, 2))).sum())

    mats = E.first_layer_matrices(models, tnsim.CategoricalMeasure.fit(text, E.VOCAB))
    cat, gauss = mats[E.FIRST_LAYER[0]][0], mats[E.FIRST_LAYER[1]][0]
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert float(cat[i, j]) == pytest.approx(inner(i, j) / math.sqrt(inner(i, i) * inner(j, j)), abs=1e-10)
    # the token distribution matters: N(0, I) on the same embeddings gives other numbers
    assert float((cat - gauss).abs().max()) > 0.05


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm")
    res = tnsim.experiments.run("lm", out, mode="quick", progress=False, log=lambda m: None)
    return out, res, json.loads((out / "results.json").read_text()), json.loads(
        (out / "matrices.json").read_text()
    )


def test_quick_run(quick):
    out, res, results, mats = quick
    for f in ("ngrams.png", "loss.png", "heatmaps.png", "correlations.png"):
        data = (out / f).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(data) < 300_000, f
        assert f"]({f})" in (out / "report.md").read_text()
    s, recs = res["summary"], results["records"]
    assert len(recs) == len(E.checkpoint_steps(E.MODES["quick"]))
    # more context predicts better on held-out text (a property of the corpus)
    loss = s["ngram_test_loss"]
    assert loss["3gram"] < loss["2gram"] < loss["1gram"] < math.log(E.VOCAB)
    # training passes near the unigram statistics, then moves on towards the bigram ones
    kl1 = [r["kl_1gram"] for r in recs]
    assert min(kl1) < 0.7 * kl1[0] and kl1[-1] > min(kl1)
    assert recs[-1]["kl_2gram"] < recs[0]["kl_2gram"] and recs[-1]["test_loss"] < recs[0]["test_loss"]
    assert s["min_kl"]["1gram"]["step"] < s["min_kl"]["2gram"]["step"]
    tensor = torch.tensor(mats["tensor"], dtype=torch.float64)
    assert torch.allclose(tensor.diagonal().double(), torch.ones(len(recs), dtype=torch.float64), atol=1e-6)
    assert len(mats["measure"]) == len(results["measure_subset"]) < len(recs)
    # the whole model under N(0, I); the categorical measure on the embedding, every checkpoint
    assert s["measure"].startswith("Gaussian N(0, I)")
    for label in E.FIRST_LAYER:
        m = torch.tensor(mats[label], dtype=torch.float64)
        assert m.shape == (len(recs), len(recs)) and torch.allclose(m.diagonal(), torch.ones(len(recs), dtype=torch.float64))
    probs = torch.tensor(s["measures"]["unigram_probs"])
    assert probs.sum().item() == pytest.approx(1) and probs[0] == probs.max()  # space is the commonest
    n_metrics = 7
    assert len(res["correlations"]) == n_metrics * (n_metrics - 1) // 2
    rows = {(r["a"], r["b"]): r for r in res["correlations"]}
    assert rows[("tensor", "output cosine")]["spearman"] > 0.5
    assert rows[("output cosine", "output cosine (centred logits)")]["pairs"] == len(recs) * (len(recs) - 1) // 2
