"""Tests for the DAE ignite handlers (monai_dae.handlers) and the data list loader (monai_dae.data)."""

from __future__ import annotations

import glob
import gzip
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.engines.utils import IterationEvents
from PIL import Image

from monai_dae.data import check_image_file, load_datalist
from monai_dae.handlers import (
    LossComponentsHandler,
    ReconstructionPreviewHandler,
    SetRandomStateHandler,
    scalars_from_output,
    track_evaluation,
    track_hyper_parameters,
    tunable_settings,
)
from monai_dae.losses import DAELoss
from monai_dae.transforms import RandAdditiveGaussianNoise

# --------------------------------------------------------------------------------------------------------------
# scalars_from_output and LossComponentsHandler
# --------------------------------------------------------------------------------------------------------------


def test_scalars_from_output_picks_present_keys():
    transform = scalars_from_output(["loss", "loss_l1", "loss_cmcl"])
    output = {"loss": torch.tensor(1.5, requires_grad=True), "loss_l1": torch.tensor(0.25), "pred": torch.zeros(2)}
    scalars = transform(output)
    assert scalars == {"loss": 1.5, "loss_l1": 0.25}
    assert all(type(v) is float for v in scalars.values())
    # a decollated output (list of dicts): the first item
    assert transform([{"loss": 2.0, "loss_cmcl": 3}, {"loss": 9.0}]) == {"loss": 2.0, "loss_cmcl": 3.0}
    assert transform({}) == {}


def _engine_with_iteration_events(process) -> Engine:
    engine = Engine(process)
    engine.register_events(*IterationEvents, event_to_attr={})
    return engine


def test_loss_components_handler_copies_components_into_output():
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 0, 1])

    def process(engine, batch):
        reconstruction, clean, embedding = batch
        loss = engine.loss_function((reconstruction, embedding), (clean, labels))
        engine.state.output = {"loss": loss.detach()}
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        return engine.state.output

    engine = _engine_with_iteration_events(process)
    engine.loss_function = DAELoss(cmcl_weight=0.5, temperature=0.1)
    LossComponentsHandler().attach(engine)
    seen = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(dict(e.state.output)))
    data = [(torch.randn(4, 1, 4, 4, 4), torch.randn(4, 1, 4, 4, 4), torch.randn(4, 8)) for _ in range(3)]
    engine.run(data, max_epochs=1)

    assert len(seen) == 3
    for output, (reconstruction, clean, embedding) in zip(seen, data):
        assert set(output) == {"loss", "loss_l1", "loss_cmcl"}
        l1 = (reconstruction - clean).abs().mean()
        assert output["loss_l1"].item() == pytest.approx(l1.item(), rel=1e-6)
        assert output["loss"].item() == pytest.approx(l1.item() + 0.5 * output["loss_cmcl"].item(), rel=1e-6)
    # what StatsHandler / TensorBoard / MLflow receive
    scalars = scalars_from_output(["loss", "loss_l1", "loss_cmcl"])(seen[-1])
    assert set(scalars) == {"loss", "loss_l1", "loss_cmcl"}


def test_loss_components_handler_without_components():
    def process(engine, batch):
        engine.state.output = {"loss": torch.tensor(1.0)}
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        return engine.state.output

    engine = _engine_with_iteration_events(process)
    engine.loss_function = torch.nn.L1Loss()
    LossComponentsHandler().attach(engine)
    engine.run([0], max_epochs=1)
    assert set(engine.state.output) == {"loss"}


# --------------------------------------------------------------------------------------------------------------
# SetRandomStateHandler
# --------------------------------------------------------------------------------------------------------------


def _noise_outputs(with_handler: bool, epochs: int = 3) -> list[list[torch.Tensor]]:
    noise = RandAdditiveGaussianNoise(variance=0.1)
    x = torch.zeros(1, 4, 4, 4)
    engine = Engine(lambda e, batch: noise(x))
    if with_handler:
        SetRandomStateHandler(noise, seed=3).attach(engine)
    outputs: list[list[torch.Tensor]] = []
    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: outputs.append([]))
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs[-1].append(e.state.output.clone()))
    engine.run([0, 1], max_epochs=epochs)
    return outputs


def test_set_random_state_handler_gives_same_draws_every_epoch():
    outputs = _noise_outputs(with_handler=True)
    assert len(outputs) == 3 and all(len(epoch) == 2 for epoch in outputs)
    for epoch in outputs[1:]:
        for a, b in zip(outputs[0], epoch):
            assert torch.equal(a, b)
    # still random within an epoch
    assert not torch.equal(outputs[0][0], outputs[0][1])
    # and the first draw is the one of a freshly seeded transform
    expected = RandAdditiveGaussianNoise(variance=0.1).set_random_state(3)(torch.zeros(1, 4, 4, 4))
    assert torch.equal(outputs[0][0], expected)


