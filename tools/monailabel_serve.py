"""
Serve the ``dae_btcv_seg`` bundle with MONAI Label 0.8.5, offline, from its own virtual environment.

MONAI Label 0.8.5 pins clash with the main environment (``pydicom<3``, ``pynetdicom<3``,
``dicomweb-client<0.60``, numpy 1.x), so it lives in ``.venv-monailabel``. Three commands:

- ``install``: creates the environment and installs ``tools/monailabel_requirements.txt`` (every package,
  exact versions, ``pip --no-deps``) and ``monai_dae`` from this checkout (editable), so that the bundle's
  ``$import monai_dae`` works in the server.
- ``setup_app``: copies MONAI Label's ``monaibundle`` sample app (it ships inside the monailabel wheel, so
  ``monailabel apps --download`` needs no network) and places a copy of the bundle under the app's
  ``model/`` folder with ``models/model.pt``. MONAI Label builds the network from the bundle's own
  ``configs/inference.json`` and takes no config overrides, so ``--overrides`` (e.g. the feature size of
  the weights) are written into that copy's ``inference.json`` and ``train.json``; the weights are then
  loaded into the network built from the adjusted config (``strict=True``), so a mismatch fails here with
  the file named instead of at the first request.
- ``serve``: starts the server bound to 127.0.0.1 with ``--conf zoo_source local --conf sam2 false`` (no
  model zoo or SAM2 download), sessions under the app folder and MLflow tracking of MONAI Label training
  in a SQLite file there (MLflow 3.13+ rejects the default file store).

Examples::

    python -m tools.monailabel_serve install
    python -m tools.monailabel_serve setup_app --app_dir runs/monailabel/app \\
        --model runs/btcv/models/model.pt --overrides '{"feature_size": 12}'
    python -m tools.monailabel_serve serve --app_dir runs/monailabel/app \\
        --studies runs/monailabel/studies --port 8000
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import fire
import torch
from monai.bundle import ConfigParser

from monai_dae.utils import bundle_dir

REPO_ROOT = Path(__file__).resolve().parents[1]

VENV = REPO_ROOT / ".venv-monailabel"
REQUIREMENTS = REPO_ROOT / "tools" / "monailabel_requirements.txt"
BUNDLE = "dae_btcv_seg"
INSTALLED_MARKER = ".installed"
"""File written into the environment once ``install`` has completed; the tests look for it."""
SERVED_CONFIGS = ("inference.json", "train.json")
"""The bundle configs MONAI Label reads (infer and train tasks); overrides go into both."""


def _venv_python(venv: str | Path) -> Path:
    """
    The Python interpreter of a virtual environment.

    Args:
        venv: environment folder.

    Returns:
        the path of ``bin/python`` inside it.
    """
    return Path(venv).resolve() / "bin" / "python"


def _run(command: list[str]) -> None:
    """
    Run a command, echoing it, and fail with the command named when it fails.

    Args:
        command: program and arguments.

    Raises:
        RuntimeError: when the command exits with a non-zero status.
    """
    print("+", " ".join(command), flush=True)
    status = subprocess.run(command).returncode
    if status != 0:
        raise RuntimeError(f"'{' '.join(command)}' failed with exit status {status}.")


def install(venv: str = str(VENV), python: str = "python3.11", requirements: str = str(REQUIREMENTS)) -> str:
    """
    Create (or complete) the MONAI Label environment and install the pinned packages and ``monai_dae``.

    Args:
        venv: environment folder to create.
        python: Python 3.11 interpreter that creates the environment.
        requirements: the pinned package list (every package, installed without dependency resolution).

    Returns:
        the environment's Python interpreter.

    Raises:
        FileNotFoundError: when ``python`` or ``requirements`` does not exist.
        RuntimeError: when a step fails.
    """
    if shutil.which(python) is None:
        raise FileNotFoundError(f"Python interpreter '{python}' not found: MONAI Label 0.8.5 needs Python 3.11.")
    if not Path(requirements).is_file():
        raise FileNotFoundError(f"Requirements file '{requirements}' not found.")
    interpreter = _venv_python(venv)
    marker = Path(venv) / INSTALLED_MARKER
    marker.unlink(missing_ok=True)
    if not interpreter.exists():
        _run([python, "-m", "venv", str(venv)])
    pip = [str(interpreter), "-m", "pip", "install", "--disable-pip-version-check", "--no-deps"]
    _run([*pip, "-r", str(requirements)])
    _run([*pip, "-e", str(REPO_ROOT)])
    smoke_test = (
        "import itk, monai, monai_dae, monailabel, torch, torchvision; "
        "print('monailabel', monailabel.__version__, '| monai', monai.__version__, '| torch', torch.__version__)"
    )
    _run([str(interpreter), "-c", smoke_test])
    marker.write_text(f"{Path(requirements).resolve()}\n")
    return str(interpreter)


def _apply_overrides(config_file: Path, overrides: dict[str, Any]) -> None:
    """
    Write config overrides into a bundle config file, as ``--key value`` would at ``monai.bundle run``.

    Args:
        config_file: a JSON bundle config, rewritten in place.
        overrides: config ids (nested ids joined with ``#``) and their values.
    """
    parser = ConfigParser()
    parser.read_config(str(config_file))
    for key, value in overrides.items():
        parser[key] = value
    ConfigParser.export_config_file(parser.get(), str(config_file), indent=4)


def _check_weights(bundle_dir: Path) -> None:
    """
    Load ``models/model.pt`` into the network that MONAI Label will build from the bundle's inference config.

    Args:
        bundle_dir: the served bundle copy.

    Raises:
        ValueError: when the weights do not fit the network (wrong feature size, another bundle's file, ...).
    """
    model_file = bundle_dir / "models" / "model.pt"
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.json"))
    network = parser.get_parsed_content("network_def")
    state = torch.load(model_file, map_location="cpu", weights_only=True)
    state = state.get("model", state)  # MONAI Label's convention: a state dict or {"model": state dict}
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"{model_file} does not fit the network of {bundle_dir / 'configs' / 'inference.json'} "
            f"(pass the settings it was trained with as --overrides, e.g. '{{\"feature_size\": 12}}'): {error}"
        ) from error


def setup_app(
    app_dir: str,
    model: str | None = None,
    overrides: dict[str, Any] | None = None,
    bundle: str = BUNDLE,
    venv: str = str(VENV),
) -> str:
    """
    Create a MONAI Label app serving the bundle: the ``monaibundle`` sample app plus the bundle under ``model/``.

    An existing app folder is refreshed (sample app and bundle copy replaced); its other contents are kept.

    Args:
        app_dir: app folder to write.
        model: weights to serve (state dict or ``{"model": state dict}``); default: the bundle's own
            ``models/model.pt``.
        overrides: bundle config ids and values written into the served copy's ``inference.json`` and
            ``train.json``, e.g. ``{"feature_size": 12}``.
        bundle: the bundle to serve: a bundle folder, or the name of a bundle of this checkout.
        venv: the MONAI Label environment (made by ``install``).

    Returns:
        the served bundle folder.

    Raises:
        FileNotFoundError: when the environment, bundle or weights are missing.
        ValueError: when the weights do not fit the (overridden) network.
    """
    interpreter = _venv_python(venv)
    if not (Path(venv) / INSTALLED_MARKER).is_file():
        raise FileNotFoundError(f"MONAI Label environment '{venv}' is not installed: run "
                                f"'python -m tools.monailabel_serve install --venv {venv}' first.")
    bundle_path = Path(bundle_dir(bundle, required="configs/inference.json"))
    model_file = Path(model) if model else bundle_path / "models" / "model.pt"
    if not model_file.is_file():
        raise FileNotFoundError(f"Model weights '{model_file}' not found: train the bundle or pass --model.")
    app = Path(app_dir).resolve()
    served = app / "model" / bundle_path.name
    shutil.rmtree(served, ignore_errors=True)
    shutil.copytree(bundle_path, served, ignore=shutil.ignore_patterns("models", "eval", "runs", "__pycache__"))
    (served / "models").mkdir()
    shutil.copyfile(model_file, served / "models" / "model.pt")
    for name in SERVED_CONFIGS:
        if overrides and (served / "configs" / name).is_file():
            _apply_overrides(served / "configs" / name, overrides)
    try:
        _check_weights(served)
    except ValueError:
        shutil.rmtree(served)
        raise

    # the sample app is copied out of the installed wheel (no network); the command refuses to overwrite
    shutil.rmtree(app / "monaibundle", ignore_errors=True)
    _run([str(interpreter), "-m", "monailabel.main", "apps", "--download", "--name", "monaibundle",
          "--output", str(app)])
    for item in (app / "monaibundle").iterdir():
        target = app / item.name
        if target.is_dir():
            shutil.rmtree(target)
        shutil.move(str(item), str(target))
    (app / "monaibundle").rmdir()
    print(f"MONAI Label app: {app}\nserved bundle:  {served}", flush=True)
    return str(served)


def serve(
    app_dir: str,
    studies: str,
    port: int = 8000,
    host: str = "127.0.0.1",
    bundle_name: str = BUNDLE,
    venv: str = str(VENV),
) -> None:
    """
    Start the MONAI Label server on an app made by ``setup_app``; replaces this process (Ctrl+C stops it).

    Args:
        app_dir: the app folder.
        studies: folder of images (NIfTI) that the server offers for labelling; created if missing.
        port: TCP port.
        host: address to bind; keep 127.0.0.1 unless the machine's network is trusted.
        bundle_name: name of the served bundle folder under ``<app_dir>/model``.
        venv: the MONAI Label environment.

    Raises:
        FileNotFoundError: when the environment or the served bundle is missing.
    """
    interpreter = _venv_python(venv)
    app = Path(app_dir).resolve()
    if not interpreter.exists():
        raise FileNotFoundError(f"MONAI Label environment '{venv}' not found: run "
                                "'python -m tools.monailabel_serve install' first.")
    if not (app / "model" / bundle_name / "models" / "model.pt").is_file():
        raise FileNotFoundError(f"No bundle '{bundle_name}' with models/model.pt under '{app / 'model'}': "
                                "run 'python -m tools.monailabel_serve setup_app' first.")
    Path(studies).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["MONAI_LABEL_SESSION_PATH"] = str(app / "sessions")
    env["MONAI_LABEL_TRACKING_URI"] = f"sqlite:///{app / 'mlruns.db'}"
    command = [
        str(interpreter), "-m", "monailabel.main", "start_server",
        "--app", str(app), "--studies", str(Path(studies).resolve()), "--host", host, "--port", str(port),
        "--conf", "models", bundle_name, "--conf", "zoo_source", "local", "--conf", "sam2", "false",
    ]  # fmt: skip
    print("+", " ".join(command), flush=True)
    os.execve(str(interpreter), command, env)


if __name__ == "__main__":
    fire.Fire({"install": install, "setup_app": setup_app, "serve": serve}, serialize=lambda result: None)
