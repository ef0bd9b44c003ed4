"""Full-image inference: class probabilities for whole frames of any size from a fully convolutional model.

One sliding-window engine serves frames ``(N, H, W)`` here and the time windows ``(N, T, H, W)`` of temporal models
(:mod:`celltune.trainables.temporal_inference`): frames larger than ``max_tile`` are cut into tiles, blended
(same-padding models) or put side by side (valid-convolution models, overlap-tile), as planned in
:mod:`celltune.trainables.tiling` (which says when tiled and untiled predictions agree).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from celltune.data_prep.common import UserInputError
from celltune.trainables import resample, tiling
from celltune.trainables.target_kinds import Activation
from celltune.trainables.target_kinds import target_kind as lookup_target_kind

logger = logging.getLogger(__name__)

_AMP_WARNED: set[str] = set()
def activation_for(target_kind: str) -> Activation:
    """Output activation of models trained on ``target_kind`` targets (the kinds' table says which).

    Raises:
        UserInputError: unknown target kind.
    """
    return lookup_target_kind(target_kind).activation


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
    return _predict_tiled(model, frames, time_axis=False, size_multiple=size_multiple, activation=activation,
                          device=device, amp=amp, batch_size=batch_size, max_tile=max_tile,
                          tile_overlap=tile_overlap, show_progress=show_progress)


def _predict_tiled(model: nn.Module, stack: np.ndarray, *, time_axis: bool, size_multiple: int,
                   activation: Activation, device: str | torch.device, amp: bool | None, batch_size: int,
                   max_tile: int | None, tile_overlap: int, show_progress: bool) -> np.ndarray:
    """The one sliding-window engine: ``(N, C, H, W)`` probabilities of ``(N, H, W)`` frames, or with ``time_axis``
    of the last frame of ``(N, T, H, W)`` windows (fed as ``(b, T, 1, h, w)``); options as for
    :func:`predict_probabilities`."""
    multiple = _positive_int("size_multiple", size_multiple)
    batch_size = _positive_int("batch_size", batch_size)
    if activation not in ("softmax", "sigmoid"):
        raise UserInputError(f"activation={activation!r}: expected 'softmax' or 'sigmoid'")
    if isinstance(tile_overlap, bool) or not isinstance(tile_overlap, int) or tile_overlap < 0:
        raise UserInputError(f"tile_overlap={tile_overlap!r}: must be a non-negative integer")
    if max_tile is not None:
        _positive_int("max_tile", max_tile)
    count, height, width = stack.shape[0], *stack.shape[-2:]
    plan = _tile_plan(model, height, width, multiple=multiple, max_tile=max_tile, tile_overlap=tile_overlap)
    target = resolve_device(device)
    amp_dtype = resolve_amp(target, amp)

    starts = plan.starts
    blend, weight_sum = plan.blending()
    last = len(starts) - 1
    jobs = [(n, tile) for n in range(count) for tile in range(len(starts))]  # batches may mix tiles of items
    logger.debug("predicting %d %s as %d tile(s) of %dx%d", count, "window(s)" if time_axis else "frame(s)",
                 len(jobs), plan.y.tile, plan.x.tile)
    # An item (frame or window) is padded when its first tile is batched and dropped after its last, and its
    # logit accumulator is freed once its last tile is in: padding a whole (N, T, H, W) stack could hold gigabytes.
    padded: dict[int, np.ndarray] = {}
    pending: dict[int, np.ndarray] = {}
    result: np.ndarray | None = None
    autocast = torch.autocast(device_type="cuda", dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    was_training = model.training
    model.to(target).eval()
    try:
        with torch.inference_mode(), autocast, tqdm(total=len(jobs), unit="tile",
                                                    disable=None if show_progress else True) as bar:
            for first in range(0, len(jobs), batch_size):
                batch = jobs[first : first + batch_size]
                for n, _ in batch:
                    if n not in padded:
                        padded[n] = plan.pad(stack[n])
                        # windows are usually a strided view of the sequence: checked window by window, as padded
                        if time_axis and not np.isfinite(padded[n]).all():
                            raise UserInputError("windows: contain NaN or infinite values")
                tiles = np.stack([padded[n][(..., *plan.source(*starts[tile]))] for n, tile in batch])
                for n, tile in batch:
                    if tile == last:
                        del padded[n]
                inputs = torch.from_numpy(tiles).unsqueeze(-3).to(target)  # (b, 1, h, w) or (b, T, 1, h, w)
                frame_shape = (inputs.shape[0], *inputs.shape[-3:])
                logits = _check_output(model(inputs), frame_shape, plan.shrink).float().cpu().numpy()
                if result is None:
                    result = np.empty((count, logits.shape[1], height, width), dtype=np.float32)
                for (n, tile), tile_logits in zip(batch, logits, strict=True):
                    if n not in pending:
                        pending[n] = np.zeros((logits.shape[1], *plan.canvas), np.float32)
                    pending[n][(slice(None), *plan.target(*starts[tile]))] += tile_logits * blend[tile]
                    if tile == last:  # the item's last tile: finish it and free its accumulator
                        result[n] = _activate(pending.pop(n)[(slice(None), *plan.crop)] / weight_sum, activation)
                bar.update(len(batch))
    finally:
        model.train(was_training)
    if result is None or pending:
        raise RuntimeError(f"internal error: {len(pending)} item(s) left unfinished")
    return result


def _tile_plan(model: nn.Module, height: int, width: int, *, multiple: int, max_tile: int | None,
               tile_overlap: int) -> tiling.TilePlan:
    """Overlap-tile for a model whose output is ``output_crop`` px smaller per side, else blended same-size tiles."""
    shrink = int(getattr(model, "output_crop", 0) or 0)
    if not shrink:
        return tiling.same_padding_plan(height, width, multiple=multiple, max_tile=max_tile, tile_overlap=tile_overlap)
    own_multiple = int(getattr(model, "size_multiple", multiple))
    if own_multiple != multiple:
        raise UserInputError(f"size_multiple={multiple}: the valid-convolution model needs its own {own_multiple}")
    return tiling.valid_padding_plan(height, width, multiple=multiple, max_tile=max_tile, shrink=shrink,
                                     min_input=int(getattr(model, "min_input_size", 0) or 0))


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


def _check_output(output: object, input_shape: tuple[int, ...], shrink: int = 0) -> torch.Tensor:
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
