"""Batch preparation for pretext tasks: move the clean batch to the device and make the pretext there."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines.utils import PrepareBatch
from monai.utils import ensure_tuple

__all__ = ["PretextPrepareBatch"]


class PretextPrepareBatch(PrepareBatch):
    """
    ``prepare_batch`` of a MONAI trainer or evaluator for any pretext task: the tensors of the collated batch
    are moved to the device, a list of batched dictionary transforms makes the pretext there (one kernel launch
    per transform, independent randomness per sample: DAE's disruptions, Volume Fusion's mixing, ...), and the
    network input and the targets are read from the resulting dictionary.

    It returns ``(inputs, targets)``, with ``targets`` one tensor for one target key and a tuple otherwise, or
    ``(inputs, targets, (), kwargs)`` when ``network_kwargs`` or ``network_keys`` are given: the constant keyword
    arguments (e.g. ``{"return_embedding": True}`` for a loss with a contrastive term) and the batch entries the
    network takes besides its input (e.g. BrainMVP's masks and template positions).

    Args:
        transforms: callables mapping the dictionary of device tensors to a dictionary, applied in order
            (e.g. ``CopyItemsd`` to keep the clean image, then ``RandDAEDisruptiond(batched=True)``).
        input_key: key of the network input after the transforms.
        target_keys: key(s) of the targets after the transforms.
        network_kwargs: constant keyword arguments of the network call.
        network_keys: ``{argument name: key}``, keyword arguments of the network call read from the dictionary
            after the transforms.
    """

    def __init__(
        self,
        transforms: Sequence[Callable[[dict], dict]] = (),
        input_key: str = "image",
        target_keys: str | Sequence[str] = "image",
        network_kwargs: Mapping[str, Any] | None = None,
        network_keys: Mapping[str, str] | None = None,
    ) -> None:
        self.transforms = list(transforms)
        self.input_key = input_key
        self.target_keys = ensure_tuple(target_keys)
        self.network_kwargs = dict(network_kwargs or {})
        self.network_keys = dict(network_keys or {})

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> Any:
        """
        Args:
            batchdata: collated batch; its tensors (and MetaTensors, as plain tensors) go to the device.
            device: target device.
            non_blocking: asynchronous host-to-device copy.
            kwargs: further arguments of ``Tensor.to`` for the floating-point tensors (e.g. ``memory_format``).

        Returns:
            see the class description.
        """
        data: dict[str, Any] = {}
        for key, value in batchdata.items():
            if isinstance(value, MetaTensor):
                value = value.as_tensor()
            if isinstance(value, torch.Tensor):
                extra = kwargs if value.is_floating_point() else {}
                value = value.to(device=device, non_blocking=non_blocking, **extra)
            data[key] = value
        for transform in self.transforms:
            data = transform(data)
        missing = [key for key in (self.input_key, *self.target_keys, *self.network_keys.values()) if key not in data]
        if missing:
            raise KeyError(f"PretextPrepareBatch: keys {missing} are not in the batch after the pretext transforms "
                           f"(available: {sorted(map(str, data))}).")
        inputs = data[self.input_key]
        targets = data[self.target_keys[0]] if len(self.target_keys) == 1 else tuple(data[k] for k in self.target_keys)
        if not self.network_kwargs and not self.network_keys:
            return inputs, targets
        kwargs = {**self.network_kwargs, **{name: data[key] for name, key in self.network_keys.items()}}
        return inputs, targets, (), kwargs
