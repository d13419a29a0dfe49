"""The speed benchmark's --quick mode runs end to end and reports a well-formed table (no timing assertions)."""

from __future__ import annotations

import json
import math
import subprocess

import pytest

from tools.benchmarks.storage import MEMORY_STORES, STORES, markdown_tables

from bundle_testing import REPO, assert_png, tool_command, tool_env

SECTIONS = ("disruption", "train_step", "flops", "scaling", "pipeline", "inference", "data_formats", "data_memory")
ROW_KEYS = {"section", "name", "value", "unit", "ratio", "reference", "note"}


@pytest.mark.extended
def test_benchmark_quick(tmp_path):
    output = tmp_path / "bench.json"
    proc = subprocess.run(
        tool_command("benchmark", "--quick", "--output_json", str(output)),
        cwd=REPO,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ratio against" in proc.stdout and "DAE benchmark" in proc.stdout

    results = json.loads(output.read_text())
    assert assert_png(tmp_path / "bench.png", (1000, 300))  # the ratios as a bar chart, next to the JSON file
    machine = results["machine"]
    for key in ("cpu_model", "cpu_cores", "torch", "monai", "gpu", "date", "load_average_start", "load_average_end"):
        assert key in machine
    assert set(results["sections"]) == set(SECTIONS)
    assert results["settings"]["quick"] is True

    rows = results["table"]
    assert {row["section"] for row in rows} == set(SECTIONS)
    for row in rows:
        assert set(row) == ROW_KEYS
        for key in ("value", "ratio"):
            if row[key] is not None:
                assert math.isfinite(row[key]) and row[key] > 0, row
        if row["value"] is None:
            assert row["note"], row  # a figure that is not measured says why

    train = results["sections"]["train_step"]["configs"]
    assert "baseline" in train and train["baseline"]["speedup_vs_baseline"] == pytest.approx(1.0)
    assert any(name.startswith("ours") for name in train)
    for entry in train.values():
        assert entry["samples_per_s"] > 0 and math.isfinite(entry["samples_per_s"])
    baseline_rows = [r for r in rows if r["section"] == "train_step" and r["name"] == "baseline"]
    assert len(baseline_rows) == 1 and baseline_rows[0]["ratio"] == pytest.approx(1.0)

    flops = results["sections"]["flops"]
    assert flops["ours_flops_per_step"] > 0 and flops["baseline_flops_per_step"] > 0
    assert results["sections"]["disruption"]["copy_s"] > 0
    assert results["sections"]["pipeline"]["bundle_loader_samples_per_s"] > 0
    inference = results["sections"]["inference"]
    assert inference["btcv_resampled_shape"] == [256, 256, 150]
    assert inference["variants"]


@pytest.mark.extended
def test_data_sections_write_the_throughput_and_memory_tables(tmp_path):
    output = tmp_path / "data_pipeline.md"
    proc = subprocess.run(
        tool_command("benchmark", "--quick", "--only", "data_formats,data_memory", "--output_markdown", str(output),
                     "--output_json", str(tmp_path / "data.json"), "--data_dir", str(tmp_path)),
        cwd=REPO, env=tool_env(), capture_output=True, text=True, timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sections = json.loads((tmp_path / "data.json").read_text())["sections"]
    formats = sections["data_formats"]["rows"]
    assert [(r["store"], r["workers"]) for r in formats] == [(s, w) for s in STORES for w in (0, 1)]
    assert all(r["volumes_per_s"] > 0 and r["crops_per_s"] == pytest.approx(2 * r["volumes_per_s"]) for r in formats)
    assert {r["store"] for r in formats if r["bytes_on_disk"] > 0} == {"nii_gz", "nii", "persistent"}
    memory = sections["data_memory"]
    assert [(r["store"], r["volumes"]) for r in memory["rows"]] == [(s, n) for n in (8, 16) for s in MEMORY_STORES]
    assert all(r["peak_mib"] >= r["baseline_mib"] > 0 for r in memory["rows"])
    assert memory["datalist"]["entries"] == 16 and memory["datalist"]["order"] == 16
    text = output.read_text()
    assert "### Throughput per store and loader worker count" in text and "### Peak resident memory" in text
    assert text.count("\n| ") == 2 * 4 + 3 + 2  # header + 8 throughput rows, header + 3 memory rows
    assert not list(tmp_path.glob("dae_*"))  # the corpora and caches are removed


def test_markdown_tables_from_known_results():
    sections = {
        "data_formats": {"shape": [160, 160, 128], "volumes": 24, "roi": 96, "crops_per_volume": 2, "batch_size": 2,
                         "floor": {"volumes_per_s": 50.0, "mb_per_s": 200.0, "bytes": 1},
                         "rows": [{"store": "persistent", "workers": 2, "volumes_per_s": 10.0, "crops_per_s": 20.0,
                                   "ratio_to_floor": 0.2, "bytes_on_disk": 3e8, "setup_and_first_epoch_s": 12.0}]},
        "data_memory": {"shape": [48, 48, 32], "roi": 32, "sizes": [100, 10000],
                        "rows": [{"store": s, "volumes": n, "peak_mib": 1100.0 + n / 10, "growth_mib": n / 10}
                                 for s in MEMORY_STORES for n in (100, 10000)],
                        "datalist": {"entries": 10000, "check_s": 3.2, "index_s": 0.41}},
    }
    text = markdown_tables(sections, "machine", "python -m tools.benchmark --only data_formats")
    assert "| persistent memory-mapped cache (persistent_cache.json) | 2 | 10.00 | 20.00 | 0.200 | 300 | 12.0 |" in text
    assert "| in-memory cache (cache_rate 1) | 1,110 (+10) | 2,100 (+1,000) |" in text
    assert "A data list of 10,000 entries" in text and "3.2 s" in text and "(288 KiB as float32" in text
    assert "`python -m tools.benchmark --only data_formats`" in text
