"""
Build the classification data list (subjects, classes, 5 stratified folds) of the ``dae_brats_cls`` bundle.

From the BraTS 2018 layout (``MICCAI_BraTS_2018_Data_Training/{HGG,LGG}/<case>/<case>_{t1,t1ce,t2,flair}.nii.gz``)::

    python -m tools.brats_datalist --data_dir /data/MICCAI_BraTS_2018_Data_Training
    # writes /data/MICCAI_BraTS_2018_Data_Training/datalist_cls.json, paths relative to --data_dir

From a CSV of ``subject,class,t1,t1ce,t2,flair`` (paths absolute or relative to the CSV's folder)::

    python -m tools.brats_datalist --csv subjects.csv --output datalist_cls.json \
        --class_names "['AD','CN']" --modalities "['t1','t2']"

Unlabelled subjects for inference (``<case>/<case>_<modality>.nii.gz``, e.g. the BraTS validation release) go to
the ``testing`` list with ``--test_dir``. Every subject is checked first (all modality files present and
readable, equal shapes and affines, known class); problems are printed with the subject ids and nothing is
written, unless ``--skip_invalid`` drops those subjects.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

import fire

from monai_dae.data.brats import (
    BRATS_CLASS_NAMES,
    BRATS_MODALITIES,
    SubjectError,
    build_datalist,
    find_brats_subjects,
    read_subjects_csv,
    scan_brats_folder,
    validate_subjects,
)


def _checked(subjects: list[dict], problems: list, skip_invalid: bool, **kwargs) -> list[dict]:
    try:
        validate_subjects(subjects, **kwargs)
        return subjects
    except SubjectError as error:
        if not skip_invalid:
            raise
        bad = {subject for subject, _ in error.problems}
        problems += error.problems
        return [s for s in subjects if s["subject"] not in bad]


def build(
    data_dir: str | None = None,
    csv: str | None = None,
    output: str | None = None,
    dataset_dir: str | None = None,
    test_dir: str | None = None,
    class_names: Sequence[str] = BRATS_CLASS_NAMES,
    modalities: Sequence[str] = BRATS_MODALITIES,
    num_folds: int = 5,
    seed: int = 0,
    check_headers: bool = True,
    skip_invalid: bool = False,
    progress: bool | None = None,
) -> str:
    """
    Write the classification data list and print a per-fold summary.

    Args:
        data_dir: folder in the BraTS 2018 layout (``<class>/<case>/<case>_<modality>.nii.gz``).
        csv: alternatively, a CSV with columns ``subject``, ``class`` and one per modality.
        output: data list file (default: ``<dataset_dir>/datalist_cls.json``).
        dataset_dir: folder the paths are written relative to, the bundle's ``dataset_dir`` (default:
            ``data_dir``, or the CSV's folder).
        test_dir: optional folder of unlabelled cases ``<case>/<case>_<modality>.nii.gz`` for the ``testing`` list.
        class_names: class names in label order (the bundle's ``class_names``).
        modalities: modalities in channel order (the bundle's input channels).
        num_folds: number of stratified cross-validation folds.
        seed: fold shuffling seed.
        check_headers: compare shapes and affines of each subject's modalities.
        skip_invalid: drop unusable subjects (listed on stderr) instead of failing.
        progress: a progress bar over the subject checks (default: when stderr is a terminal).

    Returns:
        the path of the data list.
    """
    if (data_dir is None) == (csv is None):
        raise ValueError("give exactly one of --data_dir (BraTS layout) or --csv (subject table).")
    class_names, modalities = list(class_names), list(modalities)
    problems: list[tuple[str, str]] = []
    if data_dir is not None:
        source = os.path.abspath(os.path.expanduser(data_dir))
        if skip_invalid:
            subjects, problems = find_brats_subjects(source, class_names, modalities)
            bad = {subject for subject, _ in problems}
            subjects = [s for s in subjects if s["subject"] not in bad]
        else:
            subjects = scan_brats_folder(source, class_names, modalities)
    else:
        source = os.path.dirname(os.path.abspath(csv))
        subjects = read_subjects_csv(csv, modalities)
    subjects = _checked(
        subjects,
        problems,
        skip_invalid,
        modalities=modalities,
        class_names=class_names,
        check_headers=check_headers,
        source=f"'{data_dir or csv}'",
        progress=progress,
    )
    test_subjects: list[dict] = []
    if test_dir is not None:
        test_subjects = scan_brats_folder(test_dir, None, modalities)
        test_subjects = _checked(
            test_subjects,
            problems,
            skip_invalid,
            modalities=modalities,
            class_names=class_names,
            require_class=False,
            check_headers=check_headers,
            source=f"'{test_dir}'",
            progress=progress,
        )
    for subject, message in problems:
        print(f"skipped subject '{subject}': {message}", file=sys.stderr)

    dataset_dir = os.path.abspath(os.path.expanduser(dataset_dir or source))
    output = os.path.abspath(os.path.expanduser(output or os.path.join(dataset_dir, "datalist_cls.json")))
    datalist = build_datalist(
        subjects,
        dataset_dir,
        class_names,
        modalities,
        num_folds,
        seed,
        test_subjects,
        description=f"classification data list built from '{data_dir or csv}' by tools/brats_datalist.py",
    )
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with open(output, "w") as f:
        json.dump(datalist, f, indent=4)
        f.write("\n")

    print(f"{len(subjects)} subjects ({datalist['class_counts']}), {len(test_subjects)} testing, written to {output}")
    for fold in range(num_folds):
        counts = {c: sum(e["fold"] == fold and e["class"] == c for e in datalist["training"]) for c in class_names}
        print(f"  fold {fold}: {counts}")
    return output


if __name__ == "__main__":
    fire.Fire(build)
