"""
BrainMVP on the pretext framework: the crop that locates itself in the modality templates, the block masks and the
cross-modal view, the network's template fill and skip-free decoder, the loss and its late contrast, the weights in
both fine-tuning bundles, and training through the bundle.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data import MetaTensor

from monai_dae.data.phantoms import write_sample_dataset
from monai_dae.losses import BrainMVPLoss, symmetric_info_nce
from monai_dae.networks import BrainMVPSwinUNETR
from monai_dae.transforms import RandModalityBlockMaskd, RandTemplateWindowCropd, block_masks
from monai_dae.utils import training_config_files
from tools.brats_datalist import build as build_brats_datalist

from bundle_testing import REPO, assert_encoder_loads_into_fine_tuning_bundles, assert_png, bundle_training, config_arg

PRETRAIN = REPO / "bundles" / "dae_pretrain"


def _coordinate_volume(shape, channels=2) -> MetaTensor:
    """A volume whose voxel (x, y, z) holds 10000 x + 100 y + z, and channel c adds c * 1e6."""
    x, y, z = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    volume = np.stack([c * 1e6 + 10000 * x + 100 * y + z for c in range(channels)]).astype(np.float64)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    affine[:3, 3] = (-40.0, 12.0, 7.0)
    return MetaTensor(torch.as_tensor(volume), affine=torch.as_tensor(affine))


def test_template_window_crop_records_where_the_crop_lies_in_the_centred_template():
    crop = RandTemplateWindowCropd("image", roi_size=16, template_size=(64, 60, 50)).set_random_state(3)
    for _ in range(5):
        out = crop({"image": _coordinate_volume((40, 30, 24))})
        corner = out["image"][0, 0, 0, 0].item()
        start = np.array([corner // 10000, corner % 10000 // 100, corner % 100], dtype=np.int64)
        assert out["image"].shape == (2, 16, 16, 16)
        # the volume sits at the centre of the template: offset (T - D) // 2 = (12, 15, 13)
        np.testing.assert_array_equal(out["template_start"].numpy(), start + (12, 15, 13))
    first = RandTemplateWindowCropd("image", 16, (64, 60, 50)).set_random_state(7)({"image": _coordinate_volume((40, 30, 24))})
    again = RandTemplateWindowCropd("image", 16, (64, 60, 50)).set_random_state(7)({"image": _coordinate_volume((40, 30, 24))})
    assert torch.equal(first["template_start"], again["template_start"])

    centre = RandTemplateWindowCropd("image", 16, (64, 60, 50), random_center=False)({"image": _coordinate_volume((40, 30, 24))})
    np.testing.assert_array_equal(centre["template_start"].numpy(), (12 + 12, 7 + 15, 4 + 13))
    # a volume larger than the template reads the nearest window inside it
    large = RandTemplateWindowCropd("image", 16, (20, 20, 20), random_center=False)({"image": _coordinate_volume((40, 30, 24))})
    np.testing.assert_array_equal(large["template_start"].numpy(), (2, 2, 2))
    with pytest.raises(TypeError, match="MetaTensor"):
        crop({"image": torch.zeros(1, 20, 20, 20)})


def test_block_masks_mask_the_ratio_of_8_cubed_blocks_each_on_its_own():
    masks = block_masks(np.random.RandomState(0), 6, (64, 64, 64), 8, 0.8)
    assert masks.shape == (6, 8, 8, 8)
    assert (masks.reshape(6, -1).sum(axis=1) == 512 - math.floor(512 * 0.2)).all()  # 410 of 512 blocks
    assert len({m.tobytes() for m in masks}) == 6
    with pytest.raises(ValueError, match="multiple of the mask block size"):
        block_masks(np.random.RandomState(0), 1, (60, 64, 64), 8, 0.8)


def test_modality_block_masks_build_the_target_and_the_cross_modal_view():
    batch = torch.stack([torch.full((4, 32, 32, 16), float(c + 1)) for c in range(4)], dim=1)  # channel c holds c + 1
    masking = RandModalityBlockMaskd("image", block_size=8, mask_ratio=0.75).set_random_state(1)
    out = masking({"image": batch})
    m = masking.modality
    assert out["target"].shape == (4, 1, 32, 32, 16) and (out["target"] == m + 1).all()
    assert (out["masked_modality"] == m).all() and out["masked_modality"].dtype == torch.int64
    mask_a = out["mask"]
    assert mask_a.dtype == torch.bool and mask_a.shape == (4, 1, 32, 32, 16)
    assert (mask_a.float().mean(dim=(1, 2, 3, 4)) == 24 / 32).all()  # 32 blocks, floor(32 * 0.25) = 8 kept
    blocks = mask_a.reshape(4, 4, 8, 4, 8, 2, 8)
    assert (blocks == blocks[:, :, :1, :, :1, :, :1]).all()  # constant inside every 8^3 block
    for sample, other in enumerate(masking.fill_modalities):
        assert other != m
        view = out["view_b"][sample, 0]
        assert set(view.unique().tolist()) == {m + 1.0, other + 1.0}
        assert (view == other + 1).float().mean() == 0.75
        assert not torch.equal(view == other + 1, mask_a[sample, 0])  # view B has its own mask
    again = RandModalityBlockMaskd("image", block_size=8, mask_ratio=0.75).set_random_state(1)({"image": batch})
    assert all(torch.equal(out[k], again[k]) for k in ("target", "mask", "view_b", "masked_modality"))
    with pytest.raises(ValueError, match="at least 2 modalities"):
        masking({"image": batch[:, :1]})


def _network(**kwargs) -> BrainMVPSwinUNETR:
    torch.manual_seed(0)
    return BrainMVPSwinUNETR(num_modalities=3, template_size=(80, 72, 70), feature_size=12, **kwargs)


def test_network_fills_view_a_from_the_normalised_template_window_and_trains_the_templates():
    network = _network()
    with torch.no_grad():
        network.templates.copy_(torch.arange(network.templates.numel(), dtype=torch.float32).reshape(network.templates.shape))
    image = torch.rand(2, 1, 64, 64, 64)
    mask = torch.zeros_like(image, dtype=torch.bool)
    mask[:, :, :8, :8, :8] = True
    view_b = torch.rand(2, 1, 64, 64, 64)
    start = torch.tensor([[0, 0, 0], [16, 8, 6]])
    modality = torch.tensor([2, 2])
    out = network(image, mask, view_b, start, modality)
    template = network.templates[2].detach()
    normalised = (template - template.min()) / (template.max() - template.min())
    torch.testing.assert_close(out["input_a"][1, 0, :8, :8, :8], normalised[16:24, 8:16, 6:14])
    assert torch.equal(out["input_a"][~mask], image[~mask]) and torch.equal(out["input_b"], view_b)
    assert out["reconstruction_a"].shape == out["reconstruction_b"].shape == (2, 1, 64, 64, 64)
    assert out["embedding_a"].shape == out["embedding_b"].shape == (2, 16 * 12)
    BrainMVPLoss(contrast_start_epoch=0)(out, image).backward()
    grad = network.templates.grad
    assert grad[2].abs().sum() > 0 and grad[:2].abs().sum() == 0  # only the masked modality's template learns
    assert not any(k.startswith(("encoder1.", "encoder2.", "encoder3.", "encoder4.")) for k in network.state_dict())
    projected = _network(projection_dim=32)(image, mask, view_b, start, modality)
    assert projected["embedding_a"].shape == (2, 32)


def test_decoder_is_skip_free():
    """The decoder blocks receive zeros for the skip features: the reconstruction sees the input only through the
    bottleneck."""
    network = _network().eval()
    features = network.features(torch.rand(1, 1, 64, 64, 64))
    assert all(features[name].abs().sum() == 0 for name in ("enc0", "enc1", "enc2", "enc3", "enc4"))
    assert features["bottleneck"].abs().sum() > 0


def test_loss_weights_the_views_10_to_1_and_turns_the_contrast_on_after_its_start_epoch():
    target = torch.rand(2, 1, 8, 8, 8)
    prediction = {
        "reconstruction_a": torch.zeros(2, 1, 8, 8, 8, requires_grad=True),
        "reconstruction_b": torch.ones(2, 1, 8, 8, 8),
        "embedding_a": torch.randn(2, 5, requires_grad=True),
        "embedding_b": torch.randn(2, 5),
    }
    loss = BrainMVPLoss(contrast_start_epoch=3)
    rec_a, rec_b = (target**2).mean(), ((1 - target) ** 2).mean()
    contrast = symmetric_info_nce(prediction["embedding_a"], prediction["embedding_b"])
    for epoch, expected in ((1, 10 * rec_a + rec_b), (3, 10 * rec_a + rec_b), (4, 10 * rec_a + rec_b + contrast)):
        loss.set_epoch(epoch)
        total = loss(prediction, target)
        torch.testing.assert_close(total, expected)
        assert set(loss.components) == {"loss_rec_a", "loss_rec_b", "loss_contrast"}
    loss.set_epoch(1)
    loss(prediction, target).backward()
    assert prediction["embedding_a"].grad.abs().sum() == 0  # logged but not trained before the start epoch


def test_symmetric_info_nce_is_symmetric_and_lowest_for_matching_views():
    views = torch.eye(4) * 20  # well separated, identical in both views
    matched = symmetric_info_nce(views, views, temperature=0.1)
    swapped = symmetric_info_nce(views, views[[1, 0, 3, 2]], temperature=0.1)
    assert matched < 1e-3 < math.log(4) < swapped
    a, b = torch.randn(6, 8), torch.randn(6, 8)
    torch.testing.assert_close(symmetric_info_nce(a, b), symmetric_info_nce(b, a))
    torch.testing.assert_close(symmetric_info_nce(torch.zeros(3, 8) + 1, torch.zeros(3, 8) + 1), torch.tensor(math.log(3)))


def test_brainmvp_encoder_loads_into_both_fine_tuning_bundles(tmp_path):
    parser = ConfigParser()
    parser.read_config(training_config_files(str(PRETRAIN), "brainmvp"))
    parser.update({"feature_size": 12, "legacy_merging": False, "template_size": [96, 96, 96]})
    source = parser.get_parsed_content("network_def")
    assert isinstance(source, BrainMVPSwinUNETR) and source.templates.shape == (4, 96, 96, 96)
    reports = assert_encoder_loads_into_fine_tuning_bundles(source, tmp_path)
    for bundle, report in reports.items():
        assert not any(k.startswith("templates") for k in report.loaded), bundle
    overlay = json.loads((PRETRAIN / "configs" / "brainmvp.json").read_text())
    assert overlay["template_size"] == [240, 240, 155] and overlay["mask_ratio"] == 0.8 and overlay["mask_block_size"] == 8


def _brain_sample(tmp_path) -> str:
    sample = write_sample_dataset(str(tmp_path / "sample"), num_ct=2, num_brain=4, ct_shape=(48, 48, 32),
                                  brain_shape=(48, 48, 40), num_validation=1)
    build_brats_datalist(data_dir=sample["brats_dir"], num_folds=2, progress=False)
    return sample["brats_dir"]


def test_brainmvp_training_runs_one_epoch_through_the_bundle(tmp_path):
    """One epoch of two iterations at test size: the three named terms, the contrast switched on in epoch 2 of 2
    (start epoch 1), the template windows aligned, a reconstruction preview, and the workflow's Model Zoo properties."""
    workflow = ConfigWorkflow(
        config_file=training_config_files(str(PRETRAIN), "brainmvp"), workflow_type="train",
        dataset_dir=_brain_sample(tmp_path), bundle_root=str(tmp_path / "bundle"), output_dir=str(tmp_path / "runs"),
        ckpt_dir=str(tmp_path / "runs" / "models"), feature_size=12, roi_size=[64, 64, 64], template_size=[96, 96, 96],
        batch_size=1, max_epochs=2, cache_rate=0.0, num_workers=0, device="cpu", amp=False, progress_bar=False,
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    loss = workflow.parser.get_parsed_content("loss")
    totals = []
    trainer = workflow.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: totals.append(
        (e.state.epoch, float(e.state.output[0]["loss"]), {k: v.item() for k, v in loss.components.items()})))
    workflow.run()
    assert loss.contrast_start_epoch == 1 and len({epoch for epoch, _, _ in totals}) == 2
    for epoch, total, terms in totals:
        expected = 10 * terms["loss_rec_a"] + terms["loss_rec_b"] + (terms["loss_contrast"] if epoch == 2 else 0.0)
        assert total == pytest.approx(expected, rel=1e-5)
    state = torch.load(tmp_path / "runs" / "models" / "model.pt", weights_only=True)
    assert state["templates"].shape == (4, 96, 96, 96) and state["templates"].abs().sum() > 0  # the templates learnt
    curves = json.loads((tmp_path / "runs" / "figures" / "learning_curves.json").read_text())
    assert set(curves["train"]) == {"loss", "loss_rec_a", "loss_rec_b", "loss_contrast"}
    assert 0 < curves["validation"]["val_reconstruction_mse"]["2"] < 1
    assert_png(tmp_path / "runs" / "previews" / "preview_epoch0002.png")


