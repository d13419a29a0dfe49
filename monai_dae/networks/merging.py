"""
The 3D patch merging of MONAI < 1.5, for Swin UNETR weights trained with it.

MONAI 1.5 (Project-MONAI/MONAI PR 8285, issue 8284) changed the order in which ``PatchMerging`` concatenates
the eight 2x2x2 neighbours of a 3D feature map. Every Swin UNETR checkpoint published before (the DAE authors'
weights, Swin-SSL ``model_swinvit.pt``, MONAI's SSL weights, VoCo, the older Model Zoo weights) was trained with
the old order. Such a checkpoint loads every key into MONAI >= 1.5 and then computes different features from
the first merging on; :py:class:`LegacyPatchMerging` computes what the old code computed.

Example::

    from monai.networks.nets import SwinUNETR
    from monai_dae.networks import LegacyPatchMerging

    net = SwinUNETR(in_channels=1, out_channels=14, feature_size=48, downsample=LegacyPatchMerging)
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import PatchMerging

__all__ = ["LEGACY_ORDER", "LEGACY_ORDER_BUFFER", "LegacyPatchMerging", "is_merging_record"]

LEGACY_ORDER: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (1, 0, 0),
    (0, 1, 0),
    (0, 0, 1),
    (1, 0, 1),
    (0, 1, 0),
    (0, 0, 1),
    (1, 1, 1),
)
"""The (depth, height, width) offsets of the eight concatenated neighbours in MONAI < 1.5's 3D ``PatchMerging``
(``monai/networks/nets/swin_unetr.py`` of MONAI 1.4.0, ``x0`` ... ``x7``). (0,1,0) and (0,0,1) appear twice, and
(1,1,0) and (0,1,1) never: that is what the old code did and what the published weights were trained with."""

LEGACY_ORDER_BUFFER = "legacy_order"
"""Name of the buffer of :py:class:`LegacyPatchMerging` that records its neighbour order in a state dict
(``swinViT.layers{s}.0.downsample.legacy_order``)."""


def is_merging_record(key: str) -> bool:
    """
    Whether a state-dict key is the neighbour-order record of a :py:class:`LegacyPatchMerging`.

    Args:
        key: a state-dict key.

    Returns:
        True for ``*.downsample.legacy_order``.
    """
    return key.endswith(f".downsample.{LEGACY_ORDER_BUFFER}")


class LegacyPatchMerging(PatchMerging):
    """
    3D patch merging with the neighbour order of MONAI < 1.5 (:py:data:`LEGACY_ORDER`), for weights trained
    before MONAI 1.5. Pass the class as SwinUNETR's ``downsample`` argument.

    The module has the parameters of ``PatchMerging`` (``norm``, ``reduction``) and a persistent int64 buffer
    ``legacy_order`` (8 x 3) holding :py:data:`LEGACY_ORDER`. A state dict saved from a network with this
    merging therefore records it (``swinViT.layers{s}.0.downsample.legacy_order``): loading it with
    ``strict=True`` into a network with the current merging fails on those unexpected keys instead of silently
    computing other features, and a stock MONAI state dict (no such keys) fails to load into this one. The
    forward pass uses the constant order (no host-device synchronisation, traceable); loading a state dict
    whose ``legacy_order`` holds another order is refused.

    Args:
        dim: number of input feature channels.
        norm_layer: normalisation layer class applied to the 8 * ``dim`` concatenated features.
        spatial_dims: must be 3 (MONAI 1.5 changed the 3D order only; 2D networks need no legacy merging).
    """

    def __init__(self, dim: int, norm_layer: type[nn.LayerNorm] = nn.LayerNorm, spatial_dims: int = 3) -> None:
        if spatial_dims != 3:
            raise ValueError(
                f"LegacyPatchMerging is 3D only (spatial_dims 3), got spatial_dims={spatial_dims}: MONAI 1.5 "
                "changed the 3D neighbour order only, 2D networks need no legacy merging."
            )
        super().__init__(dim=dim, norm_layer=norm_layer, spatial_dims=spatial_dims)
        self.register_buffer(LEGACY_ORDER_BUFFER, torch.tensor(LEGACY_ORDER, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: features (B, D, H, W, C); odd spatial sizes are zero-padded to even.

        Returns:
            merged features (B, ceil(D / 2), ceil(H / 2), ceil(W / 2), 2 * C).
        """
        if x.ndim != 5:
            raise ValueError(f"expecting 5D input (B, D, H, W, C), got shape {tuple(x.shape)}.")
        d, h, w = x.shape[1:4]
        if d % 2 or h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2, 0, d % 2))
        x = torch.cat([x[:, i::2, j::2, k::2, :] for i, j, k in LEGACY_ORDER], -1)
        return self.reduction(self.norm(x))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        """Refuse a ``legacy_order`` record holding another order; otherwise load as ``nn.Module`` does."""
        key = prefix + LEGACY_ORDER_BUFFER
        if key in state_dict:
            value = state_dict[key]
            if tuple(value.shape) != (len(LEGACY_ORDER), 3) or value.tolist() != [list(o) for o in LEGACY_ORDER]:
                error_msgs.append(
                    f"'{key}' holds the neighbour order {value.tolist()}, not the legacy order {list(LEGACY_ORDER)} "
                    "of MONAI < 1.5: the checkpoint is not from a LegacyPatchMerging network."
                )
                return
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
