"""Progress bars: the one rule (monai_dae.progress.progress_enabled), a tool's bar, and the bundle configs' use of it."""

from __future__ import annotations

import io
import os
import sys

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser

import monai_dae.utils
from monai_dae.progress import progress_enabled

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "bundles", "{}", "configs", "{}")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_enabled(monkeypatch):
    assert monai_dae.utils.progress_enabled is progress_enabled  # one helper
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert progress_enabled() is True and progress_enabled(None) is True
    assert progress_enabled(False) is False
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a pipe or a file
    assert progress_enabled() is False
    assert progress_enabled(True) is True
    monkeypatch.setattr(sys, "stderr", None)  # pythonw, a closed stream
    assert progress_enabled() is False


def test_tool_bar_only_when_asked_or_on_a_terminal(tmp_path, capsys, monkeypatch):
    from tools.btcv_datalist import build

    for name, folder in (("img{:04d}.nii.gz", "imagesTr"), ("label{:04d}.nii.gz", "labelsTr")):
        (tmp_path / folder).mkdir()
        for case in (1, 2):
            data = np.zeros((8, 8, 8), dtype=np.float32 if folder == "imagesTr" else np.uint8)
            nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / folder / name.format(case)))
    build(str(tmp_path), num_folds=2, progress=True)
    err = capsys.readouterr().err
    assert "checking cases" in err and "2/2" in err  # a tqdm bar
    build(str(tmp_path), num_folds=2, progress=False)
    assert "checking cases" not in capsys.readouterr().err
    build(str(tmp_path), num_folds=2)  # default: capsys's stderr is not a terminal
    assert "checking cases" not in capsys.readouterr().err
    monkeypatch.setattr(sys, "stderr", _Terminal())
    build(str(tmp_path), num_folds=2)  # default on a terminal: the bar
    assert "checking cases" in sys.stderr.getvalue()


def _parser(bundle: str, files: list[str], progress_bar: bool) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([CONFIGS.format(bundle, f) for f in files])
    parser.update({"progress_bar": progress_bar, "cache_rate": 0.0, "num_workers": 0})
    for key in ("train#data", "validate#data"):
        if key in parser:
            parser[key] = []
    return parser


def _progress_bar_disabled(parser: ConfigParser, handlers: str) -> bool:
    index = next(i for i, h in enumerate(parser[handlers]) if h.get("_target_") == "ignite.handlers.ProgressBar")
    return bool(parser.get_parsed_content(f"{handlers}#{index}#_disabled_"))


TRAINING = [
    ("dae_pretrain", ["pretrain_base.json", "dae.json"], True),
    ("dae_btcv_seg", ["train.json"], True),
    ("dae_brats_cls", ["train.json"], False),
]


@pytest.mark.parametrize("bundle,files,sliding_window", TRAINING)
@pytest.mark.parametrize("progress_bar,terminal", [(True, True), (True, False), (False, True)])
def test_training_configs_pass_progress(bundle, files, sliding_window, progress_bar, terminal, monkeypatch):
    monkeypatch.setattr(sys, "stderr", _Terminal() if terminal else io.StringIO())
    expected = progress_bar and terminal
    parser = _parser(bundle, files, progress_bar)
    assert parser.get_parsed_content("show_progress") is expected
    assert parser.get_parsed_content("train#dataset").progress is expected
    assert parser.get_parsed_content("validate#dataset").progress is expected
    if sliding_window:
        assert parser.get_parsed_content("validate#inferer").progress is expected
    assert _progress_bar_disabled(parser, "train#handlers") is not expected
    # the full-read data check of `initialize` gets the same choice (on every config that calls it)
    for name in [*files, "multi_gpu_train.json"]:
        with open(CONFIGS.format(bundle, name)) as f:
            text = f.read()
        if "check_bundle_data(" in text:
            assert "progress=@show_progress" in text, name


@pytest.mark.parametrize("bundle", ["dae_pretrain", "dae_btcv_seg", "dae_brats_cls"])
@pytest.mark.parametrize("progress_bar", [True, False])
def test_inference_and_evaluate_configs_pass_progress(bundle, progress_bar, monkeypatch):
    monkeypatch.setattr(sys, "stderr", _Terminal())
    parser = _parser(bundle, ["inference.json"], progress_bar)
    if bundle == "dae_brats_cls":  # one bar over the subjects (SimpleInferer)
        assert _progress_bar_disabled(parser, "handlers") is not progress_bar
    else:  # a bar over the windows of each volume
        assert parser.get_parsed_content("inferer").progress is progress_bar
    files = ["pretrain_base.json", "dae.json"] if bundle == "dae_pretrain" else ["train.json"]
    parser = _parser(bundle, [*files, "evaluate.json"], progress_bar)  # evaluate.json inherits the key
    assert parser.get_parsed_content("validate#dataset").progress is progress_bar
    if bundle != "dae_brats_cls":
        assert parser.get_parsed_content("validate#inferer").progress is progress_bar
