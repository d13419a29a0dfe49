"""
Build the pretraining data list of the ``dae_pretrain`` bundle from folders of mixed CT and MRI NIfTI files.

Walks one or more folders recursively for ``.nii`` / ``.nii.gz`` files, leaves out label maps and masks (the
``--exclude`` patterns), finds each file's modality, splits the files into ``training`` and ``validation``
(seeded, stratified by modality, the files of one subject together) and writes the JSON data list the bundle
reads (``{"training": [{"image", "modality", "subject"}, ...], "validation": [...]}``, paths relative to
``dataset_dir``), then prints the number of files per modality and split.

The modality of a file, first rule that decides:

1. ``--overrides``: a JSON object ``{"path or glob": "modality", ...}`` or a CSV with columns ``path,modality``
   (a header row is optional). A key is matched against the file's path relative to its root folder (``/``
   separators; ``fnmatch`` globs, where ``*`` also crosses ``/``), its absolute path and its base name; an exact
   path wins over globs, then globs in the order of the file. The modality ``skip`` leaves the file out.
2. The path: whole tokens of the file name (``monai_dae.modalities.modality_from_path``, the inference the bundles
   use for entries without a ``modality``: ``case_t1ce.nii.gz`` is t1ce, never t1; BraTS 2018-2023 spellings
   ``t1c``/``t1gd``/``t1n``/``t1w``/``t2w``/``t2f`` are accepted), else of its folders, nearest first, up to and
   including the root folder's own name (``<root>/CT/lung_001.nii.gz`` is ct).
3. The NIfTI header: the same token rule on the ``descrip`` and ``intent_name`` fields.
4. The voxels (``--intensity``, on by default): the minimum of the scaled voxel values (nibabel's
   ``get_fdata``, i.e. after ``scl_slope``/``scl_inter``). Below ``-500`` (air is -1000 HU): ct. At least 0:
   MRI, which says nothing about the sequence, so the file gets ``--mri_modality`` (e.g. ``t1``) and is
   undetermined without it. Anything between: undetermined. A CT stored without its HU rescale (air at 0,
   e.g. raw unsigned values) reads as MRI here: name those files with ``--overrides``.

A file whose modality stays undetermined stops the tool with a message naming it (all such files are listed),
unless ``--unknown skip`` leaves them out (listed on stderr). Every file's NIfTI header is checked as the
bundle will (readable, 3-D, one channel); unusable files stop the tool the same way, or are left out with
``--skip_invalid``.

Subjects (``--group_by``): the files of one subject go to the same split.

- ``auto`` (default): files in the same folder whose names are equal once the modality tokens are removed
  (``BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair}.nii.gz`` is one subject; ``ct/lung_001.nii.gz`` is
  its own);
- ``parent``: all files of one folder are one subject;
- ``file``: every file alone;
- any other value is a regular expression searched in the path relative to the root; its first group (or the
  whole match) is the subject id; files it does not match are their own subjects.

The split: subjects are grouped by the sorted set of modalities they hold (the stratum: e.g. ``ct`` alone, or
``flair+t1+t1ce+t2``); each stratum is shuffled with ``random.Random(seed)`` (strata in sorted order, subjects
sorted first, so the split depends only on the files, ``seed`` and ``val_fraction``), and
``round(val_fraction * n)`` of its n subjects go to validation, at least one when ``val_fraction > 0`` and
n >= 2, and never all of them. The data list is written through a temporary file and ``os.replace``.

Examples::

    python -m tools.pretrain_datalist /data/pretrain
    python -m tools.pretrain_datalist /data/ct /data/brats --dataset_dir /data --output /data/datalist.json \
        --val_fraction 0.05 --overrides modalities.csv --mri_modality t1
    python -m monai.bundle run training \
        --config_file "['bundles/dae_pretrain/configs/pretrain_base.json','bundles/dae_pretrain/configs/dae.json']" \
        --dataset_dir /data --datalist /data/datalist.json
"""

from __future__ import annotations

import csv
import fnmatch
import json
import os
import random
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import fire
import nibabel as nib
import numpy as np
from tqdm import tqdm

from monai_dae.data.datalist import check_image_file
from monai_dae.modalities import DEFAULT_MODALITIES, canonical_modality, modality_from_path, modality_tokens, subject_stem
from monai_dae.progress import progress_enabled

