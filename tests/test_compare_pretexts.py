"""The head-to-head comparison: labelled subsets, the tables and the figure, and the command end to end."""

from __future__ import annotations

import csv
import subprocess

import pytest

from monai_dae.data import labelled_subset
from monai_dae.data.phantoms import write_sample_dataset
from monai_dae.figures import label_efficiency_figure
from tools.compare_pretexts import compare, markdown_table, summarise

from bundle_testing import REPO, assert_png, tool_command, tool_env


def test_labelled_subsets_are_seeded_nested_and_stratified():
    entries = [{"id": i, "label": i % 2} for i in range(20)]
    assert labelled_subset(entries, 1.0) == entries
    tenth, half = labelled_subset(entries, 0.1, seed=3), labelled_subset(entries, 0.5, seed=3)
    assert len(tenth) == 2 and len(half) == 10
    assert all(e in half for e in tenth)  # one seed: a smaller fraction is inside a larger one
    assert [e["id"] for e in half] == sorted(e["id"] for e in half)  # original order kept
    assert labelled_subset(entries, 0.5, seed=4) != half
    stratified = labelled_subset(entries, 0.1, seed=0, stratify_key="label")
    assert sorted(e["label"] for e in stratified) == [0, 1]
    assert len(labelled_subset(entries[:3], 0.1)) == 1  # at least one entry
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        labelled_subset(entries, 0.0)


def _rows():
    rows = []
    for method, offset in (("dae", 0.1), ("scratch", 0.0)):
        for fraction in (0.25, 1.0):
            for seed, noise in ((0, -0.02), (1, 0.02)):
                rows.append({"task": "dae_btcv_seg", "metric": "val_mean_dice", "method": method, "fraction": fraction,
                             "seed": seed, "value": 0.5 * fraction + offset + noise, "seconds": 1.0})
    return rows


def test_summary_table_and_figure_of_the_results():
    summary = summarise(_rows())
    dae_quarter = [r for r in summary if r["method"] == "dae" and r["fraction"] == 0.25][0]
    assert dae_quarter["mean"] == pytest.approx(0.225) and dae_quarter["std"] == pytest.approx(0.02)
    assert dae_quarter["runs"] == 2 and len(summary) == 4
    table = markdown_table(summary, "budget")
    assert "| method | 25% labelled | 100% labelled |" in table
    assert "| dae | 0.225 ± 0.020 (2) | 0.600 ± 0.020 (2) |" in table
    figure = label_efficiency_figure(_rows(), {"dae_btcv_seg": "BTCV"})
    (ax,) = figure.axes
    assert ax.get_legend_handles_labels()[1] == ["dae", "scratch"]
    assert ax.get_xlabel() == "labelled training data (%)" and ax.get_title() == "BTCV"
    with pytest.raises(ValueError, match="finite"):
        label_efficiency_figure([{**_rows()[0], "value": float("nan")}])


def test_unknown_methods_tasks_and_fractions_stop_before_any_run(tmp_path):
    with pytest.raises(ValueError, match=r"unknown methods \['evaluate'\].*'brainmvp', 'dae', 'voco', 'volume_fusion'"):
        compare(str(tmp_path), methods=["dae", "evaluate"])
    with pytest.raises(ValueError, match="fractions in"):
        compare(str(tmp_path), fractions=[0.0, 1.0])
    with pytest.raises(ValueError, match="tasks must be among"):
        compare(str(tmp_path), tasks=["dae_pretrain"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.extended
def test_comparison_command_writes_the_table_and_the_figure(tmp_path):
    """The command at its smallest: BrainMVP against scratch, both tasks, two fractions and two seeds, one epoch."""
    data = write_sample_dataset(str(tmp_path / "data"), num_ct=3, num_brain=6, ct_shape=(64, 64, 32),
                                brain_shape=(48, 48, 40), num_validation=1)
    output = tmp_path / "compare"
    command = tool_command("compare_pretexts", "--output_dir", str(output), "--data_dir", data["root"],
                           "--methods", "['brainmvp','scratch']", "--fractions", "[0.5,1.0]", "--seeds", "[0,1]",
                           "--pretrain_epochs", "1", "--finetune_epochs", "1", "--progress", "False")
    finished = subprocess.run(command, cwd=REPO, env=tool_env(), capture_output=True, text=True, timeout=1200)
    assert finished.returncode == 0, finished.stderr[-4000:]
    with open(output / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 2 * 2
    assert {(r["task"], r["metric"]) for r in rows} == {("dae_btcv_seg", "val_mean_dice"), ("dae_brats_cls", "val_auc")}
    assert all(0.0 <= float(r["value"]) <= 1.0 for r in rows)
    table = (output / "comparison.md").read_text()
    assert "| brainmvp |" in table and "| scratch |" in table and "50% labelled" in table
    assert_png(output / "label_efficiency.png")
    again = subprocess.run(command, cwd=REPO, env=tool_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "pretrained brainmvp" in again.stdout  # resumed: every run's result is reused
    assert (output / "finetune" / "dae_brats_cls" / "scratch" / "fraction0.5_seed1" / "result.json").is_file()
