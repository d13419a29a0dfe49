"""
Pretrained Swin UNETR weights: one code path to read, recognise, rename and load every supported checkpoint.

Supported layouts (:py:data:`LAYOUTS`), all converted to the parameter names of the current
``monai.networks.nets.SwinUNETR`` (MONAI 1.6):

- ``"dae_bundle"``: ``models/model.pt`` of the ``dae_pretrain`` bundle (a ``DAESwinUNETR`` state dict:
  SwinUNETR names plus ``projection_head.*``), or any stock ``SwinUNETR`` state dict, e.g. a fine-tuned
  ``dae_btcv_seg`` model.
- ``"dae_official"``: the DAE authors' ``ckpt_best.pth`` (``{"model": ..., "optimizer": ..., ...}``, MONAI 0.8
  names under ``encoder.``, ``encoder.layers{s}.0.0.``, ``mlp.fc1/fc2``, extra ``conv3`` projections and the
  authors' convolutional stem ``encoder.patch_embed.proj.{conv1.conv,conv2.conv,norm1,norm2}``).
- ``"monai_ssl"``: MONAI's ``ssl_pretrained_weights.pth`` (same names as ``dae_official`` with the standard
  ``encoder.patch_embed.proj.{weight,bias}`` patchify stem).
- ``"swin_ssl"``: Swin-SSL (Tang et al.) ``model_swinvit.pt`` (``{"state_dict": ...}``, keys
  ``module.patch_embed.*``, ``module.layers{s}.0.*``, ``mlp.fc1/fc2``; Swin transformer only).
- ``"voco"``: VoCo (Wu et al.) SwinUNETR weights: SwinUNETR names of a ``use_v2=True`` network
  (``swinViT.layers{s}c.*`` residual blocks), encoder only; ``module.``/``backbone.`` prefixes and
  ``swin_vit`` spellings are accepted.

Stem: the DAE authors' checkpoint has a convolutional stem (``monai_dae.networks.use_conv_stem``) where MONAI's
SwinUNETR has a 2^3 patchify convolution. :py:func:`checkpoint_stem` reads which one a state dict has (published,
converted or a network's names), :py:func:`resolve_stem` is the one place that decides which one a network gets
(the bundle config key ``stem``: "patch", "conv" or "auto", which follows the checkpoint the network will load),
and :py:func:`with_stem` gives it to a SwinUNETR.

Patch merging: MONAI 1.5 changed the neighbour order of SwinUNETR's 3D ``PatchMerging``; the layouts
``dae_official``, ``monai_ssl``, ``swin_ssl`` and ``voco`` were trained before, with the order that
:py:class:`monai_dae.networks.LegacyPatchMerging` reproduces. A state dict saved from a network with that module
records it in its ``*.downsample.legacy_order`` buffers. :py:func:`resolve_legacy_merging` is the one place
that decides which merging a network gets (the bundle config key ``legacy_merging``: true, false or "auto", which
follows the checkpoint the network will load), :py:func:`merging_module` turns that into SwinUNETR's
``downsample`` argument, and :py:func:`load_pretrained` refuses a checkpoint whose recorded merging differs from
the network's.

Every load is counted: :py:func:`load_pretrained` returns a :py:class:`LoadReport` listing the tensors that
were loaded, skipped (with the reason) and left newly initialised, logs it, and raises when the Swin
transformer backbone (``swinViT.*``) did not load completely, instead of silently training from scratch.

Example::

    from monai.networks.nets import SwinUNETR
    from monai_dae.weights import load_pretrained

    net = SwinUNETR(in_channels=1, out_channels=14, feature_size=48)
    report = load_pretrained(net, "models/model.pt", load_decoder=True)
    print(report.summary())
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from monai_dae.networks.backbone import PretextSwinUNETR, use_conv_stem
from monai_dae.networks.merging import LegacyPatchMerging, is_merging_record

__all__ = [
    "LAYOUTS",
    "LEGACY_MERGING_LAYOUTS",
    "LEGACY_MERGING_SETTINGS",
    "STEM_SETTINGS",
    "INPUT_WEIGHT_KEYS",
    "LoadReport",
    "read_checkpoint",
    "detect_layout",
    "convert_state_dict",
    "infer_architecture",
    "checkpoint_stem",
    "resolve_stem",
    "with_stem",
    "adapt_in_channels",
    "load_pretrained",
    "checkpoint_merging",
    "resolve_legacy_merging",
    "merging_module",
]

logger = logging.getLogger(__name__)

LAYOUTS: dict[str, str] = {
    "dae_bundle": "dae_pretrain bundle models/model.pt (DAESwinUNETR) or a stock MONAI SwinUNETR state dict",
    "dae_official": "DAE authors' ckpt_best.pth (MONAI 0.8 names, convolutional stem)",
    "monai_ssl": "MONAI ssl_pretrained_weights.pth (MONAI 0.8 names, patchify stem)",
    "swin_ssl": "Swin-SSL model_swinvit.pt (module.patch_embed / module.layers{s}, Swin transformer only)",
    "voco": "VoCo SwinUNETR weights (SwinUNETR names, use_v2=True)",
}
"""The supported checkpoint layouts and what produces them."""

LEGACY_MERGING_LAYOUTS: tuple[str, ...] = ("dae_official", "monai_ssl", "swin_ssl", "voco")
"""Published layouts trained with MONAI < 1.5, i.e. with the patch merging of
:py:class:`monai_dae.networks.LegacyPatchMerging`. A ``dae_bundle`` state dict used it iff it has the
``*.downsample.legacy_order`` buffers."""

LEGACY_MERGING_SETTINGS: tuple[bool | str, ...] = (True, False, "auto")
"""Allowed values of the bundle config key ``legacy_merging``."""

STEM_SETTINGS: tuple[str, ...] = ("patch", "conv", "auto")
"""Allowed values of the bundle config key ``stem`` (see :py:func:`resolve_stem`)."""

INPUT_WEIGHT_KEYS: tuple[str, ...] = (
    "swinViT.patch_embed.proj.weight",
    "swinViT.patch_embed.proj.conv1.conv.weight",
    "encoder1.layer.conv1.conv.weight",
    "encoder1.layer.conv3.conv.weight",
)
"""SwinUNETR weights whose input dimension is the number of image channels."""

_WRAPPER_KEYS = ("model", "state_dict", "network", "net")
_CONV_STEM_PATTERN = re.compile(r"(^|\.)patch_embed\.proj\.conv[12]\.")  # any prefix: encoder., swinViT., module.
_PATCH_STEM_KEY = "swinViT.patch_embed.proj.weight"
_STAGE1_NORM_KEY = "swinViT.layers1.0.blocks.0.norm1.weight"
_BACKBONE_PREFIX = "swinViT."
# blocks whose input and output channels are equal: MONAI >= 0.9 has no 1x1 residual projection (conv3/norm3)
_NO_PROJECTION_BLOCKS = ("encoder2.", "encoder3.", "encoder4.", "encoder10.")
_MLP_RENAMES = ((".mlp.fc1.", ".mlp.linear1."), (".mlp.fc2.", ".mlp.linear2."))


@dataclass
class LoadReport:
    """
    What :py:func:`load_pretrained` did with every tensor.

    Attributes:
        path: the checkpoint file.
        layout: the detected (or given) layout, one of :py:data:`LAYOUTS`.
        loaded: network keys that received a checkpoint tensor.
        skipped: checkpoint keys (converted names, or original names for tensors dropped by the conversion)
            that were not loaded; ``skip_reasons`` says why for each.
        missing: network keys that received nothing and keep their fresh initialisation.
        adapted: loaded keys whose input-channel dimension was adapted by :py:func:`adapt_in_channels`.
        skip_reasons: reason for each skipped key.
        legacy_merging: whether the network uses the patch merging of MONAI < 1.5 (``LegacyPatchMerging``).
        merging: which patch merging the network uses and why, e.g. "legacy patch merging (checkpoint layout
            'swin_ssl' was trained with MONAI < 1.5)".
    """

    path: str
    layout: str
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    skip_reasons: dict[str, str] = field(default_factory=dict)
    legacy_merging: bool = False
    merging: str = ""

    @property
    def num_loaded(self) -> int:
        """Number of network tensors loaded from the checkpoint."""
        return len(self.loaded)

    @property
    def num_skipped(self) -> int:
        """Number of checkpoint tensors not loaded."""
        return len(self.skipped)

    @property
    def num_missing(self) -> int:
        """Number of network tensors left newly initialised."""
        return len(self.missing)

    def summary(self) -> str:
        """
        A multi-line human-readable account: counts, then the skipped keys grouped by reason and the newly
        initialised keys grouped by module.

        Returns:
            the text.
        """
        lines = [
            f"pretrained weights '{self.path}' (layout '{self.layout}'): loaded {self.num_loaded} tensors, "
            f"skipped {self.num_skipped}, newly initialised {self.num_missing}"
            + (f", input channels adapted for {self.num_adapted}" if self.adapted else "")
            + "."
        ]
        if self.merging:
            lines.append(f"  {self.merging}")
        by_reason: dict[str, list[str]] = {}
        for key in self.skipped:
            by_reason.setdefault(self.skip_reasons.get(key, "unknown"), []).append(key)
        for reason, keys in by_reason.items():
            lines.append(f"  skipped {len(keys)} ({reason}): {_abbreviate(keys)}")
        if self.missing:
            lines.append(f"  newly initialised {self.num_missing}: {_abbreviate(_group_modules(self.missing))}")
        if self.adapted:
            lines.append(f"  input channels adapted: {_abbreviate(self.adapted)}")
        return "\n".join(lines)

    @property
    def num_adapted(self) -> int:
        """Number of loaded tensors whose input channels were adapted."""
        return len(self.adapted)


def _abbreviate(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _group_modules(keys: Iterable[str]) -> list[str]:
    """Collapse keys to their top-level module (``decoder1.*``) with a count, in first-seen order."""
    counts: dict[str, int] = {}
    for key in keys:
        head = key.split(".", 1)[0]
        counts[head] = counts.get(head, 0) + 1
    return [f"{head}.* ({n})" for head, n in counts.items()]


def read_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """
    Read a checkpoint with ``torch.load(weights_only=True)`` (no code in the file is executed) and return its
    state dict, unwrapping the ``model`` / ``state_dict`` / ``network`` / ``net`` dicts that training scripts
    save around it (``ckpt_best.pth``: ``{"model", "optimizer", "lr_scheduler", "epoch"}``; Swin-SSL:
    ``{"state_dict", ...}``).

    Args:
        path: checkpoint file.
        map_location: device the tensors are loaded onto.

    Returns:
        a flat ``{name: tensor}`` dict.

    Raises:
        FileNotFoundError: the file does not exist.
        RuntimeError: the file cannot be read safely (the message names it and gives the cause).
        ValueError: the file holds no state dict of tensors.
    """
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file not found: '{path}'.")
    try:
        content = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise RuntimeError(
            f"cannot read checkpoint '{path}' with torch.load(weights_only=True): {error}. "
            "If the file is a full pickled model rather than a state dict, re-save its state_dict() first."
        ) from error
    unwrapped = content
    while isinstance(unwrapped, Mapping) and not _is_state_dict(unwrapped):
        inner = next((unwrapped[k] for k in _WRAPPER_KEYS if isinstance(unwrapped.get(k), Mapping)), None)
        if inner is None:
            break
        unwrapped = inner
    if not isinstance(unwrapped, Mapping) or not _is_state_dict(unwrapped):
        found = sorted(map(str, content))[:10] if isinstance(content, Mapping) else type(content).__name__
        raise ValueError(
            f"checkpoint '{path}' holds no state dict of tensors (top-level content: {found}); expected a state "
            f"dict or a dict with one under {list(_WRAPPER_KEYS)}."
        )
    return {str(k): v for k, v in unwrapped.items() if isinstance(v, torch.Tensor)}


def _is_state_dict(mapping: Mapping) -> bool:
    """Whether a mapping is a non-empty ``{str: tensor}`` state dict (non-tensor extras tolerated)."""
    tensors = sum(isinstance(v, torch.Tensor) for v in mapping.values())
    return tensors > 0 and tensors >= len(mapping) // 2 and all(isinstance(k, str) for k in mapping)


def _strip_prefix(state_dict: Mapping[str, torch.Tensor], prefixes: Iterable[str]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (``module.`` of DDP, ...) carried by every key."""
    result = dict(state_dict)
    for prefix in prefixes:
        if result and all(k.startswith(prefix) for k in result):
            result = {k[len(prefix) :]: v for k, v in result.items()}
    return result


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """
    Recognise the layout of a state dict from its key names.

    Args:
        state_dict: a state dict as returned by :py:func:`read_checkpoint`.

    Returns:
        one of the names of :py:data:`LAYOUTS`.

    Raises:
        ValueError: the keys match none of the layouts (the message shows some of them).
    """
    keys = list(_strip_prefix(state_dict, ("module.", "backbone.")))

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("encoder.patch_embed.") or has("encoder.layers1."):  # MONAI 0.8 names: the stem tells them apart
        return "dae_official" if checkpoint_stem(keys) == "conv" else "monai_ssl"
    if has("swinViT.") or has("swin_vit."):
        if has("projection_head."):
            return "dae_bundle"
        if has("swinViT.layers1c.") or has("swin_vit.layers1c."):
            return "voco"
        return "dae_bundle"
    if has("patch_embed.") and has("layers1."):
        return "voco" if has("layers1c.") else "swin_ssl"
    raise ValueError(
        f"unrecognised checkpoint layout: none of {sorted(LAYOUTS)} matches keys such as {keys[:6]}. "
        "Expected SwinUNETR weights (swinViT.*), the DAE/MONAI-SSL layout (encoder.patch_embed.*, "
        "encoder.layers1.0.0.*) or Swin-SSL/VoCo weights (module.patch_embed.*, module.layers1.*)."
    )


