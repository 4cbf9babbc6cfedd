"""The paper's experiments as reproducible pipelines (``tnsim experiment NAME``).

Each experiment module has ``run(out, mode, progress=True, ...)`` which trains its models
(deterministically), computes every metric's similarity matrices, and writes PNG figures, CSV
tables, ``results.json`` / ``matrices.json`` and a Markdown ``report.md`` to ``out``. ``mode``
is ``"quick"`` (tiny, seconds: for tests) or ``"full"`` (the numbers in docs/results.md).

* ``backdoor`` — a trigger inserted by fine-tuning on poisoned digits;
* ``forgetting`` — classes added in stages, one removed and added back;
* ``grokking`` — modular addition, memorisation then generalisation, Fourier frequencies;
* ``distributions`` — the paper's nine input distributions: tensor similarity vs output cosine
  for bilinear models learning the index of the second-largest input;
* ``distributions_teacher`` — a variant: students of a random teacher, trained on a mixture;
* ``lm`` — a character-level bilinear-attention language model: n-gram phases, similarity maps.
* ``crosslayer`` — deep models built to separate composed from per-layer comparisons, judged by
  Monte Carlo, and deep models trained from several seeds;
* ``symmetries`` — a trained model against copies transformed by weight-space symmetries.

(``deep`` holds the helpers of the last two: stacks, function-preserving transformations,
per-layer comparisons and Monte Carlo estimates of both measures.)
* ``diffing`` — difference networks (fine-tuned − base): the same class added twice vs different
  classes.
"""

from __future__ import annotations

import importlib
from ..errors import InvalidArgumentError

NAMES = ('backdoor', 'forgetting', 'grokking', 'distributions', 'distributions_teacher', 'lm', 'diffing', 'crosslayer', 'symmetries')

__all__ = ["NAMES", "get", "run"]


def get(name: str):
    """The module of experiment ``name``."""
    if name not in NAMES:
        raise InvalidArgumentError(f"unknown experiment {name!r}: use one of {', '.join(NAMES)}")
    return importlib.import_module(f"{__name__}.{name}")


def run(name: str, out, mode: str = "full", **kwargs) -> dict:
    """Run experiment ``name`` in ``mode`` writing to ``out``; returns its summary."""
    return get(name).run(out, mode=mode, **kwargs)
