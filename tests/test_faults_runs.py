"""
Faults of runs and files: a used output_dir, resume without or from a broken checkpoint, a kill -9 in the
middle of an epoch, a training run of 0 iterations, non-finite losses and predictions, symbolic links and
path-traversal zips. Each must end working or stop before harm with a message naming the file, key or value.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigWorkflow

from monai_dae.data.phantoms import write_sample_dataset
from monai_dae.handlers import CheckpointLoader, NonFiniteError, RequireFiniteOutput
from monai_dae.handlers.classification import classification_metrics
from monai_dae.networks import DAESwinUNETR
from monai_dae.utils import (
    CheckpointError,
    prepare_output_dir,
    require_training_iterations,
    resumable_checkpoint,
    save_atomically,
)
from tools.export_bundle import bundle_entries
from tools.install_bundle import install_bundle

from bundle_testing import DAE_TRAIN, REPO, cli_env, cli_overrides, config_arg, tool_command

CONFIGS = REPO / "bundles" / "dae_pretrain" / "configs"
TRAIN = DAE_TRAIN
META = str(CONFIGS / "metadata.json")
TINY = {
    "roi_size": [64, 64, 64],
    "feature_size": 12,
    "batch_size": 2,
    "num_workers": 0,
    "cache_rate": 0.0,
    "sw_batch_size": 1,
    "progress_bar": False,
}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> dict[str, str]:
    """The data of tests/test_bundle_dae_pretrain.py: 5 training files (2 iterations per epoch at batch 2)."""
    return write_sample_dataset(
        str(tmp_path_factory.mktemp("sample")), num_ct=2, num_brain=2, ct_shape=(64, 56, 40), brain_shape=(48, 48, 40), num_validation=1
    )


def _used_output(root: Path) -> Path:
    (root / "runs" / "checkpoints").mkdir(parents=True)
    torch.save({"trainer": {"iteration": 2}}, root / "runs" / "checkpoints" / "checkpoint_epoch=1.pt")
    return root / "runs"


# --- output_dir in use ---------------------------------------------------------------------------------------


def test_prepare_output_dir_refuses_a_used_output_dir(tmp_path):
    prepare_output_dir(str(tmp_path / "absent"))  # fresh: fine, and nothing is created
    assert not (tmp_path / "absent").exists()
    (tmp_path / "empty").mkdir()
    prepare_output_dir(str(tmp_path / "empty"))
    runs = _used_output(tmp_path)
    with pytest.raises(FileExistsError) as error:
        prepare_output_dir(str(runs))
    assert str(runs) in str(error.value) and "--resume True" in str(error.value) and "--overwrite True" in str(error.value)
    # the best model of another run counts too
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="model.pt"):
        prepare_output_dir(str(tmp_path / "other"), model_dir=str(tmp_path / "models"))
    with pytest.raises(ValueError, match="pass one of them"):
        prepare_output_dir(str(runs), resume=True, overwrite=True)
    # overwrite: the previous run's resumable checkpoints go, so a later --resume cannot pick them up
    (runs / "tensorboard").mkdir()
    (runs / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"x")
    prepare_output_dir(str(runs), overwrite=True)
    assert not list((runs / "checkpoints").iterdir()) and not list((runs / "tensorboard").iterdir())


@pytest.mark.slow
def test_cli_training_refuses_a_used_output_dir(sample, tmp_path):
    runs = _used_output(tmp_path)
    before = (runs / "checkpoints" / "checkpoint_epoch=1.pt").read_bytes()
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config_arg(*TRAIN), "--meta_file", META]
    command += cli_overrides(bundle_root=str(tmp_path), dataset_dir=sample["root"], output_dir=str(runs), **TINY)
    result = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    logs = result.stdout + result.stderr
    assert f"output_dir '{runs}' is used" in logs and "--resume True" in logs and "--overwrite True" in logs
    assert (runs / "checkpoints" / "checkpoint_epoch=1.pt").read_bytes() == before  # untouched


# --- resume ----------------------------------------------------------------------------------------------------


def test_resume_without_a_checkpoint_is_an_error(tmp_path):
    with pytest.raises(CheckpointError) as error:
        prepare_output_dir(str(tmp_path / "runs"), resume=True)
    assert str(tmp_path / "runs" / "checkpoints") in str(error.value) and "--resume True" in str(error.value)


def test_resume_skips_a_corrupt_checkpoint_and_removes_stale_temporaries(tmp_path, caplog):
    good, newer = tmp_path / "checkpoint_epoch=1.pt", tmp_path / "checkpoint_epoch=2.pt"
    save_atomically({"trainer": {"iteration": 2}, "w": torch.ones(1000)}, str(good))
    save_atomically({"trainer": {"iteration": 4}, "w": torch.ones(1000)}, str(newer))
    os.utime(good, (1, 1))
    stale = tmp_path / ".checkpoint_epoch=3.pt.123.abcdef12.tmp"  # what a kill -9 during a save leaves
    stale.write_bytes(b"")
    assert resumable_checkpoint(str(tmp_path)) == str(newer)
    assert not stale.exists()
    data = newer.read_bytes()
    for broken in (data[: len(data) // 2], data[:300] + b"\0" * 200 + data[500:]):  # truncated, garbage bytes
        newer.write_bytes(broken)
        with caplog.at_level(logging.WARNING):
            assert resumable_checkpoint(str(tmp_path)) == str(good)  # falls back to the previous good one
        assert str(newer) in caplog.text
        caplog.clear()
    good.write_bytes(b"garbage")
    with pytest.raises(CheckpointError) as error:
        resumable_checkpoint(str(tmp_path))
    assert str(newer) in str(error.value) and str(good) in str(error.value)


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {_Payload.marker}",))


def test_a_pickle_that_runs_code_is_refused_not_executed(tmp_path):
    _Payload.marker = tmp_path / "executed"
    path = tmp_path / "checkpoint_epoch=1.pt"
    torch.save({"trainer": _Payload()}, path)
    with pytest.raises(CheckpointError) as error:
        resumable_checkpoint(str(tmp_path))
    assert str(path) in str(error.value) and "refused" in str(error.value)
    # the loader of evaluate.json / inference.json refuses it the same way, naming the file
    loader = CheckpointLoader(load_path=str(path), load_dict={"model": torch.nn.Linear(1, 1)})
    with pytest.raises(CheckpointError, match="refused"):
        loader(Engine(lambda e, b: None))
    assert not _Payload.marker.exists()


def test_save_atomically_leaves_no_temporary_when_the_save_fails(tmp_path):
    with pytest.raises(Exception):
        save_atomically({"bad": lambda: None}, str(tmp_path / "model.pt"))  # a lambda cannot be pickled
    assert os.listdir(tmp_path) == []


@pytest.mark.extended
def test_kill_9_mid_epoch_then_resume_ends_with_the_uninterrupted_iteration_count(sample, tmp_path):
    """The real CLI: SIGKILL during epoch 2 of 3, then --resume True; the run ends at 3 epochs x 2 iterations."""
    runs, checkpoints = tmp_path / "runs", tmp_path / "runs" / "checkpoints"
    values = dict(TINY, max_epochs=3, val_interval=10)
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config_arg(*TRAIN), "--meta_file", META]
    command += cli_overrides(bundle_root=str(tmp_path), dataset_dir=sample["root"], output_dir=str(runs), **values)
    log = open(tmp_path / "first.log", "w")
    process = subprocess.Popen(command, cwd=REPO, env=cli_env(), stdout=log, stderr=subprocess.STDOUT)
    first = checkpoints / "checkpoint_epoch=1.pt"
    deadline = time.time() + 600
    while not first.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert first.exists(), (tmp_path / "first.log").read_text()[-3000:]
    os.kill(process.pid, signal.SIGKILL)  # epoch 2 has started: its first step takes seconds
    process.wait()
    log.close()
    assert process.returncode == -signal.SIGKILL
    assert not (checkpoints / "checkpoint_final.pt").exists()
    per_epoch = torch.load(first, weights_only=True)["trainer"]["iteration"]
    assert per_epoch == 2
    (checkpoints / ".checkpoint_epoch=2.pt.999.deadbeef.tmp").write_bytes(b"")  # as a kill during a save leaves

    result = subprocess.run(command + ["--resume", "True"], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    logs = result.stdout + result.stderr
    assert "checkpoint_epoch=2.pt.999.deadbeef.tmp" in logs  # the stale temporary was removed, with a log line
    final = torch.load(checkpoints / "checkpoint_final.pt", weights_only=True)["trainer"]
    assert final["max_epochs"] == 3 and final["iteration"] == 3 * per_epoch  # the uninterrupted count
    assert not [name for name in os.listdir(checkpoints) if name.startswith(".")]


# --- 0 iterations ---------------------------------------------------------------------------------------------


def test_require_training_iterations_names_the_sizes():
    loader = torch.utils.data.DataLoader(list(range(3)), batch_size=4, drop_last=True)
    with pytest.raises(ValueError) as error:
        require_training_iterations(loader, 4)
    assert "3 item(s)" in str(error.value) and "batch_size is 4" in str(error.value)
    assert require_training_iterations(torch.utils.data.DataLoader(list(range(8)), batch_size=4), 4) == 2


def test_training_with_an_empty_epoch_stops_before_training(sample, tmp_path):
    datalist = json.loads(Path(sample["datalist_pretrain"]).read_text())
    small = tmp_path / "one.json"
    small.write_text(json.dumps({"training": datalist["training"][:1], "validation": datalist["validation"][:1]}))
    workflow = ConfigWorkflow(
        config_file=TRAIN, workflow_type="train", bundle_root=str(tmp_path), dataset_dir=sample["root"],
        datalist=str(small), output_dir=str(tmp_path / "runs"), **TINY,
    )
    workflow.initialize()
    with pytest.raises(Exception) as error:
        workflow.run()
    text = "".join(str(e) for e in _chain(error.value))
    assert "1 item(s)" in text and "batch_size is 2" in text
    assert not (tmp_path / "models" / "model.pt").exists() and not (tmp_path / "runs" / "checkpoints").exists()


# --- non-finite losses and metrics ------------------------------------------------------------------------------


def test_a_non_finite_loss_stops_the_run_and_saves_nothing(sample, tmp_path):
    workflow = ConfigWorkflow(
        config_file=TRAIN, workflow_type="train", bundle_root=str(tmp_path), dataset_dir=sample["root"],
        output_dir=str(tmp_path / "runs"), max_epochs=1, val_interval=1, cmcl_weight="$float('nan')", **TINY,
    )
    workflow.initialize()
    with pytest.raises(Exception) as error:
        workflow.run()
    failure = next(e for e in _chain(error.value) if isinstance(e, NonFiniteError))
    assert "iteration 1" in str(failure) and "loss=nan" in str(failure) and "loss_cmcl=" in str(failure)
    assert not (tmp_path / "models" / "model.pt").exists()
    checkpoints = tmp_path / "runs" / "checkpoints"
    assert not checkpoints.exists() or not list(checkpoints.iterdir())


def test_evaluators_fail_on_non_finite_predictions_and_classification_reports_nan():
    engine = Engine(lambda e, b: None)
    engine.state.iteration = 3
    engine.state.batch = {"image": torch.zeros(1)}
    engine.state.output = [{"pred": torch.tensor([0.1, float("nan")])}]
    with pytest.raises(NonFiniteError, match="non-finite 'pred' at evaluation iteration 3"):
        RequireFiniteOutput()(engine)
    engine.state.output = [{"pred": torch.tensor([0.1, 0.2])}]
    RequireFiniteOutput()(engine)
    # BraTS: NaN probabilities once gave AUC 1.0; now every metric is NaN and the subjects are counted
    metrics = classification_metrics([0, 1, 1], np.array([[0.9, 0.1], [np.nan, np.nan], [0.2, 0.8]]))
    assert np.isnan(metrics["auc"]) and np.isnan(metrics["accuracy"]) and metrics["num_non_finite"] == 1


# --- symbolic links and zips ----------------------------------------------------------------------------------


def test_export_refuses_a_symlink_out_of_the_bundle(tmp_path):
    bundle, package = tmp_path / "b", tmp_path / "pkg"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "docs").mkdir()
    package.mkdir()
    (bundle / "LICENSE").write_text("x")
    (tmp_path / "secret.txt").write_text("x")
    (bundle / "docs" / "leak.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(ValueError) as error:
        bundle_entries(bundle, package)
    assert str(bundle / "docs" / "leak.txt") in str(error.value)


@pytest.mark.parametrize("bad", ["../escape.txt", "/tmp/absolute.txt"])
def test_install_refuses_a_path_traversal_zip_and_writes_nothing(tmp_path, bad):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("bundle/configs/train.json", "{}")
        z.writestr(bad, "x")
    target = tmp_path / "installed"
    for _ in range(2):  # a retry fails the same way: no partial folder is taken for a finished install
        with pytest.raises(ValueError) as error:
            install_bundle(str(archive), str(target))
        assert bad in str(error.value)
    assert not target.exists() and not (tmp_path / "escape.txt").exists()
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as z:
        z.writestr("bundle/configs/train.json", "{}")
    assert Path(install_bundle(str(good), str(target))) == target / "bundle"
    assert (target / "bundle" / "configs" / "train.json").is_file() and os.listdir(target) == ["bundle"]


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


# --- the same faults through the command line -------------------------------------------------------------------


class _PickledCode:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.extended
@pytest.mark.parametrize("fault", ["resume_without_checkpoint", "resume_from_corrupt_checkpoint",
                                   "resume_from_pickled_code", "non_finite_loss"])
def test_cli_run_fault_stops_with_a_message(fault, sample, tmp_path):
    """`python -m monai.bundle run training`: non-zero exit, a message naming the file or the loss, no model.pt."""
    runs, checkpoints = tmp_path / "runs", tmp_path / "runs" / "checkpoints"
    values = dict(TINY, max_epochs=1, val_interval=1)
    expected = {
        "resume_without_checkpoint": f"'{checkpoints}' holds no checkpoint*.pt file",
        "resume_from_corrupt_checkpoint": str(checkpoints / "checkpoint_epoch=1.pt"),
        "resume_from_pickled_code": str(checkpoints / "checkpoint_epoch=1.pt"),
        "non_finite_loss": "loss=nan",
    }[fault]
    if fault.startswith("resume"):
        values["resume"] = True
    if fault != "resume_without_checkpoint" and fault.startswith("resume"):
        checkpoints.mkdir(parents=True)
        if fault == "resume_from_corrupt_checkpoint":
            (checkpoints / "checkpoint_epoch=1.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
        else:
            torch.save({"trainer": _PickledCode()}, checkpoints / "checkpoint_epoch=1.pt")
    if fault == "non_finite_loss":
        values["cmcl_weight"] = "$float('nan')"
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config_arg(*TRAIN), "--meta_file", META]
    command += cli_overrides(bundle_root=str(tmp_path), dataset_dir=sample["root"], output_dir=str(runs), **values)
    result = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert expected in result.stdout + result.stderr, (result.stdout + result.stderr)[-3000:]
    assert not (tmp_path / "models" / "model.pt").exists()


@pytest.mark.extended
def test_cli_training_with_an_empty_epoch_stops_before_training(sample, tmp_path):
    datalist = json.loads(Path(sample["datalist_pretrain"]).read_text())
    small = tmp_path / "one.json"
    small.write_text(json.dumps({"training": datalist["training"][:1], "validation": datalist["validation"][:1]}))
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config_arg(*TRAIN), "--meta_file", META]
    command += cli_overrides(bundle_root=str(tmp_path), dataset_dir=sample["root"], datalist=str(small),
                             output_dir=str(tmp_path / "runs"), **TINY)
    result = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "1 item(s)" in result.stdout + result.stderr and "batch_size is 2" in result.stdout + result.stderr
    assert not (tmp_path / "models" / "model.pt").exists()


@pytest.mark.extended
def test_cli_evaluation_of_a_model_with_non_finite_weights_fails_instead_of_reporting(sample, tmp_path):
    """train.json + evaluate.json on a model.pt whose weights are NaN: no val_l1 of 0.0, a non-zero exit."""
    network = DAESwinUNETR(feature_size=TINY["feature_size"])
    (tmp_path / "models").mkdir()
    torch.save({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                for k, v in network.state_dict().items()}, tmp_path / "models" / "model.pt")
    configs = config_arg(*TRAIN, CONFIGS / 'evaluate.json')
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs, "--meta_file", META]
    command += cli_overrides(bundle_root=str(tmp_path), dataset_dir=sample["root"], output_dir=str(tmp_path / "eval"),
                             **TINY)
    result = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
    logs = result.stdout + result.stderr
    assert result.returncode != 0
    assert "non-finite" in logs.lower() and "val_l1: 0.0" not in logs


@pytest.mark.extended
def test_cli_export_and_install_refuse_links_and_path_traversal(tmp_path):
    bundle = tmp_path / "dae_pretrain"
    shutil.copytree(REPO / "bundles" / "dae_pretrain", bundle, ignore=shutil.ignore_patterns("models", "runs", "eval"))
    (tmp_path / "secret.txt").write_text("x")
    (bundle / "docs" / "leak.txt").symlink_to(tmp_path / "secret.txt")
    export = subprocess.run(tool_command("export_bundle", str(bundle), "--output_dir", str(tmp_path / "dist")),
                            cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert export.returncode != 0 and str(bundle / "docs" / "leak.txt") in export.stdout + export.stderr
    assert not list(tmp_path.rglob("*.zip"))
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("bundle/configs/train.json", "{}")
        z.writestr("../escape.txt", "x")
    install = subprocess.run(tool_command("install_bundle", str(archive), str(tmp_path / "installed")),
                             cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert install.returncode != 0 and "../escape.txt" in install.stdout + install.stderr
    assert not (tmp_path / "installed").exists() and not (tmp_path / "escape.txt").exists()
