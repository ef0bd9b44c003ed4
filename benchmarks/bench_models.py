"""Training-step throughput and size of every registered architecture, against the generalized U-Net.

Each model is built with its default options and timed for forward + backward on random (batch, 1, size, size)
inputs on the CPU, after warm-up iterations. Ratios compare with `unet` (the original U-Net) measured in the same
run. Run: `.venv/bin/python benchmarks/bench_models.py [--iters 3] [--size 256] [--batch 4]`.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from celltune.trainables.architectures import build_model, list_models
from celltune.trainables.complexity import count_conv_macs, count_parameters

BASELINE = "unet"


@dataclass
class Row:
    name: str
    params: int
    gmac: float
    images_per_s: float


def measure(name: str, *, size: int, batch: int, iters: int, warmup: int) -> Row:
    """Images per second of forward + backward for model `name` at its defaults."""
    torch.manual_seed(0)
    model = build_model(name).train()
    images = torch.rand(batch, 1, size, size)

    def step() -> None:
        model(images).float().mean().backward()
        model.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    elapsed = time.perf_counter() - start
    return Row(
        name=name,
        params=count_parameters(model),
        gmac=count_conv_macs(model, (1, 1, size, size)) / 1e9,
        images_per_s=iters * batch / elapsed,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per model (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first (default 1)")
    parser.add_argument("--size", type=int, default=256, help="square input side (default 256)")
    parser.add_argument("--batch", type=int, default=4, help="batch size (default 4)")
    parser.add_argument("--models", nargs="*", default=None, help=f"models to time (default all; {BASELINE} always)")
    args = parser.parse_args()
    if args.iters < 1 or args.warmup < 0 or args.batch < 1 or args.size < 32:
        parser.error("need --iters >= 1, --warmup >= 0, --batch >= 1, --size >= 32")

    names = [BASELINE] + [n for n in (args.models or list_models()) if n != BASELINE]
    rows = [
        measure(n, size=args.size, batch=args.batch, iters=args.iters, warmup=args.warmup)
        for n in tqdm(names, desc="models", leave=False)
    ]
    base = rows[0]
    print(
        f"forward+backward, CPU ({torch.get_num_threads()} threads), batch {args.batch}, {args.size}x{args.size}, "
        f"{args.iters} timed iterations after {args.warmup} warm-up; GMac = conv MACs per image"
    )
    header = f"| {'model':<12} | {'params':>11} | {'x unet':>6} | {'GMac/img':>8} | {'img/s':>7} | {'x unet':>6} |"
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for row in rows:
        print(
            f"| {row.name:<12} | {row.params:>11,} | {row.params / base.params:>6.2f} | {row.gmac:>8.2f} "
            f"| {row.images_per_s:>7.2f} | {row.images_per_s / base.images_per_s:>6.2f} |"
        )


if __name__ == "__main__":
    main()
