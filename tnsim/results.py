"""Results files: finished entries of a long similarity matrix, written as they are computed.

A results file is one ``.npz`` archive (numpy, no pickles) holding

* ``header`` — JSON: format version, what is being computed (measure, method, options, the
  hashes of the models' structures and weights, shape, symmetry);
* ``values`` — the ``(N_a, N_b)`` float64 matrix (NaN where not computed yet);
* ``done`` — a boolean mask of finished entries;
* ``norms_a`` / ``norms_b`` (with ``norms_a_done`` / ``norms_b_done``) — the per-model squared
  norms as ``(3, N)`` float64 rows (mantissa, log factors; see :class:`tnsim.plan.Scaled`),
  stored as soon as they are computed so that a resumed run does not recompute them.

Every update rewrites the archive to ``<file>.tmp`` and renames it over the file (an atomic
replace on POSIX and Windows), so an interruption at any moment leaves either the previous or
the new state, never a torn file. Resuming with other settings raises
:class:`~tnsim.errors.CheckpointError` naming the file and the fields that differ; an
unreadable file raises it too. Delete the file to start over.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError

__all__ = ["ResultsFile", "fingerprint"]

FORMAT = 1


def fingerprint(nets) -> dict:
    """Hashes of the structures and of the weights of a list of networks (for the header)."""
    structure = hashlib.sha1()
    weights = hashlib.sha1()
    for net in nets:
        structure.update(repr(net.structure).encode())
        seen = set()
        for t in tuple(net.terms) + tuple(net.raw or ()):
            for x in t.arrays:
                if id(x) in seen:
                    continue
                seen.add(id(x))
                weights.update(x.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return {"structure": structure.hexdigest(), "weights": weights.hexdigest(), "models": len(nets)}


def tensor_digest(x) -> str | None:
    """A short hash of an optional tensor option (mean, covariance, output projection)."""
    if x is None:
        return None
    if not isinstance(x, torch.Tensor):
        return json.dumps(x, sort_keys=True, default=str)
    data = x.detach().to("cpu", torch.float64).contiguous().numpy()
    return hashlib.sha1(repr(tuple(data.shape)).encode() + data.tobytes()).hexdigest()[:16]


class ResultsFile:
    """The results file of one matrix computation (created, or opened to resume).

    Parameters
    ----------
    path
        File name (``.npz`` is conventional, not required).
    header
        JSON-serialisable description of the computation; an existing file must match it.
    shape
        ``(N_a, N_b)``.
    """

    def __init__(self, path, header: dict, shape: tuple[int, int]):
        self.path = Path(path)
        self.header = {"format": FORMAT, **header, "shape": list(shape)}
        self.values = np.full(shape, np.nan)
        self.done = np.zeros(shape, dtype=bool)
        self.norms = {side: np.full((3, n), np.nan) for side, n in zip("ab", shape)}
        self.norms_done = {side: np.zeros(n, dtype=bool) for side, n in zip("ab", shape)}
        if self.path.exists():
            self._load()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write()

    def _load(self) -> None:
        try:
            with np.load(self.path, allow_pickle=False) as z:
                header = json.loads(str(z["header"]))
                values, done = np.array(z["values"]), np.array(z["done"])
                norms = {
                    side: (np.array(z[f"norms_{side}"]), np.array(z[f"norms_{side}_done"]))
                    for side in "ab" if f"norms_{side}" in z.files
                }
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as err:
            raise CheckpointError(
                f"results file {self.path} is corrupt or not a tnsim results file "
                f"({type(err).__name__}: {err}); delete it to start over"
            ) from None
        if header != self.header:
            keys = sorted(set(header) | set(self.header))
            diff = [k for k in keys if header.get(k) != self.header.get(k)]
            detail = "; ".join(f"{k}: file has {header.get(k)!r}, now {self.header.get(k)!r}" for k in diff)
            raise CheckpointError(
                f"results file {self.path} belongs to another computation ({detail}); "
                "pass another results path or delete the file"
            )
        if values.shape != self.values.shape or done.shape != self.done.shape or done.dtype != bool:
            raise CheckpointError(f"results file {self.path} has arrays of the wrong shape")
        self.values, self.done = values, done
        for side, (vals, flags) in norms.items():
            if vals.shape != self.norms[side].shape or flags.shape != self.norms_done[side].shape:
                raise CheckpointError(f"results file {self.path} has norms of the wrong shape")
            self.norms[side], self.norms_done[side] = vals, flags.astype(bool)

    def _write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            norms = {f"norms_{side}": v for side, v in self.norms.items()}
            norms.update({f"norms_{side}_done": v for side, v in self.norms_done.items()})
            np.savez(
                f, header=np.array(json.dumps(self.header, sort_keys=True)), values=self.values,
                done=self.done, **norms,
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def finished(self, rows, cols) -> bool:
        """Whether every entry of the block ``rows x cols`` is stored."""
        return bool(self.done[np.ix_(rows, cols)].all())

    def store(self, rows, cols, block: torch.Tensor, mirror: bool = False) -> None:
        """Store a finished block (and its transpose at ``cols x rows`` if ``mirror``)."""
        b = block.detach().to("cpu", torch.float64).numpy()
        self.values[np.ix_(rows, cols)] = b
        self.done[np.ix_(rows, cols)] = True
        if mirror:
            self.values[np.ix_(cols, rows)] = b.T
            self.done[np.ix_(cols, rows)] = True
        self._write()

    def stored_norms(self, side: str, rows) -> np.ndarray | None:
        """The ``(3, len(rows))`` norm rows of models ``rows`` of ``side`` (``"a"``/``"b"``),
        or ``None`` unless all of them are stored."""
        rows = list(rows)
        if not self.norms_done[side][rows].all():
            return None
        return self.norms[side][:, rows]

    def store_norms(self, side: str, rows, values: np.ndarray) -> None:
        """Store the ``(3, len(rows))`` norm rows of models ``rows`` of ``side``."""
        rows = list(rows)
        self.norms[side][:, rows] = values
        self.norms_done[side][rows] = True
        self._write()
