"""
Stop a run on non-finite numbers instead of training on, or reporting, garbage.

Ignite's ``TerminateOnNan`` only *terminates* the engine: the run then ends normally (exit code 0, final
checkpoint written), and MONAI's metric reductions skip NaN values, so a validation of NaN predictions
reports an L1 of 0.0 (the best score ever) and the best-model saver writes the broken network to
``model.pt``. These handlers raise :py:class:`NonFiniteError` instead: the run exits non-zero, with the
iteration and the values in the message, before anything is saved.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents

from monai_dae.handlers.handlers import loss_term_keys

__all__ = ["NonFiniteError", "StopOnNonFiniteLoss", "RequireFiniteOutput"]


class NonFiniteError(FloatingPointError):
    """A loss or a prediction is NaN or infinite; checkpoint savers do not save on it."""


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().reshape(-1)[0]) if value.numel() == 1 else None
    return float(value) if isinstance(value, (int, float)) else None


class StopOnNonFiniteLoss:
    """
    Raise :py:class:`NonFiniteError` as soon as a trainer's loss (or one of its named terms) is NaN or infinite:
    at ``IterationEvents.LOSS_COMPLETED``, before the backward pass and the optimizer step, so the weights are
    those of the last finite iteration and no checkpoint or best model is written from the broken step.
    Attach it after :py:class:`monai_dae.handlers.LossComponentsHandler` so the terms are in the output.

    Args:
        keys: the output entries to check (absent ones are skipped), e.g. ``["loss", "loss_l1", "loss_cmcl"]``;
            None checks the loss and all its named terms (:py:func:`monai_dae.handlers.loss_term_keys`).
    """

    def __init__(self, keys: Sequence[str] | None = None) -> None:
        self.keys = [keys] if isinstance(keys, str) else None if keys is None else list(keys)

    def attach(self, engine: Engine) -> None:
        """
        Args:
            engine: a MONAI ``SupervisedTrainer``.
        """
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        item = output[0] if isinstance(output, list) else output
        keys = loss_term_keys(output) if self.keys is None else self.keys
        terms = {key: _scalar(item[key]) for key in keys if key in item}
        terms = {key: value for key, value in terms.items() if value is not None}
        if all(math.isfinite(value) for value in terms.values()):
            return
        values = ", ".join(f"{key}={value}" for key, value in terms.items())
        raise NonFiniteError(
            f"non-finite training loss at epoch {engine.state.epoch}, iteration {engine.state.iteration}: {values}. "
            "The run stops before this step changes the weights; checkpoints and the best model were not overwritten. "
            "Lower 'learning_rate' (or check the input data), then resume from the last checkpoint with "
            "'--resume True'."
        )


class RequireFiniteOutput:
    """
    Raise :py:class:`NonFiniteError` when an evaluator's prediction holds a NaN or infinite value, naming the
    iteration and the input files of the batch: metrics on such predictions are not valid numbers (MONAI's
    reductions skip NaN and would report the rest, or 0.0), so the evaluation fails instead of reporting them,
    and the best-model saver of a training run is never reached.

    Args:
        keys: output entries to check (absent ones are skipped).
    """

    def __init__(self, keys: Sequence[str] = ("pred",)) -> None:
        self.keys = [keys] if isinstance(keys, str) else list(keys)

    def attach(self, engine: Engine) -> None:
        """
        Args:
            engine: a MONAI evaluator.
        """
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        items = output if isinstance(output, list) else [output]
        for key in self.keys:
            for item in items:
                value = item.get(key) if isinstance(item, dict) else None
                for tensor in _tensors(value):
                    if torch.isfinite(tensor).all():
                        continue
                    bad = int((~torch.isfinite(tensor)).sum())
                    raise NonFiniteError(
                        f"non-finite '{key}' at evaluation iteration {engine.state.iteration} ({bad} of "
                        f"{tensor.numel()} values; input {_files(engine.state.batch)}): metrics computed on it would "
                        "not be valid numbers. Check the model weights (a training run that diverged) and the input."
                    )


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors of a prediction: a tensor, or those of a tuple, list or dict of them (e.g. VoCo's embeddings)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [tensor for item in value for tensor in _tensors(item)]
    return []


def _files(batch: Any) -> list[str]:
    batch = batch[0] if isinstance(batch, list) and batch else batch
    if not isinstance(batch, dict):
        return []
    image = batch.get("image")
    meta = getattr(image, "meta", None) or batch.get("image_meta_dict") or {}
    names = meta.get("filename_or_obj", []) if isinstance(meta, dict) else []
    return [str(n) for n in ([names] if isinstance(names, str) else names)]
