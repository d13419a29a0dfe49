"""
The Model Zoo's verification of a bundle folder, as its CI runs it on a submitted bundle, with weights given
on the command line (for example those ``make demo`` trained):

1. the folder: ``configs/metadata.json`` exists; every ``large_files.yml`` entry names a path under the bundle,
   a URL and a known hash type, and a listed file that is present matches its hash;
2. ``version`` has a ``changelog`` entry;
3. the metadata verifies against the Zoo's schema (vendored in ``tools/schema``);
4. the network of ``configs/inference.json`` takes and returns the shapes the metadata declares
   (``monai.bundle.verify_net_in_out``);
5. TorchScript: ``monai.bundle.ckpt_export`` of the weights (traced: MONAI's Swin transformer does not script),
   reloaded with ``torch.jit.load`` and compared with the eager network on a random input.

Run from the repository root::

    python -m tools.verify_bundle --bundle dae_btcv_seg --weights runs/demo/dae_btcv_seg/models/model.pt \\
        --overrides "{'feature_size': 12}"

Every check prints one line; the first failing check stops with an error naming the bundle and the check.
"""

from __future__ import annotations

import ast
import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from monai.apps.utils import check_hash
from monai.bundle import ConfigParser, ckpt_export, verify_metadata, verify_net_in_out

from monai_dae.utils import bundle_dir

SCHEMA = Path(__file__).resolve().parent / "schema" / "meta_schema_20240725.json"
SCHEMA_MD5 = "06954cad2cc5d3784e72077ac76f0fc8"
HASH_TYPES = ("md5", "sha1", "sha256", "sha512")
NET_ID = "network_def"
INFERENCE_CONFIG = "configs/inference.json"


class BundleVerificationError(RuntimeError):
    """A bundle failed one of the Model Zoo's checks."""


def verify_directory(bundle_path: Path) -> list[dict]:
    """
    Check the bundle folder: ``configs/metadata.json`` and the ``large_files.yml`` entries.

    Args:
        bundle_path: the bundle folder.

    Returns:
        the large-file entries.

    Raises:
        BundleVerificationError: a missing metadata file, a malformed entry or a present file with another hash.
    """
    if not (bundle_path / "configs" / "metadata.json").is_file():
        raise BundleVerificationError(f"{bundle_path}: configs/metadata.json is missing.")
    names = [name for name in ("large_files.yml", "large_files.yaml", "large_files.json") if (bundle_path / name).is_file()]
    if not names:
        return []
    large_files_path = bundle_path / names[0]
    content = yaml.safe_load(large_files_path.read_text()) or {}
    entries = content.get("large_files") if isinstance(content, Mapping) else None
    if not isinstance(entries, list) or not entries:
        raise BundleVerificationError(f"{large_files_path}: no 'large_files' list.")
    for index, entry in enumerate(entries):
        where = f"{large_files_path}, entry {index}"
        missing = [key for key in ("path", "url", "hash_type") if not entry.get(key)]
        if missing:
            raise BundleVerificationError(f"{where}: {', '.join(missing)} missing.")
        target = (bundle_path / entry["path"]).resolve()
        if bundle_path.resolve() not in target.parents:
            raise BundleVerificationError(f"{where}: path {entry['path']!r} leaves the bundle folder.")
        if str(entry["hash_type"]).lower() not in HASH_TYPES:
            raise BundleVerificationError(f"{where}: hash_type {entry['hash_type']!r} is not one of {HASH_TYPES}.")
        if target.is_file() and entry.get("hash_val") and not check_hash(str(target), entry["hash_val"], entry["hash_type"]):
            raise BundleVerificationError(f"{where}: {target} does not match its {entry['hash_type']} hash_val.")
    return entries


def verify_version(metadata: Mapping, bundle_path: Path) -> str:
    """
    Check that ``version`` has a ``changelog`` entry.

    Args:
        metadata: the bundle's metadata.
        bundle_path: the bundle folder, for the error message.

    Returns:
        the version.
    """
    version = metadata.get("version")
    if not version or version not in metadata.get("changelog", {}):
        raise BundleVerificationError(f"{bundle_path}: version {version!r} has no entry in the metadata's changelog.")
    return version


def _input_shape(metadata: Mapping, spatial_shape: list[int] | None) -> list[int]:
    image = metadata["network_data_format"]["inputs"]["image"]
    return [1, int(image["num_channels"]), *(spatial_shape or image["spatial_shape"])]