__all__ = ["build", "detect_modality", "read_overrides", "find_images", "split_subjects", "CT_BELOW", "DEFAULT_EXCLUDE"]

CT_BELOW = -500.0
"""A volume whose smallest value is below this (air is -1000 HU) is CT."""

DEFAULT_EXCLUDE: tuple[str, ...] = ("*label*", "*seg*", "*mask*")
"""Relative paths (lower case) matching one of these ``fnmatch`` patterns are not images to pretrain on."""

SKIP = "skip"
"""The override modality that leaves a file out."""

_NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class ImageFile:
    """One image found under a root: absolute path, path relative to the root, and what was found about it."""

    path: str
    relative: str
    root: str
    modality: str | None = None
    source: str = ""
    problem: str = ""
    subject: str = ""


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    """A comma-separated string or a sequence (fire passes either) as a list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v).strip() for v in value if str(v).strip()]


def find_images(roots: Sequence[str], exclude: Sequence[str] = DEFAULT_EXCLUDE) -> tuple[list[ImageFile], list[str]]:
    """
    Walk the roots recursively for NIfTI files (``.nii``, ``.nii.gz``; hidden files and folders are skipped).

    Args:
        roots: folders to walk.
        exclude: ``fnmatch`` patterns; a file whose path relative to its root (lower case, ``/`` separators)
            matches one is left out (label maps, segmentations, masks by default).

    Returns:
        ``(images, excluded)``: the images, sorted by absolute path, and the excluded paths.
    """
    images, excluded, seen = [], [], set()
    patterns = [p.lower() for p in exclude]
    for root in roots:
        root = os.path.abspath(os.path.expanduser(root))
        if not os.path.isdir(root):
            raise FileNotFoundError(f"folder not found: '{root}'.")
        for folder, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                if name.startswith(".") or not name.lower().endswith(_NIFTI_SUFFIXES):
                    continue
                path = os.path.join(folder, name)
                if path in seen:  # nested roots
                    continue
                seen.add(path)
                relative = os.path.relpath(path, root).replace(os.sep, "/")
                if any(fnmatch.fnmatchcase(relative.lower(), p) for p in patterns):
                    excluded.append(path)
                    continue
                images.append(ImageFile(path=path, relative=relative, root=root))
    return sorted(images, key=lambda image: image.path), sorted(excluded)


def read_overrides(path: str, modalities: Sequence[str] = DEFAULT_MODALITIES) -> list[tuple[str, str]]:
    """
    Read an override file: JSON ``{"path or glob": "modality"}`` or CSV ``path,modality`` (header optional).

    Args:
        path: the file (``.json``; anything else is read as CSV).
        modalities: the known modality names (``skip`` is accepted too).

    Returns:
        ``(pattern, canonical modality or "skip")`` pairs in file order.

    Raises:
        ValueError: unreadable file, a row without two fields, or an unknown modality (naming the file and row).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"override file not found: '{path}'.")
    pairs: list[tuple[str, str]] = []
    if path.lower().endswith(".json"):
        try:
            with open(path) as f:
                content = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"override file '{path}' is not valid JSON: {error}") from error
        if not isinstance(content, dict):
            raise ValueError(f"override file '{path}' must hold a JSON object {{\"path or glob\": \"modality\"}}.")
        rows = [(str(k), str(v), f"key '{k}'") for k, v in content.items()]
    else:
        with open(path, newline="") as f:
            rows = []
            for number, row in enumerate(csv.reader(f), start=1):
                if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                    continue
                if len(row) < 2:
                    raise ValueError(f"override file '{path}', line {number}: expected 'path,modality', got {row}.")
                if number == 1 and [c.strip().lower() for c in row[:2]] == ["path", "modality"]:
                    continue
                rows.append((row[0].strip(), row[1].strip(), f"line {number}"))
    known = [canonical_modality(m) for m in modalities]
    for pattern, value, where in rows:
        name = canonical_modality(value)
        if name not in known and name != SKIP:
            raise ValueError(f"override file '{path}', {where}: unknown modality '{value}'; known: {known} (or '{SKIP}').")
        pairs.append((pattern, name))
    return pairs


