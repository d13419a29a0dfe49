"""
Up-front checks of a bundle's top-level settings: a value the run cannot use stops it before any data is read
or any network is built, with a message that names the config key, the value and what to set instead.

The bundle configs call :py:func:`check_settings` first in their ``initialize`` list, with the keys they have::

    "settings_check": "$monai_dae.settings.check_settings(roi_size=@roi_size, feature_size=@feature_size, ...)"
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from monai_dae.modalities import DEFAULT_MODALITIES, MODALITY_ALIASES, canonical_modality

__all__ = ["SWIN_STRIDE", "SettingsError", "check_settings"]

SWIN_STRIDE = 32
"""Total downsampling of the Swin UNETR encoder: every spatial size of its input must be a multiple of it."""

_POSITIVE = ("batch_size", "crops_per_volume", "num_samples", "sw_batch_size", "max_epochs", "val_interval")
_NON_NEGATIVE = ("num_workers",)


class SettingsError(ValueError):
    """A bundle setting the run cannot use; the message names the config key."""


def _fail(key: str, value: Any, problem: str) -> None:
    raise SettingsError(f"bundle config key '{key}' = {value!r}: {problem}")


def _check_integer(key: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(key, value, f"expected an integer >= {minimum} (--{key} N on the command line).")


def _check_crop(key: str, value: Any, needs_decoder: bool) -> None:
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 3
        or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in value)
    ):
        _fail(key, value, 'expected three positive integers, e.g. "[96,96,96]".')
    if any(v % SWIN_STRIDE for v in value):
        fitted = [max(SWIN_STRIDE, SWIN_STRIDE * round(v / SWIN_STRIDE)) for v in value]
        _fail(key, value, f"every size must be a multiple of {SWIN_STRIDE} for the Swin UNETR encoder, e.g. {fitted}.")
    if needs_decoder and all(v == SWIN_STRIDE for v in value):
        _fail(
            key,
            value,
            f"a {SWIN_STRIDE}^3 crop leaves a 1-voxel bottleneck, which the Swin UNETR decoder's instance norm "
            "cannot train on: use at least 64 in one dimension (64^3 or more recommended).",
        )


def _check_modalities(value: Any) -> None:
    known = sorted(set(DEFAULT_MODALITIES) | set(MODALITY_ALIASES))
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        _fail("modalities", value, f'expected a non-empty list of modality names, e.g. ["ct", "t1"] (known: {known}).')
    names = [canonical_modality(str(name)) for name in value]
    unknown = [str(v) for v, n in zip(value, names) if n not in DEFAULT_MODALITIES]
    if unknown:
        _fail("modalities", value, f"unknown modality name(s) {unknown}; known names: {known}.")
    if len(set(names)) != len(names):
        _fail("modalities", value, f"names repeat after canonicalisation ({names}): each modality once.")


def check_settings(**settings: Any) -> dict[str, Any]:
    """
    Check the top-level settings of a bundle, each by what its key means:

    - ``roi_size`` (training crops and sliding windows of a Swin UNETR with a decoder): three positive multiples
      of 32, not all 32 (a 1-voxel bottleneck cannot be instance-normalised);
    - ``spatial_size`` (classification input, encoder only): three positive multiples of 32;
    - ``feature_size``: a positive multiple of 12 (the Swin UNETR attention heads need it);
    - ``batch_size``, ``crops_per_volume``, ``num_samples``, ``sw_batch_size``, ``max_epochs``, ``val_interval``:
      positive integers; ``num_workers``: a non-negative integer;
    - ``modalities``: known modality names, each once;
    - ``datalist``: an existing data-list file (a path, not a list); an empty string means none.

    Keys not listed are ignored, so every bundle passes the keys it has.

    Args:
        settings: config key -> value.

    Returns:
        the settings, unchanged (so a config can reference the checked values).

    Raises:
        SettingsError: a value is out of range; the message names the key, the value and a valid choice.
    """
    for key in ("roi_size", "spatial_size"):
        if key in settings:
            _check_crop(key, settings[key], needs_decoder=key == "roi_size")
    if "feature_size" in settings:
        value = settings["feature_size"]
        _check_integer("feature_size", value, 1)
        if value % 12:
            _fail("feature_size", value, f"must be a multiple of 12 (48 in the paper; 12 or 24 for small runs), e.g. {max(12, 12 * round(value / 12))}.")
    for key in _POSITIVE:
        if key in settings:
            _check_integer(key, settings[key], 1)
    for key in _NON_NEGATIVE:
        if key in settings:
            _check_integer(key, settings[key], 0)
    if "modalities" in settings:
        _check_modalities(settings["modalities"])
    if settings.get("datalist", "") != "":
        value = settings["datalist"]
        if not isinstance(value, (str, os.PathLike)):
            _fail("datalist", value, "expected the path of a JSON data list file.")
        if not os.path.isfile(value):
            _fail("datalist", value, "no such data list file (check --datalist and --dataset_dir).")
    return settings
