"""Cross-modal contrastive loss (CMCL) and the DAE loss (L1 reconstruction + CMCL)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from monai_dae.losses.pretext import PretextLoss
from monai_dae.utils import distributed_world_size

__all__ = ["CrossModalContrastiveLoss", "DAELoss", "gather_with_grad"]


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gradients of every rank and returns this rank's slice (exact)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.size, ctx.rows = dist.get_rank(), dist.get_world_size(), tensor.shape[0]
        gathered = [torch.empty_like(tensor) for _ in range(ctx.size)]
        dist.all_gather(gathered, tensor.contiguous())
        return torch.cat(gathered, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """
    Concatenate ``tensor`` from all ranks along dim 0 (rank order); gradients flow back to every rank's input.
    Identity when torch.distributed is not initialised or has one rank. Every rank must pass the same shape.
    A tensor without gradients (integer labels) is gathered the same way, with nothing recorded for autograd.

    Args:
        tensor: local tensor (N, ...).

    Returns:
        the gathered tensor (world_size * N, ...).
    """
    if distributed_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


class CrossModalContrastiveLoss(_Loss):
    """
    Cross-modal contrastive loss of DAE: a supervised contrastive loss (Khosla et al., 2020) in which samples of
    the same modality are positives and samples of other modalities negatives.

    Features are L2-normalised and compared by cosine similarity divided by ``temperature``. For every anchor i
    with at least one positive and one negative in the batch::

        l_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip) / sum_{a != i} exp(s_ia) )

    and the loss is the mean of ``l_i`` over those anchors. It depends only on the set of (feature, label)
    pairs, not on their order. When no anchor has both a positive and a negative (the batch holds one modality
    only, or every sample has a different modality) the loss is defined as **0**, with a gradient of zero that
    keeps every parameter in the graph (DDP needs that).

    The similarities are computed in float32 whatever the autocast dtype, so the loss is finite and matches
    the fp32 value under bf16 and fp16 autocast. Under ``torch.distributed`` the features and labels of all
    ranks are gathered (gradients flow back to every rank), so each step sees the negatives of the global batch.

    This replaces the authors' formulation (raw dot products multiplied by exp(temperature) and targets equal
    to each sample's rank in the batch), which depends on batch order and overflows in fp16.

    Args:
        temperature: softmax temperature (0.07 in the paper).
        gather_distributed: gather features from all ranks when torch.distributed is initialised.
    """

    def __init__(self, temperature: float = 0.07, gather_distributed: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.temperature = float(temperature)
        self.gather_distributed = gather_distributed

    def forward(self, features: torch.Tensor, modality_labels: torch.Tensor) -> torch.Tensor:
        """
        Args:
            features: (B, D) embeddings, any float dtype.
            modality_labels: (B,) integer modality labels.

        Returns:
            the scalar loss, float32.
        """
        if features.ndim != 2 or modality_labels.reshape(-1).shape[0] != features.shape[0]:
            raise ValueError(
                f"expected features (B, D) and labels (B,), got {tuple(features.shape)} and {tuple(modality_labels.shape)}."
            )
        labels = modality_labels.reshape(-1).to(features.device)
        if self.gather_distributed:
            features, labels = gather_with_grad(features), gather_with_grad(labels)
        with torch.autocast(device_type=features.device.type, enabled=False):
            z = features.float()
            # rescale each row by its largest magnitude first (the direction is unchanged, and so is the
            # gradient): the squared norm of rows above ~1e19 would overflow float32 and zero the features
            z = F.normalize(z / z.detach().abs().amax(dim=1, keepdim=True).clamp(min=1e-30), dim=1)
            logits = z @ z.t() / self.temperature
            eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
            same = labels[:, None] == labels[None, :]
            positives = same & ~eye
            negatives = ~same
            log_prob = logits - torch.logsumexp(logits.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
            num_pos = positives.sum(1)
            valid = (num_pos > 0) & negatives.any(1)
            mean_log_prob_pos = (log_prob * positives).sum(1) / num_pos.clamp(min=1)
            if not valid.any():
                return logits.sum() * 0.0
            return -mean_log_prob_pos[valid].mean()


class DAELoss(PretextLoss):
    """
    Total DAE loss: L1 reconstruction + ``cmcl_weight`` * cross-modal contrastive loss, with the named terms
    ``l1`` and ``cmcl`` (see :py:class:`monai_dae.losses.PretextLoss`).

    Called as ``loss((reconstruction, embedding), (clean_image, modality_labels))``, the shapes produced by
    :py:class:`monai_dae.engines.PretextPrepareBatch` (target keys ``image`` and ``modality_label``) and
    ``DAESwinUNETR(x, return_embedding=True)``.

    Args:
        cmcl_weight: weight of the contrastive term (0.05 in the paper; 0 disables it).
        temperature: temperature of the contrastive term.
        gather_distributed: gather contrastive features across ranks.
    """

    def __init__(self, cmcl_weight: float = 0.05, temperature: float = 0.07, gather_distributed: bool = True) -> None:
        super().__init__(weights={"l1": 1.0, "cmcl": cmcl_weight})
        self.reconstruction = nn.L1Loss()
        self.contrastive = CrossModalContrastiveLoss(temperature, gather_distributed)

    @property
    def cmcl_weight(self) -> float:
        """The weight of the contrastive term, as the total uses it."""
        return self.weights["cmcl"]

    def terms(self, prediction, target) -> dict[str, torch.Tensor]:
        """
        Args:
            prediction: (reconstruction (B, C, *spatial), embedding (B, D)).
            target: (clean image (B, C, *spatial), modality labels (B,)).

        Returns:
            ``{"l1": ..., "cmcl": ...}``.
        """
        reconstruction, embedding = prediction
        clean, modality_labels = target
        return {
            "l1": self.reconstruction(reconstruction.float(), clean.float()),
            "cmcl": self.contrastive(embedding, modality_labels),
        }
