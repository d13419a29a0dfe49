"""The VoCo pretraining network: the pretext backbone's encoder path, a multi-scale projector and an EMA teacher."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn as nn

from monai_dae.networks.backbone import PretextSwinUNETR

__all__ = ["VoCoProjector", "VoCoSwinUNETR"]


class VoCoProjector(nn.Sequential):
    """
    VoCo's projector: Linear(in, hidden), BatchNorm (no affine, batch statistics only), ReLU, Linear(hidden,
    hidden), BatchNorm, ReLU, Linear(hidden, out); 1152 -> 2048 -> 2048 -> 2048 at feature size 48.

    Args:
        in_features: channels of the pooled multi-scale features (24 x feature size).
        hidden_features: width of the hidden layers.
        out_features: size of the embedding.
    """

    def __init__(self, in_features: int, hidden_features: int = 2048, out_features: int = 2048) -> None:
        super().__init__(
            nn.Linear(in_features, hidden_features),
            nn.BatchNorm1d(hidden_features, affine=False, track_running_stats=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_features, hidden_features),
            nn.BatchNorm1d(hidden_features, affine=False, track_running_stats=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_features, out_features),
        )


class VoCoSwinUNETR(PretextSwinUNETR):
    """
    Swin UNETR encoder for VoCo pretraining: the features ``enc0``, ``enc1``, ``enc2``, ``enc3`` of
    :py:class:`monai_dae.networks.PretextSwinUNETR` and ``encoder10(bottleneck)`` are globally average-pooled and
    concatenated (F + F + 2F + 4F + 16F = 24F channels, 1152 at F = 48) and projected by
    :py:class:`VoCoProjector`. The decoder is not built: VoCo trains the encoder, and fine-tuning initialises
    its decoder anew.

    With ``teacher_momentum`` (0.9 in the released code) the network holds an EMA teacher, a copy of itself
    without gradients: in training mode every forward first updates the teacher
    (``teacher = m * teacher + (1 - m) * student``, the released code's order) and returns the embeddings of both.
    Its weights are under ``teacher.*``, a prefix the weight loader drops like the projector's.

    ``forward(crops)`` returns ``{"student": (N, out), "teacher": (N, out)}`` in training with a teacher, else
    ``{"student": (N, out)}``.

    Args:
        in_channels: input channels.
        feature_size: SwinUNETR feature size (48 in the paper).
        depths: Swin blocks per stage.
        num_heads: attention heads per stage.
        window_size: attention window size.
        dropout_path_rate: stochastic depth rate.
        normalize: layer-normalise the hidden states passed to the encoder blocks.
        use_checkpoint: gradient checkpointing, to save memory.
        use_v2: SwinUNETR v2 (the released code's choice; fine-tuning then needs ``use_v2`` too).
        spatial_dims: 3.
        stem: "patch" or "conv" (see :py:class:`monai_dae.networks.PretextSwinUNETR`).
        downsample: SwinUNETR's patch merging (see :py:class:`monai_dae.networks.PretextSwinUNETR`).
        projection_dim: size of the embedding (2048).
        hidden_dim: width of the projector's hidden layers (2048).
        teacher_momentum: EMA momentum of the teacher; None trains without a teacher (the paper's form).
        out_channels: unused (the decoder is not built); accepted so that the base config's network_def applies.
        embedding_transform: a module applied to the patch embedding; None (VoCo has none).
    """

    decoder_modules: tuple[str, ...] = ("decoder5", "decoder4", "decoder3", "decoder2", "decoder1", "out")
    """SwinUNETR modules that VoCo does not use (and does not build)."""

    def __init__(
        self,
        in_channels: int = 1,
        feature_size: int = 48,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        dropout_path_rate: float = 0.0,
        normalize: bool = True,
        use_checkpoint: bool = False,
        use_v2: bool = False,
        spatial_dims: int = 3,
        stem: str = "patch",
        downsample: str | type[nn.Module] = "merging",
        projection_dim: int | None = 2048,
        hidden_dim: int = 2048,
        teacher_momentum: float | None = 0.9,
        out_channels: int = 1,
        embedding_transform: nn.Module | None = None,
    ) -> None:
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            feature_size=feature_size,
            depths=depths,
            num_heads=num_heads,
            window_size=window_size,
            dropout_path_rate=dropout_path_rate,
            normalize=normalize,
            use_checkpoint=use_checkpoint,
            use_v2=use_v2,
            spatial_dims=spatial_dims,
            stem=stem,
            downsample=downsample,
            embedding_transform=embedding_transform,
        )
        for name in self.decoder_modules:
            delattr(self, name)
        if teacher_momentum is not None and not 0.0 <= teacher_momentum < 1.0:
            raise ValueError(f"teacher_momentum must be in [0, 1) or None, got {teacher_momentum}.")
        self.projection_head = VoCoProjector(24 * feature_size, hidden_dim, projection_dim or 2048)
        self.teacher_momentum = teacher_momentum
        self.teacher: VoCoSwinUNETR | None = None
        if teacher_momentum is not None:
            teacher = copy.deepcopy(self)
            teacher.requires_grad_(False)
            self.teacher = teacher

    def pooled_features(self, x_in: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x_in: crops (N, C, *spatial), spatial sizes divisible by 32.

        Returns:
            the concatenated global averages of ``enc0..enc3`` and ``encoder10(bottleneck)``, (N, 24 F).
        """
        features = self.features(x_in)
        maps = [features[name] for name in ("enc0", "enc1", "enc2", "enc3")]
        maps.append(self.encoder10(features["bottleneck"]))
        return torch.cat([m.flatten(2).mean(dim=2) for m in maps], dim=1)

    def decode(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        raise RuntimeError("VoCoSwinUNETR has no decoder: VoCo pretrains the encoder.")

    @torch.no_grad()
    def update_teacher(self) -> None:
        """Move the teacher's parameters towards the student's: ``t = m * t + (1 - m) * s``."""
        if self.teacher is None:
            raise RuntimeError("this network has no teacher: build it with teacher_momentum.")
        student = dict(self.named_parameters())
        for name, param in self.teacher.named_parameters():
            param.mul_(self.teacher_momentum).add_(student[name].detach(), alpha=1.0 - self.teacher_momentum)

    def embed_crops(self, x_in: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x_in: crops (N, C, *spatial).

        Returns:
            the projected embeddings (N, ``projection_dim``).
        """
        return self.projection_head(self.pooled_features(x_in))

    def forward(self, x_in: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """
        Args:
            x_in: crops (N, C, *spatial), spatial sizes divisible by 32.

        Returns:
            ``{"student": embeddings}``, plus ``"teacher"`` (no gradient) in training mode with a teacher.
        """
        output = {"student": self.embed_crops(x_in)}
        if self.training and self.teacher is not None:
            self.update_teacher()
            with torch.no_grad():
                output["teacher"] = self.teacher.embed_crops(x_in).detach()
        return output

