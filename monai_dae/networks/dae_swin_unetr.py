"""The DAE pretraining network: MONAI's SwinUNETR with local masking and a contrastive projection head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import UnetBasicBlock
from monai.networks.nets import SwinUNETR

from monai_dae.transforms.array import LocalMasking

__all__ = ["DAESwinUNETR", "use_conv_stem", "BACKBONE_EXCLUDED_PREFIXES"]

BACKBONE_EXCLUDED_PREFIXES: tuple[str, ...] = ("out.", "projection_head.")
"""State-dict prefixes of DAESwinUNETR that are not part of the stock SwinUNETR backbone."""


def use_conv_stem(network: SwinUNETR) -> SwinUNETR:
    """
    Replace the 2^3 patchify convolution of a SwinUNETR by the DAE authors' convolutional stem: a stride-2 3^3
    conv block (conv in->F stride 2, InstanceNorm with affine, LeakyReLU, conv F->F, InstanceNorm, LeakyReLU).
    Its parameters are named ``swinViT.patch_embed.proj.{conv1.conv,conv2.conv,norm1,norm2}.*``, the layout of
    the authors' published checkpoint. Only needed to load that checkpoint.

    Args:
        network: a SwinUNETR built with ``patch_size=2``; changed in place.

    Returns:
        the same network.
    """
    embed = network.swinViT.patch_embed
    conv = embed.proj
    embed.proj = UnetBasicBlock(
        spatial_dims=conv.weight.ndim - 2,
        in_channels=conv.in_channels,
        out_channels=conv.out_channels,
        kernel_size=3,
        stride=2,
        norm_name=("instance", {"affine": True}),
        act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
    )
    return network


class DAESwinUNETR(SwinUNETR):
    """
    Swin UNETR for Disruptive Autoencoder pretraining.

    It is MONAI's ``SwinUNETR`` (same module names, so its state dict loads into a stock ``SwinUNETR`` with
    ``strict=True`` apart from ``out`` and ``projection_head``) with:

    - local masking of the patch embedding: a fraction of the embedding channels is zeroed at every position,
      in training mode only unless ``mask_in_eval``; the masked embedding feeds stage 1 of the Swin encoder
      and the first skip connection;
    - a reconstruction output of ``out_channels`` (1) channels, without activation;
    - a projection head on the globally pooled bottleneck features, for the cross-modal contrastive loss.

    ``forward(x)`` returns the reconstruction; ``forward(x, return_embedding=True)`` returns
    ``(reconstruction, embedding)`` with the embedding shaped (B, ``projection_dim``).

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
        stem: "patch" (MONAI's patchify conv) or "conv" (the authors' conv stem, see :py:func:`use_conv_stem`).
        downsample: SwinUNETR's patch merging: "merging" (MONAI's current ``PatchMerging``), "mergingv2", or a
            module class such as :py:class:`monai_dae.networks.LegacyPatchMerging` for weights trained with
            MONAI < 1.5 (see :py:func:`monai_dae.weights.merging_module`).
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
            downsample=downsample,
        )
        if stem == "conv":
            use_conv_stem(self)
        elif stem != "patch":
            raise ValueError(f"stem must be 'patch' or 'conv', got '{stem}'.")
        self.local_masking = LocalMasking(mask_ratio, per_sample=mask_per_sample)
        self.mask_in_eval = mask_in_eval
        bottleneck = 16 * feature_size
        self.projection_head = nn.Sequential(
            nn.Linear(bottleneck, bottleneck), nn.ReLU(inplace=True), nn.Linear(bottleneck, projection_dim)
        )
        self.swinViT.patch_embed.register_forward_hook(self._mask_patch_embedding)

    def _mask_patch_embedding(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if self.training or self.mask_in_eval:
            return self.local_masking(output)
        return output

    def forward(self, x_in: torch.Tensor, return_embedding: bool = False):
        """
        Args:
            x_in: disrupted images (B, C, *spatial), spatial sizes divisible by 32.
            return_embedding: also return the projected bottleneck embedding.

        Returns:
            the reconstruction, or ``(reconstruction, embedding)``.
        """
        if not torch.jit.is_scripting() and not torch.jit.is_tracing():
            self._check_input_size(x_in.shape[2:])
        hidden_states_out = self.swinViT(x_in, self.normalize)
        enc0 = self.encoder1(x_in)
        enc1 = self.encoder2(hidden_states_out[0])
        enc2 = self.encoder3(hidden_states_out[1])
        enc3 = self.encoder4(hidden_states_out[2])
        dec4 = self.encoder10(hidden_states_out[4])
        dec3 = self.decoder5(dec4, hidden_states_out[3])
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        dec0 = self.decoder2(dec1, enc1)
        reconstruction = self.out(self.decoder1(dec0, enc0))
        if not return_embedding:
            return reconstruction
        pooled = hidden_states_out[4].flatten(2).mean(dim=2)
        return reconstruction, self.projection_head(pooled)

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """
        The state dict of the stock-SwinUNETR part (encoder and decoder, no output head or projection head).

        Returns:
            a state dict that loads into ``SwinUNETR`` with ``strict=True`` apart from ``out.*``.
        """
        return {k: v for k, v in self.state_dict().items() if not k.startswith(BACKBONE_EXCLUDED_PREFIXES)}
