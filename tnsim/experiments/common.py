"""Shared machinery of the experiments: training with checkpoints, similarity matrices for many
metrics, block contrasts, and an output folder that collects figures, numbers and a report.

Runs are deterministic given their seeds. Trajectories (the checkpoints of one training run)
are saved as tnsim checkpoints under ``OUT/checkpoints/`` as soon as they are complete, with
the configuration that produced them; a rerun with the same configuration loads them instead
of training again (so an interrupted experiment resumes at the last finished run).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
import os
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch

from ..data import Dataset
from ..errors import InvalidArgumentError

Phase = tuple  # (label, start, stop)


# --- environment -----------------------------------------------------------------------------


@contextmanager
def threads(n: int | None):
    """Run the block with ``torch.set_num_threads(n)`` (``None``: leave as is).

    The experiments' models are tiny: one thread avoids oversubscribing a shared machine (two
    threads were up to 16× slower for training here when the other core was busy).
    """
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def bar(
    iterable=None, *, total=None, desc: str | None = None, enabled: bool = True, unit: str = "it"
):
    """A tqdm progress bar on stderr (silent when ``enabled`` is false)."""
    from tqdm.auto import tqdm

    return tqdm(
        iterable,
        total=total,
        desc=desc,
        disable=not enabled,
        leave=False,
        file=sys.stderr,
        dynamic_ncols=True,
        unit=unit,
    )


def config_hash(config: Mapping) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- training --------------------------------------------------------------------------------


@dataclass
class Trajectory:
    """Checkpoints of one training run: models, a record per checkpoint, and named phases."""

    models: list = field(default_factory=list)
    records: list = field(default_factory=list)
    phases: list = field(default_factory=list)

    def add(self, model: torch.nn.Module, **record) -> None:
        self.models.append(copy.deepcopy(model).eval())
        self.records.append(record)

    def begin(self, phase: str) -> None:
        self.phases.append([phase, len(self.models), len(self.models)])

    def end(self) -> None:
        self.phases[-1][2] = len(self.models)

    def indices(self, phase: str) -> list[int]:
        for name, start, stop in self.phases:
            if name == phase:
                return list(range(start, stop))
        raise KeyError(f"no phase {phase!r}: phases are {[p[0] for p in self.phases]}")

    def column(self, key: str) -> list:
        return [r.get(key) for r in self.records]

    @property
    def phase_list(self) -> list[tuple[str, int, int]]:
        return [tuple(p) for p in self.phases]

    def save(self, folder: Path, config: Mapping) -> None:
        from .. import checkpoints

        folder.mkdir(parents=True, exist_ok=True)
        for i, (m, r) in enumerate(zip(self.models, self.records)):
            checkpoints.save(m, folder / f"ckpt_{i:03d}.safetensors", meta=r)
        (folder / "trajectory.json").write_text(
            json.dumps(
                {"config": config_hash(config), "records": self.records, "phases": self.phases},
                indent=1,
            )
        )

    @classmethod
    def load(cls, folder: Path, config: Mapping) -> "Trajectory | None":
        """The saved trajectory if it exists and was made with ``config``, else ``None``."""
        from .. import checkpoints
        from ..errors import CheckpointError

        index = folder / "trajectory.json"
        if not index.exists():
            return None
        try:
            info = json.loads(index.read_text())
            if info.get("config") != config_hash(config):
                return None
            models = [
                checkpoints.load(folder / f"ckpt_{i:03d}.safetensors")
                for i in range(len(info["records"]))
            ]
        except (OSError, ValueError, KeyError, CheckpointError):
            return None
        return cls(models, info["records"], [list(p) for p in info["phases"]])


def cached(folder: Path, config: Mapping, train: Callable[[], Trajectory], log=print) -> Trajectory:
    """Load the trajectory saved in ``folder`` for ``config``, or train it and save it."""
    traj = Trajectory.load(folder, config)
    if traj is not None:
        log(f"  reusing {len(traj.models)} checkpoints from {folder}")
        return traj
    traj = train()
    traj.save(folder, config)
    return traj


def start(out, name: str, modes: Mapping, mode: str, command, seeds) -> tuple[dict, "Output"]:
    """A run's configuration (the mode's, with ``seeds`` overriding) and its output folder."""
    cfg = dict(modes[mode])
    if seeds is not None:
        cfg["seeds"] = list(seeds)
    return cfg, Output(out, name, mode, cfg, command)


def trajectory(
    res: "Output", cfg: Mapping, identity: Mapping, seed: int, train: Callable[[int], Trajectory],
    log=print, folder: str | None = None, **extra,
) -> Trajectory:
    """Train (or reload) the checkpoints of one seed under ``res.folder/checkpoints``.

    The saved configuration (``cfg`` for this seed, ``extra`` and the experiment's ``identity``)
    decides whether saved checkpoints can be reused.
    """
    config = {**cfg, "seeds": None, "seed": seed, **extra, **identity}
    return cached(
        res.folder / "checkpoints" / (folder or f"seed{seed}"), config, lambda: train(seed), log=log
    )


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two vectors (in float64)."""
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    return float((x @ y) / (x.norm() * y.norm()))


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation: Pearson correlation of the ranks (ties broken by order)."""
    def rank(v):
        r = torch.empty_like(v, dtype=torch.float64)
        r[torch.argsort(v)] = torch.arange(len(v), dtype=torch.float64)
        return r

    return pearson(rank(x), rank(y))


def seed_runs(
    res: "Output", cfg: Mapping, identity: Mapping, train: Callable[[int], Trajectory],
    analyse: Callable[[Trajectory, int], dict], log=print, folder: str = "seed{}",
) -> dict[int, tuple[Trajectory, dict]]:
    """``{seed: (trajectory, analyse(trajectory, seed))}`` for every seed of ``cfg``; the
    checkpoints of a seed live in ``checkpoints/`` + ``folder.format(seed)``."""
    runs = {}
    for seed in cfg["seeds"]:
        traj = trajectory(res, cfg, identity, seed, train, log=log, folder=folder.format(seed))
        runs[seed] = (traj, analyse(traj, seed))
    return runs


class Trainer:
    """Mini-batch AdamW training in stages, recording a checkpoint every ``every`` steps.

    The optimizer state carries over between stages, so the only thing that changes at a
    stage boundary is the training data.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        lr: float,
        weight_decay: float,
        seed: int,
        batch_size: int | None,
        evaluate: Callable[[torch.nn.Module], dict],
        progress: bool = True,
        betas=(0.9, 0.999),
    ):
        self.model = model
        self.opt = torch.optim.AdamW(
            model.parameters(), lr=lr, weight_decay=weight_decay, betas=betas
        )
        self.gen = torch.Generator().manual_seed(seed)
        self.batch_size = batch_size
        self.evaluate = evaluate
        self.progress = progress
        self.step = 0
        self.traj = Trajectory()

    @classmethod
    def from_config(cls, model: torch.nn.Module, cfg: Mapping, seed: int, evaluate, progress: bool = True) -> "Trainer":
        """A trainer with a mode's ``lr``, ``weight_decay`` and ``batch`` (batch size)."""
        return cls(model, lr=cfg["lr"], weight_decay=cfg["weight_decay"], seed=seed,
                   batch_size=cfg["batch"], evaluate=evaluate, progress=progress)

    def checkpoint(self, phase: str) -> None:
        with torch.no_grad():
            rec = self.evaluate(self.model)
        self.traj.add(self.model, step=self.step, phase=phase, **rec)

    def snapshot(self) -> dict:
        """Everything training depends on (weights, optimizer, batch generator, step count), so
        that :meth:`restore` can start several branches from the same point."""
        return {
            "model": copy.deepcopy(self.model.state_dict()),
            "opt": copy.deepcopy(self.opt.state_dict()),
            "gen": self.gen.get_state(),
            "step": self.step,
        }

    def restore(self, state: dict) -> None:
        """Return to a :meth:`snapshot` (the trajectory recorded so far is kept)."""
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])
        self.step = state["step"]

    def stage(
        self,
        name: str,
        data: Dataset,
        steps: int,
        every,
        desc: str | None = None,
        penalty: Callable[[torch.nn.Module, torch.Tensor | None], torch.Tensor] | None = None,
    ) -> None:
        """Train ``steps`` steps on ``data``; checkpoint every ``every`` steps, or at the steps
        (counted within the stage, 1-based) listed in ``every``.

        ``penalty(model, idx)`` is added to the cross-entropy of each batch; ``idx`` are the
        indices of the batch's examples in ``data`` (``None`` for a full batch).
        """
        if len(data) == 0:
            raise InvalidArgumentError(f"stage {name!r} has no training data")
        marks = set(range(every, steps + 1, every)) if isinstance(every, int) else set(every)
        self.traj.begin(name)
        self.model.train()
        for s in bar(range(steps), desc=desc or name, enabled=self.progress, unit="step"):
            if self.batch_size is None or self.batch_size >= len(data):
                idx, x, y = None, data.x, data.y
            else:
                idx = torch.randint(0, len(data), (self.batch_size,), generator=self.gen)
                x, y = data.x[idx], data.y[idx]
            loss = torch.nn.functional.cross_entropy(self.model(x), y)
            if penalty is not None:
                loss = loss + penalty(self.model, idx)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.step += 1
            if s + 1 in marks:
                self.checkpoint(name)
        self.traj.end()


