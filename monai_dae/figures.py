"""
Figures of the bundles' runs: learning curves, reconstruction previews, per-organ Dice and segmentation
overlays, ROC curve and confusion matrix, benchmark ratios, label-efficiency curves.

Every figure is a ``matplotlib.figure.Figure`` drawn with the Agg renderer, never through pyplot's global state,
so figures can be made from data-loader threads and several engines at once. Each kind has a builder
(``<kind>_figure``, returning the ``Figure``, for tests and notebooks) and a writer (``plot_<kind>``, returning
the saved PNG path). Colours of organs and modalities are defined once here (:py:data:`ORGAN_COLOURS`,
:py:data:`MODALITY_COLOURS`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

__all__ = [
    "ORGAN_COLOURS",
    "MODALITY_COLOURS",
    "PLANES",
    "organ_colour",
    "save_figure",
    "figure_to_array",
    "mid_slices",
    "learning_curves_figure",
    "plot_learning_curves",
    "reconstruction_preview_figure",
    "plot_reconstruction_preview",
    "dice_bar_figure",
    "plot_dice_bars",
    "segmentation_overlay_figure",
    "plot_segmentation_overlay",
    "roc_curve_figure",
    "plot_roc_curve",
    "confusion_matrix_figure",
    "plot_confusion_matrix",
    "benchmark_ratios_figure",
    "plot_benchmark_ratios",
    "label_efficiency_figure",
    "plot_label_efficiency",
    "data_pipeline_figure",
    "plot_data_pipeline",
]

DPI = 100
PANEL_INCHES = 2.6
PLANES = ("axial", "coronal", "sagittal")

ORGAN_COLOURS: tuple[str, ...] = (
    "#e6194b",  # 1 spleen
    "#3cb44b",  # 2 right kidney
    "#ffe119",  # 3 left kidney
    "#4363d8",  # 4 gallbladder
    "#f58231",  # 5 esophagus
    "#911eb4",  # 6 liver
    "#46f0f0",  # 7 stomach
    "#f032e6",  # 8 aorta
    "#bcf60c",  # 9 inferior vena cava
    "#fabebe",  # 10 portal and splenic veins
    "#008080",  # 11 pancreas
    "#9a6324",  # 12 right adrenal gland
    "#800000",  # 13 left adrenal gland
)
"""Colour of foreground class k (label k, 1-based) at index k - 1; classes beyond 13 cycle through them."""

MODALITY_COLOURS: dict[str, str] = {"ct": "#1f77b4", "t1": "#2ca02c", "t1ce": "#d62728", "t2": "#9467bd", "flair": "#ff7f0e"}
"""Colour of each canonical modality name (row labels of the previews)."""

TRAIN_COLOUR, VALIDATION_COLOUR = "#1f77b4", "#d62728"


def organ_colour(label: int) -> str:
    """
    Args:
        label: a foreground class index (1-based).

    Returns:
        its colour in :py:data:`ORGAN_COLOURS` (cycling beyond 13 classes).
    """
    return ORGAN_COLOURS[(int(label) - 1) % len(ORGAN_COLOURS)]


def save_figure(figure: Figure, path: str) -> str:
    """
    Write a figure as PNG, creating the folder, atomically (a reader never sees half a file).

    Args:
        figure: the figure.
        path: the PNG file.

    Returns:
        ``path``.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    FigureCanvasAgg(figure)
    figure.savefig(temporary, format="png", dpi=figure.dpi)
    os.replace(temporary, path)
    return path


