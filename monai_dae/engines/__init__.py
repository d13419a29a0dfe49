"""Engine pieces shared by the pretext tasks."""

from monai_dae.engines.prepare_batch import PretextPrepareBatch
