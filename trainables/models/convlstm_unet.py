"""A temporal U-Net: every encoder stage starts with a convolutional LSTM over a short window of frames.

The encoder runs on each of the ``T`` consecutive frames (the target frame last); a ConvLSTM (Shi et al.,
NeurIPS 2015) at the start of every stage carries information forward in time at that stage's resolution, so
the features of the last frame have seen the frames before it (cells that fade, divide or touch are easier to
separate with their recent past). The skip connections and the decoder use the last time step only, and the
output is the segmentation of the target frame, like every other model here. Written in-house.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from celltune.data_prep.common import UserInputError
from celltune.trainables.architectures import OUT_CHANNELS, TargetKindName, register_model
from celltune.trainables.layers.conv import ConvNormAct, DoubleConv
from celltune.trainables.layers.norm import NORM_KINDS, NormKind
from celltune.trainables.layers.padding import check_size_multiple
from celltune.trainables.layers.upsample import UpConv
from celltune.trainables.models._options import check_choice, check_int

STAGES = (4, 5, 6)


class ConvLSTMCell(nn.Module):
    """One ConvLSTM step: input, forget, output gates and the candidate from a 3x3 conv of [x, h].

    The forget-gate bias starts at 1 so the cell keeps its memory early in training (Jozefowicz et al., 2015).
    """

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.gates = nn.Conv2d(in_channels + hidden_channels, 4 * hidden_channels, kernel_size,
                               padding=kernel_size // 2)
        with torch.no_grad():
            self.gates.bias.zero_()
            self.gates.bias[hidden_channels:2 * hidden_channels].fill_(1.0)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        h, c = state
        i, f, g, o = self.gates(torch.cat([x, h], dim=1)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class ConvLSTM(nn.Module):
    """A ConvLSTM cell run over a (B, T, C, H, W) sequence from a zero state; returns every hidden state."""

    def __init__(self, in_channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.cell = ConvLSTMCell(in_channels, hidden_channels)

    def forward(self, x: Tensor) -> Tensor:
        batch, steps, _, height, width = x.shape
        h = x.new_zeros(batch, self.cell.hidden_channels, height, width)
        state = (h, h)
        outputs = []
        for step in range(steps):
            state = self.cell(x[:, step], state)
            outputs.append(state[0])
        return torch.stack(outputs, dim=1)


def _per_frame(module: nn.Module, x: Tensor) -> Tensor:
    """Apply a 2D module to every frame of a (B, T, C, H, W) sequence (time folded into the batch)."""
    batch, steps = x.shape[:2]
    return module(x.flatten(0, 1)).unflatten(0, (batch, steps))


class EncoderStage(nn.Module):
    """[2x max pooling] -> ConvLSTM -> Conv3x3-norm-ReLU, on every frame of the sequence."""

    def __init__(self, in_channels: int, out_channels: int, *, norm: NormKind, down: bool) -> None:
        super().__init__()
        self.down = nn.MaxPool2d(2) if down else None
        self.lstm = ConvLSTM(in_channels, out_channels)
        self.conv = ConvNormAct(out_channels, out_channels, 3, norm=norm)

    def forward(self, x: Tensor) -> Tensor:
        if self.down is not None:
            x = _per_frame(self.down, x)
        return _per_frame(self.conv, self.lstm(x))


class DecoderStage(nn.Module):
    """2x2 up-convolution of the deeper map, concatenate the last frame's skip, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, *, norm: NormKind) -> None:
        super().__init__()
        self.up = UpConv(in_channels, out_channels)
        self.block = DoubleConv(2 * out_channels, out_channels, norm=norm)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))


class ConvLSTMUNet(nn.Module):
    """U-Net over a time window, mapping (B, T, 1, H, W) frames to (B, out_channels, H, W) logits of the last.

    A (B, 1, H, W) input is a window of one frame (the ConvLSTMs then start and end at their zero state), so
    single-frame tools (tests, complexity counts) work unchanged; training and prediction feed whole windows
    (`celltune.trainables.data`, `celltune.trainables.temporal_inference`).

    Args:
        in_channels: image channels per frame.
        out_channels: logit channels.
        time_window: frames per window the data pipeline feeds (the model itself accepts any T >= 1).
        stages: 4, 5 or 6 (stages - 1 max-pool down-samplings; H and W multiples of 2 ** (stages - 1)).
        width: channels of the first stage, doubled per stage; a multiple of 8.
        norm: "batch" or "group".

    Raises:
        UserInputError: an option outside the values above, or an input of the wrong rank or size.
    """

    def __init__(self, *, in_channels: int = 1, out_channels: int = 3, time_window: int = 5, stages: int = 5,
                 width: int = 32, norm: NormKind = "batch") -> None:
        super().__init__()
        _check_options(time_window, stages)
        check_int("convlstm_unet", "width", width, multiple_of=8)
        check_choice("convlstm_unet", "norm", norm, NORM_KINDS)
        self.time_window = int(time_window)
        self.in_channels = in_channels
        self.size_multiple = 2 ** (int(stages) - 1)
        widths = [int(width) * 2**i for i in range(int(stages))]
        self.encoder = nn.ModuleList(
            EncoderStage(prev, cur, norm=norm, down=index > 0)
            for index, (prev, cur) in enumerate(zip([in_channels, *widths[:-1]], widths, strict=True))
        )
        self.decoder = nn.ModuleList(
            DecoderStage(widths[i + 1], widths[i], norm=norm) for i in reversed(range(len(widths) - 1))
        )
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            x = x.unsqueeze(1)
        if x.dim() != 5 or x.shape[2] != self.in_channels:
            raise UserInputError(f"convlstm_unet: input of shape {tuple(x.shape)}; expected (B, T, "
                                 f"{self.in_channels}, H, W) windows or (B, {self.in_channels}, H, W) single frames")
        check_size_multiple(x, self.size_multiple, "convlstm_unet")
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x[:, -1])
        y = skips.pop()
        for stage in self.decoder:
            y = stage(y, skips.pop())
        return self.head(y)


def _check_options(time_window: Any, stages: Any) -> None:
    check_int("convlstm_unet", "time_window", time_window)
    check_choice("convlstm_unet", "stages", stages, STAGES)


def _size_multiple(options: Mapping[str, Any]) -> int:
    _check_options(options["time_window"], options["stages"])  # before the registry reads time_window
    return 2 ** (int(options["stages"]) - 1)


@register_model(size_multiple=_size_multiple)
def convlstm_unet(*, time_window: int = 5, stages: int = 5, width: int = 32, norm: NormKind = "batch",
                  target_kind: TargetKindName = "tertiary") -> ConvLSTMUNet:
    """Temporal U-Net fed `time_window` consecutive frames, predicting the last; see `ConvLSTMUNet`."""
    return ConvLSTMUNet(in_channels=1, out_channels=OUT_CHANNELS[target_kind], time_window=time_window,
                        stages=stages, width=width, norm=norm)