def test_without_set_random_state_handler_epochs_differ():
    outputs = _noise_outputs(with_handler=False, epochs=2)
    assert not torch.equal(outputs[0][0], outputs[1][0])


def test_set_random_state_handler_accepts_a_list():
    a, b = RandAdditiveGaussianNoise(), RandAdditiveGaussianNoise()
    handler = SetRandomStateHandler([a, b], seed=5)
    handler(None)
    x = torch.zeros(1, 4, 4, 4)
    assert torch.equal(a(x), b(x))


# --------------------------------------------------------------------------------------------------------------
# ReconstructionPreviewHandler
# --------------------------------------------------------------------------------------------------------------

VOLUME_SHAPE = (8, 10, 12)


def _preview_batches(num: int, batch: int = 2):
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(num):
        clean = torch.rand(batch, 1, *VOLUME_SHAPE, generator=generator)
        disrupted = clean + 0.3 * torch.randn(batch, 1, *VOLUME_SHAPE, generator=generator)
        batches.append({"label": (clean, torch.zeros(batch)), "image": disrupted, "pred": (clean * 0.9, torch.zeros(batch, 4))})
    return batches


def _preview_engine(handler: ReconstructionPreviewHandler) -> Engine:
    def process(engine, batch):
        engine.state.output = dict(batch)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        return engine.state.output

    engine = _engine_with_iteration_events(process)
    handler.attach(engine)
    return engine


def test_preview_handler_writes_epoch_pngs(tmp_path):
    out_dir = tmp_path / "previews"
    handler = ReconstructionPreviewHandler(str(out_dir), interval=2, log_dir=str(tmp_path / "tb"))
    batches = _preview_batches(3)
    _preview_engine(handler).run(batches, max_epochs=4)

    files = sorted(glob.glob(str(out_dir / "*.png")))
    assert [os.path.basename(f) for f in files] == ["preview_epoch0002.png", "preview_epoch0004.png"]
    assert handler.written == [str(out_dir / "preview_epoch0002.png"), str(out_dir / "preview_epoch0004.png")]
    for path in files:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.mode == "RGBA"
            # 3 samples (no modality labels: the first ones of the epoch) x 3 panels x 3 planes of 2.6 in at dpi 100
            assert image.size == (9 * 260, 3 * 260)
    assert glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))


def test_preview_handler_keeps_one_sample_per_modality(tmp_path, monkeypatch):
    import monai_dae.figures as figures

    drawn = []
    original = figures.reconstruction_preview_figure
    monkeypatch.setattr(figures, "reconstruction_preview_figure", lambda *a, **k: drawn.append((a, k)) or original(*a, **k))
    handler = ReconstructionPreviewHandler(str(tmp_path), modalities=["ct", "t1", "t2"], max_samples=3)
    batches = _preview_batches(3)
    for batch, labels in zip(batches, ([0, 0], [0, 2], [1, 2])):
        batch["modality_label"] = torch.tensor(labels)

    def process(engine, batch):
        engine.state.output = {k: v for k, v in batch.items() if k != "modality_label"}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        return engine.state.output

    engine = _engine_with_iteration_events(process)
    handler.attach(engine)
    engine.run(batches, max_epochs=1)
    (args, _), = drawn
    samples, panels, row_labels = args[:3]
    assert row_labels == ["CT", "T2", "T1"]  # the first sample of each modality, in the order met
    assert panels == ["clean", "disrupted", "reconstructed"]
    # T2 is sample 1 of batch 1: its clean volume is the first item of the target tuple
    np.testing.assert_array_equal(samples[1][0], batches[1]["label"][0][1, 0].numpy())
    np.testing.assert_array_equal(samples[2][1], batches[2]["image"][0, 0].numpy())


def test_preview_handler_iteration_level_names_files_after_sources(tmp_path):
    handler = ReconstructionPreviewHandler(str(tmp_path), epoch_level=False, prefix="recon",
                                           panels={"disrupted": "image", "reconstructed": "pred"})
    batch = _preview_batches(1)[0]
    batch["image"] = MetaTensor(batch["image"], meta={"filename_or_obj": ["/data/case_a.nii.gz", "/data/case_b.nii.gz"]})
    _preview_engine(handler).run([batch], max_epochs=1)
    assert sorted(os.listdir(tmp_path)) == ["recon_case_a.png", "recon_case_b.png"]
    for name in ("recon_case_a.png", "recon_case_b.png"):
        with Image.open(tmp_path / name) as image:
            assert image.size == (2 * 3 * 260, 260)  # one sample: 2 panels x 3 planes


