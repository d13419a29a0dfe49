"""
Model-Zoo-style tests of the ``dae_pretrain`` bundle: small NIfTI files written here, then the real
``monai.bundle`` machinery (``ConfigWorkflow``, the ``python -m monai.bundle`` CLI and ``torchrun``) with tiny
overrides. Training runs at 64^3 (the Swin UNETR decoder needs more than a 1^3 bottleneck in training mode).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.networks.nets import SwinUNETR

from monai_dae.data.phantoms import write_sample_dataset

from bundle_testing import DAE_TRAIN, REPO, assert_png, cli_env, cli_overrides, config_arg, record_epoch_starts

CONFIGS = REPO / "bundles" / "dae_pretrain" / "configs"
TRAIN = DAE_TRAIN
EVALUATE = str(CONFIGS / "evaluate.json")
INFERENCE = str(CONFIGS / "inference.json")
MULTI_GPU = str(CONFIGS / "multi_gpu_train.json")
META = str(CONFIGS / "metadata.json")
LOGGING = str(CONFIGS / "logging.conf")

TINY = {
    "roi_size": [64, 64, 64],
    "feature_size": 12,
    "batch_size": 2,
    "num_workers": 0,
    "cache_rate": 0.0,
    "max_epochs": 1,
    "val_interval": 1,
    "sw_batch_size": 1,
    "progress_bar": False,
    "device": "cpu",
    "amp": False,
}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> dict[str, str]:
    """A small CT + brain MRI data set: 1 CT and 1 brain case (4 modality files) for training and for validation."""
    return write_sample_dataset(
        str(tmp_path_factory.mktemp("sample")),
        num_ct=2,
        num_brain=2,
        ct_shape=(64, 56, 40),
        brain_shape=(48, 48, 40),
        num_validation=1,
    )


@pytest.fixture(scope="module")
def trained(sample, tmp_path_factory) -> dict:
    """One epoch of pretraining through ConfigWorkflow, with the objects needed by the assertions."""
    root = tmp_path_factory.mktemp("bundle")
    overrides = {**TINY, "bundle_root": str(root), "dataset_dir": sample["root"], "output_dir": str(root / "runs")}
    workflow = ConfigWorkflow(
        config_file=TRAIN, meta_file=META, logging_file=LOGGING, workflow_type="train", **overrides
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    result = {
        "root": root,
        "overrides": overrides,
        "train_metrics": dict(trainer.state.metrics),
        "train_output": dict(trainer.state.output[0]),  # decollated: one dict per sample
        "iterations": trainer.state.iteration,
        "val_metrics": dict(evaluator.state.metrics),
    }
    workflow.finalize()
    return result


def test_train_logs_both_loss_components_and_validation_metrics(trained):
    assert trained["iterations"] == 2  # 5 training files, 2 per batch (2 crops each), drop_last
    output = trained["train_output"]
    assert {"loss", "loss_l1", "loss_cmcl"} <= set(output)
    assert float(output["loss"]) == pytest.approx(float(output["loss_l1"]) + 0.05 * float(output["loss_cmcl"]), rel=1e-5)
    metrics = trained["train_metrics"]
    assert {"epoch_loss", "epoch_loss_l1", "epoch_loss_cmcl"} <= set(metrics)
    # two crops of each volume, and volumes of different modalities in each batch: CMCL is active
    assert metrics["epoch_loss_cmcl"] > 0
    assert metrics["epoch_loss"] == pytest.approx(metrics["epoch_loss_l1"] + 0.05 * metrics["epoch_loss_cmcl"], rel=1e-5)
    val = trained["val_metrics"]
    assert 0 < val["val_l1"] < 1
    assert np.isfinite(val["val_psnr"]) and val["val_psnr"] > 0
    assert -1 <= val["val_ssim"] <= 1


def test_train_writes_checkpoints_previews_and_tensorboard(trained):
    root = trained["root"]
    assert (root / "models" / "model.pt").is_file()
    checkpoints = sorted(p.name for p in (root / "runs" / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint_epoch=1.pt", "checkpoint_final.pt"]  # the epoch checkpoint, then the last
    resumable = torch.load(root / "runs" / "checkpoints" / "checkpoint_final.pt", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "trainer"} <= set(resumable)
    previews = sorted(p.name for p in (root / "runs" / "previews").rglob("*.png"))
    assert previews == ["preview_epoch0001.png"]
    # one row per modality (3 of the 5 validation files, one per modality), 3 panels x 3 planes of 260 px each
    assert assert_png(root / "runs" / "previews" / previews[0]) == (9 * 260, 3 * 260)
    assert list((root / "runs" / "tensorboard").glob("events.out.tfevents.*"))


def test_train_writes_learning_curves(trained):
    figures = trained["root"] / "runs" / "figures"
    # loss, loss_cmcl, loss_l1, val_l1, val_psnr, val_ssim: 2 rows of 3 subplots
    assert assert_png(figures / "learning_curves.png") == (3 * 400, 2 * 300)
    curves = json.loads((figures / "learning_curves.json").read_text())
    assert set(curves["train"]) == {"loss", "loss_l1", "loss_cmcl"}
    assert curves["train"]["loss_cmcl"]["1"] == pytest.approx(trained["train_metrics"]["epoch_loss_cmcl"])
    assert set(curves["validation"]) == {"val_l1", "val_psnr", "val_ssim"}
    assert curves["validation"]["val_l1"]["1"] == pytest.approx(trained["val_metrics"]["val_l1"])


def test_saved_model_backbone_loads_into_stock_swin_unetr(trained):
    state = torch.load(trained["root"] / "models" / "model.pt", weights_only=True)
    stock = SwinUNETR(in_channels=1, out_channels=14, feature_size=12)
    backbone = {k: v for k, v in state.items() if not k.startswith(("out.", "projection_head."))}
    missing, unexpected = stock.load_state_dict(backbone, strict=False)
    assert unexpected == []
    assert sorted(missing) == ["out.conv.conv.bias", "out.conv.conv.weight"]
    head = {k: v for k, v in stock.state_dict().items() if k.startswith("out.")}
    stock.load_state_dict({**backbone, **head}, strict=True)
    assert torch.equal(stock.swinViT.patch_embed.proj.weight, state["swinViT.patch_embed.proj.weight"])


def test_resume_continues_from_the_latest_checkpoint(trained, tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(trained["root"], root)
    overrides = {**trained["overrides"], "bundle_root": str(root), "output_dir": str(root / "runs")}
    overrides.update(max_epochs=2, resume=True)
    workflow = ConfigWorkflow(config_file=TRAIN, meta_file=META, workflow_type="train", **overrides)
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    best_model_saver = workflow.parser.get_parsed_content("validate#best_model_saver")
    started, best_at_start = record_epoch_starts(workflow)
    workflow.run()
    assert started == [2]  # epoch 1 came from the checkpoint
    assert trainer.state.iteration == 4
    # the best-model tracker came back with the training state: epoch 1's validation L1 (negated: lower is better)
    ((score, filename),) = best_at_start[0]["_saved"]
    assert score == pytest.approx(-trained["val_metrics"]["val_l1"]) and filename.endswith(".pt")
    final = torch.load(root / "runs" / "checkpoints" / "checkpoint_final.pt", weights_only=True)
    assert final["best_model_saver"] == best_model_saver.state_dict()
    assert not [name for name in os.listdir(root / "runs" / "checkpoints") if name.startswith(".")]  # no temporaries
    # both key metrics (training loss, validation L1) are better when lower, also in the engines' best-value logs
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    assert trainer.metric_cmp_fn(0.1, 0.2) and not evaluator.metric_cmp_fn(0.2, 0.1)
    assert evaluator.state.best_metric == pytest.approx(evaluator.state.metrics["val_l1"])
    workflow.finalize()
    # the learning curves continue the first run's: epoch 1 read back from learning_curves.json, then epoch 2
    curves = json.loads((root / "runs" / "figures" / "learning_curves.json").read_text())
    assert curves["validation"]["val_l1"]["1"] == pytest.approx(trained["val_metrics"]["val_l1"])
    assert sorted(curves["train"]["loss_cmcl"]) == ["1", "2"] and sorted(curves["validation"]["val_psnr"]) == ["1", "2"]


def test_train_and_evaluate_overlay_reproduces_validation_l1(trained):
    root = trained["root"]
    overrides = {**trained["overrides"], "output_dir": str(root / "eval")}
    workflow = ConfigWorkflow(config_file=[*TRAIN, EVALUATE], meta_file=META, workflow_type="train", **overrides)
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    metrics = dict(evaluator.state.metrics)
    workflow.finalize()
    # models/model.pt was saved at the best (only) validation of training, under the same disruption seed
    assert metrics["val_l1"] == pytest.approx(trained["val_metrics"]["val_l1"], rel=1e-5)
    assert (root / "eval" / "val_l1_raw.csv").is_file()
    rows = (root / "eval" / "val_l1_raw.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 5  # header + one row per validation file
    previews = sorted((root / "eval" / "previews").glob("*.png"))
    assert len(previews) == 5 and all(assert_png(p) == (9 * 260, 260) for p in previews)  # one row per file


def test_inference_writes_reconstructions_aligned_with_the_inputs(trained, sample):
    root = trained["root"]
    out = root / "infer"
    workflow = ConfigWorkflow(
        config_file=INFERENCE,
        meta_file=META,
        workflow_type="infer",
        bundle_root=str(root),
        dataset_dir=sample["root"],
        output_dir=str(out),
        roi_size=[64, 64, 64],
        feature_size=12,
        sw_batch_size=1,
        num_workers=0,
        device="cpu",
        amp=False,
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()
    datalist = json.loads(Path(sample["datalist_pretrain"]).read_text())["validation"]
    for item in datalist:
        source = nib.load(os.path.join(sample["root"], item["image"]))
        name = Path(item["image"]).name.replace(".nii.gz", "_recon.nii.gz")
        recon = nib.load(out / name)
        assert recon.shape == source.shape
        np.testing.assert_allclose(recon.affine, source.affine, atol=1e-4)
        assert np.isfinite(recon.get_fdata()).all()
    assert list((out / "previews").glob("*.png"))


def _bundle_cli(*args: str, cwd: Path = REPO, timeout: int = 900) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "monai.bundle", *args]
    return subprocess.run(command, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_cli_training_on_a_user_datalist_with_mlflow_tracking(sample, tmp_path):
    """A data list written by hand (other names, absolute and relative paths) through the real CLI and MLflow."""
    data = tmp_path / "my_data"
    data.mkdir()
    source = json.loads(Path(sample["datalist_pretrain"]).read_text())
    entries = []
    for index, item in enumerate(source["training"] + source["validation"]):
        target = data / f"scan_{index:02d}.nii.gz"  # no modality in the name: the field is the only source
        target.write_bytes((Path(sample["root"]) / item["image"]).read_bytes())
        entries.append({"image": target.name, "modality": item["modality"].upper()})
    datalist = tmp_path / "my_list.json"
    datalist.write_text(json.dumps({"training": entries[:5], "validation": entries[-2:]}))
    store = tmp_path / "mlflow.db"
    result = _bundle_cli(
        "run",
        "training",
        "--config_file",
        config_arg(*TRAIN),
        "--meta_file",
        META,
        "--tracking",
        "mlflow",
        *cli_overrides(
            dataset_dir=str(data),
            datalist=str(datalist),
            bundle_root=str(tmp_path / "bundle"),
            output_dir=f"$'{tmp_path / 'out'}'",
            tracking_uri=f"sqlite:///{store}",
            experiment_name="dae_test",
            **{k: v for k, v in TINY.items() if k not in ("device", "amp")},
        ),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "bundle" / "models" / "model.pt").is_file()

    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("dae_test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    logged = runs[0].data.metrics
    assert {"train_loss", "epoch_loss", "epoch_loss_l1", "epoch_loss_cmcl", "val_l1", "val_psnr", "val_ssim"} <= set(logged)
    assert logged["epoch_loss"] == pytest.approx(logged["epoch_loss_l1"] + 0.05 * logged["epoch_loss_cmcl"], rel=1e-4)
    assert "lr_group_0" in logged
    history = client.get_metric_history(runs[0].info.run_id, "train_loss")
    assert len(history) == 2  # one per iteration
    params = runs[0].data.params  # the executed config's settings, given to the tracking handler in "run"
    assert params["feature_size"] == "12" and params["batch_size"] == "2" and params["roi_size"] == "[64, 64, 64]"
    assert params["mask_ratio"] == "0.6" and params["noise_variance"] == "0.1" and params["cmcl_weight"] == "0.05"
    assert params["datalist"] == str(datalist) and params["stem"] == "patch"
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    (config_path,) = [a for a in artifacts if a.startswith("config_") and a.endswith(".json")]
    # the figures (learning curves, previews) are artifacts of the run too
    assert artifacts - {config_path} == {"learning_curves.png", "learning_curves.json", "preview_epoch0001.png"}
    config = json.loads(Path(client.download_artifacts(runs[0].info.run_id, config_path, str(tmp_path))).read_text())
    assert config["feature_size"] == 12 and config["datalist"] == str(datalist)  # the merged, executed config


@pytest.mark.extended
def test_torchrun_two_cpu_processes_with_the_multi_gpu_overlay(sample, tmp_path):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        config_arg(*TRAIN, MULTI_GPU),
        "--meta_file",
        META,
        *cli_overrides(
            dataset_dir=sample["root"],
            bundle_root=str(tmp_path),
            output_dir=str(tmp_path / "runs"),
            **{k: v for k, v in TINY.items() if k not in ("device", "amp")},
        ),
    ]
    result = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    # 5 training files over 2 ranks (even_divisible pads to 3 each), batch 2 with drop_last: 1 iteration per rank
    logs = result.stdout + result.stderr
    assert logs.count("SupervisedTrainer - INFO - Epoch[1] Complete") == 1  # rank 0 logs only
    assert (tmp_path / "models" / "model.pt").is_file()
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # saved from the unwrapped network
    final = torch.load(tmp_path / "runs" / "checkpoints" / "checkpoint_final.pt", weights_only=True)
    assert final["trainer"]["iteration"] == 1


def _write_datalist(path: Path, training: list[dict], validation: list[dict] | None = None) -> str:
    path.write_text(json.dumps({"training": training, "validation": validation or training}))
    return str(path)


def _parse_training_data(dataset_dir: Path, datalist: str):
    workflow = ConfigWorkflow(
        config_file=TRAIN, workflow_type="train", dataset_dir=str(dataset_dir), datalist=datalist, bundle_root=str(dataset_dir)
    )
    workflow.initialize()
    return workflow.parser.get_parsed_content("train#dataset")


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "image file not found"),
        ("corrupt", "unreadable NIfTI"),
        ("unknown_modality", "unknown modality"),
        ("empty", "empty"),
        ("two_channels", "wrong channel count"),
    ],
)
def test_bad_input_fails_with_a_message_naming_the_problem(tmp_path, case, message):
    good = tmp_path / "good_ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), good)
    entries = {
        "missing": [{"image": "absent_ct.nii.gz", "modality": "ct"}],
        "corrupt": [{"image": "broken_ct.nii.gz", "modality": "ct"}],
        "unknown_modality": [{"image": good.name, "modality": "pet"}],
        "empty": [],
        "two_channels": [{"image": "dual_ct.nii.gz", "modality": "ct"}],
    }[case]
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.float32), np.eye(4)), tmp_path / "dual_ct.nii.gz")
    (tmp_path / "broken_ct.nii.gz").write_bytes(b"this is not a NIfTI file")
    datalist = _write_datalist(tmp_path / "list.json", entries)
    with pytest.raises(Exception) as error:
        _parse_training_data(tmp_path, datalist)
    text = str(error.value) + "".join(str(e) for e in _causes(error.value))
    assert message.lower() in text.lower()
    if case != "empty":
        assert entries[0]["image"] in text  # the file is named


def _causes(error: BaseException):
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
        yield error
