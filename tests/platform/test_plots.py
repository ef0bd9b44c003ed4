import numpy as np

from celltune.platform.plots import learning_curve_figure, overlay_figure


def _png_pixels(figure, tmp_path, name):
    from PIL import Image

    path = tmp_path / name
    figure.savefig(path)
    return np.asarray(Image.open(path).convert("RGB"))


def test_overlay_marks_reference_outline_green_and_predictions_red(tmp_path):
    raw = np.random.default_rng(0).integers(0, 255, (64, 64)).astype(np.uint8)
    reference = np.zeros((64, 64), np.int32)
    reference[10:30, 10:30] = 1
    prediction = np.zeros_like(reference)
    prediction[12:32, 12:32] = 5
    pixels = _png_pixels(overlay_figure(raw, reference, prediction, "t"), tmp_path, "o.png")
    green = (pixels[..., 1] > 200) & (pixels[..., 0] < 60) & (pixels[..., 2] < 60)
    red = (pixels[..., 0] > 230) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    assert green.sum() > 50 and red.sum() > 50


def test_learning_curve_has_one_line_per_series():
    figure = learning_curve_figure({"loss": [(0, 1.0), (1, 0.5)], "seg_mean": [(1, 0.3)], "lr": []})
    loss_axis, score_axis = figure.axes
    assert [line.get_label() for line in loss_axis.lines] == ["loss"]
    assert [line.get_label() for line in score_axis.lines] == ["seg_mean"]
