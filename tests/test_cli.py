"""The command line through a subprocess: outputs, figures, and one-line errors with status 2."""

import contextlib
import csv
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tnsim
import tnsim.cli
from tnsim import checkpoints as K

from models import bilinear

ROOT = Path(__file__).resolve().parents[1]


def tnsim_cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "tnsim.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    f = bilinear(3, 4, 2, seed=0)
    g = bilinear(3, 4, 2, seed=0)
    with torch.no_grad():  # g: the same function as f, hidden units reversed
        perm = torch.arange(3, -1, -1)
        g.left.weight.copy_(f.right.weight[perm])
        g.right.weight.copy_(f.left.weight[perm])
        g.down.weight.copy_(f.down.weight[:, perm])
    paths = {
        "f": K.save(f, d / "f.safetensors"),
        "g": K.save(g, d / "g.safetensors"),
        "h": K.save(bilinear(3, 4, 2, seed=1), d / "h.safetensors"),
    }
    torch.save(bilinear(3, 4, 2, seed=2).state_dict(), d / "sd.pt")
    paths["sd"] = d / "sd.pt"
    paths["wide"] = K.save(bilinear(5, 4, 2, seed=3), d / "wide.safetensors")
    (d / "junk.safetensors").write_bytes(b"this is not a checkpoint")
    paths["junk"] = d / "junk.safetensors"
    torch.save(bilinear(3, 4, 2), d / "pickled.pt")
    paths["pickled"] = d / "pickled.pt"
    paths["models"] = (f, g)
    return paths


