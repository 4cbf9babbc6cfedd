"""The paper's experiments as reproducible pipelines (``tnsim experiment NAME``).

Each experiment module has ``run(out, mode, progress=True, ...)`` which trains its models
(deterministically), computes every metric's similarity matrices, and writes PNG figures, CSV
tables, ``results.json`` / ``matrices.json`` and a Markdown ``report.md`` to ``out``. ``mode``
is ``"quick"`` (tiny, seconds: for tests) or ``"full"`` (the numbers in docs/results.md).

* ``backdoor`` — a trigger inserted by fine-tuning on poisoned digits;
* ``forgetting`` — classes added in stages, one removed and added back;
* ``grokking`` — modular addition, memorisation then generalisation, Fourier frequencies;
* ``distributions`` — weight-based similarity vs output cosine under nine input distributions;
* ``diffing`` — difference networks (fine-tuned − base): the same class added twice vs different
  classes.
"""

from __future__ import annotations

import importlib

NAMES = ("backdoor", "forgetting", "grokking", "distributions", "diffing")

__all__ = ["NAMES", "get", "run"]


def get(name: str):
    """The module of experiment ``name``."""
    if name not in NAMES:
        raise ValueError(f"unknown experiment {name!r}: use one of {', '.join(NAMES)}")
    return importlib.import_module(f"{__name__}.{name}")


def run(name: str, out, mode: str = "full", **kwargs) -> dict:
    """Run experiment ``name`` in ``mode`` writing to ``out``; returns its summary."""
    return get(name).run(out, mode=mode, **kwargs)