def figure_to_array(figure: Figure) -> np.ndarray:
    """
    Render a figure (Agg) for ``SummaryWriter.add_image(..., dataformats="HWC")``.

    Args:
        figure: the figure.

    Returns:
        a uint8 RGB image (H, W, 3).
    """
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def mid_slices(volume: np.ndarray, centre: Sequence[int] | None = None) -> list[np.ndarray]:
    """
    The axial, coronal and sagittal planes of a volume (X, Y, Z in RAS order) through ``centre``, rotated for
    display (anterior or superior up).

    Args:
        volume: a 3D array.
        centre: the voxel the planes cross; default the middle of the volume.

    Returns:
        the three 2D planes, in :py:data:`PLANES` order.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"expected a 3D volume (X, Y, Z), got shape {volume.shape}.")
    x, y, z = (s // 2 for s in volume.shape) if centre is None else (int(c) for c in centre)
    return [np.rot90(volume[:, :, z]), np.rot90(volume[:, y, :]), np.rot90(volume[x, :, :])]


def _new_figure(rows: int, columns: int, width: float = PANEL_INCHES, height: float = PANEL_INCHES) -> tuple[Figure, np.ndarray]:
    figure = Figure(figsize=(columns * width, rows * height), dpi=DPI, layout="constrained")
    axes = np.asarray(figure.subplots(rows, columns, squeeze=False))
    return figure, axes


# =============================================================================================================
# Learning curves
# =============================================================================================================


def learning_curves_figure(
    curves: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]],
    title: str = "",
    colours: Mapping[str, str] | None = None,
) -> Figure:
    """
    One subplot per quantity (a loss term, the total loss, a validation metric or a group of them), x = epoch.

    Args:
        curves: ``{subplot title: {series label: [(epoch, value), ...]}}``, in display order.
        title: the figure title.
        colours: ``{series label: colour}``; the others: training blue, validation red, then the cycle.

    Returns:
        the figure.

    Raises:
        ValueError: no curve.
    """
    if not curves:
        raise ValueError("learning_curves_figure needs at least one curve.")
    columns = min(3, len(curves))
    rows = math.ceil(len(curves) / columns)
    figure, axes = _new_figure(rows, columns, 4.0, 3.0)
    defaults = {"train": TRAIN_COLOUR, "validation": VALIDATION_COLOUR}
    for ax, (name, series) in zip(axes.flat, curves.items()):
        for index, (label, points) in enumerate(series.items()):
            points = sorted(points)
            colour = (colours or {}).get(label) or defaults.get(label) or f"C{index % 10}"
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, color=colour, label=label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        epochs = sorted({p[0] for points in series.values() for p in points})
        if len(epochs) == 1:  # a single epoch: one tick, not fractions of an epoch
            ax.set_xticks(epochs)
        ax.legend(fontsize="x-small" if len(series) > 4 else "small", ncol=2 if len(series) > 6 else 1)
    for ax in list(axes.flat)[len(curves):]:
        ax.set_visible(False)
    if title:
        figure.suptitle(title)
    return figure


def plot_learning_curves(
    curves: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]], path: str, title: str = "",
    colours: Mapping[str, str] | None = None,
) -> str:
    """
    Write :py:func:`learning_curves_figure` as a PNG.

    Args:
        curves: ``{subplot title: {series label: [(epoch, value), ...]}}``.
        path: the PNG file.
        title: the figure title.
        colours: ``{series label: colour}``.

    Returns:
        ``path``.
    """
    return save_figure(learning_curves_figure(curves, title, colours), path)


# =============================================================================================================
# Reconstruction previews
# =============================================================================================================


def reconstruction_preview_figure(
    samples: Sequence[Sequence[np.ndarray]],
    panels: Sequence[str],
    row_labels: Sequence[str] | None = None,
    display_ranges: Mapping[str, Sequence[float]] | None = None,
    title: str = "",
) -> Figure:
    """
    Mid slices of the volumes of a few samples: one row per sample; per panel (e.g. clean, disrupted,
    reconstructed) the axial, coronal and sagittal planes, each axis titled ``"<row label> · <panel> · <plane>"``.
    A sample's panels share the 0.5-99.5 percentile range of its first volume unless the panel has its own.

    Args:
        samples: per sample, one 3D volume per panel (all of one shape within a sample).
        panels: the panel names, in column order.
        row_labels: per sample a label (e.g. its modality "CT"); default "sample <i>". A label that names a
            modality of :py:data:`MODALITY_COLOURS` colours the titles of its row.
        display_ranges: ``{panel: (low, high)}`` (e.g. ``(0, 4)`` for a class map of 5 classes).
        title: the figure title.

    Returns:
        the figure.

    Raises:
        ValueError: no sample, or a sample whose volume count differs from the panels'.
    """
    if not samples:
        raise ValueError("reconstruction_preview_figure needs at least one sample.")
    panels = list(panels)
    for index, volumes in enumerate(samples):
        if len(volumes) != len(panels):
            raise ValueError(f"sample {index} has {len(volumes)} volumes for {len(panels)} panels {panels}.")
    labels = list(row_labels or []) + [f"sample {i}" for i in range(len(row_labels or []), len(samples))]
    ranges = {name: tuple(float(v) for v in r) for name, r in (display_ranges or {}).items()}
    figure, axes = _new_figure(len(samples), len(panels) * len(PLANES))
    for row, (volumes, label) in enumerate(zip(samples, labels)):
        shared = tuple(float(v) for v in np.percentile(volumes[0], (0.5, 99.5)))
        colour = MODALITY_COLOURS.get(str(label).lower(), "black")
        for p, (panel, volume) in enumerate(zip(panels, volumes)):
            low, high = ranges.get(panel, shared)
            for k, (plane, image) in enumerate(zip(PLANES, mid_slices(volume))):
                ax = axes[row, p * len(PLANES) + k]
                ax.imshow(image, cmap="gray", vmin=low, vmax=high if high > low else low + 1e-6, interpolation="nearest")
                ax.set_title(f"{label} · {panel} · {plane}", fontsize=9, color=colour)
                ax.set_axis_off()
    if title:
        figure.suptitle(title)
    return figure


def plot_reconstruction_preview(
    samples: Sequence[Sequence[np.ndarray]], panels: Sequence[str], path: str,
    row_labels: Sequence[str] | None = None, display_ranges: Mapping[str, Sequence[float]] | None = None,
    title: str = "",
) -> str:
    """
    Write :py:func:`reconstruction_preview_figure` as a PNG.

    Args:
        samples: per sample, one 3D volume per panel.
        panels: the panel names.
        path: the PNG file.
        row_labels: per sample a label.
        display_ranges: ``{panel: (low, high)}``.
        title: the figure title.

    Returns:
        ``path``.
    """
    return save_figure(reconstruction_preview_figure(samples, panels, row_labels, display_ranges, title), path)


# =============================================================================================================
# Segmentation: per-organ Dice and overlays
# =============================================================================================================


def dice_bar_figure(dice: Mapping[str, float] | Sequence[float], organs: Sequence[str] | None = None, title: str = "") -> Figure:
    """
    A bar per organ (its Dice, in its colour of :py:data:`ORGAN_COLOURS`) and a dashed line at their mean (NaN,
    an organ absent from label and prediction, is left out of the mean and drawn as an empty bar).

    Args:
        dice: ``{organ: Dice}`` in label order, or the values in the order of ``organs``.
        organs: organ names (needed when ``dice`` is a sequence).
        title: the figure title.

    Returns:
        the figure.

    Raises:
        ValueError: a sequence of values without as many organ names.
    """
    if isinstance(dice, Mapping):
        organs, values = list(dice), [float(v) for v in dice.values()]
    else:
        values = [float(v) for v in dice]
        if organs is None or len(organs) != len(values):
            raise ValueError(f"{len(values)} Dice values need as many organ names, got {organs}.")
    values_array = np.asarray(values, dtype=float)
    figure, axes = _new_figure(1, 1, max(6.0, 0.6 * len(values) + 1.5), 4.0)
    ax = axes[0, 0]
    positions = np.arange(len(values))
    heights = np.nan_to_num(values_array, nan=0.0)
    ax.bar(positions, heights, color=[organ_colour(i + 1) for i in positions], edgecolor="black", linewidth=0.5)
    mean = float(np.nanmean(values_array)) if np.isfinite(values_array).any() else float("nan")
    if math.isfinite(mean):
        ax.axhline(mean, color="black", linestyle="--", linewidth=1, label=f"mean {mean:.3f}")
        ax.legend(loc="upper right", fontsize="small")
    for x, value in zip(positions, values_array):
        ax.text(x, (0 if np.isnan(value) else value) + 0.01, "n/a" if np.isnan(value) else f"{value:.2f}",
                ha="center", va="bottom", fontsize=7)
    ax.set_xticks(positions, list(organs), rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("Dice")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or "Dice per organ")
    return figure


def plot_dice_bars(dice: Mapping[str, float] | Sequence[float], path: str, organs: Sequence[str] | None = None, title: str = "") -> str:
    """
    Write :py:func:`dice_bar_figure` as a PNG.

    Args:
        dice: ``{organ: Dice}`` or the values in the order of ``organs``.
        path: the PNG file.
        organs: organ names.
        title: the figure title.

    Returns:
        ``path``.
    """
    return save_figure(dice_bar_figure(dice, organs, title), path)


def _label_colormap(num_labels: int) -> ListedColormap:
    return ListedColormap(["#00000000"] + [organ_colour(k) for k in range(1, num_labels + 1)])


def segmentation_overlay_figure(
    image: np.ndarray,
    label: np.ndarray,
    prediction: np.ndarray,
    organs: Sequence[str],
    title: str = "",
    display_range: Sequence[float] | None = None,
    alpha: float = 0.45,
) -> Figure:
    """
    The image in grey with the label (left) and the prediction (right) overlaid in organ colours, on the axial,
    coronal and sagittal planes through the centre of the labelled voxels, and a legend of the organs present.

    Args:
        image: the intensity volume (X, Y, Z).
        label: the class map of the reference (0 background, k organ ``organs[k - 1]``), same shape.
        prediction: the predicted class map, same shape.
        organs: foreground class names in label order.
        title: the figure title.
        display_range: (low, high) of the grey scale; default the 0.5-99.5 percentiles.
        alpha: opacity of the overlay.

    Returns:
        the figure.

    Raises:
        ValueError: volumes of different shapes.
    """
    image, label, prediction = (np.asarray(v) for v in (image, label, prediction))
    if not image.shape == label.shape == prediction.shape:
        raise ValueError(f"image {image.shape}, label {label.shape} and prediction {prediction.shape} differ in shape.")
    foreground = np.argwhere(label > 0)
    centre = foreground.mean(axis=0).round().astype(int) if len(foreground) else None
    low, high = display_range or np.percentile(image, (0.5, 99.5))
    cmap = _label_colormap(len(organs))
    figure, axes = _new_figure(len(PLANES), 2, 3.2, 3.2)
    for column, (name, classes) in enumerate((("label", label), ("prediction", prediction))):
        for row, (plane, grey, overlay) in enumerate(zip(PLANES, mid_slices(image, centre), mid_slices(classes, centre))):
            ax = axes[row, column]
            ax.imshow(grey, cmap="gray", vmin=low, vmax=high if high > low else low + 1e-6, interpolation="nearest")
            masked = np.ma.masked_where(overlay <= 0, overlay)
            ax.imshow(masked, cmap=cmap, vmin=0, vmax=len(organs), alpha=alpha, interpolation="nearest")
            ax.set_title(f"{name} · {plane}", fontsize=10)
            ax.set_axis_off()
    present = sorted(set(np.unique(label).tolist()) | set(np.unique(prediction).tolist()))
    handles = [Patch(color=organ_colour(k), label=organs[int(k) - 1]) for k in present if 0 < k <= len(organs)]
    if handles:
        figure.legend(handles=handles, loc="outside lower center", ncol=min(4, len(handles)), fontsize="small")
    if title:
        figure.suptitle(title)
    return figure


def plot_segmentation_overlay(
    image: np.ndarray, label: np.ndarray, prediction: np.ndarray, organs: Sequence[str], path: str, title: str = "",
    display_range: Sequence[float] | None = None,
) -> str:
    """
    Write :py:func:`segmentation_overlay_figure` as a PNG.

    Args:
        image: the intensity volume.
        label: the reference class map.
        prediction: the predicted class map.
        organs: foreground class names.
        path: the PNG file.
        title: the figure title.
        display_range: (low, high) of the grey scale.

    Returns:
        ``path``.
    """
    return save_figure(segmentation_overlay_figure(image, label, prediction, organs, title, display_range), path)


# =============================================================================================================
# Classification: ROC curve and confusion matrix
# =============================================================================================================


def _roc_points(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold (tied scores move together, as in the AUC)."""
    order = np.argsort(-scores, kind="mergesort")
    truth, scores = truth[order], scores[order]
    last_of_ties = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tps = np.cumsum(truth)[last_of_ties]
    fps = (last_of_ties + 1) - tps
    positives, negatives = truth.sum(), len(truth) - truth.sum()
    tpr = np.r_[0.0, tps / positives] if positives else np.full(len(tps) + 1, np.nan)
    fpr = np.r_[0.0, fps / negatives] if negatives else np.full(len(fps) + 1, np.nan)
    return fpr, tpr


