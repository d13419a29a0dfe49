"""Experiment tracking helpers for the bundles' configs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from monai.handlers import MLFlowHandler

__all__ = ["track_hyper_parameters", "track_evaluation"]


def track_hyper_parameters(handlers: Iterable[Any], hyper_parameters: Mapping[str, Any]) -> int:
    """
    Give a bundle's hyper-parameters to the ``MLFlowHandler`` objects that ``python -m monai.bundle run
    --tracking mlflow`` appends to its handler lists, so that MLflow records them as run parameters when the
    run starts. MONAI's default tracking settings create those handlers without ``experiment_param``; a
    bundle config calls this in its ``run`` section (``$monai_dae.handlers.track_hyper_parameters(
    @train#handlers, @hyper_parameters)``). Without tracking the lists hold no such handler and nothing changes.

    Args:
        handlers: a handler list of the bundle (e.g. ``train#handlers``).
        hyper_parameters: ``{name: value}`` to record; non-string values are logged as their ``str``.

    Returns:
        the number of MLflow handlers updated.
    """
    updated = 0
    for handler in handlers:
        if isinstance(handler, MLFlowHandler):
            handler.experiment_param = {**(handler.experiment_param or {}), **hyper_parameters}
            updated += 1
    return updated


def track_evaluation(handlers: Iterable[Any], hyper_parameters: Mapping[str, Any], executed_config: Any) -> int:
    """
    Make ``--tracking mlflow`` record a bundle's evaluation (the ``evaluate.json`` overlay) as one complete MLflow
    run. MONAI's default tracking settings give ``validate#evaluator`` the handler meant for validation inside a
    training run: it logs the metrics, but not the bundle's parameters nor the executed config, and it never ends
    its run, so the next evaluation in the same experiment would write into that run. This gives those handlers
    the hyper-parameters (as :py:func:`track_hyper_parameters` does), the executed config as an artifact, and
    ends the run when the evaluation completes. Call it in the overlay's ``run`` section, before the evaluator:
    ``$monai_dae.handlers.track_evaluation(@validate#handlers, @hyper_parameters, @save_execute_config)``.
    Without tracking the list holds no MLflow handler and nothing changes.

    Args:
        handlers: the evaluator's handler list (``validate#handlers``), before the evaluator is built.
        hyper_parameters: ``{name: value}`` to record as run parameters.
        executed_config: the path of the executed config that MONAI writes when tracking
            (``save_execute_config``); anything but a path (``True``, ``False``, None) logs no artifact.

    Returns:
        the number of MLflow handlers updated.
    """
    mlflow_handlers = [handler for handler in handlers if isinstance(handler, MLFlowHandler)]
    track_hyper_parameters(mlflow_handlers, hyper_parameters)
    for handler in mlflow_handlers:
        if isinstance(executed_config, str):
            handler.artifacts = (*(a for a in handler.artifacts if a is not None), executed_config)
        handler.close_on_complete = True
    return len(mlflow_handlers)
