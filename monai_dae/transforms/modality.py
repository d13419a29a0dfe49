"""Modality handling: modality names and labels, and intensity normalisation by modality."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, NormalizeIntensity, ScaleIntensityRange

from monai_dae.modalities import DEFAULT_MODALITIES, MODALITY_ALIASES, canonical_modality, infer_modality

__all__ = [
    "DEFAULT_MODALITIES",
    "MODALITY_ALIASES",
    "canonical_modality",
    "infer_modality",
    "ModalityLabeld",
    "NormalizeByModalityd",
]



def _source_name(value: Any) -> str:
    if isinstance(value, MetaTensor):
        return str(value.meta.get("filename_or_obj", "<in-memory image>"))
    if isinstance(value, (str, os.PathLike)):
        return str(value)
    return "<in-memory image>"


class ModalityLabeld(MapTransform):
    """
    Turn the data list's modality name into an integer label (its index in ``modalities``), taking the name
    from ``keys`` (the ``modality`` field), or inferring it from the image file name only when the field is
    absent. The canonical name is written back to the modality field.

    Args:
        keys: the key of the modality name (one key).
        image_key: the image key, whose file name is used for inference and for error messages.
        label_key: key the integer label is written to.
        modalities: known modality names, in label order; extend it for other modalities.
        infer_from_filename: allow inference from the file name when the modality field is absent.
    """

    def __init__(
        self,
        keys: KeysCollection = "modality",
        image_key: str = "image",
        label_key: str = "modality_label",
        modalities: Sequence[str] = DEFAULT_MODALITIES,
        infer_from_filename: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        if len(self.keys) != 1:
            raise ValueError(f"ModalityLabeld takes one modality key, got {self.keys}.")
        self.image_key = image_key
        self.label_key = label_key
        self.modalities = tuple(canonical_modality(m) for m in modalities)
        self.infer_from_filename = infer_from_filename

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        key = self.keys[0]
        source = _source_name(d.get(self.image_key))
        if key in d and d[key] is not None:
            name = canonical_modality(str(d[key]))
        elif self.infer_from_filename:
            name = infer_modality(source, self.modalities)
        else:
            raise KeyError(f"data list entry of '{source}' has no '{key}' field.")
        if name not in self.modalities:
            raise ValueError(f"unknown modality '{d[key]}' for '{source}'; known modalities: {list(self.modalities)}.")
        d[key] = name
        d[self.label_key] = np.int64(self.modalities.index(name))
        return d


class NormalizeByModalityd(MapTransform):
    """
    Normalise intensities by modality, as in the DAE pretraining: CT is windowed (default -1000..1000 HU) and
    scaled to [0, 1] with clipping; MRI is z-scored over its non-zero voxels, channel by channel.

    Args:
        keys: image keys to normalise.
        modality_key: key of the canonical modality name (see :py:class:`ModalityLabeld`).
        ct_modalities: modality names treated as CT; every other name is treated as MRI.
        ct_window: (low, high) CT window in HU.
        allow_missing_keys: don't raise for a missing image key.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        modality_key: str = "modality",
        ct_modalities: Sequence[str] = ("ct",),
        ct_window: Sequence[float] = (-1000.0, 1000.0),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.modality_key = modality_key
        self.ct_modalities = {canonical_modality(m) for m in ct_modalities}
        self.ct_transform = ScaleIntensityRange(a_min=ct_window[0], a_max=ct_window[1], b_min=0.0, b_max=1.0, clip=True)
        self.mri_transform = NormalizeIntensity(nonzero=True, channel_wise=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.modality_key not in d:
            raise KeyError(f"NormalizeByModalityd needs the '{self.modality_key}' field (apply ModalityLabeld first).")
        is_ct = canonical_modality(str(d[self.modality_key])) in self.ct_modalities
        transform = self.ct_transform if is_ct else self.mri_transform
        for key in self.key_iterator(d):
            d[key] = transform(d[key])
        return d
