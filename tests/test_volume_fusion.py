"""
Volume Fusion on the pretext framework: the seeded batched fusion transform, its Dice + CE loss with named
terms, and the README's two commands (pretraining on the sample data, then BTCV fine-tuning from its weights),
with its encoder loading into both fine-tuning bundles as DAE's does.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from monai.bundle import ConfigParser
from monai.losses import DiceCELoss

from monai_dae.data.phantoms import write_sample_dataset
from monai_dae.losses.fusion import VolumeFusionLoss
from monai_dae.transforms.fusion import RandVolumeFusion, RandVolumeFusiond
from monai_dae.utils import training_config_files

from bundle_testing import (
    BTCV_TINY, REPO, assert_encoder_loads_into_fine_tuning_bundles, assert_png, bundle_training, config_arg,
)

PRETRAIN = REPO / "bundles" / "dae_pretrain"


def test_fusion_blends_each_sample_with_the_next_by_box_class():
    batch = torch.rand(3, 1, 64, 64, 48)
    fusion = RandVolumeFusion().set_random_state(7)
    fused, label = fusion(batch)
    assert fused.shape == batch.shape and fused.dtype == batch.dtype
    assert label.shape == (3, 1, 64, 64, 48) and label.dtype == torch.int64
    assert set(label.unique().tolist()) == {0, 1, 2, 3, 4}
    alpha = label.float() / 4
    background = batch.roll(-1, dims=0)  # sample i is fused into sample i + 1 of the batch
    torch.testing.assert_close(fused, alpha * batch + (1 - alpha) * background)
    for boxes in fusion._boxes:
        assert 10 <= len(boxes) <= 40
        for region, level in boxes:
            sizes = [s.stop - s.start for s in region]
            assert 8 <= sizes[0] <= 64 and 8 <= sizes[1] <= 64 and 8 <= sizes[2] <= 40 and 0 <= level <= 4
    region, level = fusion._boxes[0][-1]  # the last box overwrites the ones before it
    assert bool((label[(0, 0, *region)] == level).all())
    again = RandVolumeFusion().set_random_state(7)(batch)
    assert torch.equal(again[0], fused) and torch.equal(again[1], label)
    assert not torch.equal(RandVolumeFusion().set_random_state(8)(batch)[1], label)


def test_fusion_of_a_single_sample_uses_its_flipped_volume():
    image = torch.rand(1, 1, 32, 32, 32)
    fused, label = RandVolumeFusion(num_boxes=(40, 40)).set_random_state(0)(image)
    alpha = label.float() / 4
    torch.testing.assert_close(fused, alpha * image + (1 - alpha) * image.flip(dims=(2, 3, 4)))


def test_dictionary_fusion_adds_the_input_and_target_keys():
    data = {"image": torch.rand(2, 1, 32, 32, 32), "modality_label": torch.tensor([0, 1])}
    out = RandVolumeFusiond(keys="image").set_random_state(3)(data)
    assert torch.equal(out["image"], data["image"]) and set(out) == {"image", "modality_label", "fused", "fusion_label"}
    fused, label = RandVolumeFusion().set_random_state(3)(data["image"])
    assert torch.equal(out["fused"], fused) and torch.equal(out["fusion_label"], label)
    with pytest.raises(ValueError, match="num_boxes"):
        RandVolumeFusion(num_boxes=(0, 4))
    with pytest.raises(ValueError, match="RandVolumeFusiond takes one image key"):
        RandVolumeFusiond(keys=["image", "label"])


def test_loss_is_half_dice_half_cross_entropy_with_named_terms():
    torch.manual_seed(0)
    logits, label = torch.randn(2, 5, 16, 16, 16), torch.randint(0, 5, (2, 1, 16, 16, 16))
    loss = VolumeFusionLoss()
    expected = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.5, lambda_ce=0.5)(logits, label)
    torch.testing.assert_close(loss(logits, label), expected)
    assert set(loss.components) == {"loss_dice", "loss_ce"}
    assert float(loss.components["loss_ce"]) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, label[:, 0])))


@pytest.mark.slow
def test_volume_fusion_pretraining_then_btcv_fine_tuning_from_its_weights(tmp_path):
    """The README's two commands at test size: Volume Fusion pretraining, then dae_btcv_seg from its model.pt."""
    sample = write_sample_dataset(str(tmp_path / "sample"), num_ct=2, num_brain=2, ct_shape=(64, 56, 40),
                                  brain_shape=(48, 48, 40), num_validation=1)
    runs = tmp_path / "vf"
    pretrain = bundle_training(
        config_arg(*training_config_files(str(PRETRAIN), "volume_fusion")), dataset_dir=sample["root"],
        output_dir=str(runs), ckpt_dir=str(runs / "models"), roi_size=[64, 64, 64], feature_size=12, max_epochs=1,
        cache_rate=0.0, num_workers=0, progress_bar=False,
    )
    assert pretrain.returncode == 0, pretrain.stderr[-4000:]
    log = pretrain.stdout + pretrain.stderr
    assert "epoch_loss_dice" in log and "epoch_loss_ce" in log and "val_mean_dice" in log
    state = torch.load(runs / "models" / "model.pt", weights_only=True)
    assert state["out.conv.conv.weight"].shape[:2] == (5, 12)  # the 5-class fusion head
    assert not any(k.startswith("projection_head.") for k in state)
    assert [p.name for p in (runs / "previews").glob("*.png")] == ["preview_epoch0001.png"]
    # fused | fusion classes | predicted for one validation file per modality (3 rows)
    assert assert_png(runs / "previews" / "preview_epoch0001.png") == (9 * 260, 3 * 260)
    curves = json.loads((runs / "figures" / "learning_curves.json").read_text())
    assert set(curves["train"]) == {"loss", "loss_ce", "loss_dice"} and set(curves["validation"]) == {"val_mean_dice"}
    assert assert_png(runs / "figures" / "learning_curves.png") == (3 * 400, 2 * 300)

    btcv = tmp_path / "btcv"
    finetune = bundle_training(
        str(REPO / "bundles" / "dae_btcv_seg" / "configs" / "train.json"), dataset_dir=sample["btcv_dir"],
        pretrained_path=str(runs / "models" / "model.pt"), bundle_root=str(btcv), roi_size=[64, 64, 32], **BTCV_TINY,
    )
    assert finetune.returncode == 0, finetune.stderr[-4000:]
    log = finetune.stdout + finetune.stderr
    match = re.search(r"layout 'dae_bundle'\): loaded (\d+) tensors, skipped \d+, newly initialised (\d+)", log)
    assert match and int(match.group(2)) == 2, log[-3000:]  # everything but the new 14-class output convolution
    tuned = torch.load(btcv / "models" / "model.pt", weights_only=True)
    assert tuned["out.conv.conv.weight"].shape[:2] == (14, 12)


def test_volume_fusion_encoder_loads_into_both_fine_tuning_bundles(tmp_path):
    parser = ConfigParser()
    parser.read_config(training_config_files(str(PRETRAIN), "volume_fusion"))
    parser.update({"feature_size": 12, "legacy_merging": False})
    source = parser.get_parsed_content("network_def")
    assert_encoder_loads_into_fine_tuning_bundles(source, tmp_path)
    assert json.loads((PRETRAIN / "configs" / "volume_fusion.json").read_text())["out_channels"] == 5
