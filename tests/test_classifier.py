"""Tests of the Swin UNETR encoder classifier, its pretrained-weight loading and the classification metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.nets import SwinUNETR
from sklearn.metrics import roc_auc_score

from ignite.engine import Engine

from monai_dae.handlers.classification import HeadNormRecalibration, classification_metrics
from monai_dae.networks import DAESwinUNETR, SwinClassifier
from monai_dae.networks.classifier import FeatureBatchNorm
from monai_dae.weights import load_pretrained

SIZE = 32  # the encoder alone runs at 32^3 (1^3 bottleneck) in training mode


def _classifier(**kwargs) -> SwinClassifier:
    torch.manual_seed(0)
    return SwinClassifier(**{"in_channels": 4, "num_classes": 2, "feature_size": 12, **kwargs})


def test_forward_train_mode_and_backward():
    net = _classifier(dropout=0.3).train()
    logits = net(torch.randn(2, 4, SIZE, SIZE, SIZE))
    assert logits.shape == (2, 2)
    logits.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert net.features(torch.randn(1, 4, SIZE, SIZE, SIZE)).shape == (1, 16 * 12)
    with pytest.raises(ValueError, match="divisible by 32"):
        net(torch.randn(1, 4, 48, 48, 40))
    with pytest.raises(ValueError, match="feature_size"):
        SwinClassifier(feature_size=16)


def test_encoder_keys_match_swin_unetr():
    net = _classifier()
    reference = SwinUNETR(in_channels=4, out_channels=2, feature_size=12).state_dict()
    encoder = {k: v.shape for k, v in net.state_dict().items() if k.startswith("swinViT.")}
    assert encoder == {k: v.shape for k, v in reference.items() if k.startswith("swinViT.")}
    head = {"head_norm.running_mean", "head_norm.running_var", "head_norm.num_batches_tracked", "head.weight", "head.bias"}
    assert set(net.state_dict()) - set(encoder) == head
    layer = _classifier(head_norm="layer").state_dict()
    assert set(layer) - set(encoder) == {"head_norm.weight", "head_norm.bias", "head.weight", "head.bias"}
    with pytest.raises(ValueError, match="head_norm"):
        _classifier(head_norm="group")


def test_batch_norm_head_standardises_features_across_subjects():
    net = _classifier().train()
    x = torch.randn(4, 4, SIZE, SIZE, SIZE)
    with torch.no_grad():
        normalised = net.head_norm(net.features(x))
    torch.testing.assert_close(normalised.mean(0), torch.zeros(normalised.shape[1]), atol=1e-4, rtol=0)
    assert net.head_norm.num_batches_tracked == 1  # running statistics for evaluation


def test_feature_batch_norm_running_statistics_start_from_the_data():
    torch.manual_seed(0)
    batches = [0.6 + 0.01 * torch.randn(4, 8) for _ in range(15)]  # like DAE features: variance 1e-4 around 0.6
    norm = FeatureBatchNorm(8).train()
    norm(batches[0])
    torch.testing.assert_close(norm.running_mean, batches[0].mean(0))
    torch.testing.assert_close(norm.running_var, batches[0].var(0))
    for batch in batches[1:10]:  # plain average while fewer than 1 / momentum batches were seen
        norm(batch)
    torch.testing.assert_close(norm.running_mean, torch.stack([b.mean(0) for b in batches[:10]]).mean(0))
    expected = norm.running_mean.clone()
    for batch in batches[10:]:  # then the moving average of nn.BatchNorm1d
        norm(batch)
        expected = 0.9 * expected + 0.1 * batch.mean(0)
    torch.testing.assert_close(norm.running_mean, expected)
    assert set(norm.state_dict()) == set(torch.nn.BatchNorm1d(8, affine=False).state_dict())

    # evaluation after one training batch: held-out features are standardised; nn.BatchNorm1d's running
    # statistics still hold mostly their start (0, 1), so its outputs hardly differ between subjects
    held_out = 0.6 + 0.01 * torch.randn(256, 8)
    fresh, plain = FeatureBatchNorm(8).train(), torch.nn.BatchNorm1d(8, affine=False).train()
    fresh(batches[0]), plain(batches[0])
    with torch.no_grad():
        assert 0.3 < float(fresh.eval()(held_out).std(0).min()) < 3.0
        assert float(plain.eval()(held_out).std(0).max()) < 0.02


def test_head_norm_recalibration_before_each_validation():
    net = _classifier(dropout_path_rate=0.5).train()
    torch.manual_seed(1)
    batches = [{"image": torch.randn(2, 4, SIZE, SIZE, SIZE)} for _ in range(3)]
    net.head_norm.running_mean.fill_(5.0), net.head_norm.running_var.fill_(100.0)  # stale statistics
    encoder = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("swinViT.")}
    evaluator = Engine(lambda engine, batch: None)
    recalibration = HeadNormRecalibration(net, batches, device="cpu")
    recalibration.attach(evaluator)
    evaluator.run([0])
    net.eval()
    with torch.no_grad():  # the features of evaluation mode (no stochastic depth)
        features = net.features(torch.cat([b["image"] for b in batches]))
    torch.testing.assert_close(net.head_norm.running_mean, features.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net.head_norm.running_var, features.var(0), rtol=1e-4, atol=1e-7)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in encoder.items())
    assert recalibration() == 6
    net.train()
    recalibration()
    assert net.training and net.swinViT.training  # the training mode is restored
    assert HeadNormRecalibration(_classifier(head_norm="layer"), batches, device="cpu")() == 0


def test_freeze_encoder_is_a_linear_probe():
    net = _classifier(freeze_encoder=True, dropout_path_rate=0.5).train()
    assert not net.swinViT.training and net.head.training
    assert all(not p.requires_grad for p in net.swinViT.parameters())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    x = torch.randn(2, 4, SIZE, SIZE, SIZE)
    features = net.features(x)
    torch.testing.assert_close(net.features(x), features)  # no stochastic depth in the frozen encoder
    torch.nn.functional.cross_entropy(net(x), torch.tensor([0, 1])).backward()
    optimizer.step()
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("swinViT."))
    assert not torch.equal(before["head.weight"], after["head.weight"])
    net.set_freeze_encoder(False)
    assert net.swinViT.training and all(p.requires_grad for p in net.parameters())


@pytest.fixture(scope="module")
def pretrained_path(tmp_path_factory) -> str:
    """A 1-channel DAE pretraining network's state dict, as the dae_pretrain bundle saves it."""
    torch.manual_seed(1)
    network = DAESwinUNETR(in_channels=1, out_channels=1, feature_size=12)
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.save(network.state_dict(), path)
    return str(path)


