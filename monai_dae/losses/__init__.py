"""Losses of the pretext tasks: each returns its weighted total and keeps its named terms."""

from monai_dae.losses.brainmvp import BrainMVPLoss, symmetric_info_nce
from monai_dae.losses.contrastive import CrossModalContrastiveLoss, DAELoss, gather_with_grad
from monai_dae.losses.pretext import PretextLoss
from monai_dae.losses.voco import VoCoLoss, overlap_prediction_error
