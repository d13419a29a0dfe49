"""Engine pieces of the DAE pretext."""

from monai_dae.engines.prepare_batch import DAEPrepareBatch
