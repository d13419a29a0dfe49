"""
Convert published Swin UNETR pretraining checkpoints into a bundle-ready state dict for one bundle of this
collection, with the bundle's own loading code.

Reads any layout of :py:data:`monai_dae.weights.LAYOUTS`: the DAE authors' ``ckpt_best.pth`` (also straight
from their ``DAE_SSL_WEIGHTS.zip``), MONAI's ``ssl_pretrained_weights.pth``, Swin-SSL ``model_swinvit.pt``,
VoCo SwinUNETR weights, or ``models/model.pt`` of ``dae_pretrain``. The target network is built from the
target bundle's training configs (``network_def`` of ``configs/train.json``, or of the base config and the DAE
overlay of ``dae_pretrain``) with the feature size, stem and SwinUNETR version
the checkpoint was trained with (read from its tensors, or given), and the weights are loaded by the
bundle's own ``load_pretrained`` item (``monai_dae.weights.load_pretrained``; ``torch.load(weights_only=True)``,
so a file holding pickled code is refused). A bundle without a ``load_pretrained`` item (``dae_pretrain``)
gets every tensor its network can take, the output head included when its shape matches.

The network gets the patch merging the checkpoint was trained with (``monai_dae.weights.resolve_legacy_merging``:
the published layouts predate MONAI 1.5 and get ``LegacyPatchMerging``; ``--legacy_merging`` overrides it).

The file written is a plain state dict: the network tensors that received pretrained weights (with
``--complete``: the whole state dict, newly initialised tensors included, for loaders that need
``strict=True``), and, for the legacy merging, the ``*.downsample.legacy_order`` buffers that record it: the
bundles' ``legacy_merging: "auto"`` reads them from the file (as ``pretrained_path`` when fine-tuning, as
``models/model.pt`` in evaluation and inference), so no ``--legacy_merging`` override is needed afterwards.
It is written atomically (temporary file, then rename). The default output is
``<bundle>/models/model.pt`` for a bundle without ``pretrained_path`` (it is that bundle's model), and
``<bundle>/models/pretrained.pt`` for a fine-tuning bundle (pass it as ``--pretrained_path``; ``model.pt``
there is the fine-tuned model). The loaded / dropped / newly initialised accounting is printed.

Examples::

    python -m tools.convert_checkpoint --checkpoint DAE_SSL_WEIGHTS/ckpt_best.pth --target dae_pretrain \\
        --complete True
    python -m tools.convert_checkpoint --checkpoint model_swinvit.pt --target dae_btcv_seg
    python -m tools.convert_checkpoint --checkpoint bundles/dae_pretrain/models/DAE_SSL_WEIGHTS.zip \\
        --target dae_brats_cls --output /tmp/dae_brats_init.pt
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from typing import Any

import fire
import torch
from monai.bundle import ConfigParser

from monai_dae.networks import is_merging_record
from monai_dae.utils import TRAINING_CONFIGS, bundle_dir, save_atomically, training_config_files
from monai_dae.weights import (
    LoadReport,
    convert_state_dict,
    detect_layout,
    infer_architecture,
    load_pretrained,
    read_checkpoint,
    resolve_legacy_merging,
    resolve_stem,
)

__all__ = ["ARCHITECTURE_KEYS", "convert_checkpoint", "zip_member"]

ARCHITECTURE_KEYS = ("feature_size", "stem", "use_v2")
"""Config keys set from the checkpoint: a top-level key of the bundle when it has one, else ``network_def#key``."""

LOADER_ID = "load_pretrained"
"""The config item of the fine-tuning bundles that loads ``@pretrained_path`` (``dae_pretrain`` has none)."""

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
_CONFIG_WRAPPERS = ("Failed to evaluate", "Failed to instantiate")


