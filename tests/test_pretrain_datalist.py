"""tools/pretrain_datalist.py: modality detection (name, header, voxels, overrides), the split, the written list."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from monai_dae.data.datalist import load_datalist
from tools.pretrain_datalist import build

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _nifti(path, low=0.0, high=100.0, descrip="", shape=(8, 8, 8)):
    """A tiny volume with values spanning [low, high]."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = np.linspace(low, high, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    image = nib.Nifti1Image(data, np.eye(4))
    if descrip:
        image.header["descrip"] = descrip.encode()
    nib.save(image, str(path))
    return str(path)


def _ct(path):
    return _nifti(path, -1000.0, 400.0)


def _mri(path):
    return _nifti(path, 0.0, 800.0)


def _brats(root, count):
    for index in range(count):
        case = f"BraTS2021_{index:05d}"
        for modality in ("t1", "t1ce", "t2", "flair"):
            _mri(root / "brats" / case / f"{case}_{modality}.nii.gz")
        _nifti(root / "brats" / case / f"{case}_seg.nii.gz", 0, 4)  # a label map: excluded by default


def _entries(path):
    with open(path) as f:
        content = json.load(f)
    return content, {e["image"]: e for key in ("training", "validation") for e in content[key]}


def test_modality_by_name_header_intensity_and_overrides(tmp_path, capsys):
    root = tmp_path / "data"
    _ct(root / "ct" / "lung_001.nii.gz")  # folder names it
    _nifti(root / "scans" / "abdomen_CT_002.nii", 0.0, 10.0)  # the name wins over the voxels
    _mri(root / "scans" / "head_T1ce_003.nii.gz")  # t1ce, never t1
    _mri(root / "scans" / "BraTS-GLI-00000-000-t2f.nii.gz")  # BraTS 2023 spelling: flair
    _ct(root / "scans" / "neutral_like.nii.gz")  # neutral name, air in HU
    _mri(root / "scans" / "neutral_mr_like.nii.gz")  # neutral name, non-negative
    _mri(root / "scans" / "volume7.nii.gz")
    _nifti(root / "scans" / "hdr.nii.gz", 0, 50, descrip="T2 weighted")  # header names it
    _mri(root / "scans" / "forced.nii.gz")
    _ct(root / "scans" / "t2_scan_x.nii.gz")  # the override wins over the name
    _mri(root / "scans" / "junk.nii.gz")
    overrides = tmp_path / "overrides.csv"
    overrides.write_text("path,modality\nscans/t2_scan_x.nii.gz,CT\n*forced*,T1Gd\nscans/junk.nii.gz,skip\n")
    output = build(str(root), overrides=str(overrides), mri_modality="t1", val_fraction=0.0, progress=False)
    _, entries = _entries(output)
    assert {k: v["modality"] for k, v in entries.items()} == {
        "ct/lung_001.nii.gz": "ct",
        "scans/abdomen_CT_002.nii": "ct",
        "scans/head_T1ce_003.nii.gz": "t1ce",
        "scans/BraTS-GLI-00000-000-t2f.nii.gz": "flair",
        "scans/neutral_like.nii.gz": "ct",
        "scans/neutral_mr_like.nii.gz": "t1",  # MRI by its voxels, the sequence from --mri_modality
        "scans/volume7.nii.gz": "t1",
        "scans/hdr.nii.gz": "t2",
        "scans/forced.nii.gz": "t1ce",
        "scans/t2_scan_x.nii.gz": "ct",
    }
    # a JSON override file works the same, and without --mri_modality a non-negative neutral file is undetermined
    (tmp_path / "overrides.json").write_text(json.dumps({"scans/neutral_mr_like.nii.gz": "t2", "*volume7*": "flair",
                                                         "*forced*": "t1", "*junk*": "skip"}))
    output = build(str(root), overrides=str(tmp_path / "overrides.json"), val_fraction=0.0, progress=False,
                   output=str(tmp_path / "second.json"))
    _, entries = _entries(output)
    assert entries["scans/neutral_mr_like.nii.gz"]["modality"] == "t2"
    assert entries["scans/volume7.nii.gz"]["modality"] == "flair"
    assert entries["scans/t2_scan_x.nii.gz"]["modality"] == "t2"  # no override: the name
    assert all(os.path.isfile(tmp_path / "data" / k) for k in entries)  # paths relative to dataset_dir (the root)
    assert not any(os.path.isabs(k) for k in entries)
    capsys.readouterr()


