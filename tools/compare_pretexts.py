"""
Head-to-head comparison of the pretext methods on one backbone: each method pretrains the same Swin UNETR for the
same budget, then ``dae_btcv_seg`` and ``dae_brats_cls`` are fine-tuned from every method's weights (and from
scratch) on a fraction of their labelled training data, for several seeds. Written under ``--output_dir``:

- ``results.csv``: one row per fine-tuning run (task, metric, method, fraction, seed, value, seconds);
- ``comparison.md`` and ``comparison.csv``: the mean and standard deviation over seeds, per task, method and
  fraction;
- ``label_efficiency.png``: the metric against the labelled fraction, one line per method, error bars over seeds;
- ``pretrain/<method>/`` and ``finetune/<task>/<method>/fraction<f>_seed<s>/``: every run's bundle outputs. A run
  whose ``result.json`` exists is not repeated, so an interrupted comparison resumes where it stopped.

On the synthetic sample data (generated under ``<output_dir>/data`` when ``--data_dir`` is not given), at the small
budget (feature size 12, 64^3 crops, 2 epochs each)::

    python -m tools.compare_pretexts --output_dir runs/compare

On real data, the same command with the data folder (``datalist_pretrain.json`` for DAE, Volume Fusion and VoCo;
``btcv/dataset_0.json``; the BraTS 2018 layout under ``brats/MICCAI_BraTS_2018_Data_Training``, whose study data
list BrainMVP pretrains on and ``dae_brats_cls`` fine-tunes on) and the bundles' own sizes::

    python -m tools.compare_pretexts --data_dir /data/ssl --output_dir runs/compare --budget bundle \\
        --pretrain_epochs 100 --finetune_epochs 100
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fire
import numpy as np

from tools.learning_check_common import bundle_configs, run_workflow
from tools.pretrain_datalist import write_json_atomically

METHODS: tuple[str, ...] = ("dae", "volume_fusion", "voco", "brainmvp", "scratch")
"""The compared methods: the pretraining overlays of ``dae_pretrain`` and "scratch" (no pretraining)."""

TASKS: dict[str, str] = {
    "dae_btcv_seg": "BTCV 13-organ segmentation (dae_btcv_seg)",
    "dae_brats_cls": "BraTS HGG/LGG classification (dae_brats_cls)",
}
"""The fine-tuning bundles and their panel titles."""

BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "small": {
        "pretrain": {"feature_size": 12, "roi_size": [64, 64, 64], "batch_size": 2},
        "voco": {"voco_grid": 2, "voco_base_size": 64, "use_checkpoint": False, "batch_size": 1},
        "brainmvp": {"template_size": [96, 96, 96]},
        "dae_btcv_seg": {"feature_size": 12, "roi_size": [64, 64, 32], "num_samples": 1, "sw_batch_size": 1},
        "dae_brats_cls": {"feature_size": 12, "spatial_size": [64, 64, 64], "batch_size": 2},
    },
    "bundle": {"pretrain": {}, "voco": {}, "brainmvp": {}, "dae_btcv_seg": {}, "dae_brats_cls": {}},
}
"""Overrides of each budget: "small" runs on a laptop CPU in minutes per run; "bundle" keeps the bundles' sizes."""

_FIELDS = ("task", "metric", "method", "fraction", "seed", "value", "seconds")


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def prepare_data(data_dir: str | None, output_dir: Path, progress: bool | None) -> dict[str, str]:
    """
    The data folders of the comparison, with the sample data generated and the BraTS data list built if missing.

    Args:
        data_dir: the data folder (the sample data's layout), or None for the sample data under ``output_dir``.
        output_dir: the comparison folder.
        progress: progress bars of the data-list scan.

    Returns:
        ``{"pretrain": folder of datalist_pretrain.json, "btcv": BTCV folder, "brats": BraTS folder}``.

    Raises:
        FileNotFoundError: a data folder lacks what the comparison reads.
    """
    from monai_dae.data.phantoms import write_sample_dataset
    from tools.brats_datalist import build as build_brats_datalist

    root = Path(data_dir) if data_dir else output_dir / "data"
    if data_dir is None and not (root / "datalist_pretrain.json").is_file():
        write_sample_dataset(str(root))
    folders = {"pretrain": root, "btcv": root / "btcv", "brats": root / "brats" / "MICCAI_BraTS_2018_Data_Training"}
    for name, required in (("pretrain", "datalist_pretrain.json"), ("btcv", "dataset_0.json")):
        if not (folders[name] / required).is_file():
            raise FileNotFoundError(f"the comparison reads '{folders[name] / required}', which does not exist.")
    if not (folders["brats"] / "datalist_cls.json").is_file():
        if not folders["brats"].is_dir():
            raise FileNotFoundError(f"the comparison reads the BraTS 2018 layout under '{folders['brats']}', which does not exist.")
        build_brats_datalist(data_dir=str(folders["brats"]), progress=progress)
    return {name: str(folder) for name, folder in folders.items()}


