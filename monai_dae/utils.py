"""Small helpers used by the bundle configs and the tools."""

from __future__ import annotations

import glob
import json
import logging
import os
import pickle
import uuid
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from monai_dae.progress import progress_enabled

logger = logging.getLogger(__name__)

__all__ = [
    "bundle_dir",
    "bundle_names",
    "training_config_files",
    "pretext_methods",
    "PRETRAIN_BASE_CONFIG",
    "TRAINING_CONFIGS",
    "latest_checkpoint",
    "prepare_output_dir",
    "resumable_checkpoint",
    "resume_checkpoint",
    "verify_checkpoint",
    "remove_stale_temporaries",
    "require_training_iterations",
    "CheckpointError",
    "save_atomically",
    "amp_dtype",
    "is_secondary_rank",
    "distributed_rank",
    "distributed_world_size",
    "all_gather_list",
    "require_one_item_per_rank",
    "progress_enabled",
]


_CHECKOUT_ROOT = Path(__file__).resolve().parents[1]
"""The folder holding ``monai_dae``: a checkout (with ``bundles/``), or an exported bundle that vendors it."""


def bundle_names() -> list[str]:
    """
    Returns:
        the bundles of the checkout ``monai_dae`` comes from (folders of ``bundles/`` with
        ``configs/metadata.json``), sorted; empty for a vendored copy.
    """
    folder = _CHECKOUT_ROOT / "bundles"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / "configs" / "metadata.json").is_file())


def bundle_dir(bundle: str, required: str | Sequence[str] | None = None) -> str:
    """
    The root folder of a bundle of this collection: the default ``bundle_root`` of every bundle config and the
    bundle lookup of the tools (``tools/convert_checkpoint.py``, ``export_bundle.py``, ...).

    Candidates, in order: ``bundle`` itself as a folder; the bundle folder ``monai_dae`` is vendored in (an
    exported Model Zoo bundle); ``bundles/<bundle>`` of the checkout ``monai_dae`` comes from. The first that
    holds ``required`` (``configs/metadata.json`` when None; one of them when several) is the bundle.

    Args:
        bundle: a bundle name (``dae_pretrain``, ``dae_btcv_seg``, ``dae_brats_cls``) or a bundle folder.
        required: the file, relative to the bundle root, that the caller needs, or alternatives (e.g. the
            training configs of a fine-tuning or a pretraining bundle). None (the bundle configs):
            ``configs/metadata.json``, and when no candidate has it the current directory is the bundle root
            (pass ``--bundle_root`` to use another copy).

    Returns:
        the absolute bundle root.

    Raises:
        FileNotFoundError: ``required`` is given and no candidate holds it; the message lists the bundles.
    """
    markers = [required] if isinstance(required, str) else list(required or ["configs/metadata.json"])
    for candidate in (Path(bundle), _CHECKOUT_ROOT, _CHECKOUT_ROOT / "bundles" / bundle):
        if any((candidate / marker).is_file() for marker in markers):
            return str(candidate.resolve())
    if required is None:
        return os.getcwd()
    raise FileNotFoundError(
        f"bundle '{bundle}' not found: expected a bundle folder with {' or '.join(markers)} or one of {bundle_names()}."
    )


PRETRAIN_BASE_CONFIG = "pretrain_base.json"
"""The base pretraining config of ``dae_pretrain``; each pretext method adds its overlay (``dae.json``, ...)."""


TRAINING_CONFIGS = ("configs/train.json", f"configs/{PRETRAIN_BASE_CONFIG}")
"""What marks a bundle that trains: one ``train.json``, or the base pretraining config of the overlays."""


def training_config_files(bundle_root: str, method: str = "dae") -> list[str]:
    """
    The config files of a bundle's training, in merge order: ``configs/train.json`` when the bundle has one (the
    fine-tuning bundles, an exported Model Zoo bundle), else the base pretraining config and the overlay of the
    pretext ``method`` (``configs/pretrain_base.json`` + ``configs/<method>.json``).

    Args:
        bundle_root: the bundle folder.
        method: the pretext method of a pretraining bundle (the name of its overlay, e.g. "dae").

    Returns:
        absolute paths of the config files.

    Raises:
        FileNotFoundError: the bundle has neither, or no overlay for ``method``; the message lists the methods.
    """
    configs = Path(bundle_root).resolve() / "configs"
    if (configs / "train.json").is_file():
        return [str(configs / "train.json")]
    base = configs / PRETRAIN_BASE_CONFIG
    if not base.is_file():
        raise FileNotFoundError(f"{configs}: neither train.json nor {PRETRAIN_BASE_CONFIG}.")
    overlay = configs / f"{method}.json"
    if not overlay.is_file():
        raise FileNotFoundError(f"{configs}: no overlay '{method}.json' for pretext method '{method}'; methods: "
                                f"{pretext_methods(bundle_root)}.")
    return [str(base), str(overlay)]


