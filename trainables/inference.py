"""Full-image inference: class probabilities for whole frames of any size from a fully convolutional model.

Frames are reflection-padded to the model's size multiple; frames larger than ``max_tile`` are cut into
overlapping tiles whose logits are blended with a window that is zero next to inner tile edges (where a tile
lacks context) and ramps up smoothly (cosine) across the overlap. Tiles start on multiples of the size
multiple, so strided/pooled models see the same grid as on the whole image; a model whose receptive-field
radius is at most ``tile_overlap // 4`` therefore gives the same result tiled and untiled.

Models with unpadded ("valid") convolutions, whose output is ``output_crop`` pixels smaller per side (the
original U-Net), are predicted by overlap-tile (Ronneberger et al., MICCAI 2015): the frame is mirror-extended,
tiles overlap by the context the model consumes, and their outputs are put side by side, each output pixel
taken from exactly one tile. Tiles start on multiples of the size multiple, so the result equals one pass over
the whole mirror-extended frame.
"""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from celltune.data_prep.errors import UserInputError
from celltune.trainables import resample

logger = logging.getLogger(__name__)

Activation = Literal["softmax", "sigmoid"]
_AMP_WARNED: set[str] = set()
_ACTIVATION_OF_TARGET = {"tertiary": "softmax", "binary": "softmax", "mask_marker": "sigmoid"}