def pretrain(method: str, data: dict[str, str], output_dir: Path, epochs: int, budget: dict, seed: int) -> str:
    """
    Pretrain one method with the ``dae_pretrain`` bundle (skipped when its weights exist).

    Args:
        method: a pretraining overlay of ``dae_pretrain``.
        data: the data folders of :py:func:`prepare_data`.
        output_dir: the comparison folder.
        epochs: pretraining epochs.
        budget: the budget's overrides.
        seed: the pretraining seed.

    Returns:
        the path of the pretrained ``model.pt``.
    """
    runs = output_dir / "pretrain" / method
    done = runs / "result.json"
    weights = runs / "models" / "model.pt"
    if _read_json(done) is not None and weights.is_file():
        return str(weights)
    overrides = {**budget["pretrain"], **budget.get(method, {})}
    dataset_dir = data["brats"] if method == "brainmvp" else data["pretrain"]
    start = time.perf_counter()
    workflow = run_workflow(
        ["pretrain_base.json", f"{method}.json"], "train", bundle_configs("dae_pretrain"), dataset_dir=dataset_dir,
        output_dir=str(runs), ckpt_dir=str(runs / "models"), max_epochs=epochs, seed=seed, overwrite=True,
        **overrides,
    )
    workflow.finalize()
    seconds = round(time.perf_counter() - start, 1)
    write_json_atomically({"method": method, "epochs": epochs, "seconds": seconds}, str(done))
    return str(weights)


def finetune(
    task: str, method: str, weights: str, fraction: float, seed: int, data: dict[str, str], output_dir: Path,
    epochs: int, budget: dict,
) -> dict[str, Any]:
    """
    Fine-tune one bundle from one method's weights on a fraction of its labelled data (skipped when done).

    Args:
        task: "dae_btcv_seg" or "dae_brats_cls".
        method: the method whose weights initialise the network ("scratch": none).
        weights: the pretrained ``model.pt`` ("" for scratch).
        fraction: the labelled fraction (the bundle's ``train_fraction``).
        seed: the bundle's seed (the subset and the initialisation).
        data: the data folders of :py:func:`prepare_data`.
        output_dir: the comparison folder.
        epochs: fine-tuning epochs.
        budget: the budget's overrides.

    Returns:
        the result row (see :py:data:`_FIELDS`): the best value of the bundle's key validation metric.
    """
    runs = output_dir / "finetune" / task / method / f"fraction{fraction:g}_seed{seed}"
    done = runs / "result.json"
    result = _read_json(done)
    if result is not None:
        return result
    dataset_dir = data["btcv"] if task == "dae_btcv_seg" else data["brats"]
    start = time.perf_counter()
    workflow = run_workflow(
        "train.json", "train", bundle_configs(task), dataset_dir=dataset_dir, bundle_root=str(runs),
        pretrained_path=weights, train_fraction=fraction, seed=seed, max_epochs=epochs, val_interval=1,
        overwrite=True, **budget[task],
    )
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    metric = evaluator.state.key_metric_name
    value = float(evaluator.state.best_metric)
    workflow.finalize()
    result = {"task": task, "metric": metric, "method": method, "fraction": fraction, "seed": seed,
              "value": value, "seconds": round(time.perf_counter() - start, 1)}
    write_json_atomically(result, str(done))
    return result


