"""
Sections ``train_step``, ``flops`` and ``scaling``: training samples per second of the baseline
(:py:mod:`tools.benchmarks.authors`) and of this project's step (:py:mod:`tools.benchmarks.ours`) with each
speed lever; model FLOPs, achieved fraction of the measured matmul rate and peak memory per config; samples per
second against the batch size (GPU only). The named configs live here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from tools.benchmarks.authors import AuthorsStep
from tools.benchmarks.common import (
    NOT_MEASURED_NO_GPU,
    PeakMemory,
    Report,
    Settings,
    free_memory,
    matmul_rate,
    median,
    time_calls,
)
from tools.benchmarks.ours import Levers, OursStep

ALL_CONFIGS: dict[str, Levers | None] = {
    "baseline": None,
    "ours_fp32": Levers(),
    "ours_bf16": Levers(bf16=True),
    "ours_fused_adamw": Levers(fused=True),
    "ours_channels_last": Levers(channels_last=True),
    "ours_compile": Levers(compile=True),
    "ours_checkpoint": Levers(checkpoint=True),
    "ours_best": Levers(bf16=True, fused=True, channels_last=True, compile=True),
    "ours_best_checkpoint": Levers(bf16=True, fused=True, channels_last=True, compile=True, checkpoint=True),
}


def resolve_levers(name: str, allow_compile: bool) -> Levers | None:
    """The levers of config ``name``, without torch.compile unless ``allow_compile`` (None: the baseline)."""
    levers = ALL_CONFIGS[name]
    if levers is not None and not allow_compile and levers.compile:
        levers = Levers(levers.bf16, levers.fused, levers.channels_last, False, levers.checkpoint)
    return levers


def best_levers(allow_compile: bool) -> Levers:
    """The levers of ``ours_best`` (torch.compile only if ``allow_compile``)."""
    return resolve_levers("ours_best", allow_compile)


CPU_CONFIGS = ("baseline", "ours_fp32", "ours_bf16", "ours_best")
"""Default configs on a CPU, where one full-size step takes tens of seconds (others with ``--configs``)."""
QUICK_CONFIGS = ("baseline", "ours_fp32", "ours_best")


def default_configs(device: torch.device, allow_compile: bool, quick: bool = False) -> tuple[str, ...]:
    """
    Args:
        device: the benchmark device.
        allow_compile: whether torch.compile configs apply.
        quick: --quick mode.

    Returns:
        the training configs measured when ``--configs`` is not given.
    """
    if quick:
        return QUICK_CONFIGS
    if device.type != "cuda":
        return CPU_CONFIGS
    names = list(ALL_CONFIGS)
    if not allow_compile:
        names.remove("ours_compile")
    return tuple(names)


def bench_train_step(s: Settings, device: torch.device, report: Report, allow_compile: bool,
                     count_flops: bool) -> None:
    """(b) Training samples/s of the baseline and of our step per lever; FLOPs counted on the first warm-up."""
    from torch.utils.flop_counter import FlopCounterMode

    results: dict[str, Any] = {"feature_size": s.feature_size, "roi": s.roi, "batch_size": s.batch_size,
                               "warmup": s.warmup, "iters": s.iters, "configs": {}}
    names = s.configs or default_configs(device, allow_compile, s.quick)
    if "baseline" not in names:
        names = ("baseline", *names)
    for name in names:
        levers = resolve_levers(name, allow_compile)
        free_memory(device)
        counter: dict[str, FlopCounterMode] = {}

        def flop_wrapper() -> contextlib.AbstractContextManager:
            counter["mode"] = FlopCounterMode(display=False)
            return counter["mode"]

        use_counter = count_flops and (levers is None or not levers.compile)
        print(f"[train_step] {name} ...", flush=True)
        with PeakMemory(device) as peak:
            t_build = time.perf_counter()
            if levers is None:
                runner: Callable[[], None] = AuthorsStep(s.feature_size, s.batch_size, s.roi, device)
            else:
                runner = OursStep(s.feature_size, s.batch_size, s.roi, device, levers)
            t_build = time.perf_counter() - t_build
            t0 = time.perf_counter()
            times = time_calls(runner, device, s.warmup, s.iters, flop_wrapper if use_counter else None)
            t_total = time.perf_counter() - t0
        median_s = median(times)
        entry = {"levers": None if levers is None else asdict(levers), "times_s": times, "median_s": median_s,
                 "samples_per_s": s.batch_size / median_s, "peak_memory_gib": peak.peak_gib,
                 "peak_memory_kind": peak.kind, "warmup_and_timed_s": t_total, "build_s": t_build,
                 "flops_per_step": counter["mode"].get_total_flops() if "mode" in counter else None}
        results["configs"][name] = entry
        del runner
        print(f"[train_step] {name}: {median_s:.3f} s/step, {entry['samples_per_s']:.3f} samples/s", flush=True)
    base = results["configs"]["baseline"]["samples_per_s"]
    for name, entry in results["configs"].items():
        entry["speedup_vs_baseline"] = entry["samples_per_s"] / base
        lev = entry["levers"]
        note = "authors' step, fp32" if lev is None else "+".join(k for k, v in lev.items() if v) or "fp32, no lever"
        report.add("train_step", name, entry["samples_per_s"], "samples/s", entry["speedup_vs_baseline"],
                   "x baseline samples/s (higher is better)",
                   f"{note}; {entry['median_s']:.3g} s/step (median of {len(entry['times_s'])})")
    report.sections["train_step"] = results


def bench_flops(s: Settings, device: torch.device, report: Report) -> None:
    """(c) Model FLOPs of one step, achieved fraction of the measured matmul rate, peak memory per config."""
    train = report.sections.get("train_step")
    rates = {"bf16": matmul_rate(device, torch.bfloat16, s.matmul_size if device.type == "cpu" else 8192)}
    if device.type == "cpu":
        rates["fp32"] = matmul_rate(device, torch.float32, s.matmul_size)
    results: dict[str, Any] = {"matmul_flop_s": rates, "configs": {}}
    for dtype, rate in rates.items():
        report.add("flops", f"measured {dtype} matmul rate", rate / 1e12, "TFLOP/s", None, "",
                   f"{s.matmul_size if device.type == 'cpu' else 8192}^2 matmul")
    if train is None:
        report.sections["flops"] = results
        report.add("flops", "model FLOPs per step", None, "GFLOP", None, "", "run with the train_step section")
        return
    counted = {n: e["flops_per_step"] for n, e in train["configs"].items() if e["flops_per_step"]}
    # model FLOPs (MFU convention): the eager fp32 step of ours; recomputation (checkpointing) is not counted
    step_flops = counted.get("ours_fp32") or next((f for n, f in counted.items() if n != "baseline"), None)
    results["ours_flops_per_step"] = step_flops
    results["baseline_flops_per_step"] = counted.get("baseline")
    results["counted_flops_per_step"] = counted
    if step_flops:
        report.add("flops", "model FLOPs per training step (ours)", step_flops / 1e9, "GFLOP", None, "",
                   f"forward+backward, batch {s.batch_size}; {step_flops / s.batch_size / 1e9:.1f} GFLOP/sample")
    if results["baseline_flops_per_step"]:
        report.add("flops", "model FLOPs per training step (baseline)", results["baseline_flops_per_step"] / 1e9,
                   "GFLOP", None, "", "same trunk; no projection head")
    for name, entry in train["configs"].items():
        flops = results["baseline_flops_per_step"] if name == "baseline" else step_flops
        if not flops:
            continue
        achieved = flops / entry["median_s"]
        fractions = {dt: achieved / r for dt, r in rates.items()}
        results["configs"][name] = {"achieved_flop_s": achieved, "fraction_of_matmul": fractions,
                                    "peak_memory_gib": entry["peak_memory_gib"]}
        frac_note = ", ".join(f"{100 * f:.1f}% of {dt} matmul" for dt, f in fractions.items())
        report.add("flops", f"{name} achieved", achieved / 1e12, "TFLOP/s", fractions["bf16"],
                   "fraction of measured bf16 matmul rate", frac_note)
        mem = entry["peak_memory_gib"]
        report.add("flops", f"{name} peak memory", mem, "GiB",
                   None if not mem or not train["configs"]["baseline"]["peak_memory_gib"]
                   else mem / train["configs"]["baseline"]["peak_memory_gib"],
                   "x baseline peak memory (lower is better)", entry["peak_memory_kind"])
    report.sections["flops"] = results


def bench_scaling(s: Settings, device: torch.device, report: Report, allow_compile: bool) -> None:
    """(d) Samples/s of our best configuration at batch 2, 4, 8 (GPU only)."""
    if device.type != "cuda":
        for b in s.scaling_batches:
            report.add("scaling", f"ours_best batch {b}", None, "samples/s", None, "", NOT_MEASURED_NO_GPU)
        report.sections["scaling"] = {"measured": False, "reason": NOT_MEASURED_NO_GPU}
        return
    levers = best_levers(allow_compile)
    batches, warmup = s.scaling_batches, s.warmup
    results: dict[str, Any] = {"measured": True, "levers": asdict(levers), "batches": {}}
    for b in batches:
        free_memory(device)
        print(f"[scaling] batch {b} ...", flush=True)
        with PeakMemory(device) as peak:
            runner = OursStep(s.feature_size, b, s.roi, device, levers)
            times = time_calls(runner, device, warmup, s.iters)
        del runner
        results["batches"][b] = {"median_s": median(times), "samples_per_s": b / median(times),
                                 "peak_memory_gib": peak.peak_gib}
    ref = results["batches"][batches[0]]["samples_per_s"]
    for b, e in results["batches"].items():
        report.add("scaling", f"ours_best batch {b}", e["samples_per_s"], "samples/s", e["samples_per_s"] / ref,
                   f"x batch {batches[0]} samples/s", f"peak {e['peak_memory_gib']:.2f} GiB"
                   if e["peak_memory_gib"] else "")
    report.sections["scaling"] = results