def test_compare_sees_through_symmetries(ckpts):
    r = tnsim_cli("compare", ckpts["f"], ckpts["g"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("1.000000") and "method=exact" in r.stdout
    r = tnsim_cli("compare", ckpts["f"], ckpts["g"], "--measure", "matrix", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    f, g = ckpts["models"]
    assert (
        res["similarity"] == pytest.approx(tnsim.baselines.matrix_cosine(f, g), rel=1e-6)
        and res["similarity"] < 0.99
    )
    r = tnsim_cli(
        "compare", ckpts["f"], ckpts["sd"], "--measure", "gaussian", "--outputs", "1", "--json"
    )
    assert r.returncode == 0, r.stderr
    other = K.load(ckpts["sd"])
    assert json.loads(r.stdout)["similarity"] == pytest.approx(
        tnsim.similarity(f, other, outputs=[1]), rel=1e-9
    )
    r = tnsim_cli(
        "compare", ckpts["f"], ckpts["h"], "--measure", "monte_carlo", "--samples", "2000", "--json"
    )
    res = json.loads(r.stdout)
    assert r.returncode == 0 and res["stderr"] > 0 and res["samples"] == 2000


def test_matrix_writes_csv_and_png(ckpts, tmp_path):
    r = tnsim_cli(
        "matrix",
        ckpts["f"],
        ckpts["g"],
        ckpts["h"],
        "--csv",
        tmp_path / "m.csv",
        "--png",
        tmp_path / "m.png",
    )
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader((tmp_path / "m.csv").read_text().splitlines()))
    assert rows[0] == ["", "f", "g", "h"] and len(rows) == 4
    assert float(rows[1][2]) == pytest.approx(1.0, abs=1e-9)  # f vs g
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = tnsim_cli(
        "matrix",
        ckpts["f"],
        ckpts["h"],
        "--measure",
        "output",
        "--distribution",
        "laplace",
        "--samples",
        "1000",
    )
    assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 3, r.stderr


def test_cost(ckpts):
    r = tnsim_cli("cost", ckpts["f"], ckpts["h"])
    assert r.returncode == 0, r.stderr
    assert "contraction" in r.stdout and "flops" in r.stdout


@pytest.mark.parametrize(
    "case, words",
    [
        ("missing", ["nope.safetensors", "no such file"]),
        ("junk", ["junk.safetensors", "not a valid safetensors file"]),
        ("pickled", ["pickled.pt", "pickled"]),
        ("wide", ["wide.safetensors", "inputs of shape (5,)", "cannot be compared"]),
    ],
)
def test_bad_files_give_one_line_and_status_2(ckpts, tmp_path, case, words):
    other = tmp_path / "nope.safetensors" if case == "missing" else ckpts[case]
    r = tnsim_cli("compare", ckpts["f"], other)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tnsim: error: "), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_unknown_experiment_and_list():
    r = tnsim_cli("experiment", "nope")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "backdoor" in r.stderr
    r = tnsim_cli("experiment", "list")
    assert r.returncode == 0 and all(
        n in r.stdout for n in ("backdoor", "forgetting", "grokking", "distributions")
    )


def test_demo_quick_prints_the_summary_and_writes_figures(tmp_path):
    r = tnsim_cli("demo", "--quick", "--no-progress", "--out", tmp_path / "demo")
    assert r.returncode == 0, r.stderr
    invisible = r.stdout[r.stdout.index("INVISIBLE") : r.stdout.index("CLASSIC")]
    classic = r.stdout[r.stdout.index("CLASSIC") :]
    for table in (invisible, classic):
        assert "clearly flags 9" in table and "sees it" in table
        tensor = next(line for line in table.splitlines() if line.startswith("tensor"))
        assert tensor.split()[-1] == "1/1"  # the tensor class slices flag class 9
    # the invisible backdoor: output cosine on clean data does not tell it from the control
    output = next(line for line in invisible.splitlines() if line.startswith("output cosine"))
    assert re.split(r"\s{2,}", output)[4] == "0/1", output  # the "sees it" column
    behaviour = r.stdout[r.stdout.index("fine-tune  clean accuracy") : r.stdout.index("INVISIBLE")]
    assert [line.split()[0] for line in behaviour.splitlines()[2:5]] == ["control", "invisible", "classic"]
    for f in (
        "heatmaps.png",
        "slices_tensor.png",
        "training.png",
        "report.md",
        "results.json",
        "summary.csv",
    ):
        assert (tmp_path / "demo" / f).exists(), f
    # the checkpoints the demo saved are usable from the command line
    ck = sorted((tmp_path / "demo" / "checkpoints" / "seed0").glob("ckpt_*.safetensors"))
    r = tnsim_cli("compare", ck[0], ck[-1], "--outputs", "9")
    assert r.returncode == 0 and 0 < float(r.stdout.split()[0]) < 1, r.stderr


# --- defaults, help, output paths, resuming ----------------------------------------------------


def test_default_measure_is_the_library_default(ckpts):
    r = tnsim_cli("compare", ckpts["f"], ckpts["h"], "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    f, h = ckpts["models"][0], K.load(ckpts["h"])
    assert res["measure"] == "gaussian"
    assert res["similarity"] == pytest.approx(tnsim.similarity(f, h), rel=1e-12)
    assert res["similarity"] != pytest.approx(tnsim.similarity(f, h, measure="tensor"), rel=1e-6)


def test_help_is_plain_text_and_every_cost_flag_is_explained():
    top = tnsim.cli.parser().format_help()
    assert "``" not in top and ":func:" not in top and "gaussian" in top
    (sub,) = [a for a in tnsim.cli.parser()._actions if a.dest == "command"]
    for command, p in sub.choices.items():
        for action in p._actions:
            assert action.help, f"tnsim {command} {action.option_strings or action.dest} has no help"


def test_matrix_creates_output_folders_and_labels_columns(ckpts, tmp_path):
    out = tmp_path / "missing" / "deeper"
    r = tnsim_cli("matrix", ckpts["f"], ckpts["g"], ckpts["h"], "--csv", out / "m.csv",
                  "--print", "--no-progress", "--measure", "tensor")
    assert r.returncode == 0, r.stderr
    assert (out / "m.csv").exists()
    header, *rows = r.stdout.strip().splitlines()
    assert header.split() == ["f", "g", "h"] and [row.split()[0] for row in rows] == ["f", "g", "h"]
    assert float(rows[0].split()[2]) == pytest.approx(1.0, abs=1e-6)  # f vs g: the same function
    assert r.stderr == ""  # --no-progress


def test_unwritable_outputs_are_refused_before_computing(ckpts, tmp_path, monkeypatch, capsys):
    def computed(*args, **kwargs):
        raise AssertionError("computed before checking the outputs")

    monkeypatch.setattr(tnsim, "similarity_matrix", computed)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for flag, target, words in (
        ("--csv", a_file / "m.csv", ["--csv", "file.txt", "cannot write there"]),
        ("--png", tmp_path, ["--png", "is a folder"]),
        ("--results", a_file / "r.npz", ["--results", "cannot write there"]),
    ):
        status = tnsim.cli.main(["matrix", str(ckpts["f"]), str(ckpts["h"]), flag, str(target)])
        err = capsys.readouterr().err
        assert status == 2 and err.count("\n") == 1, err
        assert all(w in err for w in words), err
    status = tnsim.cli.main(["matrix", str(ckpts["f"]), str(ckpts["h"]), "--csv", str(tmp_path / "x"),
                             "--results", str(tmp_path / "x")])
    assert status == 2 and "different files" in capsys.readouterr().err


def test_a_failed_write_keeps_the_results_and_a_rerun_computes_nothing(ckpts, tmp_path, monkeypatch, capsys):
    from tnsim.methods import _matrix as matrix

    args = ["matrix", str(ckpts["f"]), str(ckpts["g"]), str(ckpts["h"]), "--no-progress",
            "--csv", str(tmp_path / "m.csv"), "--results", str(tmp_path / "run.npz")]

    def disk_full(path, *rest):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(tnsim.cli, "_write_csv", disk_full)
    assert tnsim.cli.main(args) == 2
    err = capsys.readouterr().err
    assert "m.csv" in err and "No space left" in err and "run.npz" in err
    assert (tmp_path / "run.npz").exists() and not (tmp_path / "m.csv").exists()
    monkeypatch.undo()
    calls = []
    block, norm = matrix.block_task, matrix.norm_task
    monkeypatch.setattr(matrix, "block_task", lambda *a: calls.append(1) or block(*a))
    monkeypatch.setattr(matrix, "norm_task", lambda *a: calls.append(1) or norm(*a))
    assert tnsim.cli.main(args) == 0 and calls == []  # everything came from the results file
    monkeypatch.undo()
    rows = list(csv.reader((tmp_path / "m.csv").read_text().splitlines()))
    models = [K.load(p) for p in (ckpts["f"], ckpts["g"], ckpts["h"])]
    want = tnsim.similarity_matrix(models, progress=False)
    assert [[float(v) for v in row[1:]] for row in rows[1:]] == want.tolist()
    # without --results, the matrix goes to a temporary .npy named in the message
    monkeypatch.setattr(tnsim.cli, "_write_csv", disk_full)
    assert tnsim.cli.main(args[:-2]) == 2
    err = capsys.readouterr().err
    saved = err.split("saved in ")[1].split(" ")[0]
    assert np.load(saved).tolist() == want.tolist()
    os.unlink(saved)
    assert tnsim.cli.main(args[:-4] + ["--measure", "matrix", "--results", str(tmp_path / "b.npz")]) == 2
    assert "--results applies to the engine's measures" in capsys.readouterr().err


def test_a_residual_state_dict_without_its_json_is_refused(tmp_path):
    from models import residual_stack

    torch.save(residual_stack(d=3, width=3, h=4, o=2).state_dict(), tmp_path / "res.pt")
    r = tnsim_cli("compare", tmp_path / "res.pt", tmp_path / "res.pt")
    assert r.returncode == 2 and r.stdout == ""
    assert "res.pt" in r.stderr and "residual" in r.stderr and r.stderr.count("\n") == 1


def test_saved_networks_compare_and_refuse_baselines(ckpts, tmp_path, capsys):
    f, g = ckpts["models"]
    net = K.save(tnsim.compile(f), tmp_path / "net.safetensors")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert tnsim.cli.main(["compare", str(net), str(ckpts["g"]), "--json"]) == 0
    assert json.loads(out.getvalue())["similarity"] == pytest.approx(tnsim.similarity(f, g), rel=1e-12)
    assert tnsim.cli.main(["compare", str(net), str(ckpts["g"]), "--measure", "matrix"]) == 2
    err = capsys.readouterr().err
    assert "net.safetensors: holds a compiled tnsim.Network" in err and err.count("\n") == 1


def _enumerated_cosine(f, g, values, probs):
    """cos under i.i.d. coordinates on a finite support, by enumerating every input."""
    import itertools

    xs = torch.tensor(list(itertools.product(values, repeat=3)), dtype=torch.float64)
    w = torch.tensor([math.prod(p) for p in itertools.product(probs, repeat=3)], dtype=torch.float64)
    with torch.no_grad():
        fa, fb = f.double()(xs), g.double()(xs)
    inner = lambda u, v: float((w * (u * v).sum(1)).sum())  # noqa: E731
    return inner(fa, fb) / math.sqrt(inner(fa, fa) * inner(fb, fb))


def test_product_and_categorical_measures_from_the_command_line(ckpts):
    import copy

    f, h = copy.deepcopy(ckpts["models"][0]), K.load(ckpts["h"])
    r = tnsim_cli("compare", ckpts["f"], ckpts["h"], "--measure", "product", "--values", "-1", "2",
                  "--probs", "0.25", "0.75", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["similarity"] == pytest.approx(_enumerated_cosine(f, h, (-1.0, 2.0), (0.25, 0.75)), rel=1e-9)
    assert got["measure"].startswith("product")
    r = tnsim_cli("compare", ckpts["f"], ckpts["h"], "--measure", "categorical", "--probs", "0.2", "0.3", "0.5", "--json")
    assert r.returncode == 0, r.stderr
    # one-hot inputs: E[f.g] = sum_v p_v f(e_v).g(e_v)
    eye, p = torch.eye(3, dtype=torch.float64), torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    with torch.no_grad():
        fa, fb = f.double()(eye), h.double()(eye)
    want = float((p * (fa * fb).sum(1)).sum() / ((p * (fa * fa).sum(1)).sum() * (p * (fb * fb).sum(1)).sum()).sqrt())
    assert json.loads(r.stdout)["similarity"] == pytest.approx(want, rel=1e-9)
    r = tnsim_cli("compare", ckpts["f"], ckpts["h"], "--measure", "product")
    assert r.returncode == 2 and "--values" in r.stderr
    r = tnsim_cli("cost", ckpts["f"], ckpts["h"], "--measure", "product", "--values", "-1", "1")
    assert r.returncode == 0 and "contraction" in r.stdout, r.stderr