def roc_curve_figure(labels: Sequence[int], probabilities: np.ndarray, class_names: Sequence[str], title: str = "") -> Figure:
    """
    ROC curve of a classifier: of class 1 for two classes, one-vs-rest per class for more. The AUC in each
    legend entry is MONAI's (``monai.metrics.compute_roc_auc``, as in the bundles' metrics; ties count one half).

    Args:
        labels: true class indices (N,).
        probabilities: class probabilities (N, C).
        class_names: the C class names.
        title: the figure title.

    Returns:
        the figure.

    Raises:
        ValueError: probabilities not of shape (N, len(class_names)).
    """
    import torch
    from monai.metrics import compute_roc_auc

    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape != (len(labels), len(class_names)):
        raise ValueError(f"probabilities of shape {probabilities.shape}, expected ({len(labels)}, {len(class_names)}).")
    figure, axes = _new_figure(1, 1, 5.0, 5.0)
    ax = axes[0, 0]
    classes = [1] if len(class_names) == 2 else list(range(len(class_names)))
    for k in classes:
        truth = (labels == k).astype(np.float64)
        scores = probabilities[:, k]
        if 0 < truth.sum() < len(truth) and np.isfinite(scores).all():
            auc = float(compute_roc_auc(torch.as_tensor(scores), torch.as_tensor(truth)))
        else:
            auc = float("nan")
        fpr, tpr = _roc_points(truth, scores) if np.isfinite(scores).all() else (np.array([]), np.array([]))
        name = class_names[k] if len(class_names) > 2 else f"{class_names[k]} vs {class_names[0]}"
        ax.plot(fpr, tpr, drawstyle="default", color=f"C{k % 10}", linewidth=2, label=f"{name} (AUC = {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title(title or f"ROC curve ({len(labels)} subjects)")
    return figure


def plot_roc_curve(labels: Sequence[int], probabilities: np.ndarray, class_names: Sequence[str], path: str, title: str = "") -> str:
    """
    Write :py:func:`roc_curve_figure` as a PNG.

    Args:
        labels: true class indices.
        probabilities: class probabilities (N, C).
        class_names: the class names.
        path: the PNG file.
        title: the figure title.

    Returns:
        ``path``.
    """
    return save_figure(roc_curve_figure(labels, probabilities, class_names, title), path)


def confusion_matrix_figure(matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str = "") -> Figure:
    """
    A confusion matrix with its counts written in the cells (rows: true class, columns: predicted class).

    Args:
        matrix: C x C counts.
        class_names: the C class names.
        title: the figure title.

    Returns:
        the figure.

    Raises:
        ValueError: the matrix is not C x C.
    """
    counts = np.asarray(matrix, dtype=np.int64)
    if counts.shape != (len(class_names), len(class_names)):
        raise ValueError(f"confusion matrix of shape {counts.shape} for {len(class_names)} classes.")
    size = max(4.0, 1.2 * len(class_names) + 2.0)
    figure, axes = _new_figure(1, 1, size, size)
    ax = axes[0, 0]
    image = ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(int(counts.max()), 1))
    threshold = counts.max() / 2.0
    for (i, j), count in np.ndenumerate(counts):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=14, color="white" if count > threshold else "black")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, list(class_names))
    ax.set_yticks(ticks, list(class_names))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    figure.colorbar(image, ax=ax, shrink=0.8)
    ax.set_title(title or f"confusion matrix ({int(counts.sum())} subjects)")
    return figure


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str, title: str = "") -> str:
    """
    Write :py:func:`confusion_matrix_figure` as a PNG.

    Args:
        matrix: C x C counts (rows: true class).
        class_names: the class names.
        path: the PNG file.
        title: the figure title.

    Returns:
        ``path``.
    """
    return save_figure(confusion_matrix_figure(matrix, class_names, title), path)


