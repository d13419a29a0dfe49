"""Handlers of the pretext tasks, resumable atomic checkpointing, figures and experiment-tracking helpers for the bundles."""

from monai_dae.handlers.checkpoint import AtomicDiskSaver, CheckpointLoader, CheckpointSaver, resumable_training_handlers
from monai_dae.handlers.figures import FigureWriter, LearningCurvesHandler, SegmentationFiguresHandler
from monai_dae.handlers.finite import NonFiniteError, RequireFiniteOutput, StopOnNonFiniteLoss
from monai_dae.handlers.handlers import (
    EpochLossTermsHandler,
    GradientClipHandler,
    LossComponentsHandler,
    ReconstructionPreviewHandler,
    SetEpochHandler,
    SetRandomStateHandler,
    loss_term_keys,
    scalars_from_output,
)
from monai_dae.handlers.tracking import track_artifacts, track_evaluation, track_hyper_parameters, tunable_settings
