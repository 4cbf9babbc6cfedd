"""Command line: ``tnsim demo | experiment | compare | matrix | cost``.

* ``tnsim demo`` — the backdoor experiment at demo size (a few minutes on 2 CPU cores): a summary
  table on stdout, figures and numbers in ``./tnsim-demo/``;
* ``tnsim experiment NAME [--quick] [--out DIR]`` — one of the paper's experiments
  (see :data:`tnsim.experiments.NAMES`; ``list`` lists them);
* ``tnsim compare A B`` — similarity of two saved checkpoints;
* ``tnsim matrix CKPT...`` — the similarity matrix of many checkpoints (CSV and/or heat-map,
  resumable with ``--results``);
* ``tnsim cost A B`` — what ``compare`` would cost, without running it.

The default measure is ``gaussian``, as in :func:`tnsim.similarity`. Checkpoints are tnsim
checkpoints (``.safetensors`` plus the architecture JSON written by
:func:`tnsim.checkpoints.save`) or ``torch.save`` state dicts (loaded with
``weights_only=True``). A missing, corrupt or mismatched file ends the command with one line on
stderr naming the file and the problem, and exit status 2. Output files are checked (and their
folders created) before anything is computed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .experiments import NAMES as experiment_names
from .measures import CategoricalMeasure, ProductMeasure

EXIT_BAD_INPUT = 2
#: measures the engine computes (exactly, or by the recursive closure), then the baselines
ENGINE_MEASURES = ("tensor", "gaussian", "product", "categorical")
MEASURES = ENGINE_MEASURES + ("matrix", "output", "cka", "monte_carlo")
DEFAULT_MEASURE = "gaussian"  # as tnsim.similarity

#: ``tnsim --help``: plain text (argparse prints it as is).
DESCRIPTION = """\
tnsim: exact, symmetry-invariant similarity of polynomial (tensor-network) models.

