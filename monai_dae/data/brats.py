"""
Multi-modal MRI classification data: subjects from the BraTS 2018 layout or a CSV, subject validation,
stratified folds, and the classification data list read by the ``dae_brats_cls`` bundle.

A subject is a dict ``{"subject": id, "class": name, "t1": path, "t1ce": path, "t2": path, "flair": path}``
(one key per modality). The data list written by :func:`build_datalist` holds such subjects with a ``fold``
field and paths relative to the data set folder::

    {
        "class_names": ["HGG", "LGG"],
        "modalities": ["t1", "t1ce", "t2", "flair"],
        "num_folds": 5,
        "seed": 0,
        "training": [{"subject": "Brats18_2013_2_1", "class": "HGG", "fold": 3, "t1": "HGG/...", ...}, ...],
        "testing": [{"subject": "...", "t1": "...", ...}]
    }

:func:`load_classification_datalist` turns it into the entries the bundle trains on
(``{"subject", "image": [paths in modality order], "label": class index, "class_name"}``), after checking
every subject: a missing or unreadable modality file, modalities with different shapes or affines, an unknown
class name or a duplicated subject id is reported with the subject's id, before any training starts.

Free of MONAI imports so that the data tools start fast.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np

from monai_dae.data.phantoms import BRATS_GRADES, BRATS_MODALITIES

__all__ = [
    "BRATS_CLASS_NAMES",
    "BRATS_MODALITIES",
    "SubjectError",
    "find_brats_subjects",
    "scan_brats_folder",
    "read_subjects_csv",
    "validate_subjects",
    "stratified_folds",
    "build_datalist",
    "load_classification_datalist",
    "class_weights",
]

BRATS_CLASS_NAMES: tuple[str, ...] = BRATS_GRADES
"""BraTS 2018 grade classes in label order: HGG is 0, LGG is 1."""

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_CLASS_COLUMNS = ("class", "label", "grade")
_SUBJECT_COLUMNS = ("subject", "id", "case")
_MAX_REPORTED = 20


class SubjectError(ValueError):
    """
    One or more subjects are unusable; ``problems`` lists ``(subject id, message)`` pairs, all of them.

    Args:
        problems: the problems found, each ``(subject id, message)``.
        source: where the subjects come from (a folder, a CSV or a data list), for the message.
    """

    def __init__(self, problems: Sequence[tuple[str, str]], source: str = "") -> None:
        self.problems = list(problems)
        shown = [f"  subject '{subject}': {message}" for subject, message in self.problems[:_MAX_REPORTED]]
        if len(self.problems) > _MAX_REPORTED:
            shown.append(f"  ... and {len(self.problems) - _MAX_REPORTED} more")
        where = f" in {source}" if source else ""
        super().__init__(f"{len(self.problems)} problem(s) with the subjects{where}:\n" + "\n".join(shown))


def _find_modality_file(case_dir: str, case: str, modality: str) -> str | None:
    for suffix in _NIFTI_SUFFIXES:
        path = os.path.join(case_dir, f"{case}_{modality}{suffix}")
        if os.path.isfile(path):
            return path
    return None


def _scan_cases(folder: str, modalities: Sequence[str], class_name: str | None) -> tuple[list[dict], list]:
    subjects, problems = [], []
    for case in sorted(os.listdir(folder)):
        case_dir = os.path.join(folder, case)
        if not os.path.isdir(case_dir):
            continue
        subject: dict[str, Any] = {"subject": case}
        if class_name is not None:
            subject["class"] = class_name
        for modality in modalities:
            path = _find_modality_file(case_dir, case, modality)
            if path is None:
                problems.append((case, f"missing modality '{modality}': no {case}_{modality}.nii[.gz] in '{case_dir}'"))
            else:
                subject[modality] = path
        subjects.append(subject)
    return subjects, problems


def find_brats_subjects(
    data_dir: str,
    class_names: Sequence[str] | None = BRATS_CLASS_NAMES,
    modalities: Sequence[str] = BRATS_MODALITIES,
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """
    Like :py:func:`scan_brats_folder`, but return the problems instead of raising them.

    Returns:
        ``(subjects, problems)``: every case found (an incomplete one lacks the keys of its missing
        modalities) and the ``(subject id, message)`` problems.
    """
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data folder not found: '{data_dir}'.")
    if class_names is None:
        return _scan_cases(data_dir, modalities, None)
    subjects, problems = [], []
    folders = sorted(f for f in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, f)))
    for folder in folders:
        if folder not in class_names:
            cases = sorted(c for c in os.listdir(os.path.join(data_dir, folder)) if not c.startswith("."))
            message = (
                f"unknown class '{folder}' (folder '{os.path.join(data_dir, folder)}'); known classes: "
                f"{list(class_names)}; pass class_names to include it, or move the folder out"
            )
            problems += [(case, message) for case in cases] or [(folder, message)]
    for class_name in class_names:
        folder = os.path.join(data_dir, class_name)
        if os.path.isdir(folder):
            found, found_problems = _scan_cases(folder, modalities, class_name)
            subjects += found
            problems += found_problems
    return subjects, problems


def scan_brats_folder(
    data_dir: str,
    class_names: Sequence[str] | None = BRATS_CLASS_NAMES,
    modalities: Sequence[str] = BRATS_MODALITIES,
) -> list[dict[str, Any]]:
    """
    Subjects of a folder in the BraTS 2018 layout: ``<data_dir>/<class>/<case>/<case>_<modality>.nii.gz``
    (``MICCAI_BraTS_2018_Data_Training/{HGG,LGG}/...``), or, with ``class_names=None``, an unlabelled folder
    ``<data_dir>/<case>/<case>_<modality>.nii.gz`` (the BraTS validation release).

    Args:
        data_dir: the folder.
        class_names: class folder names; every sub-folder of ``data_dir`` must be one of them.
            None: ``data_dir`` holds the case folders directly and the subjects have no class.
        modalities: modality file suffixes, in channel order.

    Returns:
        subjects ``{"subject", "class", <modality>: absolute path, ...}`` sorted by class, then case.

    Raises:
        FileNotFoundError: ``data_dir`` does not exist.
        SubjectError: a case misses a modality file, or a sub-folder is not a known class (all problems listed).
        ValueError: no subject found.
    """
    subjects, problems = find_brats_subjects(data_dir, class_names, modalities)
    if problems:
        raise SubjectError(problems, f"'{os.path.abspath(data_dir)}'")
    if not subjects:
        expected = "<case>" if class_names is None else f"{{{','.join(class_names)}}}/<case>"
        raise ValueError(f"no subjects found in '{data_dir}' (expected {expected}/<case>_<modality>.nii.gz).")
    return subjects


def read_subjects_csv(
    csv_path: str, modalities: Sequence[str] = BRATS_MODALITIES, base_dir: str | None = None
) -> list[dict[str, Any]]:
    """
    Subjects from a CSV file with a header: a subject column (``subject``, ``id`` or ``case``), an optional
    class column (``class``, ``label`` or ``grade``) and one column per modality holding the image path.
    Relative paths are resolved against ``base_dir`` (default: the CSV's folder).

    Args:
        csv_path: the CSV file.
        modalities: modality column names, in channel order.
        base_dir: folder relative paths are resolved against.

    Returns:
        subjects ``{"subject", "class" (when the column exists), <modality>: absolute path, ...}``.

    Raises:
        FileNotFoundError: the CSV does not exist.
        ValueError: a required column is missing, or the CSV has no rows.
        SubjectError: a row has no subject id (all such rows listed). Missing modality paths are left for
            :py:func:`validate_subjects` to report.
    """
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"subjects CSV not found: '{csv_path}'.")
    base = base_dir if base_dir is not None else os.path.dirname(os.path.abspath(csv_path))
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        columns = {c.strip().lower(): c for c in (reader.fieldnames or [])}
        rows = list(reader)
    subject_column = next((columns[c] for c in _SUBJECT_COLUMNS if c in columns), None)
    class_column = next((columns[c] for c in _CLASS_COLUMNS if c in columns), None)
    missing = [m for m in modalities if m.lower() not in columns]
    if subject_column is None or missing:
        needed = ([f"one of {list(_SUBJECT_COLUMNS)}"] if subject_column is None else []) + missing
        raise ValueError(f"subjects CSV '{csv_path}' lacks the column(s) {needed}; found {list(columns.values())}.")
    if not rows:
        raise ValueError(f"subjects CSV '{csv_path}' has no rows.")
    subjects, problems = [], []
    for line, row in enumerate(rows, start=2):
        name = (row.get(subject_column) or "").strip()
        if not name:
            problems.append((f"<line {line}>", "empty subject id"))
            continue
        subject: dict[str, Any] = {"subject": name}
        if class_column is not None:
            subject["class"] = (row.get(class_column) or "").strip()
        for modality in modalities:
            value = (row.get(columns[modality.lower()]) or "").strip()
            if value:  # an empty cell leaves the modality missing, reported by validate_subjects
                subject[modality] = os.path.abspath(os.path.join(base, os.path.expanduser(value)))
        subjects.append(subject)
    if problems:
        raise SubjectError(problems, f"'{csv_path}'")
    return subjects


def _header(path: str) -> tuple[tuple[int, ...], np.ndarray]:
    image = nib.load(path)
    shape = tuple(int(s) for s in image.shape)
    if len(shape) < 3 or 0 in shape or int(np.prod(shape[3:])) != 1:
        raise ValueError(f"shape {shape} is not one 3-D volume (one file per modality, no zero-size dimension)")
    return shape[:3], np.asarray(image.affine, dtype=np.float64)


def validate_subjects(
    subjects: Sequence[dict[str, Any]],
    modalities: Sequence[str] = BRATS_MODALITIES,
    class_names: Sequence[str] | None = BRATS_CLASS_NAMES,
    require_class: bool = True,
    check_headers: bool = True,
    affine_tolerance: float = 1e-3,
    source: str = "",
    progress: bool | None = False,
) -> None:
    """
    Check every subject before training and report all problems at once, each with the subject's id:
    duplicated ids, a missing, absent or unreadable modality file, modalities of different shapes or affines,
    a missing or unknown class name.

    Args:
        subjects: subjects ``{"subject", "class", <modality>: path, ...}`` with absolute paths.
        modalities: the modalities every subject must have.
        class_names: known class names (None: any).
        require_class: every subject must have a class.
        check_headers: read the NIfTI headers and compare shapes and affines across modalities.
        affine_tolerance: largest absolute difference between affine entries (mm) still taken as equal.
        source: where the subjects come from, for the message.
        progress: a progress bar over the subjects (None: when stderr is a terminal, see
            :py:func:`monai_dae.progress.progress_enabled`); off by default, as the bundles call this while
            loading their data lists (``tools/brats_datalist.py`` passes its ``--progress``).

    Raises:
        SubjectError: listing every problem found.
    """
    from tqdm import tqdm

    from monai_dae.progress import progress_enabled

    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    shown = tqdm(subjects, desc=f"checking {source or 'subjects'}", unit="subject", disable=not progress_enabled(progress))
    for index, subject in enumerate(shown):
        name = str(subject.get("subject") or f"<entry {index}>")
        if name in seen:
            problems.append((name, "duplicated subject id"))
        seen.add(name)
        class_name = subject.get("class")
        if class_name in (None, ""):
            if require_class:
                problems.append((name, "no class"))
        elif class_names is not None and class_name not in class_names:
            problems.append((name, f"unknown class '{class_name}'; known classes: {list(class_names)}"))
        headers = {}
        for modality in modalities:
            path = subject.get(modality)
            if not path:
                problems.append((name, f"missing modality '{modality}'"))
            elif not os.path.isfile(path):
                problems.append((name, f"modality '{modality}' file not found: '{path}'"))
            elif check_headers:
                try:
                    headers[modality] = _header(path)
                except Exception as error:
                    problems.append((name, f"modality '{modality}' unreadable ('{path}'): {error}"))
        if len(headers) > 1:
            first, (shape, affine) = next(iter(headers.items()))
            for modality, (other_shape, other_affine) in headers.items():
                if other_shape != shape:
                    problems.append((name, f"shape of '{modality}' {other_shape} differs from '{first}' {shape}"))
                elif not np.allclose(other_affine, affine, rtol=0.0, atol=affine_tolerance):
                    difference = float(np.abs(other_affine - affine).max())
                    problems.append(
                        (name, f"affine of '{modality}' differs from '{first}' (max difference {difference:.4g})")
                    )
    if problems:
        raise SubjectError(problems, source)


def stratified_folds(classes: Sequence[str], num_folds: int = 5, seed: int = 0) -> list[int]:
    """
    Stratified fold assignment: within each class, subjects are shuffled with ``seed`` and dealt to the folds
    in turn, each class starting at the fold with the fewest subjects so far, so fold sizes differ by at most
    one and every class is spread as evenly as possible.

    Args:
        classes: the class of each subject.
        num_folds: number of folds, at least 2.
        seed: shuffling seed.

    Returns:
        the fold (0 .. num_folds - 1) of each subject, in input order.
    """
    if num_folds < 2:
        raise ValueError(f"num_folds must be at least 2, got {num_folds}.")
    if len(classes) < num_folds:
        raise ValueError(f"{len(classes)} subjects cannot fill {num_folds} folds.")
    rng = np.random.default_rng(seed)
    folds = [-1] * len(classes)
    sizes = [0] * num_folds
    for class_name in sorted(set(classes)):
        members = [i for i, c in enumerate(classes) if c == class_name]
        order = rng.permutation(len(members))
        start = int(np.argmin(sizes))
        for rank, member in enumerate(order):
            fold = (start + rank) % num_folds
            folds[members[member]] = fold
            sizes[fold] += 1
    return folds


def build_datalist(
    subjects: Sequence[dict[str, Any]],
    dataset_dir: str,
    class_names: Sequence[str] = BRATS_CLASS_NAMES,
    modalities: Sequence[str] = BRATS_MODALITIES,
    num_folds: int = 5,
    seed: int = 0,
    test_subjects: Sequence[dict[str, Any]] = (),
    description: str = "",
) -> dict[str, Any]:
    """
    The classification data list: labelled subjects with stratified folds under ``training`` and unlabelled
    ones under ``testing``, paths relative to ``dataset_dir`` where they lie below it.

    Args:
        subjects: validated labelled subjects.
        dataset_dir: the folder paths are written relative to.
        class_names: class names in label order.
        modalities: modalities in channel order.
        num_folds: number of stratified folds.
        seed: fold shuffling seed.
        test_subjects: validated unlabelled subjects.
        description: free text stored in the data list.

    Returns:
        the data list dict.
    """
    root = os.path.abspath(dataset_dir)

    def relative(path: str) -> str:
        path = os.path.abspath(path)
        inside = os.path.commonpath([root, path]) == root
        return os.path.relpath(path, root) if inside else path

    def entry(subject: dict[str, Any], with_class: bool) -> dict[str, Any]:
        item: dict[str, Any] = {"subject": subject["subject"]}
        if with_class:
            item["class"] = subject["class"]
        item.update({m: relative(subject[m]) for m in modalities})
        return item

    folds = stratified_folds([s["class"] for s in subjects], num_folds, seed)
    training = []
    for subject, fold in zip(subjects, folds):
        item = entry(subject, True)
        item["fold"] = fold
        training.append(item)
    counts = {c: sum(s["class"] == c for s in subjects) for c in class_names}
    return {
        "description": description,
        "class_names": list(class_names),
        "modalities": list(modalities),
        "num_folds": num_folds,
        "seed": seed,
        "class_counts": counts,
        "training": training,
        "testing": [entry(s, False) for s in test_subjects],
    }


def load_classification_datalist(
    datalist: str,
    dataset_dir: str | None = None,
    fold: int | None = None,
    split: str = "all",
    key: str = "training",
    class_names: Sequence[str] = BRATS_CLASS_NAMES,
    modalities: Sequence[str] = BRATS_MODALITIES,
    require_class: bool = True,
    check_headers: bool = True,
) -> list[dict[str, Any]]:
    """
    Read a classification data list, select a fold, check every subject and return the bundle's entries.

    Args:
        datalist: path of the JSON data list (written by ``tools/brats_datalist.py``).
        dataset_dir: folder relative paths are resolved against (default: the data list's folder).
        fold: the validation fold; with ``split`` "train" the entries of the other folds are returned, with
            "val" those of this fold. None (or ``split`` "all"): every entry of ``key``.
        split: "train", "val" or "all".
        key: the list to read ("training" or "testing").
        class_names: class names in label order; an entry with another class is an error.
        modalities: modalities in channel order.
        require_class: entries must have a class (False for inference: a class, when present, is still checked
            and returned as ``label``; otherwise ``label`` is -1).
        check_headers: compare the shapes and affines of each subject's modalities.

    Returns:
        entries ``{"subject", "image": [absolute paths in modality order], "label": int, "class_name": str}``.

    Raises:
        FileNotFoundError: the data list does not exist.
        ValueError: the data list or the selection is malformed or empty.
        SubjectError: some subjects are unusable (all listed, with their ids).
    """
    if not os.path.isfile(datalist):
        raise FileNotFoundError(
            f"data list not found: '{datalist}'. Build it with "
            "`python -m tools.brats_datalist --data_dir <MICCAI_BraTS_2018_Data_Training> --output <datalist.json>`."
        )
    try:
        with open(datalist) as f:
            content = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"data list '{datalist}' is not valid JSON: {error}") from error
    if not isinstance(content, dict) or not isinstance(content.get(key), list):
        found = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise ValueError(f"data list '{datalist}' has no '{key}' list (found: {found}).")
    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got '{split}'.")
    listed = content.get("class_names")
    if require_class and listed is not None and list(listed) != list(class_names):
        raise ValueError(
            f"data list '{datalist}' has class_names {listed} but the bundle expects {list(class_names)}; "
            "set class_names (and num_classes) to match."
        )
    entries = content[key]
    if fold is not None and split != "all":
        missing = [str(e.get("subject", i)) for i, e in enumerate(entries) if "fold" not in e]
        if missing:
            raise ValueError(f"entries of '{key}' in '{datalist}' have no 'fold' (e.g. subject '{missing[0]}').")
        folds = sorted({int(e["fold"]) for e in entries})
        if int(fold) not in folds:
            raise ValueError(f"fold {fold} not in data list '{datalist}' (folds: {folds}).")
        keep = (lambda e: int(e["fold"]) != int(fold)) if split == "train" else (lambda e: int(e["fold"]) == int(fold))
        entries = [e for e in entries if keep(e)]
    if not entries:
        raise ValueError(f"no entries selected from '{key}' of '{datalist}' (fold {fold}, split '{split}').")
    base = dataset_dir if dataset_dir is not None else os.path.dirname(os.path.abspath(datalist))
    subjects = []
    for index, item in enumerate(entries):
        subject = dict(item)
        subject.setdefault("subject", f"<entry {index}>")
        for modality in modalities:
            if subject.get(modality):
                subject[modality] = os.path.abspath(os.path.join(base, os.path.expanduser(str(subject[modality]))))
        subjects.append(subject)
    validate_subjects(
        subjects, modalities, class_names, require_class, check_headers, source=f"data list '{datalist}' ('{key}')"
    )
    result = []
    for subject in subjects:
        class_name = subject.get("class") or ""
        result.append(
            {
                "subject": str(subject["subject"]),
                "image": [subject[m] for m in modalities],
                "label": list(class_names).index(class_name) if class_name else -1,
                "class_name": class_name,
            }
        )
    return result


def class_weights(entries: Sequence[dict[str, Any]], num_classes: int) -> list[float]:
    """
    Inverse-frequency class weights ``n / (num_classes * n_c)`` for the cross-entropy loss (1 for a balanced
    set; for BraTS 2018, 210 HGG and 75 LGG, about 0.68 and 1.9).

    Args:
        entries: entries with an integer ``label``.
        num_classes: number of classes.

    Returns:
        one weight per class.

    Raises:
        ValueError: a class has no entry.
    """
    counts = np.bincount([int(e["label"]) for e in entries], minlength=num_classes)[:num_classes]
    if (counts == 0).any():
        raise ValueError(f"classes {np.flatnonzero(counts == 0).tolist()} have no training subjects: counts {counts.tolist()}.")
    return (counts.sum() / (num_classes * counts)).astype(float).tolist()
