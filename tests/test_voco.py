"""
VoCo on the pretext framework: the overlap labels of hand-placed crops, the seeded batched crop transform, the
projector and EMA teacher, the loss in its released and paper forms, the bundle's two commands (pretraining,
then BTCV fine-tuning from its weights) and its encoder loading into both fine-tuning bundles.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from monai_dae.data.phantoms import write_sample_dataset
from monai_dae.losses import VoCoLoss, overlap_prediction_error
from monai_dae.networks import PretextSwinUNETR, VoCoProjector, VoCoSwinUNETR
from monai_dae.transforms import RandVoCoCrops, RandVoCoCropsd, overlap_labels
from monai_dae.utils import training_config_files

from bundle_testing import (
    BTCV_TINY, REPO, assert_encoder_loads_into_fine_tuning_bundles, bundle_training, config_arg,
)

PRETRAIN = REPO / "bundles" / "dae_pretrain"


def test_overlap_labels_of_hand_placed_crops():
    # the released code's geometry: a 4 x 4 grid of 96-voxel base crops, 96-voxel random crops
    labels = overlap_labels(np.array([[48, 48], [96, 96], [72, 48], [336, 200]]), 96, 96, 4)
    assert labels.shape == (4, 16) and labels.dtype == np.float32
    expected = np.zeros((4, 16), dtype=np.float32)
    expected[0, 0] = 1.0  # exactly base crop (0, 0)
    expected[1, [0, 1, 4, 5]] = 0.25  # centred on the corner of four base crops
    expected[2, 0], expected[2, 4] = 0.75, 0.25  # x in [24, 120): 72 voxels in i = 0, 24 in i = 1; y in j = 0
    # x in [288, 384): i = 3; y in [152, 248): 40 voxels in j = 1, 56 in j = 2
    expected[3, 13], expected[3, 14] = 40 / 96, 56 / 96
    np.testing.assert_allclose(labels, expected, atol=1e-6)
    random = np.random.RandomState(0).randint(48, 336, size=(100, 2))
    np.testing.assert_allclose(overlap_labels(random, 96, 96, 4).sum(axis=1), 1.0, atol=1e-6)


def test_crops_are_the_grid_blocks_and_the_drawn_windows():
    volume = torch.rand(2, 1, 128, 128, 32)  # G = 4, b = 32
    cropper = RandVoCoCrops(roi_size=32, grid=4, num_random_crops=2, augment=False).set_random_state(5)
    crops, labels = cropper(volume)
    assert crops.shape == (2 * 18, 1, 32, 32, 32) and labels.shape == (2, 2, 16) and labels.dtype == torch.float32
    torch.testing.assert_close(labels.sum(dim=2), torch.ones(2, 2))
    for index in range(2):
        for i in range(4):
            for j in range(4):
                block = volume[index, :, i * 32 : (i + 1) * 32, j * 32 : (j + 1) * 32]
                assert torch.equal(crops[index * 18 + i * 4 + j], block)
        for r, (x, y) in enumerate(cropper.centers[index]):
            assert 16 <= x < 112 and 16 <= y < 112
            assert torch.equal(crops[index * 18 + 16 + r], volume[index, :, x - 16 : x + 16, y - 16 : y + 16])
            expected = overlap_labels(np.array([[x, y]]), 32, 32, 4)[0]
            np.testing.assert_allclose(labels[index, r].numpy(), expected, atol=1e-6)
    again, again_labels = RandVoCoCrops(roi_size=32, augment=False).set_random_state(5)(volume)
    assert torch.equal(again, crops) and torch.equal(again_labels, labels)
    assert not torch.equal(RandVoCoCrops(roi_size=32, augment=False).set_random_state(6)(volume)[1], labels)


def test_crops_are_resized_to_the_network_size_and_augmented_one_by_one():
    volume = torch.rand(1, 1, 192, 192, 48)  # b = 48, resized to 32
    crops, labels = RandVoCoCrops(roi_size=32, augment=False).set_random_state(0)(volume)
    assert crops.shape == (18, 1, 32, 32, 32)
    corner = volume[0, :, :48, :48, :]  # aligned corners keep the block's corner voxels
    assert torch.equal(crops[0][:, 0, 0, 0], corner[:, 0, 0, 0])
    assert torch.equal(crops[0][:, -1, -1, -1], corner[:, -1, -1, -1])
    # every crop flipped on every axis, rotated and shifted: the labels do not change
    always = RandVoCoCrops(roi_size=32, flip_prob=1.0, rot90_prob=1.0, shift_prob=1.0).set_random_state(0)
    augmented, augmented_labels = always(volume)
    assert torch.equal(augmented_labels, labels)
    for index in (0, 17):
        k = int(always._rotations[index])
        shift = float(always._shifts[index])
        assert 1 <= k <= 3 and 0 < abs(shift) <= 0.1
        expected = crops[index].flip([1, 2, 3]).rot90(k, (1, 2)) + shift
        torch.testing.assert_close(augmented[index], expected)
    odd = RandVoCoCrops(roi_size=32, augment=False).set_random_state(1)  # b = 33: crops span [c - 16, c + 17)
    _, odd_labels = odd(torch.rand(1, 1, 132, 132, 33))
    expected = overlap_labels(odd.centers.reshape(-1, 2) + 0.5, 33, 33, 4).reshape(1, 2, 16)
    np.testing.assert_allclose(odd_labels.numpy(), expected, atol=1e-6)
    torch.testing.assert_close(odd_labels.sum(dim=2), torch.ones(1, 2))
    with pytest.raises(ValueError, match=r"\(G\*b, G\*b, b\)"):
        RandVoCoCrops(roi_size=32)(torch.rand(1, 1, 64, 64, 64))


def test_dictionary_crops_add_the_input_and_target_keys():
    data = {"image": torch.rand(1, 1, 128, 128, 32), "modality_label": torch.tensor([0])}
    out = RandVoCoCropsd(keys="image", roi_size=32).set_random_state(3)(data)
    assert set(out) == {"image", "modality_label", "crops", "overlap"} and torch.equal(out["image"], data["image"])
    crops, labels = RandVoCoCrops(roi_size=32).set_random_state(3)(data["image"])
    assert torch.equal(out["crops"], crops) and torch.equal(out["overlap"], labels)
    with pytest.raises(ValueError, match="RandVoCoCropsd takes one image key"):
        RandVoCoCropsd(keys=["image", "label"])


def _perfect_embeddings(labels: torch.Tensor, dim: int = 32) -> torch.Tensor:
    """Orthogonal base embeddings, and random-crop embeddings whose cosine with each base equals the label."""
    batch, crops, bases = labels.shape
    basis = torch.eye(dim)[:bases]
    out = []
    for b in range(batch):
        weights = labels[b] / labels[b].norm(dim=1, keepdim=True)  # unit vectors: cos(crop, base_k) = label_k / |label|
        out.append(torch.cat([basis, weights @ basis]))
    return torch.cat(out)


def test_loss_is_minimal_for_crops_identical_to_base_crops():
    labels = torch.zeros(2, 2, 16)
    labels[0, 0, 3] = labels[0, 1, 10] = labels[1, 0, 0] = labels[1, 1, 15] = 1.0  # random crops = base crops
    embeddings = _perfect_embeddings(labels)
    for form in ("released", "paper"):
        loss = VoCoLoss(form=form)
        total = loss({"student": embeddings}, labels)
        assert float(total) == pytest.approx(0.0, abs=1e-4), form
        noisy = embeddings + 0.3 * torch.randn(embeddings.shape, generator=torch.Generator().manual_seed(0))
        assert float(loss({"student": noisy}, labels)) > float(total) + 0.05, form
    assert float(overlap_prediction_error({"student": embeddings}, labels)) == pytest.approx(0.0, abs=1e-6)


def test_loss_terms_and_gradients_of_each_form():
    torch.manual_seed(0)
    labels = torch.as_tensor(overlap_labels(np.array([[40, 70], [100, 20]]), 32, 32, 4)).reshape(1, 2, 16)
    student = torch.randn(18, 16, requires_grad=True)
    teacher = torch.randn(18, 16)
    released = VoCoLoss()
    total = released({"student": student, "teacher": teacher}, labels)
    assert set(released.components) == {"loss_pos", "loss_neg", "loss_reg"}
    assert float(total.detach()) == pytest.approx(sum(float(v) for v in released.components.values()), rel=1e-5)
    total.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    fixed = student.detach()
    # by hand: logits are the mean of (student crops, teacher bases) and (teacher crops, student bases)
    cos = torch.nn.functional.cosine_similarity
    logits = 0.5 * (cos(fixed[16:, None], teacher[None, :16], dim=-1).relu()
                    + cos(teacher[16:, None], fixed[None, :16], dim=-1).relu())
    y = labels[0]
    positive = -(y * torch.log(1 - (y - logits).abs() + 1e-6)).sum() / y.sum()
    negative = ((y == 0) * logits**2).sum() / (y == 0).sum()
    assert float(released.components["loss_pos"]) == pytest.approx(float(positive), rel=1e-4)
    assert float(released.components["loss_neg"]) == pytest.approx(float(negative), rel=1e-4)
    pairs = [cos(fixed[i], fixed[j], dim=0).relu() ** 2 for i in range(16) for j in range(i + 1, 16)]
    assert float(released.components["loss_reg"]) == pytest.approx(float(torch.stack(pairs).mean()), rel=1e-4)
    paper = VoCoLoss(form="paper")
    paper({"student": fixed}, labels)
    assert set(paper.components) == {"loss_pred", "loss_reg"}
    paper_logits = cos(fixed[16:, None], fixed[None, :16], dim=-1).relu()
    pred = -torch.log(1 - (y - paper_logits).abs() + 1e-6).mean()
    assert float(paper.components["loss_pred"]) == pytest.approx(float(pred), rel=1e-4)
    off = [cos(fixed[i], fixed[j], dim=0).abs() for i in range(16) for j in range(16) if i != j]
    assert float(paper.components["loss_reg"]) == pytest.approx(float(torch.stack(off).mean()), rel=1e-4)
    with pytest.raises(ValueError, match="form"):
        VoCoLoss(form="other")
    with pytest.raises(ValueError, match="17 embeddings for 1 volumes"):
        released({"student": student[:17]}, labels)


def test_network_pools_five_scales_into_the_projector_and_keeps_an_ema_teacher():
    torch.manual_seed(0)
    network = VoCoSwinUNETR(feature_size=12, projection_dim=64, hidden_dim=64, teacher_momentum=0.9)
    assert isinstance(network.projection_head, VoCoProjector)
    layers = [m for m in network.projection_head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in layers] == [(24 * 12, 64), (64, 64), (64, 64)]
    assert [(m.in_features, m.out_features) for m in VoCoProjector(24 * 48) if isinstance(m, torch.nn.Linear)] == [
        (1152, 2048), (2048, 2048), (2048, 2048)]
    assert not any(hasattr(network, name) for name in VoCoSwinUNETR.decoder_modules)
    assert all(not p.requires_grad for p in network.teacher.parameters())
    # the optimizer of the bundle takes network.parameters(): the teacher's get no gradient, so they only move by EMA
    before = {k: v.clone() for k, v in network.teacher.state_dict().items()}
    with torch.no_grad():
        for p in network.parameters():
            if p.requires_grad:
                p.add_(0.01)
    crops = torch.rand(4, 1, 64, 64, 64)
    output = network.train()(crops)
    assert set(output) == {"student", "teacher"} and output["student"].shape == (4, 64)
    assert not output["teacher"].requires_grad
    student = network.state_dict()
    for name, value in network.teacher.state_dict().items():
        if value.is_floating_point() and name in dict(network.teacher.named_parameters()):
            torch.testing.assert_close(value, 0.9 * before[name] + 0.1 * student[name])
    assert set(network.eval()(crops)) == {"student"}
    assert PretextSwinUNETR.pretext_prefixes == ("projection_head.", "teacher.", "templates")
    backbone = network.backbone_state_dict()
    assert backbone and not any(k.startswith(("teacher.", "projection_head.", "decoder")) for k in backbone)
    assert set(VoCoSwinUNETR(feature_size=12, teacher_momentum=None).train()(crops[:2])) == {"student"}


def test_voco_encoder_loads_into_both_fine_tuning_bundles(tmp_path):
    parser = ConfigParser()
    parser.read_config(training_config_files(str(PRETRAIN), "voco"))
    parser.update({"feature_size": 12, "legacy_merging": False})
    source = parser.get_parsed_content("network_def")
    assert isinstance(source, VoCoSwinUNETR) and source.teacher is not None
    reports = assert_encoder_loads_into_fine_tuning_bundles(source, tmp_path)
    for bundle, report in reports.items():
        assert not any(k.startswith("teacher.") for k in report.loaded), bundle
    overlay = json.loads((PRETRAIN / "configs" / "voco.json").read_text())
    assert overlay["voco_grid"] == 4 and overlay["voco_base_size"] == 96 and overlay["roi_size"] == [64, 64, 64]


def test_voco_training_workflow_has_the_zoo_properties(tmp_path):
    sample = write_sample_dataset(str(tmp_path / "sample"), num_ct=2, num_brain=2, ct_shape=(64, 56, 40),
                                  brain_shape=(48, 48, 40), num_validation=1)
    workflow = ConfigWorkflow(
        config_file=training_config_files(str(PRETRAIN), "voco"), workflow_type="train", dataset_dir=sample["root"],
        bundle_root=str(tmp_path / "bundle"), output_dir=str(tmp_path / "runs"), feature_size=12, voco_base_size=64,
        voco_grid=2, cache_rate=0.0, num_workers=0, device="cpu", amp=False,
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    assert isinstance(workflow.parser.get_parsed_content("network_def"), VoCoSwinUNETR)


@pytest.mark.extended
def test_voco_pretraining_then_btcv_fine_tuning_from_its_weights(tmp_path):
    """The docs' two commands at test size (a 2 x 2 grid of 64^3 base crops, no gradient checkpointing)."""
    sample = write_sample_dataset(str(tmp_path / "sample"), num_ct=2, num_brain=2, ct_shape=(64, 56, 40),
                                  brain_shape=(48, 48, 40), num_validation=1)
    runs = tmp_path / "voco"
    pretrain = bundle_training(
        config_arg(*training_config_files(str(PRETRAIN), "voco")), dataset_dir=sample["root"], output_dir=str(runs),
        ckpt_dir=str(runs / "models"), voco_grid=2, voco_base_size=64, feature_size=12, use_checkpoint=False,
        batch_size=1, max_epochs=1, cache_rate=0.0, num_workers=0, progress_bar=False,
    )
    assert pretrain.returncode == 0, pretrain.stderr[-4000:]
    log = pretrain.stdout + pretrain.stderr
    assert all(term in log for term in ("epoch_loss_pos", "epoch_loss_neg", "epoch_loss_reg", "val_overlap_error"))
    curves = json.loads((runs / "figures" / "learning_curves.json").read_text())
    assert set(curves["train"]) == {"loss", "loss_pos", "loss_neg", "loss_reg"}
    assert set(curves["validation"]) == {"val_overlap_error"}
    assert 0 <= curves["validation"]["val_overlap_error"]["1"] <= 1
    state = torch.load(runs / "models" / "model.pt", weights_only=True)
    assert state["projection_head.0.weight"].shape == (2048, 24 * 12) and any(k.startswith("teacher.") for k in state)
    assert not (runs / "previews").exists()

    btcv = tmp_path / "btcv"
    finetune = bundle_training(
        str(REPO / "bundles" / "dae_btcv_seg" / "configs" / "train.json"), dataset_dir=sample["btcv_dir"],
        pretrained_path=str(runs / "models" / "model.pt"), bundle_root=str(btcv), roi_size=[64, 64, 32], **BTCV_TINY,
    )
    assert finetune.returncode == 0, finetune.stderr[-4000:]
    log = finetune.stdout + finetune.stderr
    match = re.search(r"layout 'dae_bundle'\): loaded (\d+) tensors, skipped (\d+), newly initialised (\d+)", log)
    assert match and int(match.group(3)) > 2, log[-3000:]  # VoCo trains no decoder: it starts new
    tuned = torch.load(btcv / "models" / "model.pt", weights_only=True)
    assert tuned["out.conv.conv.weight"].shape[:2] == (14, 12)
