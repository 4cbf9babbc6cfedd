"""The command line through a subprocess: outputs, figures, and one-line errors with status 2."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tnsim
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
