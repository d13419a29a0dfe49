"""The dictionary form of the batched pretext transforms: one image batch in, a network input and a target out."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

__all__ = ["BatchedPretextd"]


class BatchedPretextd(Randomizable, MapTransform):
    """
    Dictionary wrapper of a randomizable array transform that maps a batch (B, C, *spatial) to a pair ``(input,
    target)``, for the pretext transforms of :py:class:`monai_dae.engines.PretextPrepareBatch`
    (:py:class:`monai_dae.transforms.fusion.RandVolumeFusiond`, :py:class:`monai_dae.transforms.RandVoCoCropsd`).
    The image at ``keys`` is left as it is; the pair is written to ``output_keys``. Seeding the wrapper seeds the
    array transform, which draws its random values for the batch it is given.

    Args:
        keys: key of the image batch (one key).
        transform: the array transform, with ``set_random_state`` and ``__call__(batch) -> (input, target)``.
        output_keys: keys of the input and the target it returns.
        allow_missing_keys: don't raise for a missing key.
    """

    def __init__(
        self,
        keys: KeysCollection,
        transform: Randomizable,
        output_keys: tuple[str, str],
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"{type(self).__name__} takes one image key, got {self.keys}.")
        self.transform = transform
        self.output_keys = tuple(output_keys)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> BatchedPretextd:
        super().set_random_state(seed, state)
        self.transform.set_random_state(state=self.R)
        return self

    def randomize(self, data: Any = None) -> None:
        """Random values are drawn by the array transform, for the batch it is given."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """
        Args:
            data: a batched dictionary.

        Returns:
            a copy with the input and the target added at ``output_keys``.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.output_keys[0]], d[self.output_keys[1]] = self.transform(d[key])
        return d