def accuracy(model: torch.nn.Module, data: Dataset) -> float:
    with torch.no_grad():
        return (
            float((model(data.x).argmax(1) == data.y).float().mean()) if len(data) else float("nan")
        )


# --- similarity matrices ---------------------------------------------------------------------


def metric_matrix(measure: str, models: Sequence, *, outputs=None, **options) -> torch.Tensor:
    """``(N, N)`` float64 matrix of any metric: ``"tensor"``/``"gaussian"`` through
    :func:`tnsim.similarity_matrix`, baselines through :func:`tnsim.baselines.matrix`
    (called directly so that ``outputs`` reaches them)."""
    from .. import baselines, similarity_matrix

    if measure in ("tensor", "gaussian"):
        options = {"progress": False, **options}  # the experiments draw their own bars
        m = similarity_matrix(list(models), measure=measure, outputs=outputs, **options)
    else:
        if outputs is not None:
            options = {**options, "outputs": outputs}
        m = baselines.matrix(measure, list(models), **options)
    return m.detach().to(torch.float64).cpu()


@dataclass(frozen=True)
class Metric:
    """A metric as drawn in a figure: a label, a measure name and its options."""

    label: str
    measure: str
    options: dict = field(default_factory=dict)
    slices: bool = True  # whether per-class slices are defined

    def matrix(self, models, outputs=None) -> torch.Tensor:
        return metric_matrix(self.measure, models, outputs=outputs, **self.options)


