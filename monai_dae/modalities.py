"""Modality names: the canonical spellings, their integer labels and inference from file names.

Free of MONAI imports so that data tools start fast.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

__all__ = ["DEFAULT_MODALITIES", "MODALITY_ALIASES", "canonical_modality", "infer_modality"]

DEFAULT_MODALITIES: tuple[str, ...] = ("ct", "t1", "t1ce", "t2", "flair")
"""Modality names in label order: the label of a modality is its index here."""

MODALITY_ALIASES: dict[str, str] = {
    "t1c": "t1ce",
    "t1gd": "t1ce",
    "t1ce": "t1ce",
    "t1n": "t1",
    "t1w": "t1",
    "t2w": "t2",
    "t2f": "flair",
}
"""Other spellings (BraTS 2018-2023 file suffixes) mapped onto the canonical names."""

_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm", ".npy")


def canonical_modality(name: str) -> str:
    """
    Canonical spelling of a modality name: lower case, aliases resolved (``T1Gd`` -> ``t1ce``).

    Args:
        name: modality name as written in a data list or a file name.

    Returns:
        the canonical name.
    """
    key = name.strip().lower()
    return MODALITY_ALIASES.get(key, key)


def infer_modality(path: str, modalities: Sequence[str] = DEFAULT_MODALITIES) -> str:
    """
    Infer the modality from a file name, by whole tokens of the base name (``case_t1ce.nii.gz`` is ``t1ce``,
    never ``t1``). Used only when a data list entry has no ``modality`` field.

    Args:
        path: image file path.
        modalities: the known modality names.

    Returns:
        the canonical modality name.

    Raises:
        ValueError: no token, or more than one, names a known modality.
    """
    base = os.path.basename(str(path)).lower()
    for suffix in _IMAGE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    known = set(modalities)
    found = {canonical_modality(t) for t in re.split(r"[^a-z0-9]+", base) if canonical_modality(t) in known}
    if len(found) != 1:
        problem = "no token names a modality" if not found else f"several modalities match {sorted(found)}"
        raise ValueError(
            f"cannot infer the modality of '{path}' from its file name ({problem}); known modalities: "
            f"{list(modalities)}. Add a 'modality' field to its data list entry."
        )
    return found.pop()
