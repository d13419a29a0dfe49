"""Ignite handlers of the DAE pretext: loss components, seeded validation, reconstruction previews."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents

from monai_dae.data.sampling import derive_seed
from monai_dae.utils import distributed_rank

__all__ = [
    "LossComponentsHandler",
    "SetRandomStateHandler",
    "SetEpochHandler",
    "GradientClipHandler",
    "ReconstructionPreviewHandler",
    "scalars_from_output",
]


def scalars_from_output(keys: Sequence[str]) -> Callable[[Any], dict[str, float]]:
    """
    Output transform for ``StatsHandler``, ``TensorBoardStatsHandler`` and ``MLFlowHandler``: pick scalar
    entries of ``engine.state.output`` (a dict, or a decollated list of dicts) as a ``{name: float}`` dict.

    Args:
        keys: output keys to report, e.g. ``["loss", "loss_l1", "loss_cmcl"]``; absent keys are skipped.

    Returns:
        the output transform.
    """

    def _transform(output: Any) -> dict[str, float]:
        item = output[0] if isinstance(output, list) else output
        return {k: float(item[k].detach() if isinstance(item[k], torch.Tensor) else item[k]) for k in keys if k in item}

    return _transform


class LossComponentsHandler:
    """
    Copy the components of a loss that records them (``loss_function.components``, e.g.
    :py:class:`monai_dae.losses.DAELoss`) into ``engine.state.output`` after every loss computation, so that
    stats, TensorBoard and MLflow handlers log them next to the total ``loss``.
    """

    def attach(self, engine: Engine) -> None:
        """
        Args:
            engine: a MONAI trainer whose ``loss_function`` has a ``components`` dict.
        """
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        engine.state.output.update(getattr(engine.loss_function, "components", {}))


class SetRandomStateHandler:
    """
    Re-seed random transforms at the start of every epoch of an engine.

    With ``per_epoch=False`` every epoch starts from ``seed`` (validation disruptions, so that validation figures
    are comparable across epochs). With ``per_epoch=True`` (training) epoch e of rank r seeds the k-th object
    with ``derive_seed(seed, e, r, k)``: runs with the same seed draw the same values, objects and ranks draw
    independent ones, and a run resumed at epoch e draws what the uninterrupted run drew from there.

    Args:
        transforms: objects with ``set_random_state(seed)`` (transforms, ``LocalMasking``, ...).
        seed: the base seed.
        per_epoch: derive a fresh seed for every epoch, rank and object.
    """

    def __init__(self, transforms: Any, seed: int = 0, per_epoch: bool = False) -> None:
        self.transforms = transforms if isinstance(transforms, (list, tuple)) else [transforms]
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


def _volume(value: Any, index: int = 0) -> np.ndarray:
    """Channel 0 of sample ``index`` of a batch value (tuples contribute their first item), as float32 numpy."""
    if isinstance(value, (tuple, list)):
        value = value[0]
    sample = value[index]
    array = sample.detach().float().cpu().numpy() if isinstance(sample, torch.Tensor) else np.asarray(sample, np.float32)
    return array[0] if array.ndim > 3 else array


def preview_grid(volumes: Sequence[np.ndarray], display_range: tuple[float, float] | None = None) -> np.ndarray:
    """
    Mid slices of 3D volumes in the three planes: one column per volume, rows axial, coronal, sagittal, all
    scaled with one display range (default the 0.5-99.5 percentiles of the first volume).

    Args:
        volumes: volumes of one shape (X, Y, Z).
        display_range: (low, high) intensity mapped to black and white.

    Returns:
        a uint8 grey image (H, W).
    """
    low, high = display_range or tuple(np.percentile(volumes[0], (0.5, 99.5)))
    scale = 255.0 / max(high - low, 1e-6)
    columns = []
    for volume in volumes:
        x, y, z = (s // 2 for s in volume.shape)
        planes = [volume[:, :, z], volume[:, y, :], volume[x, :, :]]
        size = max(max(p.shape) for p in planes)
        tiles = []
        for plane in planes:
            tile = np.zeros((size, size), np.float32)
            view = np.rot90(plane)
            tile[: view.shape[0], : view.shape[1]] = view
            tiles.append(tile)
        columns.append(np.concatenate(tiles, axis=0))
    grid = np.concatenate(columns, axis=1)
    return np.clip((grid - low) * scale, 0, 255).astype(np.uint8)


class ReconstructionPreviewHandler:
    """
    Write reconstruction previews (for example clean | disrupted | reconstructed, mid slices in three planes)
    as PNG files and to TensorBoard.

    The batch is captured right after the forward pass (before any post-processing). At epoch level the first
    batch of every ``interval``-th epoch is written (its first sample), so successive previews show the same
    case; at iteration level every sample is written, named after its source file.

    Args:
        output_dir: directory of the PNG files (created if needed).
        panels: ``{title: output key}`` in column order; tuple values (the training target
            ``(clean, labels)`` or prediction ``(reconstruction, embedding)``) contribute their first item.
        interval: epochs between previews (epoch level).
        epoch_level: one preview per ``interval`` epochs; False: one per sample of every iteration.
        log_dir: TensorBoard log directory, or None for PNG files only.
        prefix: file name prefix.
        name_key: batch key whose ``filename_or_obj`` metadata names the iteration-level previews.
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
    ) -> None:
        self.output_dir = output_dir
        self.panels = dict(panels or {"clean": "label", "disrupted": "image", "reconstructed": "pred"})
        self.interval = max(1, int(interval))
        self.epoch_level = epoch_level
        self.log_dir = log_dir
        self.prefix = prefix
        self.name_key = name_key
        self._writer = None
        self._captured: list[np.ndarray] | None = None
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
        self._captured = None

    def _capture(self, engine: Engine) -> None:
        output = engine.state.output
        if self.epoch_level:
            if self._captured is None:
                self._captured = [_volume(output[k]) for k in self.panels.values()]
            return
        keys = list(self.panels.values())
        images = output[keys[0]]
        source = engine.state.batch.get(self.name_key) if isinstance(engine.state.batch, dict) else None
        names = source.meta.get("filename_or_obj") if hasattr(source, "meta") else None
        for index in range(len(images)):
            name = os.path.basename(str(names[index])).split(".")[0] if names else f"sample{engine.state.iteration}_{index}"
            self._write([_volume(output[k], index) for k in keys], name, engine.state.iteration)

    def _write_epoch(self, engine: Engine) -> None:
        if self._captured is not None:
            self._write(self._captured, f"epoch{engine.state.epoch:04d}", engine.state.epoch)

    def _write(self, volumes: list[np.ndarray], name: str, step: int) -> None:
        from PIL import Image

        grid = preview_grid(volumes)
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, f"{self.prefix}_{name}.png")
        Image.fromarray(grid).save(path)
        self.written.append(path)
        if self.log_dir is not None:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=self.log_dir)
            self._writer.add_image(f"{self.prefix}/{' | '.join(self.panels)}", grid[None], step)
            self._writer.flush()
