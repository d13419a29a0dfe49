"""
Model Zoo packaging: ``tools/export_bundle.py`` zips each bundle with the ``monai_dae`` package vendored in it;
the zip is unzipped into an empty folder and run from there by a Python that cannot import the repository's
``monai_dae`` (``python -S`` skips the ``.pth`` file of the editable install, ``PYTHONPATH`` holds only the
virtual environment's site-packages), then passes the Model Zoo's checks (``verify_metadata``, ``changelog``,
``verify_net_in_out``, ``ckpt_export`` and a reload of the TorchScript file) and installs with
``python -m monai.bundle download --url file://...``. Tiny settings: feature size 12, 64^3 crops, one epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ckpt_export, verify_metadata, verify_net_in_out
from monai.data import load_net_with_metadata
from monai.networks.nets import SwinUNETR

from monai_dae.data.phantoms import write_sample_dataset
from monai_dae.utils import TRAINING_CONFIGS, bundle_dir, bundle_names, pretext_methods
from tools.export_bundle import SCHEMA, SCHEMA_MD5, bundle_entries, export_bundle

from bundle_testing import BTCV_TINY, REPO, cli_overrides, tool_command, tool_env

BUNDLES = ("dae_brats_cls", "dae_btcv_seg", "dae_pretrain")
WEIGHT_SUFFIXES = (".pt", ".pth", ".ts", ".onnx")
FEATURE = BTCV_TINY["feature_size"]  # every bundle at the same test size
ROI = [64, 64, 64]  # the Swin UNETR decoder needs more than a 1^3 bottleneck
BTCV_TRAIN = {**BTCV_TINY, "roi_size": ROI}

# A Python that sees the virtual environment's packages but not the editable monai_dae: "-S" skips the .pth
# files of site-packages, one of which installs the editable finder pointing at this checkout.
ISOLATED_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})),
    "OMP_NUM_THREADS": "1",
}
IMPORT_VENDORED = """
import importlib, json, pkgutil, sys
try:
    import monai_dae
    hidden = False
except ModuleNotFoundError:
    hidden = True
files = {}
for root in sys.argv[1:]:
    sys.path.insert(0, root)
    package = importlib.import_module("monai_dae")
    names = [m.name for m in pkgutil.walk_packages(package.__path__, "monai_dae.")]
    files[root] = [package.__file__] + [importlib.import_module(name).__file__ for name in names]
    sys.path.remove(root)
    for name in [n for n in sys.modules if n.split(".")[0] == "monai_dae"]:
        del sys.modules[name]
print(json.dumps({"hidden": hidden, "files": files}))
"""


def _isolated(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run ``python -S <args>`` in ``cwd`` with only the virtual environment's site-packages importable."""
    return subprocess.run(
        [sys.executable, "-S", *args], cwd=cwd, env=ISOLATED_ENV, capture_output=True, text=True, timeout=timeout
    )


