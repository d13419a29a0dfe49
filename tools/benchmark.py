"""
Speed benchmark of DAE pretraining and inference, against a re-implementation of the authors' training step.

Sections (``--only`` takes a comma-separated subset):

- ``disruption``: per-volume cost of the disruption transforms on the CPU, against the memory-bandwidth floor
  (a plain copy of a float32 volume of the crop size, measured in the same run).
- ``train_step``: training samples per second of the authors'-style step (:py:func:`authors_style_step`, the
  baseline) and of this project's step (:py:class:`OursStep`) with each lever on its own and all together.
- ``flops``: model FLOPs of one training step (forward + backward, ``torch.utils.flop_counter.FlopCounterMode``)
  and the achieved fraction of the measured matmul rate (bf16; fp32 too on a CPU); peak memory per config.
- ``scaling``: samples per second at batch 2, 4, 8 (GPU only).
- ``pipeline``: the real input pipeline of the ``dae_pretrain`` bundle (NIfTI from disk, CacheDataset, crops,
  ThreadDataLoader, disruptions in ``prepare_batch``) against what training consumes.
- ``inference``: sliding-window inference seconds per case, and the speed-ups of bf16 and ``sw_batch_size``.

Every measurement uses warm-up iterations, reports medians and synchronises the GPU around each timed call.
All ratios are against references measured in the same run; one table is printed with the machine description.

Examples::

    python -m tools.benchmark --quick
    python -m tools.benchmark --only disruption,train_step --output_json bench.json
    python -m tools.benchmark --device cuda --configs baseline,ours_fp32,ours_best
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import fire
import monai
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import SwinUNETR

from monai_dae.engines import DAEPrepareBatch
from monai_dae.losses import DAELoss
from monai_dae.networks import DAESwinUNETR, use_conv_stem
from monai_dae.transforms import RandAdditiveGaussianNoise, RandDAEDisruption, RandLowResolution
from tools.bundle_paths import BUNDLES_DIR

SECTIONS = ("disruption", "train_step", "flops", "scaling", "pipeline", "inference")
MODALITIES = ("ct", "t1", "t1ce", "t2", "flair")
NOT_MEASURED_NO_GPU = "not measured (no GPU on this machine)"


# =============================================================================================================
# Baseline: the authors' training step (DAE/Pretrain_full_contrast, main_runner.py + models/simmim_advanced.py
# of Project-MONAI/research-contributions), re-implemented here for timing only. It is NOT part of the package.
# =============================================================================================================

AUTHORS_CLASS_RANK = {"ct": 0, "t1": 1, "t1ce": 2, "t2": 3, "flair": 4}


def authors_mask_generator(input_size: int, mask_patch_size: int = 16, model_patch_size: int = 2,
                           mask_ratio: float = 0.6) -> np.ndarray:
    """
    The SimMIM token mask the authors' data loader returns with every sample (``MaskGenerator``): int64 on the
    host, one value per patch-embedding token. It is unused by the "all" loss but copied to the device and
    upsampled in every forward pass, so it is part of their step.

    Args:
        input_size: crop size (96).
        mask_patch_size: size of a masked block in voxels.
        model_patch_size: patch size of the network.
        mask_ratio: fraction of masked blocks.

    Returns:
        the mask, shaped (input_size / model_patch_size,) * 3.
    """
    rand_size = input_size // mask_patch_size
    scale = mask_patch_size // model_patch_size
    token_count = rand_size**3
    mask_idx = np.random.permutation(token_count)[: int(np.ceil(token_count * mask_ratio))]
    mask = np.zeros(token_count, dtype=int)
    mask[mask_idx] = 1
    mask = mask.reshape((rand_size,) * 3)
    return mask.repeat(scale, axis=0).repeat(scale, axis=1).repeat(scale, axis=2)


class AuthorsStyleNetwork(nn.Module):
    """
    The authors' pretraining model (``SimMIMSkip`` with ``choice="all"``, ``loss_type="all_img"``) on MONAI's
    Swin UNETR trunk: no LayerNorm on the hidden states; their local masking right after the patch embedding
    (one channel subset per batch from Python's unseeded ``random``, the mask built as a full-size float32
    tensor on the host and copied, as their ``torch.ones(x.shape).cuda()``); the loader's SimMIM mask upsampled
    every forward; L1 over the whole image; and their CMCL: raw dot products of the flattened stage-4 features
    multiplied by ``exp(temperature)``, symmetric cross-entropy against each sample's modality rank in the batch.
    Forward returns ``(loss_recon, loss_cont)`` as theirs does.

    Args:
        feature_size: Swin UNETR feature size.
        mask_ratio: local masking ratio (0.6).
        temperature: their CMCL "temperature" (0.5 in their README command).
        stem: "patch" (MONAI's patchify conv, the same network as ours: the ratio then measures the training
            step, not the architecture) or "conv" (the authors' conv stem, slightly more FLOPs).
    """

    def __init__(self, feature_size: int = 48, mask_ratio: float = 0.6, temperature: float = 0.5,
                 stem: str = "patch") -> None:
        super().__init__()
        self.net = SwinUNETR(in_channels=1, out_channels=1, feature_size=feature_size, normalize=False)
        if stem == "conv":
            use_conv_stem(self.net)
        self.mask_ratio = mask_ratio
        self.temp = temperature
        self.patch_size = (2, 2, 2)
        self.net.swinViT.patch_embed.register_forward_hook(self._authors_local_masking)

    def _authors_local_masking(self, module: nn.Module, args: tuple, x: torch.Tensor) -> torch.Tensor:
        rand_choice = random.sample(range(0, x.shape[1]), int(self.mask_ratio * x.shape[1]))
        mask = torch.ones(x.shape).to(x.device)
        mask[:, rand_choice, :, :, :] = 0
        return x * mask

    def forward(self, x: torch.Tensor, mask: torch.Tensor, x_org: torch.Tensor, cl_type: Sequence[str]):
        n = self.net
        hidden_states_out = n.swinViT(x, n.normalize)
        mask = (
            mask.repeat_interleave(self.patch_size[0], 1)
            .repeat_interleave(self.patch_size[1], 2)
            .repeat_interleave(self.patch_size[2], 3)
            .unsqueeze(1)
            .contiguous()
        )
        enc0 = n.encoder1(x)
        enc1 = n.encoder2(hidden_states_out[0])
        enc2 = n.encoder3(hidden_states_out[1])
        enc3 = n.encoder4(hidden_states_out[2])
        dec4 = n.encoder10(hidden_states_out[4])
        dec3 = n.decoder5(dec4, hidden_states_out[3])
        dec2 = n.decoder4(dec3, enc3)
        dec1 = n.decoder3(dec2, enc2)
        dec0 = n.decoder2(dec1, enc1)
        x_rec = n.out(n.decoder1(dec0, enc0))
        # their CMCL
        mask_tmp = [AUTHORS_CLASS_RANK[c] for c in cl_type]
        _, b = np.unique(np.array(mask_tmp), return_inverse=True)
        label_tmp = torch.tensor(b).to(x.device)
        bsz = hidden_states_out[4].shape[0]
        flat = hidden_states_out[4].reshape(bsz, -1)
        logits_con = torch.einsum("i d, j d -> i j", flat, flat) * torch.exp(torch.tensor(self.temp))
        loss_cont = (F.cross_entropy(logits_con, label_tmp) + F.cross_entropy(logits_con.T, label_tmp)) / 2
        loss_recon = F.l1_loss(x_org, x_rec, reduction="mean")
        return loss_recon, loss_cont


def authors_style_batch(batch_size: int, roi: int, seed: int = 0) -> dict[str, Any]:
    """
    A clean host batch as the authors' loader yields it: image, modality class names, SimMIM token mask.

    Args:
        batch_size: samples.
        roi: crop size.
        seed: seed of the image values.

    Returns:
        ``{"image": (B, 1, roi, roi, roi) float32, "class": [names], "mask": (B, roi/2, roi/2, roi/2) int64}``.
    """
    g = torch.Generator().manual_seed(seed)
    image = torch.rand((batch_size, 1, roi, roi, roi), generator=g)
    mask = torch.as_tensor(np.stack([authors_mask_generator(roi) for _ in range(batch_size)]))
    if torch.cuda.is_available():
        image, mask = image.pin_memory(), mask.pin_memory()
    return {"image": image, "class": [MODALITIES[i % len(MODALITIES)] for i in range(batch_size)], "mask": mask}


def authors_style_step(model: AuthorsStyleNetwork, optimizer: torch.optim.Optimizer, batch: dict[str, Any],
                       device: torch.device, variance: float = 0.1, interpolate: float = 4, mm_con: float = 0.03,
                       clip_grad: float = 1.0) -> float:
    """
    One iteration of the authors' ``train_one_epoch`` with ``choice="all"`` and ``amp_opt_level="O0"`` (fp32):
    noise drawn on the host and copied, nearest down- and upsampling on the device, forward with their local
    masking and CMCL, backward, gradient clipping at 1.0, plain AdamW, ``torch.cuda.synchronize()`` and the
    ``.item()`` calls of their meters. DDP (one process here) and the per-iteration LR update are left out.

    Args:
        model: an :py:class:`AuthorsStyleNetwork` on ``device``.
        optimizer: ``torch.optim.AdamW`` over its parameters.
        batch: a batch from :py:func:`authors_style_batch`.
        device: the training device.
        variance: noise variance.
        interpolate: downsampling factor.
        mm_con: CMCL weight (0.03 in their README command).
        clip_grad: gradient clipping norm (their default 1).

    Returns:
        the loss value.
    """
    cl_type = batch["class"]
    img = batch["image"].to(device, non_blocking=True)
    B, C, H, W, Z = img.shape
    noise = (variance**0.5) * torch.randn(B, C, H, W, Z).to(device)
    img_noisy = img + noise
    mask = batch["mask"].to(device, non_blocking=True)
    img_lowres = F.interpolate(img_noisy, size=(int(H / interpolate), int(W / interpolate), int(Z / interpolate)))
    img_resam = F.interpolate(img_lowres, size=(H, W, Z))
    loss1, loss2 = model(img_resam, mask, img, cl_type)
    loss2 = mm_con * loss2
    loss = loss1 + loss2
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    loss1.item(), loss2.item()
    return loss.item()


class AuthorsStep:
    """The baseline as a callable: model, AdamW (lr 1e-4, weight decay 0.05, their README) and a host batch."""

    def __init__(self, feature_size: int, batch_size: int, roi: int, device: torch.device, stem: str = "patch"):
        self.device = device
        self.model = AuthorsStyleNetwork(feature_size, stem=stem).to(device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.05)
        self.batch = authors_style_batch(batch_size, roi)

    def __call__(self) -> None:
        authors_style_step(self.model, self.optimizer, self.batch, self.device)


# =============================================================================================================
# This project's step: DAESwinUNETR + DAELoss + batched RandDAEDisruption in DAEPrepareBatch (the dae_pretrain
# bundle's SupervisedTrainer iteration), with the speed levers as options.
# =============================================================================================================


@dataclass(frozen=True)
class Levers:
    """
    Speed levers of this project's training step.

    Args:
        bf16: bf16 autocast (the CMCL is computed in float32 inside, so it stays finite).
        fused: ``torch.optim.AdamW(fused=True)``.
        channels_last: network weights and input in ``torch.channels_last_3d``.
        compile: ``torch.compile`` of the network.
        checkpoint: gradient checkpointing of the Swin stages (a memory option, slower).
    """

    bf16: bool = False
    fused: bool = False
    channels_last: bool = False
    compile: bool = False
    checkpoint: bool = False


class OursStep:
    """
    One iteration of the ``dae_pretrain`` bundle's trainer: ``DAEPrepareBatch`` moves the clean batch to the
    device and disrupts it there as a batch, then forward (``return_embedding=True``) under optional autocast,
    ``DAELoss`` (L1 + 0.05 * supervised CMCL), backward, AdamW (lr 4e-4, weight decay 1e-5, bundle values), and
    one ``loss.item()`` as the trainer's StatsHandler does every iteration.

    Args:
        feature_size: Swin UNETR feature size.
        batch_size: samples per step.
        roi: crop size.
        device: training device.
        levers: speed options.
        downsample_mode: interpolation of the low-resolution disruption (bundle default "nearest").
    """

    def __init__(self, feature_size: int, batch_size: int, roi: int, device: torch.device, levers: Levers,
                 downsample_mode: str = "nearest") -> None:
        self.device = device
        self.levers = levers
        net = DAESwinUNETR(feature_size=feature_size, use_checkpoint=levers.checkpoint).to(device).train()
        self.to_kwargs: dict[str, Any] = {}
        if levers.channels_last:
            net = net.to(memory_format=torch.channels_last_3d)
            self.to_kwargs = {"memory_format": torch.channels_last_3d}
        self.network = net
        self.forward = torch.compile(net) if levers.compile else net
        self.loss = DAELoss(cmcl_weight=0.05, temperature=0.07)
        self.optimizer = torch.optim.AdamW(net.parameters(), lr=4e-4, weight_decay=1e-5,
                                           **({"fused": True} if levers.fused else {}))
        disruption = RandDAEDisruption(noise_variance=0.1, downsample_factor=4, downsample_mode=downsample_mode,
                                       upsample_mode=downsample_mode, batched=True)
        disruption.set_random_state(0)
        self.prepare_batch = DAEPrepareBatch(disruption, with_embedding=True)
        g = torch.Generator().manual_seed(0)
        image = torch.rand((batch_size, 1, roi, roi, roi), generator=g)
        labels = torch.arange(batch_size) % len(MODALITIES)
        if device.type == "cuda":
            image = image.pin_memory()
        self.batch = {"image": image, "modality_label": labels}
        self.amp_dtype = torch.bfloat16

    def step(self, batchdata: dict[str, torch.Tensor]) -> float:
        """
        Args:
            batchdata: a collated host batch with ``image`` and ``modality_label``.

        Returns:
            the loss value.
        """
        inputs, targets, args, kwargs = self.prepare_batch(batchdata, self.device, non_blocking=True,
                                                           **self.to_kwargs)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.levers.bf16):
            prediction = self.forward(inputs, *args, **kwargs)
            loss = self.loss(prediction, targets)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def __call__(self) -> None:
        self.step(self.batch)


# =============================================================================================================
# Measurement helpers
# =============================================================================================================


def _sync(device: torch.device) -> None:
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
    _sync(device)
    times = []
    for _ in range(iters):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _free(device: torch.device) -> None:
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
    return 2 * n**3 / _median(times)


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
                    quick=True)


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


def _resolve_levers(name: str, allow_compile: bool) -> Levers | None:
    levers = ALL_CONFIGS[name]
    if levers is not None and not allow_compile and levers.compile:
        levers = Levers(levers.bf16, levers.fused, levers.channels_last, False, levers.checkpoint)
    return levers


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
        header = ("section", "measurement", "value", "unit", "ratio", "ratio against", "note")
        lines = [header]
        for r in self.rows:
            value = "-" if r["value"] is None else _fmt(r["value"])
            ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
            lines.append((r["section"], r["name"], value, r["unit"], ratio, r["reference"], r["note"]))
        widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
        out = []
        for k, line in enumerate(lines):
            out.append(" | ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
            if k == 0:
                out.append("-+-".join("-" * w for w in widths))
        return "\n".join(out)


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


# =============================================================================================================
# Sections
# =============================================================================================================


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
                               "copy_median_s": _median(copy_times), "statistic": "min of repeats", "threads": 1,
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
        results["per_volume_median_s"][name] = _median(times) / n
        report.add("disruption", name, t * 1e3, "ms/volume", t / t_copy, "x copy floor (lower is better)",
                   f"{t / results['stream_floor_s']:.1f}x the streaming floor; best of {s.disruption_repeats} "
                   f"(median {results['per_volume_median_s'][name] * 1e3:.3g} ms)")
    report.sections["disruption"] = results


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
        levers = _resolve_levers(name, allow_compile)
        _free(device)
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
        median = _median(times)
        entry = {"levers": None if levers is None else asdict(levers), "times_s": times, "median_s": median,
                 "samples_per_s": s.batch_size / median, "peak_memory_gib": peak.peak_gib,
                 "peak_memory_kind": peak.kind, "warmup_and_timed_s": t_total, "build_s": t_build,
                 "flops_per_step": counter["mode"].get_total_flops() if "mode" in counter else None}
        results["configs"][name] = entry
        del runner
        print(f"[train_step] {name}: {median:.3f} s/step, {entry['samples_per_s']:.3f} samples/s", flush=True)
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


def _best_levers(device: torch.device, allow_compile: bool) -> Levers:
    return _resolve_levers("ours_best", allow_compile)


def bench_scaling(s: Settings, device: torch.device, report: Report, allow_compile: bool) -> None:
    """(d) Samples/s of our best configuration at batch 2, 4, 8 (GPU only)."""
    if device.type != "cuda":
        for b in s.scaling_batches:
            report.add("scaling", f"ours_best batch {b}", None, "samples/s", None, "", NOT_MEASURED_NO_GPU)
        report.sections["scaling"] = {"measured": False, "reason": NOT_MEASURED_NO_GPU}
        return
    levers = _best_levers(device, allow_compile)
    batches, warmup = s.scaling_batches, s.warmup
    results: dict[str, Any] = {"measured": True, "levers": asdict(levers), "batches": {}}
    for b in batches:
        _free(device)
        print(f"[scaling] batch {b} ...", flush=True)
        with PeakMemory(device) as peak:
            runner = OursStep(s.feature_size, b, s.roi, device, levers)
            times = time_calls(runner, device, warmup, s.iters)
        del runner
        results["batches"][b] = {"median_s": _median(times), "samples_per_s": b / _median(times),
                                 "peak_memory_gib": peak.peak_gib}
    ref = results["batches"][batches[0]]["samples_per_s"]
    for b, e in results["batches"].items():
        report.add("scaling", f"ours_best batch {b}", e["samples_per_s"], "samples/s", e["samples_per_s"] / ref,
                   f"x batch {batches[0]} samples/s", f"peak {e['peak_memory_gib']:.2f} GiB"
                   if e["peak_memory_gib"] else "")
    report.sections["scaling"] = results


def _bundle_loader(dataset_dir: str, s: Settings, device: torch.device, num_workers: int):
    """The dae_pretrain bundle's own train dataset and ThreadDataLoader, parsed from its train.json."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLES_DIR / "dae_pretrain" / "configs" / "train.json"))
    parser["dataset_dir"] = dataset_dir
    parser["roi_size"] = [s.roi] * 3
    parser["batch_size"] = s.batch_size
    parser["num_workers"] = num_workers
    parser["device"] = f"$torch.device('{device}')"
    parser["train#dataset#progress"] = False
    dataset = parser.get_parsed_content("train#dataset")
    loader = parser.get_parsed_content("train#dataloader")
    disruption = parser.get_parsed_content("train#disruption")
    return parser, dataset, loader, disruption


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


def _pull(loader, prepare: DAEPrepareBatch, device: torch.device, n_batches: int) -> float:
    """Seconds to deliver ``n_batches`` prepared (disrupted, on-device) batches, epochs restarting as needed."""
    _sync(device)
    t0 = time.perf_counter()
    done = 0
    while done < n_batches:
        for batch in loader:
            prepare(batch, device, non_blocking=True)
            done += 1
            if done >= n_batches:
                break
    _sync(device)
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
        parser, dataset, loader, disruption = _bundle_loader(tmp, s, device, num_workers)
        cache_s = time.perf_counter() - t0
        results.update({"num_volumes": len(dataset), "cache_fill_s": cache_s,
                        "cache_fill_s_per_volume": cache_s / len(dataset), "num_workers": num_workers,
                        "ct_shape": list(s.pipeline_ct_shape), "brain_shape": list(s.pipeline_brain_shape)})
        prepare = DAEPrepareBatch(disruption, with_embedding=True)
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
            runner = OursStep(s.feature_size, s.batch_size, s.roi, device, _best_levers(device, allow_compile))
            consumption = s.batch_size / _median(time_calls(runner, device, s.warmup, s.iters))
            del runner
        results.update({"training_consumer": consumer, "training_samples_per_s": consumption})

        busy = None
        if device.type == "cuda":
            runner = OursStep(s.feature_size, s.batch_size, s.roi, device, _best_levers(device, allow_compile))
            fixed = _median(time_calls(runner, device, s.warmup, max(s.iters, 3)))
            runner.step(next(iter(loader)))

            def loader_steps() -> None:
                done = 0
                while done < s.pipeline_busy_steps:
                    for batch in loader:
                        runner.step(batch)
                        done += 1
                        if done >= s.pipeline_busy_steps:
                            break

            with_loader = _median(time_calls(loader_steps, device, 0, 1)) / s.pipeline_busy_steps
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
            results["variants"][name] = {"s_per_case": _median(times), "peak_memory_gib": peak.peak_gib}
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


# =============================================================================================================
# Entry point
# =============================================================================================================


def _as_tuple(value: Any) -> tuple[str, ...]:
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
) -> dict[str, Any]:
    """
    Run the benchmark sections, print one table of ratios and the machine description, optionally save JSON.

    Args:
        quick: tiny sizes (feature size 12, 64^3 crops, 1 warm-up + 1 timed step, baseline / ours_fp32 /
            ours_best) to keep the code paths alive.
        only: comma-separated sections to run (default all): disruption, train_step, flops, scaling, pipeline,
            inference.
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
    s.configs = _as_tuple(configs)
    unknown = set(s.configs) - set(ALL_CONFIGS)
    if unknown:
        raise ValueError(f"unknown configs {sorted(unknown)}; known: {list(ALL_CONFIGS)}")
    sections = _as_tuple(only) or SECTIONS
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; known: {list(SECTIONS)}")
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
    for name in SECTIONS:
        if name not in sections:
            continue
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
        section_s[name] = time.perf_counter() - t0
        _free(dev)
    machine["load_average_end"] = list(os.getloadavg())
    settings = asdict(s)
    settings.update({"device": str(dev), "compile_allowed": allow_compile, "sections": list(sections)})
    results = {"machine": machine, "settings": settings, "command": " ".join([os.path.basename(sys.executable),
               *sys.argv]), "sections": report.sections, "table": report.rows, "section_seconds": section_s,
               "total_seconds": time.perf_counter() - t_start}

    print()
    print(f"DAE benchmark, {machine['date']}: CPU {machine['cpu_model']} ({machine['cpu_cores']} cores, "
          f"{machine['torch_threads']} torch threads), GPU {machine['gpu']}, torch {machine['torch']}, "
          f"MONAI {machine['monai']}; device {dev}; load average {machine['load_average_start'][0]:.2f} -> "
          f"{machine['load_average_end'][0]:.2f}")
    print(f"train step: feature size {s.feature_size}, {s.roi}^3 crops, batch {s.batch_size}, "
          f"{s.warmup} warm-up + {s.iters} timed (median){'; QUICK sizes' if s.quick else ''}; "
          f"torch.compile {'on' if allow_compile else 'off'}")
    print(report.table())
    print(f"total {results['total_seconds']:.1f} s")
    if output_json:
        os.makedirs(os.path.dirname(os.path.abspath(output_json)), exist_ok=True)
        with open(output_json, "w") as f:
            json.dump(results, f, indent=2, default=_json_default)
    return results


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    return str(obj)


if __name__ == "__main__":
    fire.Fire(main, serialize=lambda _: None)
