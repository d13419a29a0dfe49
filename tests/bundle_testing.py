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

import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow

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


def _swin_stage_features(swin: torch.nn.Module, tokens: torch.Tensor) -> list[torch.Tensor]:
    """The outputs of the four Swin stages of a (v1) ``SwinTransformer`` for given patch-embedding tokens."""
    features, x = [], tokens
    for stage in (swin.layers1, swin.layers2, swin.layers3, swin.layers4):
        x = stage[0](x.contiguous())
        features.append(x)
    return features


def assert_encoder_loads_into_fine_tuning_bundles(source: torch.nn.Module, tmp_path: Path) -> dict:
    """
    Save a pretraining network's state dict as a ``model.pt`` and load it through ``pretrained_path`` into both
    fine-tuning bundles (at feature size 12): every ``swinViT.*`` tensor must load (layout ``dae_bundle``), and the
    loaded Swin stages must compute the source's features on the same patch-embedding tokens (the classifier's
    patch embedding takes 4 channels, so the stages are compared from the tokens on).

    Args:
        source: the pretraining network (``network_def`` of a pretraining overlay at feature size 12).
        tmp_path: folder for the ``model.pt``.

    Returns:
        the load report of each bundle, by bundle name.
    """
    path = tmp_path / "model.pt"
    torch.save(source.state_dict(), path)
    swin = sorted(k for k in source.state_dict() if k.startswith("swinViT."))
    tokens = torch.randn(1, 12, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = _swin_stage_features(source.swinViT.eval(), tokens)
    reports = {}
    for bundle, key in (("dae_btcv_seg", "load_pretrained"), ("dae_brats_cls", "pretrained")):
        target = ConfigParser()
        target.read_config(training_config_files(str(REPO / "bundles" / bundle)))
        target.update({"feature_size": 12, "pretrained_path": str(path)})
        loader = key if key in target.config else "load_pretrained"
        report = target.get_parsed_content(loader)
        assert report.layout == "dae_bundle" and set(swin) <= set(report.loaded), bundle
        network = target.get_parsed_content("network_def")
        weight = "swinViT.layers4.0.blocks.1.mlp.linear2.weight"
        (loaded_weight,) = [v for k, v in network.state_dict().items() if k.endswith(weight)]
        assert torch.equal(loaded_weight, source.state_dict()[weight]), bundle
        with torch.no_grad():
            loaded = _swin_stage_features(network.swinViT.eval(), tokens)
        for stage, (ours, theirs) in enumerate(zip(loaded, expected), start=1):
            torch.testing.assert_close(ours, theirs, msg=f"{bundle}: Swin stage {stage} features differ")
        reports[bundle] = report
    return reports


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
