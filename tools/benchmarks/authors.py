"""
The baseline of the ``train_step`` section: the authors' training step (DAE/Pretrain_full_contrast,
``main_runner.py`` + ``models/simmim_advanced.py`` of Project-MONAI/research-contributions), re-implemented here
for timing only. It is NOT part of the package.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import SwinUNETR

from monai_dae.weights import with_stem
from tools.benchmarks.common import MODALITIES

__all__ = [
    "AUTHORS_CLASS_RANK",
    "AuthorsStep",
    "AuthorsStyleNetwork",
    "authors_mask_generator",
    "authors_style_batch",
    "authors_style_step",
]

AUTHORS_CLASS_RANK = {"ct": 0, "t1": 1, "t1ce": 2, "t2": 3, "flair": 4}


def authors_mask_generator(input_size: int, mask_patch_size: int = 16, model_patch_size: int = 2,
                           mask_ratio: float = 0.6) -> np.ndarray:
    """
    The SimMIM token mask the authors' data loader returns with every sample (``MaskGenerator``): int64 on the
    host, one value per patch-embedding token. It is unused by the "all" loss but copied to the device and
    upsampled in every forward pass, so it is part of their step.

    Args:
        input_size: crop size (96).
        mask_patch_size: size of a masked block in voxels.
        model_patch_size: patch size of the network.
        mask_ratio: fraction of masked blocks.

    Returns:
        the mask, shaped (input_size / model_patch_size,) * 3.
    """
    rand_size = input_size // mask_patch_size
    scale = mask_patch_size // model_patch_size
    token_count = rand_size**3
    mask_idx = np.random.permutation(token_count)[: int(np.ceil(token_count * mask_ratio))]
    mask = np.zeros(token_count, dtype=int)
    mask[mask_idx] = 1
    mask = mask.reshape((rand_size,) * 3)
    return mask.repeat(scale, axis=0).repeat(scale, axis=1).repeat(scale, axis=2)


class AuthorsStyleNetwork(nn.Module):
    """
    The authors' pretraining model (``SimMIMSkip`` with ``choice="all"``, ``loss_type="all_img"``) on MONAI's
    Swin UNETR trunk: no LayerNorm on the hidden states; their local masking right after the patch embedding
    (one channel subset per batch from Python's unseeded ``random``, the mask built as a full-size float32
    tensor on the host and copied, as their ``torch.ones(x.shape).cuda()``); the loader's SimMIM mask upsampled
    every forward; L1 over the whole image; and their CMCL: raw dot products of the flattened stage-4 features
    multiplied by ``exp(temperature)``, symmetric cross-entropy against each sample's modality rank in the batch.
    Forward returns ``(loss_recon, loss_cont)`` as theirs does.

    Args:
        feature_size: Swin UNETR feature size.
        mask_ratio: local masking ratio (0.6).
        temperature: their CMCL "temperature" (0.5 in their README command).
        stem: "patch" (MONAI's patchify conv, the same network as ours: the ratio then measures the training
            step, not the architecture) or "conv" (the authors' conv stem, slightly more FLOPs).
    """

    def __init__(self, feature_size: int = 48, mask_ratio: float = 0.6, temperature: float = 0.5,
                 stem: str = "patch") -> None:
        super().__init__()
        self.net = SwinUNETR(in_channels=1, out_channels=1, feature_size=feature_size, normalize=False)
        with_stem(self.net, stem)
        self.mask_ratio = mask_ratio
        self.temp = temperature
        self.patch_size = (2, 2, 2)
        self.net.swinViT.patch_embed.register_forward_hook(self._authors_local_masking)

    def _authors_local_masking(self, module: nn.Module, args: tuple, x: torch.Tensor) -> torch.Tensor:
        rand_choice = random.sample(range(0, x.shape[1]), int(self.mask_ratio * x.shape[1]))
        mask = torch.ones(x.shape).to(x.device)
        mask[:, rand_choice, :, :, :] = 0
        return x * mask

    def forward(self, x: torch.Tensor, mask: torch.Tensor, x_org: torch.Tensor, cl_type: Sequence[str]):
        n = self.net
        hidden_states_out = n.swinViT(x, n.normalize)
        mask = (
            mask.repeat_interleave(self.patch_size[0], 1)
            .repeat_interleave(self.patch_size[1], 2)
            .repeat_interleave(self.patch_size[2], 3)
            .unsqueeze(1)
            .contiguous()
        )
        enc0 = n.encoder1(x)
        enc1 = n.encoder2(hidden_states_out[0])
        enc2 = n.encoder3(hidden_states_out[1])
        enc3 = n.encoder4(hidden_states_out[2])
        dec4 = n.encoder10(hidden_states_out[4])
        dec3 = n.decoder5(dec4, hidden_states_out[3])
        dec2 = n.decoder4(dec3, enc3)
        dec1 = n.decoder3(dec2, enc2)
        dec0 = n.decoder2(dec1, enc1)
        x_rec = n.out(n.decoder1(dec0, enc0))
        # their CMCL
        mask_tmp = [AUTHORS_CLASS_RANK[c] for c in cl_type]
        _, b = np.unique(np.array(mask_tmp), return_inverse=True)
        label_tmp = torch.tensor(b).to(x.device)
        bsz = hidden_states_out[4].shape[0]
        flat = hidden_states_out[4].reshape(bsz, -1)
        logits_con = torch.einsum("i d, j d -> i j", flat, flat) * torch.exp(torch.tensor(self.temp))
        loss_cont = (F.cross_entropy(logits_con, label_tmp) + F.cross_entropy(logits_con.T, label_tmp)) / 2
        loss_recon = F.l1_loss(x_org, x_rec, reduction="mean")
        return loss_recon, loss_cont


def authors_style_batch(batch_size: int, roi: int, seed: int = 0) -> dict[str, Any]:
    """
    A clean host batch as the authors' loader yields it: image, modality class names, SimMIM token mask.

    Args:
        batch_size: samples.
        roi: crop size.
        seed: seed of the image values.

    Returns:
        ``{"image": (B, 1, roi, roi, roi) float32, "class": [names], "mask": (B, roi/2, roi/2, roi/2) int64}``.
    """
    g = torch.Generator().manual_seed(seed)
    image = torch.rand((batch_size, 1, roi, roi, roi), generator=g)
    mask = torch.as_tensor(np.stack([authors_mask_generator(roi) for _ in range(batch_size)]))
    if torch.cuda.is_available():
        image, mask = image.pin_memory(), mask.pin_memory()
    return {"image": image, "class": [MODALITIES[i % len(MODALITIES)] for i in range(batch_size)], "mask": mask}


def authors_style_step(model: AuthorsStyleNetwork, optimizer: torch.optim.Optimizer, batch: dict[str, Any],
                       device: torch.device, variance: float = 0.1, interpolate: float = 4, mm_con: float = 0.03,
                       clip_grad: float = 1.0) -> float:
    """
    One iteration of the authors' ``train_one_epoch`` with ``choice="all"`` and ``amp_opt_level="O0"`` (fp32):
    noise drawn on the host and copied, nearest down- and upsampling on the device, forward with their local
    masking and CMCL, backward, gradient clipping at 1.0, plain AdamW, ``torch.cuda.synchronize()`` and the
    ``.item()`` calls of their meters. DDP (one process here) and the per-iteration LR update are left out.

    Args:
        model: an :py:class:`AuthorsStyleNetwork` on ``device``.
        optimizer: ``torch.optim.AdamW`` over its parameters.
        batch: a batch from :py:func:`authors_style_batch`.
        device: the training device.
        variance: noise variance.
        interpolate: downsampling factor.
        mm_con: CMCL weight (0.03 in their README command).
        clip_grad: gradient clipping norm (their default 1).

    Returns:
        the loss value.
    """
    cl_type = batch["class"]
    img = batch["image"].to(device, non_blocking=True)
    B, C, H, W, Z = img.shape
    noise = (variance**0.5) * torch.randn(B, C, H, W, Z).to(device)
    img_noisy = img + noise
    mask = batch["mask"].to(device, non_blocking=True)
    img_lowres = F.interpolate(img_noisy, size=(int(H / interpolate), int(W / interpolate), int(Z / interpolate)))
    img_resam = F.interpolate(img_lowres, size=(H, W, Z))
    loss1, loss2 = model(img_resam, mask, img, cl_type)
    loss2 = mm_con * loss2
    loss = loss1 + loss2
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    loss1.item(), loss2.item()
    return loss.item()


class AuthorsStep:
    """The baseline as a callable: model, AdamW (lr 1e-4, weight decay 0.05, their README) and a host batch."""

    def __init__(self, feature_size: int, batch_size: int, roi: int, device: torch.device, stem: str = "patch"):
        self.device = device
        self.model = AuthorsStyleNetwork(feature_size, stem=stem).to(device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.05)
        self.batch = authors_style_batch(batch_size, roi)

    def __call__(self) -> None:
        authors_style_step(self.model, self.optimizer, self.batch, self.device)
