"""Tests for the synthetic CT / brain MRI phantoms and the sample data set writer."""

from __future__ import annotations

import glob
import json
import os
import subprocess

import nibabel as nib
import numpy as np
import pytest

from monai_dae.data.phantoms import (
    BRATS_MODALITIES,
    BTCV_ORGANS,
    make_brain_phantom,
    make_ct_phantom,
    write_sample_dataset,
)

from bundle_testing import tool_command, tool_env

CT_SHAPE = (64, 64, 32)
BRAIN_SHAPE = (48, 48, 40)
VALID_MODALITIES = {"ct", *BRATS_MODALITIES}


@pytest.fixture(scope="module")
def ct_phantom():
    return make_ct_phantom(3, shape=CT_SHAPE)


@pytest.fixture(scope="module")
def sample_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    paths = write_sample_dataset(
        str(out), num_ct=3, num_brain=4, seed=5, ct_shape=CT_SHAPE, brain_shape=BRAIN_SHAPE, num_validation=1
    )
    return out, paths


def test_btcv_organ_names():
    assert len(BTCV_ORGANS) == 13
    assert BTCV_ORGANS[0] == "spleen" and BTCV_ORGANS[5] == "liver" and BTCV_ORGANS[12] == "left adrenal gland"
    assert BRATS_MODALITIES == ("t1", "t1ce", "t2", "flair")


@pytest.mark.parametrize("shape", [(96, 96, 48), CT_SHAPE])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_ct_all_labels_present(seed, shape):
    image, label, _ = make_ct_phantom(seed, shape=shape)
    assert image.shape == label.shape == shape
    assert image.dtype == np.float32 and label.dtype == np.uint8
    counts = np.bincount(label.ravel(), minlength=14)
    assert len(counts) == 14
    assert (counts[1:] >= 5).all(), dict(zip(BTCV_ORGANS, counts[1:]))


def test_ct_intensities(ct_phantom):
    image, label, _ = ct_phantom

    def organ_mean(name):
        return float(image[label == BTCV_ORGANS.index(name) + 1].mean())

    assert 40 <= organ_mean("liver") <= 80
    assert 30 <= organ_mean("spleen") <= 70
    assert organ_mean("aorta") > organ_mean("liver") + 80
    assert organ_mean("inferior vena cava") > organ_mean("liver")
    assert organ_mean("right kidney") > organ_mean("liver")
    assert organ_mean("gallbladder") < organ_mean("liver")
    # the corners lie outside the elliptical body: air
    corners = image[:5, :5, :]
    assert abs(float(corners.mean()) + 1000) < 10
    # bone in the spine, fat and muscle in the body wall
    assert image.max() > 400
    body = image[label == 0]
    assert ((body > -150) & (body < -50)).mean() > 0.05
    # noise: the liver is not constant, with a standard deviation close to 15 HU
    assert 10 < float(image[label == BTCV_ORGANS.index("liver") + 1].std()) < 20


def test_ct_affine_lps_anisotropic(ct_phantom):
    image, _, affine = ct_phantom
    assert affine.shape == (4, 4)
    assert nib.aff2axcodes(affine) == ("L", "P", "S")
    assert nib.aff2axcodes(affine) != ("R", "A", "S")
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    np.testing.assert_allclose(spacing, (0.8, 0.8, 2.5))


def test_ct_determinism():
    a_img, a_lab, a_aff = make_ct_phantom(11, shape=CT_SHAPE)
    b_img, b_lab, b_aff = make_ct_phantom(11, shape=CT_SHAPE)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    np.testing.assert_array_equal(a_aff, b_aff)
    c_img, c_lab, _ = make_ct_phantom(12, shape=CT_SHAPE)
    assert not np.array_equal(a_img, c_img)
    assert not np.array_equal(a_lab, c_lab)


@pytest.mark.parametrize("grade", ["HGG", "LGG"])
def test_brain_background_and_shapes(grade):
    images, seg, affine = make_brain_phantom(2, grade, shape=BRAIN_SHAPE)
    assert set(images) == set(BRATS_MODALITIES)
    assert seg.shape == BRAIN_SHAPE and seg.dtype == np.uint8
    assert affine.shape == (4, 4)
    head = images["t1"] > 0
    # a compact head inside the volume; the background is exactly zero and shared by all modalities
    assert 0.2 < head.mean() < 0.8
    assert not head[0].any() and not head[-1].any()
    for modality, image in images.items():
        assert image.shape == BRAIN_SHAPE and image.dtype == np.float32
        np.testing.assert_array_equal(image > 0, head, err_msg=modality)
        assert (image[~head] == 0).all()
    assert (seg[~head] == 0).all()
    # different intensity scales per modality
    medians = [float(np.median(images[m][head])) for m in BRATS_MODALITIES]
    assert len({round(m) for m in medians}) == 4


