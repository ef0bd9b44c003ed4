"""Why full-width XB-Net is slow on a GPU: its step rate per memory format and compilation, and where its GPU time
goes (the accelerator follow-up to ``gpu_check.py``, issue 14; CUDA only).

    python benchmarks/gpu_xbnet_layouts.py            # samples/s at batch 32, bf16: layouts x torch.compile
    python benchmarks/gpu_xbnet_layouts.py --profile  # the 14 kernels with the most GPU time, batch 16, bf16

Run on the accelerator machine with celltune and the carried wheels on PYTHONPATH (see ``gpu_check.sh``).
"""

from __future__ import annotations

import argparse
import time

import torch

from celltune.trainables.architectures import build_model


def _step(model: torch.nn.Module, runner, images: torch.Tensor) -> None:
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = runner(images).float().mean()
    loss.backward()
    model.zero_grad(set_to_none=True)


def layouts(name: str, batch: int = 32) -> None:
    device = torch.device("cuda")
    for channels_last, compiled in ((False, True), (False, False), (True, False)):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = build_model(name).to(device, memory_format=fmt).train()
        runner = torch.compile(model) if compiled else model
        images = torch.rand(batch, 1, 512, 512, device=device).to(memory_format=fmt)
        for _ in range(3):
            _step(model, runner, images)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(10):
            _step(model, runner, images)
        torch.cuda.synchronize()
        print(f"{name} b{batch} bf16 channels_last={channels_last} compile={compiled}: "
              f"{10 * batch / (time.perf_counter() - start):.1f} samples/s", flush=True)


def profile(name: str, batch: int = 16) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    device = torch.device("cuda")
    for channels_last in (False, True):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = build_model(name).to(device, memory_format=fmt).train()
        images = torch.rand(batch, 1, 512, 512, device=device).to(memory_format=fmt)
        for _ in range(3):
            _step(model, model, images)
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as recorded:
            for _ in range(3):
                _step(model, model, images)
            torch.cuda.synchronize()
        print(name, "channels_last" if channels_last else "contiguous")
        print(recorded.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=70))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="xbnet")
    parser.add_argument("--profile", action="store_true", help="kernel times instead of step rates")
    args = parser.parse_args()
    (profile if args.profile else layouts)(args.model)


if __name__ == "__main__":
    main()
