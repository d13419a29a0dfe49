"""Modality names: the canonical spellings, their integer labels and inference from file names.

Free of MONAI imports so that data tools start fast.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

__all__ = [
    "DEFAULT_MODALITIES",
    "MODALITY_ALIASES",
    "canonical_modality",
    "infer_modality",
    "modality_from_path",
    "modality_tokens",
    "subject_stem",
]

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


def _stem(name: str) -> str:
    """A file or folder name in lower case without its image suffix (``Case_T1.nii.gz`` -> ``case_t1``)."""
    base = os.path.basename(str(name).rstrip("/\\")).lower()
    for suffix in _IMAGE_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def _tokens(stem: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9]+", stem) if t]


def modality_tokens(name: str, modalities: Sequence[str] = DEFAULT_MODALITIES) -> set[str]:
    """
    The known modalities named by whole tokens of a file or folder name, or of any text (a NIfTI header's
    ``descrip``): tokens are the runs of letters and digits, compared after :py:func:`canonical_modality`, so
    ``case_t1ce.nii.gz`` names ``t1ce`` only (never ``t1``) and ``BraTS-GLI-00000-000-t2f`` names ``flair``.

    Args:
        name: a path (only its last component is read), a folder name or a header text.
        modalities: the known modality names.

    Returns:
        the canonical names found (empty: none; more than one: ambiguous).
    """
    known = {canonical_modality(m) for m in modalities}
    return {canonical_modality(t) for t in _tokens(_stem(name)) if canonical_modality(t) in known}


def subject_stem(path: str, modalities: Sequence[str] = DEFAULT_MODALITIES) -> str:
    """
    A file name with its image suffix and its modality tokens removed: the files of one subject share it
    (``BraTS2021_00000_t1ce.nii.gz`` and ``BraTS2021_00000_flair.nii.gz`` give ``brats2021_00000``).

    Args:
        path: image file path.
        modalities: the known modality names.

    Returns:
        the remaining tokens joined by ``_`` (the whole stem when every token names a modality).
    """
    known = {canonical_modality(m) for m in modalities}
    stem = _stem(path)
    kept = [t for t in _tokens(stem) if canonical_modality(t) not in known]
    return "_".join(kept) or stem


def modality_from_path(path: str, modalities: Sequence[str] = DEFAULT_MODALITIES, root: str | None = None) -> str | None:
    """
    The modality a path names: by the tokens of the file name (see :py:func:`modality_tokens`), or, when the
    file name names none, of its folders, nearest first, up to ``root`` (``ct/lung_001.nii.gz`` is ``ct``).

    Args:
        path: image file path.
        modalities: the known modality names.
        root: the folder the search stops at (its own name and those above it are not read); None: every
            folder of ``path``.

    Returns:
        the canonical modality name, or None when no component names a modality.

    Raises:
        ValueError: the first component that names a modality names several (the message names the file).
    """
    relative = os.path.relpath(str(path), root) if root else str(path)
    parts = [p for p in re.split(r"[\\/]+", relative) if p and p not in (".", "..")]
    for part in reversed(parts):
        found = modality_tokens(part, modalities)
        if len(found) > 1:
            raise ValueError(
                f"cannot infer the modality of '{path}': '{part}' names several modalities {sorted(found)}; "
                "give it explicitly (a 'modality' field, or an override)."
            )
        if found:
            return found.pop()
    return None


def infer_modality(path: str, modalities: Sequence[str] = DEFAULT_MODALITIES) -> str:
    """
    Infer the modality from a file name, by whole tokens of the base name (``case_t1ce.nii.gz`` is ``t1ce``,
    never ``t1``; see :py:func:`modality_tokens`). Used only when a data list entry has no ``modality`` field.

    Args:
        path: image file path.
        modalities: the known modality names.

    Returns:
        the canonical modality name.

    Raises:
        ValueError: no token, or more than one, names a known modality.
    """
    found = modality_tokens(path, modalities)
    if len(found) != 1:
        problem = "no token names a modality" if not found else f"several modalities match {sorted(found)}"
        raise ValueError(
            f"cannot infer the modality of '{path}' from its file name ({problem}); known modalities: "
            f"{list(modalities)}. Add a 'modality' field to its data list entry."
        )
    return found.pop()
