"""The speed benchmark's --quick mode runs end to end and reports a well-formed table (no timing assertions)."""

from __future__ import annotations

import json
import math
import subprocess

import pytest

from bundle_testing import REPO, assert_png, tool_command, tool_env

SECTIONS = ("disruption", "train_step", "flops", "scaling", "pipeline", "inference")
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
