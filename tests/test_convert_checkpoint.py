"""
tools/convert_checkpoint.py: every published checkpoint layout (small feature-size-12 checkpoints written by
the builders of test_weights.py) converted for every bundle it fits, with key accounting, tensors equal to the
source, and the written file loaded back by the target bundle's own network and ``pretrained_path`` item;
archives, pickled code and bad requests are refused without writing anything.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import zipfile

import pytest
import torch
from monai.bundle import ConfigParser

from monai_dae.networks import is_merging_record
from monai_dae.utils import training_config_files
from monai_dae.weights import (
    LEGACY_MERGING_LAYOUTS,
    LoadReport,
    adapt_in_channels,
    convert_state_dict,
    infer_architecture,
    read_checkpoint,
    resolve_legacy_merging,
)
from tools.convert_checkpoint import convert_checkpoint

from bundle_testing import REPO, tool_command, tool_env
from test_weights import FEATURE, MAKERS

# (layout, target) -> (loaded, skipped, newly initialised) tensor counts, feature size 12
COUNTS = {
    ("dae_official", "dae_pretrain"): (163, 7, 4),  # skipped: mask token, encoder.norm (2), conv3 x4
    ("dae_official", "dae_btcv_seg"): (161, 9, 2),  # + out (2) skipped: new head
    ("dae_official", "dae_brats_cls"): (130, 40, 5),  # + encoders/decoders (35): classifier has none
    ("monai_ssl", "dae_pretrain"): (159, 3, 4),
    ("monai_ssl", "dae_btcv_seg"): (157, 5, 2),
    ("monai_ssl", "dae_brats_cls"): (126, 36, 5),
    ("swin_ssl", "dae_pretrain"): (126, 0, 37),
    ("swin_ssl", "dae_btcv_seg"): (126, 0, 33),
    ("swin_ssl", "dae_brats_cls"): (126, 0, 5),
    ("voco", "dae_pretrain"): (145, 0, 26),
    ("voco", "dae_btcv_seg"): (145, 0, 22),
    ("voco", "dae_brats_cls"): (134, 11, 5),
    ("dae_bundle", "dae_btcv_seg"): (157, 6, 2),  # skipped: projection head (4), out (2)
    ("dae_bundle", "dae_brats_cls"): (126, 37, 5),
}

# which module groups of each target network receive pretrained tensors
LOADED_GROUPS = {
    "dae_pretrain": {
        "dae_official": ("swinViT", "encoder", "decoder", "out"),
        "monai_ssl": ("swinViT", "encoder", "decoder", "out"),
        "swin_ssl": ("swinViT",),
        "voco": ("swinViT", "encoder"),
    },
    "dae_btcv_seg": {
        "dae_official": ("swinViT", "encoder", "decoder"),
        "monai_ssl": ("swinViT", "encoder", "decoder"),
        "dae_bundle": ("swinViT", "encoder", "decoder"),
        "swin_ssl": ("swinViT",),
        "voco": ("swinViT", "encoder"),
    },
    "dae_brats_cls": dict.fromkeys(MAKERS, ("swinViT",)),
}


def _group(key: str) -> str:
    """Top-level module of a key without its number: encoder10.layer... -> encoder."""
    return re.sub(r"\d+$", "", key.split(".")[0])


def bundle_network(target: str, architecture: dict, pretrained_path: str | None = None):
    """The target bundle's network_def built from its training configs, and its pretrained_path result."""
    parser = ConfigParser()
    parser.read_config(training_config_files(str(REPO / "bundles" / target)))
    for key, value in architecture.items():
        parser[key if key in parser.config else f"network_def#{key}"] = value
    if pretrained_path is not None:
        parser["pretrained_path"] = pretrained_path
    network = parser.get_parsed_content("network_def")
    loaded = pretrained_path is not None and "load_pretrained" in parser.config
    report = parser.get_parsed_content("load_pretrained") if loaded else None
    return network, report


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One small checkpoint per published layout, with the network it was made from."""
    folder = tmp_path_factory.mktemp("checkpoints")
    made = {}
    for layout, maker in MAKERS.items():
        path = str(folder / f"{layout}.pt")
        made[layout] = (path, maker(path))
    return made


@pytest.mark.parametrize("layout, target", sorted(COUNTS))
def test_layout_to_target(layout, target, checkpoints, tmp_path, capsys):
    path, source = checkpoints[layout]
    output = str(tmp_path / "models" / "out.pt")
    report = convert_checkpoint(path, target, output=output)
    printed = capsys.readouterr().out

    loaded, skipped, missing = COUNTS[(layout, target)]
    assert (report.num_loaded, report.num_skipped, report.num_missing) == (loaded, skipped, missing), report.summary()
    assert report.layout == layout
    assert f"loaded {loaded} tensors, skipped {skipped}, newly initialised {missing}" in printed
    assert not [f for f in os.listdir(tmp_path / "models") if f != "out.pt"]  # no temporary file left

    written = torch.load(output, weights_only=True)
    # published layouts predate MONAI 1.5: the file records the legacy patch merging for legacy_merging "auto"
    records = [k for k in written if is_merging_record(k)]
    legacy = layout in LEGACY_MERGING_LAYOUTS
    assert report.legacy_merging == legacy and len(records) == (4 if legacy else 0)
    assert resolve_legacy_merging("auto", output) == legacy
    assert f"wrote {loaded + len(records)} tensors to '{output}'" in printed
    assert sorted(set(written) - set(records)) == sorted(report.loaded)
    groups = {_group(k) for k in written}
    assert groups == set(LOADED_GROUPS[target][layout]), groups

    # tensors equal the source network's (1-channel input weights replicated over 4 channels for BraTS)
    reference = source.state_dict()
    for key, value in written.items():
        expected = adapt_in_channels(reference[key], value.shape[1]) if key in report.adapted else reference[key]
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=key)
    assert bool(report.adapted) == (target == "dae_brats_cls")

    # the target bundle's network takes the file as is: only what was newly initialised is missing
    architecture = infer_architecture(convert_state_dict(read_checkpoint(path)))
    network, _ = bundle_network(target, {**architecture, "legacy_merging": legacy})
    result = network.load_state_dict(written, strict=False)
    assert result.unexpected_keys == []
    # (BatchNorm fills an absent num_batches_tracked itself and does not list it as missing)
    assert sorted(result.missing_keys) == sorted(k for k in report.missing if not k.endswith("num_batches_tracked"))
    if target == "dae_pretrain":
        return
    # and its pretrained_path item (the bundle's own loader) loads every tensor of the converted file
    network, again = bundle_network(target, architecture, pretrained_path=output)
    assert isinstance(again, LoadReport) and again.layout in ("dae_bundle", "voco")
    assert sorted(again.loaded) == sorted(written) and again.num_skipped == 0 and again.legacy_merging == legacy
    assert f"--pretrained_path {output}" in printed


def test_complete_file_loads_strictly_into_dae_pretrain(checkpoints, tmp_path, capsys):
    """The authors' checkpoint as dae_pretrain's models/model.pt: evaluate/inference load it with strict=True."""
    path, source = checkpoints["dae_official"]
    bundle = tmp_path / "dae_pretrain"
    (bundle / "configs").mkdir(parents=True)
    for config in training_config_files(str(REPO / "bundles" / "dae_pretrain")):
        shutil.copy(config, bundle / "configs")
    report = convert_checkpoint(path, str(bundle), complete=True)
    printed = capsys.readouterr().out
    output = bundle / "models" / "model.pt"  # default output of a bundle without pretrained_path
    written = torch.load(output, weights_only=True)
    assert len(written) == 171 and report.num_loaded == 163  # + 4 legacy_order records of the legacy merging
    assert "4 newly initialised (seed 0)" in printed
    # no --legacy_merging: the file records it, and evaluate/inference's legacy_merging "auto" reads models/model.pt
    assert "run the 'dae_pretrain' bundle with: --feature_size 12 --stem conv\n" in printed
    assert resolve_legacy_merging("auto", str(output))
    network, _ = bundle_network("dae_pretrain", {"feature_size": FEATURE, "stem": "conv", "legacy_merging": True})
    network.load_state_dict(written, strict=True)
    network.eval(), source.eval()
    source.normalize = False  # dae_pretrain, like the authors' pretraining, skips the hidden-state LayerNorm
    x = torch.rand(1, 1, 64, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(network(x), source(x))

    # the same seed gives the same newly initialised projection head
    again = tmp_path / "again.pt"
    convert_checkpoint(path, str(bundle), output=str(again), complete=True)
    for key in report.missing:
        torch.testing.assert_close(torch.load(again, weights_only=True)[key], written[key], rtol=0, atol=0)


def test_default_output_of_a_finetuning_bundle_and_overwrite(checkpoints, tmp_path):
    path, _ = checkpoints["swin_ssl"]
    bundle = tmp_path / "dae_btcv_seg"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "train.json").write_text((REPO / "bundles/dae_btcv_seg/configs/train.json").read_text())
    convert_checkpoint(path, str(bundle))
    output = bundle / "models" / "pretrained.pt"
    assert len(torch.load(output, weights_only=True)) == 126 + 4  # + the legacy merging's records
    before = output.read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite True"):
        convert_checkpoint(checkpoints["voco"][0], str(bundle))
    assert output.read_bytes() == before
    convert_checkpoint(checkpoints["voco"][0], str(bundle), overwrite=True)
    assert len(torch.load(output, weights_only=True)) == 145 + 4


class Payload:
    """A pickled object whose unpickling would run a shell command."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class CustomWeights:
    """A custom class holding weights, as some training scripts pickle."""

    def __init__(self):
        self.weight = torch.zeros(2, 2)