def _override(image: ImageFile, overrides: Sequence[tuple[str, str]]) -> tuple[str, str] | None:
    """The first override matching the image: exact paths first, then globs in file order."""
    names = (image.relative, image.path.replace(os.sep, "/"), os.path.basename(image.path))
    for pattern, name in overrides:
        if os.path.normpath(pattern).replace(os.sep, "/") in names:
            return pattern, name
    for pattern, name in overrides:
        if any(fnmatch.fnmatchcase(candidate, pattern) for candidate in names):
            return pattern, name
    return None


def detect_modality(
    path: str,
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    root: str | None = None,
    intensity: bool = True,
    mri_modality: str | None = None,
) -> tuple[str | None, str]:
    """
    The modality of one file from its path, then its header, then its voxels (rules 2 to 4 of the module
    docstring; overrides are applied by :py:func:`build`).

    Args:
        path: the NIfTI file.
        modalities: the known modality names.
        root: the folder the path search stops at (its own name is read).
        intensity: use the voxel rule when name and header say nothing.
        mri_modality: the modality given to a file the voxel rule finds to be MRI (None: undetermined).

    Returns:
        ``(modality or None, how)``: ``how`` says which rule decided ("name", "header", "intensity"), or why
        nothing did.

    Raises:
        ValueError: a name or header text that names several modalities.
    """
    found = modality_from_path(path, modalities, os.path.dirname(root.rstrip("/\\")) if root else None)
    if found:
        return found, "name"
    try:
        image = nib.load(path)
    except Exception as error:
        return None, f"unreadable NIfTI ({error})"
    header = image.header
    texts = []
    for field in ("descrip", "intent_name"):
        try:
            value = header[field]
        except (KeyError, ValueError):
            continue
        texts.append(value.item().decode(errors="ignore") if hasattr(value, "item") else str(value))
    for text in texts:
        names = modality_tokens(text.replace(".", " "), modalities)
        if len(names) > 1:
            raise ValueError(f"the header of '{path}' names several modalities {sorted(names)} ('{text.strip()}').")
        if names:
            return names.pop(), "header"
    if not intensity:
        return None, "neither the path nor the header names a modality"
    try:
        low = float(np.nanmin(np.asarray(image.get_fdata(dtype=np.float32))))
    except Exception as error:
        return None, f"voxels unreadable ({error})"
    if low < CT_BELOW:
        return canonical_modality("ct"), "intensity"
    if low >= 0.0:
        if mri_modality:
            return canonical_modality(mri_modality), "intensity"
        return None, "the voxels look like MRI (no negative value) but nothing names the sequence; pass --mri_modality"
    return None, f"neither the path nor the header names a modality, and the smallest voxel value {low:g} is neither below {CT_BELOW:g} (CT) nor >= 0 (MRI)"


def _subject(image: ImageFile, group_by: str, modalities: Sequence[str]) -> str:
    folder = os.path.dirname(image.relative)
    prefix = f"{image.root}::"
    if group_by == "auto":
        return prefix + "/".join(p for p in (folder, subject_stem(image.path, modalities)) if p)
    if group_by == "parent":
        return prefix + (folder or ".")
    if group_by == "file":
        return prefix + image.relative
    match = re.search(group_by, image.relative)
    if match is None:
        return prefix + image.relative
    return prefix + (match.group(1) if match.groups() else match.group(0))


