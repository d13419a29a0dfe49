"""
Legacy patch merging: MONAI 1.5 changed the neighbour order of SwinUNETR's 3D PatchMerging, and weights trained
before (every published layout) need LegacyPatchMerging. The reference is tests/data/legacy_merging_fixture.pt,
written under MONAI 1.4.0 by tools/make_legacy_fixture.py: Swin transformer weights in the Swin-SSL layout and in
the DAE authors' conv-stem layout, a 64^3 input and the stage 1-4 features MONAI 1.4 computed. Loaded through
monai_dae.weights (and through the dae_btcv_seg bundle) with legacy_merging "auto", the features must equal them
to 1e-5; with MONAI's current merging they must not.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.networks.nets import SwinUNETR
from monai.networks.nets.swin_unetr import PatchMerging

from monai_dae.networks import LegacyPatchMerging
from monai_dae.weights import load_pretrained, merging_module, resolve_legacy_merging, with_stem

from bundle_testing import BTCV_TINY, REPO

FIXTURE = Path(__file__).resolve().parent / "data" / "legacy_merging_fixture.pt"
LAYOUTS = ("swin_ssl", "dae_official")
ATOL = 1e-5
# the neighbour offsets (depth, height, width) MONAI 1.4 concatenated, read from its swin_unetr.py (x0 ... x7)
MONAI_1_4_ORDER = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 1)]
MONAI_1_6_ORDER = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)]


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def write_published(fixture: dict, layout: str, path: Path) -> str:
    """The fixture's weights as a checkpoint file in the published layout, relative_position_index re-added."""
    entry = fixture["layouts"][layout]
    checkpoint = {k: dict(v) if isinstance(v, dict) else v for k, v in entry["checkpoint"].items()}
    weights = checkpoint["state_dict"] if "state_dict" in checkpoint else checkpoint["model"]
    fresh = SwinUNETR(in_channels=1, out_channels=1, feature_size=fixture["feature_size"]).state_dict()
    weights.update({published: fresh[current] for published, current in entry["omitted"].items()})
    torch.save(checkpoint, path)
    return str(path)


def network(fixture: dict, layout: str, downsample) -> SwinUNETR:
    """A 14-class SwinUNETR (the dae_btcv_seg head) with the layout's stem and the given merging."""
    net = SwinUNETR(in_channels=1, out_channels=14, feature_size=fixture["feature_size"], downsample=downsample)
    return with_stem(net, fixture["layouts"][layout]["stem"])


def stage_differences(net: torch.nn.Module, fixture: dict, layout: str) -> list[float]:
    """Max absolute difference of the stage 1-4 features of ``net`` to the MONAI 1.4 references."""
    net.eval()
    with torch.no_grad():
        hidden = net.swinViT(fixture["input"], normalize=True)
    references = fixture["layouts"][layout]["hidden_states"]
    return [float((hidden[s] - ref).abs().max()) for s, ref in zip(fixture["stages"], references)]


def _identity_merging(merging: torch.nn.Module) -> torch.nn.Module:
    """The merging without its norm and reduction: its output is the concatenation itself."""
    merging.norm, merging.reduction = torch.nn.Identity(), torch.nn.Identity()
    return merging


