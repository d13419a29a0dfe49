"""Dictionary wrappers of the DAE disruptions (:py:mod:`monai_dae.transforms.array`)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

from monai_dae.transforms.array import RandAdditiveGaussianNoise, RandDAEDisruption, RandLowResolution

__all__ = [
    "RandAdditiveGaussianNoised",
    "RandLowResolutiond",
    "RandDAEDisruptiond",
    "RandAdditiveGaussianNoiseD",
    "RandLowResolutionD",
    "RandDAEDisruptionD",
]


class _RandArrayWrapperd(Randomizable, MapTransform):
    """A thin dictionary wrapper owning one random array transform, applied to every key with its own draw."""

    def __init__(self, keys: KeysCollection, transform: Randomizable, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.transform = transform

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.transform.set_random_state(state=self.R)
        return self

    def randomize(self, data: Any = None) -> None:
        """Random values are drawn by the array transform for each key."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class RandAdditiveGaussianNoised(_RandArrayWrapperd):
    """
    Dictionary version of :py:class:`monai_dae.transforms.RandAdditiveGaussianNoise`.

    Args:
        keys: keys of the images to disrupt.
        prob: probability to disrupt each sample.
        variance: variance of the noise.
        mean: mean of the noise.
        batched: the values are batches (B, C, *spatial).
        allow_missing_keys: don't raise for a missing key.
    """

    def __init__(self, keys: KeysCollection, prob: float = 1.0, variance: float = 0.1, mean: float = 0.0,
                 batched: bool = False, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, RandAdditiveGaussianNoise(prob, variance, mean, batched), allow_missing_keys)


class RandLowResolutiond(_RandArrayWrapperd):
    """
    Dictionary version of :py:class:`monai_dae.transforms.RandLowResolution`.

    Args:
        keys: keys of the images to disrupt.
        prob: probability to disrupt each sample.
        factor: downsampling factor.
        downsample_mode: interpolation of the downsampling.
        upsample_mode: interpolation of the upsampling.
        align_corners: passed to the linear modes.
        batched: the values are batches (B, C, *spatial).
        allow_missing_keys: don't raise for a missing key.
    """

    def __init__(self, keys: KeysCollection, prob: float = 1.0, factor: float = 4,
                 downsample_mode: str = "nearest", upsample_mode: str = "nearest",
                 align_corners: bool | None = False, batched: bool = False,
                 allow_missing_keys: bool = False) -> None:
        transform = RandLowResolution(prob, factor, downsample_mode, upsample_mode, align_corners, batched)
        super().__init__(keys, transform, allow_missing_keys)


class RandDAEDisruptiond(_RandArrayWrapperd):
    """
    Dictionary version of :py:class:`monai_dae.transforms.RandDAEDisruption` (noise, then low resolution).

    Args:
        keys: keys of the images to disrupt (copy the clean image to another key first to keep it as target).
        noise_variance: variance of the additive noise.
        downsample_factor: low-resolution factor.
        noise_prob: probability of the noise per sample.
        low_resolution_prob: probability of the low-resolution simulation per sample.
        downsample_mode: interpolation of the downsampling.
        upsample_mode: interpolation of the upsampling.
        batched: the values are batches (B, C, *spatial).
        allow_missing_keys: don't raise for a missing key.
    """

    def __init__(self, keys: KeysCollection, noise_variance: float = 0.1, downsample_factor: float = 4,
                 noise_prob: float = 1.0, low_resolution_prob: float = 1.0,
                 downsample_mode: str = "nearest", upsample_mode: str = "nearest",
                 batched: bool = False, allow_missing_keys: bool = False) -> None:
        transform = RandDAEDisruption(noise_variance, downsample_factor, noise_prob, low_resolution_prob,
                                      downsample_mode, upsample_mode, batched)
        super().__init__(keys, transform, allow_missing_keys)


RandAdditiveGaussianNoiseD = RandAdditiveGaussianNoiseDict = RandAdditiveGaussianNoised
RandLowResolutionD = RandLowResolutionDict = RandLowResolutiond
RandDAEDisruptionD = RandDAEDisruptionDict = RandDAEDisruptiond