def split_subjects(images: Sequence[ImageFile], val_fraction: float, seed: int) -> set[str]:
    """
    The subjects that go to validation: stratified by each subject's set of modalities, seeded (see the module
    docstring).

    Args:
        images: the images, with ``subject`` and ``modality`` set.
        val_fraction: fraction of the subjects of each stratum that go to validation (0 <= f < 1).
        seed: seed of the shuffle.

    Returns:
        the validation subject ids.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    held: dict[str, set[str]] = {}
    for image in images:
        held.setdefault(image.subject, set()).add(str(image.modality))
    strata: dict[str, list[str]] = {}
    for subject, names in held.items():
        strata.setdefault("+".join(sorted(names)), []).append(subject)
    rng = random.Random(seed)
    validation: set[str] = set()
    for stratum in sorted(strata):
        subjects = sorted(strata[stratum])
        rng.shuffle(subjects)
        count = int(round(val_fraction * len(subjects)))
        if val_fraction > 0 and len(subjects) >= 2:
            count = min(max(count, 1), len(subjects) - 1)
        else:
            count = 0
        validation.update(subjects[:count])
    return validation


def write_json_atomically(content: dict, path: str) -> None:
    """
    Write ``content`` as indented JSON through a temporary file in the target folder, ``fsync`` and
    ``os.replace``: a reader sees the previous complete file or the new one, never a partial file.

    Args:
        content: the JSON content.
        path: the target file; its folder is created when missing.
    """
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(descriptor, "w") as f:
            json.dump(content, f, indent=4)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _table(training: Sequence[dict], validation: Sequence[dict], modalities: Sequence[str]) -> str:
    names = [m for m in modalities if any(e["modality"] == m for e in [*training, *validation])]
    rows = [(m, sum(e["modality"] == m for e in training), sum(e["modality"] == m for e in validation)) for m in names]
    rows.append(("total", len(training), len(validation)))
    lines = [f"{'modality':<10}{'training':>10}{'validation':>12}{'total':>8}"]
    lines += [f"{name:<10}{train:>10}{val:>12}{train + val:>8}" for name, train, val in rows]
    return "\n".join(lines)


def build(
    *roots: str,
    dataset_dir: str | None = None,
    output: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    group_by: str = "auto",
    exclude: str | Sequence[str] = DEFAULT_EXCLUDE,
    overrides: str | None = None,
    unknown: str = "error",
    mri_modality: str | None = None,
    intensity: bool = True,
    modalities: str | Sequence[str] = DEFAULT_MODALITIES,
    skip_invalid: bool = False,
    progress: bool | None = None,
) -> str:
    """
    Write the pretraining data list and print the per-modality counts.

    A file's modality: ``--overrides`` (path or glob -> modality), else the file or folder name (whole tokens,
    ``..._t1ce.nii.gz`` is t1ce), else the NIfTI header (``descrip``, ``intent_name``), else the voxels (minimum
    below -500: ct; non-negative: MRI, given ``--mri_modality``); undetermined files stop the tool (named) unless
    ``--unknown skip``. The full rules are in the module docstring (``tools/pretrain_datalist.py``).

    Args:
        roots: folders of NIfTI files, walked recursively.
        dataset_dir: the folder the written paths are relative to, the bundle's ``dataset_dir`` (default: the
            root when there is one, else the deepest folder holding all roots).
        output: the data list file (default: ``<dataset_dir>/datalist_pretrain.json``).
        val_fraction: fraction of the subjects of each modality stratum that go to ``validation``.
        seed: seed of the split.
        group_by: subjects kept together: ``auto``, ``parent``, ``file`` or a regular expression.
        exclude: ``fnmatch`` patterns of relative paths that are not images to pretrain on (comma-separated
            on the command line; ``--exclude ""`` keeps every file).
        overrides: JSON or CSV file mapping a path or glob to a modality (or ``skip``); wins over detection.
        unknown: ``error`` (default): stop when a file's modality is undetermined, naming every such file;
            ``skip``: leave them out (listed on stderr).
        mri_modality: the modality of files the voxel rule finds to be MRI (default: undetermined).
        intensity: use the voxel rule (reads the voxels of files whose path and header name no modality).
        modalities: the known modality names (the bundle's ``modalities`` key).
        skip_invalid: leave out files the bundle could not read (unreadable, not 3-D with one channel) instead
            of stopping.
        progress: a progress bar over the files (default: when stderr is a terminal).

    Returns:
        the path of the data list.

    Raises:
        ValueError: no roots or no image, an undetermined modality or unusable file (without the options that
            skip them), a bad option (each message names the files).
    """
    if not roots:
        raise ValueError("give at least one folder to scan, e.g. `python -m tools.pretrain_datalist /data/pretrain`.")
    if unknown not in ("error", "skip"):
        raise ValueError(f"unknown must be 'error' or 'skip', got '{unknown}'.")
    modalities = [canonical_modality(m) for m in _as_list(modalities)]
    if mri_modality is not None and canonical_modality(mri_modality) not in modalities:
        raise ValueError(f"mri_modality '{mri_modality}' is not one of the modalities {modalities}.")
    roots = [os.path.abspath(os.path.expanduser(str(r))) for r in roots]
    images, excluded = find_images(roots, _as_list(exclude))
    if not images:
        raise ValueError(f"no NIfTI image (.nii, .nii.gz) found under {roots} ({len(excluded)} excluded by {_as_list(exclude)}).")
    rules = read_overrides(overrides, modalities) if overrides else []

    skipped: list[str] = []
    shown = tqdm(images, desc="reading images", unit="file", disable=not progress_enabled(progress))
    for image in shown:
        rule = _override(image, rules)
        if rule is not None:
            image.modality, image.source = rule[1], f"override '{rule[0]}'"
        else:
            try:
                image.modality, image.source = detect_modality(image.path, modalities, image.root, intensity, mri_modality)
            except ValueError as error:
                image.modality, image.source = None, str(error)
        if image.modality == SKIP:
            skipped.append(f"'{image.path}': skipped by {image.source}")
            continue
        try:
            check_image_file(image.path, channels=1)
        except (FileNotFoundError, ValueError) as error:
            image.problem = str(error)
    images = [image for image in images if image.modality != SKIP]

    invalid = [image for image in images if image.problem]
    if invalid and not skip_invalid:
        listed = "\n".join(f"  {image.problem}" for image in invalid)
        raise ValueError(f"{len(invalid)} file(s) the bundle cannot read:\n{listed}\nFix them, or pass --skip_invalid to leave them out.")
    undetermined = [image for image in images if not image.problem and image.modality is None]
    if undetermined and unknown == "error":
        listed = "\n".join(f"  '{image.path}': {image.source}" for image in undetermined)
        raise ValueError(
            f"cannot determine the modality of {len(undetermined)} file(s):\n{listed}\n"
            "Name the modality in the file or folder name, list the files in an --overrides file, pass "
            "--mri_modality, or --unknown skip to leave them out."
        )
    skipped += [f"{image.problem}" for image in invalid]
    skipped += [f"'{image.path}': modality undetermined ({image.source})" for image in undetermined]
    for message in skipped:
        print(f"skipped {message}", file=sys.stderr)
    images = [image for image in images if not image.problem and image.modality is not None]
    if not images:
        raise ValueError(f"no usable image left under {roots} ({len(skipped)} skipped).")

    for image in images:
        image.subject = _subject(image, group_by, modalities)
    validation_subjects = split_subjects(images, val_fraction, seed)

    if dataset_dir is None:
        dataset_dir = roots[0] if len(roots) == 1 else os.path.commonpath(roots)
    dataset_dir = os.path.abspath(os.path.expanduser(dataset_dir))
    output = os.path.abspath(os.path.expanduser(output or os.path.join(dataset_dir, "datalist_pretrain.json")))

    def entry(image: ImageFile) -> dict:
        subject = image.subject.split("::", 1)[1]
        if len(roots) > 1:
            subject = f"{os.path.relpath(image.root, dataset_dir).replace(os.sep, '/')}/{subject}"
        relative = os.path.relpath(image.path, dataset_dir).replace(os.sep, "/")
        return {"image": relative, "modality": image.modality, "subject": subject}

    training = [entry(image) for image in images if image.subject not in validation_subjects]
    validation = [entry(image) for image in images if image.subject in validation_subjects]
    if not validation:
        print(
            "warning: the validation list is empty (val_fraction 0, or one subject per modality); the bundle needs "
            "at least one validation entry.",
            file=sys.stderr,
        )
    content = {
        "name": "pretrain",
        "description": f"pretraining data list built from {roots} by tools/pretrain_datalist.py "
        f"(val_fraction {val_fraction}, seed {seed}, group_by '{group_by}')",
        "modalities": modalities,
        "numTraining": len(training),
        "numValidation": len(validation),
        "training": training,
        "validation": validation,
    }
    write_json_atomically(content, output)
    subjects = {image.subject for image in images}
    print(
        f"{len(images)} images of {len(subjects)} subjects ({len(validation_subjects)} for validation), "
        f"{len(excluded)} excluded by pattern, {len(skipped)} skipped; written to {output}"
    )
    print(_table(training, validation, modalities))
    return output


def main() -> None:
    """Command-line entry point (``python -m tools.pretrain_datalist --help``)."""
    try:
        fire.Fire(build, serialize=lambda path: None)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