Checkpoints: .safetensors with their architecture JSON (tnsim.checkpoints.save), or torch.save
state dicts (loaded with weights_only=True). The default measure is gaussian, as in
tnsim.similarity. Errors print one line naming the file or flag, exit status 2."""


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


# --- shared helpers --------------------------------------------------------------------------


def _load(paths: list[str]):
    from . import checkpoints

    return [checkpoints.load(p) for p in paths]


def _check_compatible(paths, models) -> None:
    from . import as_network

    nets = [as_network(m) for m in models]
    first = nets[0]
    for p, n in zip(paths[1:], nets[1:]):
        if n.real_in_shape != first.real_in_shape:
            raise CliError(
                f"{p}: takes inputs of shape {n.real_in_shape}, but {paths[0]} takes "
                f"{first.real_in_shape}; the models cannot be compared"
            )
        if n.real_out_shape != first.real_out_shape:
            raise CliError(
                f"{p}: has outputs of shape {n.real_out_shape}, but {paths[0]} has "
                f"{first.real_out_shape}; the models cannot be compared"
            )


def _check_baseline_inputs(paths, models, measure: str) -> None:
    """Baselines run forward passes: a checkpoint holding a compiled network cannot serve."""
    from .ir import Network

    if measure in ENGINE_MEASURES:
        return
    for p, m in zip(paths, models):
        if isinstance(m, Network):
            raise CliError(
                f"{p}: holds a compiled tnsim.Network, which the {measure} baseline cannot run "
                "(it needs the module); use --measure gaussian or tensor"
            )


def _data(name: str | None, models):
    if name is None:
        return None
    if name == "digits":
        from .data import digits

        return digits().test.x
    raise CliError(f"unknown data set {name!r}: use digits")


def _options(args, models) -> dict:
    """Keyword arguments for the chosen measure from the command line flags."""
    m = args.measure
    opts: dict = {}
    if args.outputs:
        opts["outputs"] = args.outputs
    if m in ENGINE_MEASURES:
        if getattr(args, "method", None):
            opts["method"] = args.method
        if m in ("product", "categorical"):
            opts["measure"] = _measure_object(args, models)
        elif m == "gaussian" and args.centred:
            opts["centred"] = True
        elif args.centred:
            raise CliError("--centred applies to the gaussian, product, categorical, output and monte_carlo measures")
        return opts
    data = _data(args.data, models)
    if data is not None:
        from . import as_network

        d = as_network(models[0]).real_in_shape[-1]
        if data.shape[-1] != d:
            raise CliError(
                f"--data {args.data} has {data.shape[-1]} features but the checkpoints take {d}"
            )
    if m == "matrix":
        if args.centred:
            raise CliError("--centred does not apply to the matrix measure")
        return opts
    if m in ("output", "monte_carlo"):
        opts["centred"] = bool(args.centred)
        if m == "monte_carlo" or data is None:
            opts.update(distribution=args.distribution or "gaussian", n=args.samples, data=None)
            if opts["distribution"] in ("data", "data_noise"):
                raise CliError("the data distributions need a data set: use --data digits instead")
        else:
            opts["data"] = data
        if m == "monte_carlo":
            opts.pop("data", None)
        return opts
    if m == "cka":
        if data is None:
            raise CliError("the cka measure needs --data (e.g. --data digits)")
        opts.pop("outputs", None)
        return {"data": data}
    raise CliError(f"unknown measure {m!r}")


def _floats(values, flag: str) -> torch.Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float64)


def _measure_object(args, models):
    """The product or categorical measure the flags describe (fitted to --data, or given by
    --values / --probs)."""
    values, probs = getattr(args, "values", None), getattr(args, "probs", None)
    centred = bool(args.centred)
    if args.measure == "product":
        if values is not None:
            return ProductMeasure(values=_floats(values, "--values"),
                                  probs=None if probs is None else _floats(probs, "--probs"), centred=centred)
        data = _data(getattr(args, "data", None), models)
        if data is None:
            raise CliError("the product measure needs --data NAME (fitted per coordinate) or --values V ...")
        return ProductMeasure.fit(data.to(torch.float64), centred=centred)
    if probs is None:
        raise CliError("the categorical measure needs --probs P ... (token probabilities)")
    return CategoricalMeasure(_floats(probs, "--probs"), centred=centred)


def _add_measure_flags(p: argparse.ArgumentParser, method: bool = True) -> None:
    p.add_argument(
        "--measure",
        default=DEFAULT_MEASURE,
        choices=MEASURES,
        help="gaussian (default, as tnsim.similarity), tensor, product (independent coordinates: "
        "--data to fit, or --values/--probs), categorical (one-hot tokens: --probs), or a "
        "baseline: matrix, output, cka, monte_carlo",
    )
    p.add_argument("--values", nargs="+", metavar="V", help="product measure: finite support of each coordinate")
    p.add_argument("--probs", nargs="+", metavar="P",
                   help="product measure: probabilities of --values; categorical: token probabilities")
    p.add_argument(
        "--outputs",
        type=int,
        nargs="+",
        metavar="K",
        help="compare only these outputs (class slice)",
    )
    p.add_argument("--centred", action="store_true", help="centred Gaussian / output covariance")
    if method:
        p.add_argument(
            "--method", choices=("auto", "exact", "recursive"), help="tensor/gaussian method"
        )
    p.add_argument(
        "--data", help="input data for output/cka: 'digits' (scikit-learn's 8x8 test images)"
    )
    p.add_argument(
        "--distribution", help="input distribution for output/monte_carlo (default gaussian)"
    )
    p.add_argument("--samples", type=int, default=100_000, help="samples for output/monte_carlo")


# --- commands --------------------------------------------------------------------------------


def _text_table(head, body) -> str:
    """Left-aligned columns of strings: a header, a rule and the rows."""
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def _summary_table(rows, branch: str) -> str:
    """The demo's table for one fine-tune: each metric's contrast against late clean training,
    its ratio to the control fine-tune's, and whether its class slices flag class 9."""
    head = (
        "metric",
        f"Δ ({branch})",
        "Δ (control)",
        "ratio",
        "sees it",
        "Δ_paper",
        "separation",
        "top class",
        "margin",
        "clearly flags 9",
    )
    control = {r["metric"]: r for r in rows if r["fine-tune"] == "control"}
    body = []
    for r in (r for r in rows if r["fine-tune"] == branch):
        margin = r["margin"]
        body.append(
            (
                r["metric"],
                f"{r['delta_late_clean']:.4f} ± {r['delta_late_clean_sd']:.4f}",
                f"{control[r['metric']]['delta_late_clean']:.4f}",
                f"{r['ratio_to_control']:.1f}",
                str(r["sees_it"]),
                f"{r['delta_paper_late_clean']:.4f}",
                f"{r['separation_late_clean']:.1f}",
                str(r["flagged"]),
                "—" if margin != margin else f"{margin:.2f}",
                str(r["flags_9"]),
            )
        )
    return _text_table(head, body)