def test_concatenation_order_with_repeated_pairs():
    d, h, w, c = 4, 2, 2, 2
    grid = torch.stack(torch.meshgrid(*(torch.arange(n) for n in (d, h, w, c)), indexing="ij"), -1)
    x = (1000 * grid[..., 3] + 100 * grid[..., 0] + 10 * grid[..., 1] + grid[..., 2]).float()[None]  # c d h w code
    legacy = _identity_merging(LegacyPatchMerging(dim=c))
    out = legacy(x)
    assert out.shape == (1, d // 2, 1, 1, 8 * c)
    expected = torch.tensor(
        [[[[[1000 * ch + 100 * (2 * i + di) + 10 * dh + dw for di, dh, dw in MONAI_1_4_ORDER for ch in range(c)]]]]
         for i in range(d // 2)]  # fmt: skip
    ).float().reshape(1, d // 2, 1, 1, 8 * c)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    # (0,1,0) and (0,0,1) come twice, (1,1,0) and (0,1,1) never
    assert out[0, 0, 0, 0, 2 * c : 4 * c].tolist() == out[0, 0, 0, 0, 5 * c : 7 * c].tolist() == [10, 1010, 1, 1001]
    current = _identity_merging(PatchMerging(dim=c))(x)
    codes = [100 * i + 10 * j + k for i, j, k in MONAI_1_6_ORDER]
    assert current[0, 0, 0, 0, ::c].tolist() == codes  # the current order differs in positions 4, 5 and 6
    assert legacy.legacy_order.tolist() == [list(o) for o in MONAI_1_4_ORDER]
    assert "legacy_order" in legacy.state_dict()


def test_odd_sizes_are_padded_and_2d_is_refused():
    merging = LegacyPatchMerging(dim=3)
    assert merging(torch.rand(1, 5, 4, 3, 3)).shape == (1, 3, 2, 2, 6)
    with pytest.raises(ValueError, match="3D only"):
        LegacyPatchMerging(dim=3, spatial_dims=2)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_published_layout_matches_monai_1_4_through_the_loader(fixture, layout, tmp_path, caplog):
    path = write_published(fixture, layout, tmp_path / f"{layout}.pt")
    downsample = merging_module("auto", path)
    assert downsample is LegacyPatchMerging
    net = network(fixture, layout, downsample)
    report = load_pretrained(net, path)
    assert report.legacy_merging and report.layout == layout
    assert report.merging == f"legacy patch merging (checkpoint layout '{layout}' was trained with MONAI < 1.5)"
    assert report.merging in report.summary()
    assert max(stage_differences(net, fixture, layout)) <= ATOL

    # legacy_merging false: the user's choice, loaded with a warning, and the features are not the pretraining's
    current = network(fixture, layout, merging_module(False, path))
    with caplog.at_level(logging.WARNING, logger="monai_dae.weights"):
        report = load_pretrained(current, path)
    assert not report.legacy_merging and "features differ from the pretraining" in report.merging
    assert f"checkpoint '{path}' (layout '{layout}') was trained with the patch merging of MONAI < 1.5" in caplog.text
    assert min(stage_differences(current, fixture, layout)) > 0.1


def test_saved_legacy_network_round_trip(fixture, tmp_path):
    published = write_published(fixture, "swin_ssl", tmp_path / "model_swinvit.pt")
    net = network(fixture, "swin_ssl", merging_module("auto", published))
    load_pretrained(net, published)
    saved = str(tmp_path / "model.pt")
    torch.save(net.state_dict(), saved)  # what the bundles' CheckpointSaver writes
    assert sorted(k for k in torch.load(saved, weights_only=True) if k.endswith("legacy_order")) == [
        f"swinViT.layers{s}.0.downsample.legacy_order" for s in (1, 2, 3, 4)
    ]
    assert resolve_legacy_merging("auto", saved)
    again = network(fixture, "swin_ssl", merging_module("auto", saved))
    again.load_state_dict(torch.load(saved, weights_only=True), strict=True)
    assert max(stage_differences(again, fixture, "swin_ssl")) <= ATOL
    report = load_pretrained(network(fixture, "swin_ssl", merging_module("auto", saved)), saved)
    assert report.layout == "dae_bundle" and report.legacy_merging and "'*.downsample.legacy_order'" in report.merging

    # a stock SwinUNETR state dict, no checkpoint, or one not written yet: MONAI's current merging
    stock = str(tmp_path / "stock.pt")
    torch.save(SwinUNETR(in_channels=1, out_channels=14, feature_size=12).state_dict(), stock)
    assert not resolve_legacy_merging("auto", stock)
    assert not resolve_legacy_merging("auto", "") and not resolve_legacy_merging("auto", str(tmp_path / "later.pt"))
    assert merging_module(False, saved) == "merging" and merging_module(True) is LegacyPatchMerging

    # a strict load of the legacy state dict into a current network fails on the records instead of switching
    with pytest.raises(RuntimeError, match="Unexpected key.*downsample.legacy_order"):
        SwinUNETR(in_channels=1, out_channels=14, feature_size=12).load_state_dict(torch.load(saved, weights_only=True))


def test_mismatches_are_refused(fixture, tmp_path):
    stock = str(tmp_path / "stock.pt")
    torch.save(SwinUNETR(in_channels=1, out_channels=14, feature_size=12).state_dict(), stock)
    with pytest.raises(RuntimeError, match=r"stock\.pt.*'legacy_merging' to 'auto' or false"):
        load_pretrained(network(fixture, "swin_ssl", merging_module(True, stock)), stock)

    legacy = str(tmp_path / "legacy.pt")
    torch.save(network(fixture, "swin_ssl", LegacyPatchMerging).state_dict(), legacy)
    with pytest.raises(RuntimeError, match=r"legacy\.pt.*'legacy_merging' to 'auto' or true"):
        load_pretrained(network(fixture, "swin_ssl", "merging"), legacy)

    corrupt = torch.load(legacy, weights_only=True)
    corrupt["swinViT.layers2.0.downsample.legacy_order"] = torch.zeros(8, 3, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="not the legacy order"):
        network(fixture, "swin_ssl", LegacyPatchMerging).load_state_dict(corrupt)


@pytest.mark.parametrize("setting", ["yes", "True", 2, 1, None])
def test_unknown_setting(setting):
    with pytest.raises(ValueError, match=r"legacy_merging.*true, false and 'auto'"):
        resolve_legacy_merging(setting, "")


BUNDLE = REPO / "bundles" / "dae_btcv_seg"
CONFIGS = BUNDLE / "configs"


@pytest.fixture(scope="module")
def btcv_data(tmp_path_factory):
    from monai_dae.data.phantoms import write_sample_dataset

    root = tmp_path_factory.mktemp("btcv_data")
    paths = write_sample_dataset(
        str(root), num_ct=2, num_brain=2, ct_shape=(48, 48, 24), brain_shape=(16, 16, 16), num_validation=1
    )
    return paths["btcv_dir"]


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_btcv_fine_tune_with_zero_learning_rate_keeps_the_legacy_features(fixture, layout, btcv_data, tmp_path):
    """pretrained load -> one epoch at learning rate 0 -> models/model.pt -> evaluate and inference networks."""
    path = write_published(fixture, layout, tmp_path / f"{layout}.pt")
    stem = fixture["layouts"][layout]["stem"]
    common = {"meta_file": str(CONFIGS / "metadata.json"), "logging_file": str(CONFIGS / "logging.conf")}
    root = str(tmp_path / "bundle")
    overrides = {**BTCV_TINY, "roi_size": [64, 64, 32], "bundle_root": root, "dataset_dir": btcv_data, "stem": stem}
    train = ConfigWorkflow(
        workflow_type="train",
        config_file=str(CONFIGS / "train.json"),
        pretrained_path=path,
        learning_rate=0.0,
        **common,
        **overrides,
    )
    report = train.initialize()[-1]
    assert report.legacy_merging and report.layout == layout
    assert not [k for k in report.missing if k.startswith("swinViT.")]  # Swin transformer only: new decoder
    assert train.check_properties() == []
    train.run()
    train.finalize()
    model = os.path.join(root, "models", "model.pt")
    saved = torch.load(model, weights_only=True)
    assert sum(k.endswith(".downsample.legacy_order") for k in saved) == 4

    evaluate = ConfigWorkflow(
        workflow_type="train",
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")],
        **common,
        **overrides,
    )
    evaluate.initialize()
    assert isinstance(evaluate.parser.get_parsed_content("network_def").swinViT.layers3[0].downsample, LegacyPatchMerging)
    evaluate.finalize()

    infer = ConfigWorkflow(
        workflow_type="infer",
        config_file=str(CONFIGS / "inference.json"),
        **common,
        bundle_root=root,
        dataset_dir=btcv_data,
        feature_size=fixture["feature_size"],
        stem=stem,
    )
    infer.initialize()
    net = infer.parser.get_parsed_content("network_def")  # legacy_merging "auto" follows models/model.pt
    net.load_state_dict(saved, strict=True)
    assert max(stage_differences(net, fixture, layout)) <= ATOL
    infer.finalize()
