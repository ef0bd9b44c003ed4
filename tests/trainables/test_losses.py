"""Losses checked against numbers worked out by hand or with plain numpy, not with the torch code under test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from celltune.data_prep.common import UserInputError
from celltune.trainables.losses import (
    LossOutput,
    build_loss,
    center_crop,
    edge_distance_weights,
    edge_power,
    list_losses,
    loss_spec,
    loss_target_kind,
)


def _logits_from_probs(probs: np.ndarray) -> torch.Tensor:
    """Logits whose softmax over axis 1 is exactly ``probs`` (log-probabilities)."""
    return torch.tensor(np.log(probs), dtype=torch.float32)


def _perfect_logits(target: torch.Tensor, classes: int, scale: float = 50.0) -> torch.Tensor:
    return scale * torch.nn.functional.one_hot(target, classes).permute(0, 3, 1, 2).float()


# --- center_crop -----------------------------------------------------------------------------------------------


def test_center_crop_removes_margin_on_spatial_axes_only() -> None:
    tensor = torch.arange(2 * 3 * 6 * 5).reshape(2, 3, 6, 5)
    cropped = center_crop(tensor, 2)
    assert cropped.shape == (2, 3, 2, 1)
    assert torch.equal(cropped, tensor[:, :, 2:4, 2:3])
    assert center_crop(tensor, 0) is tensor
    assert center_crop(torch.zeros(4, 7, 9), 3).shape == (4, 1, 3)


@pytest.mark.parametrize("margin", [-1, 3, 1.5])
def test_center_crop_rejects_bad_margin(margin: object) -> None:
    with pytest.raises(ValueError, match="margin"):
        center_crop(torch.zeros(1, 6, 8), margin)  # type: ignore[arg-type]


# --- registry --------------------------------------------------------------------------------------------------


def test_registry_names_and_target_kinds() -> None:
    assert list_losses() == ["ce", "ce_j", "edge_bce", "freq_ce", "weight_map_ce"]
    assert loss_target_kind("ce") == "tertiary"
    assert loss_target_kind("ce_j") == "tertiary"
    assert loss_target_kind("edge_bce") == "mask_marker"
    assert loss_target_kind("weight_map_ce") == "binary"
    spec = loss_spec("edge_bce")
    assert spec.needs_weight and spec.needs_epoch
    assert "epoch_scale" in spec.options and "margin" in spec.options
    assert not loss_spec("ce").needs_weight and not loss_spec("ce").needs_epoch


def test_unknown_loss_name_suggests_and_lists() -> None:
    with pytest.raises(ValueError, match=r"did you mean 'ce_j'.*ce, ce_j, edge_bce, freq_ce, weight_map_ce"):
        build_loss("ce-j")
    with pytest.raises(UserInputError, match="unknown loss"):
        loss_target_kind("dice")


def test_unknown_option_lists_accepted_options() -> None:
    with pytest.raises(ValueError, match=r"unknown option\(s\) weights; accepted: class_weights, margin"):
        build_loss("ce", weights=(1, 2, 3))


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("ce", {"class_weights": (1.0, -1.0, 5.0)}),
        ("ce", {"class_weights": (0, 0, 0)}),
        ("ce", {"class_weights": "abc"}),
        ("ce_j", {"j_weight": -0.1}),
        ("ce_j", {"j_lambda": [[0.5, 0.5], [0.5, 0.5]]}),
        ("ce_j", {"eps": 0.0}),
        ("edge_bce", {"epoch_scale": 0}),
        ("edge_bce", {"channel_names": ("mask", "mask")}),
        ("weight_map_ce", {"margin": -2}),
    ],
)
def test_bad_option_values_raise(name: str, options: dict) -> None:
    with pytest.raises(UserInputError, match=name):
        build_loss(name, **options)


# --- weighted cross entropy ------------------------------------------------------------------------------------

# One image of three pixels; row = softmax probabilities (background, boundary, cell), targets 0, 1, 2.
PROBS = np.array([[0.7, 0.2, 0.1], [0.3, 0.5, 0.2], [0.1, 0.1, 0.8]])
TERTIARY_LOGITS = _logits_from_probs(PROBS.T.reshape(1, 3, 1, 3))
TERTIARY_TARGET = torch.tensor([[[0, 1, 2]]])


def test_weighted_ce_hand_computed() -> None:
    # (1 * -ln 0.7 + 10 * -ln 0.5 + 5 * -ln 0.8) / (1 + 10 + 5) = (0.356675 + 6.931472 + 1.115718) / 16
    out = build_loss("ce")(TERTIARY_LOGITS, TERTIARY_TARGET)
    assert out.total.item() == pytest.approx(0.5252416, abs=1e-6)
    assert out.terms["ce"].item() == pytest.approx(0.5252416, abs=1e-6)
    plain = build_loss("ce", class_weights=(1, 1, 1))(TERTIARY_LOGITS, TERTIARY_TARGET)
    assert plain.total.item() == pytest.approx(-(math.log(0.7) + math.log(0.5) + math.log(0.8)) / 3, abs=1e-6)


def test_weighted_ce_valid_mask_drops_pixels() -> None:
    valid = torch.tensor([[[True, False, True]]])
    out = build_loss("ce")(TERTIARY_LOGITS, TERTIARY_TARGET, valid=valid)
    assert out.total.item() == pytest.approx((-math.log(0.7) - 5 * math.log(0.8)) / 6, abs=1e-6)
    none_valid = build_loss("ce")(TERTIARY_LOGITS, TERTIARY_TARGET, valid=torch.zeros(1, 1, 3, dtype=torch.bool))
    assert none_valid.total.item() == 0.0


def test_weighted_ce_margin_uses_central_crop_only() -> None:
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(2, 3, 5, 6)), dtype=torch.float32)
    target = torch.tensor(rng.integers(0, 3, size=(2, 5, 6)))
    cropped = build_loss("ce", margin=1)(logits, target).total
    by_hand = build_loss("ce")(logits[:, :, 1:4, 1:5], target[:, 1:4, 1:5]).total
    assert cropped.item() == pytest.approx(by_hand.item(), abs=1e-7)


def test_weighted_ce_perfect_prediction_is_zero() -> None:
    target = torch.tensor([[[0, 1, 2], [2, 2, 0]]])
    out = build_loss("ce")(_perfect_logits(target, 3), target)
    assert out.total.item() < 1e-12


def test_weighted_ce_rejects_mismatched_inputs() -> None:
    loss = build_loss("ce")
    with pytest.raises(UserInputError, match="3 values"):
        loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(UserInputError, match="integer class ids"):
        loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4))
    with pytest.raises(UserInputError, match="target shape"):
        loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(UserInputError, match="takes no weight map"):
        loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), torch.ones(1, 4, 4))


# --- J-regularization ------------------------------------------------------------------------------------------


def _j_numpy(probs: np.ndarray, target: np.ndarray, lam: np.ndarray, eps: float = 1e-7) -> float:
    """Mean over images of L_J, written straight from the formula with loops."""
    total = 0.0
    classes = probs.shape[1]
    for b in range(probs.shape[0]):
        for i in range(classes):
            omega_i = target[b] == i
            if not omega_i.any():
                continue
            alpha = probs[b, i][omega_i].mean()
            for k in range(classes):
                omega_k = target[b] == k
                if k == i or not omega_k.any():
                    continue
                beta = (1.0 - probs[b, i][omega_k]).mean()
                total -= lam[i, k] * math.log(max((alpha + beta) / 2, eps))
    return total / probs.shape[0]


def test_j_two_pixel_case_by_hand() -> None:
    # pixel 0 is class 0 with p = (0.8, 0.2), pixel 1 is class 1 with p = (0.4, 0.6):
    # alpha_0 = 0.8, alpha_1 = 0.6, beta_01 = 1 - 0.4 = 0.6, beta_10 = 1 - 0.2 = 0.8
    # L_J = -0.5 log((0.8 + 0.6) / 2) - 0.5 log((0.6 + 0.8) / 2) = -log 0.7
    logits = _logits_from_probs(np.array([[0.8, 0.4], [0.2, 0.6]]).reshape(1, 2, 1, 2))
    target = torch.tensor([[[0, 1]]])
    out = build_loss("ce_j", class_weights=(1, 1))(logits, target)
    ce = -(math.log(0.8) + math.log(0.6)) / 2
    assert out.terms["j"].item() == pytest.approx(-math.log(0.7), abs=1e-6)
    assert out.terms["ce"].item() == pytest.approx(ce, abs=1e-6)
    assert out.total.item() == pytest.approx(ce - 0.05 * math.log(0.7), abs=1e-6)


def test_j_matches_numpy_formula_with_absent_classes_and_lambda_matrix() -> None:
    rng = np.random.default_rng(1)
    raw = rng.normal(size=(3, 3, 4, 5))
    probs = np.exp(raw) / np.exp(raw).sum(axis=1, keepdims=True)
    target = rng.integers(0, 3, size=(3, 4, 5))
    target[1][target[1] == 1] = 2  # image 1 has no boundary pixels: its pairs with class 1 are skipped
    target[2] = 0  # image 2 has a single class: no pair at all, L_J = 0
    lam = np.array([[0.0, 0.3, 0.7], [1.0, 0.0, 0.2], [0.4, 0.9, 0.0]])
    loss = build_loss("ce_j", j_lambda=lam.tolist(), j_weight=0.5)
    out = loss(torch.tensor(raw, dtype=torch.float32), torch.tensor(target))
    assert out.terms["j"].item() == pytest.approx(_j_numpy(probs, target, lam), rel=1e-5)
    assert out.total.item() == pytest.approx(out.terms["ce"].item() + 0.5 * out.terms["j"].item(), rel=1e-6)


def test_j_is_batch_size_independent() -> None:
    logits = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    target = torch.randint(0, 3, (1, 6, 6), generator=torch.Generator().manual_seed(3))
    loss = build_loss("ce_j")
    one = loss(logits, target).terms["j"].item()
    four = loss(logits.repeat(4, 1, 1, 1), target.repeat(4, 1, 1)).terms["j"].item()
    assert four == pytest.approx(one, rel=1e-6)


def test_j_perfect_prediction_reaches_its_minimum_zero() -> None:
    target = torch.tensor([[[0, 1, 2, 2], [0, 0, 1, 2]], [[2, 2, 2, 2], [0, 0, 0, 0]]])
    out = build_loss("ce_j")(_perfect_logits(target, 3), target)
    assert abs(out.terms["j"].item()) < 1e-6
    assert abs(out.total.item()) < 1e-6


def test_j_confidently_wrong_is_finite_and_has_gradients() -> None:
    target = torch.tensor([[[0, 1, 2]]])
    logits = _perfect_logits(torch.tensor([[[1, 2, 0]]]), 3, scale=100.0).requires_grad_(True)
    out = build_loss("ce_j")(logits, target)
    assert math.isfinite(out.total.item()) and out.terms["j"].item() > 10
    out.total.backward()
    assert torch.isfinite(logits.grad).all()


def test_j_valid_mask_excludes_pixels_from_class_sets() -> None:
    rng = np.random.default_rng(4)
    raw = rng.normal(size=(1, 3, 3, 4))
    probs = np.exp(raw) / np.exp(raw).sum(axis=1, keepdims=True)
    target = rng.integers(0, 3, size=(1, 3, 4))
    valid = np.ones((1, 3, 4), dtype=bool)
    valid[0, :, 0] = False
    out = build_loss("ce_j")(torch.tensor(raw, dtype=torch.float32), torch.tensor(target), valid=torch.tensor(valid))
    expected = _j_numpy(probs[..., 1:], target[..., 1:], np.full((3, 3), 0.5))
    assert out.terms["j"].item() == pytest.approx(expected, rel=1e-5)


# --- edge-distance weights -------------------------------------------------------------------------------------


def test_edge_weights_one_row_by_hand() -> None:
    labels = np.array([[0, 0, 0, 1, 1, 1, 1, 0, 0]])
    # edge pixels (both sides of each label change): 2, 3, 6, 7; d = [2, 1, 0, 0, 1, 1, 0, 0, 1], d_max = 2
    expected = np.array([[0.0, 0.5, 1.0, 1.0, 0.5, 0.5, 1.0, 1.0, 0.5]], dtype=np.float32)
    weights = edge_distance_weights(labels)
    assert weights.dtype == np.float32
    np.testing.assert_allclose(weights, expected)


def test_edge_weights_square_and_touching_cells() -> None:
    labels = np.zeros((7, 7), dtype=np.uint16)
    labels[2:5, 2:5] = 3
    weights = edge_distance_weights(labels)
    # farthest from any edge: the image corners, sqrt(1 + 4) from the ring; the cell centre is 1 from it
    assert weights[0, 0] == 0.0 and weights[6, 6] == 0.0
    assert weights[3, 3] == pytest.approx((math.sqrt(5) - 1) / math.sqrt(5), abs=1e-6)
    assert weights[2, 2] == 1.0 and weights[1, 3] == 1.0 and weights[0, 3] == pytest.approx(1 - 1 / math.sqrt(5))
    # a cell/cell contact is an edge too
    touching = np.array([[1, 1, 1, 2, 2, 2]])
    np.testing.assert_allclose(edge_distance_weights(touching), [[0.0, 0.5, 1.0, 1.0, 0.5, 0.0]])


def test_edge_weights_without_edges_are_uniform() -> None:
    np.testing.assert_array_equal(edge_distance_weights(np.zeros((4, 5), np.int32)), np.ones((4, 5), np.float32))
    np.testing.assert_array_equal(edge_distance_weights(np.full((3, 3), 7)), np.ones((3, 3), np.float32))


def test_edge_weights_3d_and_anisotropic_sampling() -> None:
    labels = np.zeros((5, 1, 1), dtype=np.int32)
    labels[2:] = 1  # edge between z = 1 and z = 2; d = [1, 0, 0, 1, 2]
    np.testing.assert_allclose(edge_distance_weights(labels).ravel(), [0.5, 1.0, 1.0, 0.5, 0.0])
    volume = np.zeros((4, 6, 6), dtype=np.int32)
    volume[1:3, 2:4, 2:4] = 1
    iso, aniso = edge_distance_weights(volume), edge_distance_weights(volume, sampling=(3.0, 1.0, 1.0))
    assert iso.shape == aniso.shape == (4, 6, 6)
    assert 0.0 <= iso.min() and iso.max() == 1.0 and not np.allclose(iso, aniso)


@pytest.mark.parametrize("labels", [np.zeros((3, 3), np.float32), np.zeros(5, np.int32), np.zeros((0, 4), np.int32)])
def test_edge_weights_reject_bad_labels(labels: np.ndarray) -> None:
    with pytest.raises(UserInputError, match="edge_distance_weights"):
        edge_distance_weights(labels)


# --- edge-weighted BCE -----------------------------------------------------------------------------------------

EDGE_LOGITS = np.array([[[[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]], [[-2.0, 0.3, 1.0], [0.2, -0.7, 3.0]]]])
EDGE_TARGET = np.array([[[[1, 0, 1], [1, 1, 0]], [[0, 0, 1], [1, 0, 1]]]], dtype=np.float32)
EDGE_WEIGHT = np.array([[[[1.0, 0.5, 0.0], [0.25, 1.0, 0.8]]]], dtype=np.float32)


def _bce_numpy(logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    prob = 1.0 / (1.0 + np.exp(-logits))
    return -(target * np.log(prob) + (1 - target) * np.log(1 - prob))


def _edge_bce(epoch: float, **options: object) -> LossOutput:
    loss = build_loss("edge_bce", **options)
    return loss(torch.tensor(EDGE_LOGITS), torch.tensor(EDGE_TARGET), torch.tensor(EDGE_WEIGHT), epoch=epoch)


def test_edge_power_schedule() -> None:
    assert edge_power(0) == 0.0
    assert edge_power(50) == 1.0
    assert edge_power(100) == 32.0
    assert edge_power(25) == pytest.approx(0.5**5)
    with pytest.raises(UserInputError, match="epoch"):
        edge_power(-1)


def test_edge_bce_epoch_zero_is_plain_mean_bce() -> None:
    out = _edge_bce(0)
    bce = _bce_numpy(EDGE_LOGITS, EDGE_TARGET)
    assert out.total.item() == pytest.approx(bce.mean(), abs=1e-6)  # 0^0 = 1: the w = 0 pixel counts too
    assert out.terms["bce_mask"].item() == pytest.approx(bce[0, 0].mean(), abs=1e-6)
    assert out.terms["bce_marker"].item() == pytest.approx(bce[0, 1].mean(), abs=1e-6)


@pytest.mark.parametrize(("epoch", "power"), [(50, 1.0), (100, 32.0), (37.5, 0.75**5)])
def test_edge_bce_weights_by_w_to_the_power(epoch: float, power: float) -> None:
    bce = _bce_numpy(EDGE_LOGITS, EDGE_TARGET)
    w = np.broadcast_to(EDGE_WEIGHT**power, bce.shape)
    assert _edge_bce(epoch).total.item() == pytest.approx((bce * w).sum() / w.sum(), abs=1e-6)


def test_edge_bce_late_epochs_focus_on_edges() -> None:
    # at epoch 100 only the two w = 1 pixels (per channel) keep a noticeable weight
    bce = _bce_numpy(EDGE_LOGITS, EDGE_TARGET)
    edges = np.broadcast_to(EDGE_WEIGHT == 1.0, bce.shape)
    assert _edge_bce(100).total.item() == pytest.approx(bce[edges].mean(), abs=1e-3)
    # epoch_scale and exponent are options: (10 / 10) ** 2 = 1 behaves like epoch 50 of the default schedule
    assert _edge_bce(10, epoch_scale=10, exponent=2).total.item() == pytest.approx(_edge_bce(50).total.item())


def test_edge_bce_per_channel_weights_and_valid_mask() -> None:
    weight = np.concatenate([EDGE_WEIGHT, 1.0 - EDGE_WEIGHT], axis=1)
    valid = np.array([[[True, True, False], [True, False, True]]])
    loss = build_loss("edge_bce")
    out = loss(
        torch.tensor(EDGE_LOGITS), torch.tensor(EDGE_TARGET), torch.tensor(weight), valid=torch.tensor(valid), epoch=50
    )
    bce = _bce_numpy(EDGE_LOGITS, EDGE_TARGET)
    w = weight * valid[:, None]
    assert out.total.item() == pytest.approx((bce * w).sum() / w.sum(), abs=1e-6)
    assert out.terms["bce_marker"].item() == pytest.approx((bce * w)[0, 1].sum() / w[0, 1].sum(), abs=1e-6)


def test_edge_bce_perfect_prediction_is_zero() -> None:
    logits = torch.tensor(EDGE_TARGET) * 100 - 50
    out = build_loss("edge_bce")(logits, torch.tensor(EDGE_TARGET), torch.tensor(EDGE_WEIGHT), epoch=80)
    assert out.total.item() < 1e-12


def test_edge_bce_requires_weight_and_epoch() -> None:
    loss = build_loss("edge_bce")
    logits, target = torch.tensor(EDGE_LOGITS), torch.tensor(EDGE_TARGET)
    with pytest.raises(UserInputError, match="weight map"):
        loss(logits, target, epoch=3)
    with pytest.raises(UserInputError, match="epoch"):
        loss(logits, target, torch.tensor(EDGE_WEIGHT))
    with pytest.raises(UserInputError, match="weight shape"):
        loss(logits, target, torch.ones(1, 3, 2, 3), epoch=3)


# --- U-Net weight-map CE ---------------------------------------------------------------------------------------


def test_weight_map_ce_hand_computed() -> None:
    # four pixels, p(foreground) = 0.9, 0.3, 0.6, 0.2; targets 1, 0, 1, 0; weights 2, 1, 10, 0
    # CE = -ln 0.9, -ln 0.7, -ln 0.6, -ln 0.8 -> (2 * 0.105361 + 0.356675 + 10 * 0.510826 + 0) / 13
    p_fg = np.array([0.9, 0.3, 0.6, 0.2])
    logits = _logits_from_probs(np.stack([1 - p_fg, p_fg]).reshape(1, 2, 2, 2))
    target = torch.tensor([[[1, 0], [1, 0]]])
    weight = torch.tensor([[[2.0, 1.0], [10.0, 0.0]]])
    expected = (-2 * math.log(0.9) - math.log(0.7) - 10 * math.log(0.6)) / 13
    loss = build_loss("weight_map_ce")
    assert loss(logits, target, weight).total.item() == pytest.approx(expected, abs=1e-6)
    assert loss(logits, target, weight.unsqueeze(1)).terms["ce"].item() == pytest.approx(expected, abs=1e-6)
    valid = torch.tensor([[[True, True], [False, True]]])
    by_hand = (-2 * math.log(0.9) - math.log(0.7)) / 3
    assert loss(logits, target, weight, valid=valid).total.item() == pytest.approx(by_hand, abs=1e-6)


def test_weight_map_ce_perfect_prediction_and_missing_weight() -> None:
    target = torch.tensor([[[0, 1, 1], [1, 0, 0]]])
    loss = build_loss("weight_map_ce")
    assert loss(_perfect_logits(target, 2), target, torch.full((1, 2, 3), 5.0)).total.item() < 1e-12
    with pytest.raises(UserInputError, match="needs a per-pixel weight map"):
        loss(_perfect_logits(target, 2), target)


# --- every registered loss -------------------------------------------------------------------------------------


def _inputs(name: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, dict]:
    gen = torch.Generator().manual_seed(5)
    kind = loss_target_kind(name)
    if kind == "mask_marker":
        logits = torch.randn(2, 2, 12, 12, generator=gen)
        target = (torch.rand(2, 2, 12, 12, generator=gen) > 0.5).float()
        extra = {"weight": torch.rand(2, 1, 12, 12, generator=gen), "epoch": 30}
    else:
        classes = 3 if kind == "tertiary" else 2
        logits = torch.randn(2, classes, 12, 12, generator=gen)
        target = torch.randint(0, classes, (2, 12, 12), generator=gen)
        extra = {"weight": torch.rand(2, 12, 12, generator=gen)} if loss_spec(name).needs_weight else {}
    return logits.to(dtype).requires_grad_(True), target, extra


@pytest.mark.parametrize("name", list_losses())
def test_every_loss_backward_in_float32_from_bf16_logits(name: str) -> None:
    logits, target, extra = _inputs(name, torch.bfloat16)
    out = build_loss(name, margin=2)(logits, target, **extra)
    assert out.total.dtype == torch.float32 and out.total.ndim == 0
    out.total.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad.float()).all()
    assert logits.grad[..., :2, :].abs().sum() == 0  # the margin pixels take no part in the loss
    floats = out.floats()
    assert set(floats) == {"total", *out.terms} and all(isinstance(v, float) for v in floats.values())
