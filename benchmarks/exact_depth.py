"""Exact method by depth: contractions after symmetry deduplication and time per pair.

For stacks of 1, 2, 3 bilinear layers (bias-free and with biases) and both measures, print the
number of doubled-network contractions one inner product needs, and the wall time of one
``tnsim.similarity`` call (three inner products) cold (orbits enumerated, paths searched and
cached) and warm (every plan reused, as for a new checkpoint of the same architecture).

Usage: ``python benchmarks/exact_depth.py [--d 8] [--hidden 16] [--max-depth 3]``
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import torch

import tnsim
from tnsim import contract


def model(depth: int, d: int, hidden: int, bias: bool, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers = [tnsim.nn.Bilinear(d, hidden, d, bias=bias) for _ in range(depth - 1)]
    layers.append(tnsim.nn.Bilinear(d, hidden, 4, bias=bias))
    return torch.nn.Sequential(*layers)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=8)
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--max-depth", type=int, default=3)
    p.add_argument("--skip-biased-depth3", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("TNSIM_CACHE_DIR", tempfile.mkdtemp(prefix="tnsim-bench-"))
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    print(f"# command: python {' '.join(sys.argv)}")
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, float32, d={args.d}, hidden={args.hidden}")
    print("| depth | biases | measure | contractions / inner | cold pair (s) | warm pair (s) |")
    print("|---|---|---|---|---|---|")
    for depth in range(1, args.max_depth + 1):
        for bias in (False, True):
            if depth == 3 and bias and args.skip_biased_depth3:
                continue
            for measure in ("tensor", "gaussian"):
                a, b = model(depth, args.d, args.hidden, bias, 1), model(depth, args.d, args.hidden, bias, 2)
                contract.clear_memory_cache()
                tnsim.clear_cache()
                t0 = time.perf_counter()
                c = tnsim.compare(a, b, measure=measure, method="exact")
                cold = time.perf_counter() - t0
                t0 = time.perf_counter()
                tnsim.similarity(model(depth, args.d, args.hidden, bias, 3),
                                 model(depth, args.d, args.hidden, bias, 4), measure=measure, method="exact")
                warm = time.perf_counter() - t0
                print(f"| {depth} | {'yes' if bias else 'no'} | {measure} | {c.cost.contractions // 3} "
                      f"| {cold:.2f} | {warm:.3f} |", flush=True)


if __name__ == "__main__":
    main()
