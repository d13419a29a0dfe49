"""Batch preparation for DAE: move the clean batch to the device and disrupt it there."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines.utils import PrepareBatch

__all__ = ["DAEPrepareBatch"]


class DAEPrepareBatch(PrepareBatch):
    """
    ``prepare_batch`` of a MONAI trainer or evaluator for the DAE pretext: the clean images are moved to the
    device and disrupted there as a whole batch (one kernel launch per disruption, independent randomness per
    sample); the network input is the disrupted batch and the target the clean one.

    With ``with_embedding=True`` (training) it returns
    ``(disrupted, (clean, modality_labels), (), {"return_embedding": True})`` so that the network also returns
    its contrastive embedding and :py:class:`monai_dae.losses.DAELoss` gets both targets; otherwise
    ``(disrupted, clean)`` (validation metrics on the reconstruction).

    Args:
        disruption: callable applied to the clean (B, C, *spatial) batch on the device, typically
            ``RandDAEDisruption(batched=True)``; None feeds the clean images (local masking only).
        image_key: key of the clean images in the batch.
        modality_key: key of the integer modality labels.
        with_embedding: training mode as described above.
    """

    def __init__(
        self,
        disruption: Callable[[torch.Tensor], torch.Tensor] | None = None,
        image_key: str = "image",
        modality_key: str = "modality_label",
        with_embedding: bool = True,
    ) -> None:
        self.disruption = disruption
        self.image_key = image_key
        self.modality_key = modality_key
        self.with_embedding = with_embedding

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> Any:
        """
        Args:
            batchdata: collated batch with the image and modality label keys.
            device: target device.
            non_blocking: asynchronous host-to-device copy.
            kwargs: further arguments of ``Tensor.to`` (e.g. ``memory_format``).

        Returns:
            see the class description.
        """
        images = batchdata[self.image_key]
        if isinstance(images, MetaTensor):
            images = images.as_tensor()
        clean = images.to(device=device, non_blocking=non_blocking, **kwargs)
        disrupted = clean if self.disruption is None else self.disruption(clean)
        if not self.with_embedding:
            return disrupted, clean
        labels = torch.as_tensor(batchdata[self.modality_key]).to(device=device, non_blocking=non_blocking)
        return disrupted, (clean, labels), (), {"return_embedding": True}
