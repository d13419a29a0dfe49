"""
This project's training step, the one the benchmark measures against the baseline: DAESwinUNETR + DAELoss +
batched RandDAEDisruption in PretextPrepareBatch (the dae_pretrain bundle's SupervisedTrainer iteration), with the
speed levers as options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from monai.transforms import CopyItemsd

from monai_dae.engines import PretextPrepareBatch
from monai_dae.losses import DAELoss
from monai_dae.networks import DAESwinUNETR
from monai_dae.transforms import RandDAEDisruptiond
from tools.benchmarks.common import MODALITIES

__all__ = ["Levers", "OursStep"]


def dae_prepare_batch(disruption: RandDAEDisruptiond) -> PretextPrepareBatch:
    """The training ``prepare_batch`` of the ``dae.json`` overlay: keep the clean image, disrupt a copy on the device."""
    return PretextPrepareBatch([CopyItemsd(keys="image", names="disrupted"), disruption], input_key="disrupted",
                               target_keys=["image", "modality_label"], network_kwargs={"return_embedding": True})


@dataclass(frozen=True)
class Levers:
    """
    Speed levers of this project's training step.

    Args:
        bf16: bf16 autocast (the CMCL is computed in float32 inside, so it stays finite).
        fused: ``torch.optim.AdamW(fused=True)``.
        channels_last: network weights and input in ``torch.channels_last_3d``.
        compile: ``torch.compile`` of the network.
        checkpoint: gradient checkpointing of the Swin stages (a memory option, slower).
    """

    bf16: bool = False
    fused: bool = False
    channels_last: bool = False
    compile: bool = False
    checkpoint: bool = False


class OursStep:
    """
    One iteration of the ``dae_pretrain`` bundle's trainer: ``PretextPrepareBatch`` moves the clean batch to the
    device and disrupts it there as a batch, then forward (``return_embedding=True``) under optional autocast,
    ``DAELoss`` (L1 + 0.05 * supervised CMCL), backward, AdamW (lr 4e-4, weight decay 1e-5, bundle values), and
    one ``loss.item()`` as the trainer's StatsHandler does every iteration.

    Args:
        feature_size: Swin UNETR feature size.
        batch_size: samples per step.
        roi: crop size.
        device: training device.
        levers: speed options.
        downsample_mode: interpolation of the low-resolution disruption (bundle default "nearest").
    """

    def __init__(self, feature_size: int, batch_size: int, roi: int, device: torch.device, levers: Levers,
                 downsample_mode: str = "nearest") -> None:
        self.device = device
        self.levers = levers
        net = DAESwinUNETR(feature_size=feature_size, use_checkpoint=levers.checkpoint).to(device).train()
        self.to_kwargs: dict[str, Any] = {}
        if levers.channels_last:
            net = net.to(memory_format=torch.channels_last_3d)
            self.to_kwargs = {"memory_format": torch.channels_last_3d}
        self.network = net
        self.forward = torch.compile(net) if levers.compile else net
        self.loss = DAELoss(cmcl_weight=0.05, temperature=0.07)
        self.optimizer = torch.optim.AdamW(net.parameters(), lr=4e-4, weight_decay=1e-5,
                                           **({"fused": True} if levers.fused else {}))
        disruption = RandDAEDisruptiond(keys="disrupted", noise_variance=0.1, downsample_factor=4,
                                        downsample_mode=downsample_mode, upsample_mode=downsample_mode, batched=True)
        disruption.set_random_state(0)
        self.prepare_batch = dae_prepare_batch(disruption)
        g = torch.Generator().manual_seed(0)
        image = torch.rand((batch_size, 1, roi, roi, roi), generator=g)
        labels = torch.arange(batch_size) % len(MODALITIES)
        if device.type == "cuda":
            image = image.pin_memory()
        self.batch = {"image": image, "modality_label": labels}
        self.amp_dtype = torch.bfloat16

    def step(self, batchdata: dict[str, torch.Tensor]) -> float:
        """
        Args:
            batchdata: a collated host batch with ``image`` and ``modality_label``.

        Returns:
            the loss value.
        """
        inputs, targets, args, kwargs = self.prepare_batch(batchdata, self.device, non_blocking=True,
                                                           **self.to_kwargs)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.levers.bf16):
            prediction = self.forward(inputs, *args, **kwargs)
            loss = self.loss(prediction, targets)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def __call__(self) -> None:
        self.step(self.batch)
