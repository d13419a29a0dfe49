"""
Section ``inference``: sliding-window inference seconds per case, and the speed-ups of bf16 and
``sw_batch_size``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.nets import SwinUNETR

from tools.benchmarks.common import NOT_MEASURED_NO_GPU, PeakMemory, Report, Settings, median, time_calls

def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    """
    Shape after resampling to ``target`` spacing (same extent).

    Args:
        shape: source shape.
        spacing: source spacing (mm).
        target: target spacing (mm).

    Returns:
        the resampled shape.
    """
    return tuple(int(round(n * a / b)) for n, a, b in zip(shape, spacing, target))


def num_windows(shape: Sequence[int], roi: int, overlap: float) -> int:
    """Number of sliding windows MONAI's ``sliding_window_inference`` evaluates for one case."""
    from monai.inferers.utils import _get_scan_interval
    from monai.data.utils import dense_patch_slices

    image_size = tuple(max(s, roi) for s in shape)
    interval = _get_scan_interval(image_size, (roi,) * len(shape), len(shape), (overlap,) * len(shape))
    return len(dense_patch_slices(image_size, (roi,) * len(shape), interval))


def bench_inference(s: Settings, device: torch.device, report: Report) -> None:
    """(f) Sliding-window inference seconds per case and the bf16 and sw_batch_size speed-ups."""
    from monai.inferers import sliding_window_inference

    roi = s.sw_roi or s.roi
    btcv = resampled_shape(s.sw_source_shape, s.sw_source_spacing, s.sw_target_spacing)
    shape = btcv if device.type == "cuda" else s.sw_cpu_shape
    results: dict[str, Any] = {
        "source_shape": list(s.sw_source_shape), "source_spacing_mm": list(s.sw_source_spacing),
        "target_spacing_mm": list(s.sw_target_spacing), "btcv_resampled_shape": list(btcv),
        "measured_shape": list(shape), "roi": roi, "overlap": s.sw_overlap,
        "windows": num_windows(shape, roi, s.sw_overlap), "btcv_windows": num_windows(btcv, roi, s.sw_overlap),
        "feature_size": s.feature_size, "out_channels": s.sw_out_channels, "variants": {},
    }
    net = SwinUNETR(in_channels=1, out_channels=s.sw_out_channels, feature_size=s.feature_size).to(device).eval()
    volume = torch.rand((1, 1, *shape), device=device)
    sw_sizes = s.sw_batch_sizes if device.type == "cuda" else s.sw_cpu_batch_sizes
    results["sw_batch_sizes"] = list(sw_sizes)
    for bf16 in (False, True):
        for sw in sw_sizes:
            name = f"{'bf16' if bf16 else 'fp32'} sw_batch_size={sw}"
            print(f"[inference] {name} ...", flush=True)

            def run() -> torch.Tensor:
                with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    return sliding_window_inference(volume, roi, sw, lambda x: net(x).float(),
                                                    overlap=s.sw_overlap)

            if not s.quick:
                with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    net(volume[..., : roi, : roi, : roi])  # warm-up of this dtype
            with PeakMemory(device) as peak:
                times = time_calls(run, device, 0 if device.type == "cpu" else 1, 1 if device.type == "cpu" else 3)
            results["variants"][name] = {"s_per_case": median(times), "peak_memory_gib": peak.peak_gib}
    ref_name = f"fp32 sw_batch_size={sw_sizes[0]}"
    ref = results["variants"][ref_name]["s_per_case"]
    where = "BTCV size" if device.type == "cuda" else "CPU small case"
    for name, e in results["variants"].items():
        report.add("inference", f"{name} ({where} {'x'.join(map(str, shape))})", e["s_per_case"], "s/case",
                   ref / e["s_per_case"], f"x {ref_name} speed (higher is better)",
                   f"{results['windows']} windows of {roi}^3, overlap {s.sw_overlap}")
    if device.type != "cuda":
        per_window = min(e["s_per_case"] for e in results["variants"].values()) / results["windows"]
        results["btcv_extrapolated_s_per_case"] = per_window * results["btcv_windows"]
        report.add("inference", f"BTCV size {'x'.join(map(str, btcv))} on CPU, extrapolated", per_window *
                   results["btcv_windows"], "s/case", None, "",
                   f"NOT measured: fastest per-window time x {results['btcv_windows']} windows")
        report.add("inference", f"BTCV size {'x'.join(map(str, btcv))} on GPU", None, "s/case", None, "",
                   NOT_MEASURED_NO_GPU)
    report.sections["inference"] = results
    del net