def test_undetermined_modality_names_the_file(tmp_path, capsys):
    root = tmp_path / "data"
    _ct(root / "ct_001.nii.gz")
    neutral = _mri(root / "other" / "scan_0042.nii.gz")
    middle = _nifti(root / "other" / "scan_0043.nii.gz", -200.0, 300.0)  # neither CT nor MRI by its voxels
    with pytest.raises(ValueError) as error:
        build(str(root), progress=False)
    assert neutral in str(error.value) and middle in str(error.value) and "--mri_modality" in str(error.value)
    assert not os.path.exists(root / "datalist_pretrain.json")  # nothing written
    # --unknown skip leaves them out, listed on stderr
    output = build(str(root), unknown="skip", val_fraction=0.0, progress=False)
    assert list(_entries(output)[1]) == ["ct_001.nii.gz"]
    assert neutral in capsys.readouterr().err


def test_split_stratified_reproducible_subjects_together_and_table(tmp_path, capsys):
    root = tmp_path / "data"
    for index in range(10):
        _ct(root / "ct" / f"lung_{index:03d}.nii.gz")
    _brats(root, 5)
    _nifti(root / "ct" / "labels" / "lung_000.nii.gz", 0, 2)  # excluded by the default patterns
    first = build(str(root), val_fraction=0.2, seed=3, progress=False)
    table = capsys.readouterr().out
    content, entries = _entries(first)
    assert len(entries) == 10 + 20 and not any("seg" in k or "labels" in k for k in entries)
    validation = content["validation"]
    # stratified: round(0.2 * 10) CT volumes and round(0.2 * 5) BraTS subjects (4 modalities each) to validation
    assert sum(e["modality"] == "ct" for e in validation) == 2
    assert {e["modality"] for e in validation} == {"ct", "t1", "t1ce", "t2", "flair"}
    assert len(validation) == 2 + 4 and content["numValidation"] == 6 and content["numTraining"] == 24
    # the four files of one BraTS subject stay together
    split_of = {}
    for key in ("training", "validation"):
        for e in content[key]:
            if e["image"].startswith("brats/"):
                split_of.setdefault(e["subject"], set()).add(key)
    assert len(split_of) == 5 and all(len(s) == 1 for s in split_of.values())
    # the printed table: per modality training / validation / total, then the totals
    rows = {line.split()[0]: [int(v) for v in line.split()[1:]] for line in table.splitlines()[-6:]}
    assert rows["ct"] == [8, 2, 10] and rows["t1ce"] == [4, 1, 5] and rows["total"] == [24, 6, 30]
    # reproducible: same seed, same list; another seed, another split
    again = build(str(root), val_fraction=0.2, seed=3, output=str(tmp_path / "again.json"), progress=False)
    assert _entries(again)[0]["validation"] == validation
    other = build(str(root), val_fraction=0.2, seed=4, output=str(tmp_path / "other.json"), progress=False)
    assert _entries(other)[0]["validation"] != validation
    # group by parent folder: the 10 CT files form one subject (stratum of 1: all training)
    parent = build(str(root), val_fraction=0.2, group_by="parent", output=str(tmp_path / "parent.json"), progress=False)
    assert not any(e["modality"] == "ct" for e in _entries(parent)[0]["validation"])
    # the bundle's own loader reads the list, relative paths resolved against dataset_dir
    for key, count in (("training", 24), ("validation", 6)):
        loaded = load_datalist(first, str(root), key)
        assert len(loaded) == count and all(os.path.isfile(e["image"]) for e in loaded)
    capsys.readouterr()


def test_cli_multiple_roots(tmp_path):
    (tmp_path / "a").mkdir()
    _ct(tmp_path / "a" / "ct" / "case_1.nii.gz")
    _ct(tmp_path / "a" / "ct" / "case_2.nii.gz")
    _brats(tmp_path / "b", 2)
    output = tmp_path / "out" / "list.json"
    env = {**os.environ, "PYTHONPATH": REPO}
    command = [sys.executable, "-m", "tools.pretrain_datalist", str(tmp_path / "a"), str(tmp_path / "b"),
               "--dataset_dir", str(tmp_path), "--output", str(output), "--val_fraction", "0.5", "--seed", "1"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "reading images" not in result.stderr  # stderr is a pipe: no progress bar
    content, entries = _entries(output)
    assert len(entries) == 2 + 8 and "a/ct/case_1.nii.gz" in entries and "b/brats/BraTS2021_00001/BraTS2021_00001_t2.nii.gz" in entries
    assert content["numTraining"] == 5 and content["numValidation"] == 5
    assert "total" in result.stdout and str(output) in result.stdout
    assert not [p for p in os.listdir(output.parent) if p != "list.json"]  # no temporary file left behind
    # an undetermined file: exit status 1, the file named on stderr
    neutral = _mri(tmp_path / "a" / "misc" / "volume.nii.gz")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and neutral in result.stderr and "Traceback" not in result.stderr