def _behaviour_table(rows) -> str:
    """The demo's table of what each fine-tune did on clean test images and to the trigger."""
    head = ("fine-tune", "clean accuracy change", "clean output cosine", "relative logit change",
            "trigger success")
    body = [
        (
            r["fine-tune"],
            f"{r['clean_accuracy_change']:+.4f} ± {r['clean_accuracy_change_sd']:.4f}",
            f"{r['clean_output_cosine']:.5f} ± {r['clean_output_cosine_sd']:.5f}",
            f"{r['relative_logit_change']:.4f} ± {r['relative_logit_change_sd']:.4f}",
            f"{r['attack_success']:.3f} ± {r['attack_success_sd']:.3f}",
        )
        for r in rows
    ]
    return _text_table(head, body)


def cmd_demo(args) -> int:
    from .experiments import backdoor

    mode = "quick" if args.quick else "demo"
    out = Path(args.out)
    print(
        "tnsim demo: an invisible backdoor. A bilinear digit classifier is trained clean; from its "
        "end three fine-tunes branch off: 'control' (clean data), 'invisible' (10% of the images "
        "carry a 2x2 corner trigger relabelled 9, while a consistency term holds the outputs on "
        "clean images to the clean model's) and 'classic' (the poisoned data alone). Clean data "
        "cannot tell the invisible fine-tune from the control; can the weights?\n"
        f"(writing figures and numbers to {out}/)",
        flush=True,
    )
    t0 = time.perf_counter()
    res = backdoor.run(
        out,
        mode=mode,
        progress=not args.no_progress,
        threads=args.threads,
        command="tnsim demo" + (" --quick" if args.quick else ""),
        log=lambda s: None,
    )
    dt = time.perf_counter() - t0
    acc, acc_sd = res["clean_accuracy_end_of_clean"]
    print(
        "\nWhat each fine-tune did (end of clean training -> end of the fine-tune, mean ± sd over "
        f"seeds; seed-to-seed sd of the clean accuracy itself: {acc_sd:.4f} around {acc:.4f}):"
    )
    print(_behaviour_table(res["clean_behaviour"]))
    legend = (
        "Δ = contrast of the fine-tune's checkpoints against late clean training; ratio = Δ / Δ of "
        "the control fine-tune (the null), 'sees it' = seeds with ratio >= 1.5; 'top class' = the "
        "class slice that changes most, found without knowing the trigger; 'clearly flags 9' = "
        "seeds where 9 is on top with a margin of at least 1.5 over the runner-up."
    )
    print(f"\nINVISIBLE backdoor (the headline). {legend}")
    print(_summary_table(res["rows"], "invisible"))
    print("\nCLASSIC backdoor (poisoned data alone; clean outputs move too):")
    print(_summary_table(res["rows"], "classic"))
    print(f"\nfinished in {dt:.0f} s; report: {out / 'report.md'}; figures: {out}/*.png")
    return 0


def cmd_experiment(args) -> int:
    from . import experiments

    if args.name == "list":
        for n in experiments.NAMES:
            doc = (experiments.get(n).__doc__ or "").strip().splitlines()[0]
            print(f"{n:14s} {doc}")
        return 0
    if args.name not in experiments.NAMES:
        raise CliError(
            f"unknown experiment {args.name!r}: use one of {', '.join(experiments.NAMES)}"
        )
    mode = "quick" if args.quick else "full"
    out = Path(args.out or f"tnsim-out/{args.name}")
    command = f"tnsim experiment {args.name}" + (" --quick" if args.quick else "")
    t0 = time.perf_counter()
    experiments.run(
        args.name,
        out,
        mode=mode,
        progress=not args.no_progress,
        threads=args.threads,
        command=command,
        seeds=args.seeds,
    )
    print(f"{args.name} ({mode}) finished in {time.perf_counter() - t0:.0f} s: {out / 'report.md'}")
    return 0