def data_gaussian(label: str, x: torch.Tensor) -> Metric:
    """The exact Gaussian similarity under the mean and covariance of the rows of ``x``."""
    x = x.double()
    return Metric(label, "gaussian", {"mean": x.mean(0), "cov": torch.cov(x.T, correction=0)})


def matrices(
    metrics: Sequence[Metric],
    models,
    *,
    progress: bool = True,
    desc: str = "similarity",
    outputs=None,
) -> dict[str, torch.Tensor]:
    """The matrix of every metric (a progress bar over metrics)."""
    out = {}
    for m in bar(metrics, desc=desc, enabled=progress, unit="matrix"):
        out[m.label] = m.matrix(models, outputs=outputs)
    return out


def slices(
    metric: Metric,
    models,
    classes: Iterable[int],
    *,
    progress: bool = True,
    desc: str | None = None,
) -> dict[int, torch.Tensor]:
    """Per-class slice matrices of one metric (``outputs=[k]`` for each class ``k``)."""
    classes = list(classes)
    return {
        k: metric.matrix(models, outputs=[k])
        for k in bar(classes, desc=desc or f"{metric.label} slices", enabled=progress, unit="class")
    }


# --- block statistics ------------------------------------------------------------------------


def block_mean(m: torch.Tensor, rows: Sequence[int], cols: Sequence[int]) -> float:
    """Mean of ``m[rows][:, cols]``, leaving out the diagonal when both index the same block."""
    sub = m[list(rows)][:, list(cols)]
    if list(rows) == list(cols):
        if len(rows) < 2:
            return float("nan")
        sub = sub[~torch.eye(len(rows), dtype=torch.bool)]
    return float(sub.mean())


