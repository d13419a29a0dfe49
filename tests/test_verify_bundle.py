"""
``tools/verify_bundle.py``, the Model Zoo's checks on a bundle folder, and the publication path of a bundle's own
weights: ``export_bundle --weights --weights_url`` declares ``models/model.pt`` in the packed ``large_files.yml``
with its sha256; the unzipped bundle downloads it from there (a ``file://`` URL) and passes every check.
The tests on an exported bundle are in the extended suite (``make test-extended``); ``make verify-bundles`` runs
the same checks on the demo's weights in CI.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from monai.apps import download_url
from monai.networks.nets import SwinUNETR

from tools.export_bundle import export_bundle
from tools.verify_bundle import BundleVerificationError, verify_bundle, verify_directory

REPO = Path(__file__).resolve().parents[1]
FEATURE = 12
SHAPE = [64, 64, 64]


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A dae_btcv_seg zip exported with feature-size-12 weights published at a file:// URL, unzipped."""
    work = tmp_path_factory.mktemp("publish")
    torch.manual_seed(0)
    weights = work / "published" / "model.pt"
    weights.parent.mkdir()
    torch.save(SwinUNETR(in_channels=1, out_channels=14, feature_size=FEATURE).state_dict(), weights)
    zip_path = export_bundle("dae_btcv_seg", str(work / "dist"), weights=str(weights), weights_url=weights.as_uri())
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(work / "unzipped")
    return {"root": work / "unzipped" / "dae_btcv_seg", "weights": weights}


@pytest.mark.extended
def test_the_packed_large_files_declare_the_weights_with_their_sha256(published):
    root = published["root"]
    entries = yaml.safe_load((root / "large_files.yml").read_text())["large_files"]
    model = entries[0]
    assert model["path"] == "models/model.pt" and model["url"] == published["weights"].as_uri()
    assert model["hash_type"] == "sha256" and len(model["hash_val"]) == 64
    # the authors' weights stay declared, and the comment header is kept
    assert [e["path"] for e in entries[1:]] == ["models/DAE_SSL_WEIGHTS.zip"]
    assert (root / "large_files.yml").read_text().startswith("# ")
    assert not (root / "models" / "model.pt").exists()  # declared, never packed


@pytest.mark.extended
def test_the_unzipped_bundle_downloads_its_weights_and_passes_the_zoo_checks(published, capsys):
    root = published["root"]
    model = yaml.safe_load((root / "large_files.yml").read_text())["large_files"][0]
    # what `monai.bundle download_large_files` does for each entry (the other entry needs the internet)
    download_url(model["url"], str(root / model["path"]), hash_val=model["hash_val"], hash_type=model["hash_type"])
    result = verify_bundle(str(root), overrides={"feature_size": FEATURE}, spatial_shape=SHAPE)
    assert result["bundle"] == "dae_btcv_seg" and result["large_files"] == 2
    assert result["input_shape"] == [1, 1, *SHAPE]
    assert result["torchscript_max_abs_diff"] < 1e-4
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ", 1)[1].split(" ")[0] for line in lines] == ["folder", "version", "metadata", "network", "TorchScript", "all"]


@pytest.mark.extended
def test_a_present_file_with_another_hash_fails_the_folder_check(published, tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(published["root"], root)
    (root / "models").mkdir(exist_ok=True)
    (root / "models" / "model.pt").write_bytes(b"not the published weights")
    with pytest.raises(BundleVerificationError, match="does not match its sha256 hash_val"):
        verify_directory(root)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"path": "models/x.pt", "hash_type": "sha256"}, "url missing"),
        ({"path": "../x.pt", "url": "https://x", "hash_type": "sha256"}, "leaves the bundle folder"),
        ({"path": "models/x.pt", "url": "https://x", "hash_type": "crc"}, "hash_type 'crc'"),
    ],
)
def test_malformed_large_file_entries_are_named(tmp_path, entry, message):
    root = tmp_path / "bundle"
    (root / "configs").mkdir(parents=True)
    shutil.copy(REPO / "bundles" / "dae_btcv_seg" / "configs" / "metadata.json", root / "configs")
    (root / "large_files.yml").write_text(yaml.safe_dump({"large_files": [entry]}))
    with pytest.raises(BundleVerificationError, match=message):
        verify_directory(root)


@pytest.mark.extended
def test_a_version_without_changelog_entry_and_missing_weights_are_refused(published, tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(published["root"], root, ignore=shutil.ignore_patterns("*.pt"))
    with pytest.raises(BundleVerificationError, match="no weights to export"):
        verify_bundle(str(root), overrides={"feature_size": FEATURE}, spatial_shape=SHAPE)
    meta_file = root / "configs" / "metadata.json"
    metadata = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**metadata, "version": "9.9.9"}))
    with pytest.raises(BundleVerificationError, match="version '9.9.9' has no entry"):
        verify_bundle(str(root), torchscript=False)


@pytest.mark.extended
def test_weights_of_another_network_size_fail_the_export_check(published, tmp_path):
    wrong = tmp_path / "model.pt"
    torch.save(SwinUNETR(in_channels=1, out_channels=14, feature_size=24).state_dict(), wrong)
    with pytest.raises(RuntimeError, match="size mismatch"):
        verify_bundle(str(published["root"]), weights=str(wrong), overrides={"feature_size": FEATURE}, spatial_shape=SHAPE)
