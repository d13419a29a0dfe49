"""Networks of the DAE pretext."""

from monai_dae.networks.dae_swin_unetr import BACKBONE_EXCLUDED_PREFIXES, DAESwinUNETR, use_conv_stem
from monai_dae.networks.classifier import SwinClassifier
from monai_dae.networks.merging import LEGACY_ORDER, LegacyPatchMerging, is_merging_record