# =============================================================================================================
# Benchmark
# =============================================================================================================


def benchmark_ratios_figure(rows: Sequence[Mapping[str, Any]], title: str) -> Figure:
    """
    A horizontal bar per benchmark row that has a ratio (``section: name``), with a line at 1 (the reference
    measured in the same run); the reference of each section is written under the chart.

    Args:
        rows: benchmark table rows ``{"section", "name", "ratio", "reference", ...}``; rows without a ratio are
            skipped.
        title: the figure title (the machine).

    Returns:
        the figure.

    Raises:
        ValueError: no row has a ratio.
    """
    rated = [r for r in rows if r.get("ratio") is not None and math.isfinite(float(r["ratio"]))]
    if not rated:
        raise ValueError("no benchmark row has a ratio to draw.")
    sections = list(dict.fromkeys(r["section"] for r in rated))
    figure, axes = _new_figure(1, 1, 11.0, max(3.0, 0.32 * len(rated) + 1.5))
    ax = axes[0, 0]
    positions = np.arange(len(rated))[::-1]
    ratios = [float(r["ratio"]) for r in rated]
    colours = [f"C{sections.index(r['section']) % 10}" for r in rated]
    ax.barh(positions, ratios, color=colours)
    for y, ratio in zip(positions, ratios):
        ax.text(ratio, y, f" {ratio:.2f}x", va="center", fontsize=8)
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_yticks(positions, [f"{r['section']}: {r['name']}" for r in rated], fontsize=8)
    if max(ratios) / max(min(ratios), 1e-12) > 20:  # orders of magnitude apart: a log scale keeps all bars readable
        ax.set_xscale("log")
        ax.set_xlim(min(min(ratios), 1.0) / 1.5, max(ratios) * 3)
    else:
        ax.set_xlim(0, max(ratios) * 1.15)
    ax.set_xlabel("ratio against the reference measured in the same run (see the table's 'ratio against')")
    ax.grid(axis="x", alpha=0.3)
    handles = [Patch(color=f"C{i % 10}", label=s) for i, s in enumerate(sections)]
    ax.legend(handles=handles, loc="best", fontsize="small")
    ax.set_title(title, fontsize=9, wrap=True)
    return figure