@pytest.mark.parametrize("kind", ["module", "custom_class", "code"])
def test_pickled_code_is_refused(kind, tmp_path):
    checkpoint = tmp_path / f"{kind}.pt"
    marker = tmp_path / "executed"
    content = {
        "module": torch.nn.Linear(2, 2),
        "custom_class": {"model": CustomWeights()},
        "code": {"model": {"w": torch.zeros(1)}, "extra": Payload(str(marker))},
    }[kind]
    torch.save(content, checkpoint)
    output = tmp_path / "models" / "model.pt"
    with pytest.raises(RuntimeError, match=r"weights_only=True.*") as error:
        convert_checkpoint(str(checkpoint), "dae_btcv_seg", output=str(output))
    assert f"{kind}.pt" in str(error.value)
    assert not marker.exists()
    assert not output.exists() and not output.parent.exists()


def test_zip_archive_of_the_authors(checkpoints, tmp_path, capsys):
    path, _ = checkpoints["dae_official"]
    archive = tmp_path / "DAE_SSL_WEIGHTS.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(path, "DAE_SSL_WEIGHTS/ckpt_best.pth")
        z.writestr("DAE_SSL_WEIGHTS/README.txt", "weights")
    output = tmp_path / "model.pt"
    report = convert_checkpoint(str(archive), "dae_btcv_seg", output=str(output))
    assert "read 'DAE_SSL_WEIGHTS/ckpt_best.pth' from the archive" in capsys.readouterr().out
    assert report.num_loaded == 161 and report.path == str(archive)

    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as z:
        z.write(path, "a/ckpt_best.pth")
        z.write(checkpoints["monai_ssl"][0], "b/ckpt_best.pth")
    with pytest.raises(ValueError, match=r"2 checkpoint files \['a/ckpt_best.pth', 'b/ckpt_best.pth'\].*--member"):
        convert_checkpoint(str(two), "dae_btcv_seg", output=str(tmp_path / "x.pt"))
    assert not (tmp_path / "x.pt").exists()
    report = convert_checkpoint(str(two), "dae_btcv_seg", output=str(tmp_path / "b.pt"), member="b/ckpt_best.pth")
    assert report.layout == "monai_ssl"
    with pytest.raises(FileNotFoundError, match="'c/ckpt_best.pth' is not in the archive"):
        convert_checkpoint(str(two), "dae_btcv_seg", output=str(tmp_path / "c.pt"), member="c/ckpt_best.pth")


