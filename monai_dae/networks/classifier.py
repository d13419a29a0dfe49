"""Image-level classifier on the Swin UNETR encoder, for fine-tuning DAE weights on classification tasks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.nets.swin_unetr import SwinTransformer
from monai.utils import ensure_tuple_rep

from monai_dae.networks.backbone import use_conv_stem

__all__ = ["FeatureBatchNorm", "SwinClassifier"]


class FeatureBatchNorm(nn.BatchNorm1d):
    """
    BatchNorm without affine parameters over (B, C) features, whose running statistics are the plain average of
    the first training batches before they become an exponential moving average.

    ``nn.BatchNorm1d`` starts its running statistics at mean 0 and variance 1 and moves them by ``momentum`` per
    training batch, so they remember that start for many more than ``1 / momentum`` batches. Pooled features of a
    pretrained encoder can vary between subjects by orders of magnitude less than 1 (measured on the brain
    phantoms with DAE weights: a median per-feature variance of 1e-4, against 5e-2 for a random initialisation).
    In evaluation mode a plain BatchNorm then divides by a variance thousands of times too large and subtracts a
    mean that has not caught up: every subject gets the same class while the ranking (AUC) is already right, for
    about ``log(var) / log(1 - momentum)`` batches (10 epochs of a small data set). Here the n-th training batch
    updates the running statistics with the factor ``max(momentum, 1 / n)``: after the first batch they are that
    batch's statistics, after ``1 / momentum`` batches the usual moving average. The state dict keys are those of
    ``nn.BatchNorm1d``.

    Args:
        num_features: number of features C.
        momentum: factor of the exponential moving average once more than ``1 / momentum`` batches were seen.
        eps: added to the variance for numerical stability.
    """

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=False)
        self.base_momentum = momentum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: features (B, C); B of 2 or more in training mode.

        Returns:
            the standardised features (B, C).
        """
        if self.training:
            self.momentum = max(self.base_momentum, 1.0 / (int(self.num_batches_tracked) + 1))
        return super().forward(x)


