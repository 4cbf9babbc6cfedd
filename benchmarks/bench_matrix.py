"""The performance bar: a 24 x 24 Gaussian similarity matrix of one-layer models.

Models: ``Sequential(tnsim.nn.Linear(784, 64), tnsim.nn.Bilinear(64, 128, 10))``, float32.
Everything below runs in this one process on this one machine, interleaved so that load from
other processes hits all contenders alike; minima over repeats are reported (medians too).

* ``tnsim.similarity_matrix`` — cold (empty path cache on disk and in memory: includes the
  path search), disk-warm (paths read from the disk cache, nothing in memory) and hot (a
  repeated call in the same process);
* the closed form of the one-layer Gaussian inner product as a hand-written batched
  ``torch.einsum`` over all pairs (``common.closed_form_matrix``);
* a per-pair loop of the plain exact method, ``tnsim.similarity(a, b, method="exact")`` over
  all N^2 ordered pairs;
* the machine's matrix-multiply rate (best of a 2048^3 float32 product) and the rate the
  matrix reaches (multiply-adds actually executed, counted by ``tnsim.plan._execute.count_flops``).

Usage::

    python benchmarks/bench_matrix.py [--models 24] [--repeats 7] [--threads T] [--device cuda]
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from common import (
    bar_models,
    closed_form_matrix,
    command,
    device_name,
    isolated_cache,
    matmul_rate,
    save,
    summary,
    timed,
)

import tnsim
from tnsim.plan._execute import count_flops


def baseline_loop(rev: str, n: int, threads: int) -> dict:
    """Per-pair loop with the tnsim of git revision ``rev`` (extracted, run in a subprocess)."""
    import io
    import json
    import os
    import subprocess
    import sys
    import tarfile

    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                          check=True).stdout.strip()
    archive = subprocess.run(["git", "archive", rev, "tnsim"], cwd=root, capture_output=True, check=True).stdout
    with tempfile.TemporaryDirectory() as src, tempfile.TemporaryDirectory() as cache:
        tarfile.open(fileobj=io.BytesIO(archive)).extractall(src, filter="data")
        env = dict(os.environ, PYTHONPATH=src, TNSIM_CACHE_DIR=cache)
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pair_loop.py")
        out = subprocess.run([sys.executable, script, "--models", str(n), "--threads", str(threads)],
                             env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--pair-repeats", type=int, default=2, help="repeats of the full per-pair loop")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--block-size", type=int, default=None)
    ap.add_argument("--tag", default=None, help="suffix of the results file name")
    ap.add_argument("--baseline-rev", default=None,
                    help="also time the per-pair loop at this git revision (separate process)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = device_name(device)
    print(f"$ {command()}\ndevice: {name}\ntorch {torch.__version__}")
    torch.set_grad_enabled(False)
    models = bar_models(args.models, device=device)
    n = len(models)
    opts = dict(measure="gaussian", method="exact", progress=False, block_size=args.block_size)

    with tempfile.TemporaryDirectory() as tmp:
        isolated_cache(tmp)
        cold = timed(lambda: tnsim.similarity_matrix(models, **opts), device)
        isolated_cache(tmp)  # memory cleared, disk cache kept
        disk_warm = timed(lambda: tnsim.similarity_matrix(models, **opts), device)
        M = tnsim.similarity_matrix(models, **opts)
        plan = tnsim.methods._matrix.plan_matrix(models, measure="gaussian", method="exact", block_size=args.block_size)
        cost = tnsim.cost(models, measure="gaussian", method="exact", block_size=args.block_size)
        with count_flops() as executed:
            tnsim.similarity_matrix(models, **opts)

        hot, closed = [], []
        for _ in range(args.repeats):  # interleaved
            hot.append(timed(lambda: tnsim.similarity_matrix(models, **opts), device))
            closed.append(timed(lambda: closed_form_matrix(models), device))
        C = closed_form_matrix(models).double()

        tnsim.similarity(models[0], models[1], method="exact")  # warm the per-pair plans
        loop = []
        P = torch.empty(n, n, dtype=torch.float64)

        def per_pair():
            for i in range(n):
                for j in range(n):
                    P[i, j] = tnsim.similarity(models[i], models[j], measure="gaussian", method="exact")

        for _ in range(args.pair_repeats):
            loop.append(timed(per_pair, device))
            hot.append(timed(lambda: tnsim.similarity_matrix(models, **opts), device))
        pair_cost = tnsim.cost(models[0], models[1], measure="gaussian", method="exact")

    base = None
    if args.baseline_rev:
        base = baseline_loop(args.baseline_rev, n, torch.get_num_threads())
    peak = matmul_rate(device)
    h = summary(hot)
    c = summary(closed)
    p = summary(loop)
    flop_executed = 2 * executed["flops"]
    closed_flops = 2 * n * n * (4 * 128 * 128 * 784 + 10 * 128 * 128 + 3 * 128 * 128)  # dominant terms
    result = {
        "device": name,
        "models": n,
        "block_size": plan.block_size,
        "blocks": len(plan.blocks),
        "matrix_cold_s": cold,
        "matrix_disk_warm_s": disk_warm,
        "matrix_hot_s": h,
        "closed_form_s": c,
        "per_pair_loop_s": p,
        "per_pair_calls": n * n,
        "max_abs_diff_closed_form": float((M.cpu() - C.cpu()).abs().max()),
        "max_abs_diff_per_pair": float((M.cpu() - P).abs().max()),
        "ratio_closed_over_matrix": c["min"] / h["min"],
        "ratio_loop_over_matrix": p["min"] / h["min"],
        "matmul_flops_per_s": peak,
        "matrix_flops_executed": flop_executed,
        "matrix_flops_planned": 2 * cost.flops,
        "matrix_flops_per_s": flop_executed / h["min"],
        "fraction_of_matmul_rate": flop_executed / h["min"] / peak,
        "closed_form_flops": closed_flops,
        "closed_form_fraction_of_matmul_rate": closed_flops / c["min"] / peak,
        "per_pair_flops": 2 * pair_cost.flops,
        "threads": torch.get_num_threads(),
    }
    if base is not None:
        result["baseline_rev"] = args.baseline_rev
        result["baseline_per_pair_loop_s"] = min(base["times"])
        result["ratio_baseline_loop_over_matrix"] = min(base["times"]) / h["min"]
    print(f"models {n}, block size {plan.block_size}, blocks {len(plan.blocks)}")
    print(f"similarity_matrix: cold {cold:.3f} s, disk-warm {disk_warm:.3f} s, hot min {h['min']:.3f} s (median {h['median']:.3f})")
    print(f"closed-form einsum: min {c['min']:.3f} s (median {c['median']:.3f})")
    print(f"per-pair loop ({n * n} calls): min {p['min']:.2f} s (median {p['median']:.2f})")
    print(f"ratio closed-form / matrix: {result['ratio_closed_over_matrix']:.2f}x  (bar: >= 1)")
    print(f"ratio per-pair loop / matrix: {result['ratio_loop_over_matrix']:.1f}x  (bar: > 100)")
    print(f"max |matrix - closed form| {result['max_abs_diff_closed_form']:.2e}, "
          f"max |matrix - per pair| {result['max_abs_diff_per_pair']:.2e}")
    print(f"matmul rate {peak / 1e9:.1f} GFLOP/s; matrix executes {flop_executed / 1e9:.2f} GFLOP "
          f"({2 * cost.flops / 1e9:.2f} planned before sharing) at {result['matrix_flops_per_s'] / 1e9:.1f} GFLOP/s "
          f"= {100 * result['fraction_of_matmul_rate']:.0f}% of the matmul rate; closed form at "
          f"{100 * result['closed_form_fraction_of_matmul_rate']:.0f}%")
    if base is not None:
        print(f"per-pair loop at {args.baseline_rev} (separate process): {min(base['times']):.2f} s -> "
              f"{result['ratio_baseline_loop_over_matrix']:.0f}x the matrix")
    tag = args.tag or f"{device.type}-t{torch.get_num_threads()}"
    save(f"matrix_bar_{tag}", result)


if __name__ == "__main__":
    main()
