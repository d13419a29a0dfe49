"""
Volume Fusion (MIS-FM, Wang et al. 2023): a pseudo-segmentation pretext. A foreground volume is blended into a
background volume with a piece-wise constant coefficient alpha in {0, 1/4, 1/2, 3/4, 1} drawn per random box,
and the network learns to segment 4 * alpha (5 classes) at every voxel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import Randomizable, Transform
from monai.utils import TransformBackends, ensure_tuple_rep

from monai_dae.transforms.batched import BatchedPretextd

__all__ = ["RandVolumeFusion", "RandVolumeFusiond", "RandVolumeFusionD", "RandVolumeFusionDict"]


class RandVolumeFusion(Randomizable, Transform):
    """
    Volume Fusion of a batch (B, C, *spatial), on the batch's device: sample i is the foreground and sample
    (i + 1) mod B the background, as in the paper (foreground and background from different images); a batch of
    one sample uses the sample flipped along every spatial axis as its background. For every sample, 10..40
    boxes (per-axis sizes in ``[box_size_min, box_size_max]``, clipped to the volume) are drawn at random
    positions, each with a class k uniform in 0..4; later boxes overwrite earlier ones and voxels outside every
    box are class 0. With alpha = k / 4::

        fused = alpha * foreground + (1 - alpha) * background,    label = k

    Random values come from the transform's own ``numpy.random.RandomState`` (seed it with
    ``set_random_state``), drawn per sample, so a seeded run is reproducible on any device.

    Args:
        num_boxes: (min, max) number of boxes per sample, inclusive (paper: 10..40).
        box_size_min: smallest box size per spatial axis (paper: 8).
        box_size_max: largest box size per spatial axis (paper: 80 in-plane, 40 through-plane; the last axis
            is the through-plane axis of RAS-oriented volumes).
        num_classes: number of alpha levels (5: alpha in {0, 1/4, 1/2, 3/4, 1}).
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        num_boxes: Sequence[int] = (10, 40),
        box_size_min: Sequence[int] | int = 8,
        box_size_max: Sequence[int] | int = (80, 80, 40),
        num_classes: int = 5,
    ) -> None:
        low, high = (int(n) for n in num_boxes)
        if not 1 <= low <= high:
            raise ValueError(f"num_boxes must be (min, max) with 1 <= min <= max, got {tuple(num_boxes)}.")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
        self.num_boxes = (low, high)
        self.box_size_min = box_size_min
        self.box_size_max = box_size_max
        self.num_classes = int(num_classes)
        self._boxes: list[list[tuple[tuple[slice, ...], int]]] = []

    def randomize(self, data: tuple[int, Sequence[int]]) -> None:
        """
        Draw the boxes and their classes of every sample.

        Args:
            data: (batch size, spatial shape).
        """
        batch_size, shape = data
        smallest = np.minimum(ensure_tuple_rep(self.box_size_min, len(shape)), shape)
        largest = np.maximum(np.minimum(ensure_tuple_rep(self.box_size_max, len(shape)), shape), smallest)
        self._boxes = []
        for _ in range(batch_size):
            boxes = []
            for _ in range(self.R.randint(self.num_boxes[0], self.num_boxes[1] + 1)):
                size = [self.R.randint(lo, hi + 1) for lo, hi in zip(smallest, largest)]
                start = [self.R.randint(0, extent - s + 1) for extent, s in zip(shape, size)]
                region = tuple(slice(b, b + s) for b, s in zip(start, size))
                boxes.append((region, int(self.R.randint(self.num_classes))))
            self._boxes.append(boxes)

    def __call__(self, batch: torch.Tensor, randomize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            batch: images (B, C, *spatial) on any device.
            randomize: draw new boxes first.

        Returns:
            ``(fused, label)``: the fused images (same shape and dtype as ``batch``) and the classes
            (B, 1, *spatial), int64, on the batch's device.
        """
        if batch.ndim < 3:
            raise ValueError(f"RandVolumeFusion expects a batch (B, C, *spatial), got shape {tuple(batch.shape)}.")
        if randomize:
            self.randomize((batch.shape[0], tuple(batch.shape[2:])))
        if len(self._boxes) != batch.shape[0]:
            raise RuntimeError(f"RandVolumeFusion was randomized for {len(self._boxes)} samples, got {batch.shape[0]}.")
        if batch.shape[0] > 1:
            background = batch.roll(-1, dims=0)
        else:
            background = batch.flip(dims=tuple(range(2, batch.ndim)))
        label = torch.zeros((batch.shape[0], 1, *batch.shape[2:]), dtype=torch.int64, device=batch.device)
        for index, boxes in enumerate(self._boxes):
            for region, level in boxes:
                label[(index, slice(None), *region)] = level
        alpha = label.to(batch.dtype if batch.is_floating_point() else torch.float32) / (self.num_classes - 1)
        fused = alpha * batch + (1 - alpha) * background
        return fused.to(batch.dtype), label


class RandVolumeFusiond(BatchedPretextd):
    """
    Dictionary version of :py:class:`RandVolumeFusion` for batched dictionaries (the pretext transforms of
    :py:class:`monai_dae.engines.PretextPrepareBatch`): the images at ``keys`` are left as they are, the fused
    images are written to ``fused_key`` and the classes to ``label_key`` (see
    :py:class:`monai_dae.transforms.batched.BatchedPretextd`).

    Args:
        keys: key of the clean image batch (one key).
        fused_key: key of the fused images.
        label_key: key of the fusion classes.
        num_boxes: (min, max) number of boxes per sample.
        box_size_min: smallest box size per spatial axis.
        box_size_max: largest box size per spatial axis.
        num_classes: number of alpha levels.
        allow_missing_keys: don't raise for a missing key.
    """

    def __init__(
        self,
        keys: KeysCollection,
        fused_key: str = "fused",
        label_key: str = "fusion_label",
        num_boxes: Sequence[int] = (10, 40),
        box_size_min: Sequence[int] | int = 8,
        box_size_max: Sequence[int] | int = (80, 80, 40),
        num_classes: int = 5,
        allow_missing_keys: bool = False,
    ) -> None:
        fusion = RandVolumeFusion(num_boxes, box_size_min, box_size_max, num_classes)
        super().__init__(keys, fusion, (fused_key, label_key), allow_missing_keys)


RandVolumeFusionD = RandVolumeFusionDict = RandVolumeFusiond
