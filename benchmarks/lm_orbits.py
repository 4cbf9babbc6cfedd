"""Where the language-model cross chain's time goes, orbit by orbit, and what memory costs.

Diagnostics for issue 9 (not a target figure). On the LM workload of ``bench_lm.py`` (two
checkpoints, plans warm) it runs one cross chain with every orbit contraction timed, and prints:

* the cross chain's time and multiply-adds, against the machine's GEMM rate;
* the largest orbit contractions: time, multiply-adds, the rate they reach, and whether they
  ran row by row over a causal mask (``tnsim.plan._masked``);
* the same chain with masked orbits run dense (median ratio over interleaved repeats);
* what a fresh 64 MiB intermediate costs: allocation + first touch against a reused buffer,
  and ``torch.bmm`` into a new output against one into a preallocated output (on Linux, glibc
  serves allocations above 32 MiB with ``mmap``, so every such intermediate is page-faulted
  in again).

    python benchmarks/lm_orbits.py [--measure tensor|gaussian] [--repeats 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_lm import compiled
from common import matmul_rate, save

import tnsim
from tnsim.methods import _recursive as recursive
from tnsim.plan import _contract as contract


def _median_ms(fn, repeats: int = 9) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def memory_figures() -> dict:
    n = 1 << 24  # 64 MiB of float32: the size of the attention crossings' intermediates
    reused = torch.empty(n)
    a, b, out = torch.randn(64, 1024, 64), torch.randn(64, 64, 256), torch.empty(64, 1024, 256)
    return dict(
        alloc_fill_ms=_median_ms(lambda: torch.empty(n).fill_(1.0)),
        reused_fill_ms=_median_ms(lambda: reused.fill_(1.0)),
        bmm_new_ms=_median_ms(lambda: torch.bmm(a, b)),
        bmm_out_ms=_median_ms(lambda: torch.bmm(a, b, out=out)),
        bmm_flops=64 * 1024 * 64 * 256,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measure", default="tensor", choices=["tensor", "gaussian"])
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    name = "_pair_tensor" if args.measure == "tensor" else "_pair_gaussian"
    pair = getattr(recursive, name)
    captured = {}

    def grab(*a, **k):
        captured["call"] = (a, k)
        return pair(*a, **k)

    setattr(recursive, name, grab)
    nets = compiled(2)
    tnsim.similarity_matrix(nets, measure=args.measure, method="recursive", progress=False)
    setattr(recursive, name, pair)
    call_args, call_kwargs = captured["call"]
    chain = lambda: pair(*call_args, **call_kwargs)  # noqa: E731
    for _ in range(2):
        chain()

    rows, run, run_masked = [], contract.run, contract.run_masked

    def timed_run(con, ops, itemsize):
        t = time.perf_counter()
        out = run(con, ops, itemsize)
        rows.append(dict(masked=False, s=time.perf_counter() - t, flops=con.flops))
        return out

    def timed_masked(plan, equation, ops):
        t = time.perf_counter()
        out = run_masked(plan, equation, ops)
        rows.append(dict(masked=True, s=time.perf_counter() - t, flops=plan.flops))
        return out

    contract.run, contract.run_masked = timed_run, timed_masked
    stats = {}
    args_with_stats = list(call_args)
    args_with_stats[-1] = stats
    t = time.perf_counter()
    pair(*args_with_stats, **call_kwargs)
    chain_s = time.perf_counter() - t
    contract.run, contract.run_masked = run, run_masked

    planner = contract.masked_plan
    ratios = []
    for _ in range(args.repeats):  # interleaved: masked rows as planned, then all dense
        t = time.perf_counter()
        chain()
        planned = time.perf_counter() - t
        contract.masked_plan = lambda *a, **k: None
        t = time.perf_counter()
        chain()
        ratios.append((time.perf_counter() - t) / planned)
        contract.masked_plan = planner

    gemm = matmul_rate(torch.device("cpu"))
    masked = [r for r in rows if r["masked"]]
    out = dict(measure=args.measure, threads=args.threads, chain_s=chain_s, chain_flops=stats["flops"],
               gemm_flops_per_s=gemm, in_contractions_s=sum(r["s"] for r in rows),
               masked_s=sum(r["s"] for r in masked), masked_flops=sum(r["flops"] for r in masked),
               dense_over_masked=statistics.median(ratios), orbits=sorted(rows, key=lambda r: -r["s"])[:12],
               memory=memory_figures())
    save(f"lm_orbits_{args.measure}", out)
    print(f"{args.measure} cross chain {chain_s:.3f} s, {stats['flops']:.2e} multiply-adds "
          f"({2 * stats['flops'] / chain_s / gemm:.2f} of the {gemm / 1e9:.0f} GFLOP/s GEMM rate); "
          f"orbit contractions {out['in_contractions_s']:.3f} s, of which masked "
          f"{out['masked_s']:.3f} s for {out['masked_flops']:.2e} multiply-adds "
          f"({out['masked_flops'] / max(out['masked_s'], 1e-9) / 1e9:.1f} G/s)")
    for r in out["orbits"]:
        print(f"  {'masked' if r['masked'] else 'dense ':6s} {1e3 * r['s']:7.1f} ms  {r['flops']:.2e}  "
              f"{r['flops'] / r['s'] / 1e9:5.1f} G multiply-adds/s")
    print(f"all orbits dense / masked rows as planned: {out['dense_over_masked']:.2f} (median of {args.repeats})")
    m = out["memory"]
    print(f"64 MiB: new + fill {m['alloc_fill_ms']:.1f} ms vs reused {m['reused_fill_ms']:.1f} ms; "
          f"bmm into a new output {m['bmm_new_ms']:.1f} ms vs preallocated {m['bmm_out_ms']:.1f} ms "
          f"({m['bmm_flops'] / m['bmm_out_ms'] / 1e6:.0f} G multiply-adds/s)")


if __name__ == "__main__":
    main()
