"""tools/btcv_datalist.py on a fake BTCV folder with broken cases."""

from __future__ import annotations

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from monai_dae.data.phantoms import write_sample_dataset
from tools.btcv_datalist import build


@pytest.fixture(scope="module")
def btcv_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("btcv_tool")
    paths = write_sample_dataset(str(root), num_ct=7, num_brain=2, ct_shape=(24, 24, 12), brain_shape=(16, 16, 16))
    return paths["btcv_dir"]


def _copy(btcv_dir, tmp_path) -> str:
    target = str(tmp_path / "btcv")
    shutil.copytree(btcv_dir, target)
    return target


def _break(folder: str) -> None:
    """Case 2: label with a different shape; case 5: label with another affine; case 7: label deleted."""
    image = nib.load(os.path.join(folder, "imagesTr", "img0002.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((24, 24, 10), np.uint8), image.affine), os.path.join(folder, "labelsTr", "label0002.nii.gz"))
    label = nib.load(os.path.join(folder, "labelsTr", "label0005.nii.gz"))
    shifted = label.affine.copy()
    shifted[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj), shifted), os.path.join(folder, "labelsTr", "label0005.nii.gz"))
    os.remove(os.path.join(folder, "labelsTr", "label0007.nii.gz"))


def test_folds_from_existing_dataset_json(btcv_dir, tmp_path):
    folder = _copy(btcv_dir, tmp_path)
    written = build(folder, num_folds=5)
    assert [os.path.basename(p) for p in written] == [f"datalist_fold{k}.json" for k in range(5)]
    validation_images = []
    for fold, path in enumerate(written):
        with open(path) as f:
            content = json.load(f)
        assert content["fold"] == fold and content["labels"]["13"] == "left adrenal gland"
        train = {e["image"] for e in content["training"]}
        val = {e["image"] for e in content["validation"]}
        assert not train & val and len(train | val) == 7
        assert all(e["fold"] == fold for e in content["validation"])
        for entry in content["training"] + content["validation"]:
            assert os.path.isfile(os.path.join(folder, entry["image"])) and os.path.isfile(os.path.join(folder, entry["label"]))
        validation_images += sorted(val)
    assert len(validation_images) == len(set(validation_images)) == 7  # every case validated exactly once
    # the same seed gives the same folds
    assert build(folder, num_folds=5) == written


def test_broken_cases_are_reported_and_left_out(btcv_dir, tmp_path, capsys):
    folder = _copy(btcv_dir, tmp_path)
    os.remove(os.path.join(folder, "dataset_0.json"))  # pair by file number
    _break(folder)
    written = build(folder, num_folds=2)
    err = capsys.readouterr().err
    assert "labelsTr/label0002.nii.gz: label shape (24, 24, 10) does not match image shape (24, 24, 12)" in err
    assert "labelsTr/label0005.nii.gz: label affine does not match" in err
    assert "imagesTr/img0007.nii.gz: no label file" in err
    with open(written[0]) as f:
        content = json.load(f)
    used = {e["image"] for e in content["training"] + content["validation"]}
    assert used == {f"imagesTr/img000{i}.nii.gz" for i in (1, 3, 4, 6)}

    with pytest.raises(SystemExit):
        build(folder, output_dir=str(tmp_path / "strict"), num_folds=2, strict=True)
    assert not os.path.exists(tmp_path / "strict")


def test_bad_label_values_and_missing_files(btcv_dir, tmp_path, capsys):
    folder = _copy(btcv_dir, tmp_path)
    label = nib.load(os.path.join(folder, "labelsTr", "label0003.nii.gz"))
    data = np.asarray(label.dataobj).copy()
    data[0, 0, 0] = 20
    nib.save(nib.Nifti1Image(data, label.affine), os.path.join(folder, "labelsTr", "label0003.nii.gz"))
    os.remove(os.path.join(folder, "imagesTr", "img0004.nii.gz"))
    with open(os.path.join(folder, "labelsTr", "label0006.nii.gz"), "wb") as f:
        f.write(b"broken")
    build(folder, output_dir=str(tmp_path / "lists"), num_folds=2)
    err = capsys.readouterr().err
    assert "labelsTr/label0003.nii.gz: label values [20] outside the BTCV labels 0..13" in err
    assert "imagesTr/img0004.nii.gz: image file not found" in err
    assert "labelsTr/label0006.nii.gz: unreadable NIfTI label" in err
    with open(tmp_path / "lists" / "datalist_fold0.json") as f:
        entry = json.load(f)["training"][0]
    # written outside the data folder: paths stay valid relative to the lists
    assert os.path.isfile(os.path.join(tmp_path / "lists", entry["image"]))
