"""
Learning check of the ``dae_btcv_seg`` bundle: does the 13-organ segmentation learn, and what does DAE
initialisation change, on the synthetic BTCV-like CT phantoms?

Steps, all through the bundles' own configs (``ConfigWorkflow``, as ``python -m monai.bundle run`` does):

1. write phantoms in the BTCV layout: a training set (``dataset_0.json``: training and validation cases) and
   a held-out test set from another seed (plus, optionally, extra unlabelled CTs for pretraining only);
2. pretrain DAE (``dae_pretrain`` bundle) on the training CTs, validated on the validation CTs (the test
   phantoms are never seen before the final evaluation);
3. fine-tune ``dae_btcv_seg`` from scratch and from the DAE weights with identical data, seed, epochs and
   schedule, recording the validation Dice after every validation;
4. evaluate each arm's best checkpoint (by validation mean Dice) on the held-out test phantoms with the
   bundle's ``evaluate.json`` (mean Dice over the 13 organs in the resampled and the original image space,
   Dice per organ, per-case CSV files) and print both validation curves and the test Dice.

CPU-sized defaults (feature size 12, 64 x 64 x 32 crops, phantoms whose body fills such a crop at the recipe's
1.5 x 1.5 x 2.0 mm spacing, 240 fine-tuning steps per arm) took 50 minutes on 2 cores shared with other jobs
(load average about 4); the recorded result is in ``bundles/dae_btcv_seg/docs/README.md``. On a GPU use
``--feature_size 48 --roi "[96,96,96]" --ct_shape "[192,192,80]"`` and more epochs. Example::

    python -m tools.learning_check_btcv --work_dir runs/learning_check_btcv
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import fire
import nibabel as nib
import numpy as np

from monai_dae.data.phantoms import BTCV_ORGANS, write_sample_dataset
from tools.learning_check_common import bundle_configs, run_workflow, validation_curve

PRETRAIN = bundle_configs("dae_pretrain")
SEGMENT = bundle_configs("dae_btcv_seg")


def _ct_phantoms(folder: Path, num_cases: int, num_validation: int, seed: int, ct_shape: Sequence[int]) -> dict:
    """CT phantoms in the BTCV layout (the brain phantoms the generator always writes are kept tiny)."""
    paths = write_sample_dataset(
        str(folder),
        num_ct=num_cases,
        num_brain=2,
        seed=seed,
        ct_shape=tuple(ct_shape),
        brain_shape=(16, 16, 16),
        num_validation=num_validation,
    )
    with open(paths["btcv_datalist"]) as f:
        return {"dir": paths["btcv_dir"], "datalist": paths["btcv_datalist"], **json.load(f)}


def chance_dice(btcv_dir: str, cases: Sequence[dict]) -> float:
    """
    Expected mean Dice over the 13 organs of a prediction drawing each voxel's label uniformly from the 14
    classes: ``2 f / (14 f + 1)`` for an organ filling a fraction ``f`` of the volume, averaged over organs
    present and then over cases.

    Args:
        btcv_dir: folder the case paths are relative to.
        cases: entries with a ``label`` path.

    Returns:
        the chance-level mean Dice.
    """
    per_case = []
    for case in cases:
        label = np.asarray(nib.load(str(Path(btcv_dir) / case["label"])).dataobj)
        fractions = [np.mean(label == k) for k in range(1, len(BTCV_ORGANS) + 1)]
        per_case.append(np.mean([2 * f / (14 * f + 1) for f in fractions if f > 0]))
    return float(np.mean(per_case))


def _pretrain(
    work: Path, train: dict, num_unlabeled: int, ct_shape: Sequence[int], epochs: int, batch_size: int, common: dict
) -> tuple[str, float]:
    """
    DAE pretraining (``dae_pretrain`` bundle) on the training CTs (plus ``num_unlabeled`` extra phantoms),
    validated once, at the end, on the validation CTs.

    Returns:
        the path of the pretrained ``model.pt`` and its validation L1.
    """
    split = {
        key: [{"image": str(Path(train["dir"]) / c["image"]), "modality": "ct"} for c in train[key]]
        for key in ("training", "validation")
    }
    if num_unlabeled:
        extra = _ct_phantoms(work / "data_unlabeled", num_unlabeled, 1, 2, ct_shape)
        split["training"] += [
            {"image": str(Path(extra["dir"]) / c["image"]), "modality": "ct"} for c in extra["training"] + extra["validation"]
        ]
    pretrain_list = work / "datalist_pretrain.json"
    pretrain_list.write_text(json.dumps(split, indent=2))
    root = work / "pretrain"
    workflow = run_workflow(
        ["pretrain_base.json", "dae.json"],
        "train",
        PRETRAIN,
        bundle_root=str(root),
        dataset_dir=str(work),
        datalist=str(pretrain_list),
        batch_size=batch_size,
        cache_rate=1.0,
        max_epochs=epochs,
        val_interval=epochs,
        **common,
    )
    val_l1 = float(workflow.parser.get_parsed_content("validate#evaluator").state.metrics["val_l1"])
    workflow.finalize()
    return str(root / "models" / "model.pt"), val_l1


def check(
    work_dir: str = "runs/learning_check_btcv",
    num_train: int = 8,
    num_val: int = 2,
    num_test: int = 4,
    num_unlabeled: int = 0,
    ct_shape: Sequence[int] = (128, 128, 26),
    feature_size: int = 12,
    roi: Sequence[int] = (64, 64, 32),
    pretrain_epochs: int = 15,
    pretrain_batch_size: int = 2,
    finetune_epochs: int = 30,
    val_interval: int = 5,
    batch_size: int = 1,
    num_samples: int = 1,
    learning_rate: float = 2e-3,
    seed: int = 0,
    arms: Sequence[str] = ("scratch", "dae"),
    num_workers: int = 0,
    device: str | None = None,
    pretrained_path: str = "",
) -> dict:
    """
    Run the check, print both validation Dice curves and the held-out test Dice, and write ``summary.json``.

    Args:
        work_dir: output folder (data, pretraining, one bundle root per arm, summary.json).
        num_train: labelled training phantoms (also the DAE pretraining images).
        num_val: validation phantoms (best-checkpoint selection).
        num_test: held-out test phantoms (generated from another seed, never seen in training), at least 2.
        num_unlabeled: extra unlabelled CT phantoms (another seed) added to the DAE pretraining only: 0 or at
            least 2.
        ct_shape: phantom array shape (0.8 x 0.8 x 2.5 mm voxels); the default body fills a 64 x 64 x 32 crop at
            the recipe's 1.5 x 1.5 x 2.0 mm spacing.
        feature_size: Swin feature size of pretraining and fine-tuning.
        roi: crop size of pretraining, fine-tuning and sliding-window inference: multiples of 32, and more than
            32 along at least one axis (Swin UNETR's 1^3 bottleneck cannot be instance-normalised in training).
        pretrain_epochs: DAE pretraining epochs (0 skips the pretraining and the "dae" arm).
        pretrain_batch_size: DAE pretraining batch size.
        finetune_epochs: fine-tuning epochs, the same for every arm.
        val_interval: validate every this many fine-tuning epochs.
        batch_size: fine-tuning images per iteration (each gives ``num_samples`` crops).
        num_samples: RandCropByPosNegLabel crops per image.
        learning_rate: fine-tuning peak learning rate (warm-up cosine), the same for every arm.
        seed: fine-tuning seed, the same for every arm.
        arms: any of "scratch" and "dae".
        num_workers: workers filling the cache.
        device: "cpu" or "cuda:0" (default: cuda when available).
        pretrained_path: reuse these DAE weights (e.g. ``<work_dir>/pretrain/models/model.pt`` of an earlier
            run on the same data) instead of pretraining again.

    Returns:
        the summary dict.
    """
    import torch

    device = device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    amp = device.startswith("cuda")
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    common = {"roi_size": [int(r) for r in roi], "feature_size": feature_size, "num_workers": num_workers, "device": device}
    common.update(amp=amp, progress_bar=False)

    train = _ct_phantoms(work / "data_train", num_train + num_val, num_val, 0, ct_shape)
    test = _ct_phantoms(work / "data_test", num_test, 1, 1, ct_shape)
    test_cases = test["training"] + test["validation"]
    test_list = work / "datalist_test.json"  # evaluate.json reads the "validation" list
    test_list.write_text(json.dumps({"training": test_cases, "validation": test_cases}, indent=2))
    chance = chance_dice(test["dir"], test_cases)
    print(f"data: {num_train} training, {num_val} validation, {len(test_cases)} test phantoms of shape {list(ct_shape)}")

    pretrain_seconds, pretrain_val_l1 = 0.0, None
    if pretrained_path:
        pretrained_path = str(Path(pretrained_path).resolve())
        print(f"DAE weights reused from {pretrained_path}")

    results = []
    for arm in arms:
        if arm == "dae" and not pretrained_path:
            if pretrain_epochs <= 0:
                continue
            tick = time.time()
            pretrained_path, pretrain_val_l1 = _pretrain(work, train, num_unlabeled, ct_shape, pretrain_epochs, pretrain_batch_size, common)
            pretrain_seconds = time.time() - tick
            print(f"DAE pretraining: {pretrain_epochs} epochs in {pretrain_seconds:.0f} s, validation L1 "
                  f"{pretrain_val_l1:.4f} -> {pretrained_path}")
        root = work / arm
        curve: list[dict] = []
        tick = time.time()
        workflow = run_workflow(
            "train.json",
            "train",
            SEGMENT,
            before_run=validation_curve(curve),
            bundle_root=str(root),
            dataset_dir=train["dir"],
            datalist=train["datalist"],
            seed=seed,
            batch_size=batch_size,
            num_samples=num_samples,
            cache_rate=1.0,
            max_epochs=finetune_epochs,
            val_interval=val_interval,
            learning_rate=learning_rate,
            pretrained_path=pretrained_path if arm == "dae" else "",
            **common,
        )
        best_val = float(workflow.parser.get_parsed_content("validate#evaluator").state.best_metric)
        workflow.finalize()
        train_seconds = time.time() - tick

        workflow = run_workflow(
            ["train.json", "evaluate.json"],
            "train",
            SEGMENT,
            bundle_root=str(root),
            dataset_dir=test["dir"],
            datalist=str(test_list),
            output_dir=str(root / "test"),
            cache_rate=0.0,
            **common,
        )
        metrics = dict(workflow.parser.get_parsed_content("validate#evaluator").state.metrics)
        workflow.finalize()
        result = {
            "arm": arm,
            "best_val_mean_dice": round(best_val, 4),
            "test_mean_dice": round(float(metrics["val_mean_dice"]), 4),
            "test_mean_dice_original_space": round(float(metrics["val_mean_dice_orig_space"]), 4),
            "test_dice_per_organ": {
                organ: round(float(metrics["val_dice_" + organ.replace(" ", "_")]), 4) for organ in BTCV_ORGANS
            },
            "train_seconds": round(train_seconds, 1),
            "val_curve": [{"epoch": int(c["epoch"]), "val_mean_dice": round(float(c["val_mean_dice"]), 4)} for c in curve],
            "test_csv": str(root / "test" / "val_mean_dice_raw.csv"),
        }
        results.append(result)
        print(json.dumps(result))

    summary = {
        "settings": {
            "num_train": num_train,
            "num_val": num_val,
            "num_test": len(test_cases),
            "num_unlabeled": num_unlabeled,
            "ct_shape": list(ct_shape),
            "feature_size": feature_size,
            "roi": [int(r) for r in roi],
            "pretrain_epochs": pretrain_epochs,
            "pretrain_batch_size": pretrain_batch_size,
            "finetune_epochs": finetune_epochs,
            "val_interval": val_interval,
            "batch_size": batch_size,
            "num_samples": num_samples,
            "learning_rate": learning_rate,
            "seed": seed,
            "arms": list(arms),
            "device": device,
            "torch_threads": torch.get_num_threads(),
            "pretrained_path": pretrained_path,
        },
        "test_chance_mean_dice": round(chance, 4),
        "pretrain_seconds": round(pretrain_seconds, 1),
        "pretrain_val_l1": None if pretrain_val_l1 is None else round(pretrain_val_l1, 4),
        "results": results,
        "total_seconds": round(time.time() - started, 1),
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    _print_tables(summary)
    return summary


def _print_tables(summary: dict) -> None:
    """Validation curves side by side, then the held-out test Dice (mean and per organ) of every arm."""
    results = summary["results"]
    if not results:
        return
    names = [r["arm"] for r in results]
    print("\nvalidation mean Dice (13 organs) after each validation")
    print(f"{'epoch':>5} " + " ".join(f"{n:>9}" for n in names))
    curves = [{c["epoch"]: c["val_mean_dice"] for c in r["val_curve"]} for r in results]
    for epoch in sorted(set().union(*curves)):
        print(f"{epoch:>5} " + " ".join(f"{c.get(epoch, float('nan')):>9.4f}" for c in curves))
    print(f"\nheld-out test phantoms: {summary['settings']['num_test']}, chance mean Dice "
          f"{summary['test_chance_mean_dice']:.4f} (uniformly random labels)")
    print(f"{'':<26} " + " ".join(f"{n:>9}" for n in names))
    rows = [("best validation mean Dice", "best_val_mean_dice"), ("test mean Dice", "test_mean_dice"),
            ("test mean Dice, orig space", "test_mean_dice_original_space")]
    for title, key in rows:
        print(f"{title:<26} " + " ".join(f"{r[key]:>9.4f}" for r in results))
    for organ in BTCV_ORGANS:
        print(f"  {organ:<24} " + " ".join(f"{r['test_dice_per_organ'][organ]:>9.4f}" for r in results))
    print(f"{'fine-tuning seconds':<26} " + " ".join(f"{r['train_seconds']:>9.0f}" for r in results))
    print(f"DAE pretraining seconds: {summary['pretrain_seconds']:.0f}; total {summary['total_seconds']:.0f} s")


def main(**kwargs) -> None:
    """Command line entry: see :py:func:`check` for the arguments."""
    check(**kwargs)


if __name__ == "__main__":
    fire.Fire(check if "--help" in sys.argv else main)
