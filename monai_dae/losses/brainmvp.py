"""The BrainMVP loss: the reconstructions of both views and, late in training, a contrast between the views."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from monai_dae.losses.pretext import PretextLoss

__all__ = ["BrainMVPLoss", "symmetric_info_nce"]


def symmetric_info_nce(first: torch.Tensor, second: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """
    InfoNCE between two views of a batch in both directions (the released code's ``Contrast_Loss``): the
    embeddings are L2-normalised, ``logits = first @ second.T / temperature``, and sample i of one view must pick
    sample i of the other among the batch; the mean of both cross-entropies.

    Args:
        first: embeddings of view A (B, D).
        second: embeddings of view B (B, D).
        temperature: softmax temperature (1.0 in BrainMVP).

    Returns:
        the scalar loss; ``log(B)`` at chance, 0 for a batch of one.
    """
    first, second = F.normalize(first.float(), dim=1), F.normalize(second.float(), dim=1)
    logits = first @ second.t() / temperature
    targets = torch.arange(first.shape[0], device=first.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))


class BrainMVPLoss(PretextLoss):
    """
    The BrainMVP loss on the output of :py:class:`monai_dae.networks.BrainMVPSwinUNETR` and the clean modality m
    (B, 1, *spatial): ``rec_a`` and ``rec_b``, the mean squared errors of the two views' reconstructions over the
    whole crop (as the released code), and ``contrast``, :py:func:`symmetric_info_nce` between the views' pooled
    bottlenecks. Total ``10 * rec_a + rec_b + contrast``; the contrast counts only after ``contrast_start_epoch``
    (epoch 1000 of 1500 in the paper), and is logged before that with weight 0. The trainer announces its
    epochs through :py:meth:`set_epoch` (:py:class:`monai_dae.handlers.SetEpochHandler`).

    Args:
        rec_a_weight: weight of view A's reconstruction (10).
        rec_b_weight: weight of view B's reconstruction (1).
        contrast_weight: weight of the contrast once it is on (1).
        contrast_start_epoch: the contrast counts from the epoch after this one (1-based epochs; 0: from the start).
        temperature: temperature of the contrast (1.0).
    """

    def __init__(
        self,
        rec_a_weight: float = 10.0,
        rec_b_weight: float = 1.0,
        contrast_weight: float = 1.0,
        contrast_start_epoch: int = 0,
        temperature: float = 1.0,
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"the contrast temperature must be positive, got {temperature}.")
        super().__init__({"rec_a": rec_a_weight, "rec_b": rec_b_weight, "contrast": contrast_weight})
        self.contrast_weight = float(contrast_weight)
        self.contrast_start_epoch = int(contrast_start_epoch)
        self.temperature = float(temperature)
        self.set_epoch(1)

    def set_epoch(self, epoch: int) -> None:
        """
        Args:
            epoch: the epoch that starts (1-based, as Ignite counts); the contrast counts after ``contrast_start_epoch``.
        """
        self.weights["contrast"] = self.contrast_weight if epoch > self.contrast_start_epoch else 0.0

    def terms(self, prediction: Mapping[str, torch.Tensor], target: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            prediction: the network's output dictionary.
            target: modality m (B, 1, *spatial).

        Returns:
            ``{"rec_a", "rec_b", "contrast"}``.
        """
        target = target.float()
        return {
            "rec_a": F.mse_loss(prediction["reconstruction_a"].float(), target),
            "rec_b": F.mse_loss(prediction["reconstruction_b"].float(), target),
            "contrast": symmetric_info_nce(prediction["embedding_a"], prediction["embedding_b"], self.temperature),
        }
