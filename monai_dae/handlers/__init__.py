"""Handlers of the pretext tasks, resumable atomic checkpointing and experiment-tracking helpers for the bundles."""

from monai_dae.handlers.checkpoint import AtomicDiskSaver, CheckpointLoader, CheckpointSaver, resumable_training_handlers
from monai_dae.handlers.finite import NonFiniteError, RequireFiniteOutput, StopOnNonFiniteLoss
from monai_dae.handlers.handlers import (
    EpochLossTermsHandler,
    GradientClipHandler,
    LossComponentsHandler,
    ReconstructionPreviewHandler,
    SetEpochHandler,
    SetRandomStateHandler,
    loss_term_keys,
    preview_grid,
    scalars_from_output,
)
from monai_dae.handlers.tracking import track_evaluation, track_hyper_parameters, tunable_settings
