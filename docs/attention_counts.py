"""Contraction counts of the exact method on polynomial attention (one inner product <a, b>).

Run:  python docs/attention_counts.py
For every attention variant (and a tensor-transformer block) and measure it prints the pairings a brute-force sum would
contract (Wick matchings of the copies of both sides, or bijections of the homogenised
copies), the orbits left after deduplication by the terms' symmetry groups, and the
contractions actually run (orbits that vanish because a copy never meets the constant
coordinate are skipped). Counts depend on the structure only (n_ctx = 3, d_model = 4,
d_head = 2 here).
"""

from __future__ import annotations

import math

import torch

import tnsim
from tnsim.doubled import count_orbits
from tnsim.ir._groups import count_matchings
from tnsim.measures import GaussianMeasure, TensorMeasure
from tnsim.methods import exact, prepare
from tnsim.plan import dry_run


def counts(net_a, net_b, measure):
    """(pairings before deduplication, orbits, contractions run) for <a, b>."""
    p = prepare(net_a, net_b, measure)
    a, b = p.a, p.b
    kind = "tensor" if isinstance(measure, TensorMeasure) else "gaussian"
    kernel = p.kernel("ab")
    k = max(a.degree, b.degree)
    before = orbits = 0
    for ta in a.terms:
        for tb in b.terms:
            va, vb = (k - ta.degree, k - tb.degree) if kind == "tensor" else (0, 0)
            if kind == "tensor":
                before += math.factorial(k)
            else:
                before += count_matchings(ta.degree + tb.degree, kernel.partial)
            orbits += count_orbits(kernel, ta, tb, va, vb)
    stats: dict = {}
    with dry_run():
        exact(p, stats=stats)
    return before, orbits, stats["contractions"]


def main() -> None:
    rows = []
    for heads in (1, 2):
        for squared in (False, True):
            for residual in (False, True):
                torch.manual_seed(0)
                a, b = (
                    tnsim.compile(tnsim.nn.BilinearAttention(
                        4, 3, n_heads=heads, d_head=2, squared=squared, residual=residual
                    ).double())
                    for _ in range(2)
                )
                order = max(t.group_order for t in a.terms)
                for name, measure in (("tensor", TensorMeasure()), ("gaussian", GaussianMeasure())):
                    rows.append((heads, "q.k squared" if squared else "q.k", residual, order, name)
                                + counts(a, b, measure))
    torch.manual_seed(0)
    a, b = (
        tnsim.compile(tnsim.nn.TensorTransformerBlock(4, 3, n_heads=1, d_head=2, d_hidden=4).double())
        for _ in range(2)
    )
    order = max(t.group_order for t in a.terms)
    for name, measure in (("tensor", TensorMeasure()), ("gaussian", GaussianMeasure())):
        rows.append(("block, 1", "q.k", True, order, name) + counts(a, b, measure))
    print("| heads | score | residual | group order | measure | pairings | orbits | contractions |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")


if __name__ == "__main__":
    main()