def test_wrong_requests_write_nothing(checkpoints, tmp_path):
    output = tmp_path / "model.pt"
    with pytest.raises(RuntimeError, match="feature_size"):  # forced feature size that does not fit the weights
        convert_checkpoint(checkpoints["monai_ssl"][0], "dae_btcv_seg", output=str(output), feature_size=24)
    with pytest.raises(RuntimeError, match="'stem' to 'conv'"):  # forced patch stem for conv-stem weights
        convert_checkpoint(checkpoints["dae_official"][0], "dae_btcv_seg", output=str(output), stem="patch")
    with pytest.raises(FileNotFoundError, match="bundle 'dae_mae' not found"):
        convert_checkpoint(checkpoints["monai_ssl"][0], "dae_mae", output=str(output))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        convert_checkpoint(str(tmp_path / "nope.pth"), "dae_btcv_seg", output=str(output))
    unknown = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(4, 1, 3, 3, 3)}, unknown)
    with pytest.raises(ValueError, match="resnet.pt.*unrecognised checkpoint layout"):
        convert_checkpoint(str(unknown), "dae_btcv_seg", output=str(output))
    assert sorted(os.listdir(tmp_path)) == ["resnet.pt"]


def test_infer_architecture(checkpoints):
    expected = {
        "dae_official": {"feature_size": FEATURE, "stem": "conv", "use_v2": False},
        "voco": {"feature_size": FEATURE, "stem": "patch", "use_v2": True},
        "swin_ssl": {"feature_size": FEATURE, "stem": "patch", "use_v2": False},
    }
    for layout, architecture in expected.items():
        assert infer_architecture(convert_state_dict(read_checkpoint(checkpoints[layout][0]))) == architecture
    with pytest.raises(ValueError, match="layers1.0.blocks.0.norm1"):
        infer_architecture({"encoder1.layer.conv1.conv.weight": torch.zeros(1)})


def test_command_line(checkpoints, tmp_path):
    output = tmp_path / "pretrained.pt"
    command = tool_command("convert_checkpoint", "--checkpoint", checkpoints["voco"][0], "--target", "dae_btcv_seg",
                           "--output", str(output))
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=tool_env(OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr
    assert "layout 'voco', feature_size 12, stem patch, use_v2 True, legacy patch merging" in result.stdout
    assert "loaded 145 tensors, skipped 0, newly initialised 22" in result.stdout
    assert "legacy patch merging (checkpoint layout 'voco' was trained with MONAI < 1.5)" in result.stdout
    assert f"--pretrained_path {output} --feature_size 12 --use_v2 True\n" in result.stdout
    assert len(torch.load(output, weights_only=True)) == 145 + 4  # + the legacy merging's records
