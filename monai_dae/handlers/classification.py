"""Classification reports: per-subject probabilities, confusion matrix and summary metrics of an evaluator run."""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from monai.metrics import compute_roc_auc

from monai_dae.utils import all_gather_list, distributed_rank, distributed_world_size

__all__ = ["classification_metrics", "ClassificationReport", "HeadNormRecalibration"]

logger = logging.getLogger(__name__)


def classification_metrics(labels: Sequence[int], probabilities: np.ndarray) -> dict[str, Any]:
    """
    Accuracy, balanced accuracy (mean per-class recall), ROC AUC (binary: of class 1; more classes: macro
    one-vs-rest mean over the classes present) and the confusion matrix. The AUC is MONAI's
    (``monai.metrics.compute_roc_auc``, the ``ROCAUC`` metric of the bundle's validation; ties count one half).

    Args:
        labels: true class indices (N,).
        probabilities: class probabilities (N, C).

    Returns:
        ``{"accuracy", "balanced_accuracy", "auc", "recall": per class, "confusion_matrix": C x C list (rows:
        true class, columns: predicted class), "num_subjects"}``; undefined values are NaN. When a probability
        is NaN or infinite every metric is NaN and ``num_non_finite`` counts the subjects concerned.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    num_classes = probabilities.shape[1]
    non_finite = int((~np.isfinite(probabilities)).any(axis=1).sum()) if probabilities.size else 0
    if non_finite:  # argmax and ranks of NaN are arbitrary (a NaN column once gave AUC 1.0): no valid number
        return {
            "num_subjects": int(len(labels)),
            "num_non_finite": non_finite,
            "accuracy": float("nan"),
            "balanced_accuracy": float("nan"),
            "auc": float("nan"),
            "recall": [float("nan")] * num_classes,
            "confusion_matrix": [[0] * num_classes for _ in range(num_classes)],
        }
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    support = confusion.sum(axis=1)
    recall = np.where(support > 0, np.diag(confusion) / np.maximum(support, 1), np.nan)
    # one-vs-rest AUC of class 1 (two classes) or of every class; a class that no subject has, or every subject
    # has, has no AUC (NaN, left out of the mean)
    scored = [1] if num_classes == 2 else range(num_classes)
    positives = (labels[:, None] == np.arange(num_classes)).astype(np.float64)
    per_class = [
        float(compute_roc_auc(torch.from_numpy(probabilities[:, c]), torch.from_numpy(positives[:, c])))
        if 0 < positives[:, c].sum() < len(labels)
        else float("nan")
        for c in scored
    ]
    auc = float(np.nanmean(per_class)) if not np.isnan(per_class).all() else float("nan")
    return {
        "num_subjects": int(len(labels)),
        "accuracy": float((predicted == labels).mean()) if len(labels) else float("nan"),
        "balanced_accuracy": float(np.nanmean(recall)) if not np.isnan(recall).all() else float("nan"),
        "auc": auc,
        "recall": [float(r) for r in recall],
        "confusion_matrix": confusion.tolist(),
    }


class ClassificationReport:
    """
    Collect the class probabilities of every subject during an evaluator run and, when the run ends, write

    - ``<prefix>predictions.csv``: ``subject, label, predicted, prob_<class>...`` (label empty when unknown);
    - with ``with_metrics`` and known labels: ``<prefix>confusion_matrix.csv`` (rows: true class, columns:
      predicted class) and ``<prefix>metrics.json`` (accuracy, balanced accuracy, ROC AUC, per-class recall,
      confusion matrix), and log the metrics;
    - with ``figures`` and known labels, into ``figures_dir`` (default ``output_dir``, next to the CSV files):
      ``<prefix>roc_curve.png`` (AUC in the legend) and ``<prefix>confusion_matrix.png`` (counts, class names),
      also to TensorBoard with ``log_dir``.

    Works with batched (``decollate=False``) and decollated engine outputs; under torch.distributed the rows of
    all ranks are gathered and rank 0 writes the files. Duplicate subjects (from an evenly divisible
    distributed sampler) are written once.

    Args:
        output_dir: folder of the files (created).
        class_names: class names in label order.
        pred_key: key of the logits in the engine output.
        label_key: key of the class index in the batch (-1: unknown).
        subject_key: key of the subject id in the batch.
        prefix: file name prefix.
        with_metrics: also write the confusion matrix and the metrics when labels are known.
        activation: "softmax" (the output holds logits) or "none" (it holds probabilities).
        figures: also draw the ROC curve and the confusion matrix (:py:mod:`monai_dae.figures`).
        figures_dir: folder of the figures; None: ``output_dir``.
        log_dir: TensorBoard log directory of the figures, or None.
    """

    def __init__(
        self,
        output_dir: str,
        class_names: Sequence[str],
        pred_key: str = "pred",
        label_key: str = "label",
        subject_key: str = "subject",
        prefix: str = "",
        with_metrics: bool = True,
        activation: str = "softmax",
        figures: bool = True,
        figures_dir: str | None = None,
        log_dir: str | None = None,
    ) -> None:
        if activation not in ("softmax", "none"):
            raise ValueError(f"activation must be 'softmax' or 'none', got '{activation}'.")
        self.output_dir = output_dir
        self.class_names = list(class_names)
        self.pred_key = pred_key
        self.label_key = label_key
        self.subject_key = subject_key
        self.prefix = prefix
        self.with_metrics = with_metrics
        self.activation = activation
        self.rows: list[tuple[str, int, list[float]]] = []
        self.metrics: dict[str, Any] = {}
        self.figures = figures
        self.figures_dir = figures_dir or output_dir
        self.log_dir = log_dir
        self._figure_writer = None
        self.written_figures: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        self.rows = []

    def _batched(self, value: Any) -> torch.Tensor:
        if isinstance(value, (list, tuple)):
            return torch.stack([torch.as_tensor(v) for v in value])
        return torch.as_tensor(value)

    def collect(self, engine: Engine) -> None:
        output, batch = engine.state.output, engine.state.batch
        if isinstance(output, (list, tuple)):  # decollated
            logits = self._batched([o[self.pred_key] for o in output])
        else:
            logits = self._batched(output[self.pred_key])
        logits = logits.detach().float().reshape(logits.shape[0], -1).cpu()
        probabilities = torch.softmax(logits, dim=1) if self.activation == "softmax" else logits
        subjects = batch.get(self.subject_key) if isinstance(batch, dict) else None
        if subjects is None:
            subjects = [f"{engine.state.iteration}_{i}" for i in range(len(probabilities))]
        subjects = [subjects] if isinstance(subjects, str) else list(subjects)
        labels = batch.get(self.label_key) if isinstance(batch, dict) else None
        labels = [-1] * len(subjects) if labels is None else torch.as_tensor(labels).reshape(-1).tolist()
        for subject, label, row in zip(subjects, labels, probabilities.tolist()):
            self.rows.append((str(subject), int(label), row))

    def write(self, engine: Engine | None = None) -> None:
        rows = all_gather_list(self.rows)
        unique: dict[str, tuple[str, int, list[float]]] = {}
        for row in rows:
            unique.setdefault(row[0], row)
        rows = list(unique.values())
        if distributed_rank() > 0:
            return
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, f"{self.prefix}predictions.csv")
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["subject", "label", "predicted", *(f"prob_{c}" for c in self.class_names)])
            for subject, label, probabilities in rows:
                known = 0 <= label < len(self.class_names)
                predicted = self.class_names[int(np.argmax(probabilities))]
                writer.writerow(
                    [subject, self.class_names[label] if known else "", predicted, *(f"{p:.6f}" for p in probabilities)]
                )
        logger.info(f"wrote the probabilities of {len(rows)} subjects to {path}")
        labelled = [(label, probabilities) for _, label, probabilities in rows if label >= 0]
        if not self.with_metrics or not labelled:
            return
        labels = [label for label, _ in labelled]
        self.metrics = classification_metrics(labels, np.asarray([p for _, p in labelled]))
        self.metrics["class_names"] = self.class_names
        if self.metrics.get("num_non_finite"):
            bad = [subject for subject, label, p in rows if label >= 0 and not np.isfinite(p).all()]
            logger.error(
                f"{len(bad)} subject(s) have non-finite class probabilities ({', '.join(bad[:10])}): accuracy, "
                "balanced accuracy and AUC are reported as NaN. Check the model weights (a diverged training run)."
            )
        with open(os.path.join(self.output_dir, f"{self.prefix}metrics.json"), "w") as f:
            json.dump(self.metrics, f, indent=4)
        with open(os.path.join(self.output_dir, f"{self.prefix}confusion_matrix.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["true \\ predicted", *self.class_names])
            for name, counts in zip(self.class_names, self.metrics["confusion_matrix"]):
                writer.writerow([name, *counts])
        if self.figures:
            self._draw(labels, np.asarray([p for _, p in labelled]), engine.state.epoch if engine is not None else 0)
        logger.info(
            f"{len(labels)} subjects: accuracy {self.metrics['accuracy']:.4f}, balanced accuracy "
            f"{self.metrics['balanced_accuracy']:.4f}, AUC {self.metrics['auc']:.4f}, confusion matrix "
            f"{self.metrics['confusion_matrix']} (rows: true {self.class_names})"
        )

    def _draw(self, labels: list[int], probabilities: np.ndarray, step: int) -> None:
        """The ROC curve and the confusion matrix of the run; a drawing error is logged, never raised."""
        from monai_dae.figures import confusion_matrix_figure, roc_curve_figure
        from monai_dae.handlers.figures import FigureWriter

        if self._figure_writer is None:
            self._figure_writer = FigureWriter(self.log_dir)
        title = f"{self.prefix.rstrip('_') or 'evaluation'}, epoch {step}, {len(labels)} subjects"
        try:
            figures = {
                "roc_curve": roc_curve_figure(labels, probabilities, self.class_names, f"ROC curve ({title})"),
                "confusion_matrix": confusion_matrix_figure(
                    self.metrics["confusion_matrix"], self.class_names, f"confusion matrix ({title})"
                ),
            }
            for name, figure in figures.items():
                path = os.path.join(self.figures_dir, f"{self.prefix}{name}.png")
                self._figure_writer(figure, path, f"figures/{self.prefix}{name}", step)
                if path not in self.written_figures:
                    self.written_figures.append(path)
        except Exception as error:  # a figure must never stop a training run
            logger.warning(f"could not draw the classification figures: {error!r}")


class HeadNormRecalibration:
    """
    Before every run of an evaluator (each validation), recompute the running statistics of a classifier's
    ``head_norm`` BatchNorm from the current network's features of the training data ("PreciseBN", Wu and
    Johnson, Rethinking "Batch" in BatchNorm, 2021).

    Training standardises the pooled features with each batch's own statistics, evaluation with running
    statistics, a moving average over past batches. While the encoder is fine-tuned its features move, and the
    moving average lags behind them. That lag matters when the features vary little between subjects, as those
    of a DAE-pretrained encoder do: measured on the brain phantoms, the feature means drifted by 1-4 standard
    deviations (across subjects) per epoch, the running mean lagged by up to 4.6 of them, and every validation
    subject got the same class for several epochs although their ranking (AUC) was perfect. The recalibrated
    statistics are those of the weights being validated, so the model saved by the validation carries them too.

    The network runs in evaluation mode without gradients (one forward pass over ``data_loader``; its training
    mode is restored afterwards). Under torch.distributed every rank passes its own part of the data and the
    sums are reduced over the ranks. A network without a BatchNorm ``head_norm`` is left unchanged.

    Args:
        network: the classifier (:py:class:`monai_dae.networks.SwinClassifier`, with ``features`` and
            ``head_norm``), or a wrapper of it with ``.module`` (DistributedDataParallel).
        data_loader: loader of training batches (dicts with ``image_key``).
        device: the network's device.
        image_key: key of the images in a batch.
        amp: run the forward pass under autocast.
        amp_dtype: autocast data type.
    """

    def __init__(
        self,
        network: nn.Module,
        data_loader: Any,
        device: str | torch.device,
        image_key: str = "image",
        amp: bool = False,
        amp_dtype: torch.dtype = torch.float16,
    ) -> None:
        self.network = network
        self.data_loader = data_loader
        self.device = torch.device(device)
        self.image_key = image_key
        self.amp = amp
        self.amp_dtype = amp_dtype

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> int:
        """
        Recompute the statistics.

        Args:
            engine: the evaluator (unused).

        Returns:
            the number of samples the statistics were computed from (over all ranks); 0 when the network has no
            BatchNorm ``head_norm`` or the loader gave no batch.
        """
        import torch.distributed as dist

        model = getattr(self.network, "module", self.network)
        norm = getattr(model, "head_norm", None)
        if not isinstance(norm, nn.modules.batchnorm._BatchNorm) or not norm.track_running_stats:
            return 0
        was_training = model.training
        model.eval()
        totals = torch.zeros(3, norm.num_features, dtype=torch.float64, device=self.device)  # count, sum, squares
        with torch.no_grad(), torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            for batch in self.data_loader:
                features = model.features(batch[self.image_key].to(self.device)).double()
                totals[0] += features.shape[0]
                totals[1] += features.sum(0)
                totals[2] += features.square().sum(0)
        model.train(was_training)
        if distributed_world_size() > 1:
            dist.all_reduce(totals)
        count = int(totals[0, 0])
        if count < 2:
            return 0
        mean = totals[1] / count
        variance = (totals[2] - count * mean.square()).clamp_min(0) / (count - 1)
        norm.running_mean.copy_(mean.to(norm.running_mean.dtype))
        norm.running_var.copy_(variance.to(norm.running_var.dtype))
        logger.info(f"head_norm statistics recalibrated on the features of {count} training samples")
        return count
