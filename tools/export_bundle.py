"""
Package a bundle of this collection as a Model Zoo zip, ``<name>_v<version>.zip``.

The zip holds one top-level folder ``<name>/`` with the bundle's ``LICENSE``, ``configs/``, ``docs/`` and
``large_files.yml`` (weights are downloaded from it, never packed), and a copy of the shared ``monai_dae``
package in the bundle root, so that the unzipped bundle runs with only MONAI and its dependencies installed:
``python -m monai.bundle run`` started from the bundle folder imports ``monai_dae`` from there, and
``monai_dae.utils.bundle_dir`` then resolves ``bundle_root`` to that folder. Weights (``*.pt``, ``*.pth``,
``*.ts``, ``*.onnx``), ``models/``, run outputs and ``__pycache__`` are left out. A pretraining bundle
(``configs/pretrain_base.json`` plus one overlay per pretext method) is packed for one method: its
``configs/train.json`` is the base config merged with that method's overlay (``--method``, default ``dae``), as
the Model Zoo expects one ``train.json``, and the base and overlay files are left out.

Before writing, the bundle is checked as the Model Zoo checks it: ``configs/metadata.json`` verifies against
the vendored schema (``tools/schema/meta_schema_20240725.json``), its ``changelog`` has an entry for its
``version``, it names the network input ``image`` and output ``pred``, and every config file is valid JSON.
A failed check names the file and the problem, and nothing is written. The zip is reproducible (sorted
entries, fixed timestamps), so its sha256 only changes when the content does.

Example::

    python -m tools.export_bundle dae_btcv_seg --output_dir dist   # dist/dae_btcv_seg_v0.2.1.zip
    python -m tools.export_bundle --output_dir dist                # every bundle of bundles/
    # then, anywhere MONAI is installed:
    python -m monai.bundle download --name dae_btcv_seg --url file://$PWD/dist/dae_btcv_seg_v0.2.1.zip \
        --bundle_dir ./bundles_installed
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
from pathlib import Path

import fire
from tqdm import tqdm

from monai_dae.progress import progress_enabled
from monai_dae.utils import PRETRAIN_BASE_CONFIG, bundle_dir, bundle_names, pretext_methods, training_config_files

REPO_ROOT = Path(__file__).resolve().parents[1]

PACKAGE = REPO_ROOT / "monai_dae"
SCHEMA = REPO_ROOT / "tools" / "schema" / "meta_schema_20240725.json"
"""The Model Zoo metadata schema, vendored so that checks run offline."""
SCHEMA_MD5 = "06954cad2cc5d3784e72077ac76f0fc8"
"""md5 of the schema file, checked on every use."""

REQUIRED_FILES = ("LICENSE", "configs/metadata.json", "docs/README.md")
"""Files a Model Zoo bundle must have (the Zoo's CI and the MONAI bundle specification)."""
LARGE_FILES = ("large_files.yml", "large_files.yaml", "large_files.json")
"""Names the Model Zoo accepts for the list of downloadable weights."""
PACKED_FOLDERS = ("configs", "docs")
"""Bundle folders packed as they are (minus the excluded files below)."""
EXCLUDED_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".ts", ".onnx", ".engine", ".plan", ".pyc", ".pyo")
"""Weights and compiled files never packed, wherever they are."""
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
"""Fixed entry timestamp (the earliest a zip can hold), for a reproducible archive."""


def _packed(path: Path) -> bool:
    """Whether a file found under a packed folder belongs in the zip (no weights, caches or hidden files)."""
    return not (
        path.suffix in EXCLUDED_SUFFIXES or "__pycache__" in path.parts or any(p.startswith(".") for p in path.parts)
    )


def _files_under(folder: Path) -> list[Path]:
    """
    Packed files under ``folder``, relative to it, sorted. Symbolic links are refused (``ValueError`` naming
    the link and its target): a link would pack a file from outside the bundle (or loop), and is never followed.
    """
    files = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        for name in sorted(dirs + names):
            path = Path(root) / name
            if path.is_symlink():
                raise ValueError(
                    f"symbolic link '{path}' -> '{os.readlink(path)}' in the bundle: links are not followed (it could "
                    "pack files from outside the bundle); replace it by a copy of the file, or remove it."
                )
        files += [Path(root) / name for name in names]
    return sorted(p.relative_to(folder) for p in files if _packed(p.relative_to(folder)))