def test_brain_grades():
    hgg_images, hgg_seg, _ = make_brain_phantom(4, "HGG", shape=BRAIN_SHAPE)
    lgg_images, lgg_seg, _ = make_brain_phantom(4, "LGG", shape=BRAIN_SHAPE)
    assert set(np.unique(hgg_seg)) == {0, 1, 2, 4}
    assert set(np.unique(lgg_seg)) == {0, 1, 2}
    assert (hgg_seg > 0).sum() > (lgg_seg > 0).sum()
    # enhancing rim bright in t1ce compared with edema and healthy tissue, not in LGG
    hgg_t1ce = hgg_images["t1ce"]
    healthy = (hgg_seg == 0) & (hgg_t1ce > 0)
    assert hgg_t1ce[hgg_seg == 4].mean() > 1.5 * hgg_t1ce[hgg_seg == 2].mean()
    assert hgg_t1ce[hgg_seg == 4].mean() > 1.3 * np.percentile(hgg_t1ce[healthy], 95)
    lgg_t1ce = lgg_images["t1ce"]
    lgg_healthy = (lgg_seg == 0) & (lgg_t1ce > 0)
    assert lgg_t1ce[lgg_seg == 1].mean() < np.percentile(lgg_t1ce[lgg_healthy], 95)
    # edema is bright in flair and t2
    for modality in ("flair", "t2"):
        image = hgg_images[modality]
        assert image[hgg_seg == 2].mean() > np.median(image[healthy])


def test_brain_tissue_contrast():
    images, seg, _ = make_brain_phantom(6, "LGG", shape=(64, 64, 48))
    healthy = (seg == 0) & (images["t1"] > 0)
    t1 = images["t1"][healthy]
    # t1: WM > GM > CSF, so the darkest healthy voxels are CSF and the brightest WM
    csf = t1 < np.percentile(t1, 1)
    wm = t1 > np.percentile(t1, 75)
    t2, flair = images["t2"][healthy], images["flair"][healthy]
    assert t2[csf].mean() > 1.5 * t2[wm].mean()
    assert flair[csf].mean() < 0.6 * flair[wm].mean()


def test_brain_determinism_and_invalid_grade():
    a_images, a_seg, _ = make_brain_phantom(9, "HGG", shape=BRAIN_SHAPE)
    b_images, b_seg, _ = make_brain_phantom(9, "HGG", shape=BRAIN_SHAPE)
    c_images, _, _ = make_brain_phantom(10, "HGG", shape=BRAIN_SHAPE)
    np.testing.assert_array_equal(a_seg, b_seg)
    for modality in BRATS_MODALITIES:
        np.testing.assert_array_equal(a_images[modality], b_images[modality])
        assert not np.array_equal(a_images[modality], c_images[modality])
    with pytest.raises(ValueError, match="GBM"):
        make_brain_phantom(0, "GBM", shape=BRAIN_SHAPE)


def test_btcv_layout(sample_dataset):
    out, paths = sample_dataset
    assert paths["btcv_dir"] == str(out / "btcv")
    assert sorted(os.listdir(out / "btcv" / "imagesTr")) == [f"img{i:04d}.nii.gz" for i in (1, 2, 3)]
    assert sorted(os.listdir(out / "btcv" / "labelsTr")) == [f"label{i:04d}.nii.gz" for i in (1, 2, 3)]
    with open(paths["btcv_datalist"]) as f:
        datalist = json.load(f)
    assert paths["btcv_datalist"] == str(out / "btcv" / "dataset_0.json")
    assert len(datalist["labels"]) == 14
    assert datalist["labels"]["0"] == "background" and datalist["labels"]["6"] == "liver"
    assert datalist["modality"] == {"0": "CT"}
    assert datalist["numTraining"] == 2 and "name" in datalist and "description" in datalist
    assert datalist["training"] == [
        {"image": f"imagesTr/img{i:04d}.nii.gz", "label": f"labelsTr/label{i:04d}.nii.gz"} for i in (1, 2)
    ]
    assert datalist["validation"] == [{"image": "imagesTr/img0003.nii.gz", "label": "labelsTr/label0003.nii.gz"}]
    for case in datalist["training"] + datalist["validation"]:
        image = nib.load(os.path.join(paths["btcv_dir"], case["image"]))
        label = nib.load(os.path.join(paths["btcv_dir"], case["label"]))
        assert image.shape == label.shape == CT_SHAPE
        assert image.get_data_dtype() == np.float32 and label.get_data_dtype() == np.uint8
        np.testing.assert_allclose(image.affine, label.affine)
        assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
        assert int(image.header["sform_code"]) == 1 and int(image.header["qform_code"]) == 1
        np.testing.assert_allclose(image.header.get_zooms(), (0.8, 0.8, 2.5))
        assert set(np.unique(np.asarray(label.dataobj))) == set(range(14))