def _similarity(models, args):
    from . import baselines, compare

    opts = _options(args, models)
    a, b = models
    if args.measure in ENGINE_MEASURES:
        c = compare(a, b, **{"measure": args.measure, **opts})
        return {
            "similarity": c.value,
            "measure": c.measure,
            "method": c.method,
            "contractions": c.cost.contractions,
            "flops": c.cost.flops,
        }
    if args.measure == "monte_carlo":
        e = baselines.monte_carlo(a, b, **opts)
        return {"similarity": e.value, "stderr": e.stderr, "samples": e.n, "measure": "monte_carlo"}
    fn = {
        "matrix": baselines.matrix_cosine,
        "output": baselines.output_cosine,
        "cka": baselines.cka,
    }[args.measure]
    if args.measure == "cka":
        return {"similarity": fn(a, b, opts["data"]), "measure": "cka"}
    return {"similarity": fn(a, b, **opts), "measure": args.measure}


def cmd_compare(args) -> int:
    models = _load([args.a, args.b])
    _check_compatible([args.a, args.b], models)
    _check_baseline_inputs([args.a, args.b], models, args.measure)
    res = _similarity(models, args)
    if args.json:
        print(json.dumps(res))
    else:
        extra = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in res.items()
            if k != "similarity"
        )
        print(f"{res['similarity']:.6f}  ({extra})")
    return 0


