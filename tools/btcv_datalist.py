"""
Build BTCV data lists with cross-validation folds, checking every case first.

Reads the standard BTCV layout (``imagesTr/img0001.nii.gz``, ``labelsTr/label0001.nii.gz``; the case pairs
come from an existing ``dataset_0.json`` when there is one, else from the file numbers), checks that every
file exists and is a readable NIfTI, that each label's shape and affine match its image and that its values
are organ labels 0..13, and writes one data list per fold, ``datalist_fold{k}.json``, in the
``dataset_0.json`` format (``training`` / ``validation`` lists of ``{"image", "label", "fold"}`` with paths
relative to the data set folder). Each problem is reported with the file name; broken cases are left out
(or, with ``--strict``, nothing is written).

Example::

    python -m tools.btcv_datalist --dataset_dir /data/btcv
    python -m monai.bundle run --config_file bundles/dae_btcv_seg/configs/train.json \
        --dataset_dir /data/btcv --datalist /data/btcv/datalist_fold2.json
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
from dataclasses import dataclass, field

import fire
import nibabel as nib
import numpy as np
from tqdm import tqdm

from monai_dae.progress import progress_enabled

NUM_LABELS = 14
"""Background and the 13 BTCV organs."""

BTCV_LABELS = {
    "0": "background",
    "1": "spleen",
    "2": "right kidney",
    "3": "left kidney",
    "4": "gallbladder",
    "5": "esophagus",
    "6": "liver",
    "7": "stomach",
    "8": "aorta",
    "9": "inferior vena cava",
    "10": "portal and splenic veins",
    "11": "pancreas",
    "12": "right adrenal gland",
    "13": "left adrenal gland",
}

_NIFTI = re.compile(r"^(?:img|image)?_?(\d+)\.nii(?:\.gz)?$")
_LABEL = re.compile(r"^(?:label|seg)?_?(\d+)\.nii(?:\.gz)?$")


@dataclass
class Case:
    """One image/label pair, with paths relative to the data set folder."""

    image: str
    label: str
    problems: list[str] = field(default_factory=list)


def _pairs_from_json(dataset_dir: str, datalist: str) -> list[Case]:
    """Cases of every list (``training``, ``validation``) of an existing BTCV ``dataset_0.json``."""
    with open(datalist) as f:
        content = json.load(f)
    cases, seen = [], set()
    for key in ("training", "validation"):
        for entry in content.get(key, []):
            if entry["image"] not in seen:
                seen.add(entry["image"])
                cases.append(Case(image=entry["image"], label=entry.get("label", "")))
    return cases


def _pairs_from_folders(dataset_dir: str, images_dir: str, labels_dir: str) -> list[Case]:
    """Pair ``imagesTr/img0001.nii.gz`` with ``labelsTr/label0001.nii.gz`` by case number."""
    image_root, label_root = os.path.join(dataset_dir, images_dir), os.path.join(dataset_dir, labels_dir)
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"image folder not found: '{image_root}'.")
    labels = {}
    if os.path.isdir(label_root):
        for name in os.listdir(label_root):
            match = _LABEL.match(name)
            if match:
                labels[int(match.group(1))] = name
    cases = []
    for name in sorted(os.listdir(image_root)):
        match = _NIFTI.match(name)
        if not match:
            continue
        label = labels.get(int(match.group(1)))
        cases.append(
            Case(
                image=os.path.join(images_dir, name),
                label=os.path.join(labels_dir, label) if label else "",
            )
        )
    return cases


def check_case(dataset_dir: str, case: Case, check_values: bool = True, atol: float = 1e-3) -> list[str]:
    """
    Check one case and record its problems in ``case.problems``.

    Args:
        dataset_dir: data set folder the case paths are relative to.
        case: the case.
        check_values: read the label voxels and check they are integers in 0..13.
        atol: tolerance on affine entries (mm).

    Returns:
        the problems, each naming the file.
    """
    image_path = os.path.join(dataset_dir, case.image)
    label_path = os.path.join(dataset_dir, case.label) if case.label else ""
    problems = case.problems
    if not os.path.isfile(image_path):
        problems.append(f"{case.image}: image file not found")
    if not case.label:
        problems.append(f"{case.image}: no label file (expected labelsTr/label<number>.nii.gz)")
    elif not os.path.isfile(label_path):
        problems.append(f"{case.label}: label file not found (for {case.image})")
    if problems:
        return problems
    headers = {}
    for kind, rel, path in (("image", case.image, image_path), ("label", case.label, label_path)):
        try:
            headers[kind] = nib.load(path)
            headers[kind].header.get_data_shape()
        except Exception as error:  # nibabel raises several types for broken files
            problems.append(f"{rel}: unreadable NIfTI {kind} ({error})")
    if problems:
        return problems
    image, label = headers["image"], headers["label"]
    if image.shape[:3] != label.shape[:3] or len(label.shape) > 3 and label.shape[3] != 1:
        problems.append(f"{case.label}: label shape {label.shape} does not match image shape {image.shape} ({case.image})")
    if not np.allclose(image.affine, label.affine, atol=atol):
        problems.append(
            f"{case.label}: label affine does not match the affine of {case.image} "
            f"(largest difference {np.abs(image.affine - label.affine).max():.4g})"
        )
    if check_values and not problems:
        try:
            values = np.unique(np.asarray(label.dataobj))
        except Exception as error:
            problems.append(f"{case.label}: cannot read label voxels ({error})")
            return problems
        bad = values[(values < 0) | (values >= NUM_LABELS) | (values != np.round(values))]
        if bad.size:
            problems.append(f"{case.label}: label values {bad[:5].tolist()} outside the BTCV labels 0..{NUM_LABELS - 1}")
    return problems


def build(
    dataset_dir: str,
    output_dir: str | None = None,
    num_folds: int = 5,
    seed: int = 0,
    datalist: str = "dataset_0.json",
    images_dir: str = "imagesTr",
    labels_dir: str = "labelsTr",
    check_values: bool = True,
    strict: bool = False,
    progress: bool | None = None,
) -> list[str]:
    """
    Write ``datalist_fold{k}.json`` (k = 0 .. num_folds - 1) for a BTCV-layout folder.

    Args:
        dataset_dir: the BTCV folder (holding ``imagesTr``, ``labelsTr`` and maybe ``dataset_0.json``).
        output_dir: where the data lists go (default: ``dataset_dir``, so the relative paths resolve).
        num_folds: number of cross-validation folds (5 in the DAE paper).
        seed: seed of the case shuffle that assigns folds.
        datalist: an existing BTCV data list in ``dataset_dir`` whose cases (training and validation) are
            used; when absent the cases are paired by file number.
        images_dir: image folder, relative to ``dataset_dir``.
        labels_dir: label folder, relative to ``dataset_dir``.
        check_values: also read every label and check its values (slower on the full data set).
        strict: write nothing and exit with status 1 when any case is broken (default: leave them out).
        progress: a progress bar over the case checks (default: when stderr is a terminal).

    Returns:
        the written data list paths.
    """
    dataset_dir = os.path.abspath(os.path.expanduser(dataset_dir))
    output_dir = os.path.abspath(os.path.expanduser(output_dir)) if output_dir else dataset_dir
    existing = os.path.join(dataset_dir, datalist) if datalist else ""
    if existing and os.path.isfile(existing):
        cases = _pairs_from_json(dataset_dir, existing)
        source = existing
    else:
        cases = _pairs_from_folders(dataset_dir, images_dir, labels_dir)
        source = os.path.join(dataset_dir, images_dir)
    print(f"{len(cases)} cases from {source}")

    shown = tqdm(cases, desc="checking cases", unit="case", disable=not progress_enabled(progress))
    broken = [case for case in shown if check_case(dataset_dir, case, check_values=check_values)]
    for case in broken:
        for problem in case.problems:
            print(f"PROBLEM {problem}", file=sys.stderr)
    good = [case for case in cases if not case.problems]
    if broken and strict:
        print(f"{len(broken)} broken case(s); nothing written (--strict).", file=sys.stderr)
        raise SystemExit(1)
    if len(good) < num_folds:
        print(f"only {len(good)} usable case(s), fewer than num_folds={num_folds}; nothing written.", file=sys.stderr)
        raise SystemExit(1)

    order = list(range(len(good)))
    random.Random(seed).shuffle(order)
    fold_of = {index: position % num_folds for position, index in enumerate(order)}
    relative = os.path.relpath(dataset_dir, output_dir)
    entries = [
        {
            "image": os.path.normpath(os.path.join(relative, case.image)),
            "label": os.path.normpath(os.path.join(relative, case.label)),
            "fold": fold_of[index],
        }
        for index, case in enumerate(good)
    ]
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for fold in range(num_folds):
        training = [e for e in entries if e["fold"] != fold]
        validation = [e for e in entries if e["fold"] == fold]
        content = {
            "name": "btcv",
            "description": f"BTCV multi-organ CT, fold {fold} of {num_folds} (seed {seed}), from {source}",
            "tensorImageSize": "3D",
            "modality": {"0": "CT"},
            "labels": BTCV_LABELS,
            "fold": fold,
            "numTraining": len(training),
            "numValidation": len(validation),
            "training": training,
            "validation": validation,
        }
        path = os.path.join(output_dir, f"datalist_fold{fold}.json")
        with open(path, "w") as f:
            json.dump(content, f, indent=4)
            f.write("\n")
        written.append(path)
        print(f"fold {fold}: {len(training)} training, {len(validation)} validation -> {path}")
    if broken:
        print(f"left out {len(broken)} broken case(s): {', '.join(case.image for case in broken)}", file=sys.stderr)
    return written


def main() -> None:
    """Command-line entry point (``python -m tools.btcv_datalist --help``)."""
    fire.Fire(build, serialize=lambda paths: None)


if __name__ == "__main__":
    main()
