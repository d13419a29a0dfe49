"""Loading that names what it cannot use: the file, the data list entry and the problem."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

from monai.config import KeysCollection
from monai.transforms import LoadImaged

from monai_dae.data.checks import DataCheckError, check_values, describe_entry

__all__ = ["LoadImageNamed"]


def _files(value: Any) -> list[str]:
    if isinstance(value, (str, os.PathLike)):
        return [str(value)]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return []


def _loads(loader: Any, path: str) -> bool:
    """Whether ``loader`` reads ``path`` (to find the broken file of an entry whose loading failed)."""
    try:
        loader(path)
    except Exception:
        return False
    return True


class LoadImageNamed(LoadImaged):
    """
    :py:class:`monai.transforms.LoadImaged` that names the file and the data list entry when loading fails (a
    truncated ``.nii.gz`` passes the header check and fails only here), and checks what it loaded: no zero-size
    dimension, finite voxels, and, for ``label_key``, integer class indices in ``0 .. num_classes - 1`` with the
    image's spatial shape. Every problem raises :py:class:`monai_dae.data.checks.DataCheckError` before the
    volume reaches the network (with a cached dataset: while the cache is filled, before training starts).

    Non-finite voxels always stop here: leaving an entry out needs the data list, which a transform does not
    own; ``nonfinite_inputs="skip"`` removes such entries before the dataset is built
    (:py:func:`monai_dae.data.checks.check_bundle_data`).

    Args:
        keys: keys of the paths to load (a key may hold a list of paths, one per channel).
        args: positional arguments of ``LoadImaged``.
        check: check the loaded values (False: only name load failures).
        label_key: key of a label map among ``keys`` (None: no label).
        num_classes: number of classes of the label map (None: any non-negative integer).
        kwargs: keyword arguments of ``LoadImaged`` (``image_only``, ``ensure_channel_first``, ...).
    """

    def __init__(
        self,
        keys: KeysCollection,
        *args: Any,
        check: bool = True,
        label_key: str | None = None,
        num_classes: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(keys, *args, **kwargs)
        self.check = check
        self.label_key = label_key
        self.num_classes = None if num_classes is None else int(num_classes)

    def __call__(self, data: Mapping[Hashable, Any], reader: Any = None) -> dict[Hashable, Any]:
        entry = describe_entry(data)
        try:
            d = super().__call__(data, reader)
        except Exception as error:
            files = [f for key in self.key_iterator(dict(data)) for f in _files(data[key])]
            failing = [f for f in files if not _loads(self._loader, f)] or files
            raise DataCheckError(
                f"cannot load {failing[0] if len(failing) == 1 else failing} of data list {entry}: "
                f"{type(error).__name__}: {error}. The file is missing, "
                "truncated or corrupt: re-export or re-download it, or remove the entry; run with "
                "`--check_data True` to list every such file before training."
            ) from error
        if not self.check:
            return d
        problems = []
        shapes = {}
        channel_first = self._loader.ensure_channel_first
        for key in self.key_iterator(d):
            files = _files(data[key])
            value = d[key]
            spatial = tuple(int(s) for s in value.shape[1:]) if channel_first else tuple(value.shape)
            name = files[0] if len(files) == 1 else str(files)
            if len(spatial) != 3 or 0 in spatial:
                problems.append(f"'{name}': loaded shape {tuple(value.shape)} is not a non-empty 3-D volume")
                continue
            shapes[key] = (spatial, name)
            # one file per channel (BraTS modalities): check each channel under its own file name
            parts = zip(value, files) if channel_first and len(files) == len(value) > 1 else [(value, name)]
            for part, path in parts:
                found, _ = check_values(part, path, label=key == self.label_key, num_classes=self.num_classes)
                problems += found
        if self.label_key in shapes and len(shapes) > 1:
            label_shape, label_name = shapes[self.label_key]
            for key, (shape, name) in shapes.items():
                if key != self.label_key and shape != label_shape:
                    problems.append(
                        f"'{label_name}': label shape {label_shape} differs from image shape {shape} of '{name}'"
                    )
        if problems:
            raise DataCheckError(f"data list {entry}: " + "; ".join(problems), problems)
        return d
