"""The DAE pretraining network: the pretext backbone with local masking of the patch embedding and a projection head."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn

from monai_dae.networks.backbone import PretextSwinUNETR
from monai_dae.transforms.array import LocalMasking

__all__ = ["DAESwinUNETR", "PatchEmbeddingMasking"]


class PatchEmbeddingMasking(nn.Module):
    """
    DAE's local masking as a module to insert after the patch embedding (``embedding_transform`` of
    :py:class:`monai_dae.networks.PretextSwinUNETR`): it applies :py:class:`monai_dae.transforms.LocalMasking`
    in training mode, and in evaluation mode only with ``in_eval`` (the authors' behaviour). Seed it with
    ``set_random_state`` like a transform (e.g. from :py:class:`monai_dae.handlers.SetRandomStateHandler`).

    Args:
        ratio: fraction of the embedding channels to zero (0.6 in the paper, 0 disables the masking).
        per_sample: a fresh channel subset per sample (False: one per batch, as the authors).
        in_eval: mask in evaluation mode too.
    """

    def __init__(self, ratio: float = 0.6, per_sample: bool = True, in_eval: bool = False) -> None:
        super().__init__()
        self.masking = LocalMasking(ratio, per_sample=per_sample)
        self.in_eval = in_eval

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> PatchEmbeddingMasking:
        """
        Args:
            seed: seed of the channel draws.
            state: a random state to use instead.

        Returns:
            this module.
        """
        self.masking.set_random_state(seed, state)
        return self

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """
        Args:
            embedding: the patch embedding (B, F, *spatial).

        Returns:
            the masked embedding (or the input, in evaluation mode without ``in_eval``).
        """
        return self.masking(embedding) if self.training or self.in_eval else embedding

    def extra_repr(self) -> str:
        return f"ratio={self.masking.ratio}, per_sample={self.masking.per_sample}, in_eval={self.in_eval}"


class DAESwinUNETR(PretextSwinUNETR):
    """
    Swin UNETR for Disruptive Autoencoder pretraining: :py:class:`monai_dae.networks.PretextSwinUNETR` with

    - local masking of the patch embedding (:py:class:`PatchEmbeddingMasking`): a fraction of the embedding
      channels is zeroed at every position; the masked embedding feeds stage 1 of the Swin encoder and the
      first skip connection;
    - a reconstruction output of ``out_channels`` (1) channels, without activation;
    - a projection head on the globally pooled bottleneck features, for the cross-modal contrastive loss.

    ``forward(x)`` returns the reconstruction; ``forward(x, return_embedding=True)`` returns
    ``(reconstruction, embedding)``.

    Args:
        in_channels: input channels.
        out_channels: reconstruction channels.
        feature_size: SwinUNETR feature size (48 in the paper).
        depths: Swin blocks per stage.
        num_heads: attention heads per stage.
        window_size: attention window size.
        dropout_path_rate: stochastic depth rate.
        normalize: layer-normalise the hidden states passed to the decoder (the authors skip it in pretraining).
        use_checkpoint: gradient checkpointing, to save memory.
        use_v2: SwinUNETR v2 (residual conv block before each stage).
        spatial_dims: 2 or 3.
        mask_ratio: local masking ratio (0.6 in the paper, 0 disables it).
        mask_per_sample: a fresh channel subset per sample (False: one per batch, as the authors).
        mask_in_eval: mask in evaluation mode too (the authors' behaviour).
        projection_dim: output size of the projection head.
        stem: "patch" (MONAI's patchify conv) or "conv" (the authors' conv stem).
        downsample: SwinUNETR's patch merging (see :py:class:`monai_dae.networks.PretextSwinUNETR`).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        feature_size: int = 48,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        dropout_path_rate: float = 0.0,
        normalize: bool = True,
        use_checkpoint: bool = False,
        use_v2: bool = False,
        spatial_dims: int = 3,
        mask_ratio: float = 0.6,
        mask_per_sample: bool = True,
        mask_in_eval: bool = False,
        projection_dim: int = 128,
        stem: str = "patch",
        downsample: str | type[nn.Module] = "merging",
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
            embedding_transform=PatchEmbeddingMasking(mask_ratio, mask_per_sample, mask_in_eval),
            projection_dim=projection_dim,
        )