def activation_for(target_kind: str) -> Activation:
    """Output activation of models trained on ``target_kind`` targets.

    Exclusive classes (``"tertiary"``, ``"binary"``) use softmax; the independent mask and marker channels of
    ``"mask_marker"`` use sigmoid.

    Raises:
        UserInputError: unknown target kind.
    """
    if target_kind not in _ACTIVATION_OF_TARGET:
        raise UserInputError(
            f"target_kind={target_kind!r}: unknown; expected one of {', '.join(sorted(_ACTIVATION_OF_TARGET))}"
        )
    return _ACTIVATION_OF_TARGET[target_kind]  # type: ignore[return-value]


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, checked to exist on this machine (``auto``: CUDA where present).

    Raises:
        UserInputError: unparsable device, or CUDA/MPS requested where it is not available.
    """
    if device == "auto":  # the first CUDA device where there is one, else the CPU
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserInputError(f"device={device!r}: not a valid torch device (e.g. 'cpu', 'cuda', 'cuda:1')") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise UserInputError(f"device={device!r}: CUDA is not available on this machine; use device='cpu'")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise UserInputError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif resolved.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserInputError(f"device={device!r}: MPS is not available on this machine; use device='cpu'")
    elif resolved.type != "cpu":
        raise UserInputError(f"device={device!r}: unsupported device type {resolved.type!r} (cpu, cuda, mps)")
    return resolved


def resolve_amp(device: torch.device, amp: bool | None) -> torch.dtype | None:
    """Autocast dtype for inference on ``device``, or None for full float32.

    Mixed precision is used on CUDA only: ``amp=None`` turns it on there (bfloat16 where supported, else
    float16) and off elsewhere; ``amp=True`` on a non-CUDA device is ignored with a warning, logged once per
    process (CPU autocast is slower than float32 for convolutions on most CPUs).
    """
    if device.type != "cuda":
        if amp and device.type not in _AMP_WARNED:  # once per device type: validation calls this per frame
            _AMP_WARNED.add(device.type)
            logger.warning("amp=True ignored on device %s: mixed precision is used on CUDA only", device)
        return None
    if amp is False:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def predict_probabilities(
    model: nn.Module,
    images: np.ndarray,
    *,
    size_multiple: int,
    activation: Activation,
    device: str | torch.device = "cpu",
    amp: bool | None = None,
    batch_size: int = 4,
    max_tile: int | None = 1024,
    tile_overlap: int = 64,
    show_progress: bool = False,
    scale: float = 1.0,
) -> np.ndarray:
    """Class probabilities of every frame at its input size.

    The model is moved to ``device`` (in place, like ``nn.Module.to``), run in eval mode under
    ``torch.inference_mode`` (its training flag is restored afterwards) and fed ``(b, 1, h, w)`` float32 tiles
    whose sides are multiples of ``size_multiple``. Tile logits are blended in float32 on the CPU, then the
    activation is applied.

    A model with an ``output_crop`` attribute > 0 (unpadded convolutions, e.g. ``unet`` with
    ``padding="valid"``) is predicted by overlap-tile instead: the frame is mirror-extended (numpy "symmetric",
    as the training crops are), tiles have the valid input sides ``min_input_size + k * size_multiple`` and
    start on multiples of the size multiple, and their outputs abut, so the result equals one forward pass over
    the whole mirror-extended frame. ``tile_overlap`` does not apply (the tiles overlap by the model's context).

    Args:
        model: fully convolutional network mapping ``(B, 1, h, w)`` to logits ``(B, C, h, w)``, or to
            ``(B, C, h - 2 * output_crop, w - 2 * output_crop)`` for a valid-convolution model.
        images: ``(H, W)`` or ``(N, H, W)`` normalized intensities (float; 3D volumes as ``(Z, H, W)`` slices).
        size_multiple: the model needs input sides divisible by this (16 for four 2x downsamplings); must equal
            the model's own ``size_multiple`` for a valid-convolution model.
        activation: ``"softmax"`` over the classes or per-channel ``"sigmoid"`` (see :func:`activation_for`).
        device: where the model runs.
        amp: mixed precision; None = on for CUDA, off elsewhere (see :func:`resolve_amp`).
        batch_size: tiles (or whole frames) per forward pass.
        max_tile: longest tile side in pixels (rounded down to the size multiple, or to a valid input side);
            frames whose padded side exceeds it are tiled along that side. None = never tile.
        tile_overlap: minimum overlap of neighbouring tiles in pixels (rounded up to the size multiple).
        show_progress: show a tqdm bar over tiles.
        scale: the model was trained on frames resampled by this factor (``data.scale``): frames are resampled
            so, predicted, and the probabilities resampled back to the input size.

    Returns:
        ``(N, C, H, W)`` float32 probabilities (N = 1 for a single ``(H, W)`` image).

    Raises:
        UserInputError: bad images, options or device, or a model whose output does not fit its input.
    """
    frames = _check_images(images)
    if scale != 1.0:
        if not 0 < scale <= 4:
            raise UserInputError(f"scale={scale!r}: must lie in (0, 4]")
        height, width = frames.shape[-2:]
        shape = (resample.scaled_side(height, scale), resample.scaled_side(width, scale))
        small = resample.resize_images(frames, shape)
        probabilities = predict_probabilities(model, small, size_multiple=size_multiple, activation=activation,
                                              device=device, amp=amp, batch_size=batch_size, max_tile=max_tile,
                                              tile_overlap=tile_overlap, show_progress=show_progress)
        return resample.resize_probabilities(probabilities, (height, width))
    multiple = _positive_int("size_multiple", size_multiple)
    batch_size = _positive_int("batch_size", batch_size)
    if activation not in ("softmax", "sigmoid"):
        raise UserInputError(f"activation={activation!r}: expected 'softmax' or 'sigmoid'")
    if isinstance(tile_overlap, bool) or not isinstance(tile_overlap, int) or tile_overlap < 0:
        raise UserInputError(f"tile_overlap={tile_overlap!r}: must be a non-negative integer")
    if max_tile is not None:
        _positive_int("max_tile", max_tile)
    shrink = int(getattr(model, "output_crop", 0) or 0)
    count, height, width = frames.shape
    if shrink:
        plan_y, plan_x = _valid_plans(model, height, width, multiple=multiple, max_tile=max_tile)
        pad_mode = "symmetric"
    else:
        overlap = math.ceil(tile_overlap / multiple) * multiple
        tile = None
        if max_tile is not None:
            tile = (max_tile // multiple) * multiple
            if tile == 0 or 2 * overlap > tile:
                raise UserInputError(
                    f"max_tile={max_tile}: the tile (rounded down to a multiple of {multiple}: {tile} px) must be "
                    f"at least twice tile_overlap={tile_overlap} (rounded up to {overlap})"
                )
        plan_y = _same_axis_plan(height, multiple, tile, overlap)
        plan_x = _same_axis_plan(width, multiple, tile, overlap)
        pad_mode = "reflect"
    target = resolve_device(device)
    amp_dtype = resolve_amp(target, amp)

    padded = np.pad(frames, ((0, 0), plan_y.pad, plan_x.pad), mode=pad_mode)
    starts_y, starts_x = plan_y.starts, plan_x.starts
    tile_h, tile_w = plan_y.tile, plan_x.tile
    out_h, out_w = tile_h - 2 * shrink, tile_w - 2 * shrink
    windows = [[np.outer(wy, wx).astype(np.float32) for wx in plan_x.windows] for wy in plan_y.windows]
    weight_sum = np.zeros((plan_y.canvas, plan_x.canvas), dtype=np.float32)
    for iy, y0 in enumerate(starts_y):
        for ix, x0 in enumerate(starts_x):
            weight_sum[y0 : y0 + out_h, x0 : x0 + out_w] += windows[iy][ix]
    crop = (plan_y.crop, plan_x.crop)
    weight_sum = weight_sum[crop]
    if not (weight_sum > 0).all():
        raise RuntimeError("internal error: tiling leaves pixels without weight")

    jobs = [(f, iy, ix) for f in range(count) for iy in range(len(starts_y)) for ix in range(len(starts_x))]
    tiles_per_frame = len(starts_y) * len(starts_x)
    logger.debug("predicting %d frame(s) as %d tile(s) of %dx%d", count, len(jobs), tile_h, tile_w)
    result: np.ndarray | None = None
    pending: dict[int, tuple[np.ndarray, int]] = {}  # frame -> (logit accumulator, tiles still missing)
    autocast = torch.autocast(device_type="cuda", dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    was_training = model.training
    model.to(target).eval()
    try:
        with torch.inference_mode(), autocast, tqdm(total=len(jobs), unit="tile",
                                                    disable=None if show_progress else True) as bar:
            for first in range(0, len(jobs), batch_size):
                batch = jobs[first : first + batch_size]
                stack = np.stack(
                    [
                        padded[f, starts_y[iy] : starts_y[iy] + tile_h, starts_x[ix] : starts_x[ix] + tile_w]
                        for f, iy, ix in batch
                    ]
                )
                inputs = torch.from_numpy(stack).unsqueeze(1).to(target)
                logits = _check_output(model(inputs), inputs.shape, shrink).float().cpu().numpy()
                if result is None:
                    result = np.empty((count, logits.shape[1], height, width), dtype=np.float32)
                for (f, iy, ix), tile_logits in zip(batch, logits, strict=True):
                    if f not in pending:
                        canvas = (logits.shape[1], plan_y.canvas, plan_x.canvas)
                        pending[f] = (np.zeros(canvas, np.float32), tiles_per_frame)
                    acc, missing = pending[f]
                    y0, x0 = starts_y[iy], starts_x[ix]
                    acc[:, y0 : y0 + out_h, x0 : x0 + out_w] += tile_logits * windows[iy][ix]
                    pending[f] = (acc, missing - 1)
                    if missing == 1:  # the frame's last tile: finish it and free its accumulator
                        del pending[f]
                        result[f] = _activate(acc[(slice(None), *crop)] / weight_sum, activation)
                bar.update(len(batch))
    finally:
        model.train(was_training)
    if result is None or pending:
        raise RuntimeError(f"internal error: {len(pending)} frame(s) left unfinished")
    return result


@dataclass(frozen=True)
class _AxisPlan:
    """How one image axis is padded, cut into tiles and put back together.

    Tile i reads the padded input at ``[starts[i], starts[i] + tile)`` and its output (``tile - 2 * output_crop``
    long, weighted by ``windows[i]``) lands at ``[starts[i], ...)`` of the output canvas, where the frame is
    ``crop``.
    """

    pad: tuple[int, int]
    starts: list[int]
    tile: int
    windows: list[np.ndarray]
    canvas: int
    crop: slice


def _same_axis_plan(length: int, multiple: int, tile: int | None, overlap: int) -> _AxisPlan:
    """Reflection padding to the multiple, then blended overlapping tiles (same-size output)."""
    pad = _pad_amounts(length, multiple)
    padded = length + sum(pad)
    starts, windows = _axis_plan(padded, tile, overlap)
    return _AxisPlan(pad, starts, windows[0].size, windows, padded, slice(pad[0], pad[0] + length))


def _valid_plans(model: nn.Module, height: int, width: int, *, multiple: int,
                 max_tile: int | None) -> tuple[_AxisPlan, _AxisPlan]:
    """Overlap-tile plans for a model whose output is ``output_crop`` px smaller per side than its input."""
    own_multiple = int(getattr(model, "size_multiple", multiple))
    if own_multiple != multiple:
        raise UserInputError(f"size_multiple={multiple}: the valid-convolution model needs its own {own_multiple}")
    shrink = int(model.output_crop)
    min_input = int(getattr(model, "min_input_size", 0) or 0)
    if min_input <= 2 * shrink:
        raise UserInputError(f"model with output_crop={shrink} needs a min_input_size above {2 * shrink}")
    largest = None
    if max_tile is not None:
        largest = (max_tile - min_input) // multiple * multiple
        if largest < multiple:
            raise UserInputError(
                f"max_tile={max_tile}: tiles of this valid-convolution model need at least {min_input + multiple} px"
            )
    return (_valid_axis_plan(height, multiple, min_input, shrink, largest),
            _valid_axis_plan(width, multiple, min_input, shrink, largest))


def _valid_axis_plan(length: int, multiple: int, min_input: int, shrink: int, largest: int | None) -> _AxisPlan:
    """Overlap-tile along one axis of a frame mirror-padded to the smallest valid input covering it.

    That padded length is ``units * multiple + min_input``; tiles of ``per_tile * multiple + min_input`` px start
    on multiples of ``multiple`` (the last one flush with the end), so each computes exactly what one pass over
    the whole padded frame computes there. Neighbouring outputs overlap by at least ``min_output`` px (4 px for
    the 5-stage U-Net); the 0/1 windows give every output pixel to exactly one tile, so the kept outputs abut.
    """
    min_output = min_input - 2 * shrink
    units = max(0, math.ceil((length - min_output) / multiple))
    per_tile = units if largest is None else min(units, largest // multiple)
    count = math.ceil(units / per_tile) if per_tile else 1
    per_tile = math.ceil(units / count)  # balanced tiles
    starts = sorted({min(i * per_tile, units - per_tile) * multiple for i in range(count)})
    canvas = units * multiple + min_output
    out_len = per_tile * multiple + min_output
    bounds = [0, *(start + min_output // 2 for start in starts[1:]), canvas]
    windows = []
    for index, start in enumerate(starts):
        window = np.zeros(out_len)
        window[bounds[index] - start : bounds[index + 1] - start] = 1.0
        windows.append(window)
    padded = canvas + 2 * shrink
    before = (padded - length) // 2
    return _AxisPlan((before, padded - length - before), starts, per_tile * multiple + min_input, windows, canvas,
                     slice(before - shrink, before - shrink + length))


def _check_images(images: np.ndarray) -> np.ndarray:
    """(N, H, W) float32 view/copy of the input, or a one-line error."""
    if not isinstance(images, np.ndarray):
        raise UserInputError(f"images: expected a numpy array, got {type(images).__name__}")
    if images.ndim not in (2, 3) or images.size == 0:
        raise UserInputError(f"images: expected a non-empty (H, W) or (N, H, W) array, got shape {images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        raise UserInputError(f"images: dtype {images.dtype}; expected float32 intensities already normalized")
    frames = np.ascontiguousarray(images.reshape((-1, *images.shape[-2:])), dtype=np.float32)
    if not np.isfinite(frames).all():
        raise UserInputError("images: contain NaN or infinite values")
    return frames


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserInputError(f"{name}={value!r}: must be a positive integer")
    return value


def _pad_amounts(length: int, multiple: int) -> tuple[int, int]:
    """Split the padding up to the next multiple between both sides, so borders get context on both ends."""
    total = -length % multiple
    return total // 2, total - total // 2


def _axis_plan(length: int, tile: int | None, overlap: int) -> tuple[list[int], list[np.ndarray]]:
    """Tile starts along one padded axis and each tile's 1D blending window."""
    if tile is None or length <= tile:
        return [0], [np.ones(length)]
    stride = tile - overlap
    starts = sorted({min(i * stride, length - tile) for i in range(math.ceil((length - tile) / stride) + 1)})
    ramp = _edge_ramp(overlap)
    windows = []
    for start in starts:
        window = np.ones(tile)
        if start > 0:  # an inner edge: this tile lacks context there, the previous tile takes over
            window[: ramp.size] *= ramp
        if start + tile < length:
            window[tile - ramp.size :] *= ramp[::-1]
        windows.append(window)
    return starts, windows


def _edge_ramp(overlap: int) -> np.ndarray:
    """Window from an inner tile edge inwards: 0 for overlap//4 px, then a cosine rise to 1 over half the overlap.

    Neighbouring tiles overlap by at least ``overlap`` >= 2 * (overlap // 4) px, so every pixel has a tile
    with positive weight that is at least overlap // 4 px away from that tile's inner edges.
    """
    zeros = overlap // 4
    rise = overlap - 2 * zeros
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(rise) + 0.5) / max(rise, 1))
    return np.concatenate([np.zeros(zeros), ramp])


def _check_output(output: object, input_shape: torch.Size, shrink: int = 0) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise UserInputError(f"model returned {type(output).__name__}; expected a logits tensor (B, C, H, W)")
    expected = tuple(side - 2 * shrink for side in input_shape[2:])
    if output.ndim != 4 or output.shape[0] != input_shape[0] or tuple(output.shape[2:]) != expected:
        where = "at the input size" if not shrink else f"{shrink} px smaller per side than the input (output_crop)"
        raise UserInputError(
            f"model output shape {tuple(output.shape)} does not match its input {tuple(input_shape)} "
            f"(expected (B, C, H, W) {where})"
        )
    return output


def _activate(logits: np.ndarray, activation: Activation) -> np.ndarray:
    """Softmax over classes or per-channel sigmoid of (C, H, W) logits, in float32."""
    tensor = torch.from_numpy(np.ascontiguousarray(logits))
    probs = tensor.softmax(dim=0) if activation == "softmax" else tensor.sigmoid()
    return probs.numpy()
