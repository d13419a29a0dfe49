"""
Pretrained-weight loading: small checkpoints (feature size 12) written with exactly the published key layouts,
each produced by renaming a real MONAI network's state dict back into that layout, must load fully; wrong
layouts and mismatched networks must fail loudly. The published layouts were trained with MONAI < 1.5: their
source networks here use LegacyPatchMerging (whose legacy_order records the published files do not have).
"""

from __future__ import annotations

import logging
import re

import pytest
import torch
from monai.networks.nets import SwinUNETR

from monai_dae.networks import DAESwinUNETR, LegacyPatchMerging, is_merging_record, use_conv_stem
from monai_dae.weights import (
    LAYOUTS,
    LoadReport,
    adapt_in_channels,
    checkpoint_stem,
    convert_state_dict,
    detect_layout,
    load_pretrained,
    read_checkpoint,
    resolve_stem,
    with_stem,
)

FEATURE = 12
OUT = 14


def _seg_net(**kwargs) -> SwinUNETR:
    return SwinUNETR(in_channels=kwargs.pop("in_channels", 1), out_channels=OUT, feature_size=FEATURE, **kwargs)


def _to_mlp_fc(key: str) -> str:
    return key.replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2.")


def _to_monai08(key: str) -> str:
    """Current SwinUNETR name -> the MONAI 0.8 name of ckpt_best.pth / ssl_pretrained_weights.pth."""
    if key.startswith("swinViT."):
        key = "encoder." + re.sub(r"^layers(\d)\.0\.", r"layers\1.0.0.", key[len("swinViT.") :])
    return key


def make_dae_bundle(path) -> DAESwinUNETR:
    """models/model.pt of dae_pretrain: a plain DAESwinUNETR state dict (CheckpointSaver of one object)."""
    source = DAESwinUNETR(feature_size=FEATURE)
    torch.save(source.state_dict(), path)
    return source


def make_dae_official(path) -> DAESwinUNETR:
    """ckpt_best.pth of the DAE authors: {"model", "optimizer", "lr_scheduler", "epoch"}, MONAI 0.8 names."""
    source = DAESwinUNETR(feature_size=FEATURE, stem="conv", downsample=LegacyPatchMerging)
    model = {}
    for key, value in source.state_dict().items():
        if key.startswith("projection_head.") or is_merging_record(key):
            continue
        model[_to_mlp_fc(_to_monai08(key))] = value
    model["encoder.mask_token"] = torch.zeros(1, 1, FEATURE)
    model["encoder.norm.weight"] = torch.ones(16 * FEATURE)
    model["encoder.norm.bias"] = torch.zeros(16 * FEATURE)
    for block, channels in (("encoder2", 1), ("encoder3", 2), ("encoder4", 4), ("encoder10", 16)):
        c = channels * FEATURE
        model[f"{block}.layer.conv3.conv.weight"] = torch.randn(c, c, 1, 1, 1)
    checkpoint = {
        "model": model,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
        "lr_scheduler": {"last_epoch": 99, "base_lrs": [1e-4]},
        "epoch": 99,
    }
    torch.save(checkpoint, path)
    return source


def make_monai_ssl(path) -> SwinUNETR:
    """ssl_pretrained_weights.pth: {"model": ...}, MONAI 0.8 names with the patchify stem, mask token, norm, out."""
    source = SwinUNETR(in_channels=1, out_channels=1, feature_size=FEATURE, downsample=LegacyPatchMerging)
    model = {_to_monai08(k): v for k, v in source.state_dict().items() if not is_merging_record(k)}
    model["encoder.mask_token"] = torch.zeros(1, 1, FEATURE)
    model["encoder.norm.weight"] = torch.ones(16 * FEATURE)
    model["encoder.norm.bias"] = torch.zeros(16 * FEATURE)
    torch.save({"model": model}, path)
    return source


def make_swin_ssl(path) -> SwinUNETR:
    """model_swinvit.pt of Swin-SSL: {"state_dict": {"module.patch_embed...", "module.layers1.0..."}}, fc1/fc2."""
    source = SwinUNETR(in_channels=1, out_channels=1, feature_size=FEATURE, downsample=LegacyPatchMerging)
    state = {
        "module." + _to_mlp_fc(k[len("swinViT.") :]): v
        for k, v in source.state_dict().items()
        if k.startswith("swinViT.") and not is_merging_record(k)
    }
    torch.save({"epoch": 100, "state_dict": state}, path)
    return source