@contextlib.contextmanager
def zip_member(path: str, member: str | None = None) -> Iterator[str]:
    """
    Give the path of a checkpoint, extracting it to a temporary folder first when ``path`` is a zip archive
    (e.g. the DAE authors' ``DAE_SSL_WEIGHTS.zip``); the extracted copy is removed on exit.

    Args:
        path: a checkpoint file or a zip archive.
        member: name of the checkpoint inside the archive; None picks the only ``ckpt_best.pth``, else the
            only checkpoint file (``.pth``, ``.pt``, ``.ckpt``, ``.bin``).

    Yields:
        the path of a checkpoint file.

    Raises:
        FileNotFoundError: ``path`` does not exist, or ``member`` is not in the archive.
        ValueError: the archive holds no checkpoint, or several and no ``member`` was given (the message
            lists them).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: '{path}'.")
    if not _is_archive(path):
        yield path
        return
    from tools.install_bundle import check_zip_entries

    check_zip_entries(path)  # refuse an archive with a path-traversal or link entry before reading any
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/")]
        if member is not None:
            if member not in names:
                raise FileNotFoundError(f"'{member}' is not in the archive '{path}'; it holds {names[:20]}.")
            chosen = member
        else:
            candidates = [n for n in names if os.path.basename(n) == "ckpt_best.pth"]
            candidates = candidates or [n for n in names if n.lower().endswith(CHECKPOINT_SUFFIXES)]
            if len(candidates) != 1:
                raise ValueError(
                    f"archive '{path}' holds {len(candidates)} checkpoint files {candidates[:20]}: choose one "
                    "with --member."
                )
            chosen = candidates[0]
        with tempfile.TemporaryDirectory(prefix="convert_checkpoint_") as folder:
            extracted = os.path.join(folder, os.path.basename(chosen))
            with archive.open(chosen) as source, open(extracted, "wb") as destination:
                shutil.copyfileobj(source, destination)
            print(f"read '{chosen}' from the archive '{path}'.")
            yield extracted


def _is_archive(path: str) -> bool:
    """Whether a file is a zip archive of files, not a checkpoint in PyTorch's zip format (``<name>/data.pkl``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return not any(n.count("/") == 1 and n.endswith("/data.pkl") for n in archive.namelist())


def _parsed(parser: ConfigParser, config_id: str, config_file: str) -> Any:
    """
    ``parser.get_parsed_content(config_id)``, re-raising the error of the code the config calls (the weight
    loader's message) instead of MONAI's "Failed to evaluate / instantiate" wrappers around it.
    """
    try:
        return parser.get_parsed_content(config_id)
    except Exception as error:
        cause: BaseException = error
        while cause.__cause__ is not None and str(cause).startswith(_CONFIG_WRAPPERS):
            cause = cause.__cause__
        if cause is error:
            raise
        raise cause from None


def _config_id(parser: ConfigParser, key: str, config_file: str) -> str:
    """Where an architecture key lives in a bundle config: top level, else inside a ``network_def`` dict."""
    if key in parser.config:
        return key
    if isinstance(parser.config.get("network_def"), dict):
        return f"network_def#{key}"
    raise ValueError(
        f"{config_file}: cannot set '{key}': it is neither a top-level key nor can it be added to network_def "
        "(network_def is not a dict)."
    )


