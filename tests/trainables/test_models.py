"""Forward/backward of every architecture and option combination on CPU, published XB-Net figures, rebuilding
from a recorded config, and the shared padding helper."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from celltune.data_prep.common import UserInputError
from celltune.trainables.architectures import OUT_CHANNELS, build_model, list_models, model_from_config
from celltune.trainables.complexity import count_conv_macs, count_parameters
from celltune.trainables.layers.padding import pad_to_multiple
from celltune.trainables.models.u_se_resnet import SEResNetEncoder

ODD_SIZE = (37, 23)


def _forward_backward(model: nn.Module, batch: int = 1, size: tuple[int, int] = ODD_SIZE) -> torch.Tensor:
    """Pad an odd-sized batch, run forward and backward on the cropped logits, return the cropped logits."""
    torch.manual_seed(0)
    image = torch.rand(batch, 1, *size)
    padded, crop = pad_to_multiple(image, model.size_multiple)
    logits = model(padded)
    assert logits.shape == (batch, model.spec.out_channels, *padded.shape[-2:])
    logits = logits[crop]
    assert logits.shape == (batch, model.spec.out_channels, *size)
    if model.spec.target_kind == "mask_marker":
        loss = F.binary_cross_entropy_with_logits(logits, torch.rand_like(logits).round())
    else:
        loss = F.cross_entropy(logits, torch.randint(0, model.spec.out_channels, (batch, *size)))
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    return logits.detach()


UNET_COMBINATIONS = list(
    itertools.product(
        (5, 6), ("batch", "group"), ("maxpool", "convstride"), ("upconv", "pixelshuffle"), (False, True), (False, True)
    )
)


@pytest.mark.parametrize(("stages", "norm", "down", "up", "aspp", "entry_flow"), UNET_COMBINATIONS)
def test_unet_every_option_combination_trains_on_odd_sizes(stages, norm, down, up, aspp, entry_flow):
    model = build_model("unet", stages=stages, width=8, norm=norm, down=down, up=up, aspp=aspp, entry_flow=entry_flow)
    assert model.size_multiple == 2 ** (stages - 1)
    _forward_backward(model)


@pytest.mark.parametrize("target_kind", sorted(OUT_CHANNELS))
def test_unet_target_kind_sets_output_channels(target_kind):
    model = build_model("unet", width=8, target_kind=target_kind)
    logits = _forward_backward(model)
    assert logits.shape[1] == OUT_CHANNELS[target_kind] == model.spec.out_channels


@pytest.mark.parametrize("width", [8, 16])
def test_xbnet_small_widths_train_on_odd_sizes(width):
    _forward_backward(build_model("xbnet", width=width))


@pytest.mark.parametrize("layers", [(1, 1, 1, 1), (2, 1, 2, 1)])
def test_u_se_resnet_small_trains_on_odd_sizes(layers):
    model = build_model("u_se_resnet", width=8, layers=layers)
    assert model.spec.target_kind == "mask_marker" and model.size_multiple == 32
    _forward_backward(model)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_trains_with_default_options(name):
    # Batch 2 so BatchNorm sees more than one value per channel at u_se_resnet's 2x2 bottleneck.
    _forward_backward(build_model(name), batch=2, size=(29, 30))


def test_models_reject_sizes_that_are_not_the_multiple():
    model = build_model("xbnet", width=8)
    with pytest.raises(UserInputError, match="37x23 pixels is not a multiple of 16"):
        model(torch.rand(1, 1, *ODD_SIZE))


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("unet", {"stages": 7}, "stages=7"),
        ("unet", {"width": 12}, "width=12 must be an integer >= 1 and a multiple of 8"),
        ("unet", {"norm": "layer"}, "norm='layer'"),
        ("unet", {"down": "avgpool"}, "down='avgpool'"),
        ("unet", {"up": "bilinear"}, "up='bilinear'"),
        ("unet", {"aspp": "yes"}, "aspp='yes' must be true or false"),
        ("unet", {"target_kind": "instance"}, "target_kind='instance'"),
        ("xbnet", {"width": 20}, "width=20"),
        ("u_se_resnet", {"layers": [1, 1, 1]}, "four block counts"),
        ("u_se_resnet", {"layers": [1, 0, 1, 1]}, "layers=0"),
    ],
)
def test_invalid_option_values_name_the_option(name, options, message):
    with pytest.raises(UserInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_model(name, **options)


def test_xbnet_matches_the_published_architecture():
    model = build_model("xbnet")
    # Published 11,375,683; the sum worked out by hand from the layer list in REFERENCE.md matches exactly.
    assert count_parameters(model) == 11_375_683
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [m for m in convs if m.bias is not None] == [model.head]
    norms = [m for m in model.modules() if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d))]
    assert norms and all(isinstance(m, nn.GroupNorm) and m.num_groups == 8 for m in norms)
    # Published 78.18 GMac for one 512x512 image (ptflops also counts norms and activations; convs dominate).
    macs = count_conv_macs(model, (1, 1, 512, 512))
    assert macs == pytest.approx(78.18e9, rel=0.02)


def test_se_resnet50_encoder_has_the_standard_size_and_names():
    with torch.device("meta"):
        encoder = SEResNetEncoder(1)
    # SE-ResNet-50: 28,088,024 parameters with a 3-channel stem and the 1000-class fc (2,049,000); a 1-channel
    # stem has 64 * 2 * 49 = 6,272 fewer.
    assert count_parameters(encoder) == 28_088_024 - 2_049_000 - 6_272
    keys = encoder.state_dict().keys()
    for key in (
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.downsample.0.weight",
        "layer1.0.se.fc1.weight",
        "layer2.3.se.fc2.bias",
        "layer3.5.conv3.weight",
        "layer4.2.bn3.num_batches_tracked",
    ):
        assert key in keys
    assert "layer4.3.conv1.weight" not in keys and "layer1.1.downsample.0.weight" not in keys
    assert encoder.state_dict()["layer1.0.se.fc1.weight"].shape == (16, 256, 1, 1)


def _small_encoder_state(width: int = 8) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {
        k: torch.randn_like(v.float()).to(v.dtype)
        for k, v in SEResNetEncoder(1, width=width, layers=(1, 1, 1, 1)).state_dict().items()
    }


def test_u_se_resnet_loads_user_encoder_weights(tmp_path):
    state = _small_encoder_state()
    rgb_stem = torch.randn(8, 3, 7, 7)
    saved = {**state, "conv1.weight": rgb_stem, "fc.weight": torch.randn(10, 256), "fc.bias": torch.randn(10)}
    saved = {k: v for k, v in saved.items() if not k.endswith("num_batches_tracked")}  # older checkpoints lack them
    path = tmp_path / "se_resnet.pt"
    torch.save(saved, path)
    model = build_model("u_se_resnet", width=8, layers=[1, 1, 1, 1], encoder_weights=str(path))
    loaded = model.encoder.state_dict()
    assert torch.equal(loaded["conv1.weight"], rgb_stem.sum(dim=1, keepdim=True))
    assert torch.equal(loaded["layer3.0.se.fc2.weight"], state["layer3.0.se.fc2.weight"])
    assert torch.equal(loaded["layer4.0.bn3.running_mean"], state["layer4.0.bn3.running_mean"])
    assert model.celltune_config["options"]["encoder_weights"] is None
    assert model.celltune_config["init_options"] == {"encoder_weights": str(path)}


def test_u_se_resnet_rejects_unusable_encoder_weights(tmp_path):
    state = _small_encoder_state()
    options = {"width": 8, "layers": [1, 1, 1, 1]}
    with pytest.raises(UserInputError, match="encoder weights file not found"):
        build_model("u_se_resnet", encoder_weights=str(tmp_path / "missing.pt"), **options)
    wrong_size = tmp_path / "deeper.pt"
    torch.save(state, wrong_size)
    with pytest.raises(
        UserInputError, match=r"deeper\.pt: not an SE-ResNet .* 19 missing keys \['layer1\.1\.conv1\.weight'"
    ):
        build_model("u_se_resnet", encoder_weights=str(wrong_size), width=8, layers=[2, 1, 1, 1])
    wrong_shape = tmp_path / "shape.pt"
    torch.save({**state, "layer2.0.conv2.weight": torch.zeros(16, 16, 1, 1)}, wrong_shape)
    with pytest.raises(UserInputError, match=r"layer2\.0\.conv2\.weight has shape \(16, 16, 1, 1\)"):
        build_model("u_se_resnet", encoder_weights=str(wrong_shape), **options)
    not_a_state_dict = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_a_state_dict)
    with pytest.raises(UserInputError, match="expected a state dict"):
        build_model("u_se_resnet", encoder_weights=str(not_a_state_dict), **options)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserInputError, match="cannot load encoder weights"):
        build_model("u_se_resnet", encoder_weights=str(garbage), **options)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("unet", {"width": 8, "stages": 6, "norm": "group", "up": "pixelshuffle", "aspp": True}),
        ("unet_xb", {"width": 8, "target_kind": "mask_marker"}),
        ("xbnet", {"width": 8}),
        ("u_se_resnet", {"width": 8, "layers": (1, 2, 1, 1)}),
    ],
)
def test_model_rebuilds_from_its_config_and_loads_its_weights(tmp_path, name, options):
    model = build_model(name, **options)
    _forward_backward(model, batch=2)  # training mode: updates BatchNorm statistics too
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": model.celltune_config, "state_dict": model.state_dict()}, path)

    checkpoint = torch.load(path, weights_only=True)
    rebuilt = model_from_config(checkpoint["model"])
    rebuilt.load_state_dict(checkpoint["state_dict"])
    assert rebuilt.spec == model.spec
    image = torch.rand(2, 1, 64, 64)
    model.eval()
    rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(image), model(image))


def test_pad_to_multiple_reflects_and_crops_back():
    x = torch.arange(15.0).reshape(1, 1, 3, 5)
    padded, crop = pad_to_multiple(x, 4)
    # H 3 -> 4 (0 above, 1 below), W 5 -> 8 (1 left, 2 right); reflection skips the edge pixel.
    assert padded.shape == (1, 1, 4, 8)
    assert torch.equal(padded[crop], x)
    assert padded[0, 0, 0].tolist() == [1.0, 0, 1, 2, 3, 4, 3, 2]
    assert torch.equal(padded[0, 0, 3, 1:6], x[0, 0, 1])
    zeros, _ = pad_to_multiple(x[0, 0], 4, mode="constant")  # (H, W) input works too
    assert zeros.shape == (4, 8) and zeros[3].abs().sum() == 0 and zeros[:, 0].abs().sum() == 0
    same, crop = pad_to_multiple(torch.rand(2, 1, 32, 16), 16)
    assert same.shape == (2, 1, 32, 16) and same[crop].shape == (2, 1, 32, 16)


def test_pad_to_multiple_rejects_what_it_cannot_do():
    with pytest.raises(UserInputError, match="too small to reflect-pad"):
        pad_to_multiple(torch.rand(1, 1, 5, 5), 16)
    padded, crop = pad_to_multiple(torch.rand(1, 1, 5, 5), 16, mode="replicate")
    assert padded.shape == (1, 1, 16, 16) and padded[crop].shape == (1, 1, 5, 5)
    with pytest.raises(UserInputError, match="padding mode 'wrap'"):
        pad_to_multiple(torch.rand(1, 1, 8, 8), 16, mode="wrap")
    with pytest.raises(UserInputError, match="size multiple 0"):
        pad_to_multiple(torch.rand(1, 1, 8, 8), 0)
