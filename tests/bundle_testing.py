"""
What the bundle and tool tests share: the repository root, the pretraining configs, the command-line form of
bundle overrides, a ``python -m monai.bundle run training`` subprocess and its environment, the command line and
environment of a ``python -m tools.<name>`` one, the tiny ``dae_btcv_seg`` settings, and the probe that a
resumed training uses to see where it started and which best score it brought back.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ignite.engine import Events
from monai.bundle import ConfigWorkflow

from monai_dae.utils import training_config_files

REPO = Path(__file__).resolve().parents[1]
PRETRAIN_CONFIGS = REPO / "bundles" / "dae_pretrain" / "configs"
DAE_TRAIN = training_config_files(str(PRETRAIN_CONFIGS.parent), "dae")
"""dae_pretrain's training configs for DAE: the base pretraining config and the ``dae.json`` overlay."""


def config_arg(*files) -> str:
    """The ``--config_file`` argument of ``python -m monai.bundle`` for several files merged in order."""
    return "[" + ",".join(f"'{f}'" for f in files) + "]"

# dae_btcv_seg at test size; the crop size is each test's (the Swin UNETR decoder needs more than a 1^3 bottleneck)
BTCV_TINY = {
    "feature_size": 12,
    "max_epochs": 1,
    "val_interval": 1,
    "num_samples": 1,
    "num_workers": 0,
    "cache_rate": 0.0,
    "sw_batch_size": 1,
    "progress_bar": False,
}


def cli_overrides(**values) -> list[str]:
    """
    Bundle overrides as ``python -m monai.bundle`` (fire) parses them: Python literals, so that a boolean is
    ``False`` (a lowercase ``false`` would arrive as the string "false", which is true).

    Args:
        values: top-level config keys and their values.

    Returns:
        the ``--key=value`` arguments.
    """
    return [f"--{key}={value if isinstance(value, str) else repr(value)}" for key, value in values.items()]


def bundle_training(config_file: str, **overrides) -> subprocess.CompletedProcess:
    """
    Run ``python -m monai.bundle run training`` as a user would, from the repository root.

    Args:
        config_file: the ``--config_file`` argument (one path, or :py:func:`config_arg` of several).
        overrides: top-level config keys and their values (see :py:func:`cli_overrides`).

    Returns:
        the finished process, with its output captured as text.
    """
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config_file,
               *cli_overrides(**overrides)]
    return subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=900)


def cli_env() -> dict[str, str]:
    """
    Returns:
        the environment of a bundle subprocess: this checkout importable, one OpenMP thread per process.
    """
    return tool_env(OMP_NUM_THREADS="1")


def tool_env(**variables: str) -> dict[str, str]:
    """
    The environment of a subprocess that runs a tool or a bundle: this checkout on ``PYTHONPATH``, so that
    ``python -m tools.<name>`` and ``monai_dae`` come from the checkout under test, whatever the working folder.

    Args:
        variables: further environment variables.

    Returns:
        the environment.
    """
    return {**os.environ, "PYTHONPATH": str(REPO), **variables}


def tool_command(name: str, *args: str) -> list[str]:
    """
    Args:
        name: a module of ``tools/`` (``sample_data``, ``check_data``, ...).
        args: its command-line arguments.

    Returns:
        ``python -m tools.<name> args`` with this interpreter (run it with :py:func:`tool_env`).
    """
    return [sys.executable, "-m", f"tools.{name}", *args]


def record_epoch_starts(workflow: ConfigWorkflow) -> tuple[list[int], list[dict]]:
    """
    Watch an initialised training workflow: at every epoch start, the epoch number and the state of
    ``validate#best_model_saver`` (the best scores so far) are appended to the returned lists.

    Args:
        workflow: a training ``ConfigWorkflow`` after ``initialize()``.

    Returns:
        the epochs started and the best-model tracker's state at each of those starts.
    """
    trainer = workflow.parser.get_parsed_content("train#trainer")
    best_model_saver = workflow.parser.get_parsed_content("validate#best_model_saver")
    started, best_at_start = [], []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: started.append(engine.state.epoch))
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda _: best_at_start.append(best_model_saver.state_dict()))
    return started, best_at_start


def assert_png(path, min_size: tuple[int, int] = (300, 200)) -> tuple[int, int]:
    """
    Assert that ``path`` is a complete PNG figure of at least ``min_size`` pixels (width, height).

    Returns:
        its size in pixels (width, height).
    """
    from PIL import Image

    assert os.path.isfile(path), f"no figure {path}"
    with Image.open(path) as image:
        assert image.format == "PNG", path
        image.load()
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1], (path, image.size)
        return image.size