def _first_tensor(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else _first_tensor(output[0])


def verify_torchscript(
    bundle_path: Path, weights: Path, input_shape: list[int], overrides: Mapping[str, Any], atol: float = 1e-4
) -> float:
    """
    Export ``weights`` to TorchScript with ``ckpt_export``, reload the file and compare it with the eager network.

    Args:
        bundle_path: the bundle folder.
        weights: the ``model.pt`` to export.
        input_shape: (1, C, *spatial) input of the comparison and of the trace.
        overrides: config overrides (e.g. ``feature_size``).
        atol: tolerance of the comparison.

    Returns:
        the largest absolute difference between the TorchScript and the eager outputs.
    """
    config_file = str(bundle_path / INFERENCE_CONFIG)
    meta_file = str(bundle_path / "configs" / "metadata.json")
    with tempfile.TemporaryDirectory() as work:
        exported = os.path.join(work, "model.ts")
        ckpt_export(
            net_id=NET_ID,
            filepath=exported,
            ckpt_file=str(weights),
            meta_file=meta_file,
            config_file=config_file,
            bundle_root=str(bundle_path),
            use_trace=True,
            input_shape=input_shape,
            **overrides,
        )
        scripted = torch.jit.load(exported, map_location="cpu")
    parser = ConfigParser()
    parser.read_config(config_file)
    parser.update({"bundle_root": str(bundle_path), "device": "cpu", **overrides})
    eager = parser.get_parsed_content(NET_ID)
    eager.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    eager.eval()
    x = torch.rand(*input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        difference = (_first_tensor(scripted(x)) - _first_tensor(eager(x))).abs().max().item()
    if not difference <= atol:
        raise BundleVerificationError(
            f"{bundle_path}: the TorchScript export of {weights} differs from the eager network by {difference:.3g} "
            f"(tolerance {atol})."
        )
    return difference


def verify_bundle(
    bundle: str,
    weights: str | None = None,
    overrides: Mapping[str, Any] | str | None = None,
    spatial_shape: list[int] | None = None,
    torchscript: bool = True,
) -> dict[str, Any]:
    """
    Run the Model Zoo's checks on one bundle and print one line per check.

    Args:
        bundle: a bundle name under ``bundles/`` or a bundle folder.
        weights: the ``model.pt`` to check (default: the bundle's ``models/model.pt``); needed for TorchScript.
        overrides: config overrides for the network (a dict or its JSON/Python literal), e.g.
            ``{'feature_size': 12}`` for the demo's weights.
        spatial_shape: spatial input shape of the network checks (default: the metadata's).
        torchscript: export and compare TorchScript (needs weights).

    Returns:
        what was checked: ``bundle``, ``version``, ``large_files``, ``input_shape``, ``torchscript_max_abs_diff``.
    """
    bundle_path = Path(bundle_dir(bundle, required="configs/metadata.json"))
    overrides = dict(ast.literal_eval(overrides) if isinstance(overrides, str) else overrides or {})
    started = time.perf_counter()
    entries = verify_directory(bundle_path)
    print(f"{bundle_path.name}: folder verified ({len(entries)} large file(s) declared)")
    metadata = json.loads((bundle_path / "configs" / "metadata.json").read_text())
    version = verify_version(metadata, bundle_path)
    print(f"{bundle_path.name}: version {version} and changelog verified")
    verify_metadata(meta_file=str(bundle_path / "configs" / "metadata.json"), filepath=str(SCHEMA), hash_val=SCHEMA_MD5)
    print(f"{bundle_path.name}: metadata verified against the Model Zoo schema")
    shape = _input_shape(metadata, spatial_shape)
    shape_overrides = {"_meta_#network_data_format#inputs#image#spatial_shape": shape[2:]}
    if metadata["network_data_format"]["outputs"]["pred"].get("spatial_shape"):
        shape_overrides["_meta_#network_data_format#outputs#pred#spatial_shape"] = shape[2:]
    verify_net_in_out(
        net_id=NET_ID,
        meta_file=str(bundle_path / "configs" / "metadata.json"),
        config_file=str(bundle_path / INFERENCE_CONFIG),
        bundle_root=str(bundle_path),
        device="cpu",
        **shape_overrides,
        **overrides,
    )
    print(f"{bundle_path.name}: network input and output verified at {shape}")
    result = {"bundle": bundle_path.name, "version": version, "large_files": len(entries), "input_shape": shape}
    if torchscript:
        weights_path = Path(weights) if weights else bundle_path / "models" / "model.pt"
        if not weights_path.is_file():
            raise BundleVerificationError(f"{bundle_path.name}: no weights to export: {weights_path} does not exist.")
        difference = verify_torchscript(bundle_path, weights_path, shape, overrides)
        result["torchscript_max_abs_diff"] = difference
        print(f"{bundle_path.name}: TorchScript export of {weights_path} verified (max abs difference {difference:.2e})")
    print(f"{bundle_path.name}: all checks passed in {time.perf_counter() - started:.1f} s")
    return result


if __name__ == "__main__":
    import fire

    fire.Fire(verify_bundle)
