"""
The Model Zoo's metadata checks on every bundle's ``configs/metadata.json``: the vendored 20240725 schema,
a ``changelog`` entry for the ``version``, the keys the Zoo expects, and the ``image`` input / ``pred`` output
names that ``verify_net_in_out``, the exporters and MONAI Label look up.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.bundle import verify_metadata

REPO = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())
SCHEMA = REPO / "tools" / "schema" / "meta_schema_20240725.json"  # the Model Zoo's schema, vendored
SCHEMA_MD5 = "06954cad2cc5d3784e72077ac76f0fc8"
EXPECTED_KEYS = {"changelog", "name", "intended_use", "data_source", "references", "eval_metrics"}
"""Keys not required by the schema that the Model Zoo expects (its README template and model_info.json use them)."""


def _metadata(bundle: str) -> dict:
    return json.loads((REPO / "bundles" / bundle / "configs" / "metadata.json").read_text())


def test_all_three_bundles_are_checked():
    assert BUNDLES == ["dae_brats_cls", "dae_btcv_seg", "dae_pretrain"]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_verifies_against_the_vendored_schema(bundle):
    schema = json.loads(SCHEMA.read_text())
    metadata = _metadata(bundle)
    assert set(schema["required"]) <= set(metadata)
    meta_file = REPO / "bundles" / bundle / "configs" / "metadata.json"
    verify_metadata(meta_file=str(meta_file), filepath=str(SCHEMA), hash_val=SCHEMA_MD5)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_has_changelog_entry_and_zoo_keys(bundle):
    metadata = _metadata(bundle)
    assert EXPECTED_KEYS <= set(metadata), EXPECTED_KEYS - set(metadata)
    assert metadata["version"] in metadata["changelog"]
    assert all(value.strip() for value in metadata["changelog"].values())
    assert metadata["references"] and metadata["eval_metrics"]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_primary_input_is_image_and_primary_output_is_pred(bundle):
    data_format = _metadata(bundle)["network_data_format"]
    # MONAI Label takes the first input as the image and the first output's channel_def as the label names
    assert next(iter(data_format["inputs"])) == "image"
    assert next(iter(data_format["outputs"])) == "pred"
    image = data_format["inputs"]["image"]
    assert image["num_channels"] == len(image["channel_def"])


def test_bundles_agree_on_the_tested_versions():
    keys = ("monai_version", "pytorch_version", "numpy_version")
    versions = {bundle: tuple(_metadata(bundle)[key] for key in keys) for bundle in BUNDLES}
    assert len(set(versions.values())) == 1, versions


def _lock() -> dict[str, str]:
    lines = (REPO / "requirements-lock.txt").read_text().splitlines()
    return {line.split("==")[0].lower(): line.split("==")[1].strip() for line in lines if "==" in line}


@pytest.mark.parametrize("bundle", BUNDLES)
def test_eval_metrics_are_numbers_as_in_the_zoo(bundle):
    metrics = _metadata(bundle)["eval_metrics"]
    assert metrics and all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in metrics.values())
    # the figures come from synthetic phantoms at test size (docs/README.md), and the names say so
    assert all(name.endswith("_synthetic_phantoms") for name in metrics)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_package_versions_are_the_locked_ones_and_list_what_the_configs_need(bundle):
    metadata, lock = _metadata(bundle), _lock()
    versions = metadata["required_packages_version"]
    assert {"nibabel", "pytorch-ignite", "einops", "tensorboard", "mlflow", "fire", "tqdm", "matplotlib"} <= set(versions)
    # MONAI tools before the 2024 schema read optional_packages_version
    assert metadata["optional_packages_version"] == versions
    assert {name: lock[name.lower()] for name in versions} == versions
    assert (metadata["monai_version"], metadata["pytorch_version"], metadata["numpy_version"]) == (
        lock["monai"],
        lock["torch"],
        lock["numpy"],
    )


def test_supported_apps_name_the_monai_label_app():
    assert _metadata("dae_btcv_seg")["supported_apps"] == {"monai-label": "0.8.5"}
    assert "monailabel==0.8.5" in (REPO / "tools" / "monailabel_requirements.txt").read_text().lower()
