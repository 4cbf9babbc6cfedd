"""Exact method by depth: contractions after symmetry deduplication and time per pair.

For stacks of 1, 2, 3 bilinear layers (bias-free and with biases) and both measures, print the
number of doubled-network contractions one inner product needs, and the wall time of one
``tnsim.similarity`` call (three inner products) cold (orbits enumerated, paths searched and
cached) and warm (every plan reused, as for a new checkpoint of the same architecture).

Usage: ``python benchmarks/exact_depth.py [--d 8] [--hidden 16] [--max-depth 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

import tnsim
from tnsim import _caches
from tnsim.plan import _contract as contract
from tnsim.methods import _exact as exact


def model(depth: int, d: int, hidden: int, bias: bool, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers = [tnsim.nn.Bilinear(d, hidden, d, bias=bias) for _ in range(depth - 1)]
    layers.append(tnsim.nn.Bilinear(d, hidden, 4, bias=bias))
    return torch.nn.Sequential(*layers)


RESULTS = Path(__file__).resolve().parent / "results" / "exact_depth.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=8)
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--max-depth", type=int, default=3)
    p.add_argument("--skip-biased-depth3", action="store_true")
    p.add_argument("--sample-biased-depth3", type=int, default=300, metavar="N",
                   help="time the biased depth-3 Gaussian row on N random orbits and extrapolate "
                        "(all 11847 take hours cold); 0 runs them all")
    p.add_argument("--fresh", action="store_true", help="ignore rows already in the results file")
    args = p.parse_args()
    os.environ.setdefault("TNSIM_CACHE_DIR", tempfile.mkdtemp(prefix="tnsim-bench-"))
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    command = f"python {' '.join(sys.argv)}"
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"torch {torch.__version__}, float32, d={args.d}, hidden={args.hidden}")
    # rows are written as they finish, so an interrupted run resumes where it stopped
    done = {} if args.fresh or not RESULTS.exists() else json.loads(RESULTS.read_text())
    if done.get("d") != args.d or done.get("hidden") != args.hidden:
        done = {}
    rows = done.get("rows", [])
    keys = {(r["depth"], r["biases"], r["measure"]) for r in rows}
    print(f"# command: {command}\n# machine: {machine}")
    print("| depth | biases | measure | contractions / inner | cold pair (s) | warm pair (s) |")
    print("|---|---|---|---|---|---|")
    for depth in range(1, args.max_depth + 1):
        for bias in (False, True):
            if depth == 3 and bias and args.skip_biased_depth3:
                continue
            for measure in ("tensor", "gaussian"):
                key = (depth, "yes" if bias else "no", measure)
                sample = args.sample_biased_depth3 if (depth, bias, measure) == (3, True, "gaussian") else 0
                if key not in keys:
                    rows.append(dict(zip(("depth", "biases", "measure"), key), **run(depth, bias, measure, args, sample)))
                    RESULTS.parent.mkdir(exist_ok=True)
                    RESULTS.write_text(json.dumps(
                        dict(command=command, machine=machine, d=args.d, hidden=args.hidden, rows=rows), indent=1))
                r = next(r for r in rows if (r["depth"], r["biases"], r["measure"]) == key)
                note = f" (extrapolated from {r['sampled']} random orbits)" if r.get("sampled") else ""
                print(f"| {depth} | {key[1]} | {measure} | {r['contractions']} "
                      f"| {r['cold_s']:.2f} | {r['warm_s']:.3f} |{note}", flush=True)


def run(depth: int, bias: bool, measure: str, args, sample: int = 0) -> dict:
    """Time one similarity of two stacks cold and warm (see :func:`time_exact`)."""
    make = lambda seed: model(depth, args.d, args.hidden, bias, seed)  # noqa: E731
    return time_exact((make(1), make(2)), (make(3), make(4)), measure, sample)


def time_exact(cold_pair, warm_pair, measure: str, sample: int = 0) -> dict:
    """Time ``tnsim.similarity(*cold_pair)`` from empty plan caches, then the structurally equal
    ``warm_pair`` (every plan reused), both with ``method="exact"``.

    With ``sample`` > 0 only that many random orbits per inner product are contracted, and the
    time of the orbit loops (not of compilation or orbit enumeration) is scaled up by
    orbits / sample.
    """
    all_pairings, all_loops = contract.live_pairings, exact.contract_pairings
    orbits, loops = [], []  # orbits per inner product; (loop seconds, scale) per orbit loop

    def sampled(*a, **kw):
        reps, norm = all_pairings(*a, **kw)
        orbits.append(len(reps))
        if sample and len(reps) > sample:
            reps = random.Random(0).sample(reps, sample)
        return reps, norm

    def timed(*a, **kw):
        t0 = time.perf_counter()
        out = all_loops(*a, **kw)
        loops.append((time.perf_counter() - t0, orbits[-1] / sample if sample else 1.0))
        return out

    def clock(f):
        """``(seconds, f())``, the sampled orbit loops' time scaled up to all orbits (a sampled
        run's value is meaningless, and its norms may even be refused as zero: then ``None``,
        timed up to the refusal, which comes after every orbit ran)."""
        loops.clear()
        t0 = time.perf_counter()
        try:
            value = f()
        except tnsim.errors.ZeroNormError:
            if not sample:
                raise
            value = None
        return time.perf_counter() - t0 + sum(t * (k - 1) for t, k in loops if k > 1), value

    _caches.clear()
    tnsim.clear_cache()
    contract.live_pairings, exact.contract_pairings = sampled, timed
    try:
        cold, c = clock(lambda: tnsim.compare(*cold_pair, measure=measure, method="exact"))
        cold_orbits = sum(orbits)
        warm, _ = clock(lambda: tnsim.similarity(*warm_pair, measure=measure, method="exact"))
    finally:
        contract.live_pairings, exact.contract_pairings = all_pairings, all_loops
    extrapolated = sample and max(orbits) > sample
    # contractions after dropping exactly-vanishing pairings; a sample counts all orbits of
    # the three inner products' term pairs
    row = dict(contractions=cold_orbits // 3 if extrapolated else c.cost.contractions // 3,
               cold_s=cold, warm_s=warm)
    return row | ({"sampled": sample} if extrapolated else {})


if __name__ == "__main__":
    main()