@pytest.mark.extended
def test_brainmvp_pretraining_then_brats_fine_tuning_from_its_weights(tmp_path):
    """The docs' commands at test size: the data list of the BraTS layout, BrainMVP pretraining, then
    dae_brats_cls fine-tuning from its model.pt."""
    brats = _brain_sample(tmp_path)
    runs = tmp_path / "brainmvp"
    pretrain = bundle_training(
        config_arg(*training_config_files(str(PRETRAIN), "brainmvp")), dataset_dir=brats, output_dir=str(runs),
        ckpt_dir=str(runs / "models"), roi_size=[64, 64, 64], template_size=[96, 96, 96], feature_size=12,
        batch_size=2, max_epochs=1, cache_rate=0.0, num_workers=0, progress_bar=False,
    )
    assert pretrain.returncode == 0, pretrain.stderr[-4000:]
    log = pretrain.stdout + pretrain.stderr
    assert all(term in log for term in ("epoch_loss_rec_a", "epoch_loss_rec_b", "epoch_loss_contrast", "val_reconstruction_mse"))
    cls = tmp_path / "cls"
    finetune = bundle_training(
        str(REPO / "bundles" / "dae_brats_cls" / "configs" / "train.json"), dataset_dir=brats, bundle_root=str(cls),
        pretrained_path=str(runs / "models" / "model.pt"), spatial_size=[64, 64, 64], feature_size=12, max_epochs=1,
        batch_size=2, num_workers=0, cache_rate=0.0, progress_bar=False,
    )
    assert finetune.returncode == 0, finetune.stderr[-4000:]
    log = finetune.stdout + finetune.stderr
    match = re.search(r"layout 'dae_bundle'\): loaded (\d+) tensors", log)
    assert match and int(match.group(1)) > 100, log[-3000:]
    assert (cls / "models" / "model.pt").is_file()