def test_preview_handler_iteration_level_without_names(tmp_path):
    handler = ReconstructionPreviewHandler(str(tmp_path / "p"), epoch_level=False)
    _preview_engine(handler).run(_preview_batches(2), max_epochs=1)
    assert sorted(os.listdir(tmp_path / "p")) == [
        "preview_sample1_0.png", "preview_sample1_1.png", "preview_sample2_0.png", "preview_sample2_1.png"
    ]


# --------------------------------------------------------------------------------------------------------------
# load_datalist
# --------------------------------------------------------------------------------------------------------------


def _write_nifti(path, shape=(6, 6, 6)) -> str:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), str(path))
    return str(path)


def _write_datalist(path, content) -> str:
    with open(path, "w") as f:
        json.dump(content, f)
    return str(path)


@pytest.fixture
def dataset(tmp_path):
    data_dir = tmp_path / "data"
    _write_nifti(data_dir / "ct" / "lung_001.nii.gz")
    _write_nifti(data_dir / "brats" / "BraTS_001_t1ce.nii.gz")
    _write_nifti(data_dir / "brats" / "BraTS_001_t1.nii")
    return data_dir


def test_load_datalist_resolves_relative_paths_against_dataset_dir(tmp_path, dataset):
    datalist = _write_datalist(tmp_path / "list.json", {
        "training": [{"image": "ct/lung_001.nii.gz", "modality": "CT"}, {"image": "brats/BraTS_001_t1ce.nii.gz"}],
        "validation": [{"image": str(dataset / "brats" / "BraTS_001_t1.nii"), "modality": "t1"}],
    })
    training = load_datalist(datalist, dataset_dir=str(dataset))
    assert [e["image"] for e in training] == [str(dataset / "ct" / "lung_001.nii.gz"),
                                             str(dataset / "brats" / "BraTS_001_t1ce.nii.gz")]
    # canonical modality names, the missing one inferred from the file name (T1ce, never T1)
    assert [e["modality"] for e in training] == ["ct", "t1ce"]
    validation = load_datalist(datalist, dataset_dir=str(dataset), key="validation")
    assert validation[0]["image"] == str(dataset / "brats" / "BraTS_001_t1.nii")  # absolute paths stay


def test_load_datalist_defaults_to_the_datalist_directory(dataset):
    datalist = _write_datalist(dataset / "list.json", {"training": [{"image": "ct/lung_001.nii.gz", "modality": "ct"}]})
    assert load_datalist(datalist)[0]["image"] == str(dataset / "ct" / "lung_001.nii.gz")