def test_one_to_four_channel_adaptation(pretrained_path):
    """The 1-channel patch embedding is replicated over the 4 channels and divided by 4 (documented rule)."""
    pretrained = torch.load(pretrained_path, weights_only=True)
    net = _classifier()
    report = load_pretrained(net, pretrained_path, load_decoder=False)
    assert report.adapted == ["swinViT.patch_embed.proj.weight"]
    assert sorted(report.missing) == [
        "head.bias", "head.weight", "head_norm.num_batches_tracked", "head_norm.running_mean", "head_norm.running_var"
    ]  # fmt: skip
    assert all(k.startswith("swinViT.") for k in report.loaded)
    assert len(report.loaded) == sum(k.startswith("swinViT.") for k in net.state_dict())
    assert any(k.startswith("decoder1.") for k in report.skipped)  # decoder reported, not silently dropped
    weight = net.state_dict()["swinViT.patch_embed.proj.weight"]
    assert weight.shape == (12, 4, 2, 2, 2)
    torch.testing.assert_close(weight, pretrained["swinViT.patch_embed.proj.weight"].repeat(1, 4, 1, 1, 1) / 4)
    # four copies of an image give the pretrained encoder's features on that image
    source = DAESwinUNETR(in_channels=1, out_channels=1, feature_size=12)
    source.load_state_dict(pretrained)
    source.eval(), net.eval()
    image = torch.randn(1, 1, SIZE, SIZE, SIZE)
    with torch.no_grad():
        expected = source.swinViT(image, True)[-1].flatten(2).mean(2)
        torch.testing.assert_close(net.features(image.repeat(1, 4, 1, 1, 1)), expected, rtol=1e-4, atol=1e-5)


def test_load_fails_loudly_on_a_mismatched_backbone(pretrained_path):
    with pytest.raises(RuntimeError, match="backbone did not load"):
        load_pretrained(SwinClassifier(in_channels=4, feature_size=24), pretrained_path, load_decoder=False)


def test_conv_stem_option():
    net = _classifier(stem="conv")
    assert "swinViT.patch_embed.proj.conv1.conv.weight" in net.state_dict()
    assert net(torch.randn(2, 4, SIZE, SIZE, SIZE)).shape == (2, 2)
    with pytest.raises(ValueError, match="stem"):
        _classifier(stem="other")


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=40)
    scores = np.round(rng.random(40) * 0.5 + labels * 0.3, 1)  # ties included
    probabilities = np.stack([1 - scores, scores], axis=1)
    metrics = classification_metrics(labels, probabilities)
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, scores))
    predicted = probabilities.argmax(1)
    assert metrics["accuracy"] == pytest.approx((predicted == labels).mean())
    recall = [((predicted == c) & (labels == c)).sum() / (labels == c).sum() for c in (0, 1)]
    assert metrics["balanced_accuracy"] == pytest.approx(np.mean(recall))
    assert np.array(metrics["confusion_matrix"]).sum() == 40
    assert np.isnan(classification_metrics(np.ones(3, dtype=int), np.full((3, 2), 0.5))["auc"])  # one class only
    three = rng.dirichlet(np.ones(3), size=30)
    three_labels = rng.integers(0, 3, size=30)
    expected = roc_auc_score(three_labels, three, multi_class="ovr", average="macro")
    assert classification_metrics(three_labels, three)["auc"] == pytest.approx(expected)
    # a class no subject has is left out of the macro mean
    two_present = np.where(three_labels == 2, 0, three_labels)
    expected = np.mean([roc_auc_score(two_present == c, three[:, c]) for c in (0, 1)])
    assert classification_metrics(two_present, three)["auc"] == pytest.approx(expected)