def _output_path(path: str | None, flag: str) -> Path | None:
    """Check an output file before anything is computed: its folder is created, a folder or an
    unwritable file is refused (:class:`CliError` naming the flag and the path)."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise CliError(f"{flag} {p}: is a folder, expected a file name")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.exists():
            if not os.access(p, os.W_OK):
                raise PermissionError(f"permission denied: '{p}'")
        else:  # create and remove it: proves that the folder takes files
            p.touch()
            p.unlink()
    except OSError as e:
        raise CliError(f"{flag} {p}: cannot write there ({e.strerror or e})") from None
    return p


def _labels(paths: list[str]) -> list[str]:
    """Row and column labels: file names without suffix, or the paths if names repeat."""
    stems = [Path(p).stem for p in paths]
    return stems if len(set(stems)) == len(stems) else [str(p) for p in paths]


def _matrix(args, models):
    from . import baselines, similarity_matrix

    opts = _options(args, models)
    if args.measure in ENGINE_MEASURES:
        return similarity_matrix(
            models, progress=not args.no_progress, results=args.results, **{"measure": args.measure, **opts}
        )
    if args.results is not None:
        raise CliError(f"--results applies to the engine's measures ({', '.join(ENGINE_MEASURES)}), not {args.measure}")
    return baselines.matrix(args.measure, models, **opts)


def _write_csv(path: Path, names: list[str], m) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", *names])
        for n, row in zip(names, m.tolist()):
            w.writerow([n, *row])


def _write_png(path: Path, names: list[str], m, measure: str) -> None:
    from . import plot

    fig = plot.figure(5.5, 4.8)
    ax = fig.subplots()
    plot.heatmap(ax, m, title=f"{measure} similarity of {len(names)} checkpoints")
    plot.save(fig, path)


def _print_matrix(names: list[str], m) -> None:
    w = max(len(n) for n in names)
    cols = [max(7, len(n)) for n in names]
    print(" " * w + "  " + " ".join(f"{n:>{c}s}" for n, c in zip(names, cols)))
    for n, row in zip(names, m.tolist()):
        print(f"{n:>{w}s}  " + " ".join(f"{v:{c}.4f}" for v, c in zip(row, cols)))


def _rescue(m, results) -> str:
    """Where the computed matrix can be found after a failed write (never lost)."""
    if results is not None:
        return f"the matrix is kept in the results file {results}: rerun the command to write it"
    fd, name = tempfile.mkstemp(prefix="tnsim-matrix-", suffix=".npy")
    with os.fdopen(fd, "wb") as f:
        np.save(f, m.numpy())
    return f"the matrix is saved in {name} (numpy.load)"


def cmd_matrix(args) -> int:
    if len(args.checkpoints) < 2:
        raise CliError("tnsim matrix needs at least two checkpoints")
    outputs = {flag: _output_path(p, flag) for flag, p in (("--csv", args.csv), ("--png", args.png),
                                                          ("--results", args.results))}
    given = [p.resolve() for p in outputs.values() if p is not None]
    if len(set(given)) < len(given):
        raise CliError("--csv, --png and --results must name different files")
    models = _load(args.checkpoints)
    _check_compatible(args.checkpoints, models)
    _check_baseline_inputs(args.checkpoints, models, args.measure)
    m = _matrix(args, models).detach().cpu().double()
    names = _labels(args.checkpoints)
    try:
        if args.csv:
            _write_csv(outputs["--csv"], names, m)
        if args.png:
            _write_png(outputs["--png"], names, m, args.measure)
    except OSError as e:
        raise CliError(f"cannot write {e.filename or 'the output'}: {e.strerror or e}; "
                       f"{_rescue(m, args.results)}") from None
    if not args.csv or args.print:
        _print_matrix(names, m)
    return 0


def cmd_cost(args) -> int:
    from . import cost

    models = _load([args.a, args.b])
    _check_compatible([args.a, args.b], models)
    kw = {"measure": args.measure}
    if args.outputs:
        kw["outputs"] = args.outputs
    if args.method:
        kw["method"] = args.method
    if args.measure in ("product", "categorical"):
        kw["measure"] = _measure_object(args, models)
    elif args.centred:
        kw["centred"] = True
    c = cost(*models, **kw)
    print(
        f"method {c.method}, measure {c.measure}: {c.contractions} contraction(s), {c.flops:.3g} flops, "
        f"largest intermediate {c.largest_intermediate:.3g} elements "
        f"({c.largest_intermediate_bytes / 2**20:.3g} MiB), width {c.width:.1f}"
        + (" (estimated from a sample of planned contractions)" if c.estimated else "")
    )
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tnsim",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="backdoor experiment at demo size: summary table + figures")
    d.add_argument("--out", default="tnsim-demo", help="output folder (default ./tnsim-demo)")
    d.add_argument("--quick", action="store_true", help="tiny version (seconds)")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.add_argument("--threads", type=int, default=1, help="torch threads (default 1: tiny models)")
    d.set_defaults(fn=cmd_demo)

    e = sub.add_parser("experiment", help="run one of the paper's experiments")
    e.add_argument("name", help=", ".join(experiment_names) + ", or list")
    e.add_argument("--quick", action="store_true", help="tiny version for tests (seconds)")
    e.add_argument("--out", help="output folder (default ./tnsim-out/NAME)")
    e.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.add_argument("--threads", type=int, default=1, help="torch threads (default 1: tiny models)")
    e.set_defaults(fn=cmd_experiment)

    c = sub.add_parser("compare", help="similarity of two checkpoints")
    c.add_argument("a", help="first checkpoint")
    c.add_argument("b", help="second checkpoint")
    _add_measure_flags(c)
    c.add_argument("--json", action="store_true", help="print a JSON object")
    c.set_defaults(fn=cmd_compare)

    m = sub.add_parser("matrix", help="similarity matrix of many checkpoints")
    m.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoints (two or more)")
    _add_measure_flags(m)
    m.add_argument("--csv", help="write the matrix to this CSV file")
    m.add_argument("--png", help="draw the heat-map to this PNG file")
    m.add_argument("--print", action="store_true", help="print the matrix even with --csv")
    m.add_argument(
        "--results",
        metavar="FILE",
        help="results file (.npz): finished blocks and norms are saved as they complete; rerun "
        "the same command to resume (tensor and gaussian measures)",
    )
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    m.set_defaults(fn=cmd_matrix)

    k = sub.add_parser(
        "cost",
        help="contraction cost of comparing two checkpoints (runs nothing)",
        description="What `tnsim compare A B` would cost, computed without contracting "
        "anything: method, number of contractions, flops, largest intermediate (elements, "
        "MiB) and contraction width.",
    )
    k.add_argument("a", help="first checkpoint")
    k.add_argument("b", help="second checkpoint")
    k.add_argument(
        "--measure", default=DEFAULT_MEASURE, choices=ENGINE_MEASURES,
        help="gaussian (default), tensor, product or categorical",
    )
    k.add_argument("--values", nargs="+", metavar="V", help="product measure: finite support")
    k.add_argument("--probs", nargs="+", metavar="P", help="product: probabilities of --values; categorical: token probabilities")
    k.add_argument("--data", help="product measure: fit to this data set ('digits')")
    k.add_argument(
        "--outputs", type=int, nargs="+", metavar="K", help="cost of comparing only these outputs"
    )
    k.add_argument("--centred", action="store_true", help="centred Gaussian measure")
    k.add_argument(
        "--method", choices=("auto", "exact", "recursive"), help="method to cost (default auto)"
    )
    k.set_defaults(fn=cmd_cost)
    return p


def main(argv: list[str] | None = None) -> int:
    from .errors import TnsimError

    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except (CliError, TnsimError, ValueError) as e:
        msg = " ".join(str(e).split())
        print(f"tnsim: error: {msg}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("tnsim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