def contrast(m: torch.Tensor, ref: Sequence[int], post: Sequence[int]) -> dict[str, float]:
    r"""How much a block of checkpoints ``post`` stands apart from a block ``ref``.

    Two definitions of the contrast Δ (diagonals excluded from the within-block means):

    * ``delta`` :math:`= \tfrac12(\bar s_{RR} + \bar s_{PP}) - \bar s_{RP}` (mean within both
      blocks minus across them: symmetric in the two blocks);
    * ``delta_paper`` :math:`= \bar s_{PP} - \bar s_{RP}` (the paper's: mean within the later
      block minus across).

    ``separation`` :math:`= (1-\bar s_{RP}) / (1 - \tfrac12(\bar s_{RR}+\bar s_{PP}))`: how
    many times more dissimilar checkpoints are across the boundary than inside the blocks
    (scale-free).
    """
    w_r, w_p, x = block_mean(m, ref, ref), block_mean(m, post, post), block_mean(m, ref, post)
    within = 0.5 * (w_r + w_p)
    sep = (1 - x) / (1 - within) if 1 - within > 1e-12 else float("inf")
    return {
        "within_ref": w_r,
        "within_post": w_p,
        "cross": x,
        "delta": within - x,
        "delta_paper": w_p - x,
        "separation": sep,
    }


#: The sentence every contrast table's report uses to define its columns.
CONTRAST_DEFINITIONS = (
    "Δ = ½(mean within the reference block R + mean within the later block P) − mean across R×P; "
    "Δ_paper = mean within P − mean across R×P (the paper's definition); separation = "
    "(1 − across)/(1 − ½(within R + within P)), scale-free. Diagonals are left out of the "
    "within-block means."
)


def mean_sd(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    vals = [float(v) for v in values]
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def pm(values: Iterable[float], digits: int = 3) -> str:
    """``"mean ± sd"`` of ``values`` as text."""
    m, s = mean_sd(values)
    return f"{fmt(m, digits)} ± {fmt(s, digits)}"


def flag(values: Mapping, ratio: float = 1.5) -> dict:
    """Which key has the largest value, and by how much (``margin`` = largest / second).

    ``clear`` is true when the margin is at least ``ratio`` (a fixed threshold, the same for
    every metric and experiment).
    """
    ranked = sorted(values.items(), key=lambda kv: kv[1], reverse=True)
    (top, v1), (second, v2) = ranked[0], ranked[1]
    margin = v1 / v2 if v2 > 0 else float("inf")
    return {"flagged": top, "runner_up": second, "margin": margin, "clear": bool(margin >= ratio)}


def stage_means(m: torch.Tensor, phases: Sequence[Phase]) -> list[list[float]]:
    """Phase × phase matrix of mean similarities (diagonal blocks without their diagonal)."""
    blocks = [list(range(s, e)) for _, s, e in phases]
    return [[block_mean(m, a, b) for b in blocks] for a in blocks]


def tilt_labels(fig, angle: float = 18.0, log: bool = False):
    """Tilt the x tick labels of a one-axis figure (long metric names), optionally with a log
    y axis (contrasts that differ by orders of magnitude); returns ``fig``."""
    ax = fig.axes[0]
    for t in ax.get_xticklabels():
        t.set_rotation(angle)
        t.set_ha("right")
    if log:
        ax.set_yscale("log")
    return fig


def class_contrast_bars(deltas: Mapping[str, Mapping[int, float]], highlight: int, title: str):
    """Grouped bars of per-class slice contrasts ``deltas[metric][k]``, each metric scaled so that
    its largest is 1 (a metric singles out a class when that bar is 1 and the others are low)."""
    from .. import plot

    groups = {
        label: {str(k): v / (max(d.values()) or 1.0) for k, v in d.items()}
        for label, d in deltas.items()
    }
    fig = plot.bars(
        groups, highlight=str(highlight), ylabel="Δ_k / largest Δ_k of the metric", title=title
    )
    fig.axes[0].set_xlabel("class k (output slice outputs=[k])", fontsize=8)
    return fig


def all_matrices(analysis: Mapping) -> dict[str, torch.Tensor]:
    """An analysis' whole-model ``matrices`` and class ``slices`` in one flat mapping
    (``label`` and ``"label class k"``), as ``matrices.json`` stores them."""
    return {
        **analysis["matrices"],
        **{f"{lab} class {k}": m for lab, sl in analysis["slices"].items() for k, m in sl.items()},
    }


def seed_matrices(runs: Mapping) -> dict[str, dict]:
    """:func:`all_matrices` of every seed of :func:`seed_runs` (keys ``seed0``, ...)."""
    return {f"seed{s}": all_matrices(a) for s, (_, a) in runs.items()}


def seed_records(runs: Mapping) -> dict[str, dict]:
    """The per-checkpoint records and the phases of every seed of :func:`seed_runs`."""
    return {
        "records": {s: r[0].records for s, r in runs.items()},
        "phases": {s: r[0].phase_list for s, r in runs.items()},
    }


# --- output folder ---------------------------------------------------------------------------


def _jsonable(x):
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item):
        return _jsonable(x.item())
    return x


