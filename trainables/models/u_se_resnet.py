"""U-SE-ResNet (team MU-Ra-US, Cell Tracking Challenge 2021): a U-Net on an SE-ResNet-50 encoder.

Written here from the ResNet (He et al., CVPR 2016) and squeeze-and-excitation (Hu et al., CVPR 2018) papers;
the encoder's parameter names follow the torchvision ResNet layout with `se.fc1` / `se.fc2` in every block, so a
user-supplied SE-ResNet-50 state dict with those names (e.g. ImageNet weights) loads into it. The output is two
sigmoid channels (cell mask, cell marker), as logits.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from celltune.data_prep.common import UserInputError
from celltune.trainables.architectures import OUT_CHANNELS, register_model
from celltune.trainables.layers.conv import ConvNormAct
from celltune.trainables.layers.padding import check_size_multiple
from celltune.trainables.layers.se import SqueezeExcite
from celltune.trainables.models._options import check_int

logger = logging.getLogger(__name__)

SIZE_MULTIPLE = 32  # stem stride 2, max pool, three strided stages
RESNET50_LAYERS = (3, 4, 6, 3)
EXPANSION = 4


class SEBottleneck(nn.Module):
    """ResNet bottleneck (1x1 -> 3x3 with the stride -> 1x1 x4) with squeeze-and-excitation before the addition."""

    def __init__(self, inplanes: int, planes: int, *, stride: int = 1, reduction: int = 16) -> None:
        super().__init__()
        out = planes * EXPANSION
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.se = SqueezeExcite(out, reduction)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.se(self.bn3(self.conv3(y)))
        return self.relu(y + identity)


class SEResNetEncoder(nn.Module):
    """SE-ResNet feature extractor returning the maps before each down-sampling, for skip connections.

    Returns, for a (B, C, H, W) input: stem (width, H/2), layer1 (4 width, H/4), layer2 (8 width, H/8),
    layer3 (16 width, H/16), layer4 (32 width, H/32). `width=64, layers=(3, 4, 6, 3)` is SE-ResNet-50.
    """

    def __init__(
        self, in_channels: int = 1, *, width: int = 64, layers: Sequence[int] = RESNET50_LAYERS, reduction: int = 16
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = width
        stages = []
        for i, blocks in enumerate(layers):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            stage = [SEBottleneck(inplanes, planes, stride=stride, reduction=reduction)]
            stage += [SEBottleneck(planes * EXPANSION, planes, reduction=reduction) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            inplanes = planes * EXPANSION
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = [width] + [width * 2**i * EXPANSION for i in range(4)]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> list[Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))
        features = [stem]
        x = self.maxpool(stem)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            features.append(x)
        return features


def load_encoder_weights(encoder: SEResNetEncoder, path: str | os.PathLike[str]) -> None:
    """Load an SE-ResNet state dict with torchvision-style names (`conv1.weight`, `layer1.0.se.fc1.weight`, ...).

    The classifier (`fc.*`) is ignored; missing `num_batches_tracked` buffers keep their values; a 3-channel
    `conv1.weight` (RGB ImageNet weights) is summed over its input channels for a 1-channel encoder, as timm does.

    Raises:
        UserInputError: unreadable file, not a state dict, missing or unexpected keys, or a shape mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: encoder weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or non-weights files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserInputError(f"{path}: cannot load encoder weights with weights_only=True: {reason}") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserInputError(f"{path}: expected a state dict mapping parameter names to tensors")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = encoder.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise UserInputError(
            f"{path}: not an SE-ResNet encoder state dict of this size: {len(missing)} missing keys "
            f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}"
        )
    weight = state["conv1.weight"]
    if weight.shape[1] == 3 and expected["conv1.weight"].shape[1] == 1:
        logger.info("%s: summing the 3 input channels of conv1.weight for a 1-channel encoder", path)
        state["conv1.weight"] = weight.sum(dim=1, keepdim=True)
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise UserInputError(
                f"{path}: {key} has shape {tuple(value.shape)}, the encoder expects {tuple(expected[key].shape)}"
            )
    if encoder.conv1.weight.is_meta:
        return  # `validate_model` builds on the meta device: checking the file is all there is to do
    encoder.load_state_dict(state, strict=False)


class DecoderBlock(nn.Module):
    """Nearest 2x up-sampling, concatenation with the skip (if any), then two Conv3x3-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = nn.Sequential(
            ConvNormAct(in_channels + skip_channels, out_channels, 3, norm="batch"),
            ConvNormAct(out_channels, out_channels, 3, norm="batch"),
        )

    def forward(self, x: Tensor, skip: Tensor | None) -> Tensor:
        x = self.up(x)
        return self.conv(x if skip is None else torch.cat([x, skip], dim=1))


class USEResNet(nn.Module):
    """U-Net with an SE-ResNet encoder: (B, in_channels, H, W) -> (B, out_channels, H, W) logits.

    Decoder widths are `width * (4, 2, 1, 1/2, 1/4)` (256 ... 16 at the default); the last block up-samples to
    full resolution without a skip. H and W must be multiples of 32.

    Args:
        in_channels: image channels.
        out_channels: logit channels (2: mask, marker).
        width: stem width, a multiple of 8 (64 for SE-ResNet-50).
        layers: bottleneck blocks per encoder stage, four positive integers ((3, 4, 6, 3) for ResNet-50).
        encoder_weights: path to an SE-ResNet state dict for the encoder (see `load_encoder_weights`), or None
            for random initialization.

    Raises:
        UserInputError: bad `width` or `layers`, or unusable `encoder_weights`.
    """

    size_multiple = SIZE_MULTIPLE

    def __init__(
        self,
        *,
        in_channels: int = 1,
        out_channels: int = 2,
        width: int = 64,
        layers: Sequence[int] = RESNET50_LAYERS,
        encoder_weights: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        check_int("u_se_resnet", "width", width, multiple_of=8)
        if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or len(layers) != 4:
            raise UserInputError(f"u_se_resnet: layers={layers!r} must be four block counts, e.g. [3, 4, 6, 3]")
        for count in layers:
            check_int("u_se_resnet", "layers", count)
        width = int(width)
        self.encoder = SEResNetEncoder(in_channels, width=width, layers=[int(n) for n in layers])
        if encoder_weights is not None:
            load_encoder_weights(self.encoder, encoder_weights)
        skips = self.encoder.out_channels[:-1][::-1] + [0]  # layer3, layer2, layer1, stem, none
        widths = [4 * width, 2 * width, width, width // 2, width // 4]
        blocks, in_ch = [], self.encoder.out_channels[-1]
        for skip, out in zip(skips, widths, strict=True):
            blocks.append(DecoderBlock(in_ch, skip, out))
            in_ch = out
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(widths[-1], out_channels, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        check_size_multiple(x, self.size_multiple, "u_se_resnet")
        features = self.encoder(x)
        x = features.pop()
        for block in self.decoder:
            x = block(x, features.pop() if features else None)
        return self.head(x)


@register_model(target_kind="mask_marker", size_multiple=SIZE_MULTIPLE, init_only=("encoder_weights",))
def u_se_resnet(
    *, width: int = 64, layers: Sequence[int] = RESNET50_LAYERS, encoder_weights: str | None = None
) -> USEResNet:
    """U-SE-ResNet with an SE-ResNet-50 encoder by default; see `USEResNet`."""
    return USEResNet(
        in_channels=1,
        out_channels=OUT_CHANNELS["mask_marker"],
        width=width,
        layers=layers,
        encoder_weights=encoder_weights,
    )
