"""
Model-Zoo-style tests of the ``dae_brats_cls`` bundle: 4-modality NIfTI phantoms in the BraTS 2018 layout are
written here, the data list is built with ``tools/brats_datalist.py``, then the real ``monai.bundle`` machinery
(``ConfigWorkflow``, ``verify_net_in_out``, ``ckpt_export``, ``onnx_export``) runs with tiny overrides: 32^3
inputs (the encoder alone trains at 32^3), feature size 12, one epoch.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import pytest
import torch
from monai.bundle import ConfigWorkflow, ckpt_export, onnx_export, verify_metadata, verify_net_in_out
from onnx.reference import ReferenceEvaluator

from monai_dae.data.brats import SubjectError
from monai_dae.data.phantoms import write_sample_dataset
from monai_dae.networks import DAESwinUNETR, SwinClassifier
from tools.brats_datalist import build as build_datalist

from bundle_testing import REPO, assert_png, cli_env, cli_overrides, record_epoch_starts

CONFIGS = REPO / "bundles" / "dae_brats_cls" / "configs"
TRAIN = str(CONFIGS / "train.json")
EVALUATE = str(CONFIGS / "evaluate.json")
INFERENCE = str(CONFIGS / "inference.json")
MULTI_GPU = str(CONFIGS / "multi_gpu_train.json")
META = str(CONFIGS / "metadata.json")
LOGGING = str(CONFIGS / "logging.conf")
SCHEMA = REPO / "tools" / "schema" / "meta_schema_20240725.json"  # Model Zoo schema, md5 06954cad2cc5d3784e72077ac76f0fc8

NUM_SUBJECTS = 6  # 3 HGG, 3 LGG; 3 folds: 4 training and 2 validation subjects (one per class)
TINY = {
    "spatial_size": [32, 32, 32],
    "feature_size": 12,
    "batch_size": 2,
    "num_workers": 0,
    "cache_rate": 0.0,
    "max_epochs": 1,
    "val_interval": 1,
    "progress_bar": False,
    "device": "cpu",
    "amp": False,
}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> dict[str, str]:
    """Brain phantoms in the BraTS 2018 layout and their classification data list (3 stratified folds)."""
    paths = write_sample_dataset(
        str(tmp_path_factory.mktemp("sample")),
        num_ct=2,
        num_brain=NUM_SUBJECTS,
        ct_shape=(16, 16, 8),
        brain_shape=(40, 40, 32),
    )
    datalist = build_datalist(data_dir=paths["brats_dir"], num_folds=3)
    return {"dataset_dir": paths["brats_dir"], "datalist": datalist}


@pytest.fixture(scope="module")
def pretrained_path(tmp_path_factory) -> str:
    """1-channel DAE weights as the dae_pretrain bundle saves them (a DAESwinUNETR state dict)."""
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("pretrained") / "model.pt"
    torch.save(DAESwinUNETR(in_channels=1, out_channels=1, feature_size=12).state_dict(), path)
    return str(path)


def _run(config_file, workflow_type: str = "train", **overrides) -> ConfigWorkflow:
    workflow = ConfigWorkflow(
        config_file=config_file, meta_file=META, logging_file=LOGGING, workflow_type=workflow_type, **overrides
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    return workflow


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(sample, pretrained_path, tmp_path_factory) -> dict:
    """One epoch of fine-tuning from (adapted) DAE weights through ConfigWorkflow."""
    root = tmp_path_factory.mktemp("bundle")
    overrides = {**TINY, **sample, "bundle_root": str(root), "pretrained_path": pretrained_path}
    workflow = _run(TRAIN, **overrides)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    result = {
        "root": root,
        "overrides": overrides,
        "iterations": trainer.state.iteration,
        "val_metrics": dict(evaluator.state.metrics),
        "report": workflow.parser.get_parsed_content("load_pretrained"),
        "loss_weight": workflow.parser.get_parsed_content("loss").weight,
    }
    workflow.finalize()
    return result


def test_train_loads_adapted_weights_and_validates(trained):
    report = trained["report"]
    assert report.adapted == ["swinViT.patch_embed.proj.weight"]
    assert report.missing and all(k.startswith("head") for k in report.missing)
    assert trained["iterations"] == 2  # 4 training subjects, batch 2
    assert torch.equal(trained["loss_weight"].cpu(), torch.tensor([1.0, 1.0]))  # 2 HGG, 2 LGG: balanced
    metrics = trained["val_metrics"]
    assert {"val_auc", "val_accuracy", "val_balanced_accuracy"} <= set(metrics)
    assert metrics["val_accuracy"] in (0.0, 0.5, 1.0)
    root = trained["root"]
    assert (root / "models" / "model.pt").is_file()
    resumable = torch.load(root / "runs" / "checkpoints" / "checkpoint_final.pt", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "trainer"} <= set(resumable)
    rows = _read_csv(root / "runs" / "val_predictions.csv")
    assert len(rows) == 2 and {r["label"] for r in rows} == {"HGG", "LGG"}
    assert list((root / "runs" / "tensorboard").glob("events.out.tfevents.*"))
    figures = root / "runs" / "figures"
    assert sorted(p.name for p in figures.iterdir()) == [
        "learning_curves.json", "learning_curves.png", "val_confusion_matrix.png", "val_roc_curve.png"
    ]
    assert assert_png(figures / "learning_curves.png") == (3 * 400, 2 * 300)  # loss, val_auc, val_accuracy, val_balanced_accuracy
    assert assert_png(figures / "val_roc_curve.png") == (500, 500)
    assert assert_png(figures / "val_confusion_matrix.png") == (440, 440)
    curves = json.loads((figures / "learning_curves.json").read_text())
    assert curves["validation"]["val_auc"]["1"] == pytest.approx(metrics["val_auc"])


def test_train_and_evaluate_writes_probabilities_and_confusion_matrix(trained):
    root = trained["root"]
    workflow = _run([TRAIN, EVALUATE], **trained["overrides"])
    metrics = dict(workflow.parser.get_parsed_content("validate#evaluator").state.metrics)
    workflow.finalize()
    # models/model.pt is the (only) validated state: evaluating it reproduces the training's validation
    for name in ("val_auc", "val_accuracy", "val_balanced_accuracy"):
        assert metrics[name] == pytest.approx(trained["val_metrics"][name])
    rows = _read_csv(root / "runs" / "eval" / "predictions.csv")
    assert [list(r) for r in rows[:1]] == [["subject", "label", "predicted", "prob_HGG", "prob_LGG"]]
    assert len(rows) == 2
    for row in rows:
        assert float(row["prob_HGG"]) + float(row["prob_LGG"]) == pytest.approx(1.0, abs=1e-5)
        assert row["predicted"] == ("HGG" if float(row["prob_HGG"]) >= float(row["prob_LGG"]) else "LGG")
    summary = json.loads((root / "runs" / "eval" / "metrics.json").read_text())
    assert summary["accuracy"] == pytest.approx(metrics["val_accuracy"])
    assert summary["auc"] == pytest.approx(metrics["val_auc"])
    assert summary["balanced_accuracy"] == pytest.approx(metrics["val_balanced_accuracy"])
    confusion = [r for r in csv.reader(open(root / "runs" / "eval" / "confusion_matrix.csv"))]
    assert confusion[0][1:] == ["HGG", "LGG"] and [r[0] for r in confusion[1:]] == ["HGG", "LGG"]
    assert sum(int(v) for r in confusion[1:] for v in r[1:]) == 2
    for name in ("roc_curve.png", "confusion_matrix.png"):  # next to the CSV files
        assert assert_png(root / "runs" / "eval" / name, (400, 400))


def test_inference_writes_class_probabilities_per_subject(trained, sample):
    root = trained["root"]
    out = root / "infer"
    workflow = _run(
        INFERENCE,
        "infer",
        **sample,
        bundle_root=str(root),
        output_dir=str(out),
        spatial_size=[32, 32, 32],
        feature_size=12,
        num_workers=0,
        device="cpu",
        amp=False,
    )
    workflow.finalize()
    rows = _read_csv(out / "predictions.csv")
    assert len(rows) == NUM_SUBJECTS and len({r["subject"] for r in rows}) == NUM_SUBJECTS
    assert not (out / "metrics.json").exists()  # inference writes probabilities only
    evaluated = {r["subject"]: r for r in _read_csv(root / "runs" / "eval" / "predictions.csv")}
    for row in rows:  # the same model and preprocessing give the same probabilities
        if row["subject"] in evaluated:
            assert float(row["prob_LGG"]) == pytest.approx(float(evaluated[row["subject"]]["prob_LGG"]), abs=1e-5)


def _trained_classifier(root: Path) -> SwinClassifier:
    """The best model of a bundle run, as an eager network in evaluation mode."""
    network = SwinClassifier(in_channels=4, num_classes=2, feature_size=12)
    network.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    return network.eval()


def test_verify_net_in_out_and_torchscript_export(trained, tmp_path):
    root = trained["root"]
    overrides = {"feature_size": 12, "_meta_#network_data_format#inputs#image#spatial_shape": [32, 32, 32]}
    verify_net_in_out(net_id="network_def", meta_file=META, config_file=TRAIN, device="cpu", **overrides)
    exported = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(exported),
        ckpt_file=str(root / "models" / "model.pt"),
        meta_file=META,
        config_file=TRAIN,
        use_trace=True,
        input_shape=[1, 4, 32, 32, 32],
        feature_size=12,
    )
    scripted = torch.jit.load(str(exported))
    eager = _trained_classifier(root)
    x = torch.randn(1, 4, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x))


@pytest.mark.extended
def test_onnx_export(trained, tmp_path):
    exported = tmp_path / "model.onnx"
    onnx_export(
        net_id="network_def",
        filepath=str(exported),
        ckpt_file=str(trained["root"] / "models" / "model.pt"),
        meta_file=META,
        config_file=TRAIN,
        input_shape=[1, 4, 32, 32, 32],
        feature_size=12,
    )
    model = onnx.load(str(exported))
    onnx.checker.check_model(model, full_check=True)
    (graph_input,) = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    (graph_output,) = model.graph.output
    assert [d.dim_value for d in graph_input.type.tensor_type.shape.dim] == [1, 4, 32, 32, 32]
    assert [d.dim_value for d in graph_output.type.tensor_type.shape.dim] == [1, 2]  # logits of HGG, LGG
    x = torch.randn(1, 4, 32, 32, 32)
    (logits,) = ReferenceEvaluator(model).run(None, {graph_input.name: x.numpy()})
    with torch.no_grad():
        expected = _trained_classifier(trained["root"])(x)
    torch.testing.assert_close(torch.from_numpy(logits), expected, atol=1e-4, rtol=1e-4)


def test_metadata_verifies_with_the_model_zoo_schema():
    verify_metadata(meta_file=META, filepath=str(SCHEMA))
    meta = json.loads(Path(META).read_text())
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 4
    assert list(image["channel_def"].values()) == ["t1", "t1ce", "t2", "flair"]
    assert list(meta["network_data_format"]["outputs"]["pred"]["channel_def"].values()) == ["HGG", "LGG"]


def test_bad_subjects_are_reported_with_their_ids_before_training(sample, tmp_path):
    """A missing modality, an unknown class, and modalities of different shapes or affines stop the run at once."""
    content = json.loads(Path(sample["datalist"]).read_text())
    missing, unknown, reshaped, shifted = [e for e in content["training"] if e["fold"] != 0]  # training subjects
    missing["t1ce"] = "HGG/absent/absent_t1ce.nii.gz"
    unknown["class"] = "GBM"
    for entry, modality in ((reshaped, "t2"), (shifted, "flair")):
        image = nib.load(os.path.join(sample["dataset_dir"], entry[modality]))
        array, affine = np.asarray(image.dataobj), image.affine.copy()
        if entry is reshaped:
            array = array[:, :, :-2]
        else:
            affine[0, 3] += 5.0  # 5 mm shift
        entry[modality] = str(tmp_path / f"{entry['subject']}_{modality}.nii.gz")  # absolute: kept as is
        nib.save(nib.Nifti1Image(array, affine), entry[modality])
    datalist = tmp_path / "bad.json"
    datalist.write_text(json.dumps(content))
    workflow = ConfigWorkflow(
        config_file=TRAIN,
        workflow_type="train",
        **{**TINY, **sample, "datalist": str(datalist), "bundle_root": str(tmp_path)},
    )
    with pytest.raises(Exception) as error:  # at initialize: the data check hook reads the data lists
        workflow.initialize()
        workflow.run()
    cause = error.value
    while not isinstance(cause, SubjectError) and (cause.__cause__ or cause.__context__):
        cause = cause.__cause__ or cause.__context__
    assert isinstance(cause, SubjectError), str(error.value)
    problems = dict(cause.problems)
    assert set(problems) == {e["subject"] for e in (missing, unknown, reshaped, shifted)}
    assert "modality 't1ce' file not found" in problems[missing["subject"]]
    assert "unknown class 'GBM'" in problems[unknown["subject"]]
    assert "shape of 't2' (40, 40, 30) differs from 't1' (40, 40, 32)" in problems[reshaped["subject"]]
    assert "affine of 'flair' differs from 't1' (max difference 5)" in problems[shifted["subject"]]
    assert all(subject in str(cause) for subject in problems)  # the message lists every subject id
    assert not (tmp_path / "runs").exists() and not (tmp_path / "models" / "model.pt").exists()  # nothing trained


@pytest.mark.slow
def test_linear_probe_keeps_the_encoder_and_resumes(sample, pretrained_path, tmp_path):
    overrides = {**TINY, **sample, "bundle_root": str(tmp_path), "pretrained_path": pretrained_path}
    overrides.update(freeze_encoder=True, learning_rate=1e-2, fold=1)
    workflow = _run(TRAIN, **overrides)
    workflow.finalize()
    pretrained = torch.load(pretrained_path, weights_only=True)
    state = torch.load(tmp_path / "runs" / "checkpoints" / "checkpoint_final.pt", weights_only=True)["model"]
    for key, value in state.items():
        if key == "swinViT.patch_embed.proj.weight":
            torch.testing.assert_close(value, pretrained[key].repeat(1, 4, 1, 1, 1) / 4)
        elif key.startswith("swinViT."):
            assert torch.equal(value, pretrained[key]), key
    fresh = SwinClassifier(in_channels=4, num_classes=2, feature_size=12).state_dict()
    assert not torch.equal(state["head.weight"], fresh["head.weight"])

    workflow = ConfigWorkflow(config_file=TRAIN, workflow_type="train", **{**overrides, "max_epochs": 2, "resume": True})
    workflow.initialize()
    started, best_at_start = record_epoch_starts(workflow)
    workflow.run()
    workflow.finalize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert started == [2] and trainer.state.iteration == 4  # epoch 1 came from the checkpoint
    # the best AUC so far came back with the training state, so a worse epoch cannot replace models/model.pt
    previous = torch.load(tmp_path / "runs" / "checkpoints" / "checkpoint_final.pt", weights_only=True)
    ((score, _),) = best_at_start[0]["_saved"]
    best_model_saver = workflow.parser.get_parsed_content("validate#best_model_saver")
    assert 0 <= score <= 1 and previous["best_model_saver"] == best_model_saver.state_dict()


@pytest.mark.extended
def test_cli_training_with_mlflow_tracking(sample, tmp_path):
    """
    ``--tracking mlflow`` logs loss, learning rate, validation metrics, the hyper-parameters and the config of a
    training run, then of an evaluation (a run of its own, ended).
    """
    store = tmp_path / "mlflow.db"
    overrides = {k: v for k, v in {**TINY, **sample}.items() if k not in ("device", "amp")}
    overrides["learning_rate"] = 2e-4
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", TRAIN, "--meta_file", META,
        "--bundle_root", str(tmp_path), "--tracking", "mlflow", "--tracking_uri", f"sqlite:///{store}",
        "--experiment_name", "brats_cls_test", *cli_overrides(**overrides),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Iteration" not in result.stderr + result.stdout  # --progress_bar=False reached the config as False
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{store}")
    runs = client.search_runs([client.get_experiment_by_name("brats_cls_test").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert {"train_loss", "lr_group_0", "val_auc", "val_accuracy", "val_balanced_accuracy"} <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2  # per iteration: 4 subjects, batch 2
    # one warm-up-free cosine cycle over 2 iterations, logged after each scheduler step: lr/2, then 0
    learning_rates = [m.value for m in client.get_metric_history(run.info.run_id, "lr_group_0")]
    assert learning_rates == pytest.approx([1e-4, 0.0])
    (val_auc,) = client.get_metric_history(run.info.run_id, "val_auc")
    assert 0.0 <= val_auc.value <= 1.0 and val_auc.step == 1
    params = run.data.params
    assert params["learning_rate"] == "0.0002" and params["batch_size"] == "2" and params["feature_size"] == "12"
    assert params["spatial_size"] == "[32, 32, 32]" and params["freeze_encoder"] == "False"
    assert params["class_names"] == "['HGG', 'LGG']" and params["max_epochs"] == "1"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    (config_path,) = [a for a in artifacts if a.startswith("config_") and a.endswith(".json")]
    assert artifacts - {config_path} == {
        "learning_curves.png", "learning_curves.json", "val_roc_curve.png", "val_confusion_matrix.png"
    }  # the run's figures
    config = json.loads(Path(client.download_artifacts(run.info.run_id, config_path, str(tmp_path))).read_text())
    assert config["learning_rate"] == 2e-4 and config["spatial_size"] == [32, 32, 32]  # the merged config

    # the evaluate overlay records a run of its own (metrics, parameters, config) and ends it
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", f"['{TRAIN}','{EVALUATE}']", "--meta_file", META,
        "--bundle_root", str(tmp_path), "--tracking", "mlflow", "--tracking_uri", f"sqlite:///{store}",
        "--experiment_name", "brats_cls_test", *cli_overrides(**overrides),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    runs = client.search_runs([client.get_experiment_by_name("brats_cls_test").experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    (evaluation,) = [r for r in runs if r.info.run_id != run.info.run_id]
    assert {"val_auc", "val_accuracy", "val_balanced_accuracy"} <= set(evaluation.data.metrics)
    assert "train_loss" not in evaluation.data.metrics
    assert evaluation.data.params["learning_rate"] == "0.0002" and evaluation.data.params["fold"] == "0"
    artifacts = {a.path for a in client.list_artifacts(evaluation.info.run_id)}
    (config_path,) = [a for a in artifacts if a.startswith("config_") and a.endswith(".json")]
    assert artifacts - {config_path} == {  # the evaluation's report: tables, metrics and figures
        "predictions.csv", "metrics.json", "confusion_matrix.csv", "roc_curve.png", "confusion_matrix.png"
    }


@pytest.mark.extended
def test_torchrun_two_cpu_processes_with_the_multi_gpu_overlay(sample, tmp_path):
    overrides = {k: v for k, v in {**TINY, **sample}.items() if k not in ("device", "amp")}
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
        f"['{TRAIN}','{MULTI_GPU}']",
        "--meta_file",
        META,
        "--bundle_root",
        str(tmp_path),
        *cli_overrides(**overrides),
    ]
    result = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # saved from the unwrapped network
    rows = _read_csv(tmp_path / "runs" / "val_predictions.csv")
    assert len(rows) == 2  # both ranks' validation subjects gathered, written once by rank 0
