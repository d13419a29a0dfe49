"""Experiment tracking helpers for the bundles' configs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
import json
from typing import Any

from monai.handlers import MLFlowHandler

__all__ = ["track_hyper_parameters", "track_evaluation", "track_artifacts", "tunable_settings"]


def _is_setting(value: Any) -> bool:
    if isinstance(value, str):
        return not value.startswith(("$", "@", "%"))
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, (bool, int, float, str)) and _is_setting(v) for v in value)
    return isinstance(value, (bool, int, float)) or value is None


def tunable_settings(config: Mapping[str, Any] | str) -> dict[str, Any]:
    """
    The settings a user tunes in a bundle config: its top-level keys whose values are plain JSON values (numbers,
    strings, booleans, lists of them), not expressions, references or component definitions.

    Args:
        config: a config dict, or the path of a JSON config file (e.g. the executed config that MONAI writes
            when tracking, where command-line overrides are already applied).

    Returns:
        ``{name: value}``, in the config's order.
    """
    if isinstance(config, str):
        with open(config) as file:
            config = json.load(file)
    return {key: value for key, value in config.items() if not key.startswith("_") and _is_setting(value)}


def track_artifacts(handlers: Iterable[Any], artifacts: str | Sequence[str] | None) -> int:
    """
    Add files or folders (e.g. the run's ``figures`` folder) to the artifacts of the ``MLFlowHandler`` objects of a
    handler list: MLflow records them (a folder: every file in it, recursively) when the engine completes, so the
    figures that handlers earlier in the list wrote by then reach the run. Paths that do not exist by then are
    skipped by MLflow's handler. Without tracking the list holds no MLflow handler and nothing changes.

    Args:
        handlers: a handler list of the bundle.
        artifacts: a path or paths; None adds nothing.

    Returns:
        the number of MLflow handlers updated.
    """
    paths = [artifacts] if isinstance(artifacts, str) else list(artifacts or [])
    mlflow_handlers = [handler for handler in handlers if isinstance(handler, MLFlowHandler)]
    for handler in mlflow_handlers:
        current = [a for a in handler.artifacts if a is not None]
        handler.artifacts = (*current, *(p for p in paths if p not in current))
    return len(mlflow_handlers)


def track_hyper_parameters(
    handlers: Iterable[Any], executed_config: Mapping[str, Any] | str | bool | None, artifacts: str | Sequence[str] | None = None
) -> int:
    """
    Give a bundle's settings to the ``MLFlowHandler`` objects that ``python -m monai.bundle run --tracking mlflow``
    appends to its handler lists, so that MLflow records them as run parameters when the run starts. MONAI's
    default tracking settings create those handlers without ``experiment_param``; a bundle config calls this in
    its ``run`` section (``$monai_dae.handlers.track_hyper_parameters(@train#handlers, @save_execute_config)``):
    with tracking, MONAI has replaced ``save_execute_config`` by the path of the executed config, whose
    :py:func:`tunable_settings` are recorded. Without tracking the lists hold no such handler and nothing changes.

    Args:
        handlers: a handler list of the bundle (e.g. ``train#handlers``).
        executed_config: the executed config's path, or the settings ``{name: value}`` themselves; anything
            else (``True``, ``False``, None: tracking without a saved config) records no parameters.
        artifacts: files or folders recorded as artifacts when the run completes (:py:func:`track_artifacts`),
            e.g. the run's figures folder.

    Returns:
        the number of MLflow handlers updated.
    """
    handlers = list(handlers)
    track_artifacts(handlers, artifacts)
    mlflow_handlers = [handler for handler in handlers if isinstance(handler, MLFlowHandler)]
    if isinstance(executed_config, Mapping):
        settings = dict(executed_config)
    elif isinstance(executed_config, str) and mlflow_handlers:
        settings = tunable_settings(executed_config)
    else:
        settings = {}
    for handler in mlflow_handlers:
        handler.experiment_param = {**(handler.experiment_param or {}), **settings}
    return len(mlflow_handlers)


def track_evaluation(handlers: Iterable[Any], executed_config: Any, artifacts: str | Sequence[str] | None = None) -> int:
    """
    Make ``--tracking mlflow`` record a bundle's evaluation (the ``evaluate.json`` overlay) as one complete MLflow
    run. MONAI's default tracking settings give ``validate#evaluator`` the handler meant for validation inside a
    training run: it logs the metrics, but not the bundle's parameters nor the executed config, and it never ends
    its run, so the next evaluation in the same experiment would write into that run. This gives those handlers
    the settings of the executed config (as :py:func:`track_hyper_parameters` does), the executed config as an
    artifact, and ends the run when the evaluation completes. Call it in the overlay's ``run`` section, before the
    evaluator: ``$monai_dae.handlers.track_evaluation(@validate#handlers, @save_execute_config)``.
    Without tracking the list holds no MLflow handler and nothing changes.

    Args:
        handlers: the evaluator's handler list (``validate#handlers``), before the evaluator is built.
        executed_config: the path of the executed config that MONAI writes when tracking
            (``save_execute_config``); anything but a path (``True``, ``False``, None) logs no artifact.
        artifacts: further files or folders recorded when the evaluation completes (the figures folder).

    Returns:
        the number of MLflow handlers updated.
    """
    handlers = list(handlers)
    track_artifacts(handlers, artifacts)
    mlflow_handlers = [handler for handler in handlers if isinstance(handler, MLFlowHandler)]
    track_hyper_parameters(mlflow_handlers, executed_config)
    for handler in mlflow_handlers:
        if isinstance(executed_config, str):
            handler.artifacts = (*(a for a in handler.artifacts if a is not None), executed_config)
        handler.close_on_complete = True
    return len(mlflow_handlers)
