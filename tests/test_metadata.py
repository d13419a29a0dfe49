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