class SwinClassifier(nn.Module):
    """
    Swin UNETR encoder (``swinViT``) followed by global average pooling of the bottleneck, a feature
    normalisation, dropout and a linear classification head.

    The encoder is built exactly as inside MONAI's ``SwinUNETR`` and keeps its module name, so the
    ``swinViT.*`` keys of a pretrained ``SwinUNETR`` / ``DAESwinUNETR`` state dict load unchanged (apart from
    the patch-embedding kernel when ``in_channels`` differs, see :py:func:`monai_dae.weights.adapt_in_channels`).
    The head is ``head_norm``, ``dropout`` and ``head`` (Linear to ``num_classes`` logits). ``head_norm`` is by
    default a BatchNorm without affine parameters over the ``16 * feature_size`` pooled features, as in the
    linear probes of MAE (He et al., 2022): it standardises every feature across subjects. Pretrained encoders
    can give features that differ between subjects by much less than a random initialisation does (measured on
    the phantoms with DAE weights: 20x smaller standard deviation of the pooled bottleneck features), and without
    the standardisation the head's logits then barely move in a short fine-tuning; its running statistics start
    from the first batches (:py:class:`FeatureBatchNorm`), so that evaluation does not standardise with the
    initial unit variance. Training needs batches of 2 or more (the bundle drops the last incomplete batch).

    ``freeze_encoder=True`` makes a linear probe: the encoder parameters get ``requires_grad=False`` and the
    encoder stays in evaluation mode (no stochastic depth) when the module is put in training mode; only the
    head learns. ``forward`` returns logits (B, ``num_classes``); apply a softmax for probabilities.

    Args:
        in_channels: input channels (4 for t1, t1ce, t2, flair).
        num_classes: number of classes.
        feature_size: Swin embedding size (48 for the DAE weights); divisible by 12.
        depths: Swin blocks per stage.
        num_heads: attention heads per stage.
        window_size: attention window size.
        patch_size: patch-embedding size; spatial sizes must be divisible by ``patch_size ** 5``.
        dropout: dropout rate before the linear head.
        dropout_path_rate: stochastic depth rate of the encoder.
        normalize: layer-normalise the encoder's bottleneck features (as ``SwinUNETR`` does before its decoder).
        use_checkpoint: gradient checkpointing in the encoder, to save memory.
        use_v2: SwinUNETR v2 encoder (residual conv block before each stage).
        spatial_dims: 2 or 3.
        freeze_encoder: train the head only (linear probe).
        stem: "patch" (MONAI's patchify conv, the default) or "conv" (the DAE authors' conv stem, needed only to
            load their published checkpoint, see :py:func:`monai_dae.networks.use_conv_stem`).
        head_norm: normalisation of the pooled features: "batch" (:py:class:`FeatureBatchNorm`, default),
            "layer" (LayerNorm with affine, per sample) or "none".
        downsample: the encoder's patch merging: "merging" (MONAI's current ``PatchMerging``), "mergingv2", or a
            module class such as :py:class:`monai_dae.networks.LegacyPatchMerging` for weights trained with
            MONAI < 1.5 (see :py:func:`monai_dae.weights.merging_module`).
    """

    def __init__(
        self,
        in_channels: int = 4,
        num_classes: int = 2,
        feature_size: int = 48,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: Sequence[int] | int = 7,
        patch_size: int = 2,
        dropout: float = 0.0,
        dropout_path_rate: float = 0.0,
        normalize: bool = True,
        use_checkpoint: bool = False,
        use_v2: bool = False,
        spatial_dims: int = 3,
        freeze_encoder: bool = False,
        stem: str = "patch",
        head_norm: str = "batch",
        downsample: str | type[nn.Module] = "merging",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if feature_size % 12 != 0:
            raise ValueError(f"feature_size must be divisible by 12, got {feature_size}.")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout}.")
        self.patch_size = patch_size
        self.normalize = normalize
        self.swinViT = SwinTransformer(
            in_chans=in_channels,
            embed_dim=feature_size,
            window_size=ensure_tuple_rep(window_size, spatial_dims),
            patch_size=ensure_tuple_rep(patch_size, spatial_dims),
            depths=depths,
            num_heads=num_heads,
            drop_path_rate=dropout_path_rate,
            use_checkpoint=use_checkpoint,
            spatial_dims=spatial_dims,
            use_v2=use_v2,
            downsample=downsample,
        )
        if stem == "conv":
            use_conv_stem(self)
        elif stem != "patch":
            raise ValueError(f"stem must be 'patch' or 'conv', got '{stem}'.")
        num_features = feature_size * 2 ** len(depths)
        if head_norm == "batch":
            self.head_norm: nn.Module = FeatureBatchNorm(num_features)
        elif head_norm == "layer":
            self.head_norm = nn.LayerNorm(num_features)
        elif head_norm == "none":
            self.head_norm = nn.Identity()
        else:
            raise ValueError(f"head_norm must be 'batch', 'layer' or 'none', got '{head_norm}'.")
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(num_features, num_classes)
        self.freeze_encoder = False
        self.set_freeze_encoder(freeze_encoder)

    def set_freeze_encoder(self, freeze: bool = True) -> None:
        """
        Switch between a linear probe (frozen encoder) and full fine-tuning.

        Args:
            freeze: freeze the encoder.
        """
        self.freeze_encoder = bool(freeze)
        for parameter in self.swinViT.parameters():
            parameter.requires_grad_(not self.freeze_encoder)
        self.train(self.training)

    def train(self, mode: bool = True) -> SwinClassifier:
        """Set training mode; a frozen encoder stays in evaluation mode."""
        super().train(mode)
        if self.freeze_encoder:
            self.swinViT.eval()
        return self

    def _check_input_size(self, spatial_shape: Sequence[int]) -> None:
        divisor = self.patch_size**5
        wrong = [int(s) for s in spatial_shape if int(s) % divisor]
        if wrong:
            raise ValueError(f"spatial sizes {list(spatial_shape)} of the input must be divisible by {divisor}.")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """
        Globally pooled bottleneck features.

        Args:
            x: images (B, in_channels, *spatial), spatial sizes divisible by ``patch_size ** 5``.

        Returns:
            features (B, ``16 * feature_size``), before ``head_norm``.
        """
        if not torch.jit.is_scripting() and not torch.jit.is_tracing():
            self._check_input_size(x.shape[2:])
        bottleneck = self.swinViT(x, self.normalize)[-1]
        return bottleneck.flatten(2).mean(dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: images (B, in_channels, *spatial), spatial sizes divisible by ``patch_size ** 5``.

        Returns:
            class logits (B, num_classes).
        """
        return self.head(self.dropout(self.head_norm(self.features(x))))