def _convert(
    state_dict: Mapping[str, torch.Tensor], layout: str
) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, str]]:
    """
    Rename a state dict of a given layout to current MONAI SwinUNETR names.

    Returns:
        ``(converted, sources, dropped)``: the renamed tensors, the original name of each renamed key, and
        the original keys the conversion dropped with the reason.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown weight layout '{layout}'; supported: {sorted(LAYOUTS)}.")
    converted: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    dropped: dict[str, str] = {}
    originals = dict(state_dict)
    stripped = _strip_prefix(originals, ("module.", "backbone."))
    origin = dict(zip(stripped, originals))
    for key, value in stripped.items():
        new = key
        if layout in ("dae_official", "monai_ssl"):
            if key == "encoder.mask_token" or key.startswith("encoder.norm."):
                dropped[origin[key]] = "pretraining-only tensor (mask token, final norm)"
                continue
            if key.startswith("encoder."):
                new = "swinViT." + re.sub(r"^layers(\d)\.0\.0\.", r"layers\1.0.", key[len("encoder.") :])
        elif layout == "swin_ssl":
            if key.startswith("norm."):
                dropped[origin[key]] = "pretraining-only tensor (final norm)"
                continue
            if key.startswith(("patch_embed.", "layers")):
                new = "swinViT." + key
            else:
                dropped[origin[key]] = "not part of the Swin transformer (pretraining head)"
                continue
        elif layout == "voco":
            new = key.replace("swin_vit.", "swinViT.")
            if not new.startswith("swinViT.") and new.startswith(("patch_embed.", "layers")):
                new = "swinViT." + new
            if new.startswith("swinViT.norm."):
                dropped[origin[key]] = "pretraining-only tensor (final norm)"
                continue
        elif layout == "dae_bundle":
            if key.startswith(PretextSwinUNETR.pretext_prefixes):
                dropped[origin[key]] = "pretraining-only module (pretext head)"
                continue
        for old_name, new_name in _MLP_RENAMES:
            new = new.replace(old_name, new_name)
        converted[new] = value
        sources[new] = origin[key]
    return converted, sources, dropped


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    layout: str | None = None,
    target_keys: Collection[str] | None = None,
) -> dict[str, torch.Tensor]:
    """
    Rename a checkpoint's state dict to the parameter names of the current MONAI ``SwinUNETR``.

    Per layout: ``dae_official`` / ``monai_ssl`` drop ``encoder.mask_token`` and ``encoder.norm.*``, rename
    ``encoder.patch_embed.`` to ``swinViT.patch_embed.`` and ``encoder.layers{s}.0.0.`` to
    ``swinViT.layers{s}.0.``; ``swin_ssl`` prefixes ``patch_embed``/``layers{s}`` with ``swinViT.``;
    ``voco`` accepts ``swin_vit`` and unprefixed trunk keys; ``dae_bundle`` drops ``projection_head.*``.
    All layouts rename ``mlp.fc1/fc2`` to ``mlp.linear1/linear2`` and strip a ``module.`` (DDP) prefix.
    Tensors are not copied.

    Args:
        state_dict: the checkpoint's state dict (see :py:func:`read_checkpoint`).
        layout: one of :py:data:`LAYOUTS`; None detects it with :py:func:`detect_layout`.
        target_keys: the keys of the network to load into; when given, keys it lacks are removed (e.g. the
            ``conv3`` residual projections of ``encoder2/3/4/10`` that MONAI 0.8 had and MONAI >= 0.9 omits
            when input and output channels are equal).

    Returns:
        the renamed state dict.
    """
    layout = layout or detect_layout(state_dict)
    converted, _, _ = _convert(state_dict, layout)
    if target_keys is not None:
        target = set(target_keys)
        converted = {k: v for k, v in converted.items() if k in target}
    return converted


def infer_architecture(state_dict: Mapping[str, torch.Tensor]) -> dict[str, int | str | bool]:
    """
    The SwinUNETR options a converted state dict was trained with, read from its tensors: the feature size
    (the width of the first Swin block), the stem (the DAE authors' convolutional stem or MONAI's patchify
    convolution) and whether it has the SwinUNETR-v2 residual blocks (``swinViT.layers{s}c``).

    Args:
        state_dict: a state dict with current SwinUNETR names, as returned by :py:func:`convert_state_dict`.

    Returns:
        ``{"feature_size": int, "stem": "conv" | "patch", "use_v2": bool}``, the values of the bundle config
        keys of the same names that build a network these weights load into.

    Raises:
        ValueError: the state dict has no Swin transformer (no ``swinViT.layers1.0.blocks.0.norm1.weight``).
    """
    if _STAGE1_NORM_KEY not in state_dict:
        raise ValueError(
            f"cannot infer the architecture: the state dict has no '{_STAGE1_NORM_KEY}' (keys such as "
            f"{list(state_dict)[:6]}); convert it to SwinUNETR names first (convert_state_dict)."
        )
    return {
        "feature_size": int(state_dict[_STAGE1_NORM_KEY].shape[0]),
        "stem": checkpoint_stem(state_dict),
        "use_v2": any(k.startswith("swinViT.layers1c.") for k in state_dict),
    }


def checkpoint_stem(state_dict: Mapping[str, torch.Tensor] | Iterable[str]) -> str:
    """
    The stem a state dict was saved with, read from its key names: the DAE authors' convolutional stem
    (``patch_embed.proj.conv1/conv2.*`` under any prefix: ``encoder.`` in their checkpoint, ``swinViT.`` once
    converted or in a network's own state dict) or MONAI's patchify convolution.

    Args:
        state_dict: a state dict, or its keys.

    Returns:
        "conv" or "patch".
    """
    return "conv" if any(_CONV_STEM_PATTERN.search(key) for key in state_dict) else "patch"


def resolve_stem(setting: str, path: str | None = None) -> str:
    """
    Decide the stem of a network: the value of the bundle config key ``stem``. The bundle configs of the
    fine-tuning bundles, ``tools/convert_checkpoint.py`` and :py:func:`with_stem` decide through this function.
    The decision and its reason are logged.

    "patch" (MONAI's patchify convolution) and "conv" (the DAE authors' convolutional stem, needed for their
    checkpoint) are taken as given. "auto" follows the checkpoint the network is about to load
    (:py:func:`checkpoint_stem`): "conv" for the authors' checkpoint or a model fine-tuned from it, else "patch";
    "patch" when there is no checkpoint (empty ``path``) or the file does not exist yet.

    Args:
        setting: "patch", "conv" or "auto" (:py:data:`STEM_SETTINGS`).
        path: the checkpoint the network will load (``pretrained_path`` for training, ``models/model.pt`` for
            evaluation and inference); only read for "auto".

    Returns:
        "patch" or "conv".

    Raises:
        ValueError: ``setting`` is not one of :py:data:`STEM_SETTINGS`.
        FileNotFoundError, RuntimeError: for "auto", the checkpoint cannot be read (see :py:func:`read_checkpoint`).
    """
    if setting in ("patch", "conv"):
        stem, reason = setting, f"stem '{setting}'"
    elif setting == "auto":
        if not path:
            stem, reason = "patch", "stem 'auto' and no checkpoint to load"
        elif not os.path.isfile(path):
            stem, reason = "patch", f"stem 'auto' and no checkpoint file '{path}' (yet)"
        else:
            stem, reason = checkpoint_stem(read_checkpoint(path)), f"stem 'auto' follows '{path}'"
    else:
        raise ValueError(
            f"unknown value {setting!r} of the bundle config key 'stem': allowed values are {list(STEM_SETTINGS)}."
        )
    logger.info("%s stem (%s).", "convolutional" if stem == "conv" else "patchify", reason)
    return stem


def with_stem(network: nn.Module, setting: str, path: str | None = None) -> nn.Module:
    """
    Give a SwinUNETR-shaped network (with ``swinViT.patch_embed``) the stem :py:func:`resolve_stem` decides:
    for "conv", the authors' convolutional stem replaces the patchify convolution in place
    (``monai_dae.networks.use_conv_stem``), on that convolution's device; a network that already has it, or a
    "patch" decision, leaves the network as it is.

    Args:
        network: the network (a ``SwinUNETR``).
        setting: "patch", "conv" or "auto", see :py:func:`resolve_stem`.
        path: the checkpoint the network will load, for "auto".

    Returns:
        the same network.
    """
    if resolve_stem(setting, path) == "conv" and checkpoint_stem(network.state_dict()) == "patch":
        device = network.swinViT.patch_embed.proj.weight.device
        use_conv_stem(network)
        network.swinViT.patch_embed.proj.to(device)
    return network


def adapt_in_channels(
    weight_or_state_dict: torch.Tensor | Mapping[str, torch.Tensor],
    in_channels: int,
    keys: Iterable[str] = INPUT_WEIGHT_KEYS,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """
    Adapt convolution weights pretrained on 1-channel images to ``in_channels`` input channels.

    The single input-channel kernel is replicated over the ``N = in_channels`` channels and divided by ``N``:
    a network fed ``N`` identical copies of an image then computes exactly what the pretrained network
    computed on the image, and every channel starts from the same pretrained filter. Weights that already
    have ``N`` input channels are returned unchanged.

    Args:
        weight_or_state_dict: one convolution weight shaped (out, 1, *kernel), or a state dict, of which the
            ``keys`` present are adapted (other entries are passed through).
        in_channels: the number of input channels N of the target network.
        keys: state-dict keys holding input convolutions (default :py:data:`INPUT_WEIGHT_KEYS`: the patch
            embedding or conv stem, and the ``encoder1`` convolutions).

    Returns:
        the adapted weight, or a new state dict.

    Raises:
        ValueError: a weight has neither 1 nor ``in_channels`` input channels.
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be positive, got {in_channels}.")
    if isinstance(weight_or_state_dict, torch.Tensor):
        weight = weight_or_state_dict
        if weight.ndim < 3:
            raise ValueError(f"expected a convolution weight (out, in, *kernel), got shape {tuple(weight.shape)}.")
        if weight.shape[1] == in_channels:
            return weight
        if weight.shape[1] != 1:
            raise ValueError(
                f"cannot adapt a weight with {weight.shape[1]} input channels to {in_channels}: only 1-channel "
                "pretrained weights can be replicated."
            )
        repeats = [1, in_channels] + [1] * (weight.ndim - 2)
        return weight.repeat(*repeats) / in_channels
    result = dict(weight_or_state_dict)
    for key in keys:
        if key in result:
            result[key] = adapt_in_channels(result[key], in_channels)
    return result


def checkpoint_merging(state_dict: Mapping[str, torch.Tensor], layout: str | None = None) -> tuple[bool, str]:
    """
    The patch merging a checkpoint was trained with: the published layouts of
    :py:data:`LEGACY_MERGING_LAYOUTS` predate MONAI 1.5 (legacy merging); any other state dict used the legacy
    merging iff it records it in ``*.downsample.legacy_order`` buffers (:py:class:`LegacyPatchMerging`).

    Args:
        state_dict: a checkpoint's state dict (original or converted names).
        layout: its layout, one of :py:data:`LAYOUTS`; None detects it.

    Returns:
        ``(legacy, reason)``: whether it needs :py:class:`LegacyPatchMerging`, and why, in words.
    """
    layout = layout or detect_layout(state_dict)
    if layout in LEGACY_MERGING_LAYOUTS:
        return True, f"checkpoint layout '{layout}' was trained with MONAI < 1.5"
    if any(is_merging_record(k) for k in state_dict):
        return True, "the checkpoint records it in its '*.downsample.legacy_order' buffers"
    return False, f"checkpoint layout '{layout}' without '*.downsample.legacy_order' buffers, saved with MONAI >= 1.5"


def resolve_legacy_merging(setting: bool | str, path: str | None = None) -> bool:
    """
    Decide whether a network gets the patch merging of MONAI < 1.5 (:py:class:`LegacyPatchMerging`): the value
    of the bundle config key ``legacy_merging``. Every bundle config and ``tools/convert_checkpoint.py`` decide
    through this function. The decision and its reason are logged.

    ``True`` / ``False`` are taken as given. ``"auto"`` follows the checkpoint the network is about to load
    (see :py:func:`checkpoint_merging`): legacy for the published layouts ``dae_official``, ``monai_ssl``,
    ``swin_ssl`` and ``voco``; for a ``dae_bundle`` / SwinUNETR state dict (``models/model.pt``, a resumed
    checkpoint), legacy iff it has ``*.downsample.legacy_order`` buffers; MONAI's current merging when there is
    no checkpoint (empty ``path``) or the file does not exist yet (e.g. ``models/model.pt`` before training,
    whose load then fails on its own).

    Args:
        setting: ``True``, ``False`` or ``"auto"`` (:py:data:`LEGACY_MERGING_SETTINGS`).
        path: the checkpoint the network will load (``pretrained_path`` for training, ``models/model.pt`` for
            evaluation and inference); only read for ``"auto"``.

    Returns:
        True for the legacy merging.

    Raises:
        ValueError: ``setting`` is not one of :py:data:`LEGACY_MERGING_SETTINGS`; or, for ``"auto"``, the
            checkpoint's layout is not recognised (the message names the file and the setting).
        RuntimeError: for ``"auto"``, the checkpoint cannot be read.
    """
    if isinstance(setting, bool):
        legacy, reason = setting, f"legacy_merging {str(setting).lower()}"
    elif setting == "auto":
        if not path:
            legacy, reason = False, "legacy_merging 'auto' and no checkpoint to load"
        elif not os.path.isfile(path):
            legacy, reason = False, f"legacy_merging 'auto' and no checkpoint file '{path}' (yet)"
        else:
            state_dict = read_checkpoint(path)
            try:
                legacy, why = checkpoint_merging(state_dict)
            except ValueError as error:
                raise ValueError(
                    f"legacy_merging 'auto' cannot decide from checkpoint '{path}': {error} Set the bundle config "
                    "key 'legacy_merging' to true or false."
                ) from error
            reason = f"legacy_merging 'auto' follows '{path}': {why}"
    else:
        raise ValueError(
            f"unknown value {setting!r} of the bundle config key 'legacy_merging': allowed values are true, false "
            "and 'auto' (Python True, False, 'auto'; on the command line --legacy_merging True, False or auto)."
        )
    logger.info("%s patch merging (%s).", "legacy" if legacy else "current", reason)
    return legacy


def merging_module(setting: bool | str, path: str | None = None) -> str | type[nn.Module]:
    """
    SwinUNETR's ``downsample`` argument for a ``legacy_merging`` setting: what the bundle configs pass to
    ``SwinUNETR``, ``DAESwinUNETR`` and ``SwinClassifier``.

    Args:
        setting: ``True``, ``False`` or ``"auto"``, see :py:func:`resolve_legacy_merging`.
        path: the checkpoint the network will load, for ``"auto"``.

    Returns:
        :py:class:`monai_dae.networks.LegacyPatchMerging` for the legacy merging, else ``"merging"`` (MONAI's
        current ``PatchMerging``, SwinUNETR's default).
    """
    return LegacyPatchMerging if resolve_legacy_merging(setting, path) else "merging"


def _check_merging(report: LoadReport, converted: Mapping[str, torch.Tensor], network_legacy: bool) -> None:
    """
    Compare the patch merging a checkpoint was trained with to the network's: fill ``report.legacy_merging`` and
    ``report.merging``, raise a RuntimeError for a mismatch recorded in the checkpoint's keys, and warn when a
    published legacy checkpoint goes into a network with the current merging (``legacy_merging`` false).
    """
    path, layout = report.path, report.layout
    checkpoint_legacy, why = checkpoint_merging(converted, layout)
    recorded = any(is_merging_record(k) for k in converted)
    report.legacy_merging = network_legacy
    if recorded and not network_legacy:
        raise RuntimeError(
            f"checkpoint '{path}' (layout '{layout}') was saved from a network with the patch merging of MONAI < 1.5 "
            "(its '*.downsample.legacy_order' buffers record it), but the network uses the current merging: set the "
            "bundle config key 'legacy_merging' to 'auto' or true (or build the network with "
            "downsample=monai_dae.networks.LegacyPatchMerging)."
        )
    if network_legacy and not checkpoint_legacy:
        raise RuntimeError(
            f"checkpoint '{path}' (layout '{layout}') was saved with the current patch merging of MONAI >= 1.5 (it "
            "has no '*.downsample.legacy_order' buffers), but the network uses the legacy merging "
            "(LegacyPatchMerging): set the bundle config key 'legacy_merging' to 'auto' or false."
        )
    if checkpoint_legacy and not network_legacy:
        report.merging = (
            f"current patch merging, although {why} (legacy_merging false): features differ from the pretraining"
        )
        logger.warning(
            "checkpoint '%s' (layout '%s') was trained with the patch merging of MONAI < 1.5, but the network uses "
            "the current merging (legacy_merging false): its features from the first patch merging on will differ "
            "from the pretraining. Set the bundle config key 'legacy_merging' to 'auto' or true to reproduce them.",
            path,
            layout,
        )
    else:
        report.merging = f"{'legacy' if network_legacy else 'current'} patch merging ({why})"


def _unwrap(network: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers."""
    while isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        network = network.module
    return network


def load_pretrained(
    network: nn.Module,
    path: str,
    load_decoder: bool = True,
    layout: str | None = None,
    switch_stem: bool = False,
    require_backbone: bool = True,
    load_head: bool = False,
    prefix: str = "",
    map_location: str | torch.device = "cpu",
) -> LoadReport:
    """
    Load pretrained weights of any supported layout into a SwinUNETR-shaped network, count what happened,
    log it, and fail loudly when the backbone did not load.

    What is loaded: the Swin transformer (``swinViT.*``) always; with ``load_decoder`` also the convolutional
    skip encoders (``encoder1..4``, ``encoder10``) and the decoder (``decoder1..5``); the output head
    (``out.*``) only with ``load_head``. Tensors whose name is absent from the network or whose shape differs
    are skipped with the reason, except 1-channel input convolutions loaded into a multi-channel network,
    which are adapted with :py:func:`adapt_in_channels`.

    The patch merging of the network must be the one the checkpoint was trained with (see
    :py:func:`checkpoint_merging`; build the network with :py:func:`merging_module`): a checkpoint recording the
    legacy merging into a network with the current one, or a ``dae_bundle`` checkpoint without that record into a
    network with ``LegacyPatchMerging``, is refused; a published legacy layout into a network with the current
    merging (``legacy_merging`` false, the user's choice) loads with a warning that the features will differ.
    The report says which merging the network uses and why.

    The authors' official DAE checkpoint uses a convolutional stem: the network must have it too
    (:py:func:`with_stem`, or ``stem: "conv"`` / ``"auto"`` in the bundle configs). With ``switch_stem=True``
    the stem of ``network`` is replaced in place instead, before the weights load (do it before creating the
    optimizer).

    Args:
        network: the target network (a ``SwinUNETR`` or a module holding its blocks under ``prefix``);
            DDP / DataParallel wrappers are unwrapped.
        path: checkpoint file.
        load_decoder: also load ``encoder1..4``, ``encoder10`` and ``decoder1..5``.
        layout: one of :py:data:`LAYOUTS`; None detects it.
        switch_stem: replace the network's patchify stem by the conv stem when the checkpoint has one.
        require_backbone: raise when a ``swinViT`` tensor of the network is not loaded, or a ``swinViT``
            tensor of the checkpoint finds no place in the network.
        load_head: also load ``out.*`` when the shapes match (off: the task head is new).
        prefix: where the SwinUNETR blocks sit inside ``network`` (e.g. ``"backbone."``).
        map_location: device the checkpoint is read onto.

    Returns:
        the :py:class:`LoadReport`.

    Raises:
        FileNotFoundError, RuntimeError, ValueError: unreadable file or unknown layout (see
            :py:func:`read_checkpoint`, :py:func:`detect_layout`); RuntimeError when the stems or the patch
            mergings differ, or the backbone did not load fully.
    """
    raw = read_checkpoint(path, map_location=map_location)
    try:
        layout = layout or detect_layout(raw)
    except ValueError as error:
        raise ValueError(f"checkpoint '{path}': {error}") from error
    converted, sources, dropped = _convert(raw, layout)
    model = _unwrap(network)

    target = {k[len(prefix) :]: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    ckpt_conv_stem, net_conv_stem = checkpoint_stem(converted) == "conv", checkpoint_stem(target) == "conv"
    if ckpt_conv_stem and not net_conv_stem:
        if not switch_stem:
            raise RuntimeError(
                f"checkpoint '{path}' (layout '{layout}') was pretrained with the DAE authors' convolutional stem "
                "but the network has MONAI's patchify stem: set the bundle config key 'stem' to 'conv' "
                "(--stem conv) or 'auto', call monai_dae.weights.with_stem(network, 'conv') before loading, or "
                "pass switch_stem=True."
            )
        with_stem(model.get_submodule(prefix[:-1]) if prefix else model, "conv")
        logger.info("switched the network to the DAE convolutional stem to load '%s'.", path)
        target = {k[len(prefix) :]: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    elif net_conv_stem and not ckpt_conv_stem and _PATCH_STEM_KEY in converted:
        raise RuntimeError(
            f"checkpoint '{path}' (layout '{layout}') has MONAI's patchify stem but the network has the DAE "
            "convolutional stem: set the bundle config key 'stem' to 'patch' (the default) or 'auto'."
        )

    report = LoadReport(path=str(path), layout=layout)
    _check_merging(report, converted, network_legacy=any(is_merging_record(k) for k in target))
    for key, reason in dropped.items():
        report.skipped.append(key)
        report.skip_reasons[key] = reason
    to_load: dict[str, torch.Tensor] = {}
    for key, value in converted.items():
        reason = None
        if key.startswith("out.") and not load_head:
            reason = "output head (new for this task)"
        elif not key.startswith(_BACKBONE_PREFIX) and not load_decoder:
            reason = "load_decoder=False"
        elif key not in target:
            if key.startswith(_NO_PROJECTION_BLOCKS) and (".conv3." in key or ".norm3." in key):
                reason = "residual projection absent in MONAI >= 0.9 (input channels = output channels)"
            elif key.startswith(("swinViT.layers1c.", "swinViT.layers2c.", "swinViT.layers3c.", "swinViT.layers4c.")):
                reason = "SwinUNETR-v2 block, the network has use_v2=False"
            else:
                reason = "no such tensor in the network"
        elif value.shape != target[key].shape:
            if key in INPUT_WEIGHT_KEYS and value.shape[1] == 1 and value.shape[2:] == target[key].shape[2:]:
                value = adapt_in_channels(value, target[key].shape[1])
                report.adapted.append(key)
            else:
                reason = f"shape {tuple(value.shape)} in the checkpoint, {tuple(target[key].shape)} in the network"
        if reason is None:
            to_load[prefix + key] = value
            report.loaded.append(key)
        else:
            report.skipped.append(key)
            report.skip_reasons[key] = reason
    loaded = set(report.loaded)
    # the merging records of a legacy network keep their constant value when the checkpoint has none (published)
    report.missing = [k for k in target if k not in loaded and not is_merging_record(k)]

    if require_backbone:
        _check_backbone(report, target, path, layout)
    incompatible = model.load_state_dict(to_load, strict=False)
    if incompatible.unexpected_keys:  # cannot happen: every key was checked against the network
        raise RuntimeError(f"unexpected keys while loading '{path}': {incompatible.unexpected_keys}")
    logger.info(report.summary())
    return report


def _check_backbone(report: LoadReport, target: Mapping[str, torch.Tensor], path: str, layout: str) -> None:
    """Raise a RuntimeError with hints when the Swin transformer did not load completely."""
    backbone = [k for k in target if k.startswith(_BACKBONE_PREFIX)]
    if not backbone:
        raise RuntimeError(f"the network has no '{_BACKBONE_PREFIX}*' tensors: it is not a SwinUNETR (pass prefix=).")
    missing = [k for k in backbone if k in report.missing]
    unused = [k for k in report.skipped if k.startswith(_BACKBONE_PREFIX)]
    if not missing and not unused:
        return
    hints = []
    if any("layers1c" in k for k in missing):
        hints.append("the network has use_v2=True but the checkpoint has no SwinUNETR-v2 blocks: set use_v2 false")
    if any("layers1c" in k for k in unused):
        hints.append("the checkpoint has SwinUNETR-v2 blocks (e.g. VoCo): build the network with use_v2=True")
    if any("shape" in report.skip_reasons.get(k, "") for k in unused):
        hints.append(
            "tensor shapes differ: check feature_size, depths, num_heads and window_size against the pretraining"
        )
    details = "; ".join(f"{k}: {report.skip_reasons[k]}" for k in unused[:4])
    raise RuntimeError(
        f"the Swin transformer backbone did not load from '{path}' (layout '{layout}'): "
        f"{len(missing)} of {len(backbone)} swinViT tensors of the network received nothing"
        + (f" (e.g. {missing[:4]})" if missing else "")
        + (f", {len(unused)} swinViT tensors of the checkpoint were not used ({details})" if unused else "")
        + "."
        + (" Hint: " + "; ".join(hints) + "." if hints else "")
    )