def convert_checkpoint(
    checkpoint: str,
    target: str,
    output: str | None = None,
    member: str | None = None,
    feature_size: int | None = None,
    stem: str | None = None,
    use_v2: bool | None = None,
    legacy_merging: bool | str = "auto",
    complete: bool = False,
    overwrite: bool = False,
    seed: int = 0,
) -> LoadReport:
    """
    Convert a pretrained checkpoint for a target bundle and write a plain state dict.

    Args:
        checkpoint: checkpoint file of any supported layout, or a zip archive holding one (see ``member``).
        target: target bundle: a bundle folder or a bundle name of this checkout
            (``dae_pretrain``, ``dae_btcv_seg``, ``dae_brats_cls``).
        output: file to write; default ``<bundle>/models/model.pt`` when the bundle has no ``pretrained_path``
            key, else ``<bundle>/models/pretrained.pt``.
        member: checkpoint name inside a zip archive (default: its only ``ckpt_best.pth``).
        feature_size: network feature size; None reads it from the checkpoint.
        stem: "conv", "patch" or "auto" (see ``monai_dae.weights.resolve_stem``); None: the checkpoint's stem.
        use_v2: SwinUNETR v2 blocks; None uses what the checkpoint has.
        legacy_merging: the patch merging of MONAI < 1.5 (``LegacyPatchMerging``): True, False or "auto" (what
            the checkpoint was trained with, see ``monai_dae.weights.resolve_legacy_merging``); sets the target
            bundle's ``legacy_merging`` key.
        complete: write the network's whole state dict, newly initialised tensors included (seeded with
            ``seed``), so that it loads with ``strict=True`` (e.g. as ``dae_pretrain``'s ``models/model.pt``
            for its evaluate and inference configs); off: only the pretrained tensors.
        overwrite: replace an existing output file.
        seed: random seed of the newly initialised tensors.

    Returns:
        the :py:class:`monai_dae.weights.LoadReport` of the load into the target network.

    Raises:
        FileExistsError: the output exists and ``overwrite`` is off.
        FileNotFoundError, RuntimeError, ValueError: unreadable checkpoint (pickled code included), unknown
            layout, or weights that do not fit the target network; nothing is written then.
    """
    bundle_root = bundle_dir(target, required=TRAINING_CONFIGS)
    config_files = training_config_files(bundle_root)
    config_file = " + ".join(config_files)  # names the configs in messages
    parser = ConfigParser()
    parser.read_config(config_files)
    loader_id = LOADER_ID if LOADER_ID in parser.config else None
    if output is None:
        output = os.path.join(bundle_root, "models", "pretrained.pt" if loader_id else "model.pt")
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"output '{output}' exists: pass --overwrite True to replace it.")

    with zip_member(checkpoint, member) as path:
        raw = read_checkpoint(path)
        try:
            layout = detect_layout(raw)
        except ValueError as error:
            raise ValueError(f"checkpoint '{checkpoint}': {error}") from error
        architecture = infer_architecture(convert_state_dict(raw, layout))
        del raw
        given = {"feature_size": feature_size, "use_v2": use_v2}
        architecture.update({k: v for k, v in given.items() if v is not None})
        if stem is not None:
            architecture["stem"] = resolve_stem(stem, path)
        legacy = resolve_legacy_merging(legacy_merging, path)
        print(
            f"checkpoint '{checkpoint}': layout '{layout}', "
            + ", ".join(f"{k} {v}" for k, v in architecture.items())
            + f", {'legacy' if legacy else 'current'} patch merging; target bundle '{bundle_root}'."
        )

        parser["bundle_root"] = bundle_root
        overrides = {_config_id(parser, key, config_file): architecture[key] for key in ARCHITECTURE_KEYS}
        missing = object()
        defaults = {k: parser.get(k, missing) for k in overrides}
        defaults = {k: v for k, v in defaults.items() if v is not missing}
        for key, value in overrides.items():
            parser[key] = value
        parser["legacy_merging"] = legacy
        if loader_id is not None:
            parser["pretrained_path"] = path
        torch.manual_seed(seed)
        network = _parsed(parser, "network_def", config_file)
        if loader_id is not None:
            report = _parsed(parser, loader_id, config_file)
            if not isinstance(report, LoadReport):
                raise RuntimeError(f"{config_file}: '{loader_id}' did not return a load report ({type(report)}).")
        else:
            report = load_pretrained(network, path, load_decoder=True, load_head=True)
    report.path = str(checkpoint)

    state = network.state_dict()
    unknown = [k for k in report.loaded if k not in state]
    if unknown:
        raise RuntimeError(f"{config_file}: loaded keys {unknown[:4]} are not in network_def's state dict.")
    # the records of the legacy merging (not in a published checkpoint) go into the file for legacy_merging "auto"
    records = [k for k in state if is_merging_record(k) and k not in report.loaded]
    result = dict(state) if complete else {k: state[k] for k in [*report.loaded, *records]}
    save_atomically(result, output)

    print(report.summary())
    new = len(result) - report.num_loaded - len(records)
    print(
        f"wrote {len(result)} tensors to '{output}': {report.num_loaded} pretrained"
        + (f", {new} newly initialised (seed {seed})" if new else "")
        + (f", {len(records)} '*.downsample.legacy_order' buffers recording the legacy merging" if records else "")
        + "."
    )
    parameters = inspect.signature(type(network)).parameters
    needed = [
        f"--{key} {value}"
        for key, value in overrides.items()
        if value != defaults.get(key, _parameter_default(parameters, key.split("#")[-1]))
    ]
    usage = " ".join(([f"--pretrained_path {output}"] if loader_id is not None else []) + needed)
    if usage:
        print(f"run the '{os.path.basename(bundle_root)}' bundle with: {usage}")
    return report


def _parameter_default(parameters: Mapping[str, inspect.Parameter], name: str) -> Any:
    """The default of a constructor parameter, None when it has none."""
    parameter = parameters.get(name)
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def main() -> None:
    """Command-line entry point (``python -m tools.convert_checkpoint --help``)."""
    fire.Fire(convert_checkpoint, serialize=lambda report: None)


if __name__ == "__main__":
    main()
