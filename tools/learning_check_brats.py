"""
Learning check of the ``dae_brats_cls`` bundle: does the grade classifier learn, and what does DAE
initialisation change, on the synthetic brain phantoms (HGG: large tumour with necrotic core, enhancing rim and
large edema; LGG: small non-enhancing tumour)?

Steps, all through the bundles' own configs (``ConfigWorkflow``):

1. write phantoms in the BraTS 2018 layout: a training set (with stratified folds, fold 0 validates) and a
   held-out test set from another seed;
2. pretrain DAE (``dae_pretrain`` bundle) on the single-modality MRI files of the training subjects only;
3. fine-tune ``dae_brats_cls`` from scratch and from the DAE weights (and optionally a linear probe) with
   identical data, seeds, epochs and schedule;
4. run ``inference.json`` with each arm's best checkpoint (by validation AUC) on the held-out test set and print
   accuracy, balanced accuracy and ROC AUC; a JSON summary is written next to the runs.

The CPU-sized defaults (feature size 12, 32^3 classifier input, 64^3 pretraining crops) took 93 minutes on a
2-core CPU shared with other jobs: 61 for the DAE pretraining, 4-13 per fine-tuning arm. ``--pretrained_path``
reuses the weights of an earlier run on the same (deterministically generated) phantoms. On a GPU use
``--feature_size 48 --spatial_size 96`` and more epochs. Example::

    python -m tools.learning_check_brats --work_dir runs/learning_check_brats --arms "['scratch','dae','dae_probe']"
    python -m tools.learning_check_brats --work_dir runs/learning_check_brats2 --seeds "[0,1]" \
        --arms "['scratch','dae','dae_probe']" --pretrained_path runs/learning_check_brats/pretrain/models/model.pt
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import fire
import numpy as np

from monai_dae.data.brats import build_datalist, scan_brats_folder
from monai_dae.data.phantoms import write_sample_dataset
from tools.learning_check_common import bundle_configs, run_workflow, validation_curve

PRETRAIN = bundle_configs("dae_pretrain")
CLASSIFY = bundle_configs("dae_brats_cls")


def _phantoms(folder: Path, num_subjects: int, seed: int, brain_shape: Sequence[int]) -> str:
    paths = write_sample_dataset(
        str(folder), num_ct=2, num_brain=num_subjects, seed=seed, ct_shape=(16, 16, 8), brain_shape=tuple(brain_shape)
    )
    return paths["brats_dir"]


def _metrics_from_csv(path: Path, class_names: Sequence[str]) -> dict:
    from monai_dae.handlers.classification import classification_metrics

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    labels = [list(class_names).index(r["label"]) for r in rows]
    probabilities = np.array([[float(r[f"prob_{c}"]) for c in class_names] for r in rows])
    return classification_metrics(labels, probabilities)


def check(
    work_dir: str = "runs/learning_check_brats",
    num_train: int = 30,
    num_test: int = 20,
    brain_shape: Sequence[int] = (48, 48, 40),
    feature_size: int = 12,
    spatial_size: int = 32,
    pretrain_roi: int = 64,
    pretrain_epochs: int = 4,
    finetune_epochs: int = 15,
    batch_size: int = 4,
    learning_rate: float = 3e-4,
    probe_learning_rate: float = 1e-3,
    seeds: Sequence[int] = (0,),
    arms: Sequence[str] = ("scratch", "dae"),
    num_workers: int = 0,
    device: str | None = None,
    pretrained_path: str = "",
) -> dict:
    """
    Run the check and print a table of test-set accuracy, balanced accuracy and AUC per arm and seed.

    Args:
        work_dir: output folder (data, pretraining, one bundle root per arm and seed, summary.json).
        num_train: training + validation phantom subjects (half HGG, half LGG; 5 folds, fold 0 validates).
        num_test: held-out test phantom subjects (generated from another seed).
        brain_shape: phantom volume shape.
        feature_size: Swin feature size of pretraining and classifier.
        spatial_size: classifier input size (cube).
        pretrain_roi: DAE pretraining crop size (cube; the SwinUNETR decoder needs 64 or more to train).
        pretrain_epochs: DAE pretraining epochs (0 skips the pretraining and the DAE arms).
        finetune_epochs: classifier epochs, the same for every arm.
        batch_size: classifier batch size.
        learning_rate: classifier learning rate of the fully trained arms ("scratch", "dae").
        probe_learning_rate: learning rate of the linear probe ("dae_probe"), which trains the head only.
        seeds: fine-tuning seeds (each arm is trained once per seed).
        arms: any of "scratch", "dae" (full fine-tuning) and "dae_probe" (frozen encoder).
        num_workers: data loader workers.
        device: "cpu" or "cuda:0" (default: cuda when available).
        pretrained_path: reuse these DAE weights (e.g. ``<work_dir>/pretrain/models/model.pt`` of an earlier
            run with the same data) instead of pretraining again.

    Returns:
        the summary dict.
    """
    import torch

    device = device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    amp = device.startswith("cuda")
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()

    train_dir = _phantoms(work / "data_train", num_train, 0, brain_shape)
    test_dir = _phantoms(work / "data_test", num_test, 1, brain_shape)
    train_subjects = scan_brats_folder(train_dir)
    datalist = build_datalist(train_subjects, train_dir, num_folds=5, seed=0)
    datalist_path = work / "datalist_train.json"
    datalist_path.write_text(json.dumps(datalist, indent=2))
    test_path = work / "datalist_test.json"
    test_path.write_text(json.dumps(build_datalist(scan_brats_folder(test_dir), test_dir, num_folds=2), indent=2))

    pretrain_seconds = 0.0
    if pretrained_path:
        pretrained_path = str(Path(pretrained_path).resolve())
        print(f"DAE weights reused from {pretrained_path}")
    elif pretrain_epochs > 0 and any(a.startswith("dae") for a in arms):
        # single-modality MRI samples of the classification training subjects (validation fold held out)
        split = {"training": [], "validation": []}
        for entry in datalist["training"]:
            target = "validation" if entry["fold"] == 0 else "training"
            split[target] += [{"image": entry[m], "modality": m} for m in datalist["modalities"]]
        pretrain_list = work / "datalist_pretrain_mri.json"
        pretrain_list.write_text(json.dumps(split, indent=2))
        root = work / "pretrain"
        tick = time.time()
        workflow = run_workflow(
            ["pretrain_base.json", "dae.json"],
            "train",
            PRETRAIN,
            bundle_root=str(root),
            dataset_dir=train_dir,
            datalist=str(pretrain_list),
            roi_size=[pretrain_roi] * 3,
            feature_size=feature_size,
            batch_size=2,
            num_workers=num_workers,
            cache_rate=1.0,
            max_epochs=pretrain_epochs,
            val_interval=pretrain_epochs,
            progress_bar=False,
            device=device,
            amp=amp,
        )
        workflow.finalize()
        pretrain_seconds = time.time() - tick
        pretrained_path = str(root / "models" / "model.pt")
        print(f"DAE pretraining: {pretrain_epochs} epochs in {pretrain_seconds:.0f} s -> {pretrained_path}")

    class_names = datalist["class_names"]
    results = []
    for seed in seeds:
        for arm in arms:
            if arm.startswith("dae") and not pretrained_path:
                continue
            root = work / f"{arm}_seed{seed}"
            tick = time.time()
            curve: list[dict] = []

            workflow = run_workflow(
                "train.json",
                "train",
                CLASSIFY,
                before_run=validation_curve(curve),
                bundle_root=str(root),
                dataset_dir=train_dir,
                datalist=str(datalist_path),
                fold=0,
                seed=int(seed),
                spatial_size=[spatial_size] * 3,
                feature_size=feature_size,
                batch_size=batch_size,
                num_workers=num_workers,
                cache_rate=1.0,
                max_epochs=finetune_epochs,
                learning_rate=probe_learning_rate if arm == "dae_probe" else learning_rate,
                pretrained_path=pretrained_path if arm.startswith("dae") else "",
                freeze_encoder=arm == "dae_probe",
                progress_bar=False,
                device=device,
                amp=amp,
            )
            evaluator = workflow.parser.get_parsed_content("validate#evaluator")
            best_val_auc = float(evaluator.state.best_metric)
            workflow.finalize()
            train_seconds = time.time() - tick
            workflow = run_workflow(
                "inference.json",
                "infer",
                CLASSIFY,
                bundle_root=str(root),
                dataset_dir=test_dir,
                datalist=str(test_path),
                output_dir=str(root / "test"),
                spatial_size=[spatial_size] * 3,
                feature_size=feature_size,
                num_workers=num_workers,
                device=device,
                amp=amp,
            )
            workflow.finalize()
            metrics = _metrics_from_csv(root / "test" / "predictions.csv", class_names)
            perfect = [c["epoch"] for c in curve if c.get("val_accuracy", 0.0) >= 1.0]
            separated = [c["epoch"] for c in curve if c.get("val_auc", 0.0) >= 1.0]
            result = {
                "arm": arm,
                "seed": int(seed),
                "best_val_auc": best_val_auc,
                "test_accuracy": metrics["accuracy"],
                "test_balanced_accuracy": metrics["balanced_accuracy"],
                "test_auc": metrics["auc"],
                "test_confusion_matrix": metrics["confusion_matrix"],
                "train_seconds": round(train_seconds, 1),
                "first_epoch_val_auc_1": separated[0] if separated else None,
                "first_epoch_val_accuracy_1": perfect[0] if perfect else None,
                "val_curve": [
                    {k: round(float(v), 4) if k != "epoch" else int(v) for k, v in c.items()} for c in curve
                ],
            }
            results.append(result)
            print(json.dumps(result))

    summary = {
        "settings": {
            "num_train": num_train,
            "num_test": num_test,
            "brain_shape": list(brain_shape),
            "feature_size": feature_size,
            "spatial_size": spatial_size,
            "pretrain_roi": pretrain_roi,
            "pretrain_epochs": pretrain_epochs,
            "finetune_epochs": finetune_epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "probe_learning_rate": probe_learning_rate,
            "arms": list(arms),
            "seeds": [int(s) for s in seeds],
            "device": device,
            "pretrained_path": pretrained_path,
        },
        "pretrain_seconds": round(pretrain_seconds, 1),
        "results": results,
        "total_seconds": round(time.time() - started, 1),
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nheld-out phantoms: {num_test} subjects ({class_names}), chance accuracy 0.5, chance AUC 0.5")
    print("first epoch with validation AUC 1 / accuracy 1 ('-': never), then the held-out test metrics")
    print(f"{'arm':<10} {'seed':>4} {'AUC 1 at':>9} {'acc 1 at':>9} {'test acc':>9} {'bal acc':>8} {'test AUC':>9}")
    for r in results:
        auc_at, acc_at = r["first_epoch_val_auc_1"] or "-", r["first_epoch_val_accuracy_1"] or "-"
        print(
            f"{r['arm']:<10} {r['seed']:>4} {auc_at:>9} {acc_at:>9} "
            f"{r['test_accuracy']:>9.3f} {r['test_balanced_accuracy']:>8.3f} {r['test_auc']:>9.3f}"
        )
    print(f"summary: {work / 'summary.json'} ({summary['total_seconds']:.0f} s)")
    return summary


def main(**kwargs) -> None:
    """Command line entry: see :py:func:`check` for the arguments."""
    check(**kwargs)


if __name__ == "__main__":
    fire.Fire(check if "--help" in sys.argv else main)