def _metadata(root: Path) -> dict:
    return json.loads((root / "configs" / "metadata.json").read_text())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``name -> zip path``, each bundle exported once, on first use."""
    dist, zips = tmp_path_factory.mktemp("dist"), {}

    def export(name: str) -> Path:
        if name not in zips:
            zips[name] = Path(export_bundle(name, output_dir=str(dist)))
        return zips[name]

    return export


@pytest.fixture(scope="module")
def unzipped(exported, tmp_path_factory):
    """``name -> bundle root`` of the zip extracted into an empty folder, once per bundle."""
    roots = {}

    def unzip(name: str) -> Path:
        if name not in roots:
            target = tmp_path_factory.mktemp(f"unzipped_{name}")
            with zipfile.ZipFile(exported(name)) as archive:
                archive.extractall(target)
            assert [p.name for p in target.iterdir()] == [name]
            roots[name] = target / name
        return roots[name]

    return unzip


@pytest.fixture(scope="module")
def btcv_data(tmp_path_factory) -> str:
    paths = write_sample_dataset(
        str(tmp_path_factory.mktemp("data")),
        num_ct=2,
        num_brain=2,
        ct_shape=(48, 48, 24),
        brain_shape=(16, 16, 16),
        num_validation=1,
    )
    return paths["btcv_dir"]


@pytest.fixture(scope="module")
def btcv_trained(unzipped, btcv_data) -> Path:
    """The unzipped dae_btcv_seg trained for one epoch by the real CLI, without the repository's monai_dae."""
    root = unzipped("dae_btcv_seg")
    result = _isolated(
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "configs/train.json",
        "--meta_file",
        "configs/metadata.json",
        "--logging_file",
        "configs/logging.conf",
        *cli_overrides(dataset_dir=btcv_data, **BTCV_TRAIN),
        cwd=root,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Key metric: val_mean_dice best value" in result.stdout + result.stderr
    return root


@pytest.mark.parametrize("name", BUNDLES)
def test_zip_holds_the_bundle_and_the_vendored_package_without_weights(name, exported):
    source = REPO / "bundles" / name
    path = exported(name)
    assert path.name == f"{name}_v{_metadata(source)['version']}.zip"
    with zipfile.ZipFile(path) as archive:
        entries = archive.namelist()
        assert archive.testzip() is None
        assert archive.read(f"{name}/configs/metadata.json") == (source / "configs" / "metadata.json").read_bytes()
    assert all(entry.startswith(f"{name}/") for entry in entries)
    inside = {entry[len(name) + 1 :] for entry in entries}
    assert {"LICENSE", "large_files.yml", "configs/metadata.json", "configs/train.json", "docs/README.md"} <= inside
    package = {
        p.relative_to(REPO).as_posix()
        for p in (REPO / "monai_dae").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert {entry for entry in inside if entry.startswith("monai_dae/")} == package
    assert not [e for e in inside if e.endswith(WEIGHT_SUFFIXES) or "__pycache__" in e or e.startswith("models/")]
    packed = set(bundle_entries(source))
    if (source / "configs" / "pretrain_base.json").is_file():  # the base and the overlays become one train.json
        overlays = {"configs/pretrain_base.json"} | {f"configs/{m}.json" for m in pretext_methods(str(source))}
        assert overlays <= packed and "configs/train.json" not in packed
        packed = (packed - overlays) | {"configs/train.json"}
    assert inside == packed


def test_command_line_export_is_reproducible(exported, tmp_path):
    """The real fire CLI writes the same bytes as the first export and prints the zip's sha256."""
    first = exported("dae_pretrain")
    result = subprocess.run(
        tool_command("export_bundle", "dae_pretrain", "--output_dir", str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=600,
        env=tool_env(OMP_NUM_THREADS="1"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    second = tmp_path / first.name
    digest = hashlib.sha256(second.read_bytes()).hexdigest()
    assert second.read_bytes() == first.read_bytes()
    assert f"sha256 {digest}" in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no partial file left


def _broken_copy(tmp_path: Path, edit) -> Path:
    bundle = tmp_path / "dae_pretrain"
    source = REPO / "bundles" / "dae_pretrain"
    bundle.mkdir()
    for name in ("LICENSE", "configs", "docs"):
        copy = shutil.copytree if (source / name).is_dir() else shutil.copy
        copy(source / name, bundle / name)
    meta_file = bundle / "configs" / "metadata.json"
    metadata = json.loads(meta_file.read_text())
    edit(bundle, metadata)
    if meta_file.exists():
        meta_file.write_text(json.dumps(metadata))
    return bundle


def _rename_output(bundle: Path, metadata: dict) -> None:
    outputs = metadata["network_data_format"]["outputs"]
    outputs["reconstruction"] = outputs.pop("pred")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda bundle, meta: meta.update(version="9.9.9"), "'changelog' has no entry for version '9.9.9'"),
        (lambda bundle, meta: meta.pop("task"), "does not verify against the schema"),
        (_rename_output, "must name the input 'image' and the output 'pred'"),
        (lambda bundle, meta: (bundle / "LICENSE").unlink(), "missing LICENSE"),
        (lambda bundle, meta: (bundle / "configs" / "train.json").write_text("{"), "train.json: not valid JSON"),
    ],
    ids=["version-not-in-changelog", "schema", "output-name", "license", "json"],
)
def test_export_refuses_a_bundle_failing_the_zoo_checks(tmp_path, edit, message):
    bundle = _broken_copy(tmp_path, edit)
    output_dir = tmp_path / "dist"
    with pytest.raises(ValueError, match=message) as error:
        export_bundle(str(bundle), output_dir=str(output_dir))
    assert str(bundle) in str(error.value)  # names the file
    assert not output_dir.exists() or not list(output_dir.iterdir())


def test_bundle_dir_by_name_by_folder_and_the_configs_fallback(tmp_path, monkeypatch):
    """One lookup for the configs' default bundle_root and the tools' bundle argument (the vendored case: below)."""
    assert bundle_names() == list(BUNDLES)
    checkout = str((REPO / "bundles" / "dae_btcv_seg").resolve())
    assert bundle_dir("dae_btcv_seg") == checkout
    assert bundle_dir("dae_btcv_seg", required="configs/inference.json") == checkout
    copy = tmp_path / "copy"
    shutil.copytree(REPO / "bundles" / "dae_pretrain" / "configs", copy / "configs")
    assert bundle_dir(str(copy), required="configs/pretrain_base.json") == str(copy.resolve())
    assert bundle_dir(str(copy), required=TRAINING_CONFIGS) == str(copy.resolve())
    with pytest.raises(FileNotFoundError, match="bundle 'dae_mae' not found: .*'dae_brats_cls'"):
        bundle_dir("dae_mae", required="configs/train.json")
    monkeypatch.chdir(tmp_path)
    assert bundle_dir("dae_mae") == os.getcwd()  # a config run from an unknown place: the current directory


@pytest.mark.slow
def test_vendored_package_imports_without_the_repository(unzipped, tmp_path):
    roots = [str(unzipped(name)) for name in BUNDLES]
    result = _isolated("-c", IMPORT_VENDORED, *roots, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["hidden"], "the isolated Python still imports the repository's monai_dae"
    repo_modules = len(list((REPO / "monai_dae").rglob("*.py")))
    for root, files in report["files"].items():
        assert len(files) == repo_modules
        assert all(Path(f).is_relative_to(root) for f in files), files


@pytest.mark.slow
def test_btcv_trains_from_the_unzipped_folder(btcv_trained):
    # bundle_root defaults to the folder of the imported monai_dae: outputs there prove the vendored copy ran
    state = torch.load(btcv_trained / "models" / "model.pt", weights_only=True)
    assert state["out.conv.conv.weight"].shape[:2] == (14, FEATURE)
    assert (btcv_trained / "runs" / "checkpoints" / "checkpoint_final.pt").is_file()
    assert list((btcv_trained / "runs" / "tensorboard").iterdir())


@pytest.mark.slow
def test_zoo_checks_on_the_unzipped_btcv(btcv_trained):
    root = btcv_trained
    meta_file, config_file = str(root / "configs" / "metadata.json"), str(root / "configs" / "inference.json")
    verify_metadata(meta_file=meta_file, filepath=str(SCHEMA), hash_val=SCHEMA_MD5)
    version = _metadata(root)["version"]
    assert version in _metadata(root)["changelog"]
    shapes = {
        "_meta_#network_data_format#inputs#image#spatial_shape": ROI,
        "_meta_#network_data_format#outputs#pred#spatial_shape": ROI,
    }
    verify_net_in_out(
        net_id="network_def",
        meta_file=meta_file,
        config_file=config_file,
        bundle_root=str(root),
        device="cpu",
        feature_size=FEATURE,
        **shapes,
    )
    ts_path = root / "models" / "model.ts"
    ckpt_export(  # MONAI's Swin transformer does not script: trace with an input shape
        net_id="network_def",
        filepath=str(ts_path),
        ckpt_file=str(root / "models" / "model.pt"),
        meta_file=meta_file,
        config_file=config_file,
        bundle_root=str(root),
        use_trace=True,
        input_shape=[1, 1, *ROI],
        feature_size=FEATURE,
    )
    scripted, meta, extra = load_net_with_metadata(str(ts_path), more_extra_files=("inference.json",))
    assert meta["version"] == version
    assert json.loads(extra["inference.json"]) == json.loads(Path(config_file).read_text())
    eager = SwinUNETR(in_channels=1, out_channels=14, feature_size=FEATURE)
    eager.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    eager.eval()
    x = torch.rand(1, 1, *ROI)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dae_pretrain", "dae_brats_cls"])
def test_zoo_checks_on_the_other_unzipped_bundles(name, unzipped):
    root = unzipped(name)
    # the classifier's encoder runs at 32^3; the reconstruction network's decoder needs 64^3
    shape = ROI if name == "dae_pretrain" else [32, 32, 32]
    overrides = {"feature_size": FEATURE, "_meta_#network_data_format#inputs#image#spatial_shape": shape}
    if name == "dae_pretrain":
        overrides["_meta_#network_data_format#outputs#pred#spatial_shape"] = shape
    meta_file = str(root / "configs" / "metadata.json")
    verify_metadata(meta_file=meta_file, filepath=str(SCHEMA), hash_val=SCHEMA_MD5)
    assert _metadata(root)["version"] in _metadata(root)["changelog"]
    verify_net_in_out(
        net_id="network_def",
        meta_file=meta_file,
        config_file=str(root / "configs" / "inference.json"),
        bundle_root=str(root),
        device="cpu",
        **overrides,
    )


@pytest.mark.slow
def test_download_installs_the_zip_and_the_installed_copy_runs(exported, btcv_trained, btcv_data, tmp_path):
    name, zip_path = "dae_btcv_seg", exported("dae_btcv_seg")
    installed_dir = tmp_path / "installed"
    result = _isolated(
        "-m",
        "monai.bundle",
        "download",
        "--name",
        name,
        "--url",
        zip_path.as_uri(),
        "--bundle_dir",
        str(installed_dir),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    root = installed_dir / name
    with zipfile.ZipFile(zip_path) as archive:
        expected = {entry[len(name) + 1 :] for entry in archive.namelist()}
    assert {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} == expected

    # the weights arrive as large_files.yml would bring them; then a tiny inference of the installed copy
    (root / "models").mkdir()
    shutil.copy(btcv_trained / "models" / "model.pt", root / "models" / "model.pt")
    image = sorted(Path(btcv_data, "imagesTr").glob("*.nii.gz"))[0]
    result = _isolated(
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "configs/inference.json",
        "--meta_file",
        "configs/metadata.json",
        "--logging_file",
        "configs/logging.conf",
        *cli_overrides(image=str(image), feature_size=FEATURE, roi_size=ROI, sw_batch_size=1, num_workers=0),
        cwd=root,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    pred = nib.load(root / "eval" / image.name.replace(".nii.gz", "_seg.nii.gz"))
    assert pred.shape == nib.load(image).shape
    labels = np.unique(np.asarray(pred.dataobj))
    assert labels.min() >= 0 and labels.max() <= 13
