r"""Symmetries: a trained model against copies that compute the same function.

A 2-layer bilinear stack :math:`f = B_2\circ B_1` (``64 -> stream -> 10``) is trained on the
digits; copies are made with every weight-space symmetry of the architecture
(:mod:`tnsim.experiments.deep`): hidden units permuted in both layers, hidden units rescaled
(:math:`L\to CL,\ R\to C^{-1}R`, or :math:`D\to DC^{-1}` compensating), left and right factors
swapped, a gauge :math:`M` on the bond between the layers (layer 1 writes :math:`My`, layer 2
reads through :math:`M^{-1}`), and all of them at once. Each copy's outputs are checked against
the original's on random inputs and on the test digits.

Every metric compares the original with each copy: tensor and Gaussian :math:`\mathcal N(0,I)`
similarity (exact), matrix cosine, parameter cosine (all parameters as one vector), output cosine
on the test digits, and linear CKA on the test digits of the last hidden layer (layer 2's
products :math:`L_2y\odot R_2y`) and of the bond between the layers (layer 1's output). A model
of the same architecture trained from another seed is the reference for "a different model".
"""

from __future__ import annotations

import torch

from .. import data as D
from .. import similarity
from ..baselines import cka, matrix_cosine, output_cosine
from ..plan import quiet
from . import common as C
from . import crosslayer, deep
from ..errors import InvalidArgumentError

NAME = "symmetries"
#: what a saved trajectory depends on besides the mode settings (part of its cache key)
IDENTITY = {"experiment": NAME, "model": "pure bilinear stack 64 -> stream -> 10"}

MODES = {
    "quick": dict(
        seeds=[0, 1],
        stream=8,
        hidden=16,
        steps=300,
        every=300,
        batch=128,
        lr=5e-3,
        weight_decay=0.05,
        spread=1.0,
    ),
    "full": dict(
        seeds=[0, 1],
        stream=16,
        hidden=32,
        steps=2000,
        every=2000,
        batch=128,
        lr=3e-3,
        weight_decay=0.05,
        spread=1.0,
    ),
}

#: transformation label -> what it does (for the report)
TRANSFORMS = {
    "permuted": "hidden units of both layers permuted",
    "rescaled L·c, R/c": "hidden unit h: L row × c_h, R row ÷ c_h (log c_h ~ N(0, spread²))",
    "rescaled L·c, D/c": "hidden unit h: L row × c_h, D column ÷ c_h",
    "L↔R swapped": "left and right factors exchanged in both layers",
    "gauge on the bond": "layer 1 writes M y, layer 2 reads through M⁻¹ (M random invertible)",
    "all of the above": "every transformation, one after the other",
}


def copies(model: torch.nn.Sequential, cfg, g: torch.Generator) -> dict[str, torch.nn.Module]:
    """The transformed copies of ``model`` (each computes the same function)."""
    s = cfg["spread"]
    bond = model[0].down.out_features

    def gauge(m):
        return deep.change_basis(m, deep.random_invertible(bond, g, 0.5), 0, 1)

    def everything(m):
        m = deep.permute_hidden(m, g)
        m = deep.rescale_hidden(m, g, s, "right")
        m = deep.rescale_hidden(m, g, s, "down")
        return gauge(deep.swap_left_right(m))

    return {
        "permuted": deep.permute_hidden(model, g),
        "rescaled L·c, R/c": deep.rescale_hidden(model, g, s, "right"),
        "rescaled L·c, D/c": deep.rescale_hidden(model, g, s, "down"),
        "L↔R swapped": deep.swap_left_right(model),
        "gauge on the bond": gauge(model),
        "all of the above": everything(model),
    }


def metrics(a, b, test_x: torch.Tensor) -> dict[str, float]:
    """Every metric of the pair ``(a, b)``."""
    x = test_x.to(torch.float64)
    return {
        "tensor": similarity(a, b, measure="tensor", method="exact"),
        "Gaussian N(0,I)": similarity(a, b, measure="gaussian", method="exact"),
        "matrix cosine": matrix_cosine(a, b),
        "parameter cosine": deep.parameter_cosine(a, b),
        "output cosine (test digits)": output_cosine(a, b, x),
        "CKA, last hidden layer": cka(a, b, x),
        "CKA, bond between layers": cka(a, b, x, layer="0"),
    }


def run(
    out,
    mode: str = "full",
    progress: bool = True,
    log=print,
    threads: int | None = 1,
    command: str | None = None,
    seeds=None,
) -> dict:
    cfg, res = C.start(out, NAME, MODES, mode, command, seeds)
    if len(cfg["seeds"]) < 2:
        raise InvalidArgumentError(f"seeds: need two (the model and a reference), got {cfg['seeds']}")
    split = D.digits()
    with C.threads(threads), quiet():
        models = [
            C.trajectory(
                res,
                cfg,
                IDENTITY,
                s,
                lambda s: crosslayer.train(
                    s, cfg, 2, cfg["stream"], cfg["hidden"], split, progress
                ),
                log=log,
            )
            .models[-1]
            .double()
            for s in cfg["seeds"][:2]
        ]
        model, other = models
        g = torch.Generator().manual_seed(0)
        xs = torch.randn(2000, 64, generator=g, dtype=torch.float64)
        rows = []
        for label, copy_ in copies(model, cfg, g).items():
            rows.append(
                {
                    "copy": label,
                    "max output difference (random inputs)": deep.max_output_difference(
                        model, copy_, xs
                    ),
                    "max output difference (test digits)": deep.max_output_difference(
                        model, copy_, split.test.x.double()
                    ),
                    **metrics(model, copy_, split.test.x),
                }
            )
        rows.append(
            {"copy": f"reference: seed {cfg['seeds'][1]}", **metrics(model, other, split.test.x)}
        )
    res.results.update(rows=rows, transforms=TRANSFORMS)
    res.table("symmetries.csv", rows)
    figure(res, rows)
    res.finish(report_md(rows))
    log(f"wrote {res.folder}/report.md")
    return {"rows": rows, "folder": str(res.folder)}


METRIC_LABELS = (
    "tensor",
    "Gaussian N(0,I)",
    "output cosine (test digits)",
    "CKA, last hidden layer",
    "CKA, bond between layers",
    "matrix cosine",
    "parameter cosine",
)


def figure(res, rows) -> None:
    from .. import plot

    groups = {m: {r["copy"]: r[m] for r in rows} for m in METRIC_LABELS}
    fig = plot.bars(
        groups,
        title="A trained 2-layer model vs copies that compute the same function "
        "(last group: a different seed)",
        ylabel="similarity to the original",
        width=10.0,
        height=3.4,
    )
    res.figure(
        fig,
        "symmetries.png",
        "Similarity of a trained 2-layer bilinear model to transformed copies of itself (each "
        "computes exactly the same function) and, last, to a model trained from another seed. "
        "Function-level metrics stay at 1; weight-level ones do not.",
    )


def report_md(rows) -> str:
    cols = ["copy", *METRIC_LABELS, "max output difference (random inputs)"]
    lines = [
        "## Result",
        "",
        "Each copy computes the original's function (largest relative output difference in the "
        "last column; 2000 random Gaussian inputs). Similarity to the original:",
        "",
        C.markdown_table(rows, cols, digits=4),
        "",
        "Transformations: " + "; ".join(f"*{k}*: {v}" for k, v in TRANSFORMS.items()) + ".",
    ]
    return "\n".join(lines)
