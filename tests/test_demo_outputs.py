"""
What ``make demo`` leaves, checked after it ran (marker ``docs``, ``make test-docs``): every artifact it prints,
the figures of every run as readable PNG files of a useful size, and the committed copies that the docs show.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "runs" / "demo"

pytestmark = [
    pytest.mark.docs,
    pytest.mark.skipif(
        not (DEMO / "dae_brats_cls" / "models" / "model.pt").is_file(), reason="run `make demo` first (runs/demo is missing)"
    ),
]

ARTIFACTS = [
    "dae_pretrain/models/model.pt",
    "dae_btcv_seg/models/model.pt",
    "dae_brats_cls/models/model.pt",
    "dae_brats_cls/eval/predictions.csv",
]
"""Files the demo prints the path of."""

FIGURES = {
    "dae_pretrain/figures/learning_curves.png": "dae_pretrain/docs/figures/learning_curves.png",
    "dae_pretrain/previews/preview_epoch0003.png": "dae_pretrain/docs/figures/preview.png",
    "dae_btcv_seg/runs/figures/learning_curves.png": "dae_btcv_seg/docs/figures/learning_curves.png",
    "dae_btcv_seg/runs/figures/dice_per_organ.png": "dae_btcv_seg/docs/figures/dice_per_organ.png",
    "dae_btcv_seg/runs/figures/overlay.png": "dae_btcv_seg/docs/figures/overlay.png",
    "dae_brats_cls/runs/figures/learning_curves.png": "dae_brats_cls/docs/figures/learning_curves.png",
    "dae_brats_cls/runs/figures/val_roc_curve.png": "dae_brats_cls/docs/figures/roc_curve.png",
    "dae_brats_cls/runs/figures/val_confusion_matrix.png": "dae_brats_cls/docs/figures/confusion_matrix.png",
}
"""Figure the demo writes -> its committed copy under ``bundles/`` that the docs show."""


@pytest.mark.parametrize("artifact", ARTIFACTS)
def test_the_demo_leaves_what_it_prints(artifact):
    path = DEMO / artifact
    assert path.is_file() and path.stat().st_size > 0, path


@pytest.mark.parametrize("figure", sorted(FIGURES))
def test_the_demo_writes_every_figure(figure):
    with Image.open(DEMO / figure) as image:
        image.verify()
    with Image.open(DEMO / figure) as image:
        assert image.format == "PNG"
        assert min(image.size) >= 300, f"{figure}: {image.size} pixels"


@pytest.mark.parametrize("copy", sorted(FIGURES.values()))
def test_the_docs_show_a_committed_copy_of_each_figure(copy):
    path = REPO / "bundles" / copy
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= 300
    assert path.stat().st_size < 400_000, f"{copy}: keep committed figures small"
    bundle, name = copy.split("/")[0], Path(copy).name
    bundle_doc = (REPO / "bundles" / bundle / "docs" / "README.md").read_text()
    assert f"figures/{name}" in bundle_doc, f"bundles/{bundle}/docs/README.md does not show {name}"
    assert f"bundles/{copy}" in (REPO / "README.md").read_text(), f"README.md does not show {copy}"


def test_every_image_the_docs_show_exists():
    docs = [REPO / "README.md", *sorted((REPO / "bundles").glob("*/docs/README.md")), *sorted((REPO / "docs").glob("*.md"))]
    for doc in docs:
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", doc.read_text()):
            assert (doc.parent / target).is_file(), f"{doc.relative_to(REPO)} shows a missing image {target}"
