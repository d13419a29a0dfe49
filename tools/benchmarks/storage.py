"""
Sections ``data_formats`` and ``data_memory``: the ``dae_pretrain`` bundle's own training data pipeline (parsed
from its configs) on synthetic corpora written here, per way of storing the corpus.

- ``data_formats``: volumes/s and crops/s of one epoch per loader worker count, for (a) ``.nii.gz`` decoded every
  epoch, (b) uncompressed ``.nii`` read every epoch, (c) the persistent memory-mapped cache
  (``persistent_cache.json``), (d) the in-memory cache (``cache_rate`` 1), each against the floor of reading
  the corpus's raw ``.nii.gz`` bytes from disk. Disk reads are cold: the files' pages are dropped from the page
  cache (``posix_fadvise(DONTNEED)``) before every timed epoch, as for a corpus larger than memory.
- ``data_memory``: peak resident memory (RSS) of the pipeline (one process, one epoch) for corpora of growing
  size, per cache option, each in a fresh process; and the time to validate and index the largest data list.

``python -m tools.benchmark --only data_formats,data_memory --output_markdown FILE`` writes both tables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tools.benchmarks.common import Report, Settings

__all__ = ["STORES", "write_corpus", "bench_data_formats", "bench_data_memory", "markdown_tables", "write_data_figure"]

STORES = {
    "nii_gz": ".nii.gz decoded every epoch (no cache)",
    "nii": "uncompressed .nii read every epoch (no cache)",
    "persistent": "persistent memory-mapped cache (persistent_cache.json)",
    "memory": "in-memory cache (cache_rate 1)",
}
MEMORY_STORES = ("nii_gz", "persistent", "memory")


def _synthetic_volume(rng: np.random.Generator, shape: Sequence[int], modality: str) -> np.ndarray:
    """An int16 body-like volume: an ellipsoid of tissue with an inner organ, shifted at random, with noise."""
    grid = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    centre = rng.uniform(-0.1, 0.1, 3)
    radius = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, (0.8, 0.7, 0.9)))
    organ = sum(((g - c - 0.2) / 0.25) ** 2 for g, c in zip(grid, centre))
    if modality == "ct":
        volume = np.where(radius < 1, 40.0, -1000.0) + np.where(organ < 1, 60.0, 0.0)
    else:
        volume = np.where(radius < 1, 300.0, 0.0) + np.where(organ < 1, 400.0, 0.0)
    volume += rng.normal(0.0, 10.0, shape)
    return volume.astype(np.int16)


def write_corpus(folder: str, count: int, shape: Sequence[int], compressed: bool = True, seed: int = 0) -> str:
    """
    Write a synthetic corpus of ``count`` NIfTI volumes (CT and T1 alternating) and its data list.

    Args:
        folder: output folder (created).
        count: number of volumes.
        shape: voxels per volume.
        compressed: ``.nii.gz`` (else ``.nii``).
        seed: seed of the volumes.

    Returns:
        the data list path (``datalist.json`` in ``folder``; the first volume is also its validation list).
    """
    import nibabel as nib

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    templates = {m: [_synthetic_volume(rng, shape, m) for _ in range(4)] for m in ("ct", "t1")}
    suffix = ".nii.gz" if compressed else ".nii"
    entries = []
    for index in range(count):
        modality = "ct" if index % 2 == 0 else "t1"
        volume = templates[modality][index % 4] + rng.integers(-5, 6, shape, dtype=np.int16)
        name = f"volume_{index:05d}_{modality}{suffix}"
        nib.save(nib.Nifti1Image(volume, np.diag([1.5, 1.5, 1.5, 1.0])), os.path.join(folder, name))
        entries.append({"image": name, "modality": modality})
    path = os.path.join(folder, "datalist.json")
    with open(path, "w") as f:
        json.dump({"training": entries, "validation": entries[:1]}, f)
    return path


def pipeline_parser(datalist: str, store: str, roi: int, batch_size: int, num_workers: int, cache_dir: str | None = None):
    """
    The ``dae_pretrain`` bundle's DAE configs (plus ``persistent_cache.json`` for the persistent store) with the
    data list, store, crop size and loader settings of a measurement.

    Args:
        datalist: the corpus's data list.
        store: a key of :py:data:`STORES`.
        roi: crop edge.
        batch_size: volumes per batch.
        num_workers: loader workers.
        cache_dir: the persistent cache's folder (the persistent store only).

    Returns:
        the ``ConfigParser``.
    """
    from monai.bundle import ConfigParser

    from monai_dae.utils import bundle_dir, training_config_files

    root = bundle_dir("dae_pretrain", required="configs/metadata.json")
    files = training_config_files(root, "dae")
    if store == "persistent":
        files = [*files, os.path.join(root, "configs", "persistent_cache.json")]
    parser = ConfigParser()
    parser.read_config(files)
    parser.update({"dataset_dir": os.path.dirname(datalist), "datalist": datalist, "roi_size": [roi] * 3,
                   "batch_size": batch_size, "num_workers": num_workers, "progress_bar": False,
                   "cache_rate": 1.0 if store == "memory" else 0.0})
    if store == "persistent":
        if cache_dir is None:
            raise ValueError("the persistent store needs a cache_dir.")
        parser["cache_dir"] = cache_dir
    return parser


def corpus_files(parser) -> list[str]:
    """The image files of a parsed pipeline's training list."""
    return [entry["image"] for entry in parser.get_parsed_content("train#data")]


