"""Time the per-pair loop of the plain exact method with whichever tnsim is importable.

``bench_matrix.py --baseline-rev REV`` runs this in a subprocess against the source tree of
an older revision (extracted with ``git archive``), to show what the loop cost before a change.

    python benchmarks/pair_loop.py --models 24 --threads 1
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from common import bar_models

import tnsim


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=24)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    models = bar_models(args.models)
    n = len(models)
    tnsim.similarity(models[0], models[1], measure="gaussian", method="exact")  # warm plans
    times = []
    P = torch.empty(n, n, dtype=torch.float64)
    for _ in range(args.repeats):
        t = time.perf_counter()
        for i in range(n):
            for j in range(n):
                P[i, j] = tnsim.similarity(models[i], models[j], measure="gaussian", method="exact")
        times.append(time.perf_counter() - t)
    print(json.dumps({"tnsim": tnsim.__file__, "times": times, "matrix": P.tolist()}))


if __name__ == "__main__":
    main()
