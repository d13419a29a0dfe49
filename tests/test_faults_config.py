"""
Config faults: a setting the run cannot use stops it up front, through the real ``python -m monai.bundle run``
entry point, with a non-zero exit and a message that names the key and the value; the BTCV inference takes
``--datalist`` as a data-list path.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks.nets import SwinUNETR

from monai_dae.data.datalist import inference_data
from monai_dae.data.phantoms import write_sample_dataset
from monai_dae.settings import SettingsError, check_settings
from monai_dae.utils import training_config_files

from bundle_testing import REPO, cli_env, cli_overrides, config_arg

BUNDLES = REPO / "bundles"


def _run(bundle: str, *config_names: str, workflow: str = "training", **overrides) -> subprocess.CompletedProcess:
    """``monai.bundle run`` of the named configs, by default the bundle's training configs (dae_pretrain: DAE's)."""
    names = [str(BUNDLES / bundle / "configs" / name) for name in config_names]
    configs = config_arg(*(names or training_config_files(str(BUNDLES / bundle))))
    command = [sys.executable, "-m", "monai.bundle", "run", workflow, "--config_file", configs, *cli_overrides(**overrides)]
    return subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=600, cwd=str(REPO))


@pytest.mark.parametrize(
    "settings, key, words",
    [
        ({"roi_size": [32, 32, 32]}, "roi_size", "1-voxel bottleneck"),
        ({"roi_size": [96, 96, 80]}, "roi_size", "multiple of 32"),
        ({"roi_size": [96, 96]}, "roi_size", "three positive integers"),
        ({"spatial_size": [48, 64, 64]}, "spatial_size", "multiple of 32"),
        ({"feature_size": 20}, "feature_size", "multiple of 12"),
        ({"batch_size": 0}, "batch_size", "integer >= 1"),
        ({"crops_per_volume": -1}, "crops_per_volume", "integer >= 1"),
        ({"num_samples": 1.5}, "num_samples", "integer >= 1"),
        ({"num_workers": -1}, "num_workers", "integer >= 0"),
        ({"modalities": ["ct", "pet"]}, "modalities", "unknown modality"),
        ({"modalities": ["t1ce", "t1gd"]}, "modalities", "repeat"),
        ({"datalist": "/nonexistent/list.json"}, "datalist", "no such data list file"),
        ({"datalist": [{"image": "a.nii.gz"}]}, "datalist", "path of a JSON data list"),
    ],
)
def test_check_settings_names_the_key(settings, key, words):
    with pytest.raises(SettingsError, match=f"'{key}'") as error:
        check_settings(**settings)
    assert words in str(error.value)


def test_check_settings_accepts_the_defaults_and_small_test_sizes():
    ok = {"roi_size": [64, 64, 32], "spatial_size": [32, 32, 32], "feature_size": 12, "batch_size": 1,
          "crops_per_volume": 2, "num_workers": 0, "modalities": ["CT", "T1Gd", "flair"], "datalist": ""}
    assert check_settings(**ok) == ok


def test_inference_data_takes_an_image_a_datalist_file_or_a_list(tmp_path):
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps({"test": ["imagesTs/a.nii.gz"]}))
    (tmp_path / "imagesTs").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), "float32"), None), tmp_path / "imagesTs" / "a.nii.gz")
    assert inference_data(datalist=str(listed), dataset_dir=str(tmp_path)) == [{"image": str(tmp_path / "imagesTs" / "a.nii.gz")}]
    assert inference_data(datalist=[{"image": "x.nii.gz"}, "y.nii.gz"]) == [{"image": "x.nii.gz"}, {"image": "y.nii.gz"}]
    assert inference_data(image="z.nii.gz", datalist=str(listed)) == [{"image": os.path.abspath("z.nii.gz")}]
    with pytest.raises(ValueError, match="nothing to infer"):
        inference_data(dataset_dir=str(tmp_path))


@pytest.mark.extended
@pytest.mark.parametrize(
    "bundle, overrides, key",
    [
        ("dae_pretrain", {"roi_size": [32, 32, 32], "feature_size": 12}, "roi_size"),
        ("dae_btcv_seg", {"feature_size": 20}, "feature_size"),
        ("dae_brats_cls", {"datalist": "/nonexistent/datalist_cls.json"}, "datalist"),
    ],
)
def test_bad_setting_stops_the_cli_before_training(bundle, overrides, key, tmp_path):
    result = _run(bundle, bundle_root=str(tmp_path), **overrides)
    assert result.returncode != 0
    assert f"bundle config key '{key}'" in result.stderr + result.stdout
    assert not (tmp_path / "models").exists() and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_btcv_inference_reads_a_datalist_path_from_the_command_line(tmp_path):
    paths = write_sample_dataset(str(tmp_path / "data"), num_ct=2, num_brain=2, ct_shape=(48, 48, 24),
                                 brain_shape=(16, 16, 16), num_validation=1)
    models = tmp_path / "bundle" / "models"
    models.mkdir(parents=True)
    torch.save(SwinUNETR(in_channels=1, out_channels=14, feature_size=12).state_dict(), models / "model.pt")
    result = _run("dae_btcv_seg", "inference.json", workflow="run", bundle_root=str(tmp_path / "bundle"),
                  dataset_dir=paths["btcv_dir"], datalist=paths["btcv_datalist"], datalist_key="validation",
                  output_dir=str(tmp_path / "pred"), feature_size=12, roi_size=[64, 64, 32], sw_batch_size=1)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(paths["btcv_datalist"]) as f:
        validation = json.load(f)["validation"]
    predicted = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "pred" / "*.nii.gz")))
    assert predicted == sorted(os.path.basename(e["image"]).replace(".nii.gz", "_seg.nii.gz") for e in validation)


@pytest.mark.slow
def test_torchrun_with_fewer_validation_cases_than_processes_stops_before_training(tmp_path):
    paths = write_sample_dataset(str(tmp_path / "data"), num_ct=2, num_brain=2, ct_shape=(48, 48, 24),
                                 brain_shape=(16, 16, 16), num_validation=1)
    with open(paths["btcv_datalist"]) as f:
        content = json.load(f)
    datalist = tmp_path / "one_validation_case.json"
    datalist.write_text(json.dumps({"training": content["training"] + content["validation"],
                                    "validation": content["validation"]}))
    configs = BUNDLES / "dae_btcv_seg" / "configs"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "training",
        "--config_file", f"['{configs / 'train.json'}','{configs / 'multi_gpu_train.json'}']",
        *cli_overrides(dataset_dir=paths["btcv_dir"], datalist=str(datalist), bundle_root=str(tmp_path / "bundle"),
                       feature_size=12, roi_size=[64, 64, 32], num_samples=1, num_workers=0, cache_rate=0.0,
                       max_epochs=1, progress_bar=False),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode != 0
    assert "the validation list has 1 entries for 2 processes" in result.stdout + result.stderr
    assert not (tmp_path / "bundle" / "models" / "model.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"batch_size": 0}, "bundle config key 'batch_size' = 0"),
        ({"modalities": ["ct", "pet"]}, "unknown modality name(s) ['pet']"),
    ],
)
def test_cli_setting_fault_stops_with_a_message(overrides, message, tmp_path):
    result = _run("dae_pretrain", bundle_root=str(tmp_path), **overrides)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert not (tmp_path / "models").exists() and not (tmp_path / "runs").exists()