def test_load_datalist_missing_datalist(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        load_datalist(str(tmp_path / "nowhere.json"))


def test_load_datalist_missing_image_names_file(tmp_path, dataset):
    datalist = _write_datalist(tmp_path / "list.json", {"training": [{"image": "ct/lung_404.nii.gz", "modality": "ct"}]})
    with pytest.raises(FileNotFoundError) as error:
        load_datalist(datalist, dataset_dir=str(dataset))
    assert str(dataset / "ct" / "lung_404.nii.gz") in str(error.value)


@pytest.mark.parametrize("key", ["training", "validation"])
def test_load_datalist_empty_list(tmp_path, key):
    datalist = _write_datalist(tmp_path / "list.json", {"training": [], "validation": []})
    with pytest.raises(ValueError, match="empty") as error:
        load_datalist(datalist, key=key)
    message = str(error.value)
    assert str(tmp_path / "list.json") in message and f"'{key}' list" in message
    assert "validatio." not in message  # the key name is not mangled


def test_load_datalist_missing_key_and_bad_json(tmp_path):
    datalist = _write_datalist(tmp_path / "list.json", {"validation": [{"image": "a.nii.gz"}]})
    with pytest.raises(ValueError, match="training") as error:
        load_datalist(datalist)
    assert "validation" in str(error.value)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_datalist(str(bad))


def test_load_datalist_unknown_modality_names_file(tmp_path, dataset):
    datalist = _write_datalist(tmp_path / "list.json", {"training": [{"image": "ct/lung_001.nii.gz", "modality": "pet"}]})
    with pytest.raises(ValueError) as error:
        load_datalist(datalist, dataset_dir=str(dataset))
    assert "pet" in str(error.value) and "lung_001.nii.gz" in str(error.value)
    # an extended modality list accepts it
    assert load_datalist(datalist, dataset_dir=str(dataset), modalities=("ct", "pet"))[0]["modality"] == "pet"


def test_load_datalist_uninferable_modality_names_file(tmp_path, dataset):
    _write_nifti(dataset / "scan_007.nii.gz")
    datalist = _write_datalist(tmp_path / "list.json", {"training": [{"image": "scan_007.nii.gz"}]})
    with pytest.raises(ValueError, match="scan_007.nii.gz"):
        load_datalist(datalist, dataset_dir=str(dataset))
    # modality inference keeps t1ce apart from t1
    ok = _write_datalist(tmp_path / "ok.json", {"training": [{"image": "brats/BraTS_001_t1ce.nii.gz"}]})
    assert load_datalist(ok, dataset_dir=str(dataset))[0]["image"].endswith("BraTS_001_t1ce.nii.gz")


@pytest.mark.parametrize(
    "payload", [b"this is not a NIfTI file" * 20, gzip.compress(b"\x00" * 100, mtime=0), b""],
    ids=["text", "gzipped-zeros", "empty"],
)
def test_load_datalist_corrupt_nifti_names_file(tmp_path, dataset, payload):
    corrupt = dataset / "ct" / "broken_ct.nii.gz"
    corrupt.write_bytes(payload)
    datalist = _write_datalist(tmp_path / "list.json", {"training": [{"image": "ct/broken_ct.nii.gz", "modality": "ct"}]})
    with pytest.raises(ValueError, match="unreadable NIfTI") as error:
        load_datalist(datalist, dataset_dir=str(dataset))
    assert str(corrupt) in str(error.value)
    with pytest.raises(ValueError, match="broken_ct.nii.gz"):
        check_image_file(str(corrupt))
    # check_files=False skips the file checks
    assert load_datalist(datalist, dataset_dir=str(dataset), check_files=False)[0]["image"] == str(corrupt)


def test_load_datalist_entry_without_image(tmp_path, dataset):
    datalist = _write_datalist(tmp_path / "list.json", {"training": [{"label": "x.nii.gz", "modality": "ct"}]})
    with pytest.raises(ValueError, match="image"):
        load_datalist(datalist, dataset_dir=str(dataset))


def test_check_image_file_accepts_valid_nifti(dataset):
    check_image_file(str(dataset / "ct" / "lung_001.nii.gz"))
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        check_image_file(str(dataset / "missing.nii.gz"))


def test_track_hyper_parameters_reaches_only_the_mlflow_handlers(tmp_path):
    from monai.handlers import MLFlowHandler, StatsHandler

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracked = MLFlowHandler(tracking_uri=uri, experiment_param={"fold": 0})
    handlers = [StatsHandler(), tracked, MLFlowHandler(tracking_uri=uri)]
    assert track_hyper_parameters(handlers, {"learning_rate": 4e-4, "roi_size": [96, 96, 96]}) == 2
    assert tracked.experiment_param == {"fold": 0, "learning_rate": 4e-4, "roi_size": [96, 96, 96]}
    assert handlers[2].experiment_param == {"learning_rate": 4e-4, "roi_size": [96, 96, 96]}
    assert track_hyper_parameters([StatsHandler()], {"seed": 0}) == 0  # no --tracking: nothing to do


def test_tunable_settings_are_the_plain_top_level_values(tmp_path):
    config = {"roi_size": [96, 96, 96], "learning_rate": 4e-4, "stem": "patch", "amp": "$torch.cuda.is_available()",
              "legacy_merging_checkpoint": "@resume_from", "network_def": {"_target_": "SwinUNETR"}, "seed": 0,
              "pretrained_path": None, "imports": ["$import os"], "_meta_": {}}
    path = tmp_path / "config_20261203_120000.json"
    path.write_text(json.dumps(config))
    expected = {"roi_size": [96, 96, 96], "learning_rate": 4e-4, "stem": "patch", "seed": 0, "pretrained_path": None}
    assert tunable_settings(config) == expected and tunable_settings(str(path)) == expected


def test_track_evaluation_logs_the_config_and_ends_the_run(tmp_path):
    from monai.handlers import MLFlowHandler, StatsHandler

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    handlers = [StatsHandler(), MLFlowHandler(tracking_uri=uri, iteration_log=False)]  # MONAI's validator settings
    config = tmp_path / "config_20261123_120000.json"
    config.write_text(json.dumps({"fold": 0, "network": "$@network_def.to(@device)"}))
    assert track_evaluation(handlers, str(config)) == 1
    assert handlers[1].experiment_param == {"fold": 0}
    assert handlers[1].artifacts == (str(config),) and handlers[1].close_on_complete
    assert track_evaluation([MLFlowHandler(tracking_uri=uri)], None) == 1  # --save_execute_config False
    assert track_evaluation([StatsHandler()], True) == 0  # no --tracking: nothing to do
