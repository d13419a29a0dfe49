"""
Checkpoint saving that survives interruptions: atomic writes, and a best-model tracker that resumes.

MONAI's ``CheckpointSaver`` writes with ``ignite.handlers.DiskSaver(atomic=False)`` straight into the target
file, and ignite removes the previous checkpoint *before* it writes the next one, so a run killed at the wrong
moment leaves a truncated file, or no checkpoint at all. Its best-model tracker (``save_key_metric``) also
starts empty in a resumed run, so the first validation after a resume overwrites a better ``model.pt``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointLoader as MonaiCheckpointLoader
from monai.handlers import CheckpointSaver as MonaiCheckpointSaver

from monai_dae.utils import is_secondary_rank, save_atomically

__all__ = ["AtomicDiskSaver", "CheckpointLoader", "CheckpointSaver", "resumable_training_handlers"]


class AtomicDiskSaver(BaseSaveHandler):
    """
    Save handler for ``ignite.handlers.Checkpoint`` that writes atomically: ``torch.save`` to a hidden temporary
    file in the target folder, ``fsync``, then ``os.replace`` over the target, so a reader (or a resumed run)
    sees the previous complete file or the new complete file, never a partial one. Files that ``Checkpoint``
    asks to remove are deleted only after the next checkpoint is safely on disk, so there is always one to
    resume from. Only rank 0 of an initialised process group writes; other ranks do nothing.

    Args:
        dirname: folder of the checkpoints (created when missing).
        filename: fixed file name for every checkpoint (e.g. ``model.pt``); None keeps the names ``Checkpoint``
            gives (e.g. ``checkpoint_epoch=3.pt``).
    """

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        self.dirname = str(dirname)
        self.filename = filename
        self._pending_removal: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        """
        Write ``checkpoint`` to ``dirname/filename`` (or the fixed file name), then remove the files replaced.

        Args:
            checkpoint: the objects' state dicts, as ``Checkpoint`` gathers them.
            filename: the name ``Checkpoint`` chose; ignored when a fixed ``filename`` was given.
            metadata: unused.
        """
        if is_secondary_rank():
            return
        name = self.filename or filename
        save_atomically(checkpoint, os.path.join(self.dirname, name))
        for old_name in self._pending_removal:
            old_path = os.path.join(self.dirname, old_name)
            if old_name != name and os.path.exists(old_path):
                os.remove(old_path)
        self._pending_removal = []

    def remove(self, filename: str) -> None:
        """
        Schedule a replaced checkpoint for deletion after the next successful write (a fixed file name is
        simply overwritten by that write).

        Args:
            filename: the name ``Checkpoint`` gave the file.
        """
        if self.filename is None:
            self._pending_removal.append(filename)


class CheckpointSaver(MonaiCheckpointSaver):
    """
    ``monai.handlers.CheckpointSaver`` with the same arguments, that (1) writes every checkpoint through
    :py:class:`AtomicDiskSaver` (atomic, previous file kept until the new one is written, rank 0 only, so the
    handler may be attached on every rank of a DDP run), and (2) has ``state_dict()`` / ``load_state_dict()``
    of its best-model tracker: put the saver of the best model into the ``save_dict`` and ``load_dict`` of
    the resumable training checkpoint, and a resumed run keeps the best score, so a worse model does not
    overwrite ``model.pt``, while ``model.pt`` itself stays a plain state dict.
    """

    def __init__(self, save_dir: str, save_dict: dict, **kwargs: Any) -> None:
        super().__init__(save_dir=save_dir, save_dict=save_dict, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = AtomicDiskSaver(self.save_dir, checkpoint.save_handler.filename)

    def state_dict(self) -> dict:
        """
        Returns:
            the best-model tracker's state (``{"_saved": [(score, file name), ...]}``, scores as Python floats
            so that ``torch.load(weights_only=True)`` reads them back even when a metric returned a NumPy
            scalar), empty when the saver does not track a key metric.
        """
        if self._key_metric_checkpoint is None:
            return {}
        state = self._key_metric_checkpoint.state_dict()
        return {key: [(float(score), str(name)) for score, name in items] for key, items in state.items()}

    def exception_raised(self, engine: Any, e: Exception) -> None:
        """
        Save the final checkpoint when the run stops on an exception (an interrupted run can resume), except
        for a non-finite loss or prediction (:py:class:`monai_dae.handlers.NonFiniteError`): the network is
        then not worth resuming from, and saving it would make ``--resume`` continue from a broken state.

        Args:
            engine: the engine that raised.
            e: the exception.
        """
        from monai_dae.handlers.finite import NonFiniteError

        if isinstance(e, NonFiniteError):
            self.logger.error(f"not saving a final checkpoint in '{self.save_dir}': {e}")
            raise e
        super().exception_raised(engine, e)


class CheckpointLoader(MonaiCheckpointLoader):
    """
    ``monai.handlers.CheckpointLoader`` (same arguments; it reads with ``torch.load(weights_only=True)``) whose
    errors name the file: a missing file, a corrupt or truncated one, and a pickle that needs more than tensors
    (refused: nothing in it is executed) each stop the run with the path and what to do.
    """

    def __call__(self, engine: Any) -> None:
        from monai_dae.utils import CheckpointError, verify_checkpoint

        path = str(self.load_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint '{path}' not found; train first, or set the path to a checkpoint.")
        try:
            super().__call__(engine)
        except Exception as error:
            try:
                verify_checkpoint(path)  # names the problem when the file itself is the cause
            except CheckpointError as problem:
                raise problem from error
            raise RuntimeError(f"cannot load checkpoint '{path}' into {sorted(self.load_dict)}: {error}") from error


def resumable_training_handlers(
    checkpoint_dir: str, resume_from: str, state: Mapping[str, Any], map_location: Any = "cpu"
) -> list[Any]:
    """
    The state handlers of every training bundle, in one place: a :py:class:`CheckpointLoader` that restores
    ``state`` from ``resume_from`` (only when it is set) and a :py:class:`CheckpointSaver` that writes ``state``
    atomically to ``checkpoint_dir`` after every epoch (the last one kept) and as ``checkpoint_final.pt`` at the
    end. Attach them after the trainer is built (the ``run`` section of the bundles).

    Args:
        checkpoint_dir: folder of the resumable checkpoints.
        resume_from: checkpoint to resume from, or "" (see :py:func:`monai_dae.utils.resumable_checkpoint`).
        state: what a checkpoint holds, e.g. ``{"model": ..., "optimizer": ..., "lr_scheduler": ...,
            "trainer": ..., "best_model_saver": ...}``.
        map_location: device the checkpoint is read onto.

    Returns:
        the handlers: ``[loader, saver]`` when resuming, else ``[saver]``.
    """
    saver = CheckpointSaver(
        save_dir=checkpoint_dir, save_dict=dict(state), save_interval=1, n_saved=1, save_final=True,
        final_filename="checkpoint_final.pt",
    )
    if not resume_from:
        return [saver]
    return [CheckpointLoader(load_path=resume_from, load_dict=dict(state), map_location=map_location), saver]