def summarise(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    Args:
        results: the result rows.

    Returns:
        per task, method and fraction: ``{"task", "metric", "method", "fraction", "mean", "std", "runs"}``, in the
        order of the tasks, the methods and the fractions.
    """
    groups: dict[tuple, list[float]] = {}
    for row in results:
        key = (row["task"], row["metric"], row["method"], float(row["fraction"]))
        groups.setdefault(key, []).append(float(row["value"]))
    return [
        {"task": t, "metric": m, "method": method, "fraction": f, "mean": float(np.mean(v)), "std": float(np.std(v)),
         "runs": len(v)}
        for (t, m, method, f), v in groups.items()
    ]


def markdown_table(summary: Sequence[dict[str, Any]], header: str = "") -> str:
    """
    Args:
        summary: the rows of :py:func:`summarise`.
        header: a paragraph above the tables (the command and the budget).

    Returns:
        per task a Markdown table: one row per method, one column per fraction, ``mean ± std (runs)``.
    """
    lines = [header, ""] if header else []
    for task in dict.fromkeys(r["task"] for r in summary):
        rows = [r for r in summary if r["task"] == task]
        fractions = sorted({r["fraction"] for r in rows})
        metric = rows[0]["metric"]
        lines += [f"### {TASKS.get(task, task)}: {metric}", ""]
        lines.append("| method | " + " | ".join(f"{100 * f:g}% labelled" for f in fractions) + " |")
        lines.append("|---|" + "---|" * len(fractions))
        for method in dict.fromkeys(r["method"] for r in rows):
            cells = []
            for f in fractions:
                found = [r for r in rows if r["method"] == method and r["fraction"] == f]
                cells.append(f"{found[0]['mean']:.3f} ± {found[0]['std']:.3f} ({found[0]['runs']})" if found else "")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def compare(
    output_dir: str = "runs/compare",
    data_dir: str | None = None,
    methods: Sequence[str] = METHODS,
    tasks: Sequence[str] = tuple(TASKS),
    fractions: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
    seeds: Sequence[int] = (0, 1, 2),
    budget: str = "small",
    pretrain_epochs: int = 2,
    finetune_epochs: int = 2,
    progress: bool | None = None,
) -> str:
    """
    Pretrain every method, fine-tune every task from each for every fraction and seed, and write the results,
    the tables and the figure.

    Args:
        output_dir: the comparison folder.
        data_dir: the data folder (see the module description); None: the sample data under ``output_dir/data``.
        methods: methods to compare (overlays of ``dae_pretrain``, and "scratch").
        tasks: fine-tuning bundles ("dae_btcv_seg", "dae_brats_cls").
        fractions: labelled fractions of the fine-tuning training data, in (0, 1].
        seeds: fine-tuning seeds (labelled subset and initialisation); the error bars are over them.
        budget: "small" (feature size 12, 64^3 crops) or "bundle" (the bundles' sizes).
        pretrain_epochs: epochs of every pretraining (the same budget for every method).
        finetune_epochs: epochs of every fine-tuning.
        progress: progress bars (None: on a terminal).

    Returns:
        the path of ``comparison.md``.
    """
    from monai_dae.figures import plot_label_efficiency
    from monai_dae.utils import pretext_methods, progress_enabled

    overlays = pretext_methods(str(bundle_configs("dae_pretrain").parent))
    unknown = [m for m in methods if m != "scratch" and m not in overlays]
    if unknown:
        raise ValueError(f"unknown methods {unknown}: the pretraining overlays are {overlays} (and 'scratch').")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or budget not in BUDGETS or not all(0 < float(f) <= 1 for f in fractions):
        raise ValueError(f"tasks must be among {list(TASKS)}, budget one of {list(BUDGETS)} and fractions in (0, 1]; "
                         f"got tasks {list(tasks)}, budget '{budget}', fractions {list(fractions)}.")
    output = Path(output_dir).resolve()
    settings = BUDGETS[budget]
    data = prepare_data(data_dir, output, progress)
    show = progress_enabled(progress)
    overrides = {"num_workers": 2, "progress_bar": show}
    for key in ("pretrain", *TASKS):
        settings = {**settings, key: {**overrides, **settings[key]}}
    runs = [(t, m, float(f), int(s)) for m in methods for t in tasks for f in fractions for s in seeds]
    print(f"{len(methods)} methods ({', '.join(methods)}), {len(runs)} fine-tuning runs, budget '{budget}': "
          f"{pretrain_epochs} pretraining and {finetune_epochs} fine-tuning epochs; outputs under {output}", flush=True)
    weights = {"scratch": ""}
    for method in methods:
        if method != "scratch":
            weights[method] = pretrain(method, data, output, pretrain_epochs, settings, seed=0)
            print(f"pretrained {method}: {weights[method]}", flush=True)
    results = []
    for index, (task, method, fraction, seed) in enumerate(runs, start=1):
        row = finetune(task, method, weights[method], fraction, seed, data, output, finetune_epochs, settings)
        results.append(row)
        print(f"[{index}/{len(runs)}] {task} {method} {100 * fraction:g}% seed {seed}: {row['metric']} "
              f"{row['value']:.4f} ({row['seconds']:.0f} s)", flush=True)
    with open(output / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_FIELDS)
        writer.writeheader()
        writer.writerows({k: r[k] for k in _FIELDS} for r in results)
    summary = summarise(results)
    with open(output / "comparison.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    seconds = sum(r["seconds"] for r in results) + sum(
        (_read_json(output / "pretrain" / m / "result.json") or {}).get("seconds", 0.0) for m in methods if m != "scratch")
    header = (f"Budget '{budget}': {pretrain_epochs} pretraining epochs per method, {finetune_epochs} fine-tuning epochs "
              f"per run; labelled fractions {', '.join(f'{100 * float(f):g}%' for f in fractions)}; seeds "
              f"{', '.join(str(s) for s in seeds)}; data {data_dir or 'the synthetic sample data'}; "
              f"{math.ceil(seconds / 60)} min of training in all. Mean ± standard deviation over seeds (runs).")
    table = output / "comparison.md"
    table.write_text("# Pretext comparison\n\n" + markdown_table(summary, header))
    plot_label_efficiency(results, str(output / "label_efficiency.png"), {t: TASKS[t] for t in tasks},
                          f"label efficiency, budget '{budget}' ({pretrain_epochs} + {finetune_epochs} epochs), "
                          f"{data_dir or 'synthetic sample data'}")
    print(f"table: {table}\nfigure: {output / 'label_efficiency.png'}", flush=True)
    return str(table)


if __name__ == "__main__":
    fire.Fire(compare)