def evict(paths: Sequence[str]) -> None:
    """Write back and drop the page-cache pages of ``paths``, so that the next read comes from the disk."""
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_bytes_floor(paths: Sequence[str]) -> dict[str, float]:
    """
    Args:
        paths: files to read.

    Returns:
        volumes/s and MB/s of reading their raw bytes, cold.
    """
    evict(paths)
    start = time.perf_counter()
    total = sum(len(Path(p).read_bytes()) for p in paths)
    seconds = time.perf_counter() - start
    return {"volumes_per_s": len(paths) / seconds, "mb_per_s": total / 1e6 / seconds, "bytes": total}


def _epoch(loader) -> tuple[float, int, int]:
    """Seconds, volumes and crops of one pass over ``loader``."""
    start = time.perf_counter()
    crops = 0
    for batch in loader:
        crops += int(batch["image"].shape[0])
    seconds = time.perf_counter() - start
    volumes = len(loader.sampler) if loader.sampler is not None else len(loader.dataset)
    return seconds, volumes, crops


def _store_files(store: str, parser, cache_dir: str) -> list[str]:
    if store == "persistent":
        return sorted(str(p) for p in Path(cache_dir).glob("*.pt"))
    return corpus_files(parser) if store in ("nii_gz", "nii") else []


def bench_data_formats(s: Settings, report: Report) -> None:
    """Volumes/s and crops/s of the bundle's training loader per store and worker count, against the raw-read floor."""
    results: dict[str, Any] = {"shape": list(s.data_shape), "volumes": s.data_volumes, "roi": s.data_roi,
                               "crops_per_volume": 2, "batch_size": s.batch_size, "rows": []}
    with tempfile.TemporaryDirectory(prefix="dae_formats_", dir=s.data_dir) as tmp:
        lists = {"nii_gz": write_corpus(os.path.join(tmp, "gz"), s.data_volumes, s.data_shape, compressed=True),
                 "nii": write_corpus(os.path.join(tmp, "raw"), s.data_volumes, s.data_shape, compressed=False)}
        lists["persistent"] = lists["memory"] = lists["nii_gz"]
        cache_dir = os.path.join(tmp, "cache")
        gz_files = corpus_files(pipeline_parser(lists["nii_gz"], "nii_gz", s.data_roi, s.batch_size, 0, cache_dir))
        floor = read_bytes_floor(gz_files)
        results["floor"] = floor
        for store in STORES:
            for workers in s.data_workers:
                parser = pipeline_parser(lists[store], store, s.data_roi, s.batch_size, workers, cache_dir)
                start = time.perf_counter()
                loader = parser.get_parsed_content("train#dataloader")
                build_s = time.perf_counter() - start
                first_s, _, _ = _epoch(loader)  # warm-up; writes the persistent cache on its first run
                files = _store_files(store, parser, cache_dir)
                if files:
                    evict(files)
                seconds, volumes, crops = _epoch(loader)
                row = {"store": store, "workers": workers, "volumes_per_s": volumes / seconds,
                       "crops_per_s": crops / seconds, "ratio_to_floor": volumes / seconds / floor["volumes_per_s"],
                       "setup_and_first_epoch_s": build_s + first_s, "epoch_s": seconds,
                       "bytes_on_disk": sum(os.path.getsize(f) for f in files)}
                results["rows"].append(row)
                report.add("data_formats", f"{STORES[store]}, {workers} worker(s)", row["volumes_per_s"], "volumes/s",
                           row["ratio_to_floor"], "x raw .nii.gz bytes read from disk (cold)",
                           f"{row['crops_per_s']:.3g} crops/s")
                del loader, parser
    report.add("data_formats", "floor: raw .nii.gz bytes read from disk (cold)", floor["volumes_per_s"], "volumes/s",
               1.0, "", f"{floor['mb_per_s']:.0f} MB/s")
    report.sections["data_formats"] = results