def pretext_methods(bundle_root: str) -> list[str]:
    """
    Args:
        bundle_root: a pretraining bundle folder.

    Returns:
        the pretext methods it has an overlay for (``configs/<method>.json`` files that set ``loss``), sorted.
    """
    methods = []
    for path in sorted((Path(bundle_root) / "configs").glob("*.json")):
        with open(path) as file:
            content = json.load(file)
        if isinstance(content, dict) and "loss" in content and path.name != PRETRAIN_BASE_CONFIG:
            methods.append(path.stem)
    return methods


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


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, corrupt, or a pickle that needs more than tensors to load."""


def remove_stale_temporaries(*folders: str | None) -> list[str]:
    """
    Remove the hidden ``.<name>.<pid>.<hex>.tmp`` files that :py:func:`save_atomically` leaves when its process
    is killed (``kill -9``, power loss) in the middle of a write: no cleanup code runs then. They are never
    read (resumable checkpoints match ``checkpoint*.pt``); this only frees the space, and logs each file.

    Args:
        folders: folders to clean (None or missing folders are skipped).

    Returns:
        the files removed.
    """
    removed = []
    for folder in folders:
        if not folder or not os.path.isdir(folder):
            continue
        for path in sorted(glob.glob(os.path.join(folder, ".*.tmp"))):
            try:
                os.remove(path)
            except FileNotFoundError:  # another rank removed it first
                continue
            logger.warning(f"removed '{path}', the partial file of a save that was interrupted (process killed).")
            removed.append(path)
    return removed


def verify_checkpoint(path: str) -> dict:
    """
    Read a checkpoint as a resumed run will, without executing code: the zip container is checked entry by
    entry (CRC32 of every tensor, so a truncated file or overwritten bytes are found), then the file is loaded
    with ``torch.load(weights_only=True)``.

    Args:
        path: the checkpoint file.

    Returns:
        its content (tensors on the CPU).

    Raises:
        CheckpointError: naming the file and the problem; ``error.unsafe`` is True when the file is a pickle
            that needs more than tensors and plain containers (it was refused, nothing in it was run).
    """
    try:
        if os.path.getsize(path) == 0:
            raise CheckpointError(f"checkpoint '{path}' is empty (0 bytes): it was never completely written.")
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"checkpoint '{path}' is not a PyTorch zip checkpoint (truncated or corrupt).")
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        if bad is not None:
            raise CheckpointError(f"checkpoint '{path}' is corrupt: entry '{bad}' fails its CRC check.")
        return torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as error:  # what weights_only=True raises for anything but tensors and containers
        failure = CheckpointError(
            f"checkpoint '{path}' was refused: it is a pickle that needs more than tensors to load, and loading it "
            f"would run code from the file (torch.load(weights_only=True) says: {str(error).splitlines()[0]}). "
            "Load it only if you trust its source, re-save its state dicts, and resume from that file."
        )
        failure.unsafe = True
        raise failure from error
    except Exception as error:
        raise CheckpointError(f"checkpoint '{path}' cannot be read ({type(error).__name__}: {error}).") from error


def resumable_checkpoint(checkpoint_dir: str, pattern: str = "checkpoint*.pt") -> str:
    """
    The checkpoint a resumed run starts from: the most recent ``checkpoint*.pt`` of ``checkpoint_dir`` that
    :py:func:`verify_checkpoint` reads. A corrupt newer file is skipped with a warning naming it (the run falls
    back to the previous good checkpoint); a pickle that needs code to load stops the run.

    Args:
        checkpoint_dir: the run's checkpoint folder.
        pattern: file name pattern of resumable checkpoints.

    Returns:
        the path of the checkpoint to resume from.

    Raises:
        CheckpointError: no checkpoint in ``checkpoint_dir``, none readable, or an unsafe pickle among them.
    """
    remove_stale_temporaries(checkpoint_dir)
    files = sorted(glob.glob(os.path.join(checkpoint_dir, pattern)), key=os.path.getmtime, reverse=True)
    if not files:
        raise CheckpointError(
            f"resume is true but the checkpoint folder '{checkpoint_dir}' holds no '{pattern}' file to resume from. "
            "Start a new run without '--resume True', or set 'checkpoint_dir' (or 'output_dir') to the folder of "
            "the run to continue."
        )
    problems = []
    for path in files:
        try:
            verify_checkpoint(path)
        except CheckpointError as error:
            if getattr(error, "unsafe", False):
                raise
            logger.warning(f"{error} Trying the previous checkpoint.")
            problems.append(str(error))
            continue
        if problems:
            logger.warning(f"resuming from '{path}', the most recent readable checkpoint.")
        return path
    raise CheckpointError(
        f"no readable checkpoint to resume from in '{checkpoint_dir}': {' '.join(problems)} "
        "Remove the broken files and start a new run (with '--overwrite True'), or restore a checkpoint."
    )


RESUME_AUTO = "auto"


def _resume_mode(resume: bool | str) -> bool | str:
    """The ``resume`` key checked: True, False or "auto"."""
    if isinstance(resume, str) and resume.lower() == RESUME_AUTO:
        return RESUME_AUTO
    if isinstance(resume, bool):
        return resume
    raise ValueError(f"resume must be true, false or '{RESUME_AUTO}', got {resume!r}.")


def resume_checkpoint(checkpoint_dir: str, resume: bool | str) -> str:
    """
    The ``resume_from`` of every training config: the checkpoint a run starts from, by its ``resume`` key.

    - false: none, a new run.
    - true: the newest readable checkpoint (:py:func:`resumable_checkpoint`); none is an error.
    - "auto": the newest readable checkpoint when ``checkpoint_dir`` holds one, else none. This is the mode
      for preemptible or elastic jobs (SLURM ``--requeue``, ``torchrun --max-restarts``), whose restarts repeat
      the first command line: the first start begins the run, every restart continues it.

    Args:
        checkpoint_dir: the run's checkpoint folder.
        resume: the config's ``resume`` (true, false or "auto").

    Returns:
        the path of the checkpoint to resume from, or "".
    """
    mode = _resume_mode(resume)
    if not mode:
        return ""
    if mode == RESUME_AUTO and latest_checkpoint(checkpoint_dir) is None:
        return ""
    return resumable_checkpoint(checkpoint_dir)


def prepare_output_dir(
    output_dir: str,
    resume: bool | str = False,
    overwrite: bool = False,
    checkpoint_dir: str | None = None,
    log_dir: str | None = None,
    model_dir: str | None = None,
    model_filename: str = "model.pt",
) -> None:
    """
    Guard a training run's output folders, before anything is built or written (the ``initialize`` of every
    training config calls it): two runs pointed at the same ``output_dir`` must not overwrite each other's
    checkpoints, logs and best model.

    The output is *used* when ``checkpoint_dir`` holds a ``*.pt`` file, ``log_dir`` holds any file, or
    ``model_dir`` holds ``model_filename`` (the best model the run would overwrite). Then:

    - ``resume`` true: the run continues there; stale temporary files of a killed save are removed, and there
      must be a checkpoint to resume from (see :py:func:`resumable_checkpoint`, which picks it).
    - ``resume`` "auto": as true when ``checkpoint_dir`` holds a checkpoint, else as ``overwrite`` (a restarted
      job that had not yet saved a checkpoint starts again, replacing its own logs).
    - ``overwrite`` true: a new run replaces the old one; the old resumable checkpoints and TensorBoard event
      files are deleted (each logged), so that a later ``--resume`` cannot pick up the previous run;
      ``model_filename`` is replaced at the new run's first validation.
    - neither: refused with an error naming the folder, what was found, and both options.

    An absent or empty output is fine. Nothing is created here.

    Args:
        output_dir: the run's output folder (named in messages).
        resume: the config's ``resume`` (true, false or "auto").
        overwrite: the config's ``overwrite``.
        checkpoint_dir: resumable checkpoints of the run (default ``<output_dir>/checkpoints``).
        log_dir: TensorBoard folder (default ``<output_dir>/tensorboard``).
        model_dir: folder of the best model (the bundle's ``models/``); None skips that check.
        model_filename: the best model's file name.

    Raises:
        FileExistsError: the output is used and neither ``resume`` nor ``overwrite`` is set.
        ValueError: both ``resume`` and ``overwrite`` are set.
        CheckpointError: ``resume`` with no checkpoint in ``checkpoint_dir``.
    """
    checkpoint_dir = checkpoint_dir or os.path.join(output_dir, "checkpoints")
    log_dir = log_dir or os.path.join(output_dir, "tensorboard")
    resume = _resume_mode(resume)
    if resume and overwrite:
        raise ValueError(
            f"both 'resume' and 'overwrite' are true for output_dir '{output_dir}': '--resume True' continues the "
            "run there, '--overwrite True' replaces it with a new one; pass one of them."
        )
    if resume == RESUME_AUTO:
        has_checkpoint = latest_checkpoint(checkpoint_dir) is not None
        resume, overwrite = has_checkpoint, not has_checkpoint
    if resume:
        remove_stale_temporaries(checkpoint_dir, model_dir)
        if not glob.glob(os.path.join(checkpoint_dir, "checkpoint*.pt")):
            raise CheckpointError(
                f"'--resume True' but the checkpoint folder '{checkpoint_dir}' holds no checkpoint*.pt file to resume "
                "from. Start a new run without '--resume True' (with '--overwrite True' if output_dir is used), or "
                "set 'output_dir' / 'checkpoint_dir' to the folder of the run to continue."
            )
        return
    checkpoints = sorted(glob.glob(os.path.join(checkpoint_dir, "*.pt")))
    logs = sorted(p for p in glob.glob(os.path.join(log_dir, "**", "*"), recursive=True) if os.path.isfile(p))
    model = os.path.join(model_dir, model_filename) if model_dir else None
    found = [f"{len(checkpoints)} checkpoint(s) in '{checkpoint_dir}'"] if checkpoints else []
    found += [f"{len(logs)} log file(s) in '{log_dir}'"] if logs else []
    found += [f"the best model '{model}'"] if model and os.path.isfile(model) else []
    if not found:
        return
    if not overwrite:
        raise FileExistsError(
            f"output_dir '{output_dir}' is used by another run ({', '.join(found)}); a new run would overwrite its "
            "checkpoints, logs and best model. Pass '--resume True' to continue that run, '--overwrite True' to "
            "replace it, or another '--output_dir' (and 'ckpt_dir') for a separate run."
        )
    remove_stale_temporaries(checkpoint_dir, model_dir)
    for path in checkpoints + [p for p in logs if os.path.basename(p).startswith("events.out.tfevents")]:
        try:
            os.remove(path)
        except FileNotFoundError:  # another rank removed it first
            continue
        logger.warning(f"overwrite: removed '{path}' of the previous run.")


def require_training_iterations(dataloader: Any, batch_size: int | None = None, name: str = "training") -> int:
    """
    Stop before training when an epoch would have no iteration (e.g. fewer items in the data list than
    ``batch_size`` with ``drop_last``): such a run would "finish" without training and save an untrained model.

    Args:
        dataloader: the training data loader (its ``dataset`` and ``len``).
        batch_size: the configured batch size (default: the loader's).
        name: what the data is, for the message.

    Returns:
        the number of iterations per epoch.

    Raises:
        ValueError: naming the data list size, the batch size and what to change.
    """
    iterations = len(dataloader)
    if iterations > 0:
        return iterations
    dataset = getattr(dataloader, "dataset", None)
    size = len(dataset) if dataset is not None else 0
    batch_size = batch_size if batch_size is not None else getattr(dataloader, "batch_size", None)
    sampler = getattr(dataloader, "sampler", None)
    batch_sampler = getattr(dataloader, "batch_sampler", None)
    drop_last = getattr(sampler, "drop_last", getattr(batch_sampler, "drop_last", getattr(dataloader, "drop_last", None)))
    raise ValueError(
        f"the {name} data gives 0 iterations per epoch: the data list has {size} item(s) (on this rank) and "
        f"batch_size is {batch_size}" + (" with drop_last" if drop_last else "") + ". Nothing would be trained; "
        f"add data or lower 'batch_size' to at most {size}."
    )


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


def destroy_process_group() -> None:
    """
    End a distributed run: wait at a barrier for every rank, then destroy the default process group. Does nothing
    without an initialised group. The ``multi_gpu_train.json`` overlays call this from ``finalize``.

    The barrier is what makes a finished run exit 0. PyTorch (2.14) stashes a Python object in the thread-local
    state of ``backward``, and every collective launched there (DDP's gradient all-reduce) carries a copy of that
    state. The gloo worker thread drops the last reference to such a collective after it completes, and needs
    the GIL to do so. If the interpreter is already shutting down, that thread is torn down inside a destructor
    and the process aborts with "terminate called without an active exception" (SIGABRT). Measured on CPU with two
    ranks that exit a few milliseconds after their last DDP backward pass: 11 of 57 runs aborted. While this rank
    waits at the barrier, the GIL is free and those collectives are released: none of 40 runs aborted.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    dist.destroy_process_group()


def all_gather_list(items: list) -> list:
    """
    Concatenate a list of picklable Python objects from every rank, in rank order (``all_gather_object``):
    ranks may hold different numbers of items, none included. Returns ``items`` itself without an initialised
    torch.distributed group or with one process.

    MONAI's ``evenly_divisible_all_gather`` and ``string_list_all_gather`` gather tensors and strings; the rows of
    a report mix both, and ``string_list_all_gather`` turns a rank's empty list into ``[""]``. Every rank must
    call this (it is a collective).

    Args:
        items: this rank's items.

    Returns:
        the items of all ranks.
    """
    import torch.distributed as dist

    world_size = distributed_world_size()
    if world_size == 1:
        return items
    gathered: list[list] = [[] for _ in range(world_size)]
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


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
