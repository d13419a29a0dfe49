"""
Faults in the input data: every one must stop the run with a message naming the file (and the data list entry)
and the problem, or, where a switch says so, be left out with a warning. Never a zero exit with a model trained
on NaN voxels.

Driven through the real entry point (``python -m monai.bundle run training``) once per fault kind, at test
size; the check functions and the loader are tested directly for the rest.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_dae.data import DataCheckError, check_bundle_data, check_entries, check_file, check_image_file, load_datalist
from monai_dae.data.brats import SubjectError, load_classification_datalist
from monai_dae.data.phantoms import write_sample_dataset
from monai_dae.transforms import LoadImageNamed
from tools.brats_datalist import build as build_brats_datalist
from tools.check_data import check as check_data_tool

from bundle_testing import BTCV_TINY, DAE_TRAIN, REPO, cli_env, cli_overrides, config_arg, tool_command

BUNDLES = REPO / "bundles"
PRETRAIN = config_arg(*DAE_TRAIN)
BTCV = str(BUNDLES / "dae_btcv_seg" / "configs" / "train.json")
BRATS = str(BUNDLES / "dae_brats_cls" / "configs" / "train.json")

PRETRAIN_TINY = {
    "roi_size": [64, 64, 64],
    "feature_size": 12,
    "batch_size": 2,
    "num_workers": 0,
    "cache_rate": 0.0,
    "max_epochs": 1,
    "val_interval": 1,
    "sw_batch_size": 1,
    "progress_bar": False,
}
BTCV_SMALL = {**BTCV_TINY, "roi_size": [64, 64, 32]}
BRATS_TINY = {
    "spatial_size": [32, 32, 32],
    "feature_size": 12,
    "batch_size": 2,
    "num_workers": 0,
    "cache_rate": 0.0,
    "max_epochs": 1,
    "val_interval": 1,
    "progress_bar": False,
}


# --------------------------------------------------------------------------------------------------------------
# data and faults
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> dict[str, str]:
    """CT + brain phantoms: 2 training and 1 validation BTCV cases; pretraining and BraTS lists too."""
    paths = write_sample_dataset(
        str(tmp_path_factory.mktemp("sample")),
        num_ct=3,
        num_brain=6,
        ct_shape=(48, 48, 24),
        brain_shape=(40, 40, 32),
        num_validation=1,
    )
    paths["brats_datalist"] = build_brats_datalist(data_dir=paths["brats_dir"], num_folds=3)
    return paths


def _save(array: np.ndarray, path: Path, affine: np.ndarray | None = None) -> str:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return str(path)


def _faulty_copy(source: str, target: Path, fault: str) -> str:
    """Write ``source`` with one fault to ``target``; returns the path."""
    image = nib.load(source)
    array, affine = np.asarray(image.dataobj), image.affine
    if fault in ("nan", "inf"):
        array = array.astype(np.float32)
        array[array.shape[0] // 2, :4, :4] = np.nan if fault == "nan" else np.inf
    elif fault == "truncated":
        _save(array, target, affine)
        content = target.read_bytes()
        target.write_bytes(content[: len(content) // 2])  # the header survives, the voxels do not
        return str(target)
    elif fault == "zero_size":
        array = array[:, :, :0]
    elif fault == "four_d":
        array = np.stack([array, array], axis=-1)
    elif fault == "float_label":
        array = array.astype(np.float32)
        array[0, 0, :4] = 1.5
    elif fault == "label_20":
        array = array.astype(np.uint8)
        array[0, 0, :4] = 20
    elif fault == "label_shape":
        array = array[:, :, :-4]
    else:
        raise ValueError(fault)
    return _save(array, target, affine)


def _bundle_cli(config: str, tmp_path: Path, **overrides) -> tuple[int, str]:
    command = [
        sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config,
        *cli_overrides(bundle_root=str(tmp_path / "bundle"), **overrides),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=900)
    return result.returncode, result.stdout + result.stderr


def _pretrain_list(sample: dict, tmp_path: Path, faults: dict[int, str]) -> str:
    """
    A small pretraining list from the sample (training: 2 CT and 2 MRI files, validation: 1 of each), with
    ``faults[i]`` written into a copy of training entry i (entries 0 and 1 are the CTs).
    """
    content = json.loads(Path(sample["datalist_pretrain"]).read_text())
    for key, size in (("training", 2), ("validation", 1)):
        ct = [e for e in content[key] if e["modality"] == "ct"]
        mri = [e for e in content[key] if e["modality"] != "ct"]
        content[key] = ct[:size] + mri[:size]
    for index, fault in faults.items():
        entry = content["training"][index]
        target = tmp_path / f"{fault}_{os.path.basename(entry['image'])}"
        entry["image"] = _faulty_copy(os.path.join(sample["root"], entry["image"]), target, fault)
    path = tmp_path / "pretrain.json"
    path.write_text(json.dumps(content))
    return str(path)


def _btcv_list(sample: dict, tmp_path: Path, faults: dict[tuple[int, str], str]) -> str:
    """The sample's BTCV list, with ``faults[(i, key)]`` written into a copy of training entry i's file."""
    content = json.loads(Path(sample["btcv_datalist"]).read_text())
    for (index, key), fault in faults.items():
        entry = content["training"][index]
        target = tmp_path / f"{fault}_{os.path.basename(entry[key])}"
        entry[key] = _faulty_copy(os.path.join(sample["btcv_dir"], entry[key]), target, fault)
    path = tmp_path / "btcv.json"
    path.write_text(json.dumps(content))
    return str(path)


# --------------------------------------------------------------------------------------------------------------
# through the bundles' command line
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.extended
def test_cli_pretrain_nan_voxels_stop_at_load_time_naming_the_file(sample, tmp_path):
    """Without check_data, the loader stops on the NaN volume (it used to train to NaN weights and exit 0)."""
    index = 0
    datalist = _pretrain_list(sample, tmp_path, {index: "nan"})
    bad = json.loads(Path(datalist).read_text())["training"][index]["image"]
    rc, output = _bundle_cli(PRETRAIN, tmp_path, datalist=datalist, dataset_dir=sample["root"], **PRETRAIN_TINY)
    assert rc != 0
    assert bad in output and "non-finite voxels" in output and "nonfinite_inputs" in output
    assert not (tmp_path / "bundle" / "models" / "model.pt").exists()


@pytest.mark.extended
def test_cli_pretrain_check_data_names_every_bad_file_before_training(sample, tmp_path):
    """check_data reads every voxel up front: Inf voxels and a truncated .nii.gz, both named with their entries."""
    datalist = _pretrain_list(sample, tmp_path, {0: "inf", 1: "truncated"})
    entries = json.loads(Path(datalist).read_text())["training"]
    rc, output = _bundle_cli(
        PRETRAIN, tmp_path, datalist=datalist, dataset_dir=sample["root"], check_data=True, **PRETRAIN_TINY
    )
    assert rc != 0
    assert "DataCheckError" in output and "2 problem(s)" in output
    assert f"'{entries[0]['image']}': non-finite voxels" in output and "training entry 0" in output
    assert f"'{entries[1]['image']}': unreadable" in output and "truncated or corrupt" in output
    assert "training entry 1" in output
    assert "Epoch[1]" not in output  # stopped before training


@pytest.mark.extended
def test_cli_pretrain_truncated_file_is_named_at_load_time(sample, tmp_path):
    """Without check_data, the header check passes a truncated .nii.gz; the loader names it when it fails."""
    index = 0
    datalist = _pretrain_list(sample, tmp_path, {index: "truncated"})
    bad = json.loads(Path(datalist).read_text())["training"][index]["image"]
    rc, output = _bundle_cli(PRETRAIN, tmp_path, datalist=datalist, dataset_dir=sample["root"], **PRETRAIN_TINY)
    assert rc != 0
    assert f"cannot load {bad} of data list entry" in output and "truncated or corrupt" in output
    assert "--check_data True" in output


@pytest.mark.extended
def test_cli_pretrain_zero_size_dimension_stops_before_training(sample, tmp_path):
    datalist = _pretrain_list(sample, tmp_path, {0: "zero_size"})
    bad = json.loads(Path(datalist).read_text())["training"][0]["image"]
    rc, output = _bundle_cli(PRETRAIN, tmp_path, datalist=datalist, dataset_dir=sample["root"], **PRETRAIN_TINY)
    assert rc != 0
    assert f"zero-size dimension in '{bad}': shape (48, 48, 0)" in output
    assert "Epoch[1]" not in output


@pytest.mark.extended
def test_cli_btcv_check_data_names_every_bad_label(sample, tmp_path):
    """Float non-integral labels, a label of another shape and label value 20, all named with their entries."""
    faults = {(0, "label"): "float_label", (1, "label"): "label_shape"}
    datalist = _btcv_list(sample, tmp_path, faults)
    content = json.loads(Path(datalist).read_text())
    # a third entry: label value 20, added to the training list
    extra = dict(json.loads(Path(sample["btcv_datalist"]).read_text())["training"][0])
    extra["image"] = os.path.join(sample["btcv_dir"], extra["image"])
    extra["label"] = _faulty_copy(os.path.join(sample["btcv_dir"], extra["label"]), tmp_path / "l20.nii.gz", "label_20")
    content["training"].append(extra)
    Path(datalist).write_text(json.dumps(content))
    rc, output = _bundle_cli(
        BTCV, tmp_path, datalist=datalist, dataset_dir=sample["btcv_dir"], check_data=True, **BTCV_SMALL
    )
    assert rc != 0
    assert "3 problem(s)" in output
    training = content["training"]
    assert f"'{training[0]['label']}': label map holds non-integer values (e.g. [1.5])" in output
    assert f"'{training[1]['label']}': spatial shape (48, 48, 20) differs from (48, 48, 24)" in output
    assert f"'{training[2]['label']}': label values [20] outside the classes 0..13" in output
    assert "training entry 2 (image=" in output


@pytest.mark.extended
def test_cli_btcv_label_value_20_stops_at_load_time(sample, tmp_path):
    """Without check_data the loader names the label file (it used to fail deep inside the one-hot encoding)."""
    datalist = _btcv_list(sample, tmp_path, {(0, "label"): "label_20"})
    bad = json.loads(Path(datalist).read_text())["training"][0]["label"]
    rc, output = _bundle_cli(BTCV, tmp_path, datalist=datalist, dataset_dir=sample["btcv_dir"], **BTCV_SMALL)
    assert rc != 0
    assert f"'{bad}': label values [20] outside the classes 0..13" in output


@pytest.mark.extended
def test_cli_btcv_nonfinite_skip_trains_on_the_rest_with_a_warning(sample, tmp_path):
    datalist = _btcv_list(sample, tmp_path, {(0, "image"): "nan"})
    bad = json.loads(Path(datalist).read_text())["training"][0]["image"]
    rc, output = _bundle_cli(
        BTCV, tmp_path, datalist=datalist, dataset_dir=sample["btcv_dir"], nonfinite_inputs="skip", **BTCV_SMALL
    )
    assert rc == 0, output[-4000:]
    assert "skipped entry 0" in output and bad in output and "non-finite voxels" in output
    assert "1 of 2 entries left out" in output
    state = torch.load(tmp_path / "bundle" / "models" / "model.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.extended
def test_cli_brats_nan_modality_stops_at_load_time(sample, tmp_path):
    """The BraTS bundle used to report AUC 1.0 on NaN inputs; the loader now names the modality file."""
    content = json.loads(Path(sample["brats_datalist"]).read_text())
    entry = next(e for e in content["training"] if e["fold"] != 0)
    bad = _faulty_copy(os.path.join(sample["brats_dir"], entry["t1ce"]), tmp_path / "nan_t1ce.nii.gz", "nan")
    entry["t1ce"] = bad
    datalist = tmp_path / "brats.json"
    datalist.write_text(json.dumps(content))
    rc, output = _bundle_cli(BRATS, tmp_path, datalist=str(datalist), dataset_dir=sample["brats_dir"], **BRATS_TINY)
    assert rc != 0
    assert f"'{bad}': non-finite voxels" in output and f"subject='{entry['subject']}'" in output


# --------------------------------------------------------------------------------------------------------------
# the check functions, the loader and the tool, directly
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    """One small file per fault, next to a good image and a good label."""
    rng = np.random.default_rng(0)
    image = rng.normal(size=(12, 10, 8)).astype(np.float32)
    label = rng.integers(0, 14, size=(12, 10, 8)).astype(np.uint8)
    paths = {"image": _save(image, tmp_path / "image.nii.gz"), "label": _save(label, tmp_path / "label.nii.gz")}
    for fault in ("nan", "inf", "truncated", "zero_size", "four_d"):
        paths[fault] = _faulty_copy(paths["image"], tmp_path / f"{fault}.nii.gz", fault)
    for fault in ("float_label", "label_20", "label_shape"):
        paths[fault] = _faulty_copy(paths["label"], tmp_path / f"{fault}.nii.gz", fault)
    paths["integral_float_label"] = _save(label.astype(np.float32), tmp_path / "integral_float_label.nii.gz")
    paths["two_d"] = _save(image[:, :, 0], tmp_path / "two_d.nii.gz")
    return paths


@pytest.mark.parametrize(
    "fault, label, message",
    [
        ("nan", False, "non-finite voxels (16 NaN and 0 Inf of 960)"),
        ("inf", False, "non-finite voxels (0 NaN and 16 Inf of 960)"),
        ("truncated", False, "unreadable (EOFError"),
        ("zero_size", False, "shape (12, 10, 0) is not a 3-D volume"),
        ("two_d", False, "shape (12, 10) is not a 3-D volume"),
        ("four_d", False, "shape (12, 10, 8, 2) holds 2 channel(s) of a 3-D volume, expected 1"),
        ("float_label", True, "non-integer values (e.g. [1.5])"),
        ("label_20", True, "label values [20] outside the classes 0..13"),
    ],
)
def test_check_file_names_the_file_and_the_problem(files, fault, label, message):
    problems, warnings, _ = check_file(files[fault], label=label, num_classes=14)
    assert len(problems) == 1 and not warnings
    assert problems[0].startswith(f"'{files[fault]}': ") and message in problems[0]


def test_check_file_accepts_good_files_and_warns_on_integral_float_labels(files):
    assert check_file(files["image"]) == ([], [], (12, 10, 8))
    assert check_file(files["label"], label=True, num_classes=14) == ([], [], (12, 10, 8))
    problems, warnings, _ = check_file(files["integral_float_label"], label=True, num_classes=14)
    assert not problems and "stored as float32 with integral values; used as integer labels" in warnings[0]


def test_check_entries_reports_all_problems_with_their_entries(files):
    entries = [
        {"image": files["image"], "label": files["label"]},
        {"image": files["nan"], "label": files["label"]},
        {"image": files["image"], "label": files["label_shape"]},
        {"image": files["truncated"], "label": files["label_20"]},
        {"image": files["image"], "label": files["integral_float_label"]},
    ]
    kept, problems, warnings = check_entries(entries, label_key="label", num_classes=14, progress=False)
    assert kept == [0, 4]
    assert len(problems) == 4
    assert problems[0].startswith(f"entry 1 (image='{files['nan']}', label='{files['label']}'): '{files['nan']}': ")
    assert f"'{files['label_shape']}': spatial shape (12, 10, 4) differs from (12, 10, 8)" in problems[1]
    assert all(p.startswith("entry 3 (") for p in problems[2:])
    assert len(warnings) == 1 and warnings[0].startswith("entry 4 (")
    # skip: the non-finite entry is dropped with a warning, the other problems stay
    kept, problems, warnings = check_entries(entries, label_key="label", num_classes=14, nonfinite="skip")
    assert kept == [0, 4] and len(problems) == 3
    assert any(w.startswith("skipped entry 1 (") for w in warnings)


def test_check_bundle_data_filters_in_place_or_raises(files, caplog):
    good, nan = {"image": files["image"]}, {"image": files["nan"]}
    training, validation = [good, nan, good], [good]
    check_bundle_data(training, validation)  # check off and nonfinite "error": nothing read
    assert len(training) == 3
    with pytest.raises(DataCheckError, match="training entry 1") as error:
        check_bundle_data(training, validation, check=True)
    assert len(error.value.problems) == 1 and files["nan"] in str(error.value)
    with caplog.at_level(logging.WARNING):
        check_bundle_data(training, validation, nonfinite="skip")
    assert training == [good, good] and "skipped entry 1" in caplog.text and files["nan"] in caplog.text
    with pytest.raises(ValueError, match="left the training list empty"):
        check_bundle_data([nan], validation, nonfinite="skip")
    with pytest.raises(ValueError, match="nonfinite_inputs must be one of"):
        check_bundle_data(training, validation, nonfinite="ignore")


@pytest.mark.parametrize(
    "fault, key, message",
    [
        ("nan", "image", "non-finite voxels"),
        ("truncated", "image", "cannot load {path} of data list entry"),
        ("zero_size", "image", "is not a non-empty 3-D volume"),
        ("float_label", "label", "non-integer values"),
        ("label_20", "label", "label values [20] outside the classes 0..13"),
        ("label_shape", "label", "label shape (12, 10, 4) differs from image shape (12, 10, 8)"),
    ],
)
def test_load_image_named_names_the_file_and_the_entry(files, fault, key, message):
    loader = LoadImageNamed(["image", "label"], image_only=True, ensure_channel_first=True, label_key="label", num_classes=14)
    entry = {"image": files["image"], "label": files["label"], key: files[fault]}
    with pytest.raises(DataCheckError) as error:
        loader(entry)
    text = str(error.value)
    assert files[fault] in text and message.format(path=files[fault]) in text
    assert f"entry (image='{entry['image']}', label='{entry['label']}')" in text
    loaded = loader({"image": files["image"], "label": files["integral_float_label"]})
    assert loaded["label"].shape == (1, 12, 10, 8)


def test_load_image_named_names_the_channel_file_of_a_multi_file_image(files):
    loader = LoadImageNamed("image", image_only=True, ensure_channel_first=True)
    with pytest.raises(DataCheckError, match=f"'{files['inf']}': non-finite") as error:
        loader({"image": [files["image"], files["inf"]], "subject": "case_7"})
    assert "subject='case_7'" in str(error.value) and len(error.value.problems) == 1


def test_header_checks_reject_zero_size_and_4d_before_any_voxel_is_read(files, tmp_path):
    with pytest.raises(ValueError, match=r"zero-size dimension in .*\(12, 10, 0\)"):
        check_image_file(files["zero_size"])
    with pytest.raises(ValueError, match=r"wrong channel count .*\(12, 10, 8, 2\)"):
        check_image_file(files["four_d"])
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps({"training": [{"image": files["four_d"], "label": files["label"]}]}))
    with pytest.raises(ValueError, match="four_d.nii.gz"):
        load_datalist(str(datalist), file_keys=["image", "label"], modalities=None)


def test_brats_4d_modality_file_is_named_with_its_subject(sample, tmp_path):
    content = json.loads(Path(sample["brats_datalist"]).read_text())
    entry = content["training"][0]
    entry["flair"] = _faulty_copy(os.path.join(sample["brats_dir"], entry["flair"]), tmp_path / "flair4d.nii.gz", "four_d")
    datalist = tmp_path / "brats.json"
    datalist.write_text(json.dumps(content))
    with pytest.raises(SubjectError) as error:
        load_classification_datalist(str(datalist), sample["brats_dir"])
    assert error.value.problems[0][0] == entry["subject"]
    assert "flair4d.nii.gz" in error.value.problems[0][1] and "(40, 40, 32, 2)" in error.value.problems[0][1]


def test_check_data_tool(sample, tmp_path, capsys):
    assert check_data_tool(sample["btcv_datalist"], progress=False) == 0
    assert check_data_tool(sample["brats_datalist"], progress=False) == 0  # one path per modality
    datalist = _btcv_list(sample, tmp_path, {(0, "image"): "truncated", (1, "label"): "label_20"})
    capsys.readouterr()
    assert check_data_tool(datalist, dataset_dir=sample["btcv_dir"], progress=False) == 1
    err = capsys.readouterr().err
    assert "PROBLEM training entry 0 (" in err and "truncated_img0001.nii.gz': unreadable" in err
    assert "label_20_label0002.nii.gz': label values [20] outside the classes 0..13" in err
    result = subprocess.run(
        tool_command("check_data", "--datalist", datalist, "--dataset_dir", sample["btcv_dir"]),
        env=cli_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1 and "2 problem(s)" in result.stdout


def test_thread_data_loader_raises_the_errors_of_its_producer_thread():
    """MONAI's ThreadDataLoader ends the epoch silently when a sample fails; the bundles' loader raises it."""
    from monai.data import Dataset
    from monai.data import ThreadDataLoader as MonaiThreadDataLoader

    from monai_dae.data.loader import ThreadDataLoader

    class Failing(Dataset):
        def __getitem__(self, index):
            if index == 3:
                raise DataCheckError("entry 3: 'x.nii.gz': non-finite voxels")
            return index

    seen = []
    with pytest.raises(DataCheckError, match="entry 3"):
        for batch in ThreadDataLoader(Failing(list(range(6))), batch_size=1):
            seen.append(int(batch))
    assert seen == [0, 1, 2]
    assert [int(b) for b in MonaiThreadDataLoader(Failing(list(range(6))), batch_size=1)] == [0, 1, 2]  # the bug
    batches = [b.tolist() for b in ThreadDataLoader(Dataset(list(range(5))), batch_size=2, repeats=2)]
    assert batches == [[0, 1], [0, 1], [2, 3], [2, 3], [4], [4]]
