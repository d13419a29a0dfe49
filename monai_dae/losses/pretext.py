"""The loss contract of the pretext tasks: named terms and their weighted total."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.nn.modules.loss import _Loss

__all__ = ["PretextLoss"]


class PretextLoss(_Loss):
    """
    Base of the pretext losses: a subclass computes its unweighted named terms in :py:meth:`terms`
    (``{"l1": ..., "cmcl": ...}``); calling the loss returns the weighted total for the trainer's backward pass
    and keeps the detached terms in ``self.components`` as ``{"loss_<name>": value}``, which
    :py:class:`monai_dae.handlers.LossComponentsHandler` copies into the engine output. Stats, TensorBoard and
    MLflow handlers then log every term (and its epoch mean) without code for the particular loss.

    Args:
        weights: weight of each term in the total; terms without a weight count once.
    """

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.weights = {name: float(weight) for name, weight in (weights or {}).items()}
        self.components: dict[str, torch.Tensor] = {}

    def terms(self, prediction: Any, target: Any) -> dict[str, torch.Tensor]:
        """
        Args:
            prediction: the network output.
            target: the targets of :py:class:`monai_dae.engines.PretextPrepareBatch`.

        Returns:
            the unweighted scalar terms by name.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement terms(prediction, target).")

    def forward(self, prediction: Any, target: Any) -> torch.Tensor:
        """
        Args:
            prediction: the network output.
            target: the targets.

        Returns:
            the scalar total: the sum of the weighted terms, in the order :py:meth:`terms` returns them.
        """
        terms = self.terms(prediction, target)
        unknown = set(self.weights) - set(terms)
        if unknown:
            raise KeyError(f"{type(self).__name__}: weights for unknown terms {sorted(unknown)}; terms: {list(terms)}.")
        total = None
        for name, value in terms.items():
            weight = self.weights.get(name, 1.0)
            weighted = value if weight == 1.0 else weight * value
            total = weighted if total is None else total + weighted
        self.components = {f"loss_{name}": value.detach() for name, value in terms.items()}
        return total
