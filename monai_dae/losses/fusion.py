"""The Volume Fusion loss: Dice and cross-entropy on the 5 fusion classes."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.losses import DiceLoss

from monai_dae.losses.pretext import PretextLoss

__all__ = ["VolumeFusionLoss"]


class VolumeFusionLoss(PretextLoss):
    """
    Loss of the Volume Fusion pretext (MIS-FM): ``dice_weight`` * soft Dice + ``ce_weight`` * cross-entropy between
    the network's class logits and the fusion classes, with the named terms ``dice`` and ``ce`` (0.5 each in
    the paper, i.e. MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.5, lambda_ce=0.5)``).

    Args:
        dice_weight: weight of the Dice term.
        ce_weight: weight of the cross-entropy term.
    """

    def __init__(self, dice_weight: float = 0.5, ce_weight: float = 0.5) -> None:
        super().__init__(weights={"dice": dice_weight, "ce": ce_weight})
        self.dice = DiceLoss(to_onehot_y=True, softmax=True)
        self.cross_entropy = nn.CrossEntropyLoss()

    def terms(self, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            prediction: class logits (B, classes, *spatial).
            target: fusion classes (B, 1, *spatial), integer.

        Returns:
            ``{"dice": ..., "ce": ...}``.
        """
        logits = prediction.float()
        return {"dice": self.dice(logits, target), "ce": self.cross_entropy(logits, target[:, 0].long())}