def plot_benchmark_ratios(rows: Sequence[Mapping[str, Any]], path: str, title: str) -> str:
    """
    Write :py:func:`benchmark_ratios_figure` as a PNG.

    Args:
        rows: benchmark table rows.
        path: the PNG file.
        title: the figure title (the machine).

    Returns:
        ``path``.
    """
    return save_figure(benchmark_ratios_figure(rows, title), path)


# =============================================================================================================
# Label-efficiency curves
# =============================================================================================================


def label_efficiency_figure(
    results: Sequence[Mapping[str, Any]], tasks: Mapping[str, str] | None = None, title: str = ""
) -> Figure:
    """
    Label-efficiency curves: per task one panel of the metric against the fraction of labelled training data,
    one line per method, at each fraction the mean over seeds with the standard deviation as error bar.

    Args:
        results: rows ``{"task", "metric", "method", "fraction", "seed", "value"}``.
        tasks: ``{task: panel title}`` in panel order (default: the tasks in order of appearance).
        title: the figure title (the budget and the data).

    Returns:
        the figure.

    Raises:
        ValueError: no row has a finite value.
    """
    rows = [r for r in results if r.get("value") is not None and math.isfinite(float(r["value"]))]
    if not rows:
        raise ValueError("no comparison result has a finite value to draw.")
    tasks = dict(tasks or {t: t for t in dict.fromkeys(r["task"] for r in rows)})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    figure, axes = _new_figure(1, len(tasks), 5.0, 3.8)
    for ax, (task, panel_title) in zip(axes[0], tasks.items()):
        task_rows = [r for r in rows if r["task"] == task]
        for index, method in enumerate(methods):
            values: dict[float, list[float]] = {}
            for r in task_rows:
                if r["method"] == method:
                    values.setdefault(float(r["fraction"]), []).append(float(r["value"]))
            if not values:
                continue
            fractions = sorted(values)
            means = [float(np.mean(values[f])) for f in fractions]
            stds = [float(np.std(values[f])) for f in fractions]
            ax.errorbar([100 * f for f in fractions], means, yerr=stds, marker="o", capsize=3, color=f"C{index % 10}",
                        linestyle="--" if method == "scratch" else "-", label=method)
        metrics = sorted({r["metric"] for r in task_rows})
        ax.set_xlabel("labelled training data (%)")
        ax.set_ylabel(", ".join(metrics))
        ax.set_title(panel_title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    if title:
        figure.suptitle(title, fontsize=9, wrap=True)
    return figure


def plot_label_efficiency(
    results: Sequence[Mapping[str, Any]], path: str, tasks: Mapping[str, str] | None = None, title: str = ""
) -> str:
    """
    Write :py:func:`label_efficiency_figure` as a PNG.

    Args:
        results: comparison rows (see :py:func:`label_efficiency_figure`).
        path: the PNG file.
        tasks: ``{task: panel title}`` in panel order.
        title: the figure title.

    Returns:
        ``path``.
    """
    return save_figure(label_efficiency_figure(results, tasks, title), path)


def data_pipeline_figure(
    throughput: Sequence[Mapping[str, Any]], memory: Sequence[Mapping[str, Any]], labels: Mapping[str, str], title: str = ""
) -> Figure:
    """
    The data-pipeline benchmark at a glance: volumes/s per store and loader worker count (bars), and the growth of
    the peak resident memory with the corpus size per store (lines, log-log).

    Args:
        throughput: rows ``{"store", "workers", "volumes_per_s"}`` (empty: the panel is left out).
        memory: rows ``{"store", "volumes", "growth_mib"}`` (empty: the panel is left out).
        labels: ``{store: legend label}`` in legend order.
        title: the figure title (the machine).

    Returns:
        the figure.

    Raises:
        ValueError: both row lists are empty.
    """
    panels = [name for name, rows in (("throughput", throughput), ("memory", memory)) if rows]
    if not panels:
        raise ValueError("no data-pipeline measurement to draw.")
    figure, axes = _new_figure(1, len(panels), 5.5, 3.8)
    for ax, panel in zip(axes[0], panels):
        if panel == "throughput":
            workers = sorted({int(r["workers"]) for r in throughput})
            stores = [s for s in labels if any(r["store"] == s for r in throughput)]
            width = 0.8 / len(workers)
            for k, count in enumerate(workers):
                values = [next((float(r["volumes_per_s"]) for r in throughput if r["store"] == s and int(r["workers"]) == count), 0.0)
                          for s in stores]
                ax.bar(np.arange(len(stores)) + (k - (len(workers) - 1) / 2) * width, values, width,
                       label=f"{count} worker(s)", color=f"C{k % 10}")
            ax.set_xticks(np.arange(len(stores)), [labels[s].split(" (")[0] for s in stores], rotation=15, fontsize=7,
                          ha="right")
            ax.set_ylabel("volumes/s")
            ax.set_title("throughput per store", fontsize=10)
        else:
            for index, store in enumerate(s for s in labels if any(r["store"] == s for r in memory)):
                rows = sorted((r for r in memory if r["store"] == store), key=lambda r: int(r["volumes"]))
                ax.plot([int(r["volumes"]) for r in rows], [max(float(r["growth_mib"]), 1.0) for r in rows], marker="o",
                        color=f"C{index % 10}", label=labels[store].split(" (")[0])
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("volumes in the corpus")
            ax.set_ylabel("peak RSS growth (MiB)")
            ax.set_title("resident memory by corpus size", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    if title:
        figure.suptitle(title, fontsize=8, wrap=True)
    return figure


def plot_data_pipeline(
    throughput: Sequence[Mapping[str, Any]], memory: Sequence[Mapping[str, Any]], labels: Mapping[str, str], path: str,
    title: str = "",
) -> str:
    """
    Write :py:func:`data_pipeline_figure` as a PNG.

    Args:
        throughput: rows ``{"store", "workers", "volumes_per_s"}``.
        memory: rows ``{"store", "volumes", "growth_mib"}``.
        labels: ``{store: legend label}``.
        path: the PNG file.
        title: the figure title.

    Returns:
        ``path``.
    """
    return save_figure(data_pipeline_figure(throughput, memory, labels, title), path)
