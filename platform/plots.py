"""Pictures people would rather look at than read: learning curves and prediction overlays (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def learning_curve_figure(history: Mapping[str, Sequence[tuple[int, float]]], title: str = "learning curve"):
    """One panel for training losses and one for validation scores, each a list of (step, value)."""
    plt = _pyplot()
    figure, (loss_axis, score_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for name, points in sorted(history.items()):
        if not points:
            continue
        steps, values = zip(*points, strict=True)
        axis = score_axis if name.startswith(("seg", "iou")) else loss_axis
        axis.plot(steps, values, label=name, marker="o" if axis is score_axis else None, markersize=3)
    loss_axis.set(title="training", xlabel="optimizer step", ylabel="loss")
    score_axis.set(title="validation", xlabel="optimizer step", ylabel="score", ylim=(0, 1))
    for axis in (loss_axis, score_axis):
        if axis.lines:
            axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def overlay_figure(raw: np.ndarray, reference: np.ndarray | None, prediction: np.ndarray, title: str = ""):
    """Raw frame with the reference outlined in green and predicted instances in colour beside it."""
    from skimage.color import label2rgb
    from skimage.segmentation import find_boundaries

    plt = _pyplot()
    low, high = np.percentile(raw, (1, 99))
    image = np.clip((raw.astype(np.float32) - low) / max(float(high - low), 1e-6), 0, 1)
    rgb = np.stack([image] * 3, axis=-1)
    outlined = rgb.copy()
    if reference is not None:
        outlined[find_boundaries(reference, mode="inner")] = (0.1, 0.9, 0.1)
    predicted = label2rgb(prediction, image=image, alpha=0.35, bg_label=0)
    predicted[find_boundaries(prediction, mode="inner")] = (1.0, 0.2, 0.2)
    figure, axes = plt.subplots(1, 2, figsize=(10, 5))
    axes[0].imshow(outlined)
    axes[0].set_title("raw + reference (green)" if reference is not None else "raw")
    axes[1].imshow(predicted)
    axes[1].set_title(f"prediction ({len(np.unique(prediction)) - 1} objects)")
    for axis in axes:
        axis.axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def precision_recall_figure(curves: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
                            title: str = "instance precision and recall",
                            marks: Sequence[float] = (0.25, 0.5, 0.75)):
    """Instance precision (solid) and recall (dashed) against the IoU threshold, one colour per curve.

    Args:
        curves: ``{label: (thresholds, precision, recall)}``, e.g. from ``InstanceScores.curve()``.
        title: figure title.
        marks: thresholds drawn as faint vertical lines (the ones reported in tables).
    """
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (label, (thresholds, precision, recall)) in enumerate(curves.items()):
        colour = colours[index % len(colours)]
        axis.plot(thresholds, precision, color=colour, marker="o", markersize=3, label=f"{label} precision")
        axis.plot(thresholds, recall, color=colour, linestyle="--", marker="s", markersize=3, label=f"{label} recall")
    for mark in marks:
        axis.axvline(mark, color="0.6", linewidth=0.8, alpha=0.5)
    axis.set(title=title, xlabel="IoU threshold", ylabel="score", xlim=(0, 1), ylim=(-0.02, 1.02))
    axis.grid(alpha=0.3)
    if curves:
        axis.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    return figure


def transfer_heatmap_figure(models: Sequence[str], datasets: Sequence[str], seg: np.ndarray, seen: np.ndarray,
                            title: str = "SEG per model and dataset"):
    """Models down, datasets across, SEG as colour and number; hatched cells are datasets the model trained on.

    Args:
        seg: ``len(models) x len(datasets)`` SEG values (NaN: not scored).
        seen: same shape, True where the model was trained on the dataset.
    """
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(1.8 + 1.6 * len(datasets), 1.4 + 0.55 * len(models)))
    image = axis.imshow(np.ma.masked_invalid(seg), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for row in range(len(models)):
        for column in range(len(datasets)):
            value = seg[row, column]
            text = "-" if np.isnan(value) else f"{value:.2f}"
            axis.text(column, row, text + (" *" if seen[row, column] else ""), ha="center", va="center",
                      color="white" if np.isnan(value) or value < 0.6 else "black", fontsize=9)
            if seen[row, column]:
                axis.add_patch(plt.Rectangle((column - 0.5, row - 0.5), 1, 1, fill=False, hatch="//",
                                             edgecolor="0.85", linewidth=0))
    axis.set_xticks(range(len(datasets)), labels=datasets, rotation=20, ha="right", fontsize=8)
    axis.set_yticks(range(len(models)), labels=models, fontsize=8)
    figure.colorbar(image, ax=axis, label="SEG")
    axis.set_title(title + (" (* trained on)" if seen.any() else ""), fontsize=10)
    figure.tight_layout()
    return figure


def close_figure(figure) -> None:
    _pyplot().close(figure)


def few_shot_figure(labels: Sequence[str], from_universal: Sequence[float | None],
                    from_scratch: Sequence[float | None], title: str = "SEG after k GT frames"):
    """SEG against the number of annotated frames k, fine-tuned from the universal model and from scratch."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    positions = range(len(labels))
    for values, label, style in ((from_universal, "from the universal model", "o-"),
                                 (from_scratch, "from scratch", "s--")):
        points = [(x, v) for x, v in zip(positions, values, strict=True) if v is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            axis.plot(xs, ys, style, label=label)
    axis.set_xticks(list(positions), labels=list(labels))
    axis.set(title=title, xlabel="k (GT frames of the left-out dataset; 0: zero-shot)", ylabel="validation SEG",
             ylim=(0, 1))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure
