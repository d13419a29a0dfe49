"""The BrainMVP pretraining network: learnable modality templates, the two masked views and a skip-free decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from monai_dae.networks.backbone import PretextSwinUNETR

__all__ = ["BrainMVPSwinUNETR"]


class BrainMVPSwinUNETR(PretextSwinUNETR):
    """
    Swin UNETR for BrainMVP pretraining. It holds one learnable template per modality (``templates``, zeros at
    first as in the released code, min-max normalised when read) and builds the two views of a batch itself,
    so that the reconstruction loss reaches the templates:

    - view A: modality m with its masked voxels replaced by the aligned window of m's template;
    - view B: given (modality m with its masked blocks filled by another modality of the study,
      :py:class:`monai_dae.transforms.RandModalityBlockMaskd`).

    Both views go through the encoder and a skip-free decoder in one batch of 2B: SwinUNETR's decoder blocks
    receive zeros instead of the skip features (the released code's decoders have no skips; a skip from the
    input would let the reconstruction copy the unmasked voxels). The skip encoders ``encoder1..encoder4`` are
    therefore not built; fine-tuning initialises them anew. The embeddings of the contrastive term are the
    globally pooled bottlenecks (16 F channels), projected when ``projection_dim`` is given.

    ``forward(image, mask, view_b, template_start, modality)`` returns ``{"input_a", "input_b",
    "reconstruction_a", "reconstruction_b", "embedding_a", "embedding_b"}``.

    Args:
        num_modalities: number of modality templates (the channels of a study, in the same order).
        template_size: spatial shape of a template (240 x 240 x 155 in BrainMVP).
        in_channels: 1 (one modality at a time).
        out_channels: 1 (the reconstruction).
        feature_size: SwinUNETR feature size (48 in the papers).
        depths: Swin blocks per stage.
        num_heads: attention heads per stage.
        window_size: attention window size.
        dropout_path_rate: stochastic depth rate.
        normalize: layer-normalise the hidden states passed to the decoder.
        use_checkpoint: gradient checkpointing, to save memory.
        use_v2: SwinUNETR v2.
        spatial_dims: 3.
        stem: "patch" or "conv" (see :py:class:`monai_dae.networks.PretextSwinUNETR`).
        downsample: SwinUNETR's patch merging (see :py:class:`monai_dae.networks.PretextSwinUNETR`).
        embedding_transform: a module applied to the patch embedding; None (BrainMVP has none).
        projection_dim: project the pooled bottlenecks with a :py:class:`monai_dae.networks.ProjectionHead` of
            this size before the contrast; None (the released code) contrasts the pooled bottlenecks.
    """

    skip_modules: tuple[str, ...] = ("encoder1", "encoder2", "encoder3", "encoder4")
    """SwinUNETR's skip encoders, which the skip-free decoder does not use (and which are not built)."""

    def __init__(
        self,
        num_modalities: int = 4,
        template_size: Sequence[int] = (240, 240, 155),
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
        stem: str = "patch",
        downsample: str | type[nn.Module] = "merging",
        embedding_transform: nn.Module | None = None,
        projection_dim: int | None = None,
    ) -> None:
        if in_channels != 1 or out_channels != 1:
            raise ValueError(f"BrainMVP encodes and reconstructs one modality: in_channels and out_channels must be 1, "
                             f"got {in_channels} and {out_channels}.")
        if num_modalities < 2:
            raise ValueError(f"BrainMVP needs at least 2 modalities, got {num_modalities}.")
        super().__init__(
            in_channels=1,
            out_channels=1,
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
            projection_dim=projection_dim,
        )
        for name in self.skip_modules:
            delattr(self, name)
        self.templates = nn.Parameter(torch.zeros(int(num_modalities), *(int(s) for s in template_size)))

    def features(self, x_in: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            x_in: images (B, 1, *spatial), spatial sizes divisible by 32.

        Returns:
            ``enc4`` and ``bottleneck`` (see :py:data:`monai_dae.networks.FEATURE_NAMES`), and zeros of the shapes
            of the skip features ``enc0..enc3``.
        """
        if not torch.jit.is_scripting() and not torch.jit.is_tracing():
            self._check_input_size(x_in.shape[2:])
        hidden = self.swinViT(x_in, self.normalize)
        batch, size = x_in.shape[0], self.swinViT.embed_dim
        return {
            "enc0": x_in.new_zeros(batch, size, *x_in.shape[2:]),
            "enc1": torch.zeros_like(hidden[0]),
            "enc2": torch.zeros_like(hidden[1]),
            "enc3": torch.zeros_like(hidden[2]),
            "enc4": torch.zeros_like(hidden[3]),
            "bottleneck": hidden[4],
        }

    def template_windows(self, modality: torch.Tensor, start: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """
        Args:
            modality: the template of every sample, int (B,).
            start: the window start of every sample in its template, int (B, 3).
            size: spatial size of the windows.

        Returns:
            the min-max normalised template windows (B, 1, *size).
        """
        ranges = {index: (self.templates[index].min(), self.templates[index].max()) for index in set(modality.tolist())}
        windows = []
        for index, corner in zip(modality.tolist(), start.tolist()):
            template = self.templates[index]
            low, high = ranges[index]
            region = tuple(slice(c, c + s) for c, s in zip(corner, size))
            window = (template[region] - low) / (high - low + 1e-9)
            if tuple(window.shape) != tuple(size):
                raise ValueError(f"the template window at {corner} of size {tuple(size)} leaves the template "
                                 f"{tuple(template.shape)}.")
            windows.append(window)
        return torch.stack(windows).unsqueeze(1)

    def forward(  # type: ignore[override]
        self,
        image: torch.Tensor,
        mask: torch.Tensor,
        view_b: torch.Tensor,
        template_start: torch.Tensor,
        modality: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """
        Args:
            image: modality m (B, 1, *spatial).
            mask: view A's masked voxels (B, 1, *spatial), bool.
            view_b: view B (B, 1, *spatial).
            template_start: the window start of every sample in the templates, int (B, 3).
            modality: m for every sample, int (B,).

        Returns:
            the two views, their reconstructions and their pooled bottleneck embeddings (B, 16 F).
        """
        windows = self.template_windows(modality, template_start, image.shape[2:]).to(image.dtype)
        view_a = torch.where(mask, windows, image)
        batch = image.shape[0]
        features = self.features(torch.cat([view_a, view_b.to(image.dtype)]))
        reconstruction = self.decode(features)
        if self.projection_head is None:
            embedding = features["bottleneck"].flatten(2).mean(dim=2)
        else:
            embedding = self.embed(features)
        return {
            "input_a": view_a,
            "input_b": view_b,
            "reconstruction_a": reconstruction[:batch],
            "reconstruction_b": reconstruction[batch:],
            "embedding_a": embedding[:batch],
            "embedding_b": embedding[batch:],
        }