def make_voco(path) -> SwinUNETR:
    """VoCo_B_SSL_head.pt style: a bare state dict of the use_v2 SwinUNETR encoder (swinViT + encoder1..4, 10)."""
    source = SwinUNETR(
        in_channels=1, out_channels=1, feature_size=FEATURE, use_v2=True, downsample=LegacyPatchMerging
    )
    state = {
        k: v for k, v in source.state_dict().items() if k.startswith(("swinViT.", "encoder")) and not is_merging_record(k)
    }
    torch.save(state, path)
    return source


MAKERS = {
    "dae_bundle": make_dae_bundle,
    "dae_official": make_dae_official,
    "monai_ssl": make_monai_ssl,
    "swin_ssl": make_swin_ssl,
    "voco": make_voco,
}


def _target_for(layout: str, **kwargs) -> SwinUNETR:
    """A network for a layout: the published ones (trained with MONAI < 1.5) need the legacy merging."""
    downsample = "merging" if layout == "dae_bundle" else LegacyPatchMerging
    net = _seg_net(use_v2=layout == "voco", downsample=downsample, **kwargs)
    if layout == "dae_official":
        use_conv_stem(net)
    return net


def _groups(net: torch.nn.Module) -> dict[str, list[str]]:
    keys = [k for k in net.state_dict() if not is_merging_record(k)]  # constant records, not loaded weights
    return {
        "all": keys,
        "backbone": [k for k in keys if k.startswith("swinViT.")],
        "encoders": [k for k in keys if re.match(r"encoder\d+\.", k)],
        "decoders": [k for k in keys if k.startswith("decoder")],
        "out": [k for k in keys if k.startswith("out.")],
    }


# expected counts per layout: which network groups load, and how many checkpoint tensors are skipped
EXPECTED = {
    # projection head (4) + out (2)
    "dae_bundle": (("backbone", "encoders", "decoders"), 6),
    # mask token, encoder.norm (2), conv3 of encoder2/3/4/10 (4), out (2)
    "dae_official": (("backbone", "encoders", "decoders"), 9),
    # mask token, encoder.norm (2), out (2)
    "monai_ssl": (("backbone", "encoders", "decoders"), 5),
    "swin_ssl": (("backbone",), 0),
    "voco": (("backbone", "encoders"), 0),
}


def test_layout_names():
    assert sorted(LAYOUTS) == sorted(MAKERS)


@pytest.mark.parametrize("layout", sorted(MAKERS))
def test_each_published_layout_loads_fully(layout, tmp_path, caplog):
    path = str(tmp_path / f"{layout}.pt")
    source = MAKERS[layout](path)
    state = read_checkpoint(path)
    assert detect_layout(state) == layout

    net = _target_for(layout)
    groups = _groups(net)
    loaded_groups, num_skipped = EXPECTED[layout]
    expected_loaded = sorted(k for g in loaded_groups for k in groups[g])
    with caplog.at_level(logging.INFO, logger="monai_dae.weights"):
        report = load_pretrained(net, path)
    assert isinstance(report, LoadReport) and report.layout == layout
    assert sorted(report.loaded) == expected_loaded
    assert report.num_loaded == len(expected_loaded)
    assert report.num_missing == len(groups["all"]) - len(expected_loaded)
    assert report.num_skipped == num_skipped, report.summary()
    assert set(groups["backbone"]) <= set(report.loaded)
    assert f"loaded {report.num_loaded} tensors" in caplog.text

    # the converted weights compute exactly what the source network computed
    x = torch.rand(1, 1, 32, 32, 32)
    net.eval(), source.eval()
    with torch.no_grad():
        for ours, theirs in zip(net.swinViT(x), source.swinViT(x)):
            torch.testing.assert_close(ours, theirs)
        if "decoders" in loaded_groups:
            torch.testing.assert_close(net.decoder1.conv_block.conv1.conv.weight, source.decoder1.conv_block.conv1.conv.weight)


