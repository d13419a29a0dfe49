"""Networks: one Swin UNETR backbone for every pretext, the DAE, VoCo and BrainMVP specialisations and the classifier."""

from monai_dae.networks.backbone import FEATURE_NAMES, PretextSwinUNETR, ProjectionHead, use_conv_stem
from monai_dae.networks.brainmvp import BrainMVPSwinUNETR
from monai_dae.networks.classifier import SwinClassifier
from monai_dae.networks.dae_swin_unetr import DAESwinUNETR, PatchEmbeddingMasking
from monai_dae.networks.merging import LEGACY_ORDER, LegacyPatchMerging, is_merging_record
from monai_dae.networks.voco import VoCoProjector, VoCoSwinUNETR
