"""Reproducible sampling: per-sample seeded random transforms and modality-mixing batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from monai.data import CacheDataset
from torch.utils.data import DistributedSampler

from monai_dae.data.persistent import MemoryMappedPersistentDataset
from monai_dae.utils import distributed_rank, distributed_world_size

__all__ = ["derive_seed", "PerSampleSeeding", "SeededCacheDataset", "SeededPersistentDataset", "ModalityMixingSampler"]

_MAX_SEED = 2**32 - 1


def derive_seed(*entropy: int) -> int:
    """
    A seed derived from several integers (a base seed, an epoch, a sample index, ...) by NumPy's
    ``SeedSequence``: different tuples give statistically independent streams.

    Args:
        entropy: non-negative integers.

    Returns:
        a seed in [0, 2**32 - 1).
    """
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1)[0]) % _MAX_SEED


class PerSampleSeeding:
    """
    Seeds the random transforms of a MONAI dataset per sample: before the random part of the pipeline runs on
    sample ``index`` in epoch ``epoch``, the transforms are seeded with ``derive_seed(seed, epoch, index)``.
    Which crop (or augmentation) a sample gets then depends only on the seed, the epoch and the sample, not on
    the number of loader workers, on which worker or rank loads it, or on the order in which the sampler asks
    for it; a resumed run draws what the uninterrupted run drew.

    The epoch is set by :py:meth:`set_epoch`, called by :py:class:`monai_dae.handlers.SetEpochHandler` at every
    epoch start (before the data loader starts its workers for that epoch). Mixed into a ``Dataset`` subclass
    whose ``_transform(index)`` runs the pipeline (``CacheDataset``, ``PersistentDataset``).
    """

    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """
        Args:
            epoch: the epoch whose random draws the next accesses make.
        """
        self.epoch = int(epoch)

    def _transform(self, index: int):
        self.transform.set_random_state(seed=derive_seed(self.seed, self.epoch, index % len(self)))
        return super()._transform(index)


class SeededCacheDataset(PerSampleSeeding, CacheDataset):
    """
    MONAI's ``CacheDataset`` (the deterministic prefix of the pipeline held in memory) with the random transforms
    seeded per sample (:py:class:`PerSampleSeeding`).

    Args:
        data: the data list.
        transform: a ``Compose``: its deterministic prefix is cached, the rest runs on every access.
        seed: base seed of the random transforms.
        kwargs: further ``CacheDataset`` arguments (``cache_rate``, ``num_workers``, ...).
    """

    def __init__(self, data: Sequence, transform: Any, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(data=data, transform=transform, **kwargs)
        self.seed = int(seed)


class SeededPersistentDataset(PerSampleSeeding, MemoryMappedPersistentDataset):
    """
    :py:class:`monai_dae.data.persistent.MemoryMappedPersistentDataset` (the deterministic prefix written once to
    disk and read back memory-mapped, resident memory flat as the corpus grows) with the random transforms
    seeded per sample (:py:class:`PerSampleSeeding`): the same crops as :py:class:`SeededCacheDataset` for the
    same seed.

    Args:
        data: the data list.
        transform: a ``Compose``: its deterministic prefix is cached on disk, the rest runs on every access.
        cache_dir: folder of the cache files.
        seed: base seed of the random transforms.
        kwargs: further ``MemoryMappedPersistentDataset`` arguments.
    """

    def __init__(self, data: Sequence, transform: Any, cache_dir: str, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(data=data, transform=transform, cache_dir=cache_dir, **kwargs)
        self.seed = int(seed)


class ModalityMixingSampler(DistributedSampler):
    """
    A sampler that mixes modalities within each batch, so that a contrastive loss over modality labels has
    negatives at every step: the volumes of one batch have pairwise different modalities as long as the data
    list holds enough modalities (else as few repeats as the remaining samples allow). Each modality's samples
    are shuffled and every sample is drawn once per epoch; the order depends only on ``seed`` and the epoch.

    It is a ``DistributedSampler``, so MONAI's workflows call :py:meth:`set_epoch` at every epoch start, and it
    shards the epoch across ranks: a global batch of ``batch_size * num_replicas`` volumes is drawn at a time
    and rank r takes its r-th ``batch_size`` slice; ranks see disjoint samples and every rank gets the same
    number of batches (a last incomplete global batch is dropped when ``drop_last``, else padded by repeating
    samples from the start of the epoch).

    Args:
        modalities: the modality name (or label) of every sample of the dataset, in dataset order.
        batch_size: volumes per batch on each rank (the data loader's ``batch_size``).
        seed: seed of the shuffle.
        drop_last: drop the last incomplete global batch.
        num_replicas: number of ranks (default: the torch.distributed world size, 1 when not initialised).
        rank: this rank (default: the torch.distributed rank, 0 when not initialised).
    """

    def __init__(
        self,
        modalities: Sequence[Any],
        batch_size: int,
        seed: int = 0,
        drop_last: bool = True,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if not modalities:
            raise ValueError("ModalityMixingSampler needs at least one sample.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        num_replicas = distributed_world_size() if num_replicas is None else num_replicas
        rank = distributed_rank() if rank is None else rank
        super().__init__(modalities, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=drop_last)
        self.modalities = [str(m) for m in modalities]
        self.batch_size = int(batch_size)
        global_batch = self.batch_size * self.num_replicas
        if drop_last:
            self.num_batches = len(self.modalities) // global_batch
        else:
            self.num_batches = -(-len(self.modalities) // global_batch)
        self.num_samples = self.num_batches * self.batch_size
        self.total_size = self.num_samples * self.num_replicas

    def global_order(self) -> list[int]:
        """
        The sample order of the current epoch over all ranks, batch by batch (``batch_size * num_replicas``
        samples per global batch, rank-major).

        Returns:
            dataset indices.
        """
        rng = np.random.default_rng(derive_seed(self.seed, self.epoch))
        pools: dict[str, list[int]] = {}
        for index, modality in enumerate(self.modalities):
            pools.setdefault(modality, []).append(index)
        for pool in pools.values():
            rng.shuffle(pool)
        order: list[int] = []
        slot = 0
        while any(pools.values()):
            if slot % self.batch_size == 0:
                in_batch: set[str] = set()
            candidates = [m for m, pool in pools.items() if pool and m not in in_batch] or [m for m, p in pools.items() if p]
            weights = np.array([len(pools[m]) for m in candidates], dtype=float)
            modality = candidates[int(rng.choice(len(candidates), p=weights / weights.sum()))]
            order.append(pools[modality].pop())
            in_batch.add(modality)
            slot += 1
        if len(order) < self.total_size:
            order += order[: self.total_size - len(order)]
        return order[: self.total_size]

    def __iter__(self) -> Iterator[int]:
        order = self.global_order()
        global_batch = self.batch_size * self.num_replicas
        for start in range(0, self.total_size, global_batch):
            first = start + self.rank * self.batch_size
            yield from order[first : first + self.batch_size]

    def __len__(self) -> int:
        return self.num_samples