def test_load_decoder_false_loads_backbone_only(tmp_path):
    path = str(tmp_path / "model.pt")
    make_dae_bundle(path)
    net = _seg_net()
    report = load_pretrained(net, path, load_decoder=False)
    groups = _groups(net)
    assert sorted(report.loaded) == sorted(groups["backbone"])
    assert report.num_missing == len(groups["encoders"]) + len(groups["decoders"]) + len(groups["out"])
    assert report.skip_reasons["decoder1.transp_conv.conv.weight"] == "load_decoder=False"


def test_official_checkpoint_needs_conv_stem(tmp_path):
    path = str(tmp_path / "ckpt_best.pth")
    source = make_dae_official(path)
    with pytest.raises(RuntimeError, match="stem"):
        load_pretrained(_seg_net(downsample=LegacyPatchMerging), path)
    net = _seg_net(downsample=LegacyPatchMerging)
    report = load_pretrained(net, path, switch_stem=True)
    assert "swinViT.patch_embed.proj.conv1.conv.weight" in report.loaded
    x = torch.rand(1, 1, 32, 32, 32)
    net.eval(), source.eval()
    with torch.no_grad():
        torch.testing.assert_close(net.swinViT(x)[-1], source.swinViT(x)[-1])
        assert net(torch.rand(1, 1, 64, 64, 64)).shape == (1, OUT, 64, 64, 64)


def test_patch_stem_checkpoint_into_conv_stem_network_fails(tmp_path):
    path = str(tmp_path / "model.pt")
    make_dae_bundle(path)
    with pytest.raises(RuntimeError, match="'stem' to 'patch'"):
        load_pretrained(use_conv_stem(_seg_net()), path)


def test_one_decision_of_the_stem(tmp_path, caplog):
    """checkpoint_stem reads it from any names, resolve_stem decides it, with_stem builds it."""
    official, ssl = str(tmp_path / "ckpt_best.pth"), str(tmp_path / "ssl.pt")
    make_dae_official(official), make_monai_ssl(ssl)
    raw = read_checkpoint(official)
    assert checkpoint_stem(raw) == checkpoint_stem(convert_state_dict(raw)) == "conv"
    assert checkpoint_stem(read_checkpoint(ssl)) == checkpoint_stem(_seg_net().state_dict()) == "patch"
    assert checkpoint_stem(use_conv_stem(_seg_net()).state_dict()) == "conv"
    assert [resolve_stem("patch", official), resolve_stem("conv"), resolve_stem("auto")] == ["patch", "conv", "patch"]
    assert resolve_stem("auto", str(tmp_path / "not_yet.pt")) == "patch"  # models/model.pt before training
    with caplog.at_level(logging.INFO, logger="monai_dae.weights"):
        assert resolve_stem("auto", official) == "conv" and resolve_stem("auto", ssl) == "patch"
    assert f"convolutional stem (stem 'auto' follows '{official}')" in caplog.text
    with pytest.raises(ValueError, match="'stem'.*'patch', 'conv', 'auto'"):
        resolve_stem("vit")
    net = with_stem(_seg_net(downsample=LegacyPatchMerging), "auto", official)
    assert checkpoint_stem(net.state_dict()) == "conv" and with_stem(net, "conv") is net  # already has it
    assert load_pretrained(net, official).num_missing == 2  # the new head only
    assert checkpoint_stem(with_stem(_seg_net(), "auto", ssl).state_dict()) == "patch"


def test_voco_needs_use_v2(tmp_path):
    path = str(tmp_path / "voco.pt")
    make_voco(path)
    with pytest.raises(RuntimeError, match="use_v2=True"):
        load_pretrained(_seg_net(), path)
    path2 = str(tmp_path / "model.pt")
    make_dae_bundle(path2)
    with pytest.raises(RuntimeError, match="use_v2 false"):
        load_pretrained(_seg_net(use_v2=True), path2)


