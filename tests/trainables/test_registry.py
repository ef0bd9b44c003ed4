"""The model registry: names, specs, option checks with suggestions, recorded configs, variants."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from celltune.data_prep.common import UserInputError
from celltune.trainables.architectures import (
    ModelRegistry,
    build_model,
    list_models,
    model_from_config,
    model_spec,
    validate_model,
)


def test_list_models_names_every_family_and_variant_sorted():
    assert list_models() == ["convlstm_unet", "u_se_resnet", "unet", "unet_xb", "xbnet"]


@pytest.mark.parametrize(
    ("name", "target_kind", "out_channels", "size_multiple"),
    [
        ("unet", "tertiary", 3, 16),
        ("unet_xb", "tertiary", 3, 16),
        ("xbnet", "tertiary", 3, 16),
        ("u_se_resnet", "mask_marker", 2, 32),
    ],
)
def test_model_spec_declares_what_each_model_needs_and_gives(name, target_kind, out_channels, size_multiple):
    spec = model_spec(name)
    assert (spec.name, spec.target_kind, spec.out_channels, spec.size_multiple) == (
        name,
        target_kind,
        out_channels,
        size_multiple,
    )
    assert spec.in_channels == 1
    assert spec.options == spec.defaults


def test_spec_follows_options():
    spec = model_spec("unet")
    assert spec.size_multiple_for({"stages": 6}) == 32
    six = model_spec("unet", stages=6, target_kind="binary")
    assert (six.size_multiple, six.target_kind, six.out_channels) == (32, "binary", 2)
    assert six.defaults["stages"] == 5 and six.options["stages"] == 6
    assert model_spec("unet", target_kind="mask_marker").out_channels == 2
    # Relative to the spec's own options: a 6-stage spec keeps 6 stages when the width changes.
    assert six.size_multiple_for({"width": 8}) == 32


def test_variant_is_the_family_with_other_defaults():
    variant, family = model_spec("unet_xb"), model_spec("unet")
    assert variant.defaults.keys() == family.defaults.keys()
    assert variant.defaults["width"] == 32 and variant.defaults["norm"] == "group" and variant.defaults["aspp"] is True
    assert family.defaults["width"] == 64 and family.defaults["norm"] == "batch"
    model = build_model("unet_xb", width=8)
    assert type(model).__name__ == "UNet"
    assert model.celltune_config["options"]["down"] == "convstride"


def test_unknown_model_suggests_close_names():
    with pytest.raises(ValueError,
                       match=r"unknown model 'unett'; did you mean 'unet'.*available: convlstm_unet, u_se_resnet, "):
        build_model("unett")
    with pytest.raises(UserInputError,
                       match=r"unknown model 'resnet'.*available: convlstm_unet, u_se_resnet, unet, unet_xb, xbnet\)"):
        model_spec("resnet")


def test_unknown_option_suggests_close_options():
    with pytest.raises(UserInputError, match=r"model 'unet': unknown option 'widht'; did you mean 'width'\?"):
        build_model("unet", widht=8)
    with pytest.raises(UserInputError,
                       match=r"model 'xbnet': unknown option 'stages' \(available: target_kind, width\)"):
        build_model("xbnet", stages=6)


def test_built_model_records_a_plain_config():
    model = build_model("u_se_resnet", width=8, layers=(1, np.int64(2), 1, 1))
    assert model.spec == model_spec("u_se_resnet", width=8, layers=[1, 2, 1, 1])
    config = model.celltune_config
    assert config == {
        "name": "u_se_resnet",
        "options": {"width": 8, "layers": [1, 2, 1, 1], "encoder_weights": None},
        "init_options": {"encoder_weights": None},
    }
    assert type(config["options"]["layers"][1]) is int
    assert json.loads(json.dumps(config)) == config
    rebuilt = model_from_config(json.loads(json.dumps(config)))
    assert rebuilt.celltune_config == config
    assert [n for n, _ in rebuilt.named_parameters()] == [n for n, _ in model.named_parameters()]


def test_validate_model_runs_every_check_without_weights(tmp_path, recwarn):
    assert validate_model("xbnet", width=16) == model_spec("xbnet", width=16)
    with pytest.raises(UserInputError, match="width=12 must be"):
        validate_model("unet", width=12)
    with pytest.raises(UserInputError, match="encoder weights file not found"):
        validate_model("u_se_resnet", encoder_weights=str(tmp_path / "missing.pt"))
    from celltune.trainables.models.u_se_resnet import SEResNetEncoder

    path = tmp_path / "encoder.pt"
    torch.save(SEResNetEncoder(1, width=8, layers=(1, 1, 1, 1)).state_dict(), path)
    spec = validate_model("u_se_resnet", width=8, layers=[1, 1, 1, 1], encoder_weights=str(path))
    assert spec.options["encoder_weights"] == str(path)
    assert not recwarn.list  # nothing is copied into meta tensors


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"options": {}}, "expected a mapping with a string 'name'"),
        ("unet", "expected a mapping"),
        ({"name": "unet", "options": [8]}, "'options' must be a mapping"),
        ({"name": "xbnet", "options": {"depth": 3}}, "unknown option 'depth'"),
    ],
)
def test_model_from_config_rejects_malformed_configs(config, message):
    with pytest.raises(UserInputError, match=message):
        model_from_config(config)


class _Tiny(nn.Module):
    def __init__(self, channels: int, size_multiple: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 1)
        self.size_multiple = size_multiple


def test_own_registry_registers_builders_and_variants():
    registry = ModelRegistry()

    def tiny(*, channels: int = 2, weights: str | None = None) -> _Tiny:
        return _Tiny(channels)

    registry.register(tiny, target_kind="binary", size_multiple=4, init_only=("weights",))
    registry.register_variant("tiny_wide", "tiny", channels=6)
    assert registry.names() == ["tiny", "tiny_wide"]
    model = registry.build("tiny_wide", weights="init.pt")
    assert model.conv.out_channels == 6
    assert model.celltune_config == {
        "name": "tiny_wide",
        "options": {"channels": 6, "weights": None},
        "init_options": {"weights": "init.pt"},
    }
    assert registry.spec("tiny").out_channels == 2
    with pytest.raises(UserInputError, match="unknown option 'channel'; did you mean 'channels'"):
        registry.register_variant("tiny_bad", "tiny", channel=3)


def test_registration_rejects_malformed_builders():
    registry = ModelRegistry()

    def positional(channels: int = 2) -> _Tiny:
        return _Tiny(channels)

    def no_default(*, channels: int) -> _Tiny:
        return _Tiny(channels)

    def both(*, target_kind: str = "binary") -> _Tiny:
        return _Tiny(2)

    def tiny(*, channels: int = 2) -> _Tiny:
        return _Tiny(channels)

    with pytest.raises(TypeError, match="'channels' must be keyword-only with a default"):
        registry.register(positional, target_kind="binary", size_multiple=4)
    with pytest.raises(TypeError, match="'channels' must be keyword-only with a default"):
        registry.register(no_default, target_kind="binary", size_multiple=4)
    with pytest.raises(TypeError, match="either in the decorator or as an option"):
        registry.register(both, target_kind="binary", size_multiple=4)
    with pytest.raises(ValueError, match="target_kind='instance'"):
        registry.register(tiny, target_kind="instance", size_multiple=4)
    registry.register(tiny, target_kind="binary", size_multiple=8)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(tiny, target_kind="binary", size_multiple=8)
    # The builder's module says 4, the registration 8: building must not silently disagree.
    with pytest.raises(RuntimeError, match="size_multiple=4, registry declares 8"):
        registry.build("tiny")
