"""Small helpers used by the bundle configs."""

from __future__ import annotations

import glob
import os
import uuid
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "bundle_dir",
    "latest_checkpoint",
    "save_atomically",
    "amp_dtype",
    "is_secondary_rank",
    "distributed_rank",
    "distributed_world_size",
    "require_one_item_per_rank",
]


def bundle_dir(name: str) -> str:
    """
    Default ``bundle_root`` of a bundle of this collection: the bundle folder itself when ``monai_dae`` is
    vendored inside it (an exported Model Zoo bundle), else ``bundles/<name>`` of the checkout ``monai_dae``
    was installed from, else the current directory. Pass ``--bundle_root`` to use another copy.

    Args:
        name: bundle folder name, e.g. "dae_pretrain".

    Returns:
        the absolute bundle root.
    """
    package_parent = Path(__file__).resolve().parents[1]
    if (package_parent / "configs" / "metadata.json").is_file():
        return str(package_parent)
    candidate = package_parent / "bundles" / name
    return str(candidate) if candidate.is_dir() else os.getcwd()


def latest_checkpoint(directory: str, pattern: str = "checkpoint*.pt") -> str | None:
    """
    The most recently written checkpoint of a directory, to resume a run.

    Args:
        directory: checkpoint directory.
        pattern: file name pattern of resumable checkpoints.

    Returns:
        its path, or None when there is none.
    """
    files = glob.glob(os.path.join(directory, pattern))
    return max(files, key=os.path.getmtime) if files else None


def save_atomically(obj: Any, path: str) -> None:
    """
    ``torch.save`` that never leaves a partial file: write to a hidden temporary file in the target folder,
    ``fsync``, then ``os.replace`` it over ``path``. A reader sees the previous complete file or the new
    complete file; a failed or interrupted write removes the temporary file and leaves ``path`` as it was.

    Args:
        obj: what to save (e.g. a state dict).
        path: the target file; its folder is created when missing.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # a name of its own ("x": never an existing file) opened with the umask's permissions, like torch.save's file
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "xb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def amp_dtype(device: torch.device | str) -> torch.dtype:
    """
    Autocast dtype of a device: bfloat16 where supported (no loss scaling needed), else float16.

    Args:
        device: the training device.

    Returns:
        the dtype.
    """
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def distributed_rank() -> int:
    """
    Returns:
        the rank of this process in the initialised torch.distributed group, 0 without one.
    """
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def distributed_world_size() -> int:
    """
    Returns:
        the number of processes of the initialised torch.distributed group, 1 without one.
    """
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def require_one_item_per_rank(items: list, name: str) -> list:
    """
    Stop a distributed run whose data list has fewer entries than processes: a rank without data would wait
    forever in the metric collectives of the others. Called from the ``multi_gpu_train.json`` overlays.

    Args:
        items: the data list of one split.
        name: the split's name in the message ("validation", ...).

    Returns:
        the items, unchanged.

    Raises:
        ValueError: fewer items than processes (the message gives both numbers and what to do).
    """
    world_size = distributed_world_size()
    if len(items) < world_size:
        raise ValueError(
            f"the {name} list has {len(items)} entries for {world_size} processes: every process needs at least "
            f"one. Add {name} entries to the data list or start fewer processes (--nproc_per_node)."
        )
    return items


def is_secondary_rank() -> bool:
    """
    Whether this process is a non-zero rank of an initialised torch.distributed group; configs disable
    checkpoint, log and preview handlers on those ranks.

    Returns:
        True on ranks other than 0.
    """
    return distributed_rank() > 0
