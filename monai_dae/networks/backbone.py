"""
One Swin UNETR backbone for every pretext task: MONAI's ``SwinUNETR`` with a choice of stem and patch merging,
named features for heads to attach to, an optional transform of the patch embedding (DAE's local masking) and
an optional projection head on the pooled bottleneck (contrastive terms).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import UnetBasicBlock
from monai.networks.nets import SwinUNETR

__all__ = ["PretextSwinUNETR", "ProjectionHead", "use_conv_stem", "FEATURE_NAMES"]

FEATURE_NAMES: tuple[str, ...] = ("enc0", "enc1", "enc2", "enc3", "enc4", "bottleneck")
"""Names of the features returned by :py:meth:`PretextSwinUNETR.features`, from full resolution to 1/32."""


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


class ProjectionHead(nn.Sequential):
    """
    The contrastive projection head: Linear(in, in), ReLU, Linear(in, out) on globally pooled features.

    Args:
        in_features: channels of the pooled features (16 x feature size for the Swin bottleneck).
        out_features: size of the projected embedding.
    """

    def __init__(self, in_features: int, out_features: int = 128) -> None:
        super().__init__(nn.Linear(in_features, in_features), nn.ReLU(inplace=True), nn.Linear(in_features, out_features))


class PretextSwinUNETR(SwinUNETR):
    """
    Swin UNETR for self-supervised pretext tasks, with the module names of MONAI's ``SwinUNETR`` so that its
    state dict loads into a stock ``SwinUNETR`` apart from the pretext-only heads (:py:attr:`pretext_prefixes`).

    - ``features(x)`` returns the named features (:py:data:`FEATURE_NAMES`): ``enc0..enc3`` are the skip
      encoders' outputs, ``enc4`` the stage-4 Swin output and ``bottleneck`` the last Swin stage (16 x feature
      size channels at 1/32 resolution);
    - ``decode(features)`` runs the U-shaped decoder and the output convolution of ``out_channels`` channels
      (the reconstruction of DAE, the 5 fusion classes of Volume Fusion, ...);
    - ``embedding_transform``, a module applied to the patch embedding before stage 1 and the first skip
      connection (DAE's local masking, :py:class:`monai_dae.networks.PatchEmbeddingMasking`);
    - ``projection_head`` (with ``projection_dim``), on the globally pooled bottleneck for contrastive terms.

    ``forward(x)`` returns the decoder output; ``forward(x, return_embedding=True)`` returns
    ``(output, embedding)`` with the embedding shaped (B, ``projection_dim``).

    Args:
        in_channels: input channels.
        out_channels: channels of the decoder output.
        feature_size: SwinUNETR feature size (48 in the papers).
        depths: Swin blocks per stage.
        num_heads: attention heads per stage.
        window_size: attention window size.
        dropout_path_rate: stochastic depth rate.
        normalize: layer-normalise the hidden states passed to the decoder (DAE's authors skip it).
        use_checkpoint: gradient checkpointing, to save memory.
        use_v2: SwinUNETR v2 (residual conv block before each stage).
        spatial_dims: 2 or 3.
        stem: "patch" (MONAI's patchify conv) or "conv" (the DAE authors' conv stem, see :py:func:`use_conv_stem`).
        downsample: SwinUNETR's patch merging: "merging" (MONAI's current ``PatchMerging``), "mergingv2", or a
            module class such as :py:class:`monai_dae.networks.LegacyPatchMerging` for weights trained with
            MONAI < 1.5 (see :py:func:`monai_dae.weights.merging_module`).
        embedding_transform: module applied to the patch embedding (B, F, *spatial / 2); None leaves it as is.
        projection_dim: size of the projected embedding; None builds no projection head.
    """

    pretext_prefixes: tuple[str, ...] = ("projection_head.", "teacher.", "templates")
    """State-dict prefixes of the pretext-only modules that a stock ``SwinUNETR`` does not have: the heads, VoCo's
    EMA teacher and BrainMVP's modality templates."""

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
        stem: str = "patch",
        downsample: str | type[nn.Module] = "merging",
        embedding_transform: nn.Module | None = None,
        projection_dim: int | None = None,
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
        self.embedding_transform = embedding_transform
        if embedding_transform is not None:
            self.swinViT.patch_embed.register_forward_hook(self._transform_patch_embedding)
        self.projection_head = None if projection_dim is None else ProjectionHead(16 * feature_size, projection_dim)

    def _transform_patch_embedding(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return self.embedding_transform(output)

    def features(self, x_in: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            x_in: images (B, C, *spatial), spatial sizes divisible by 32.

        Returns:
            the named features of :py:data:`FEATURE_NAMES`.
        """
        if not torch.jit.is_scripting() and not torch.jit.is_tracing():
            self._check_input_size(x_in.shape[2:])
        hidden_states_out = self.swinViT(x_in, self.normalize)
        return {
            "enc0": self.encoder1(x_in),
            "enc1": self.encoder2(hidden_states_out[0]),
            "enc2": self.encoder3(hidden_states_out[1]),
            "enc3": self.encoder4(hidden_states_out[2]),
            "enc4": hidden_states_out[3],
            "bottleneck": hidden_states_out[4],
        }

    def decode(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """
        Args:
            features: the output of :py:meth:`features`.

        Returns:
            the decoder output (B, ``out_channels``, *spatial).
        """
        dec4 = self.encoder10(features["bottleneck"])
        dec3 = self.decoder5(dec4, features["enc4"])
        dec2 = self.decoder4(dec3, features["enc3"])
        dec1 = self.decoder3(dec2, features["enc2"])
        dec0 = self.decoder2(dec1, features["enc1"])
        return self.out(self.decoder1(dec0, features["enc0"]))

    def embed(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """
        Args:
            features: the output of :py:meth:`features`.

        Returns:
            the projected, globally pooled bottleneck (B, ``projection_dim``).
        """
        if self.projection_head is None:
            raise RuntimeError("this network has no projection head: build it with projection_dim.")
        return self.projection_head(features["bottleneck"].flatten(2).mean(dim=2))

    def forward(self, x_in: torch.Tensor, return_embedding: bool = False):
        """
        Args:
            x_in: images (B, C, *spatial), spatial sizes divisible by 32.
            return_embedding: also return the projected bottleneck embedding.

        Returns:
            the decoder output, or ``(output, embedding)``.
        """
        features = self.features(x_in)
        output = self.decode(features)
        return (output, self.embed(features)) if return_embedding else output

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """
        The state dict of the stock-SwinUNETR part (encoder and decoder, without the output convolution and the
        pretext-only heads).

        Returns:
            a state dict that loads into ``SwinUNETR`` with ``strict=True`` apart from ``out.*``.
        """
        excluded = ("out.", *self.pretext_prefixes)
        return {k: v for k, v in self.state_dict().items() if not k.startswith(excluded)}
