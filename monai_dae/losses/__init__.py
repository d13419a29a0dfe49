"""Losses of the DAE pretext."""

from monai_dae.losses.contrastive import CrossModalContrastiveLoss, DAELoss, gather_with_grad
