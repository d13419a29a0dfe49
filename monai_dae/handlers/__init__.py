"""Handlers of the DAE pretext."""

from monai_dae.handlers.handlers import (
    LossComponentsHandler,
    ReconstructionPreviewHandler,
    SetRandomStateHandler,
    preview_grid,
    scalars_from_output,
)
