"""The paper's language-model workload: a 102-checkpoint similarity matrix, recursive method.

Model: ``Embedding(4096, 256, positional) -> BilinearAttention(256, n_ctx 4, 4 heads,
residual) x 2 -> Unembedding(256, 4096)``; checkpoints are copies of one random model with
every weight perturbed by 2 % of its standard deviation. Figures, each in its own forked
process (peak resident memory next to it), torch threads as given (default 2 = the cores):

* ``tnsim.cost`` of the whole 102 x 102 ``similarity_matrix`` (cold path cache), and the
  time it reports (:attr:`tnsim.Cost.seconds`);
* one recursive ``similarity`` pair, cold and warm;
* a measured sub-matrix of ``--sub`` checkpoints, and the full matrix extrapolated from it by
  the ratio of the two costs' flops (both from ``tnsim.cost``, same blocks), and by its parts:
  the mean time of one model's chain and of one cross chain in that run, times 102 and
  102 * 101 / 2 (a small sub-matrix is mostly chains, the full one mostly cross chains);
* the exact method's cost for one pair (estimated, not run).

    python benchmarks/bench_lm.py [--quick] [--measures tensor gaussian] [--sub 8] [--skip-exact]
    python benchmarks/bench_lm.py --block-sizes 1 2 4 [--sub 4]   # only the sub-matrix, per block size
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import torch
from common import device_name, in_child, isolated_cache, save

import tnsim
from tnsim.methods import _recursive as recursive

VOCAB, D_MODEL, N_CTX, HEADS, CHECKPOINTS = 4096, 256, 4, 4, 102


def checkpoints(n: int, seed: int = 0) -> list[torch.nn.Module]:
    torch.manual_seed(seed)
    base = torch.nn.Sequential(
        tnsim.nn.Embedding(VOCAB, D_MODEL, n_ctx=N_CTX, positional=True),
        tnsim.nn.BilinearAttention(D_MODEL, N_CTX, n_heads=HEADS, residual=True),
        tnsim.nn.BilinearAttention(D_MODEL, N_CTX, n_heads=HEADS, residual=True),
        tnsim.nn.Unembedding(D_MODEL, VOCAB),
    )
    out = []
    for _ in range(n):
        m = copy.deepcopy(base)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.02 * p.std() * torch.randn_like(p))
        out.append(m)
    return out


def compiled(n: int) -> list[tnsim.Network]:
    example = torch.zeros(1, N_CTX, VOCAB)
    example[..., 0] = 1
    return [tnsim.compile(m, example) for m in checkpoints(n)]


def cost_figure(measure: str, threads: int, n: int) -> dict:
    torch.set_num_threads(threads)
    isolated_cache(tempfile.mkdtemp(prefix="tnsim-bench-"))
    nets = compiled(n)
    t = time.perf_counter()
    c = tnsim.cost(nets, measure=measure, method="recursive")
    return dict(cost_s=time.perf_counter() - t, flops=c.flops, seconds=c.seconds, blocks=c.blocks,
                block_size=c.block_size, largest_mib=c.largest_intermediate_bytes / 2**20,
                contractions=c.contractions)


def pair_figure(measure: str, threads: int, price_exact: bool = True) -> dict:
    torch.set_num_threads(threads)
    isolated_cache(tempfile.mkdtemp(prefix="tnsim-bench-"))
    a, b, c, d = compiled(4)
    t = time.perf_counter()
    value = tnsim.similarity(a, b, measure=measure, method="recursive")
    cold = time.perf_counter() - t
    warm = []
    for _ in range(2):
        t = time.perf_counter()
        tnsim.similarity(c, d, measure=measure, method="recursive")
        warm.append(time.perf_counter() - t)
    if not price_exact:
        return dict(value=value, cold_s=cold, warm_s=min(warm))
    t = time.perf_counter()
    try:
        exact = tnsim.cost(a, b, measure=measure, method="exact")
        priced = dict(exact_flops=exact.flops, exact_contractions=exact.contractions,
                      exact_seconds=exact.seconds)
    except tnsim.UnaffordableError as e:  # refused before anything runs: report why
        priced = dict(exact_refused=str(e))
    priced["exact_cost_s"] = time.perf_counter() - t
    return dict(value=value, cold_s=cold, warm_s=min(warm)) | priced


def _timing(times: list, fn):
    def timed(*args, **kwargs):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        times.append(time.perf_counter() - t)
        return out
    return timed


def matrix_figure(measure: str, threads: int, n: int) -> dict:
    """The sub-matrix, timed whole and (instrumented: the recursive method's per-model chains
    and cross chains are wrapped with clocks) by its parts, so the full matrix can be
    extrapolated as ``N * chain + N (N-1) / 2 * pair`` too."""
    torch.set_num_threads(threads)
    isolated_cache(tempfile.mkdtemp(prefix="tnsim-bench-"))
    nets = compiled(n)
    c = tnsim.cost(nets, measure=measure, method="recursive")
    # plans: a 2-checkpoint matrix has the blocks (stacks of one) the sub-matrix runs
    tnsim.similarity_matrix(nets[:2], measure=measure, method="recursive", progress=False)
    chains, pairs = [], []
    recursive._chain = _timing(chains, recursive._chain)
    recursive._pair_tensor = _timing(pairs, recursive._pair_tensor)
    recursive._pair_gaussian = _timing(pairs, recursive._pair_gaussian)
    t = time.perf_counter()
    m = tnsim.similarity_matrix(nets, measure=measure, method="recursive", progress=False)
    run_s = time.perf_counter() - t
    chain_s, pair_s = sum(chains) / len(chains), sum(pairs) / len(pairs)
    by_parts = CHECKPOINTS * chain_s + CHECKPOINTS * (CHECKPOINTS - 1) / 2 * pair_s
    return dict(n=n, run_s=run_s, flops=c.flops, cost_seconds=c.seconds, blocks=c.blocks,
                block_size=c.block_size, off_diagonal_mean=float(m[~torch.eye(n, dtype=torch.bool)].mean()),
                chains=len(chains), chain_s=chain_s, pairs=len(pairs), pair_s=pair_s, by_parts_full_s=by_parts)


def block_size_figure(measure: str, threads: int, n: int, sizes: list[int]) -> list[dict]:
    """The sub-matrix timed at each block size (plans warm), with what ``cost`` predicts."""
    torch.set_num_threads(threads)
    isolated_cache(tempfile.mkdtemp(prefix="tnsim-bench-"))
    nets = compiled(n)
    # plans: a 2-checkpoint matrix (it warms the blocks of one model; larger blocks plan in the loop)
    tnsim.similarity_matrix(nets[:2], measure=measure, method="recursive", progress=False)
    rows = []
    for size in sizes:
        c = tnsim.cost(nets, measure=measure, method="recursive", block_size=size)
        t = time.perf_counter()
        tnsim.similarity_matrix(nets, measure=measure, method="recursive", block_size=size, progress=False)
        rows.append(dict(block_size=size, blocks=c.blocks, run_s=time.perf_counter() - t, flops=c.flops,
                         cost_seconds=c.seconds))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a sub-matrix of 4 checkpoints")
    ap.add_argument("--measures", nargs="+", default=["tensor", "gaussian"], choices=["tensor", "gaussian"])
    ap.add_argument("--sub", type=int, default=None, help="checkpoints in the measured sub-matrix (default 8)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--block-sizes", type=int, nargs="+", default=None, metavar="B")
    ap.add_argument("--skip-exact", action="store_true",
                    help="do not price the exact method (its estimate lists orbits for minutes)")
    args = ap.parse_args()
    sub = args.sub or (4 if args.quick or args.block_sizes else 8)
    out = dict(device=device_name(torch.device("cpu")), threads=args.threads, sub=sub)
    if args.block_sizes:
        for measure in args.measures:
            rows, rss = in_child(block_size_figure, measure, args.threads, sub, args.block_sizes)
            out[measure] = dict(block_sizes=rows, peak_mib=rss)
            for r in rows:
                print(f"{measure}, {sub} checkpoints, block size {r['block_size']} ({r['blocks']} blocks): "
                      f"{r['run_s']:.1f} s run, cost() predicted {r['cost_seconds']:.1f} s")
        save("lm_blocks_" + "_".join(args.measures), out)
        return
    for measure in args.measures:
        full, rss_cost = in_child(cost_figure, measure, args.threads, CHECKPOINTS)
        pair, rss_pair = in_child(pair_figure, measure, args.threads, not args.skip_exact)
        part, rss_part = in_child(matrix_figure, measure, args.threads, sub)
        extrapolated = part["run_s"] * full["flops"] / part["flops"]
        out[measure] = dict(cost=full | dict(peak_mib=rss_cost), pair=pair | dict(peak_mib=rss_pair),
                            sub_matrix=part | dict(peak_mib=rss_part), extrapolated_full_s=extrapolated)
        exact = ("not priced (--skip-exact)" if "exact_cost_s" not in pair
                 else f"refused in {pair['exact_cost_s']:.0f} s: {pair['exact_refused']}" if "exact_refused" in pair
                 else f"{pair['exact_contractions']} contractions, {pair['exact_flops']:.3g} flops "
                      f"(~{pair['exact_seconds'] / 60:.1f} min estimated)")
        print(f"{measure}: cost() of the {CHECKPOINTS}-checkpoint matrix {full['cost_s']:.2f} s "
              f"(it estimates {full['seconds'] / 60:.1f} min); pair cold {pair['cold_s']:.2f} s, "
              f"warm {pair['warm_s']:.2f} s; {sub}-checkpoint matrix {part['run_s']:.1f} s -> "
              f"{CHECKPOINTS}-checkpoint matrix ~{extrapolated / 60:.1f} min (by flops), "
              f"~{part['by_parts_full_s'] / 60:.1f} min by parts ({part['chains']} chains of "
              f"{part['chain_s']:.3f} s, {part['pairs']} cross chains of {part['pair_s']:.3f} s); exact pair: {exact}")
    save("lm_" + "_".join(args.measures) + ("_quick" if args.quick else ""), out)


if __name__ == "__main__":
    main()
