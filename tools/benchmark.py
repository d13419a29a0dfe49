"""
Speed benchmark of DAE pretraining and inference, against a re-implementation of the authors' training step.

Sections (``--only`` takes a comma-separated subset), each measured by a module of ``tools/benchmarks/``:

- ``disruption`` (``disruption.py``): per-volume cost of the disruption transforms on the CPU, against the
  memory-bandwidth floor (a plain copy of a float32 volume of the crop size, measured in the same run).
- ``train_step`` (``training.py``): training samples per second of the authors'-style step (``authors.py``, the
  baseline) and of this project's step (``ours.py``) with each lever on its own and all together.
- ``flops`` (``training.py``): model FLOPs of one training step (forward + backward,
  ``torch.utils.flop_counter.FlopCounterMode``) and the achieved fraction of the measured matmul rate (bf16;
  fp32 too on a CPU); peak memory per config.
- ``scaling`` (``training.py``): samples per second at batch 2, 4, 8 (GPU only).
- ``pipeline`` (``pipeline.py``): the real input pipeline of the ``dae_pretrain`` bundle (NIfTI from disk,
  CacheDataset, crops, ThreadDataLoader, disruptions in ``prepare_batch``) against what training consumes.
- ``inference`` (``inference.py``): sliding-window inference seconds per case, and the speed-ups of bf16 and
  ``sw_batch_size``.
- ``data_formats`` (``storage.py``): volumes/s and crops/s of the bundle's training loader per worker count for
  .nii.gz decoded every epoch, uncompressed .nii, the persistent memory-mapped cache and the in-memory cache,
  against the floor of reading the raw .nii.gz bytes from disk (cold page cache).
- ``data_memory`` (``storage.py``): peak RSS of the data pipeline for 100, 1,000 and 10,000 volumes per cache
  option, and the time to validate and index a 10,000-entry data list.

Every measurement uses warm-up iterations, reports medians and synchronises the GPU around each timed call
(``common.py``). All ratios are against references measured in the same run; one table is printed with the
machine description (``run.py``).

Examples::

    python -m tools.benchmark --quick
    python -m tools.benchmark --only disruption,train_step --output_json bench.json
    python -m tools.benchmark --device cuda --configs baseline,ours_fp32,ours_best
    python -m tools.benchmark --only data_formats,data_memory --output_markdown bundles/dae_pretrain/docs/data_pipeline.md
"""

from __future__ import annotations

import fire

from tools.benchmarks.run import main

__all__ = ["main"]

if __name__ == "__main__":
    fire.Fire(main, serialize=lambda _: None)
