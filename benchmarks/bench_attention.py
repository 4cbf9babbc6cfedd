"""Attention layers and deep stacks: exact and recursive pair times against Monte Carlo.

Figures, each measured in one run, each in its own forked process with that process's peak
resident memory next to it:

* one attention layer (d_model 64, n_ctx 4, 4 heads, residual), squared score and the
  two-score-pair form: one exact Gaussian ``tnsim.similarity`` cold (empty path cache) and
  warm (new checkpoints of the same architecture), against a Monte Carlo estimate of the same
  cosine to standard error 1e-3 timed in the same process (the ratio is MC / exact warm);
* residual bilinear stacks of depth 2, 6 and 12 (d 32, hidden 64, biases): compile time and
  one recursive ``similarity`` per measure, cold (empty path cache) and best of 3 warm;
* the exact depth-3 Gaussian with biases (``exact_depth.py``'s model), warm, timed on random
  orbits and scaled to all of them (as ``exact_depth.py`` does).

    python benchmarks/bench_attention.py [--quick] [--profile]

The attention rows contract every orbit (and print the exact cosine next to Monte Carlo's).
The depth-3 row's 11847 orbits per inner product take over an hour cold, so it is timed on
``--depth3-orbits`` random orbits (default 300, 100 with ``--quick``) and scaled. ``--quick``
uses 2 warm repeats; ``--profile`` prints where the attention layer's exact time goes
(cProfile of the cold and warm runs); ``--only`` and ``--forms`` pick figures.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import tempfile
import time

import torch
from common import device_name, in_child, isolated_cache, monte_carlo_cosine, save

import exact_depth
import tnsim

D_MODEL, N_CTX, HEADS = 64, 4, 4


def attention(seed: int, form: str) -> torch.nn.Module:
    torch.manual_seed(seed)
    return tnsim.nn.BilinearAttention(
        D_MODEL, N_CTX, n_heads=HEADS, residual=True,
        squared=form == "squared", paired=form == "paired",
    )


def attention_figure(form: str) -> dict:
    torch.set_num_threads(1)
    isolated_cache(tempfile.mkdtemp(prefix="tnsim-bench-"))
    a, b = attention(1, form), attention(2, form)
    row = exact_depth.time_exact((a, b), (attention(3, form), attention(4, form)), "gaussian")
    est, samples, mc_s, se = monte_carlo_cosine(a, b, (N_CTX, D_MODEL), batch=1024)
    exact_value = tnsim.similarity(a, b, measure="gaussian", method="exact")  # plans cached
    return row | dict(form=form, exact=exact_value, mc_estimate=est, mc_samples=samples,
                      mc_s=mc_s, mc_se=se, ratio=mc_s / row["warm_s"])


def stack(depth: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        *[tnsim.nn.Bilinear(32, 64, 32, bias=True, residual=True) for _ in range(depth)]
    )


def depth_figure(depth: int, repeats: int) -> dict:
    torch.set_num_threads(1)
    isolated_cache(tempfile.mkdtemp(prefix="tnsim-bench-"))  # the first pair is cold
    t = time.perf_counter()
    a, b = tnsim.compile(stack(depth, 1)), tnsim.compile(stack(depth, 2))
    compile_s = (time.perf_counter() - t) / 2
    row = dict(depth=depth, compile_s=compile_s, degree=a.degree, group_order_log2=a.terms[0].group_order.bit_length() - 1)
    for measure in ("tensor", "gaussian"):
        times = []
        for _ in range(repeats + 1):  # the first run plans (cold)
            t = time.perf_counter()
            value = tnsim.similarity(a, b, measure=measure, method="recursive")
            times.append(time.perf_counter() - t)
        row[measure] = dict(value=value, cold_s=times[0], warm_s=min(times[1:]))
    return row


def depth3_figure(sample: int) -> dict:
    torch.set_num_threads(1)
    args = argparse.Namespace(d=8, hidden=16)
    os.environ["TNSIM_CACHE_DIR"] = tempfile.mkdtemp(prefix="tnsim-bench-")
    return exact_depth.run(3, True, "gaussian", args, sample)


def profile_attention(form: str) -> str:
    """cProfile of the cold and warm exact runs (functions by total and cumulative time)."""
    torch.set_num_threads(1)
    isolated_cache(tempfile.mkdtemp(prefix="tnsim-bench-"))
    prof = cProfile.Profile()
    prof.enable()
    exact_depth.time_exact((attention(1, form), attention(2, form)),
                           (attention(3, form), attention(4, form)), "gaussian")
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(20)
    pstats.Stats(prof, stream=out).sort_stats("cumtime").print_stats(25)
    return out.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--depth3-orbits", type=int, default=None, metavar="N")
    ap.add_argument("--forms", nargs="+", default=["squared", "paired"], choices=["squared", "paired"])
    ap.add_argument("--only", nargs="+", default=["attention", "depth", "depth3"],
                    choices=["attention", "depth", "depth3"], help="figures to measure")
    args = ap.parse_args()
    torch.set_num_threads(1)
    repeats = 2 if args.quick else 3
    sample = args.depth3_orbits or (100 if args.quick else 300)
    rows: dict = {"device": device_name(torch.device("cpu"))}
    print("| figure | cold | warm | other | ratio | peak RSS |")
    print("|---|---|---|---|---|---|")
    for form in args.forms if "attention" in args.only else ():
        r, peak = in_child(attention_figure, form)
        rows[f"attention_{form}"] = r | {"peak_mib": peak}
        print(f"| attention, {form} ({r['contractions']} contractions / inner; exact {r['exact']:.4f}, "
              f"MC {r['mc_estimate']:.4f} ± {r['mc_se']:.1e}, {r['mc_samples']} samples) "
              f"| {r['cold_s']:.2f} s | {r['warm_s']:.3f} s | MC {r['mc_s']:.2f} s "
              f"| {r['ratio']:.1f}× | {peak:.0f} MiB |", flush=True)
    for depth in (2, 6, 12) if "depth" in args.only else ():
        r, peak = in_child(depth_figure, depth, repeats)
        rows[f"depth_{depth}"] = r | {"peak_mib": peak}
        for measure in ("tensor", "gaussian"):
            m = r[measure]
            print(f"| depth {depth} recursive {measure} (degree {r['degree']}, group 2^"
                  f"{r['group_order_log2']}, compile {r['compile_s']:.2f} s) "
                  f"| {m['cold_s']:.3f} s | {m['warm_s']:.3f} s | | | {peak:.0f} MiB |", flush=True)
    if "depth3" in args.only:
        r, peak = in_child(depth3_figure, sample)
        rows["depth3_exact_gaussian_biases"] = r | {"peak_mib": peak}
        print(f"| depth 3 exact Gaussian, biases ({r['contractions']} contractions; "
              f"{r.get('sampled', 'all')} orbits timed, scaled) | {r['cold_s']:.1f} s | "
              f"{r['warm_s']:.2f} s | | | {peak:.0f} MiB |", flush=True)
    if args.profile:
        for form in args.forms:
            text, _ = in_child(profile_attention, form)
            rows[f"profile_{form}"] = text
            print(f"\n## warm exact profile, {form}\n{text}")
    save("attention" + ("_quick" if args.quick else "") + "_" + "_".join(args.only + args.forms), rows)


if __name__ == "__main__":
    main()
