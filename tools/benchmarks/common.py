"""
What every section of the benchmark shares: the run's sizes (:py:class:`Settings`), timing with warm-up and GPU
synchronisation, peak memory, the measured matmul rate, the machine description, the results table
(:py:class:`Report`) and the JSON file.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import monai
import numpy as np
import torch

MODALITIES = ("ct", "t1", "t1ce", "t2", "flair")
NOT_MEASURED_NO_GPU = "not measured (no GPU on this machine)"


# =============================================================================================================
# Measurement helpers
# =============================================================================================================


def sync(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int,
               first_call_wrapper: Callable[[], contextlib.AbstractContextManager] | None = None) -> list[float]:
    """
    Time ``fn`` after ``warmup`` untimed calls, synchronising the GPU around every timed call.

    Args:
        fn: the callable.
        device: device to synchronise.
        warmup: untimed calls first.
        iters: timed calls.
        first_call_wrapper: a context manager factory wrapped around the first warm-up call (FLOP counting).

    Returns:
        seconds per timed call.
    """
    for i in range(warmup):
        with first_call_wrapper() if (i == 0 and first_call_wrapper) else contextlib.nullcontext():
            fn()
    sync(device)
    times = []
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def median(values: Sequence[float]) -> float:
    """The median as a float."""
    return float(statistics.median(values))


def free_memory(device: torch.device) -> None:
    """Collect garbage and return the cached GPU memory, between measurements."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class PeakMemory:
    """Peak memory of a block: CUDA max allocated on a GPU, the process's peak RSS (VmHWM, reset) on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_gib: float | None = None
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "process_peak_rss"

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_gib = torch.cuda.max_memory_allocated(self.device) / 2**30
        else:
            try:
                with open("/proc/self/status") as f:
                    kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
                self.peak_gib = kib / 2**20
            except (OSError, StopIteration):
                self.peak_gib = None


def machine_description(device: torch.device) -> dict[str, Any]:
    """
    Args:
        device: the benchmark device.

    Returns:
        CPU model, core count, threads, versions, GPU name (or "none"), load average, date.
    """
    cpu_model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu_model": cpu_model,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "gpu": gpu,
        "device": str(device),
        "load_average_start": list(os.getloadavg()),
    }


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, iters: int = 5) -> float:
    """
    Measured dense matmul rate.

    Args:
        device: device.
        dtype: operand dtype.
        n: square matrix size.
        iters: timed products (median).

    Returns:
        FLOP/s.
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = time_calls(lambda: a @ b, device, warmup=2, iters=iters)
    return 2 * n**3 / median(times)


# =============================================================================================================
# Settings and the report
# =============================================================================================================


@dataclass
class Settings:
    """Sizes of one benchmark run (full or ``--quick``)."""

    feature_size: int = 48
    roi: int = 96
    batch_size: int = 2
    warmup: int = 1
    iters: int = 2
    disruption_repeats: int = 30
    copy_repeats: int = 200
    matmul_size: int = 2048
    scaling_batches: tuple[int, ...] = (2, 4, 8)
    pipeline_num_ct: int = 4
    pipeline_num_brain: int = 2
    pipeline_ct_shape: tuple[int, ...] = (128, 128, 96)
    pipeline_brain_shape: tuple[int, ...] = (112, 112, 96)
    pipeline_batches: int = 20
    pipeline_busy_steps: int = 10
    sw_source_shape: tuple[int, ...] = (512, 512, 150)
    sw_source_spacing: tuple[float, ...] = (0.75, 0.75, 2.0)
    sw_target_spacing: tuple[float, ...] = (1.5, 1.5, 2.0)
    sw_cpu_shape: tuple[int, ...] = (144, 96, 96)
    sw_roi: int | None = None
    sw_overlap: float = 0.5
    sw_batch_sizes: tuple[int, ...] = (1, 4)
    sw_cpu_batch_sizes: tuple[int, ...] = (1, 2)
    sw_out_channels: int = 14
    data_dir: str | None = None
    data_volumes: int = 24
    data_shape: tuple[int, ...] = (160, 160, 128)
    data_roi: int = 96
    data_workers: tuple[int, ...] = (0, 1, 2)
    memory_sizes: tuple[int, ...] = (100, 1000, 10000)
    memory_shape: tuple[int, ...] = (48, 48, 32)
    memory_roi: int = 32
    configs: tuple[str, ...] = ()
    quick: bool = False
    notes: list[str] = field(default_factory=list)


def quick_settings() -> Settings:
    """
    Tiny sizes (feature size 12, 64^3 crops, a one-window inference case, 1 warm-up + 1 timed step, three
    training configs) so that the code paths cannot rot; the figures mean nothing.
    """
    return Settings(feature_size=12, roi=64, batch_size=2, warmup=1, iters=1, disruption_repeats=5,
                    copy_repeats=50, matmul_size=512, scaling_batches=(2, 4, 8), pipeline_num_ct=2,
                    pipeline_num_brain=2, pipeline_ct_shape=(64, 64, 32), pipeline_brain_shape=(48, 48, 40),
                    pipeline_batches=4, pipeline_busy_steps=2, sw_cpu_shape=(64, 64, 64), sw_cpu_batch_sizes=(1,),
                    data_volumes=4, data_shape=(40, 40, 32), data_roi=32, data_workers=(0, 1), memory_sizes=(8, 16),
                    memory_shape=(40, 40, 32), quick=True)


class Report:
    """Rows of the results table and the raw results of each section."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.sections: dict[str, Any] = {}

    def add(self, section: str, name: str, value: float | None, unit: str, ratio: float | None = None,
            reference: str = "", note: str = "") -> None:
        """
        Args:
            section: section name.
            name: what was measured.
            value: the figure (None: not measured, see note).
            unit: its unit.
            ratio: the figure against ``reference`` measured in the same run.
            reference: what the ratio is against and how to read it.
            note: free text.
        """
        self.rows.append({"section": section, "name": name, "value": value, "unit": unit, "ratio": ratio,
                          "reference": reference, "note": note})

    def table(self) -> str:
        """The rows as a text table with aligned columns."""
        header = ("section", "measurement", "value", "unit", "ratio", "ratio against", "note")
        lines = [header]
        for r in self.rows:
            value = "-" if r["value"] is None else format_value(r["value"])
            ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
            lines.append((r["section"], r["name"], value, r["unit"], ratio, r["reference"], r["note"]))
        widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
        out = []
        for k, line in enumerate(lines):
            out.append(" | ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
            if k == 0:
                out.append("-+-".join("-" * w for w in widths))
        return "\n".join(out)


def format_value(v: float) -> str:
    """A table figure: three significant digits, no exponent above 1."""
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def json_default(obj: Any) -> Any:
    """JSON form of what ``json`` cannot write: NumPy scalars, tuples (as lists), anything else as text."""
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    return str(obj)


def write_json(results: dict[str, Any], path: str) -> None:
    """
    Write the results of a run, creating the folder.

    Args:
        results: the results dictionary.
        path: the JSON file.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2, default=json_default)
