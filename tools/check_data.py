"""
Read every file of a data list and report each unusable one, with its data list entry, before training.

The same check as a bundle's ``--check_data True`` (:py:mod:`monai_dae.data.checks`): each image and label is
read completely (so a truncated ``.nii.gz`` is found), and must be 3-D, have no zero-size dimension and hold only
finite values; label maps must hold integer class indices in ``0 .. num_classes - 1`` and have their image's
shape. It works on the three bundles' data lists; the format is recognised from the content:

- pretraining (``datalist_pretrain.json``): ``{"image": path, "modality": name}`` entries;
- BTCV (``dataset_0.json``, ``datalist_fold{k}.json``): ``{"image", "label"}`` entries, ``num_classes`` from the
  ``labels`` field (14);
- BraTS classification (``datalist_cls.json``): one path per modality listed under ``modalities``.

Examples::

    python -m tools.check_data --datalist /data/btcv/datalist_fold0.json
    python -m tools.check_data --datalist /data/pretrain.json --dataset_dir /data --lists "['training']"

Exit status 1 when a problem is found (all are printed), 0 otherwise; warnings (float label maps with integral
values, entries left out with ``--nonfinite skip``) are printed too.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

import fire

from monai_dae.data.checks import check_entries


def _resolve(value, base: str):
    if isinstance(value, str):
        return os.path.abspath(os.path.join(base, os.path.expanduser(value)))
    if isinstance(value, list):
        return [_resolve(v, base) for v in value]
    return value


def check(
    datalist: str,
    dataset_dir: str | None = None,
    lists: Sequence[str] = ("training", "validation", "testing"),
    image_keys: Sequence[str] | None = None,
    label_key: str | None = None,
    num_classes: int | None = None,
    nonfinite: str = "error",
    progress: bool | None = None,
) -> int:
    """
    Check every file of the data list ``datalist``.

    Args:
        datalist: the JSON data list.
        dataset_dir: folder relative paths are resolved against (default: the data list's folder).
        lists: the lists to check (absent ones are passed over).
        image_keys: entry keys holding image paths (default: the ``modalities`` of a classification data list,
            else ``image``).
        label_key: entry key holding a label map path (default: ``label`` when it holds paths).
        num_classes: number of label classes (default: the number of ``labels`` of a BTCV data list).
        nonfinite: "error" (an entry with NaN or Inf voxels is a problem) or "skip" (a warning: the bundles'
            ``nonfinite_inputs="skip"`` would leave it out).
        progress: show a progress bar (default: when stderr is a terminal).

    Returns:
        the exit status: 1 when a problem was found, else 0.
    """
    with open(datalist) as f:
        content = json.load(f)
    base = dataset_dir if dataset_dir is not None else os.path.dirname(os.path.abspath(datalist))
    if image_keys is None:
        image_keys = list(content.get("modalities") or ["image"])
    if isinstance(image_keys, str):
        image_keys = [image_keys]
    if num_classes is None and isinstance(content.get("labels"), dict):
        num_classes = len(content["labels"])
    problems, checked = 0, 0
    for name in lists:
        entries = content.get(name)
        if not isinstance(entries, list):
            continue
        entries = [{"image": e} if isinstance(e, str) else dict(e) for e in entries]
        key = label_key
        if key is None and any(isinstance(e.get("label"), str) for e in entries):
            key = "label"
        resolved = [{k: _resolve(v, base) if k in (*image_keys, key) else v for k, v in e.items()} for e in entries]
        kept, found, warned = check_entries(resolved, image_keys, key, num_classes, 1, nonfinite, name, progress)
        for message in warned:
            print(f"WARNING {name} {message}", file=sys.stderr)
        for message in found:
            print(f"PROBLEM {name} {message}", file=sys.stderr)
        problems += len(found)
        checked += len(entries)
        print(f"{name}: {len(entries)} entries, {len(kept)} usable, {len(found)} problem(s)")
    if not checked:
        print(f"no list of {list(lists)} in '{datalist}'.", file=sys.stderr)
        return 1
    return 1 if problems else 0


def main() -> None:
    """Command-line entry point (``python -m tools.check_data --help``)."""
    status = fire.Fire(check, serialize=lambda value: None)
    raise SystemExit(status if isinstance(status, int) else 0)


if __name__ == "__main__":
    main()
