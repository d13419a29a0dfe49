"""Self-supervised pretraining of 3D Swin UNETR for MONAI: DAE and other pretext tasks, as transforms, networks,
losses and engine pieces.

The subpackages are imported on first use, so a bundle config needs only ``$import monai_dae`` to refer to
``monai_dae.data.load_datalist``, ``monai_dae.handlers.CheckpointSaver``, ...
"""

from __future__ import annotations

import importlib
from types import ModuleType

__version__ = "0.2.0"

_SUBMODULES = ("data", "engines", "handlers", "losses", "modalities", "networks", "progress", "settings", "transforms", "utils", "weights")


def __getattr__(name: str) -> ModuleType:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module '{__name__}' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES])
