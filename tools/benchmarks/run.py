"""
The benchmark run: settings from the command line, the sections in order, one table of ratios with the machine
description, the JSON file. ``python -m tools.benchmark`` is its command line.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from monai_dae.progress import progress_enabled

from tools.benchmarks.common import Report, Settings, free_memory, machine_description, quick_settings, write_json
from tools.benchmarks.disruption import bench_disruption
from tools.benchmarks.inference import bench_inference
from tools.benchmarks.pipeline import bench_pipeline
from tools.benchmarks.storage import bench_data_formats, bench_data_memory, markdown_tables, write_data_figure
from tools.benchmarks.training import ALL_CONFIGS, bench_flops, bench_scaling, bench_train_step

SECTIONS = ("disruption", "train_step", "flops", "scaling", "pipeline", "inference", "data_formats", "data_memory")
MARKDOWN_SECTIONS = ("data_formats", "data_memory")


def _as_tuple(value: Any) -> tuple[str, ...]:
    """A comma-separated string or a sequence (fire passes either) as a tuple of names."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(str(v).strip() for v in value)


def main(
    quick: bool = False,
    only: str | Sequence[str] | None = None,
    output_json: str | None = None,
    device: str | None = None,
    configs: str | Sequence[str] | None = None,
    compile: bool | None = None,
    feature_size: int | None = None,
    roi: int | None = None,
    batch_size: int | None = None,
    warmup: int | None = None,
    iters: int | None = None,
    sw_cpu_shape: Sequence[int] | None = None,
    seed: int = 0,
    progress: bool | None = None,
    output_figure: str | None = None,
    output_markdown: str | None = None,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """
    Run the benchmark sections, print one table of ratios and the machine description, optionally save JSON.

    Args:
        quick: tiny sizes (feature size 12, 64^3 crops, 1 warm-up + 1 timed step, baseline / ours_fp32 /
            ours_best) to keep the code paths alive.
        only: comma-separated sections to run (default all): disruption, train_step, flops, scaling, pipeline,
            inference, data_formats, data_memory.
        output_json: write all results and the table rows to this path.
        device: "cpu", "cuda" or "cuda:N" (default: cuda when available).
        configs: comma-separated training configs to measure (default all that apply); the baseline is always
            measured. Names: baseline, ours_fp32, ours_bf16, ours_fused_adamw, ours_channels_last,
            ours_compile, ours_checkpoint, ours_best, ours_best_checkpoint.
        compile: allow torch.compile (default: on a GPU outside --quick; compile takes minutes on a CPU).
        feature_size: override the Swin UNETR feature size (48; quick 12).
        roi: override the crop size (96; quick 64).
        batch_size: override the batch size (2).
        warmup: override the warm-up iterations of the training step (1 on a CPU, 3 on a GPU).
        iters: override the timed iterations of the training step (2 on a CPU, 10 on a GPU).
        sw_cpu_shape: volume shape of the CPU sliding-window case.
        seed: seed of Python, NumPy and torch.
        progress: a progress bar over the sections (default: when stderr is a terminal).
        output_figure: write a bar chart of the table's ratios (PNG) to this path; default next to
            ``output_json`` (same name, ``.png``), none without ``output_json``.
        output_markdown: write the tables of the data sections (throughput per store and worker count, peak RSS
            by corpus size) as Markdown to this path (the ``dae_pretrain`` bundle's ``docs/data_pipeline.md``),
            and their figure next to it (same name, ``.png``).
        data_dir: folder of the data sections' synthetic corpora and caches (default: the system temporary
            folder); point it at the disk the real corpus lives on.

    Returns:
        the results dictionary (also written to ``output_json``).
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    s = quick_settings() if quick else Settings()
    if dev.type == "cuda" and not quick:  # steps take well under a second: more warm-up (compile) and samples
        s.warmup, s.iters = 3, 10
    for key, value in (("feature_size", feature_size), ("roi", roi), ("batch_size", batch_size),
                       ("warmup", warmup), ("iters", iters)):
        if value is not None:
            setattr(s, key, int(value))
    if sw_cpu_shape is not None:
        s.sw_cpu_shape = tuple(int(v) for v in sw_cpu_shape)
    s.data_dir = data_dir
    s.configs = _as_tuple(configs)
    unknown = set(s.configs) - set(ALL_CONFIGS)
    if unknown:
        raise ValueError(f"unknown configs {sorted(unknown)}; known: {list(ALL_CONFIGS)}")
    sections = _as_tuple(only) or SECTIONS
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; known: {list(SECTIONS)}")
    if output_markdown and not set(sections) & set(MARKDOWN_SECTIONS):
        raise ValueError(f"--output_markdown writes the tables of the sections {list(MARKDOWN_SECTIONS)}; run one.")
    allow_compile = (dev.type == "cuda" and not quick) if compile is None else bool(compile)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True

    machine = machine_description(dev)
    report = Report()
    t_start = time.perf_counter()
    section_s: dict[str, float] = {}
    chosen = [name for name in SECTIONS if name in sections]
    for name in tqdm(chosen, desc="benchmark", unit="section", disable=not progress_enabled(progress)):
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        if name == "disruption":
            bench_disruption(s, report)
        elif name == "train_step":
            bench_train_step(s, dev, report, allow_compile, count_flops="flops" in sections)
        elif name == "flops":
            bench_flops(s, dev, report)
        elif name == "scaling":
            bench_scaling(s, dev, report, allow_compile)
        elif name == "pipeline":
            bench_pipeline(s, dev, report, allow_compile)
        elif name == "inference":
            bench_inference(s, dev, report)
        elif name == "data_formats":
            bench_data_formats(s, report)
        elif name == "data_memory":
            bench_data_memory(s, report)
        section_s[name] = time.perf_counter() - t0
        free_memory(dev)
    machine["load_average_end"] = list(os.getloadavg())
    settings = asdict(s)
    settings.update({"device": str(dev), "compile_allowed": allow_compile, "sections": list(sections)})
    results = {"machine": machine, "settings": settings, "command": " ".join([os.path.basename(sys.executable),
               *sys.argv]), "sections": report.sections, "table": report.rows, "section_seconds": section_s,
               "total_seconds": time.perf_counter() - t_start}

    print()
    print(machine_title(machine, dev))
    print(f"train step: feature size {s.feature_size}, {s.roi}^3 crops, batch {s.batch_size}, "
          f"{s.warmup} warm-up + {s.iters} timed (median){'; QUICK sizes' if s.quick else ''}; "
          f"torch.compile {'on' if allow_compile else 'off'}")
    print(report.table())
    print(f"total {results['total_seconds']:.1f} s")
    if output_json:
        write_json(results, output_json)
    if output_markdown:
        os.makedirs(os.path.dirname(os.path.abspath(output_markdown)), exist_ok=True)
        figure = os.path.splitext(output_markdown)[0] + ".png"
        write_data_figure(report.sections, machine_title(machine, dev), figure)
        with open(output_markdown, "w") as f:
            f.write(markdown_tables(report.sections, machine_title(machine, dev),
                                    " ".join(["python -m tools.benchmark", *sys.argv[1:]]), os.path.basename(figure)))
        print(f"tables: {output_markdown}")
    if output_figure is None and output_json:
        output_figure = os.path.splitext(output_json)[0] + ".png"
    if output_figure:
        results["figure"] = write_figure(report.rows, machine_title(machine, dev), output_figure)
    return results


def machine_title(machine: dict[str, Any], device: torch.device) -> str:
    """
    Args:
        machine: the machine description (``machine_description``, with ``load_average_end``).
        device: the measured device.

    Returns:
        the one-line description of the machine printed above the table and written on the figure.
    """
    return (f"DAE benchmark, {machine['date']}: CPU {machine['cpu_model']} ({machine['cpu_cores']} cores, "
            f"{machine['torch_threads']} torch threads), GPU {machine['gpu']}, torch {machine['torch']}, "
            f"MONAI {machine['monai']}; device {device}; load average {machine['load_average_start'][0]:.2f} -> "
            f"{machine['load_average_end'][0]:.2f}")


def write_figure(rows: Sequence[dict[str, Any]], title: str, path: str) -> str | None:
    """
    Draw the ratios of the table (:py:func:`monai_dae.figures.plot_benchmark_ratios`) next to its JSON file.

    Args:
        rows: the table rows.
        title: the machine description.
        path: the PNG file.

    Returns:
        ``path``, or None when no row has a ratio.
    """
    from monai_dae.figures import plot_benchmark_ratios

    if not any(row.get("ratio") is not None for row in rows):
        print("no ratio measured: no figure")
        return None
    plot_benchmark_ratios(rows, path, title)
    print(f"figure: {path}")
    return path