def check_bundle(bundle_dir: str | Path) -> dict:
    """
    Check a bundle folder as the Model Zoo does before it is published.

    Args:
        bundle_dir: the bundle folder.

    Returns:
        the parsed ``configs/metadata.json``.

    Raises:
        ValueError: naming the file and the problem: a required file missing, a config that is not valid JSON,
            metadata that does not verify against the schema, a ``version`` without ``changelog`` entry, or a
            network input/output not named ``image``/``pred``.
    """
    from monai.bundle import verify_metadata

    bundle_dir = Path(bundle_dir)
    missing = [name for name in REQUIRED_FILES if not (bundle_dir / name).is_file()]
    if missing:
        raise ValueError(f"bundle {bundle_dir}: missing {', '.join(missing)} (required by the Model Zoo).")
    for config in sorted((bundle_dir / "configs").glob("*.json")):
        try:
            json.loads(config.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{config}: not valid JSON: {e}") from e

    meta_file = bundle_dir / "configs" / "metadata.json"
    if not SCHEMA.is_file():
        raise ValueError(f"metadata schema {SCHEMA} not found; it is vendored under tools/schema/.")
    try:
        verify_metadata(meta_file=str(meta_file), filepath=str(SCHEMA), hash_val=SCHEMA_MD5, hash_type="md5")
    except ValueError as e:
        raise ValueError(f"{meta_file}: does not verify against the schema {SCHEMA}: {e}") from e

    metadata = json.loads(meta_file.read_text())
    version = metadata["version"]
    if version not in metadata.get("changelog", {}):
        raise ValueError(f"{meta_file}: 'changelog' has no entry for version '{version}'.")
    data_format = metadata["network_data_format"]
    if "image" not in data_format.get("inputs", {}) or "pred" not in data_format.get("outputs", {}):
        raise ValueError(
            f"{meta_file}: network_data_format must name the input 'image' and the output 'pred' "
            f"(verify_net_in_out and the exporters look them up), got inputs {sorted(data_format.get('inputs', {}))} "
            f"and outputs {sorted(data_format.get('outputs', {}))}."
        )
    return metadata


def bundle_entries(bundle_dir: str | Path, package_dir: str | Path = PACKAGE) -> dict[str, Path]:
    """
    What the zip of a bundle holds: archive name (without the top-level ``<name>/``) to source file.

    Args:
        bundle_dir: the bundle folder.
        package_dir: the ``monai_dae`` package folder vendored into the bundle root.

    Returns:
        the entries, sorted by archive name.

    Raises:
        ValueError: when the bundle root already has a ``monai_dae`` folder (the vendored copy would be ambiguous).
    """
    bundle_dir, package_dir = Path(bundle_dir), Path(package_dir)
    if (bundle_dir / package_dir.name).exists():
        raise ValueError(f"bundle {bundle_dir}: already has a '{package_dir.name}' folder; remove it, it is vendored.")
    entries = {"LICENSE": bundle_dir / "LICENSE"}
    entries.update({name: bundle_dir / name for name in LARGE_FILES if (bundle_dir / name).is_file()})
    for folder in PACKED_FOLDERS:
        entries.update({f"{folder}/{p.as_posix()}": bundle_dir / folder / p for p in _files_under(bundle_dir / folder)})
    entries.update({f"{package_dir.name}/{p.as_posix()}": package_dir / p for p in _files_under(package_dir)})
    return dict(sorted(entries.items()))


def merged_training_config(bundle_dir: str | Path, method: str = "dae") -> bytes:
    """
    The ``configs/train.json`` of a pretraining bundle for the Model Zoo: its base config merged with the overlay
    of one pretext method, as ``python -m monai.bundle run --config_file "['pretrain_base.json','<method>.json']"``
    merges them.

    Args:
        bundle_dir: a bundle folder with ``configs/pretrain_base.json``.
        method: the pretext method (the name of its overlay).

    Returns:
        the merged config as JSON text.
    """
    from monai.bundle import ConfigParser

    merged = ConfigParser.load_config_files(training_config_files(str(bundle_dir), method))
    return (json.dumps(merged, indent=4) + "\n").encode()


def large_files_with_weights(large_files: bytes | None, weights: str | Path, url: str) -> bytes:
    """
    A bundle's ``large_files.yml`` with an entry for its own weights, ``models/model.pt``, as Model Zoo bundles
    declare them: where to download the file and its sha256, computed here from the file.

    Args:
        large_files: the bundle's ``large_files.yml`` content (its comment header is kept), or None.
        weights: the ``model.pt`` that will be published at ``url``.
        url: where the weights are published (``https://...``, or ``file://...`` to try it locally).

    Returns:
        the new ``large_files.yml`` content; an older ``models/model.pt`` entry is replaced.
    """
    import yaml

    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"weights {weights} not found.")
    if not url:
        raise ValueError("weights_url is required with weights: the URL the weights are published at.")
    text = (large_files or b"").decode()
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    entries = [e for e in (yaml.safe_load(text) or {}).get("large_files", []) if e.get("path") != "models/model.pt"]
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    entries.insert(0, {"path": "models/model.pt", "url": url, "hash_val": digest, "hash_type": "sha256"})
    return (header + yaml.safe_dump({"large_files": entries}, sort_keys=False)).encode()


