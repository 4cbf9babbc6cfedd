"""Command line: ``tnsim demo`` (more commands arrive with the research workflows)."""

from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    import torch
    from sklearn.datasets import load_digits

    import tnsim

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(tnsim.nn.Linear(64, 32), tnsim.nn.Bilinear(32, 64, 10))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-3)
        for _ in range(300):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        acc = (model(x).argmax(1) == y).float().mean().item()
        print(f"model {seed}: train accuracy {acc:.3f}")
        models.append(model)
    with torch.no_grad():
        agree = (models[0](x).argmax(1) == models[1](x).argmax(1)).float().mean().item()
        cos = torch.nn.functional.cosine_similarity(models[0](x), models[1](x), dim=1).mean().item()
    for measure in ("tensor", "gaussian"):
        c = tnsim.compare(models[0], models[1], measure=measure)
        print(f"{measure:>8} similarity {c.value:.4f}  ({c.method}, {c.cost.contractions} contractions)")
    print(f"  output agreement {agree:.4f}, mean output cosine {cos:.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tnsim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="train two bilinear digit classifiers and compare them")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
