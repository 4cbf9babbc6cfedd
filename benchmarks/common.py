"""Shared helpers for the benchmark scripts (not part of the package)."""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import resource
import shlex
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

import tnsim
from tnsim import _caches

RESULTS = Path(__file__).resolve().parent / "results"


def command() -> str:
    """The command line that ran this script (recorded next to every figure)."""
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} cores, torch threads={torch.get_num_threads()})"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def summary(times: list[float]) -> dict:
    return {"min": min(times), "median": statistics.median(times), "runs": len(times), "all": times}


def matmul_rate(device: torch.device, dtype=torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """Best measured FLOP/s of an ``n x n`` matrix product (the machine's practical peak)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = min(timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * n**3 / best


def bar_models(n: int = 24, seed: int = 0, d_in: int = 784, width: int = 64, hidden: int = 128,
               d_out: int = 10, device="cpu"):
    """The performance-bar models: Linear(784, 64) then Bilinear(64, 128, 10), float32."""
    torch.manual_seed(seed)
    return [
        torch.nn.Sequential(tnsim.nn.Linear(d_in, width), tnsim.nn.Bilinear(width, hidden, d_out)).to(device)
        for _ in range(n)
    ]


def closed_form_matrix(models) -> torch.Tensor:
    r"""Hand-written batched torch.einsum of the one-layer Gaussian formula (all pairs).

    With :math:`L' = LW`, :math:`R' = RW`: :math:`E[f_a\cdot f_b] = \sum_o \mathrm{tr}A_o
    \mathrm{tr}B_o + 2\langle \mathrm{Sym}A, \mathrm{Sym}B\rangle`, where
    :math:`\langle\mathrm{Sym}A,\mathrm{Sym}B\rangle = \tfrac12\sum_{hh'}(D_a^\top D_b)_{hh'}
    [(L'_aL_b'^\top)(R'_aR_b'^\top) + (L'_aR_b'^\top)(R'_aL_b'^\top)]_{hh'}`; normalised to cosines.
    """
    W = torch.stack([m[0].weight for m in models]).detach()
    L = torch.stack([m[1].left.weight for m in models]).detach()
    R = torch.stack([m[1].right.weight for m in models]).detach()
    D = torch.stack([m[1].down.weight for m in models]).detach()
    Lp = torch.einsum("nhw,nwi->nhi", L, W)
    Rp = torch.einsum("nhw,nwi->nhi", R, W)
    DD = torch.einsum("aoh,bok->abhk", D, D)
    LL = torch.einsum("ahi,bki->abhk", Lp, Lp)
    RR = torch.einsum("ahi,bki->abhk", Rp, Rp)
    LR = torch.einsum("ahi,bki->abhk", Lp, Rp)
    RL = torch.einsum("ahi,bki->abhk", Rp, Lp)
    sym = 0.5 * (DD * (LL * RR + LR * RL)).sum((-1, -2))
    tr = torch.einsum("aoh,ahi,ahi->ao", D, Lp, Rp)
    g = tr @ tr.T + 2 * sym
    d = torch.sqrt(torch.diagonal(g))
    return g / d[:, None] / d[None, :]


def monte_carlo_cosine(fa, fb, shape, target_se: float = 1e-3, batch: int = 8192,
                       max_samples: int = 2**24, seed: int = 0):
    """Gaussian cosine of two models on inputs of ``shape`` (N(0, I)), sampled until its
    standard error (delta method on the three second moments) is ``target_se``.

    Returns (estimate, samples, seconds, standard error)."""
    g = torch.Generator().manual_seed(seed)
    moments = []
    n = 0
    t = time.perf_counter()
    with torch.no_grad():
        while True:
            x = torch.randn((batch,) + tuple(shape), generator=g)
            ya, yb = fa(x).double().flatten(1), fb(x).double().flatten(1)
            moments.append(torch.stack([(ya * yb).sum(1), (ya * ya).sum(1), (yb * yb).sum(1)], 1))
            n += batch
            m = torch.cat(moments)
            mu = m.mean(0)
            cov = torch.cov(m.T) / n
            ab, aa, bb = mu
            cos = ab / torch.sqrt(aa * bb)
            grad = torch.stack([1 / torch.sqrt(aa * bb), -0.5 * cos / aa, -0.5 * cos / bb])
            se = float(torch.sqrt(grad @ cov @ grad))
            if se <= target_se or n >= max_samples:
                return float(cos), n, time.perf_counter() - t, se


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_child(fn, *args):
    """``fn(*args)`` in a forked process, with that process's peak memory (MiB): each figure's
    peak is its own, not the benchmark's running maximum."""
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    # a plain (non-daemonic) process: cotengra's hyper-optimiser may start workers of its own,
    # which a daemonic pool worker is not allowed to do
    child = ctx.Process(target=_with_peak, args=(fn, args, send))
    child.start()
    send.close()
    try:
        ok, out, peak = receive.recv()
    except EOFError:
        child.join()
        raise RuntimeError(f"the child process running {fn.__name__} died (exit code {child.exitcode})") from None
    child.join()
    if not ok:
        raise RuntimeError(f"{fn.__name__} failed in the child process:\n{out}")
    return out, peak


def _with_peak(fn, args, send):
    try:
        out = fn(*args)
    except BaseException:  # reported to the parent with its traceback
        send.send((False, traceback.format_exc(), None))
        return
    send.send((True, out, peak_rss_mib()))


def save(name: str, data: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {"command": command(), "torch": torch.__version__, "tnsim": tnsim.__version__, **data}
    path.write_text(json.dumps(data, indent=1))
    print(f"wrote {path}")
    return path


def isolated_cache(tmp: str) -> None:
    """Point tnsim's path cache at an empty folder (a cold start) and forget in-memory plans."""
    os.environ["TNSIM_CACHE_DIR"] = tmp
    tnsim.clear_cache(disk=False)
    _caches.clear()
