"""
VoCo (Wu et al., CVPR 2024): positions in a volume are classes. A sub-volume is cut into a grid of base crops, random
crops are taken from it, and the network learns that the similarity between a random crop and each base crop is
the fraction of the random crop that overlaps that base crop (its overlap label).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import Randomizable, Transform
from monai.utils import TransformBackends, ensure_tuple_rep

from monai_dae.transforms.batched import BatchedPretextd

__all__ = ["overlap_labels", "RandVoCoCrops", "RandVoCoCropsd", "RandVoCoCropsD", "RandVoCoCropsDict"]


def overlap_labels(centers: np.ndarray, crop_size: int, base_size: int, grid: int) -> np.ndarray:
    """
    The overlap labels of square random crops with the base crops of a ``grid`` x ``grid`` layout (the released
    code's ``get_position_label``): for base crop (i, j) in x-y, the area of the random crop's square that lies in
    the base square ``[i * base_size, (i + 1) * base_size) x [j * base_size, (j + 1) * base_size)``, divided by
    ``crop_size ** 2``. Base crops are numbered ``i * grid + j``. A crop that lies inside the grid has labels
    summing to 1.

    Args:
        centers: crop centres (N, 2) in x and y, in voxels of the sub-volume.
        crop_size: edge of the random crops in the sub-volume.
        base_size: edge of the base crops in the sub-volume.
        grid: base crops per axis.

    Returns:
        the labels (N, grid * grid), float32.
    """
    centers = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
    starts = np.arange(grid) * base_size
    low, high = centers - crop_size / 2, centers + crop_size / 2
    # overlap of each crop's interval with each base interval, per axis: (N, grid)
    dx = np.clip(np.minimum(starts + base_size, high[:, :1]) - np.maximum(starts, low[:, :1]), 0, None)
    dy = np.clip(np.minimum(starts + base_size, high[:, 1:]) - np.maximum(starts, low[:, 1:]), 0, None)
    return (dx[:, :, None] * dy[:, None, :]).reshape(len(centers), grid * grid).astype(np.float32) / crop_size**2


class RandVoCoCrops(Randomizable, Transform):
    """
    VoCo's crops of a batch of sub-volumes (B, C, G*b, G*b, b), on the batch's device: per volume the G x G base
    crops of the x-y grid (each b^3, the full depth) and ``num_random_crops`` random crops of the same size, each
    centred at an integer position uniform in ``[b / 2, G * b - b / 2)`` in x and y, all resized to ``roi_size``
    (trilinear, aligned corners, as the released code's ``Resized``). With ``augment``, every crop gets its own
    flips (``flip_prob`` per axis), rot90 in the x-y plane (``rot90_prob``, k uniform in 1..3) and intensity shift
    (``shift_prob``, offset uniform in +-``shift_offset``); the overlap labels are unchanged by them.

    The released code (Luffy03/VoCo) uses G = 4, b = 96 in a 384 x 384 x 96 sub-volume and 64^3 network crops.
    Random values come from the transform's own ``numpy.random.RandomState`` (``set_random_state``), so a seeded
    run is reproducible on any device.

    Args:
        roi_size: size of the crops given to the network.
        grid: base crops per axis in x and y (G).
        num_random_crops: random crops per volume.
        augment: per-crop flips, rot90 and intensity shift (the released code's training crops; its
            validation crops have none).
        flip_prob: probability of a flip, per spatial axis.
        rot90_prob: probability of a rot90 in the x-y plane.
        shift_prob: probability of an intensity shift.
        shift_offset: largest absolute intensity shift.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        roi_size: Sequence[int] | int = 64,
        grid: int = 4,
        num_random_crops: int = 2,
        augment: bool = True,
        flip_prob: float = 0.2,
        rot90_prob: float = 0.2,
        shift_prob: float = 0.1,
        shift_offset: float = 0.1,
    ) -> None:
        self.roi_size = tuple(int(s) for s in ensure_tuple_rep(roi_size, 3))
        if self.roi_size[0] != self.roi_size[1]:
            raise ValueError(f"VoCo crops are rotated in the x-y plane: roi_size needs equal x and y, got {roi_size}.")
        if grid < 2 or num_random_crops < 1:
            raise ValueError(f"grid must be >= 2 and num_random_crops >= 1, got {grid} and {num_random_crops}.")
        self.grid = int(grid)
        self.num_random_crops = int(num_random_crops)
        self.augment = augment
        self.flip_prob, self.rot90_prob = float(flip_prob), float(rot90_prob)
        self.shift_prob, self.shift_offset = float(shift_prob), float(shift_offset)
        self.centers = np.zeros((0, num_random_crops, 2), dtype=np.int64)
        self._flips = np.zeros((0, 3), dtype=bool)
        self._rotations = np.zeros(0, dtype=np.int64)
        self._shifts = np.zeros(0, dtype=np.float32)

    @property
    def crops_per_volume(self) -> int:
        """Base crops plus random crops of one volume (18 for the released code's settings)."""
        return self.grid * self.grid + self.num_random_crops

    def base_size(self, shape: Sequence[int]) -> int:
        """
        Args:
            shape: spatial shape of the sub-volumes.

        Returns:
            the edge b of the base crops.

        Raises:
            ValueError: the shape is not (G * b, G * b, b).
        """
        b = int(shape[0]) // self.grid
        if len(shape) != 3 or b < 1 or tuple(shape) != (self.grid * b, self.grid * b, b):
            raise ValueError(
                f"RandVoCoCrops expects sub-volumes of shape (G*b, G*b, b) with G = {self.grid} (e.g. "
                f"({self.grid * 96}, {self.grid * 96}, 96) for b = 96); got {tuple(shape)}: resize the volumes to it "
                "in the deterministic transforms."
            )
        return b

    def randomize(self, data: tuple[int, int]) -> None:
        """
        Draw the random crops' centres and every crop's augmentation.

        Args:
            data: (batch size, base size b).
        """
        batch_size, b = data
        half = b // 2
        self.centers = self.R.randint(half, self.grid * b - half, size=(batch_size, self.num_random_crops, 2))
        count = batch_size * self.crops_per_volume
        self._flips = self.R.random_sample((count, 3)) < self.flip_prob
        self._rotations = np.where(self.R.random_sample(count) < self.rot90_prob, self.R.randint(1, 4, size=count), 0)
        shifts = self.R.uniform(-self.shift_offset, self.shift_offset, size=count)
        self._shifts = np.where(self.R.random_sample(count) < self.shift_prob, shifts, 0.0).astype(np.float32)

    def __call__(self, batch: torch.Tensor, randomize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            batch: sub-volumes (B, C, G*b, G*b, b) on any device.
            randomize: draw new crops first.

        Returns:
            ``(crops, labels)``: the crops (B * (G^2 + R), C, *roi_size), per volume its G^2 base crops (numbered
            ``i * G + j`` for x index i and y index j) followed by its R random crops; and the overlap labels
            (B, R, G^2), float32, on the batch's device.
        """
        if batch.ndim != 5:
            raise ValueError(f"RandVoCoCrops expects a batch (B, C, X, Y, Z), got shape {tuple(batch.shape)}.")
        b = self.base_size(batch.shape[2:])
        if randomize:
            self.randomize((batch.shape[0], b))
        if len(self.centers) != batch.shape[0]:
            raise RuntimeError(f"RandVoCoCrops was randomized for {len(self.centers)} volumes, got {batch.shape[0]}.")
        half = b // 2
        crops = []
        for index, volume in enumerate(batch):
            corners = [(i * b, j * b) for i in range(self.grid) for j in range(self.grid)]
            corners += [(int(x) - half, int(y) - half) for x, y in self.centers[index]]
            crops.extend(volume[:, x : x + b, y : y + b, :] for x, y in corners)
        stacked = torch.stack(crops)
        if stacked.shape[2:] != self.roi_size:
            stacked = F.interpolate(stacked.float(), size=self.roi_size, mode="trilinear", align_corners=True)
            stacked = stacked.to(batch.dtype)
        if self.augment:
            stacked = self._augment(stacked)
        # the crops span [centre - b // 2, centre - b // 2 + b): their exact centres, also for an odd b
        labels = overlap_labels(self.centers.reshape(-1, 2) - half + b / 2, b, b, self.grid)
        labels = torch.as_tensor(labels, device=batch.device).reshape(batch.shape[0], self.num_random_crops, -1)
        return stacked, labels

    def _augment(self, crops: torch.Tensor) -> torch.Tensor:
        """Every crop's own flips, rot90 and intensity shift, as drawn by :py:meth:`randomize`."""
        out = []
        for crop, flips, k in zip(crops, self._flips, self._rotations):
            axes = [axis + 1 for axis in range(3) if flips[axis]]
            crop = crop.flip(axes) if axes else crop
            out.append(crop.rot90(int(k), (1, 2)) if k else crop)
        shifts = torch.as_tensor(self._shifts, dtype=crops.dtype, device=crops.device)
        return torch.stack(out) + shifts.view(-1, *([1] * (crops.ndim - 1)))


class RandVoCoCropsd(BatchedPretextd):
    """
    Dictionary version of :py:class:`RandVoCoCrops` for batched dictionaries (the pretext transforms of
    :py:class:`monai_dae.engines.PretextPrepareBatch`): the sub-volumes at ``keys`` are left as they are, the crops
    are written to ``crops_key`` and the overlap labels to ``label_key`` (see
    :py:class:`monai_dae.transforms.batched.BatchedPretextd`).

    Args:
        keys: key of the sub-volume batch (one key).
        crops_key: key of the crops (the network input).
        label_key: key of the overlap labels (the target).
        roi_size: size of the crops given to the network.
        grid: base crops per axis in x and y.
        num_random_crops: random crops per volume.
        augment: per-crop flips, rot90 and intensity shift.
        flip_prob: probability of a flip, per spatial axis.
        rot90_prob: probability of a rot90 in the x-y plane.
        shift_prob: probability of an intensity shift.
        shift_offset: largest absolute intensity shift.
        allow_missing_keys: don't raise for a missing key.
    """

    def __init__(
        self,
        keys: KeysCollection,
        crops_key: str = "crops",
        label_key: str = "overlap",
        roi_size: Sequence[int] | int = 64,
        grid: int = 4,
        num_random_crops: int = 2,
        augment: bool = True,
        flip_prob: float = 0.2,
        rot90_prob: float = 0.2,
        shift_prob: float = 0.1,
        shift_offset: float = 0.1,
        allow_missing_keys: bool = False,
    ) -> None:
        cropper = RandVoCoCrops(
            roi_size, grid, num_random_crops, augment, flip_prob, rot90_prob, shift_prob, shift_offset
        )
        super().__init__(keys, cropper, (crops_key, label_key), allow_missing_keys)


RandVoCoCropsD = RandVoCoCropsDict = RandVoCoCropsd
