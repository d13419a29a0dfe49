"""
Section ``pipeline``: the real input pipeline of the ``dae_pretrain`` bundle (NIfTI from disk, CacheDataset,
crops, ThreadDataLoader, disruptions in ``prepare_batch``) against what training consumes, and the GPU busy
fraction with the real loader.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import torch

from monai_dae.engines import PretextPrepareBatch
from tools.benchmarks.common import NOT_MEASURED_NO_GPU, Report, Settings, median, sync, time_calls
from tools.benchmarks.ours import OursStep
from tools.benchmarks.storage import pipeline_parser
from tools.benchmarks.training import best_levers


def _bundle_loader(dataset_dir: str, s: Settings, device: torch.device, num_workers: int):
    """The dae_pretrain bundle's own train dataset, ThreadDataLoader and prepare_batch, parsed from its DAE configs."""
    parser = pipeline_parser(os.path.join(dataset_dir, "datalist_pretrain.json"), "memory", s.roi, s.batch_size,
                             num_workers)
    parser["device"] = f"$torch.device('{device}')"
    dataset = parser.get_parsed_content("train#dataset")
    loader = parser.get_parsed_content("train#dataloader")
    prepare = parser.get_parsed_content("train#prepare_batch")
    return parser, dataset, loader, prepare


def _gpu_crop_loader(dataset_dir: str, s: Settings, device: torch.device, parser):
    """Variant: deterministic transforms cached on the host, the random crop and everything after it on the device."""
    from monai.data import CacheDataset, ThreadDataLoader
    from monai.transforms import Compose, EnsureTyped, RandSpatialCropd

    deterministic = parser.get_parsed_content("deterministic_transforms", instantiate=True)
    data = parser.get_parsed_content("train#data")
    transform = Compose([*deterministic, EnsureTyped(keys="image", device=device, track_meta=False),
                         RandSpatialCropd(keys="image", roi_size=[s.roi] * 3, random_size=False),
                         EnsureTyped(keys="modality_label", track_meta=False)])
    dataset = CacheDataset(data, transform, cache_rate=1.0, num_workers=2, progress=False)
    return ThreadDataLoader(dataset, batch_size=s.batch_size, shuffle=True, drop_last=True, num_workers=0)


def _pull(loader, prepare: PretextPrepareBatch, device: torch.device, n_batches: int) -> float:
    """Seconds to deliver ``n_batches`` prepared (disrupted, on-device) batches, epochs restarting as needed."""
    sync(device)
    t0 = time.perf_counter()
    done = 0
    while done < n_batches:
        for batch in loader:
            prepare(batch, device, non_blocking=True)
            done += 1
            if done >= n_batches:
                break
    sync(device)
    return time.perf_counter() - t0


def bench_pipeline(s: Settings, device: torch.device, report: Report, allow_compile: bool) -> None:
    """(e) Real input pipeline samples/s against training consumption; GPU busy fraction with the real loader."""
    from monai_dae.data.phantoms import write_sample_dataset

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dae_bench_") as tmp:
        t0 = time.perf_counter()
        write_sample_dataset(tmp, num_ct=s.pipeline_num_ct, num_brain=s.pipeline_num_brain, seed=0,
                             ct_shape=s.pipeline_ct_shape, brain_shape=s.pipeline_brain_shape, num_validation=1)
        results["write_dataset_s"] = time.perf_counter() - t0
        num_workers = min(4, os.cpu_count() or 1)
        t0 = time.perf_counter()
        parser, dataset, loader, prepare = _bundle_loader(tmp, s, device, num_workers)
        cache_s = time.perf_counter() - t0
        results.update({"num_volumes": len(dataset), "cache_fill_s": cache_s,
                        "cache_fill_s_per_volume": cache_s / len(dataset), "num_workers": num_workers,
                        "ct_shape": list(s.pipeline_ct_shape), "brain_shape": list(s.pipeline_brain_shape)})
        _pull(loader, prepare, device, 2)  # warm-up
        t = _pull(loader, prepare, device, s.pipeline_batches)
        results["bundle_loader_samples_per_s"] = s.pipeline_batches * s.batch_size / t
        gpu_loader = _gpu_crop_loader(tmp, s, device, parser)
        _pull(gpu_loader, prepare, device, 2)
        t = _pull(gpu_loader, prepare, device, s.pipeline_batches)
        results["device_crop_loader_samples_per_s"] = s.pipeline_batches * s.batch_size / t

        # what training consumes: the fastest of our configs measured in this run, else measure ours_best
        train = report.sections.get("train_step")
        if train is not None:
            ours = {n: e for n, e in train["configs"].items() if n != "baseline"}
            consumer = max(ours, key=lambda n: ours[n]["samples_per_s"])
            consumption = ours[consumer]["samples_per_s"]
        else:
            consumer = "ours_best"
            runner = OursStep(s.feature_size, s.batch_size, s.roi, device, best_levers(allow_compile))
            consumption = s.batch_size / median(time_calls(runner, device, s.warmup, s.iters))
            del runner
        results.update({"training_consumer": consumer, "training_samples_per_s": consumption})

        busy = None
        if device.type == "cuda":
            runner = OursStep(s.feature_size, s.batch_size, s.roi, device, best_levers(allow_compile))
            fixed = median(time_calls(runner, device, s.warmup, max(s.iters, 3)))
            runner.step(next(iter(loader)))

            def loader_steps() -> None:
                done = 0
                while done < s.pipeline_busy_steps:
                    for batch in loader:
                        runner.step(batch)
                        done += 1
                        if done >= s.pipeline_busy_steps:
                            break

            with_loader = median(time_calls(loader_steps, device, 0, 1)) / s.pipeline_busy_steps
            busy = min(1.0, fixed / with_loader)
            results.update({"step_fixed_batch_s": fixed, "step_with_loader_s": with_loader, "gpu_busy_fraction": busy})
            del runner
    for key, label in (("bundle_loader_samples_per_s", "bundle loader (CPU crop, ThreadDataLoader) + disruption"),
                       ("device_crop_loader_samples_per_s", f"cached, crop+disruption on {device.type}")):
        results[key.replace("samples_per_s", "ratio_to_training")] = results[key] / consumption
        report.add("pipeline", label, results[key], "samples/s", results[key] / consumption,
                   f"x training consumption ({consumer}, {consumption:.3g} samples/s)",
                   f"{results['num_volumes']} volumes from NIfTI; cache fill "
                   f"{results['cache_fill_s_per_volume']:.2f} s/volume")
    if busy is None:
        report.add("pipeline", "GPU busy fraction with the real loader", None, "fraction", None, "",
                   NOT_MEASURED_NO_GPU)
    else:
        report.add("pipeline", "GPU busy fraction with the real loader", busy, "fraction", busy,
                   "step time on a resident batch / step time fed by the loader")
    report.sections["pipeline"] = results
