"""
Section ``disruption``: per-volume cost of the disruption transforms on the CPU, against the memory-bandwidth
floor (a plain copy of a float32 volume of the crop size, measured in the same run).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import monai
import torch
import torch.nn.functional as F

from monai_dae.transforms import RandAdditiveGaussianNoise, RandDAEDisruption, RandLowResolution
from tools.benchmarks.common import Report, Settings, median, time_calls

def bench_disruption(s: Settings, report: Report) -> None:
    """
    (a) Per-volume CPU cost of the disruptions against a plain copy of the same volume (same run), on one
    thread: the cost one loader worker pays per sample, and free of the thread-pool barriers that dominate
    millisecond-scale ops when other processes share the cores.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _bench_disruption(s, report)
    finally:
        torch.set_num_threads(threads)


def _bench_disruption(s: Settings, report: Report) -> None:
    cpu = torch.device("cpu")
    shape = (1, 1, s.roi, s.roi, s.roi)
    vol = torch.rand(shape)
    dst = torch.empty_like(vol)
    # micro-benchmarks: the table uses the best of N (robust when other processes share the cores), the JSON
    # keeps the median too
    copy_times = time_calls(lambda: dst.copy_(vol), cpu, warmup=10, iters=s.copy_repeats)
    t_copy = min(copy_times)
    # streaming bandwidth (far beyond the caches) for context
    big = torch.empty(64 * 2**20 // 4 * 4)  # 256 MiB
    big_dst = torch.empty_like(big)
    t_big = min(time_calls(lambda: big_dst.copy_(big), cpu, warmup=1, iters=5))
    stream_gbs = 2 * big.numel() * 4 / t_big / 1e9
    del big, big_dst
    vol_bytes = vol.numel() * 4
    results: dict[str, Any] = {"volume_shape": list(shape[2:]), "copy_s": t_copy,
                               "copy_median_s": median(copy_times), "statistic": "min of repeats", "threads": 1,
                               "per_volume_median_s": {},
                               "copy_gb_s": 2 * vol_bytes / t_copy / 1e9, "stream_copy_gb_s": stream_gbs,
                               "stream_floor_s": 2 * vol_bytes / (stream_gbs * 1e9), "per_volume_s": {}}
    report.add("disruption", f"plain copy {s.roi}^3 float32 (floor)", t_copy * 1e3, "ms/volume", 1.0,
               "copy floor", f"{results['copy_gb_s']:.1f} GB/s; streaming copy {stream_gbs:.1f} GB/s; "
               f"best of {s.copy_repeats} (median {results['copy_median_s'] * 1e3:.3g} ms)")

    report.add("disruption", f"streaming-copy floor for {s.roi}^3 float32", results["stream_floor_s"] * 1e3,
               "ms/volume", results["stream_floor_s"] / t_copy, "x copy floor",
               f"2 x {vol_bytes / 2**20:.2f} MiB at the {stream_gbs:.1f} GB/s of a 256 MiB copy (beyond the caches)")
    batch = torch.rand((s.batch_size, *shape[1:]))

    def authors_disruption() -> torch.Tensor:
        b = batch
        noisy = b + (0.1**0.5) * torch.randn(b.shape)
        low = F.interpolate(noisy, size=tuple(int(d / 4) for d in b.shape[2:]))
        return F.interpolate(low, size=tuple(b.shape[2:]))

    transforms: dict[str, tuple[Callable[[], Any], int]] = {}
    for mode in ("nearest", "trilinear"):
        label = "nearest, bundle default" if mode == "nearest" else "trilinear, the paper's option"
        t = RandDAEDisruption(downsample_mode=mode, upsample_mode=mode, batched=True).set_random_state(0)
        transforms[f"ours RandDAEDisruption batched ({label})"] = (lambda t=t: t(batch), s.batch_size)
        u = RandDAEDisruption(downsample_mode=mode, upsample_mode=mode).set_random_state(0)
        transforms[f"ours RandDAEDisruption per sample ({label})"] = (lambda u=u: u(vol[0]), 1)
    noise = RandAdditiveGaussianNoise(batched=True).set_random_state(0)
    transforms["ours noise only"] = (lambda: noise(batch), s.batch_size)
    for mode in ("trilinear", "nearest"):
        low = RandLowResolution(downsample_mode=mode, upsample_mode=mode, batched=True).set_random_state(0)
        transforms[f"ours low resolution only ({mode})"] = (lambda low=low: low(batch), s.batch_size)
    transforms["authors' disruption (host randn, nearest)"] = (authors_disruption, s.batch_size)
    monai_noise = monai.transforms.RandGaussianNoise(prob=1.0, std=0.1**0.5, sample_std=False)
    monai_noise.set_random_state(0)
    transforms["MONAI RandGaussianNoise (NumPy) reference"] = (lambda: monai_noise(vol[0]), 1)
    for name, (fn, n) in transforms.items():
        times = time_calls(fn, cpu, warmup=2, iters=s.disruption_repeats)
        t = min(times) / n
        results["per_volume_s"][name] = t
        results["per_volume_median_s"][name] = median(times) / n
        report.add("disruption", name, t * 1e3, "ms/volume", t / t_copy, "x copy floor (lower is better)",
                   f"{t / results['stream_floor_s']:.1f}x the streaming floor; best of {s.disruption_repeats} "
                   f"(median {results['per_volume_median_s'][name] * 1e3:.3g} ms)")
    report.sections["disruption"] = results