def export_bundle(
    bundle: str,
    output_dir: str = "dist",
    method: str = "dae",
    progress: bool | None = None,
    weights: str | None = None,
    weights_url: str | None = None,
) -> str:
    """
    Check a bundle and write its Model Zoo zip ``<output_dir>/<name>_v<version>.zip``.

    Args:
        bundle: bundle name (a folder of ``bundles/``) or path to a bundle folder.
        output_dir: folder of the zip (created if missing).
        method: for a pretraining bundle, the pretext method whose merged config is packed as ``train.json``.
        progress: a progress bar over the files packed (default: when stderr is a terminal).
        weights: a ``model.pt`` to publish with the bundle: it is not packed, but the packed ``large_files.yml``
            declares it as ``models/model.pt`` with ``weights_url`` and its sha256 (``large_files_with_weights``),
            so ``monai.bundle download_large_files`` fetches and verifies it.
        weights_url: where ``weights`` are published.

    Returns:
        the path of the zip.

    Raises:
        FileNotFoundError: when the bundle does not exist.
        ValueError: when a check fails (see ``check_bundle``); nothing is written then.
    """
    root = Path(bundle_dir(bundle, required="configs/metadata.json"))
    name = root.name
    version = check_bundle(root)["version"]
    contents: dict[str, bytes] = {arcname: source.read_bytes() for arcname, source in bundle_entries(root).items()}
    if (root / "configs" / PRETRAIN_BASE_CONFIG).is_file():
        train = merged_training_config(root, method)
        for overlay in [PRETRAIN_BASE_CONFIG] + [f"{m}.json" for m in pretext_methods(str(root))]:
            contents.pop(f"configs/{overlay}")
        contents = dict(sorted({**contents, "configs/train.json": train}.items()))
    if weights is not None:
        contents["large_files.yml"] = large_files_with_weights(contents.pop("large_files.yml", None), weights, weights_url)
        contents = dict(sorted(contents.items()))

    os.makedirs(output_dir, exist_ok=True)
    path = Path(output_dir).resolve() / f"{name}_v{version}.zip"
    partial = path.with_name(path.name + ".partial")
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            shown = tqdm(contents.items(), desc=f"packing {name}", unit="file", disable=not progress_enabled(progress))
            for arcname, content in shown:
                info = zipfile.ZipInfo(f"{name}/{arcname}", date_time=ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                archive.writestr(info, content)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    print(f"{path}: {len(contents)} files, {path.stat().st_size} bytes, sha256 {digest}")
    return str(path)


def export_bundles(
    *bundles: str,
    output_dir: str = "dist",
    method: str = "dae",
    progress: bool | None = None,
    weights: str | None = None,
    weights_url: str | None = None,
) -> list[str]:
    """
    Export several bundles (all bundles of ``bundles/`` when none is named), each checked first.

    Args:
        bundles: bundle names or folders; none means every bundle of ``bundles/``.
        output_dir: folder of the zips (created if missing).
        method: the pretext method packed for the pretraining bundle.
        progress: a progress bar over the files of each zip (default: when stderr is a terminal).
        weights: the ``model.pt`` to declare in ``large_files.yml`` (one bundle only; see ``export_bundle``).
        weights_url: where ``weights`` are published.

    Returns:
        the paths of the zips, in the order of ``bundles``.
    """
    names = bundles or bundle_names()
    if weights is not None and len(names) != 1:
        raise ValueError(f"weights belong to one bundle; name it (got {len(names)} bundles).")
    return [export_bundle(bundle, output_dir, method, progress, weights, weights_url) for bundle in names]


def main() -> None:
    """Command-line entry point (``python -m tools.export_bundle --help``)."""
    fire.Fire(export_bundles, serialize=lambda paths: None)


if __name__ == "__main__":
    main()
