"""Ignite handlers of the pretext tasks: named loss terms, seeded randomness, gradient clipping, previews."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import ignite.distributed as idist
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents

from monai_dae.data.sampling import derive_seed
from monai_dae.utils import distributed_rank

__all__ = [
    "LossComponentsHandler",
    "EpochLossTermsHandler",
    "loss_term_keys",
    "SetRandomStateHandler",
    "SetEpochHandler",
    "GradientClipHandler",
    "ReconstructionPreviewHandler",
    "scalars_from_output",
]


def loss_term_keys(output: Any) -> list[str]:
    """
    The loss entries of an engine output: ``loss`` and every ``loss_<term>`` that
    :py:class:`LossComponentsHandler` copied from a :py:class:`monai_dae.losses.PretextLoss`.

    Args:
        output: ``engine.state.output``, a dict or a decollated list of dicts.

    Returns:
        the keys, ``loss`` first.
    """
    item = output[0] if isinstance(output, list) else output
    if not isinstance(item, Mapping):
        return []
    return sorted((k for k in item if k == "loss" or str(k).startswith("loss_")), key=lambda k: (k != "loss", k))


def scalars_from_output(keys: Sequence[str] | None = None) -> Callable[[Any], dict[str, float]]:
    """
    Output transform for ``StatsHandler``, ``TensorBoardStatsHandler`` and ``MLFlowHandler``: pick scalar
    entries of ``engine.state.output`` (a dict, or a decollated list of dicts) as a ``{name: float}`` dict.

    Args:
        keys: output keys to report (absent keys are skipped); None reports the loss and all its named terms
            (:py:func:`loss_term_keys`), whatever the loss.

    Returns:
        the output transform.
    """

    def _transform(output: Any) -> dict[str, float]:
        item = output[0] if isinstance(output, list) else output
        chosen = loss_term_keys(output) if keys is None else [k for k in keys if k in item]
        return {k: float(item[k].detach() if isinstance(item[k], torch.Tensor) else item[k]) for k in chosen}

    return _transform


class LossComponentsHandler:
    """
    Copy the named terms of a :py:class:`monai_dae.losses.PretextLoss` (``loss_function.components``) into
    ``engine.state.output`` after every loss computation, so that stats, TensorBoard and MLflow handlers log
    them next to the total ``loss``.
    """

    def attach(self, engine: Engine) -> None:
        """
        Args:
            engine: a MONAI trainer whose ``loss_function`` has a ``components`` dict.
        """
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        engine.state.output.update(getattr(engine.loss_function, "components", {}))


class EpochLossTermsHandler:
    """
    Put the epoch mean of every named loss term (``loss_<term>`` of the iteration outputs, see
    :py:func:`loss_term_keys`) into ``engine.state.metrics`` as ``epoch_loss_<term>``, averaged over all ranks
    under ``torch.distributed``, so the epoch-level stats, TensorBoard and MLflow handlers report them for any
    loss. Attach it before those handlers.
    """

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._count = 0

    def attach(self, engine: Engine) -> None:
        """
        Args:
            engine: a trainer whose output holds the loss terms (after :py:class:`LossComponentsHandler`).
        """
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self._sums, self._count = {}, 0

    def _accumulate(self, engine: Engine) -> None:
        values = scalars_from_output()(engine.state.output)
        for key, value in values.items():
            if key != "loss":
                self._sums[key] = self._sums.get(key, 0.0) + value
        self._count += 1

    def __call__(self, engine: Engine) -> None:
        if not self._count:
            return
        names = sorted(self._sums)
        totals = torch.tensor([self._sums[k] for k in names] + [float(self._count)], dtype=torch.float64)
        totals = idist.all_reduce(totals)  # on the backend's device (NCCL needs CUDA tensors); a no-op without DDP
        for name, total in zip(names, totals[:-1].tolist()):
            engine.state.metrics[f"epoch_{name}"] = total / float(totals[-1])


class SetRandomStateHandler:
    """
    Re-seed random transforms at the start of every epoch of an engine.

    With ``per_epoch=False`` every epoch starts from ``seed`` (validation disruptions, so that validation figures
    are comparable across epochs). With ``per_epoch=True`` (training) epoch e of rank r seeds the k-th object
    with ``derive_seed(seed, e, r, k)``: runs with the same seed draw the same values, objects and ranks draw
    independent ones, and a run resumed at epoch e draws what the uninterrupted run drew from there.

    Args:
        transforms: objects with ``set_random_state(seed)`` (transforms, ``PatchEmbeddingMasking``, ...); others
            (deterministic transforms such as ``CopyItemsd``, None) are skipped and do not count in k.
        seed: the base seed.
        per_epoch: derive a fresh seed for every epoch, rank and object.
    """

    def __init__(self, transforms: Any, seed: int = 0, per_epoch: bool = False) -> None:
        transforms = transforms if isinstance(transforms, (list, tuple)) else [transforms]
        self.transforms = [t for t in transforms if callable(getattr(t, "set_random_state", None))]
        self.seed = int(seed)
        self.per_epoch = per_epoch

    def attach(self, engine: Engine) -> None:
        """
        Args:
            engine: the engine whose epochs start from the seed.
        """
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        rank = distributed_rank()
        for index, transform in enumerate(self.transforms):
            seed = derive_seed(self.seed, engine.state.epoch, rank, index) if self.per_epoch else self.seed
            transform.set_random_state(seed=seed)


class SetEpochHandler:
    """
    Tell objects with ``set_epoch(epoch)`` (e.g. :py:class:`monai_dae.data.SeededCacheDataset`) which epoch
    starts, at every epoch start of an engine, before its data loader is iterated.

    Args:
        targets: objects with a ``set_epoch`` method.
    """

    def __init__(self, targets: Any) -> None:
        self.targets = targets if isinstance(targets, (list, tuple)) else [targets]

    def attach(self, engine: Engine) -> None:
        """
        Args:
            engine: the engine whose epochs are announced.
        """
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        for target in self.targets:
            target.set_epoch(engine.state.epoch)


class GradientClipHandler:
    """
    Clip the global gradient norm of a MONAI trainer's network between the backward pass and the optimizer
    step (``IterationEvents.BACKWARD_COMPLETED``), unscaling the gradients first when the trainer uses a
    ``GradScaler`` (AMP). The DAE authors clip at 1.0.

    Args:
        max_norm: the largest allowed L2 norm of all gradients together; 0 or less disables clipping.
    """

    def __init__(self, max_norm: float = 1.0) -> None:
        self.max_norm = float(max_norm)

    def attach(self, engine: Engine) -> None:
        """
        Args:
            engine: a ``SupervisedTrainer``.
        """
        if self.max_norm > 0:
            engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None:
            scaler.unscale_(engine.optimizer)
        torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.max_norm)


def _output_value(output: Mapping[str, Any], key: str) -> Any:
    """The engine output at ``key``; ``"pred.name"`` reads entry ``name`` of a dictionary prediction."""
    value = output
    for part in key.split("."):
        value = value[part]
    return value


def _volume(value: Any, index: int = 0) -> np.ndarray:
    """
    Sample ``index`` of a batch value as a float32 numpy volume: channel 0, or the argmax class map of a
    multi-channel prediction (class logits); tuples contribute their first item.
    """
    if isinstance(value, (tuple, list)):
        value = value[0]
    sample = value[index]
    array = sample.detach().float().cpu().numpy() if isinstance(sample, torch.Tensor) else np.asarray(sample, np.float32)
    if array.ndim > 3:
        return array.argmax(axis=0).astype(np.float32) if array.shape[0] > 1 else array[0]
    return array


class ReconstructionPreviewHandler:
    """
    Write reconstruction previews as titled figures (:py:func:`monai_dae.figures.reconstruction_preview_figure`):
    per sample one row of panels (for example clean | disrupted | reconstructed), each panel's mid slices in the
    axial, coronal and sagittal planes, every axis titled ``"<modality> · <panel> · <plane>"``; PNG files, and
    TensorBoard images with ``log_dir``.

    The outputs are captured right after the forward pass (before any post-processing). At epoch level, every
    ``interval``-th epoch writes one figure of up to ``max_samples`` samples, the first ones of the epoch, one
    per modality when the batch carries modality labels (``modality_key``), so successive previews show the same
    cases; at iteration level every sample gets its own figure (one row), named after its source file.

    Args:
        output_dir: directory of the PNG files (created if needed).
        panels: ``{title: output key}`` in column order; tuple values (the training target
            ``(clean, labels)`` or prediction ``(reconstruction, embedding)``) contribute their first item, and
            multi-channel predictions (class logits) their argmax class map; ``"pred.name"`` is entry ``name``
            of a dictionary prediction (BrainMVP's views and reconstructions).
        interval: epochs between previews (epoch level).
        epoch_level: one preview per ``interval`` epochs; False: one per sample of every iteration.
        log_dir: TensorBoard log directory, or None for PNG files only.
        prefix: file name prefix.
        name_key: batch key whose ``filename_or_obj`` metadata names the iteration-level previews.
        display_ranges: ``{title: (low, high)}`` for panels not shown in the first panel's intensity range
            (e.g. ``(0, 4)`` for the 5 classes of Volume Fusion).
        modalities: modality names in label order (the bundle's ``modalities``), naming the rows; without them
            a row is named after the label ("modality 2"), or "sample <i>" when the batch has no labels.
        modality_key: batch key of the integer modality labels.
        max_samples: samples (rows) of an epoch-level preview.
    """

    def __init__(
        self,
        output_dir: str,
        panels: Mapping[str, str] | None = None,
        interval: int = 1,
        epoch_level: bool = True,
        log_dir: str | None = None,
        prefix: str = "preview",
        name_key: str = "image",
        display_ranges: Mapping[str, Sequence[float]] | None = None,
        modalities: Sequence[str] | None = None,
        modality_key: str = "modality_label",
        max_samples: int = 3,
    ) -> None:
        from monai_dae.handlers.figures import FigureWriter

        self.output_dir = output_dir
        self.panels = dict(panels or {"clean": "label", "disrupted": "image", "reconstructed": "pred"})
        self.interval = max(1, int(interval))
        self.epoch_level = epoch_level
        self.log_dir = log_dir
        self.prefix = prefix
        self.name_key = name_key
        self.display_ranges = {title: tuple(r) for title, r in (display_ranges or {}).items()}
        unknown = set(self.display_ranges) - set(self.panels)
        if unknown:
            raise ValueError(f"display_ranges for unknown panels {sorted(unknown)}; panels: {list(self.panels)}.")
        self.modalities = list(modalities) if modalities is not None else None
        self.modality_key = modality_key
        self.max_samples = max(1, int(max_samples))
        self._writer = FigureWriter(log_dir)
        self._captured: list[tuple[str | None, list[np.ndarray]]] = []
        self.written: list[str] = []

    def attach(self, engine: Engine) -> None:
        """
        Args:
            engine: a MONAI trainer or evaluator.
        """
        engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._capture)
        if self.epoch_level:
            engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self._write_epoch)

    def _reset(self, engine: Engine) -> None:
        self._captured = []

    def _modality_names(self, engine: Engine, count: int) -> list[str | None]:
        """The modality name of every sample of the batch, None where the batch has no modality labels."""
        batch = engine.state.batch
        labels = batch.get(self.modality_key) if isinstance(batch, Mapping) else None
        if labels is None:
            return [None] * count
        labels = torch.as_tensor(labels).reshape(-1).tolist()
        names: list[str | None] = []
        for label in labels[:count]:
            known = self.modalities is not None and 0 <= int(label) < len(self.modalities)
            names.append(str(self.modalities[int(label)]).upper() if known else f"modality {int(label)}")
        return names + [None] * (count - len(names))

    def _capture(self, engine: Engine) -> None:
        output = engine.state.output
        keys = list(self.panels.values())
        values = [_output_value(output, k) for k in keys]
        images = values[0]
        images = images[0] if isinstance(images, (tuple, list)) else images
        modalities = self._modality_names(engine, len(images))
        if self.epoch_level:
            seen = {name for name, _ in self._captured}
            for index, modality in enumerate(modalities):
                if len(self._captured) >= self.max_samples:
                    return
                if modality is not None and modality in seen:
                    continue
                seen.add(modality)
                self._captured.append((modality, [_volume(v, index) for v in values]))
            return
        source = engine.state.batch.get(self.name_key) if isinstance(engine.state.batch, dict) else None
        names = source.meta.get("filename_or_obj") if hasattr(source, "meta") else None
        for index in range(len(images)):
            name = os.path.basename(str(names[index])).split(".")[0] if names else f"sample{engine.state.iteration}_{index}"
            rows = [(modalities[index] or name, [_volume(v, index) for v in values])]
            self._write(rows, name, engine.state.iteration)

    def _write_epoch(self, engine: Engine) -> None:
        if self._captured:
            self._write(self._captured, f"epoch{engine.state.epoch:04d}", engine.state.epoch, f"epoch {engine.state.epoch}")

    def _write(self, rows: list[tuple[str | None, list[np.ndarray]]], name: str, step: int, title: str = "") -> None:
        from monai_dae.figures import reconstruction_preview_figure

        labels = [label or f"sample {i}" for i, (label, _) in enumerate(rows)]
        figure = reconstruction_preview_figure(
            [volumes for _, volumes in rows], list(self.panels), labels, self.display_ranges, title or name
        )
        path = os.path.join(self.output_dir, f"{self.prefix}_{name}.png")
        self.written.append(self._writer(figure, path, f"{self.prefix}/{' | '.join(self.panels)}", step))
