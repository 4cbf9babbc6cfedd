"""Where one exact comparison's time goes: cold vs warm vs costing, per contraction.

One squared-score ``tnsim.nn.BilinearAttention`` layer (d_model 16, n_ctx 4, 1 head,
residual), exact Gaussian similarity, float32, one torch thread. Reported in one run:

* cold: empty memory and disk path caches (path search included);
* warm: a second pair of checkpoints of the same structure (paths and orbit lists cached);
* ``tnsim.cost`` from an empty cache (orbit counts exact, a sample of paths planned);
* contractions and flops of the run, hence microseconds per contraction warm, against the
  time those flops take at the machine's matrix-multiply rate.

Usage::

    python benchmarks/engine_overhead.py [--d 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from common import isolated_cache, matmul_rate, save

import tnsim
from tnsim import _caches


def layer(d: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return tnsim.nn.BilinearAttention(d, 4, n_heads=1, squared=True, residual=True)


def clock(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            isolated_cache(tmp)
            _caches.clear()
            t_cost, c = clock(lambda: tnsim.cost(layer(args.d, 1), layer(args.d, 2), method="exact"))
            _caches.clear()
            tnsim.clear_cache()
            with tnsim.plan.quiet():
                t_cold, run = clock(lambda: tnsim.compare(layer(args.d, 3), layer(args.d, 4), method="exact"))
                t_warm, _ = clock(lambda: tnsim.similarity(layer(args.d, 5), layer(args.d, 6), method="exact"))
        rows.append(dict(cost_s=t_cost, cold_s=t_cold, warm_s=t_warm, contractions=run.cost.contractions,
                         flops=run.cost.flops, cost_contractions=c.contractions, cost_flops=c.flops))
        print(rows[-1], flush=True)
    best = {k: min(r[k] for r in rows) for k in ("cost_s", "cold_s", "warm_s")}
    rate = matmul_rate(torch.device("cpu"))
    n, flops = rows[0]["contractions"], rows[0]["flops"]
    out = dict(
        d=args.d, **best, contractions=n, flops=flops,
        cost_contractions=rows[0]["cost_contractions"], cost_flops=rows[0]["cost_flops"],
        warm_us_per_contraction=1e6 * best["warm_s"] / n,
        gemm_s=2 * flops / rate, warm_over_gemm=best["warm_s"] / (2 * flops / rate),
        cold_over_warm=best["cold_s"] / best["warm_s"], cost_over_warm=best["cost_s"] / best["warm_s"],
        matmul_gflops=rate / 1e9,
    )
    print(out)
    save("engine_overhead", out)


if __name__ == "__main__":
    main()
