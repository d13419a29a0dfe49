"""
What the learning-check tools (``learning_check_btcv.py``, ``learning_check_brats.py``) share: running a bundle
config through ``ConfigWorkflow`` exactly as ``python -m monai.bundle run`` does (initialize, an empty
``check_properties()``, run), and recording the validation curve of a training run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tools.bundle_paths import resolve_bundle


def bundle_configs(name: str) -> Path:
    """
    The ``configs`` folder of a bundle of this collection.

    Args:
        name: bundle folder name, e.g. "dae_btcv_seg".

    Returns:
        ``<repo>/bundles/<name>/configs``.
    """
    return resolve_bundle(name) / "configs"


def run_workflow(
    config_file: str | list[str],
    workflow_type: str,
    configs: Path,
    before_run: Callable[[Any], None] | None = None,
    **overrides: Any,
):
    """
    Initialize a bundle workflow, fail on any property problem, then run it; the caller finalizes it.

    Args:
        config_file: config file name(s) inside ``configs`` (a list is merged in order, like the CLI's).
        workflow_type: "train" or "infer" (what ``check_properties`` verifies).
        configs: the bundle's ``configs`` folder (metadata and logging configuration are read from it).
        before_run: called with the initialized workflow before it runs (e.g. to attach recorders).
        overrides: config overrides, as ``--key value`` on the command line.

    Returns:
        the ``ConfigWorkflow`` after its run.

    Raises:
        RuntimeError: ``check_properties()`` reported optional properties referenced wrongly.
    """
    from monai.bundle import ConfigWorkflow

    files = [config_file] if isinstance(config_file, str) else list(config_file)
    workflow = ConfigWorkflow(
        config_file=[str(configs / name) for name in files],
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type=workflow_type,
        **overrides,
    )
    workflow.initialize()
    problems = workflow.check_properties()
    if problems:
        raise RuntimeError(f"check_properties of {files} in {configs}: {problems}")
    if before_run is not None:
        before_run(workflow)
    workflow.run()
    return workflow


def validation_curve(curve: list[dict]) -> Callable[[Any], None]:
    """
    A ``before_run`` callback that appends ``{"epoch": trainer epoch, **validation metrics}`` to ``curve``
    after every validation of a training workflow (``train#trainer``, ``validate#evaluator``).

    Args:
        curve: the list to fill.

    Returns:
        the callback.
    """

    def attach(workflow) -> None:
        from ignite.engine import Events

        trainer = workflow.parser.get_parsed_content("train#trainer")
        evaluator = workflow.parser.get_parsed_content("validate#evaluator")
        evaluator.add_event_handler(
            Events.EPOCH_COMPLETED,
            lambda engine: curve.append({"epoch": trainer.state.epoch, **dict(engine.state.metrics)}),
        )

    return attach
