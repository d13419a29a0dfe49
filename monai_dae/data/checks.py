"""
Full-read checks of a data list's files, before training and at load time.

The header checks of :py:func:`monai_dae.data.load_datalist` and :py:func:`monai_dae.data.brats.validate_subjects`
are cheap and always on; they cannot see a truncated ``.nii.gz`` (the header is intact), non-finite voxels or
bad label values. The functions here read every voxel:

- :py:func:`check_file` reads one NIfTI file with nibabel, decompressing all of it, and checks that it is
  readable, 3-D with the expected channels, has no zero-size dimension and holds only finite values; for a
  label map, that its values are integers in ``0 .. num_classes - 1`` (float labels with integral values are
  accepted with a warning).
- :py:func:`check_entries` runs it over a data list, compares label and image shapes, and reports every
  problem at once, each with the file and the data list entry (index and fields).
- :py:func:`check_bundle_data` is the bundles' ``initialize`` hook (``check_data``, ``nonfinite_inputs``).
- :py:func:`check_values` is shared with the load-time check of
  :py:class:`monai_dae.transforms.LoadImageNamed`, so both report a problem with the same words.

Free of MONAI imports so that the data tools start fast.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np

from monai_dae.progress import progress_enabled

__all__ = [
    "NONFINITE_POLICIES",
    "DataCheckError",
    "describe_entry",
    "check_values",
    "check_file",
    "check_entries",
    "check_bundle_data",
]

logger = logging.getLogger(__name__)

NONFINITE_POLICIES = ("error", "skip")
"""What to do with an entry holding NaN or Inf voxels: stop with an error, or leave the entry out with a warning."""

NONFINITE = "non-finite voxels"
"""Marker of a non-finite problem (the only kind ``nonfinite="skip"`` drops instead of raising)."""

_MAX_REPORTED = 20
_FIX = (
    "Fix or re-export the file(s), or remove the entries from the data list "
    "(`python -m tools.check_data --datalist <list.json>` lists them all)."
)


class DataCheckError(ValueError):
    """
    Files of a data list are unusable; ``problems`` lists the messages (each names the file and the entry).

    Args:
        message: the whole message (a single argument, so that the error survives a DataLoader worker).
        problems: the individual problems, when known.
    """

    def __init__(self, message: str, problems: Sequence[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems) if problems is not None else [message]

    @classmethod
    def from_problems(cls, problems: Sequence[str], source: str = "") -> DataCheckError:
        """The error listing ``problems`` (at most 20 shown) found in ``source`` (a data list, for the message)."""
        shown = [f"  {problem}" for problem in problems[:_MAX_REPORTED]]
        if len(problems) > _MAX_REPORTED:
            shown.append(f"  ... and {len(problems) - _MAX_REPORTED} more")
        where = f" in {source}" if source else ""
        return cls(f"{len(problems)} problem(s) with the data{where}:\n" + "\n".join(shown) + f"\n{_FIX}", problems)


def describe_entry(entry: Mapping[str, Any] | None, index: int | None = None) -> str:
    """
    A short name of a data list entry for messages: its index and its identifying fields.

    Args:
        entry: the entry (its ``subject``, ``image``, ``label`` and ``modality`` fields are shown when present).
        index: its position in the list, when known.

    Returns:
        e.g. ``entry 3 (image='imagesTr/img0004.nii.gz', label='labelsTr/label0004.nii.gz')``.
    """
    fields = []
    for key in ("subject", "image", "label", "modality"):
        value = entry.get(key) if isinstance(entry, Mapping) else None
        if isinstance(value, (str, os.PathLike)) or key == "subject" and value is not None:
            fields.append(f"{key}='{value}'")
    head = "entry" if index is None else f"entry {index}"
    return f"{head} ({', '.join(fields)})" if fields else head


def check_values(
    array: Any, path: str, label: bool = False, num_classes: int | None = None, float_dtype: bool = False
) -> tuple[list[str], list[str]]:
    """
    Check the voxel values of one loaded volume.

    Args:
        array: the voxels (NumPy array or torch tensor, any shape).
        path: the file they come from, for the messages.
        label: the volume is a label map: its values must be integers in ``0 .. num_classes - 1``.
        num_classes: number of classes of a label map (None: any non-negative integer).
        float_dtype: the file stores the label map as floats (a warning when its values are integral).

    Returns:
        ``(problems, warnings)``: messages naming the file. A non-finite problem contains "non-finite voxels".
    """
    values = array.detach().cpu().numpy() if hasattr(array, "detach") else np.asarray(array)
    problems: list[str] = []
    warnings: list[str] = []
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        if not finite.all():
            nan, total = int(np.isnan(values).sum()), int(values.size)
            inf = total - int(finite.sum()) - nan
            problems.append(
                f"'{path}': {NONFINITE} ({nan} NaN and {inf} Inf of {total}); repair the file, or set "
                "nonfinite_inputs to 'skip' to leave such entries out"
            )
            return problems, warnings
    if not label or values.size == 0:
        return problems, warnings
    low, high = values.min(), values.max()
    if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
        fractional = np.unique(values[values != np.round(values)])[:5].tolist()
        problems.append(
            f"'{path}': label map holds non-integer values (e.g. {fractional}); a label map stores class "
            "indices: re-export it with nearest-neighbour interpolation and an integer type"
        )
    elif low < 0 or (num_classes is not None and high > num_classes - 1):
        unique = np.unique(values)
        bad = unique[(unique < 0) | (unique > (num_classes - 1 if num_classes is not None else np.inf))]
        allowed = f"0..{num_classes - 1}" if num_classes is not None else "non-negative"
        problems.append(
            f"'{path}': label values {[int(v) for v in bad[:5]]} outside the classes {allowed}; "
            "check the label map, or num_classes"
        )
    elif float_dtype:
        warnings.append(f"'{path}': label map stored as {values.dtype} with integral values; used as integer labels")
    return problems, warnings


def check_file(
    path: str, channels: int | None = 1, label: bool = False, num_classes: int | None = None
) -> tuple[list[str], list[str], tuple[int, ...] | None]:
    """
    Read one NIfTI file completely (decompressing all of it) and check it.

    Args:
        path: the file.
        channels: channels it must hold (dimensions after the third, as NIfTI stores them); None: any.
        label: the file is a label map (see :py:func:`check_values`).
        num_classes: number of classes of a label map.

    Returns:
        ``(problems, warnings, spatial shape)``; the shape is None when the file cannot be read.
    """
    if not os.path.isfile(path):
        return [f"'{path}': file not found"], [], None
    try:
        image = nib.load(path)
        shape = tuple(int(s) for s in image.shape)
        if len(shape) < 3 or 0 in shape:
            return [f"'{path}': shape {shape} is not a 3-D volume with non-zero size in every dimension"], [], None
        values = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel, gzip and zlib raise several types for broken files
        return [f"'{path}': unreadable ({type(error).__name__}: {error}); the file is truncated or corrupt"], [], None
    found = int(np.prod(shape[3:])) if len(shape) > 3 else 1
    if channels is not None and found != channels:
        problems = [f"'{path}': shape {shape} holds {found} channel(s) of a 3-D volume, expected {channels}"]
        return problems, [], shape[:3]
    float_dtype = image.get_data_dtype().kind == "f" or values.dtype.kind == "f"
    problems, warnings = check_values(values, path, label=label, num_classes=num_classes, float_dtype=float_dtype)
    return problems, warnings, shape[:3]


def _paths(value: Any) -> list[str]:
    if isinstance(value, (str, os.PathLike)):
        return [str(value)]
    if isinstance(value, Sequence):
        return [str(v) for v in value]
    return []


def check_entries(
    entries: Sequence[Mapping[str, Any]],
    image_keys: Sequence[str] = ("image",),
    label_key: str | None = None,
    num_classes: int | None = None,
    channels: int | None = 1,
    nonfinite: str = "error",
    source: str = "",
    progress: bool | None = None,
) -> tuple[list[int], list[str], list[str]]:
    """
    Read and check every file of a data list: see :py:func:`check_file`; also, in each entry, every image and
    the label must have the same spatial shape.

    Args:
        entries: data list entries with resolved paths; an image key may hold a list of paths (one per channel).
        image_keys: entry keys holding image paths.
        label_key: entry key holding a label map path (None: no label file).
        num_classes: number of classes of the label maps.
        channels: channels each image file must hold (None: any).
        nonfinite: "error": a non-finite voxel is a problem; "skip": the entry is dropped with a warning.
        source: the list's name, for the progress bar.
        progress: show a progress bar; None: when stderr is a terminal (:py:func:`monai_dae.progress.progress_enabled`).

    Returns:
        ``(kept, problems, warnings)``: the indices of the entries to keep, and the messages, each naming the
        file and the entry.
    """
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite_inputs must be one of {list(NONFINITE_POLICIES)}, got '{nonfinite}'.")
    from tqdm import tqdm

    keys = [*image_keys, *([label_key] if label_key else [])]
    total = sum(len(_paths(entry.get(k))) for entry in entries for k in keys)
    kept, problems, warnings = [], [], []
    with tqdm(total=total, desc=f"checking {source or 'data'}", unit="file", disable=not progress_enabled(progress)) as bar:
        for index, entry in enumerate(entries):
            name = describe_entry(entry, index)
            entry_problems, skipped, shapes = [], [], {}
            for key in keys:
                for path in _paths(entry.get(key)):
                    is_label = key == label_key
                    found, warned, shape = check_file(path, 1 if is_label else channels, is_label, num_classes)
                    bar.update(1)
                    warnings += [f"{name}: {message}" for message in warned]
                    for message in found:
                        (skipped if nonfinite == "skip" and NONFINITE in message else entry_problems).append(message)
                    if shape is not None:
                        shapes[path] = shape
            if shapes and not entry_problems:
                first, reference = next(iter(shapes.items()))
                for path, shape in shapes.items():
                    if shape != reference:
                        entry_problems.append(f"'{path}': spatial shape {shape} differs from {reference} of '{first}'")
            problems += [f"{name}: {message}" for message in entry_problems]
            if skipped and not entry_problems:
                warnings += [f"skipped {name}: {message}" for message in skipped]
            elif not entry_problems:
                kept.append(index)
    return kept, problems, warnings


def check_bundle_data(
    *datalists: list[dict[str, Any]],
    check: bool = False,
    nonfinite: str = "error",
    image_keys: Sequence[str] = ("image",),
    label_key: str | None = None,
    num_classes: int | None = None,
    channels: int | None = 1,
    names: Sequence[str] = ("training", "validation"),
    progress: bool | None = None,
) -> None:
    """
    The bundles' ``initialize`` hook: with ``check`` (the ``check_data`` key) or ``nonfinite="skip"``, read every
    file of the data lists before training and stop on any problem; with "skip", entries whose only problem is
    non-finite voxels are removed from their list **in place** (so every component that references the list sees
    the filtered one), each with a warning.

    Args:
        datalists: the data lists (``@train#data``, ``@validate#data``), with resolved paths.
        check: run the check (the ``check_data`` key); full reads take about as long as one uncached epoch.
        nonfinite: the ``nonfinite_inputs`` key, "error" or "skip" ("skip" implies the check).
        image_keys: entry keys holding image paths.
        label_key: entry key holding a label map path.
        num_classes: number of classes of the label maps.
        channels: channels each image file must hold.
        names: the lists' names, for the messages.
        progress: a progress bar per list (the configs pass ``@show_progress``); None: when stderr is a
            terminal, see :py:func:`monai_dae.progress.progress_enabled`.

    Raises:
        DataCheckError: listing every problem found, each with the file and the data list entry.
        ValueError: ``nonfinite`` is not a known policy, or "skip" left a list empty.
    """
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite_inputs must be one of {list(NONFINITE_POLICIES)}, got '{nonfinite}'.")
    if not check and nonfinite != "skip":
        return
    problems = []
    for position, data in enumerate(datalists):
        name = names[position] if position < len(names) else f"list {position}"
        kept, found, warned = check_entries(data, image_keys, label_key, num_classes, channels, nonfinite, name, progress)
        problems += [f"{name} {message}" for message in found]
        for message in warned:
            logger.warning(f"{name} {message}")
        if not found and len(kept) < len(data):
            if not kept:
                raise ValueError(f"nonfinite_inputs='skip' left the {name} list empty: every entry has non-finite voxels.")
            logger.warning(f"{name}: {len(data) - len(kept)} of {len(data)} entries left out for non-finite voxels.")
            data[:] = [data[i] for i in kept]
    if problems:
        raise DataCheckError.from_problems(problems)
    logger.info(f"data check passed: {', '.join(f'{len(d)} {n}' for d, n in zip(datalists, names))} entries.")
