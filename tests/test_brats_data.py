"""Tests of the classification data tools: subjects from the BraTS layout or a CSV, validation, folds, data lists."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_dae.data.brats import (
    SubjectError,
    build_datalist,
    class_weights,
    find_brats_subjects,
    load_classification_datalist,
    read_subjects_csv,
    scan_brats_folder,
    stratified_folds,
    validate_subjects,
)
from monai_dae.data.phantoms import BRATS_MODALITIES, write_sample_dataset
from tools.brats_datalist import build as build_tool

from bundle_testing import tool_command, tool_env

NUM_SUBJECTS = 10


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> str:
    """10 small phantom subjects (5 HGG, 5 LGG) in the BraTS 2018 layout; returns the training folder."""
    paths = write_sample_dataset(
        str(tmp_path_factory.mktemp("sample")),
        num_ct=2,
        num_brain=NUM_SUBJECTS,
        ct_shape=(16, 16, 8),
        brain_shape=(24, 24, 16),
    )
    return paths["brats_dir"]


@pytest.fixture
def brats(sample, tmp_path) -> str:
    """A private copy of the sample folder that a test may damage."""
    target = tmp_path / "MICCAI_BraTS_2018_Data_Training"
    shutil.copytree(sample, target)
    return str(target)


def _case_file(root: str, grade: str, index: int, modality: str) -> str:
    name = f"Brats18_SAMPLE_{index:04d}"
    return os.path.join(root, grade, name, f"{name}_{modality}.nii.gz")


def test_scan_brats_layout(sample):
    subjects = scan_brats_folder(sample)
    assert len(subjects) == NUM_SUBJECTS
    assert {s["class"] for s in subjects} == {"HGG", "LGG"}
    for subject in subjects:
        for modality in BRATS_MODALITIES:
            assert subject[modality].endswith(f"{subject['subject']}_{modality}.nii.gz")
            assert os.path.isabs(subject[modality]) and os.path.isfile(subject[modality])
    validate_subjects(subjects)  # no problem


def test_stratified_folds_balanced_and_deterministic():
    classes = ["HGG"] * 210 + ["LGG"] * 75  # BraTS 2018
    folds = stratified_folds(classes, 5, seed=0)
    assert folds == stratified_folds(classes, 5, seed=0)
    assert folds != stratified_folds(classes, 5, seed=1)
    sizes = np.bincount(folds, minlength=5)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 285
    for name, total in (("HGG", 210), ("LGG", 75)):
        per_fold = np.bincount([f for f, c in zip(folds, classes) if c == name], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1 and per_fold.sum() == total
    with pytest.raises(ValueError, match="cannot fill"):
        stratified_folds(["HGG"] * 3, 5)


def test_tool_writes_datalist_and_loader_splits_folds(sample, tmp_path):
    output = build_tool(data_dir=sample, output=str(tmp_path / "datalist.json"), num_folds=5, seed=0)
    content = json.loads(Path(output).read_text())
    assert content["class_names"] == ["HGG", "LGG"] and content["modalities"] == list(BRATS_MODALITIES)
    assert content["class_counts"] == {"HGG": 5, "LGG": 5} and content["testing"] == []
    training = content["training"]
    assert len(training) == NUM_SUBJECTS
    for fold in range(5):  # 10 subjects, 5 per class: one of each class per fold
        assert sorted(e["class"] for e in training if e["fold"] == fold) == ["HGG", "LGG"]
    assert not os.path.isabs(training[0]["t1"])  # relative to the data folder

    all_entries = load_classification_datalist(output, sample)
    assert len(all_entries) == NUM_SUBJECTS
    train = load_classification_datalist(output, sample, fold=2, split="train")
    val = load_classification_datalist(output, sample, fold=2, split="val")
    assert len(train) == 8 and len(val) == 2
    assert {e["subject"] for e in train}.isdisjoint(e["subject"] for e in val)
    entry = val[0]
    assert len(entry["image"]) == 4 and all(os.path.isfile(p) for p in entry["image"])
    assert [os.path.basename(p).split("_")[-1] for p in entry["image"]] == [f"{m}.nii.gz" for m in BRATS_MODALITIES]
    assert entry["label"] == ["HGG", "LGG"].index(entry["class_name"])
    assert class_weights(train, 2) == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match="fold 7 not in"):
        load_classification_datalist(output, sample, fold=7, split="val")
    with pytest.raises(ValueError, match="class_names"):
        load_classification_datalist(output, sample, class_names=["LGG", "HGG"])


def test_tool_cli(sample, tmp_path):
    output = tmp_path / "cli.json"
    result = subprocess.run(
        tool_command("brats_datalist", "--data_dir", sample, "--output", str(output), "--num_folds", "2"),
        env=tool_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "fold 1:" in result.stdout
    assert json.loads(output.read_text())["num_folds"] == 2


def test_missing_modality_names_the_subject(brats, tmp_path):
    os.remove(_case_file(brats, "LGG", 4, "flair"))
    with pytest.raises(SubjectError, match="subject 'Brats18_SAMPLE_0004': missing modality 'flair'") as info:
        build_tool(data_dir=brats, output=str(tmp_path / "d.json"))
    assert [s for s, _ in info.value.problems] == ["Brats18_SAMPLE_0004"]
    assert not (tmp_path / "d.json").exists()
    # --skip_invalid drops the subject and keeps the others
    output = build_tool(data_dir=brats, output=str(tmp_path / "d.json"), skip_invalid=True)
    subjects = [e["subject"] for e in json.loads(Path(output).read_text())["training"]]
    assert len(subjects) == NUM_SUBJECTS - 1 and "Brats18_SAMPLE_0004" not in subjects


def test_missing_file_after_datalist_is_reported_before_training(brats, tmp_path):
    output = build_tool(data_dir=brats, output=str(tmp_path / "d.json"))
    os.remove(_case_file(brats, "HGG", 3, "t1ce"))
    with pytest.raises(SubjectError, match="subject 'Brats18_SAMPLE_0003': modality 't1ce' file not found"):
        load_classification_datalist(output, brats)


def _rewrite(path: str, array: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(array.astype(np.float32), affine), path)


def test_mismatched_shape_and_affine(brats):
    t2 = _case_file(brats, "HGG", 1, "t2")
    image = nib.load(t2)
    _rewrite(t2, np.asarray(image.dataobj)[:-2], image.affine)
    flair = _case_file(brats, "LGG", 2, "flair")
    image = nib.load(flair)
    shifted = image.affine.copy()
    shifted[0, 3] += 5.0
    _rewrite(flair, np.asarray(image.dataobj), shifted)
    with pytest.raises(SubjectError) as info:
        validate_subjects(scan_brats_folder(brats))
    problems = dict(info.value.problems)
    assert set(problems) == {"Brats18_SAMPLE_0001", "Brats18_SAMPLE_0002"}
    assert "shape of 't2' (22, 24, 16) differs from 't1' (24, 24, 16)" in problems["Brats18_SAMPLE_0001"]
    assert "affine of 'flair' differs" in problems["Brats18_SAMPLE_0002"]
    validate_subjects(scan_brats_folder(brats), check_headers=False)  # headers not read: passes


def test_unknown_class_folder(brats):
    os.rename(os.path.join(brats, "LGG"), os.path.join(brats, "GBM"))
    subjects, problems = find_brats_subjects(brats)
    assert len(subjects) == NUM_SUBJECTS // 2
    assert {s for s, _ in problems} == {f"Brats18_SAMPLE_{i:04d}" for i in (2, 4, 6, 8, 10)}
    assert all("unknown class 'GBM'" in message for _, message in problems)
    with pytest.raises(SubjectError, match="unknown class 'GBM'"):
        scan_brats_folder(brats)
    assert len(scan_brats_folder(brats, class_names=["HGG", "LGG", "GBM"])) == NUM_SUBJECTS


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["subject", "class", *BRATS_MODALITIES])
        writer.writeheader()
        writer.writerows(rows)


def test_csv_input(sample, tmp_path):
    subjects = scan_brats_folder(sample)
    rows = [
        {"subject": s["subject"], "class": s["class"], **{m: os.path.relpath(s[m], tmp_path) for m in BRATS_MODALITIES}}
        for s in subjects
    ]
    table = tmp_path / "subjects.csv"
    _write_csv(table, rows)
    read = read_subjects_csv(str(table))
    assert [r["subject"] for r in read] == [s["subject"] for s in subjects]
    assert read[0]["t1"] == subjects[0]["t1"]  # relative paths resolved against the CSV's folder

    output = build_tool(csv=str(table), output=str(tmp_path / "d.json"), dataset_dir=sample, num_folds=2)
    entries = load_classification_datalist(output, sample, fold=0, split="val")
    assert len(entries) == NUM_SUBJECTS // 2

    rows[3]["class"] = "GBM"
    rows[5]["flair"] = ""
    _write_csv(table, rows)
    with pytest.raises(SubjectError) as info:
        build_tool(csv=str(table), output=str(tmp_path / "e.json"))
    problems = dict(info.value.problems)
    assert "unknown class 'GBM'" in problems[rows[3]["subject"]]
    assert "missing modality 'flair'" in problems[rows[5]["subject"]]

    (tmp_path / "bad.csv").write_text("subject,class,t1,t2\nx,HGG,a,b\n")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['t1ce', 'flair'\]"):
        read_subjects_csv(str(tmp_path / "bad.csv"))


def test_testing_list_and_unlabelled_loading(sample, tmp_path):
    test_dir = tmp_path / "validation_release"
    for subject in scan_brats_folder(sample)[:2]:
        shutil.copytree(os.path.dirname(subject["t1"]), test_dir / subject["subject"])
    output = build_tool(data_dir=sample, output=str(tmp_path / "d.json"), test_dir=str(test_dir))
    content = json.loads(Path(output).read_text())
    assert len(content["testing"]) == 2 and "class" not in content["testing"][0]
    entries = load_classification_datalist(output, sample, key="testing", require_class=False)
    assert [e["label"] for e in entries] == [-1, -1]
    with pytest.raises(SubjectError, match="no class"):
        load_classification_datalist(output, sample, key="testing")


def test_duplicates_and_class_weights():
    subjects = [{"subject": "a", "class": "HGG"}, {"subject": "a", "class": "LGG"}]
    with pytest.raises(SubjectError, match="duplicated subject id"):
        validate_subjects(subjects, modalities=(), check_headers=False)
    entries = [{"label": 0}] * 210 + [{"label": 1}] * 75
    assert class_weights(entries, 2) == pytest.approx([285 / 420, 285 / 150])
    with pytest.raises(ValueError, match="no training subjects"):
        class_weights([{"label": 0}], 2)


def test_build_datalist_keeps_outside_paths_absolute(sample, tmp_path):
    subjects = scan_brats_folder(sample)
    datalist = build_datalist(subjects, str(tmp_path), num_folds=2)
    assert os.path.isabs(datalist["training"][0]["t1"])
    datalist = build_datalist(subjects, sample, num_folds=2)
    assert not os.path.isabs(datalist["training"][0]["t1"])
