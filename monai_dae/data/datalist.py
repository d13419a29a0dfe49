"""Data lists: load, resolve and check them before any training starts."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np

from monai_dae.modalities import DEFAULT_MODALITIES, canonical_modality, infer_modality

__all__ = ["load_datalist", "check_image_file", "inference_data", "labelled_subset"]

_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def check_image_file(path: str, channels: int | None = 1) -> None:
    """
    Check that an image file exists and, for NIfTI, that its header is readable and that it holds a 3-D
    volume with the expected number of channels (dimensions after the third, as NIfTI stores them).

    Args:
        path: image path.
        channels: expected channel count; None skips the shape check.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the NIfTI header cannot be read, a dimension has size zero, or the volume is not 3-D with
            ``channels`` channels (the message names the file and the cause).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: '{path}'.")
    if not path.endswith(_NIFTI_SUFFIXES):
        return
    try:
        shape = nib.load(path).header.get_data_shape()
    except Exception as error:
        raise ValueError(f"unreadable NIfTI file '{path}': {error}") from error
    if 0 in tuple(shape):
        raise ValueError(f"zero-size dimension in '{path}': shape {tuple(shape)}; the volume is empty, re-export it.")
    if channels is None:
        return
    found = int(np.prod(shape[3:])) if len(shape) > 3 else 1
    if len(shape) < 3 or found != channels:
        raise ValueError(f"wrong channel count in '{path}': shape {tuple(shape)} holds {found} channel(s) of a 3-D volume, expected {channels}.")


def load_datalist(
    datalist: str,
    dataset_dir: str | None = None,
    key: str = "training",
    file_keys: Sequence[str] = ("image",),
    modalities: Sequence[str] | None = DEFAULT_MODALITIES,
    check_files: bool = True,
    channels: int | None = 1,
) -> list[dict[str, Any]]:
    """
    Read one list of a JSON data list (``{"training": [{"image": path, "modality": name}, ...], ...}``),
    resolve relative paths against ``dataset_dir`` and check every entry, so that bad input fails before
    training with a message naming the data list, the entry and the problem.

    Args:
        datalist: path of the JSON data list.
        dataset_dir: directory relative paths are resolved against (default: the data list's directory).
        key: the list to read ("training", "validation", "test", ...).
        file_keys: entry keys holding file paths.
        modalities: known modality names; each entry's ``modality`` (or, if absent, the modality inferred
            from its file name) must be one of them. None skips the check.
        check_files: check that every file exists and that NIfTI headers are readable.
        channels: channels each NIfTI file must hold (None: any); see :py:func:`check_image_file`.

    Returns:
        the entries, with absolute paths and, when ``modalities`` is given, each entry's canonical modality
        name under ``modality``.
    """
    if not os.path.isfile(datalist):
        raise FileNotFoundError(f"data list not found: '{datalist}'.")
    try:
        with open(datalist) as f:
            content = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"data list '{datalist}' is not valid JSON: {error}") from error
    if not isinstance(content, dict) or key not in content:
        found = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise ValueError(f"data list '{datalist}' has no '{key}' list (found: {found}).")
    entries = content[key]
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"the '{key}' list of data list '{datalist}' is empty: it needs at least one entry.")
    base = dataset_dir if dataset_dir is not None else os.path.dirname(os.path.abspath(datalist))
    known = None if modalities is None else [canonical_modality(m) for m in modalities]
    resolved = []
    for index, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {file_keys[0]: entry}
        item = dict(entry)
        for file_key in file_keys:
            if file_key not in item:
                raise ValueError(f"entry {index} of '{key}' in data list '{datalist}' has no '{file_key}'.")
            item[file_key] = os.path.abspath(os.path.join(base, os.path.expanduser(str(item[file_key]))))
            if check_files:
                check_image_file(item[file_key], channels)
        if known is not None:
            source = item[file_keys[0]]
            name = canonical_modality(str(item["modality"])) if item.get("modality") else infer_modality(source, known)
            if name not in known:
                raise ValueError(f"unknown modality '{item['modality']}' for '{source}' in data list '{datalist}'; known: {known}.")
            item["modality"] = name
        resolved.append(item)
    return resolved


def inference_data(
    image: str = "",
    datalist: str | Sequence[Any] = "",
    dataset_dir: str | None = None,
    key: str = "test",
    found: Sequence[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    """
    The items an inference config runs on, from whichever source the user gave: one ``image`` file, a data
    list (the path of a JSON data list, whose ``key`` list is read with :py:func:`load_datalist`, or a list of
    entries given in Python), or else the images ``found`` in the data set folder.

    Args:
        image: one image path (takes precedence).
        datalist: a JSON data-list path, or a list of ``{"image": path}`` entries (or of paths).
        dataset_dir: directory relative paths of a data-list file are resolved against.
        key: the list of a data-list file to read ("test", "validation", ...).
        found: the default items.

    Returns:
        the items, ``[{"image": absolute path, ...}, ...]``.

    Raises:
        FileNotFoundError, ValueError: see :py:func:`load_datalist`; ValueError when there is nothing to infer.
    """
    if image:
        return [{"image": os.path.abspath(image)}]
    if isinstance(datalist, str) and datalist:
        return load_datalist(datalist, dataset_dir, key, modalities=None)
    if datalist:
        return [dict(item) if isinstance(item, dict) else {"image": str(item)} for item in datalist]
    if not found:
        raise ValueError(
            f"nothing to infer: no --image, no --datalist and no image found under dataset_dir '{dataset_dir}'."
        )
    return list(found)


def labelled_subset(
    entries: Sequence[dict[str, Any]], fraction: float = 1.0, seed: int = 0, stratify_key: str | None = None
) -> list[dict[str, Any]]:
    """
    A seeded fraction of the labelled training entries, for label-efficiency studies: the entries (of each
    ``stratify_key`` value separately) are shuffled once by ``seed`` and the first ``max(1, round(fraction * n))``
    are kept, so that for one seed a smaller fraction is a subset of a larger one. The kept entries stay in
    their original order.

    Args:
        entries: the training entries.
        fraction: the fraction to keep, in (0, 1]; 1 keeps every entry.
        seed: the shuffling seed.
        stratify_key: keep the fraction of every value of this entry key (e.g. the class ``label``).

    Returns:
        the kept entries.

    Raises:
        ValueError: ``fraction`` is not in (0, 1].
    """
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"the labelled fraction must be in (0, 1], got {fraction}.")
    if float(fraction) == 1.0:
        return list(entries)
    groups: dict[Any, list[int]] = {}
    for index, entry in enumerate(entries):
        groups.setdefault(entry.get(stratify_key) if stratify_key else None, []).append(index)
    rng = np.random.RandomState(seed)
    kept: list[int] = []
    for value in sorted(groups, key=str):
        members = groups[value]
        order = rng.permutation(len(members))
        kept += [members[i] for i in order[: max(1, int(round(fraction * len(members))))]]
    return [entries[i] for i in sorted(kept)]