def test_brats_layout(sample_dataset):
    out, paths = sample_dataset
    brats_dir = out / "brats" / "MICCAI_BraTS_2018_Data_Training"
    assert paths["brats_dir"] == str(brats_dir)
    expected = {
        "HGG": ["Brats18_SAMPLE_0001", "Brats18_SAMPLE_0003"],
        "LGG": ["Brats18_SAMPLE_0002", "Brats18_SAMPLE_0004"],
    }
    for grade, cases in expected.items():
        assert sorted(os.listdir(brats_dir / grade)) == cases
        for case in cases:
            files = sorted(os.listdir(brats_dir / grade / case))
            assert files == sorted(f"{case}_{s}.nii.gz" for s in (*BRATS_MODALITIES, "seg"))
            seg = nib.load(brats_dir / grade / case / f"{case}_seg.nii.gz")
            t1 = nib.load(brats_dir / grade / case / f"{case}_t1.nii.gz")
            assert seg.shape == t1.shape == BRAIN_SHAPE
            assert seg.get_data_dtype() == np.uint8 and t1.get_data_dtype() == np.float32
            assert (4 in np.unique(np.asarray(seg.dataobj))) == (grade == "HGG")


def test_pretrain_datalist(sample_dataset):
    out, paths = sample_dataset
    assert paths["root"] == str(out)
    assert all(os.path.isabs(p) for p in paths.values())
    with open(paths["datalist_pretrain"]) as f:
        datalist = json.load(f)
    assert set(datalist) == {"training", "validation"}
    training, validation = datalist["training"], datalist["validation"]
    for entry in training + validation:
        assert set(entry) == {"image", "modality"}
        assert entry["modality"] in VALID_MODALITIES
        assert not os.path.isabs(entry["image"])
        assert os.path.isfile(out / entry["image"])
        if entry["modality"] != "ct":
            assert entry["image"].endswith(f"_{entry['modality']}.nii.gz")
    train_images = {e["image"] for e in training}
    val_images = {e["image"] for e in validation}
    assert not train_images & val_images
    # 3 CT + 4 brain cases x 4 modalities; one CT and one brain case for validation
    assert len(train_images) == 2 + 3 * 4 and len(val_images) == 1 + 4
    assert {e["modality"] for e in validation} == VALID_MODALITIES
    assert {e["modality"] for e in training} == VALID_MODALITIES
    assert not any("_seg" in e["image"] for e in training + validation)


def test_write_sample_dataset_determinism(tmp_path):
    kwargs = {"num_ct": 2, "num_brain": 2, "seed": 3, "ct_shape": (48, 48, 24), "brain_shape": (32, 32, 32)}
    first = write_sample_dataset(str(tmp_path / "a"), **kwargs)
    second = write_sample_dataset(str(tmp_path / "b"), **kwargs)
    other = write_sample_dataset(str(tmp_path / "c"), **{**kwargs, "seed": 4})
    files = sorted(os.path.relpath(p, first["root"]) for p in glob.glob(f"{first['root']}/**/*.nii.gz", recursive=True))
    assert len(files) == 2 * 2 + 2 * 5
    differs = False
    for rel in files:
        a = np.asarray(nib.load(os.path.join(first["root"], rel)).dataobj)
        np.testing.assert_array_equal(a, np.asarray(nib.load(os.path.join(second["root"], rel)).dataobj))
        differs |= not np.array_equal(a, np.asarray(nib.load(os.path.join(other["root"], rel)).dataobj))
    assert differs
    with pytest.raises(ValueError):
        write_sample_dataset(str(tmp_path / "d"), num_ct=1, num_brain=2)


def test_cli(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        tool_command(
            "sample_data",
            "--output_dir",
            str(out),
            "--num_ct",
            "2",
            "--num_brain",
            "2",
            "--ct_shape",
            "[64,64,32]",
            "--brain_shape",
            "[48,48,48]",
            "--num_validation",
            "1",
        ),
        capture_output=True,
        text=True,
        check=True,
        cwd=str(tmp_path),
        env=tool_env(),
    )
    assert str(out / "datalist_pretrain.json") in result.stdout
    assert str(out / "btcv" / "dataset_0.json") in result.stdout
    assert nib.load(out / "btcv" / "imagesTr" / "img0002.nii.gz").shape == (64, 64, 32)
    case = out / "brats" / "MICCAI_BraTS_2018_Data_Training" / "LGG" / "Brats18_SAMPLE_0002"
    assert nib.load(case / "Brats18_SAMPLE_0002_flair.nii.gz").shape == (48, 48, 48)
    with open(out / "datalist_pretrain.json") as f:
        datalist = json.load(f)
    assert len(datalist["training"]) == 1 + 4 and len(datalist["validation"]) == 1 + 4