def test_wrong_layout_fails_loudly(tmp_path):
    unknown = str(tmp_path / "resnet.pt")
    torch.save({"conv1.weight": torch.zeros(4, 1, 3, 3, 3), "fc.weight": torch.zeros(2, 4)}, unknown)
    with pytest.raises(ValueError, match="unrecognised checkpoint layout"):
        load_pretrained(_seg_net(), unknown)

    # a SwinUNETR of another feature size: every backbone tensor has the wrong shape
    other = str(tmp_path / "feature24.pt")
    torch.save(SwinUNETR(in_channels=1, out_channels=1, feature_size=24).state_dict(), other)
    with pytest.raises(RuntimeError, match="feature_size"):
        load_pretrained(_seg_net(), other)

    # forcing a layout that does not fit the keys
    path = str(tmp_path / "model.pt")
    make_dae_official(path)
    with pytest.raises(RuntimeError, match="backbone did not load"):
        load_pretrained(use_conv_stem(_seg_net()), path, layout="dae_bundle")
    with pytest.raises(ValueError, match="unknown weight layout"):
        load_pretrained(_seg_net(), path, layout="mae")


def test_read_checkpoint_errors_name_the_file(tmp_path):
    missing = str(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        read_checkpoint(missing)
    not_weights = str(tmp_path / "list.pt")
    torch.save([1, 2, 3], not_weights)
    with pytest.raises(ValueError, match="list.pt"):
        read_checkpoint(not_weights)
    pickled = str(tmp_path / "module.pt")
    torch.save(torch.nn.Linear(2, 2), pickled)
    with pytest.raises(RuntimeError, match="module.pt"):
        read_checkpoint(pickled)
    garbage = str(tmp_path / "garbage.pt")
    with open(garbage, "wb") as f:
        f.write(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="garbage.pt"):
        read_checkpoint(garbage)


def test_convert_state_dict_names(tmp_path):
    path = str(tmp_path / "ckpt_best.pth")
    make_dae_official(path)
    converted = convert_state_dict(read_checkpoint(path))
    assert "swinViT.layers2.0.blocks.1.mlp.linear1.weight" in converted
    assert "swinViT.patch_embed.proj.conv1.conv.weight" in converted
    assert not any(k.startswith("encoder.") for k in converted)
    assert "encoder.mask_token" not in converted
    target = use_conv_stem(_seg_net()).state_dict()
    filtered = convert_state_dict(read_checkpoint(path), "dae_official", target_keys=target.keys())
    assert "encoder2.layer.conv3.conv.weight" not in filtered
    assert set(filtered) <= set(target)


def test_adapt_in_channels_tensor():
    weight = torch.randn(12, 1, 2, 2, 2)
    adapted = adapt_in_channels(weight, 4)
    assert adapted.shape == (12, 4, 2, 2, 2)
    torch.testing.assert_close(adapted.sum(dim=1, keepdim=True), weight)
    assert adapt_in_channels(adapted, 4) is adapted
    with pytest.raises(ValueError, match="3 input channels"):
        adapt_in_channels(torch.randn(12, 3, 2, 2, 2), 4)
    state = adapt_in_channels({"swinViT.patch_embed.proj.weight": weight, "other": torch.ones(1)}, 2)
    assert state["swinViT.patch_embed.proj.weight"].shape == (12, 2, 2, 2, 2) and state["other"].shape == (1,)


def test_one_channel_weights_into_multichannel_network(tmp_path):
    """N identical input channels reproduce the 1-channel pretrained network exactly."""
    path = str(tmp_path / "model.pt")
    source = _seg_net()
    torch.save(source.state_dict(), path)
    net = _seg_net(in_channels=4)
    report = load_pretrained(torch.nn.DataParallel(net), path, load_head=True)
    assert sorted(report.adapted) == [
        "encoder1.layer.conv1.conv.weight",
        "encoder1.layer.conv3.conv.weight",
        "swinViT.patch_embed.proj.weight",
    ]
    assert report.num_missing == 0 and report.num_skipped == 0
    x = torch.rand(1, 1, 32, 32, 32)
    net.eval(), source.eval()
    x4 = x.repeat(1, 4, 1, 1, 1)
    with torch.no_grad():
        for ours, theirs in zip(net.swinViT(x4), source.swinViT(x)):
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(net.encoder1(x4), source.encoder1(x), atol=1e-5, rtol=1e-4)


def test_prefix_for_wrapped_backbones(tmp_path):
    path = str(tmp_path / "model.pt")
    make_dae_bundle(path)

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = _seg_net()
            self.head = torch.nn.Linear(16 * FEATURE, 2)

    model = Classifier()
    report = load_pretrained(model, path, prefix="backbone.")
    assert set(_groups(model.backbone)["backbone"]) <= set(report.loaded)
    assert not any(k.startswith("head") for k in report.missing)
