"""
A persistent, bounded-memory cache of preprocessed volumes: MONAI's ``PersistentDataset`` whose cache files are
memory-mapped when read, written atomically next to their final name, and keyed by the data-list entry, the
size and modification time of its files and the parameters of the cached transforms.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import pickle
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import PersistentDataset
from monai.data.utils import pickle_hashing
from monai.utils import convert_to_tensor

from monai_dae.utils import save_atomically

__all__ = ["entry_hash", "transform_hash", "MemoryMappedPersistentDataset"]

_DESCRIBE_DEPTH = 4


def _describe(value: Any, depth: int = 0) -> Any:
    """A JSON-able description of a transform's parameters that is the same in every process (no addresses)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, enum.Enum):
        return _describe(value.value, depth)
    if isinstance(value, (torch.dtype, np.dtype)):
        return str(value)
    if isinstance(value, type):
        return value.__qualname__
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else [list(value.shape), hashlib.md5(value.tobytes()).hexdigest()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_describe(v, depth + 1) for v in value]
        return sorted(items, key=str) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, Mapping):
        return {str(k): _describe(v, depth + 1) for k, v in value.items()}
    if depth < _DESCRIBE_DEPTH and hasattr(value, "__dict__"):
        fields = {k: _describe(v, depth + 1) for k, v in vars(value).items() if not k.startswith("_") and k != "R"}
        return {"class": type(value).__qualname__, **fields}
    return type(value).__qualname__


def transform_hash(transforms: Sequence[Any]) -> bytes:
    """
    The ``hash_transform`` of :py:class:`MemoryMappedPersistentDataset`: an MD5 digest of the class and public
    parameters of every cached (deterministic) transform, so that changing one (a CT window, a spacing, a pad
    size) selects other cache files instead of reusing stale ones. MONAI's ``json_hashing`` falls back to the
    class names alone for transforms, which misses such changes.

    Args:
        transforms: the transforms before the first random one.

    Returns:
        the hex digest, as bytes.
    """
    description = json.dumps([_describe(t) for t in transforms], sort_keys=True, default=str)
    return hashlib.md5(description.encode("utf-8")).hexdigest().encode("utf-8")


def entry_hash(item: Any) -> bytes:
    """
    The ``hash_func`` of :py:class:`MemoryMappedPersistentDataset`: MONAI's ``pickle_hashing`` of the data-list
    entry together with the size and modification time of every file it names, so that a file replaced in place
    (same path, new content) is preprocessed again.

    Args:
        item: a data-list entry (a dictionary of paths and values).

    Returns:
        the hex digest, as bytes.
    """
    stamps = {}
    if isinstance(item, Mapping):
        for key, value in item.items():
            if isinstance(value, str) and os.path.isfile(value):
                status = os.stat(value)
                stamps[str(key)] = (status.st_size, status.st_mtime_ns)
    return pickle_hashing({"entry": item, "files": stamps})


class MemoryMappedPersistentDataset(PersistentDataset):
    """
    :py:class:`monai.data.PersistentDataset` for corpora larger than memory (the paper's 10,000 volumes): the
    deterministic prefix of the pipeline (loading, orientation, intensity scaling, padding) runs once per entry
    and its result is written to ``cache_dir``; later epochs read it back memory-mapped (``torch.load(...,
    mmap=True)``), so a random crop reads from disk only the pages it covers and resident memory does not grow
    with the corpus (measured in the bundle docs, ``python -m tools.benchmark --only data_memory``).

    Differences from MONAI's class, each for large runs on shared storage:

    - a cache file is written to a temporary file in ``cache_dir`` itself and renamed into place (MONAI writes
      to the system temporary folder and moves the file, which is a copy, not atomic, when ``/tmp`` is another
      file system): a killed writer leaves no partial file under a final name, and concurrent ranks writing the
      same entry are safe;
    - the cache key covers the files' size and modification time (:py:func:`entry_hash`) and the cached
      transforms' parameters (:py:func:`transform_hash`), so one ``cache_dir`` can serve several configs;
    - an unreadable cache file is reported by name and recomputed.

    The cache files are pickles that hold MetaTensors (image and metadata), read with ``weights_only=False``:
    point ``cache_dir`` only at a folder that this class alone writes.

    Args:
        data: the data list.
        transform: a ``Compose``; its prefix up to the first random transform is cached.
        cache_dir: folder of the cache files (created if absent); shared by runs and ranks.
        hash_func: hash of a data-list entry (default :py:func:`entry_hash`).
        hash_transform: hash of the cached transforms (default :py:func:`transform_hash`).
        kwargs: further ``PersistentDataset`` arguments.
    """

    def __init__(
        self,
        data: Sequence,
        transform: Any,
        cache_dir: str | os.PathLike,
        hash_func: Callable[..., bytes] = entry_hash,
        hash_transform: Callable[..., bytes] | None = transform_hash,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("weights_only", False)  # cached items hold MetaTensors with their metadata
        kwargs.setdefault("track_meta", True)
        super().__init__(
            data=data, transform=transform, cache_dir=cache_dir, hash_func=hash_func, hash_transform=hash_transform, **kwargs
        )

    def cache_path(self, item: Any) -> Path:
        """
        Args:
            item: a data-list entry.

        Returns:
            the path of its cache file.
        """
        return self.cache_dir / f"{self.hash_func(item).decode('utf-8')}{self.transform_hash}.pt"

    def _cachecheck(self, item_transformed: Any) -> Any:
        path = self.cache_path(item_transformed)
        if path.is_file():
            try:
                return torch.load(path, mmap=True, weights_only=self.weights_only)
            except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
                warnings.warn(f"unreadable cache file '{path}' ({error}); it is computed again.", stacklevel=2)
                path.unlink(missing_ok=True)
        item = self._pre_transform(dict(item_transformed))
        save_atomically(convert_to_tensor(item, convert_numeric=False, track_meta=self.track_meta), str(path))
        return item
