"""Handlers of the DAE pretext, resumable atomic checkpointing and experiment-tracking helpers for the bundles."""

from monai_dae.handlers.checkpoint import AtomicDiskSaver, CheckpointLoader, CheckpointSaver
from monai_dae.handlers.finite import NonFiniteError, RequireFiniteOutput, StopOnNonFiniteLoss
from monai_dae.handlers.handlers import (
    GradientClipHandler,
    LossComponentsHandler,
    ReconstructionPreviewHandler,
    SetEpochHandler,
    SetRandomStateHandler,
    preview_grid,
    scalars_from_output,
)
from monai_dae.handlers.tracking import track_evaluation, track_hyper_parameters
