"""Transforms of the pretext tasks: DAE's low-level disruptions and local masking, VoCo's crops, BrainMVP's masks, and
modality handling."""

from monai_dae.transforms.array import (
    LocalMasking,
    RandAdditiveGaussianNoise,
    RandDAEDisruption,
    RandLowResolution,
    device_generator,
    simulate_low_resolution,
)
from monai_dae.transforms.batched import BatchedPretextd
from monai_dae.transforms.brainmvp import (
    RandModalityBlockMaskd,
    RandModalityBlockMaskD,
    RandModalityBlockMaskDict,
    RandTemplateWindowCropd,
    block_masks,
)
from monai_dae.transforms.dictionary import (
    RandAdditiveGaussianNoised,
    RandAdditiveGaussianNoiseD,
    RandDAEDisruptiond,
    RandDAEDisruptionD,
    RandLowResolutiond,
    RandLowResolutionD,
)
from monai_dae.transforms.loading import LoadImageNamed
from monai_dae.transforms.modality import (
    DEFAULT_MODALITIES,
    MODALITY_ALIASES,
    ModalityLabeld,
    NormalizeByModalityd,
    canonical_modality,
    infer_modality,
)
from monai_dae.transforms.voco import RandVoCoCrops, RandVoCoCropsd, RandVoCoCropsD, RandVoCoCropsDict, overlap_labels
