"""The VoCo loss: overlap prediction between random and base crops, and a regulariser keeping base crops apart."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from monai_dae.losses.pretext import PretextLoss

__all__ = ["VoCoLoss", "overlap_logits", "overlap_prediction_error"]

_EPS = 1e-6


def _split(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (B * (K + R), D) in the order of :py:class:`monai_dae.transforms.RandVoCoCrops` -> bases (B, K, D),
    random crops (B, R, D)."""
    batch, crops, bases = labels.shape
    if embeddings.ndim != 2 or embeddings.shape[0] != batch * (bases + crops):
        raise ValueError(f"VoCo: {embeddings.shape[0]} embeddings for {batch} volumes of {bases} base and {crops} "
                         f"random crops (labels {tuple(labels.shape)}); expected {batch * (bases + crops)}.")
    grouped = embeddings.float().reshape(batch, bases + crops, -1)
    return grouped[:, :bases], grouped[:, bases:]


def overlap_logits(crops: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
    """
    Args:
        crops: random-crop embeddings (B, R, D).
        bases: base-crop embeddings (B, K, D).

    Returns:
        ``relu(cos(crop, base))`` for every pair, (B, R, K), in [0, 1] like the overlap labels.
    """
    return F.relu(F.cosine_similarity(crops.unsqueeze(2), bases.unsqueeze(1), dim=-1))


def overlap_prediction_error(prediction: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """
    The validation metric of VoCo: the mean absolute difference between the student's overlap logits and the
    overlap labels.

    Args:
        prediction: the network output (``{"student": (B * (K + R), D), ...}``).
        labels: the overlap labels (B, R, K).

    Returns:
        a scalar in [0, 1]; 0 is a perfect prediction of every overlap.
    """
    bases, crops = _split(prediction["student"].detach(), labels)
    return (overlap_logits(crops, bases) - labels.float()).abs().mean()


class VoCoLoss(PretextLoss):
    """
    The VoCo loss on the output of :py:class:`monai_dae.networks.VoCoSwinUNETR` and the overlap labels y (B, R, K)
    of :py:class:`monai_dae.transforms.RandVoCoCrops`. Logits are ``relu(cos(p, q_k))`` between a random crop's
    embedding p and each base crop's embedding q_k.

    ``form="released"`` (Luffy03/VoCo, with the network's EMA teacher): the logits are the mean of (student crops,
    teacher bases) and (teacher crops, student bases); per volume, ``pos = -sum(y * log(1 - |y - logit|)) / sum(y)``
    over the overlapping bases, ``neg = mean(logit^2)`` over the bases with y = 0, and ``reg`` the mean over base
    pairs i < j of ``relu(cos(q_i, stopgrad(q_j)))^2`` on the student's bases; total pos + neg + reg. Without a
    teacher in the output (evaluation mode, or a network without one) the student plays both parts.

    ``form="paper"``: logits against stop-gradient student bases, ``pred = -mean_k log(1 - |y_k - logit_k|)`` and
    ``reg`` the mean over base pairs i != j of ``|cos(q_i, q_j)|``; total pred + reg.

    Named terms: ``pos``, ``neg``, ``reg`` (released) or ``pred``, ``reg`` (paper).

    Args:
        form: "released" or "paper".
        weights: weight of each term in the total (1 each).
    """

    forms = ("released", "paper")

    def __init__(self, form: str = "released", weights: Mapping[str, float] | None = None) -> None:
        if form not in self.forms:
            raise ValueError(f"VoCoLoss form must be one of {self.forms}, got '{form}'.")
        super().__init__(weights)
        self.form = form

    def terms(self, prediction: Mapping[str, torch.Tensor], target: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            prediction: ``{"student": (B * (K + R), D)}``, with ``"teacher"`` from a network with an EMA teacher.
            target: the overlap labels (B, R, K).

        Returns:
            the named terms (see the class description).
        """
        labels = target.float()
        bases, crops = _split(prediction["student"], labels)
        if self.form == "paper":
            logits = overlap_logits(crops, bases.detach())
            pred = -torch.log(1 - (labels - logits).abs() + _EPS).mean()
            similarity = F.cosine_similarity(bases.unsqueeze(2), bases.unsqueeze(1), dim=-1).abs()
            off_diagonal = ~torch.eye(bases.shape[1], dtype=torch.bool, device=bases.device)
            return {"pred": pred, "reg": similarity[:, off_diagonal].mean()}
        if "teacher" in prediction:
            teacher_bases, teacher_crops = _split(prediction["teacher"].detach(), labels)
        else:
            teacher_bases, teacher_crops = bases.detach(), crops.detach()
        logits = 0.5 * (overlap_logits(crops, teacher_bases) + overlap_logits(teacher_crops, bases))
        positive = -(labels * torch.log(1 - (labels - logits).abs() + _EPS)).sum(dim=(1, 2))
        positive = positive / (labels.sum(dim=(1, 2)) + _EPS)
        empty = (labels == 0).float()
        negative = (empty * logits**2).sum(dim=(1, 2)) / (empty.sum(dim=(1, 2)) + _EPS)
        similarity = F.relu(F.cosine_similarity(bases.unsqueeze(2), bases.detach().unsqueeze(1), dim=-1)) ** 2
        upper = torch.triu(torch.ones(bases.shape[1], bases.shape[1], dtype=torch.bool, device=bases.device), 1)
        return {"pos": positive.mean(), "neg": negative.mean(), "reg": similarity[:, upper].mean()}