def measure_rss(datalist: str, store: str, roi: int, cache_dir: str, epochs: int = 1) -> dict[str, float]:
    """
    Run in a fresh process (``python -m tools.benchmarks.storage``): build the bundle's training loader for one
    store (no loader workers, so that the whole pipeline is this process) and run ``epochs`` epochs.

    Args:
        datalist: the corpus's data list.
        store: a key of :py:data:`STORES`.
        roi: crop edge.
        cache_dir: the persistent cache's folder.
        epochs: epochs to run.

    Returns:
        ``baseline_mib`` (RSS after the imports), ``peak_mib`` (peak RSS), ``seconds``.
    """
    baseline = _status_mib("VmRSS")
    start = time.perf_counter()
    loader = pipeline_parser(datalist, store, roi, 2, 0, cache_dir).get_parsed_content("train#dataloader")
    for epoch in range(epochs):
        loader.dataset.set_epoch(epoch)
        _epoch(loader)
    return {"baseline_mib": baseline, "peak_mib": _status_mib("VmHWM"), "seconds": time.perf_counter() - start}


def _status_mib(field: str) -> float:
    """
    A memory figure of this process from ``/proc/self/status`` (Linux): ``VmRSS`` (resident now) or ``VmHWM``
    (peak resident since the program started). ``getrusage``'s ``ru_maxrss`` is not used for the peak: it
    carries the parent's peak over ``fork`` and ``exec``.

    Args:
        field: the field name.

    Returns:
        MiB.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status: the data pipeline's memory is measured on Linux only.")


def _measure_rss_in_child(datalist: str, store: str, roi: int, cache_dir: str, epochs: int) -> dict[str, float]:
    command = [sys.executable, "-m", "tools.benchmarks.storage", datalist, store, str(roi), cache_dir, str(epochs)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[2])
    if done.returncode != 0:
        raise RuntimeError(f"RSS measurement of '{store}' on '{datalist}' failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_data_memory(s: Settings, report: Report) -> None:
    """Peak RSS of the pipeline per corpus size and store; time to validate and index the largest data list."""
    from monai_dae.data import load_datalist
    from monai_dae.data.sampling import ModalityMixingSampler

    results: dict[str, Any] = {"shape": list(s.memory_shape), "roi": s.memory_roi, "sizes": list(s.memory_sizes),
                               "rows": []}
    with tempfile.TemporaryDirectory(prefix="dae_memory_", dir=s.data_dir) as tmp:
        for size in s.memory_sizes:
            datalist = write_corpus(os.path.join(tmp, f"corpus_{size}"), size, s.memory_shape)
            for store in MEMORY_STORES:
                cache_dir = os.path.join(tmp, f"cache_{size}")
                epochs = 2 if store == "persistent" else 1  # the first writes the cache, the second reads it
                rss = _measure_rss_in_child(datalist, store, s.memory_roi, cache_dir, epochs)
                row = {"volumes": size, "store": store, **rss, "growth_mib": rss["peak_mib"] - rss["baseline_mib"]}
                results["rows"].append(row)
                report.add("data_memory", f"{STORES[store]}, {size} volumes", row["peak_mib"], "MiB peak RSS", None, "",
                           f"+{row['growth_mib']:.0f} MiB over the {row['baseline_mib']:.0f} MiB after imports")
        largest = os.path.join(tmp, f"corpus_{max(s.memory_sizes)}", "datalist.json")
        start = time.perf_counter()
        entries = load_datalist(largest, os.path.dirname(largest))
        check_s = time.perf_counter() - start
        start = time.perf_counter()
        sampler = ModalityMixingSampler([e["modality"] for e in entries], batch_size=2, num_replicas=8, rank=0)
        sampler.set_epoch(1)
        order = sampler.global_order()
        index_s = time.perf_counter() - start
    results["datalist"] = {"entries": len(entries), "check_s": check_s, "index_s": index_s, "order": len(order)}
    report.add("data_memory", f"data list of {len(entries)} entries: files and NIfTI headers checked", check_s, "s")
    report.add("data_memory", f"data list of {len(entries)} entries: sampler built, one epoch order (8 ranks)", index_s,
               "s")
    report.sections["data_memory"] = results


def _mib(value: float) -> str:
    return f"{value:,.0f}"


def write_data_figure(sections: dict[str, Any], title: str, path: str) -> str:
    """
    Draw the data sections (:py:func:`monai_dae.figures.plot_data_pipeline`): throughput bars and memory lines.

    Args:
        sections: the benchmark's ``report.sections``.
        title: the machine description.
        path: the PNG file.

    Returns:
        ``path``.
    """
    from monai_dae.figures import plot_data_pipeline

    throughput = sections.get("data_formats", {}).get("rows", [])
    memory = sections.get("data_memory", {}).get("rows", [])
    return plot_data_pipeline(throughput, memory, STORES, path, title)


def markdown_tables(sections: dict[str, Any], machine_line: str, command: str, figure: str | None = None) -> str:
    """
    The RSS and throughput tables in Markdown, for the ``dae_pretrain`` bundle's docs.

    Args:
        sections: the benchmark's ``report.sections`` (``data_formats`` and/or ``data_memory``).
        machine_line: the machine description.
        command: the command that produced them.
        figure: the file name of :py:func:`write_data_figure`'s PNG, shown above the tables.

    Returns:
        the Markdown text.
    """
    lines = ["<!-- written by the command below; do not edit by hand -->", "", f"`{command}`", "", machine_line, ""]
    if figure:
        lines += [f"![throughput per store and memory by corpus size]({figure})", ""]
    formats = sections.get("data_formats")
    if formats:
        shape = "x".join(map(str, formats["shape"]))
        floor = formats["floor"]
        lines += [
            "### Throughput per store and loader worker count", "",
            f"{formats['volumes']} synthetic int16 volumes of {shape} voxels (CT and T1 alternating), "
            f"{formats['crops_per_volume']} crops of {formats['roi']}^3 per volume, batch {formats['batch_size']}, "
            "one epoch of the bundle's training loader after a warm-up epoch (which fills the caches: the set-up + "
            "first epoch column); disk reads cold (page cache dropped before the timed epoch). Floor: reading the raw bytes of the .nii.gz files from disk, cold, "
            f"{floor['volumes_per_s']:.1f} volumes/s ({floor['mb_per_s']:.0f} MB/s).", "",
            "| store | workers | volumes/s | crops/s | x floor | on disk (MB) | set-up + first epoch (s) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in formats["rows"]:
            disk = f"{row['bytes_on_disk'] / 1e6:.0f}" if row["bytes_on_disk"] else "-"
            lines.append(f"| {STORES[row['store']]} | {row['workers']} | {row['volumes_per_s']:.2f} | "
                         f"{row['crops_per_s']:.2f} | {row['ratio_to_floor']:.3f} | {disk} | {row['setup_and_first_epoch_s']:.1f} |")
        lines.append("")
    memory = sections.get("data_memory")
    if memory:
        shape = "x".join(map(str, memory["shape"]))
        lines += [
            "### Peak resident memory of the data pipeline by corpus size", "",
            f"Synthetic int16 volumes of {shape} voxels ({np.prod(memory['shape']) * 4 / 2**10:.0f} KiB as float32 "
            f"after scaling), crops of {memory['roi']}^3, one process (no loader workers), a fresh process per cell; "
            "the persistent cache runs two epochs (the first writes it, the second reads it). Peak RSS in MiB; in "
            "brackets, the growth over the RSS after the imports.", "",
            "| store | " + " | ".join(f"{n:,} volumes" for n in memory["sizes"]) + " |",
            "|---|" + "---:|" * len(memory["sizes"]),
        ]
        for store in MEMORY_STORES:
            cells = [r for r in memory["rows"] if r["store"] == store]
            lines.append(f"| {STORES[store]} | " + " | ".join(
                f"{_mib(r['peak_mib'])} (+{_mib(r['growth_mib'])})" for r in cells) + " |")
        listing = memory["datalist"]
        lines += ["", f"A data list of {listing['entries']:,} entries: every file's existence and NIfTI header checked "
                  f"in {listing['check_s']:.1f} s; the sampler built and one epoch's order drawn for 8 ranks in "
                  f"{listing['index_s']:.2f} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    datalist_arg, store_arg, roi_arg, cache_arg, epochs_arg = sys.argv[1:6]
    print(json.dumps(measure_rss(datalist_arg, store_arg, int(roi_arg), cache_arg, int(epochs_arg))))