def fmt(x, digits: int = 3) -> str:
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        return f"{x:.{digits}f}" if abs(x) >= 10 ** (-digits) or x == 0 else f"{x:.2e}"
    return str(x)


def markdown_table(
    rows: Sequence[Mapping], columns: Sequence[str] | None = None, digits: int = 3
) -> str:
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c, ""), digits) for c in columns) + " |")
    return "\n".join(lines)


class Output:
    """Collects figures, tables and numbers of one experiment run in a folder.

    Files: ``*.png`` figures, ``*.csv`` tables, ``results.json`` (every scalar, table and
    per-checkpoint record), ``matrices.json`` (every similarity matrix) and ``report.md``.
    """

    def __init__(self, folder, name: str, mode: str, config: Mapping, command: str | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.name, self.mode, self.config = name, mode, dict(config)
        self.command = command or f"tnsim experiment {name}" + (
            " --quick" if mode == "quick" else ""
        )
        self.results: dict = {}
        self.matrices: dict = {}
        self.figures: list[tuple[str, str]] = []
        self.started = time.perf_counter()

    def figure(self, fig, filename: str, caption: str) -> Path:
        from ..plot import save

        path = save(fig, self.folder / filename)
        self.figures.append((filename, caption))
        return path

    def table(self, filename: str, rows: Sequence[Mapping]) -> Path:
        path = self.folder / filename
        cols: list[str] = []
        for r in rows:
            cols += [c for c in r if c not in cols]
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            for r in rows:
                w.writerow({c: _jsonable(r.get(c, "")) for c in cols})
        return path

    def finish(self, summary_md: str) -> Path:
        seconds = time.perf_counter() - self.started
        self.results["wall_seconds"] = seconds
        self.results["config"] = self.config
        self.results["mode"] = self.mode
        self.results["environment"] = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
        }
        (self.folder / "results.json").write_text(json.dumps(_jsonable(self.results), indent=1))
        (self.folder / "matrices.json").write_text(json.dumps(_jsonable(self.matrices)))
        figs = "\n\n".join(f"![{cap}]({fn})\n\n*{cap}*" for fn, cap in self.figures)
        cfg = ", ".join(f"{k}={v}" for k, v in self.config.items())
        text = (
            f"# Experiment: {self.name} ({self.mode} mode)\n\n"
            f"Command: `{self.command}`  \nWall time: {seconds:.0f} s  \nSettings: {cfg}\n\n"
            f"{summary_md.strip()}\n\n## Figures\n\n{figs}\n\n"
            "Every number is in `results.json` (scalars, tables, per-checkpoint records) and "
            "`matrices.json` (similarity matrices); tables also as CSV.\n"
        )
        path = self.folder / "report.md"
        path.write_text(text)
        return path


def log_steps(first: int, last: int, n: int) -> list[int]:
    """About ``n`` distinct integer steps from ``first`` to ``last``, evenly spaced in log scale."""
    import numpy as np

    return sorted({int(round(v)) for v in np.geomspace(first, last, n)})
