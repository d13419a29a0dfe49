"""
Model-Zoo-style tests of the dae_btcv_seg bundle on small NIfTI phantoms written by the test: train, resume,
train + evaluate, multi-GPU overlay (one gloo rank in process, two CPU processes with torchrun), the CLI with
MLflow tracking, inference, pretrained weights, and the export commands.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow, ckpt_export, onnx_export, verify_net_in_out
from monai.networks.nets import SwinUNETR

from monai_dae.data.phantoms import BTCV_ORGANS, write_sample_dataset
from monai_dae.networks import DAESwinUNETR

from bundle_testing import BTCV_TINY, REPO, assert_png, cli_env, cli_overrides, record_epoch_starts

BUNDLE = os.path.join(REPO, "bundles", "dae_btcv_seg")
CONFIGS = os.path.join(BUNDLE, "configs")
TRAIN = os.path.join(CONFIGS, "train.json")
EVALUATE = os.path.join(CONFIGS, "evaluate.json")
MULTI_GPU = os.path.join(CONFIGS, "multi_gpu_train.json")
INFERENCE = os.path.join(CONFIGS, "inference.json")
META = os.path.join(CONFIGS, "metadata.json")
LOGGING = os.path.join(CONFIGS, "logging.conf")

FEATURE = BTCV_TINY["feature_size"]
ROI = [64, 64, 32]  # 32^3 leaves a 1^3 bottleneck that InstanceNorm rejects in training; 2 x 2 x 1 trains
SMALL = {**BTCV_TINY, "roi_size": ROI}


def _workflow(workflow_type: str, config_file, **override) -> ConfigWorkflow:
    return ConfigWorkflow(
        workflow_type=workflow_type, config_file=config_file, meta_file=META, logging_file=LOGGING, **override
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("btcv_data")
    paths = write_sample_dataset(
        str(root), num_ct=2, num_brain=2, ct_shape=(48, 48, 24), brain_shape=(16, 16, 16), num_validation=1
    )
    return paths["btcv_dir"]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """One training run (1 epoch, validation, best model saved): the Model Zoo train test."""
    bundle_root = str(tmp_path_factory.mktemp("btcv_bundle"))
    workflow = _workflow("train", TRAIN, bundle_root=bundle_root, dataset_dir=data, **SMALL)
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()
    return bundle_root


@pytest.mark.slow
def test_train(trained):
    assert os.path.isfile(os.path.join(trained, "models", "model.pt"))
    assert os.path.isfile(os.path.join(trained, "runs", "checkpoints", "checkpoint_final.pt"))
    state = torch.load(os.path.join(trained, "models", "model.pt"), weights_only=True)
    assert state["out.conv.conv.weight"].shape[0] == 14  # a plain state dict, loadable by MONAI Label
    figures = os.path.join(trained, "runs", "figures")
    assert sorted(os.listdir(figures)) == [
        "dice_per_organ.png", "dice_per_organ_best.png", "learning_curves.json", "learning_curves.png",
        "overlay.png", "overlay_best.png",
    ]  # the only validation is the best one
    assert assert_png(os.path.join(figures, "learning_curves.png")) == (3 * 400, 300)  # loss, mean Dice, per organ
    with open(os.path.join(figures, "learning_curves.json")) as f:
        curves = json.load(f)
    assert set(curves["train"]) == {"loss"} and "val_mean_dice" in curves["validation"]
    assert len([k for k in curves["validation"] if k.startswith("val_dice_")]) == 13
    assert assert_png(os.path.join(figures, "overlay.png")) == (640, 960)
    assert assert_png(os.path.join(figures, "dice_per_organ.png"), (800, 400))[1] == 400


@pytest.mark.slow
def test_train_evaluate(trained, data):
    workflow = _workflow("train", [TRAIN, EVALUATE], bundle_root=trained, dataset_dir=data, **SMALL)
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    figure_handler = workflow.parser.get_parsed_content("validate#handlers")[-1]
    drawn = figure_handler.dice(workflow.parser.get_parsed_content("validate#evaluator").state.metrics)
    workflow.finalize()
    eval_dir = os.path.join(trained, "eval")
    assert sorted(figure_handler.written) == [os.path.join(eval_dir, "figures", n) for n in ("dice_per_organ.png", "overlay.png")]
    assert assert_png(os.path.join(eval_dir, "figures", "overlay.png")) == (640, 960)
    with open(os.path.join(eval_dir, "val_mean_dice_raw.csv")) as f:
        per_class = [float(v) for v in list(csv.reader(f))[1][1:14]]  # the one case's Dice per organ
    assert list(drawn) == figure_handler.organs
    finite = [(a, b) for a, b in zip(drawn.values(), per_class) if np.isfinite(a) and np.isfinite(b)]
    assert finite and all(a == pytest.approx(b, abs=1e-4) for a, b in finite)  # the bars are the per-organ Dice
    with open(os.path.join(eval_dir, "metrics.csv")) as f:
        metrics = dict(csv.reader(f, delimiter=","))
    assert set(metrics) == {"val_mean_dice", "val_mean_dice_orig_space"}
    for name in ("val_mean_dice", "val_mean_dice_orig_space"):
        with open(os.path.join(eval_dir, f"{name}_raw.csv")) as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["filename"] + [f"class{i}" for i in range(13)] + ["mean"]  # class i = organ label i + 1
        assert len(rows) == 2 and rows[1][0].endswith("img0002.nii.gz")
        with open(os.path.join(eval_dir, f"{name}_summary.csv")) as f:
            assert next(csv.reader(f))[:3] == ["class", "mean", "std"]


@pytest.mark.slow
def test_multi_gpu_overlay_single_gloo_rank(trained, data, tmp_path, monkeypatch):
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MASTER_PORT", str(29500 + os.getpid() % 1000))
    workflow = _workflow("train", [TRAIN, MULTI_GPU], bundle_root=str(tmp_path), dataset_dir=data, **SMALL)
    workflow.initialize()
    try:
        assert workflow.check_properties() == []
        assert isinstance(workflow.parser.get_parsed_content("network"), torch.nn.parallel.DistributedDataParallel)
    finally:
        workflow.finalize()
    assert not torch.distributed.is_initialized()


@pytest.mark.slow
def test_resume_continues_from_the_latest_checkpoint(trained, data, tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(trained, root)
    overrides = {**SMALL, "bundle_root": str(root), "dataset_dir": data, "max_epochs": 2, "resume": True}
    workflow = _workflow("train", TRAIN, **overrides)
    workflow.initialize()
    started, best_at_start = record_epoch_starts(workflow)
    workflow.run()
    workflow.finalize()
    assert started == [2]  # epoch 1 came from the checkpoint
    # 1 training case, batch 1, 1 crop: 1 iteration per epoch
    assert workflow.parser.get_parsed_content("train#trainer").state.iteration == 2
    assert workflow.parser.get_parsed_content("train#lr_scheduler").last_epoch == 2
    # the best Dice so far came back with the training state, so a worse epoch cannot replace models/model.pt
    previous = torch.load(os.path.join(trained, "runs", "checkpoints", "checkpoint_final.pt"), weights_only=True)
    ((score, _),) = previous["best_model_saver"]["_saved"]
    assert best_at_start == [previous["best_model_saver"]] and 0 <= score <= 1
    # the learning curves of the resumed run start with the first run's epoch
    with open(root / "runs" / "figures" / "learning_curves.json") as f:
        curves = json.load(f)
    assert sorted(curves["train"]["loss"]) == ["1", "2"] and sorted(curves["validation"]["val_mean_dice"]) == ["1", "2"]


@pytest.mark.extended
def test_cli_training_with_mlflow_tracking(data, tmp_path):
    """``--tracking mlflow`` logs loss, learning rate, mean and per-organ Dice, the hyper-parameters and the config."""
    store = tmp_path / "mlflow.db"
    overrides = {**SMALL, "dataset_dir": data, "bundle_root": str(tmp_path), "learning_rate": 2e-4}
    command = [
        sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN, "--meta_file", META,
        "--tracking", "mlflow", "--tracking_uri", f"sqlite:///{store}", "--experiment_name", "btcv_test",
        f"--output_dir=$'{tmp_path / 'runs'}'",  # a plain path would silently drop the config artifact
        *cli_overrides(**overrides),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert os.path.isfile(os.path.join(tmp_path, "models", "model.pt"))
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{store}")
    (run,) = client.search_runs([client.get_experiment_by_name("btcv_test").experiment_id])
    organs = {"val_dice_" + organ.replace(" ", "_") for organ in BTCV_ORGANS}
    assert {"train_loss", "lr_group_0", "val_mean_dice"} | organs <= set(run.data.metrics)
    (loss,) = client.get_metric_history(run.info.run_id, "train_loss")  # 1 training case: 1 iteration
    assert np.isfinite(loss.value) and loss.step == 1
    (val_dice,) = client.get_metric_history(run.info.run_id, "val_mean_dice")
    assert 0.0 <= val_dice.value <= 1.0 and val_dice.step == 1
    # warm-up of 1 step out of 1: the learning rate logged after the scheduler step is the peak, 2e-4
    assert [m.value for m in client.get_metric_history(run.info.run_id, "lr_group_0")] == pytest.approx([2e-4])
    params = run.data.params
    assert params["learning_rate"] == "0.0002" and params["feature_size"] == "12" and params["max_epochs"] == "1"
    assert params["roi_size"] == str(ROI) and params["pretrained_path"] == "" and params["stem"] == "patch"
    assert params["pixdim"] == "[1.5, 1.5, 2.0]" and params["hu_window"] == "[-175, 250]"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    (config_path,) = [a for a in artifacts if a.startswith("config_") and a.endswith(".json")]
    assert artifacts - {config_path} == {
        "learning_curves.png", "learning_curves.json", "dice_per_organ.png", "dice_per_organ_best.png", "overlay.png",
        "overlay_best.png",
    }  # the run's figures
    config = json.loads(open(client.download_artifacts(run.info.run_id, config_path, str(tmp_path))).read())
    assert config["learning_rate"] == 2e-4 and config["roi_size"] == ROI  # the merged config


@pytest.mark.extended
def test_torchrun_two_cpu_processes_with_the_multi_gpu_overlay(data, tmp_path):
    with open(os.path.join(data, "dataset_0.json")) as f:
        content = json.load(f)
    cases = content["training"] + content["validation"]
    datalist = tmp_path / "both_cases.json"  # 2 cases: one per rank for training and for validation
    datalist.write_text(json.dumps({"training": cases, "validation": cases}))
    overrides = {**SMALL, "dataset_dir": data, "datalist": str(datalist), "bundle_root": str(tmp_path)}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "training", "--config_file", f"['{TRAIN}','{MULTI_GPU}']", "--meta_file", META,
        *cli_overrides(**overrides),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    logs = result.stdout + result.stderr
    assert logs.count("SupervisedTrainer - INFO - Epoch[1] Complete") == 1  # rank 0 logs only
    assert logs.count("Key metric: val_mean_dice best value") == 1  # one validation, logged once
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert state and not any(k.startswith("module.") for k in state)  # saved from the unwrapped network
    final = torch.load(tmp_path / "runs" / "checkpoints" / "checkpoint_final.pt", weights_only=True)
    assert final["trainer"]["iteration"] == 1  # 2 cases over 2 ranks, batch 1: 1 iteration per rank
    assert not any(k.startswith("module.") for k in final["model"])


@pytest.mark.slow
def test_inference_keeps_shape_and_affine(trained, data, tmp_path):
    images = sorted(glob.glob(os.path.join(data, "imagesTr", "*.nii.gz")))
    # the second entry carries the string "image_path" that MONAI Label adds
    datalist = [{"image": images[0]}, {"image": images[1], "image_path": images[1]}]
    output_dir = str(tmp_path / "pred")
    workflow = _workflow(
        "infer",
        INFERENCE,
        bundle_root=trained,
        dataset_dir=data,
        datalist=datalist,
        output_dir=output_dir,
        feature_size=FEATURE,
        roi_size=ROI,
        sw_batch_size=1,
        num_workers=0,
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()
    for image_path in images:
        name = os.path.basename(image_path).replace(".nii.gz", "_seg.nii.gz")
        pred, image = nib.load(os.path.join(output_dir, name)), nib.load(image_path)
        assert pred.shape == image.shape
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-4)
        values = np.unique(np.asarray(pred.dataobj))
        assert pred.get_data_dtype() == np.uint8 and values.min() >= 0 and values.max() <= 13


def test_inference_single_image_from_command_line(trained, data):
    image = sorted(glob.glob(os.path.join(data, "imagesTr", "*.nii.gz")))[0]
    workflow = _workflow("infer", INFERENCE, bundle_root=trained, image=image, feature_size=FEATURE)
    workflow.initialize()
    assert workflow.parser.get_parsed_content("dataset#data") == [{"image": image}]
    workflow.finalize()


@pytest.mark.slow
def test_pretrained_path_from_dae_pretrain(data, tmp_path):
    source = DAESwinUNETR(feature_size=FEATURE)
    path = str(tmp_path / "model.pt")
    torch.save(source.state_dict(), path)  # what dae_pretrain's CheckpointSaver writes
    workflow = _workflow("train", TRAIN, bundle_root=str(tmp_path), dataset_dir=data, pretrained_path=path, **SMALL)
    results = workflow.initialize()
    report = results[-1]
    network = workflow.parser.get_parsed_content("network_def")
    backbone = [k for k in network.state_dict() if not k.startswith("out.")]
    assert report.layout == "dae_bundle" and sorted(report.loaded) == sorted(backbone)
    assert report.missing == ["out.conv.conv.weight", "out.conv.conv.bias"]
    expected = source.state_dict()
    for key in ("swinViT.layers3.0.blocks.1.mlp.linear2.weight", "decoder2.conv_block.conv1.conv.weight"):
        torch.testing.assert_close(network.state_dict()[key], expected[key])
    workflow.finalize()

    # load_decoder false: the decoder stays newly initialised
    workflow = _workflow(
        "train", TRAIN, bundle_root=str(tmp_path), dataset_dir=data, pretrained_path=path, load_decoder=False, **SMALL
    )
    report = workflow.initialize()[-1]
    assert all(k.startswith("swinViT.") for k in report.loaded)
    assert "decoder2.conv_block.conv1.conv.weight" in report.missing
    workflow.finalize()


@pytest.mark.slow
def test_pretrained_official_checkpoint_needs_conv_stem(data, tmp_path):
    from test_weights import make_dae_official

    path = str(tmp_path / "ckpt_best.pth")
    make_dae_official(path)
    workflow = _workflow("train", TRAIN, bundle_root=str(tmp_path), dataset_dir=data, pretrained_path=path, **SMALL)
    with pytest.raises(RuntimeError) as error:
        workflow.initialize()
    assert "set the bundle config key 'stem' to 'conv'" in str(error.value.__cause__)  # the config wraps it
    workflow = _workflow(
        "train", TRAIN, bundle_root=str(tmp_path), dataset_dir=data, pretrained_path=path, stem="conv", **SMALL
    )
    report = workflow.initialize()[-1]
    assert report.layout == "dae_official" and "swinViT.patch_embed.proj.conv1.conv.weight" in report.loaded
    assert report.num_missing == 2  # the new 14-class head
    workflow.finalize()


@pytest.mark.extended
def test_verify_net_in_out_and_exports(trained, tmp_path):
    shape = {
        "_meta_#network_data_format#inputs#image#spatial_shape": ROI,
        "_meta_#network_data_format#outputs#pred#spatial_shape": ROI,
    }
    verify_net_in_out(
        net_id="network_def", meta_file=META, config_file=INFERENCE, device="cpu", feature_size=FEATURE, **shape
    )

    ckpt = os.path.join(trained, "models", "model.pt")
    ts_path = str(tmp_path / "model.ts")
    ckpt_export(
        net_id="network_def",
        filepath=ts_path,
        ckpt_file=ckpt,
        meta_file=META,
        config_file=INFERENCE,
        use_trace=True,
        input_shape=[1, 1, *ROI],
        bundle_root=trained,
        feature_size=FEATURE,
    )
    eager = SwinUNETR(in_channels=1, out_channels=14, feature_size=FEATURE)
    eager.load_state_dict(torch.load(ckpt, weights_only=True))
    eager.eval()
    scripted = torch.jit.load(ts_path)
    x = torch.rand(1, 1, *ROI)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x), atol=1e-4, rtol=1e-4)

    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    onnx_path = str(tmp_path / "model.onnx")
    onnx_export(
        net_id="network_def",
        filepath=onnx_path,
        ckpt_file=ckpt,
        meta_file=META,
        config_file=INFERENCE,
        input_shape=[1, 1, *ROI],
        bundle_root=trained,
        feature_size=FEATURE,
    )
    model = onnx.load(onnx_path)
    onnx.checker.check_model(model)
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 14, *ROI]
