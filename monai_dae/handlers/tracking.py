"""Experiment tracking helpers for the bundles' configs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from monai.handlers import MLFlowHandler

__all__ = ["track_hyper_parameters"]


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
