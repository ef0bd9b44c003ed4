"""Model size and convolution cost, for reports and as objectives of a search over inference cost.

MACs follow the ptflops convention for convolutions: one multiply-accumulate per weight tap and output element,
`output elements * (in_channels / groups) * prod(kernel_size)`; biases, norms and activations are not counted.
For transposed convolutions every input element meets every tap once, so they count
`input elements * (out_channels / groups) * prod(kernel_size)` (the true cost; ptflops applies the
convolution formula to the output, which overcounts a stride-2 transposed conv by the stride squared).
The shapes are traced on the meta device, so counting a large input costs no memory and almost no time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import chain

import torch
from torch import Tensor, nn
from torch.func import functional_call

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameter elements in `model` (each shared parameter once).

    Args:
        model: any module.
        trainable_only: count only parameters with `requires_grad`.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _conv_macs(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> int:
    taps = math.prod(module.kernel_size)
    if isinstance(module, _TRANSPOSED):
        return inputs[0].numel() * (module.out_channels // module.groups) * taps
    return output.numel() * (module.in_channels // module.groups) * taps


def count_conv_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of all convolutions in one forward pass of an input of `input_shape`.

    The model runs on the meta device (its own weights are untouched and not copied), in eval mode so
    BatchNorm accepts any batch size; its training flag is restored afterwards.

    Args:
        model: module to trace.
        input_shape: full input shape including the batch, e.g. (1, 1, 512, 512) for one 512x512 image; the
            count covers the whole batch.

    Returns:
        Total convolution MACs (module docstring for the convention).
    """
    total = 0

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        total += _conv_macs(module, inputs, output)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _CONVS + _TRANSPOSED)]
    meta_state = {name: t.to("meta") for name, t in chain(model.named_parameters(), model.named_buffers())}
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            functional_call(model, meta_state, (torch.empty(tuple(input_shape), device="meta"),))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total


COST_SIDE = 512  # the frame side costs are quoted at


def model_cost(model: nn.Module) -> dict[str, float]:
    """What a model costs beside what it scores: parameters and convolution GMac per 512x512 frame (for a
    temporal model, per window of frames)."""
    time_window = int(getattr(getattr(model, "spec", None), "time_window", 1) or 1)
    shape = (1, time_window, 1, COST_SIDE, COST_SIDE) if time_window > 1 else (1, 1, COST_SIDE, COST_SIDE)
    return {"params": float(count_parameters(model)), "gmac_512": count_conv_macs(model, shape) / 1e9}


def cpu_frames_per_second(model: nn.Module, *, side: int = COST_SIDE, repeats: int = 2) -> float:
    """Forward passes per second of one ``side`` x ``side`` frame on this machine's CPU with torch's current
    threads (after one warm-up pass): the speed a user without a GPU gets, recorded next to the cost counts.
    A figure of the machine that measured it: compare versions measured on the same one."""
    import time

    time_window = int(getattr(getattr(model, "spec", None), "time_window", 1) or 1)
    shape = (1, time_window, 1, side, side) if time_window > 1 else (1, 1, side, side)
    frame = torch.rand(shape)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model(frame)
            started = time.perf_counter()
            for _ in range(repeats):
                model(frame)
            return repeats / (time.perf_counter() - started)
    finally:
        model.train(was_training)
