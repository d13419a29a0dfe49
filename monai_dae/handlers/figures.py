"""Ignite handlers that draw the figures of a run (:py:mod:`monai_dae.figures`): learning curves and segmentation figures."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from monai_dae.handlers.handlers import scalars_from_output

__all__ = ["FigureWriter", "LearningCurvesHandler", "SegmentationFiguresHandler"]

logger = logging.getLogger(__name__)


def _never_raise(what: str, draw: Any, *args: Any) -> Any:
    """Call ``draw(*args)``; a failure is logged as a warning: a figure must never end a training run."""
    try:
        return draw(*args)
    except Exception as error:
        logger.warning(f"could not draw {what}: {error!r}")
        return None


class FigureWriter:
    """
    Save figures as PNG files and, with a TensorBoard log directory, log them as images (``add_image``, RGB).

    Args:
        log_dir: TensorBoard log directory, or None for PNG files only.
    """

    def __init__(self, log_dir: str | None = None) -> None:
        self.log_dir = log_dir
        self._writer = None

    def __call__(self, figure: Any, path: str, tag: str, step: int) -> str:
        """
        Args:
            figure: a ``matplotlib.figure.Figure``.
            path: the PNG file.
            tag: the TensorBoard tag.
            step: the TensorBoard step.

        Returns:
            ``path``.
        """
        from monai_dae.figures import figure_to_array, save_figure

        save_figure(figure, path)
        if self.log_dir is not None:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=self.log_dir)
            self._writer.add_image(tag, figure_to_array(figure), step, dataformats="HWC")
            self._writer.flush()
        return path


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        value = value.detach().float().mean().item() if value.numel() else None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class LearningCurvesHandler:
    """
    Draw the learning curves of a training run into ``<output_dir>/learning_curves.png`` (and TensorBoard) at the
    end of every epoch, so an interrupted run has them too, and when the run completes: one subplot per training
    loss term (the total ``loss`` and each ``loss_<term>``: the epoch means that
    :py:class:`monai_dae.handlers.EpochLossTermsHandler` puts in ``engine.state.metrics`` as ``epoch_loss_<term>``
    and the trainer's ``epoch_loss`` key metric when present, otherwise the mean of the iteration outputs of the
    epoch) and one per validation metric of ``validator`` (or one per group of metrics, see ``groups``), x = epoch.

    The curves are also kept in ``learning_curves.json`` next to the PNG; a resumed run reads back the epochs
    before the one it resumes from, so its figure shows the whole run. Attach it after the ``ValidationHandler``
    and the :py:class:`monai_dae.handlers.EpochLossTermsHandler` of the trainer's handler list.

    Args:
        output_dir: folder of the PNG and JSON files (created).
        validator: the evaluator whose metrics (``state.metrics`` after each of its runs) are drawn, or None.
        groups: ``{subplot title: metric name prefix}``: validation metrics starting with a prefix share one
            subplot, labelled by the rest of their name (e.g. ``{"Dice per organ": "val_dice_"}``).
        log_dir: TensorBoard log directory, or None.
        filename: the PNG file name.
        title: the figure title.
    """

    def __init__(
        self,
        output_dir: str,
        validator: Engine | None = None,
        groups: Mapping[str, str] | None = None,
        log_dir: str | None = None,
        filename: str = "learning_curves.png",
        title: str = "learning curves",
    ) -> None:
        self.output_dir = output_dir
        self.validator = validator
        self.groups = dict(groups or {})
        self.filename = filename
        self.title = title
        self.writer = FigureWriter(log_dir)
        self.train: dict[str, dict[int, float]] = {}
        self.validation: dict[str, dict[int, float]] = {}
        self.written: list[str] = []
        self._trainer: Engine | None = None
        self._sums: dict[str, float] = {}
        self._count = 0
        self._history_pending = False

    @property
    def path(self) -> str:
        """The PNG file."""
        return os.path.join(self.output_dir, self.filename)

    @property
    def history_path(self) -> str:
        """The JSON file of the curves."""
        return os.path.splitext(self.path)[0] + ".json"

    def attach(self, engine: Engine) -> None:
        """
        Args:
            engine: the trainer.
        """
        self._trainer = engine
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, lambda e: _never_raise("the learning curves", self.write, e))
        if self.validator is not None:
            self.validator.add_event_handler(Events.EPOCH_COMPLETED, self._record_validation)

    def _started(self, engine: Engine) -> None:
        self._history_pending = True

    def _load_history(self, engine: Engine) -> None:
        """
        Keep the saved curves of the epochs before a resumed run's first one (none for a fresh run). Called when
        the first epoch starts: the checkpoint of a resumed run is loaded at ``STARTED``, maybe after this handler.
        """
        self._history_pending = False
        done = engine.state.epoch - 1
        if done <= 0 or not os.path.isfile(self.history_path):
            return
        try:
            with open(self.history_path) as file:
                saved = json.load(file)
        except (OSError, ValueError) as error:
            logger.warning(f"cannot read the learning curves of the previous run from {self.history_path}: {error}")
            return
        for store, key in ((self.train, "train"), (self.validation, "validation")):
            for name, points in saved.get(key, {}).items():
                kept = {int(epoch): float(value) for epoch, value in points.items() if int(epoch) <= done}
                store.setdefault(name, {}).update(kept)

    def _reset(self, engine: Engine) -> None:
        if self._history_pending:
            self._load_history(engine)
        self._sums, self._count = {}, 0

    def _accumulate(self, engine: Engine) -> None:
        for key, value in scalars_from_output()(engine.state.output).items():
            self._sums[key] = self._sums.get(key, 0.0) + value
        self._count += 1

    def _epoch_completed(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        terms = {key: total / self._count for key, total in self._sums.items()} if self._count else {}
        for key, value in engine.state.metrics.items():  # reduced over the ranks: preferred to this rank's means
            if key == "epoch_loss" or key.startswith("epoch_loss_"):
                terms[key[len("epoch_"):]] = value
        for key, value in terms.items():
            value = _scalar(value)
            if value is not None:
                self.train.setdefault(key, {})[epoch] = value
        _never_raise("the learning curves", self.write, engine)

    def _record_validation(self, validator: Engine) -> None:
        epoch = self._trainer.state.epoch if self._trainer is not None else validator.state.epoch
        for key, value in validator.state.metrics.items():
            value = _scalar(value)
            if value is not None:
                self.validation.setdefault(key, {})[epoch] = value

    def curves(self) -> dict[str, dict[str, list[tuple[int, float]]]]:
        """
        Returns:
            ``{subplot title: {series label: [(epoch, value), ...]}}``: the loss (total first, then the terms),
            then the validation metrics in the order the validator reports them, grouped by ``groups``.
        """
        curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
        for name in sorted(self.train, key=lambda k: (k != "loss", k)):
            curves[name] = {"train": sorted(self.train[name].items())}
        for name, points in self.validation.items():
            group = next((title for title, prefix in self.groups.items() if name.startswith(prefix)), None)
            if group is None:
                curves[name] = {"validation": sorted(points.items())}
            else:
                curves.setdefault(group, {})[name[len(self.groups[group]):].replace("_", " ")] = sorted(points.items())
        return curves

    def write(self, engine: Engine | None = None) -> str | None:
        """
        Draw the figure and save the curves (JSON).

        Args:
            engine: the trainer (its epoch is the TensorBoard step).

        Returns:
            the PNG path, or None before the first epoch's values.
        """
        from monai_dae.figures import learning_curves_figure

        curves = self.curves()
        if not curves:
            return None
        step = engine.state.epoch if engine is not None else 0
        path = self.writer(learning_curves_figure(curves, self.title), self.path, "figures/learning_curves", step)
        history = {"train": self.train, "validation": self.validation}
        with open(self.history_path, "w") as file:
            json.dump({key: {n: {str(e): v for e, v in p.items()} for n, p in store.items()} for key, store in history.items()}, file)
        if path not in self.written:
            self.written.append(path)
        return path


def _class_map(value: Any) -> np.ndarray:
    """A segmentation (C, X, Y, Z) one-hot or logits, or (1, X, Y, Z) class indices, as an (X, Y, Z) class map."""
    array = value.detach().float().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value, np.float32)
    if array.ndim == 4:
        return array.argmax(axis=0) if array.shape[0] > 1 else array[0].round()
    return array.round()


def _intensity(value: Any) -> np.ndarray:
    array = value.detach().float().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value, np.float32)
    return array[0] if array.ndim == 4 else array


class SegmentationFiguresHandler:
    """
    Draw, at the end of every run of a segmentation evaluator (each validation of a training run, or the
    evaluation of a model), into ``output_dir``:

    - ``<prefix>dice_per_organ.png``: the per-organ Dice of the run (the evaluator's metrics
      ``<metric_prefix><organ>``, spaces in the organ name as underscores), a bar per organ and the mean;
    - ``<prefix>overlay.png``: the first case of the run, image in grey with the label (left) and the prediction
      (right) in organ colours on three planes.

    They are overwritten at every run (the last validation); with ``best_copies``, when the run holds the best key
    metric so far (``state.best_metric_epoch == state.epoch``) they are also copied to
    ``<prefix>dice_per_organ_best.png`` and ``<prefix>overlay_best.png``. Only the first case's volumes are kept, so the cost is one figure per run.

    Args:
        output_dir: folder of the PNG files (created).
        organs: foreground class names in label order (class k is ``organs[k - 1]``).
        metric_prefix: prefix of the per-organ Dice metric names.
        image_key, label_key, pred_key: keys of the image, the label and the prediction (one-hot, logits or class
            indices) in the engine output.
        log_dir: TensorBoard log directory, or None.
        prefix: file name prefix.
        best_copies: keep copies of the figures of the best validation (off for a single evaluation).
    """

    def __init__(
        self,
        output_dir: str,
        organs: Sequence[str],
        metric_prefix: str = "val_dice_",
        image_key: str = "image",
        label_key: str = "label",
        pred_key: str = "pred",
        log_dir: str | None = None,
        prefix: str = "",
        best_copies: bool = True,
    ) -> None:
        self.output_dir = output_dir
        self.organs = list(organs)
        self.best_copies = best_copies
        self.metric_prefix = metric_prefix
        self.keys = (image_key, label_key, pred_key)
        self.prefix = prefix
        self.writer = FigureWriter(log_dir)
        self.written: list[str] = []
        self._case: tuple[np.ndarray, np.ndarray, np.ndarray, str] | None = None

    def attach(self, engine: Engine) -> None:
        """
        Args:
            engine: a segmentation evaluator.
        """
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._capture)
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: _never_raise("the segmentation figures", self._write, e))

    def _reset(self, engine: Engine) -> None:
        self._case = None

    def _capture(self, engine: Engine) -> None:
        if self._case is not None:
            return
        output = engine.state.output
        item = output[0] if isinstance(output, (list, tuple)) else {k: v[0] for k, v in output.items() if k in self.keys}
        image_key, label_key, pred_key = self.keys
        if not all(k in item for k in self.keys):
            return
        image = item[image_key]
        meta = getattr(image, "meta", {}) or {}
        name = meta.get("filename_or_obj", "")
        name = os.path.basename(str(name[0] if isinstance(name, (list, tuple)) else name)).split(".")[0]
        self._case = (_intensity(image), _class_map(item[label_key]), _class_map(item[pred_key]), name)

    def dice(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """
        Args:
            metrics: an evaluator's ``state.metrics``.

        Returns:
            ``{organ: Dice}`` of the organs whose metric is present (NaN when not a number).
        """
        found = {}
        for organ in self.organs:
            key = self.metric_prefix + organ.replace(" ", "_")
            if key in metrics:
                value = _scalar(metrics[key])
                found[organ] = float("nan") if value is None else value
        return found

    def _write(self, engine: Engine) -> None:
        from monai_dae.figures import dice_bar_figure, segmentation_overlay_figure

        epoch = engine.state.epoch
        best = self.best_copies and getattr(engine.state, "best_metric_epoch", -1) == epoch
        paths = []
        dice = self.dice(engine.state.metrics)
        if dice:
            figure = dice_bar_figure(dice, title=f"Dice per organ (epoch {epoch}, {engine.state.iteration} cases)")
            paths.append(self.writer(figure, os.path.join(self.output_dir, f"{self.prefix}dice_per_organ.png"), "figures/dice_per_organ", epoch))
        if self._case is not None:
            image, label, prediction, name = self._case
            figure = segmentation_overlay_figure(image, label, prediction, self.organs, title=f"{name or 'first case'} (epoch {epoch})")
            paths.append(self.writer(figure, os.path.join(self.output_dir, f"{self.prefix}overlay.png"), "figures/overlay", epoch))
            self._case = None
        if best:
            copies = [path[: -len(".png")] + "_best.png" for path in paths]
            for path, copy in zip(paths, copies):
                shutil.copyfile(path, copy)
            paths += copies
        for path in paths:
            if path not in self.written:
                self.written.append(path)
