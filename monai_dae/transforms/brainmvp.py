"""
BrainMVP (Rui et al., CVPR 2025): multi-parametric MRI studies give several aligned modalities of one anatomy. One
modality m is masked in 8^3 blocks (ratio 0.8) twice: view A fills the masked blocks from a learnable template of
m (in the network, :py:class:`monai_dae.networks.BrainMVPSwinUNETR`), view B with another modality of the same
study; both views reconstruct m.

This module holds the data side: the crop that records where it lies in the modality templates, and the block
masks and cross-modal fill drawn for a batch on its device.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable, RandSpatialCropd
from monai.utils import ensure_tuple_rep

__all__ = ["RandTemplateWindowCropd", "block_masks", "RandModalityBlockMaskd", "RandModalityBlockMaskD",
           "RandModalityBlockMaskDict"]


class RandTemplateWindowCropd(Randomizable, MapTransform):
    """
    MONAI's ``RandSpatialCropd`` that also records where the crop lies in the modality templates of BrainMVP: a
    volume is placed at the centre of a template (the released code's convention), so a crop starting at voxel
    ``s`` of a volume of shape ``D`` starts at ``s + (T - D) // 2`` of a template of shape ``T``. That start is
    written to ``location_key`` as int64 (3,), clipped so that the window lies inside the template (a volume
    larger than the template has no aligned window; its crop then reads the nearest one).

    The crop's start is read from the MetaTensor's affine before and after the crop, so the volume must be a
    MetaTensor (as ``LoadImaged`` makes it).

    Args:
        keys: keys of the (aligned, multi-modal) images to crop, all of the same shape.
        roi_size: size of the crop.
        template_size: spatial shape of the templates (240 x 240 x 155 in BrainMVP, the BraTS grid).
        location_key: key of the window start.
        random_center: a random crop (training); False crops the centre (validation).
        allow_missing_keys: don't raise for a missing key.
    """

    def __init__(
        self,
        keys: KeysCollection,
        roi_size: Sequence[int] | int,
        template_size: Sequence[int] = (240, 240, 155),
        location_key: str = "template_start",
        random_center: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.roi_size = tuple(int(s) for s in ensure_tuple_rep(roi_size, 3))
        self.template_size = tuple(int(s) for s in template_size)
        if len(self.template_size) != 3 or any(r > t for r, t in zip(self.roi_size, self.template_size)):
            raise ValueError(f"template_size must be 3-D and at least roi_size {self.roi_size}, got {template_size}.")
        self.location_key = location_key
        self.cropper = RandSpatialCropd(keys, self.roi_size, random_center=random_center, random_size=False,
                                        allow_missing_keys=allow_missing_keys)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.cropper.set_random_state(state=self.R)
        return self

    def randomize(self, data: Any = None) -> None:
        """The crop is drawn by the wrapped ``RandSpatialCropd``."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """
        Args:
            data: a dictionary with MetaTensor images (C, *spatial) at ``keys``.

        Returns:
            the cropped dictionary, with the window start at ``location_key``.
        """
        d = dict(data)
        key = next(self.key_iterator(d))
        image = d[key]
        if not isinstance(image, MetaTensor):
            raise TypeError(f"RandTemplateWindowCropd needs a MetaTensor at '{key}' (its affine locates the crop), "
                            f"got {type(image).__name__}.")
        shape = np.asarray(image.shape[1:])
        before = image.affine.double()
        d = self.cropper(d)
        after = d[key].affine.double()
        start = torch.linalg.solve(before, after[:, 3])[:3].round().cpu().numpy().astype(np.int64)
        window = start + (np.asarray(self.template_size) - shape) // 2
        window = np.clip(window, 0, np.asarray(self.template_size) - np.asarray(self.roi_size))
        d[self.location_key] = torch.as_tensor(window, dtype=torch.int64)
        return d


def block_masks(rng: np.random.RandomState, count: int, shape: Sequence[int], block_size: int, ratio: float) -> np.ndarray:
    """
    BrainMVP's block masks: the volume is cut into ``block_size``^3 blocks, ``n - floor(n * (1 - ratio))`` of
    the n blocks are masked (the released code keeps ``floor(n * (1 - ratio))``), each mask drawn on its own.

    Args:
        rng: the random state to draw from.
        count: number of masks.
        shape: spatial shape, divisible by ``block_size``.
        block_size: edge of a block in voxels.
        ratio: fraction of the blocks to mask, in [0, 1].

    Returns:
        the block-level masks (count, *shape // block_size), True where masked.
    """
    grid = tuple(int(s) // block_size for s in shape)
    if any(g * block_size != s for g, s in zip(grid, shape)) or min(grid) < 1:
        raise ValueError(f"the spatial shape {tuple(shape)} must be a multiple of the mask block size {block_size}.")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"the mask ratio must be in [0, 1], got {ratio}.")
    blocks = int(np.prod(grid))
    kept = int(np.floor(blocks * (1.0 - ratio)))
    masks = np.ones((count, blocks), dtype=bool)
    for mask in masks:
        mask[rng.permutation(blocks)[:kept]] = False
    return masks.reshape(count, *grid)


class RandModalityBlockMaskd(Randomizable, MapTransform):
    """
    BrainMVP's masking of a batch of multi-modal crops (B, M, *spatial), on the batch's device (one of the pretext
    transforms of :py:class:`monai_dae.engines.PretextPrepareBatch`). Per batch one modality m is drawn (shared
    by the batch, as in the released code); per sample two block masks (views A and B, each its own) and a
    modality k != m of the same study. Written to the dictionary:

    - ``target_key``: modality m, (B, 1, *spatial), what both views reconstruct;
    - ``mask_key``: view A's mask (B, 1, *spatial), bool; the network fills it from m's template;
    - ``view_key``: view B, modality m with its masked blocks replaced by modality k, (B, 1, *spatial);
    - ``modality_key``: m for every sample, int64 (B,): the template to read.

    Random values come from the transform's own ``numpy.random.RandomState``, so a seeded run is reproducible
    on any device.

    Args:
        keys: key of the multi-modal batch (one key), modalities as channels in the templates' order.
        block_size: edge of a mask block (8).
        mask_ratio: fraction of the blocks masked (0.8).
        target_key: key of modality m.
        mask_key: key of view A's mask.
        view_key: key of view B.
        modality_key: key of m per sample.
        allow_missing_keys: don't raise for a missing key.
    """

    def __init__(
        self,
        keys: KeysCollection,
        block_size: int = 8,
        mask_ratio: float = 0.8,
        target_key: str = "target",
        mask_key: str = "mask",
        view_key: str = "view_b",
        modality_key: str = "masked_modality",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"{type(self).__name__} takes one image key, got {self.keys}.")
        self.block_size = int(block_size)
        self.mask_ratio = float(mask_ratio)
        self.target_key, self.mask_key, self.view_key, self.modality_key = target_key, mask_key, view_key, modality_key
        self.modality = 0
        self.fill_modalities = np.zeros(0, dtype=np.int64)
        self.masks = np.zeros((0, 2, 1, 1, 1), dtype=bool)

    def randomize(self, data: tuple[int, int, Sequence[int]]) -> None:
        """
        Draw m, the other modality of every sample and the two masks of every sample.

        Args:
            data: (batch size, number of modalities, spatial shape).
        """
        batch_size, modalities, shape = data
        if modalities < 2:
            raise ValueError(f"BrainMVP needs at least 2 modalities per study (channels), got {modalities}.")
        self.modality = int(self.R.randint(modalities))
        others = self.R.randint(modalities - 1, size=batch_size)
        self.fill_modalities = others + (others >= self.modality)
        masks = block_masks(self.R, 2 * batch_size, shape, self.block_size, self.mask_ratio)
        self.masks = masks.reshape(batch_size, 2, *masks.shape[1:])

    def _voxel_masks(self, device: torch.device) -> torch.Tensor:
        masks = torch.as_tensor(self.masks, device=device)
        for axis in range(2, masks.ndim):
            masks = masks.repeat_interleave(self.block_size, dim=axis)
        return masks

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """
        Args:
            data: a batched dictionary with the crops (B, M, *spatial) at ``keys``.

        Returns:
            a copy with the entries listed in the class description added.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            batch = d[key]
            if batch.ndim != 5:
                raise ValueError(f"{type(self).__name__} expects a batch (B, M, X, Y, Z) at '{key}', got {tuple(batch.shape)}.")
            self.randomize((batch.shape[0], batch.shape[1], batch.shape[2:]))
            masks = self._voxel_masks(batch.device)
            target = batch[:, self.modality : self.modality + 1]
            fill = torch.as_tensor(self.fill_modalities, device=batch.device)
            other = batch[torch.arange(batch.shape[0], device=batch.device), fill].unsqueeze(1)
            d[self.target_key] = target
            d[self.mask_key] = masks[:, :1]
            d[self.view_key] = torch.where(masks[:, 1:], other, target)
            d[self.modality_key] = torch.full((batch.shape[0],), self.modality, dtype=torch.int64, device=batch.device)
        return d


RandModalityBlockMaskD = RandModalityBlockMaskDict = RandModalityBlockMaskd
