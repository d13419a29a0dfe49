"""Tests of the run figures (monai_dae.figures) and of the handlers that draw them during training and evaluation."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from PIL import Image

from monai_dae import figures
from monai_dae.handlers import LearningCurvesHandler, SegmentationFiguresHandler, track_artifacts, track_hyper_parameters
from monai_dae.handlers.classification import ClassificationReport

ORGANS = [
    "spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
    "inferior vena cava", "portal and splenic veins", "pancreas", "right adrenal gland", "left adrenal gland",
]


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()  # a complete, decodable file
        return image.size


def _visible_axes(figure) -> list:
    return [ax for ax in figure.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


# --------------------------------------------------------------------------------------------------------------
# Plotting functions
# --------------------------------------------------------------------------------------------------------------


def test_learning_curves_one_subplot_per_quantity(tmp_path):
    curves = {
        "loss": {"train": [(2, 0.5), (1, 1.0), (3, 0.25)]},
        "loss_l1": {"train": [(1, 0.8), (2, 0.4), (3, 0.2)]},
        "loss_cmcl": {"train": [(1, 4.0), (2, 2.0), (3, 1.0)]},
        "val_l1": {"validation": [(1, 0.3), (3, 0.1)]},
    }
    figure = figures.learning_curves_figure(curves, "run")
    axes = _visible_axes(figure)
    assert [ax.get_title() for ax in axes] == list(curves)
    (line,) = axes[0].get_lines()
    assert line.get_xdata().tolist() == [1, 2, 3] and line.get_ydata().tolist() == [1.0, 0.5, 0.25]  # sorted by epoch
    assert all(ax.get_xlabel() == "epoch" for ax in axes)
    assert axes[3].get_legend().get_texts()[0].get_text() == "validation"
    path = figures.plot_learning_curves(curves, str(tmp_path / "sub" / "curves.png"))
    assert path == str(tmp_path / "sub" / "curves.png")
    assert _png_size(path) == (3 * 400, 2 * 300)  # 3 columns of 4 in, 2 rows of 3 in, dpi 100
    assert not [name for name in os.listdir(tmp_path / "sub") if name.startswith(".")]  # no temporary left
    with pytest.raises(ValueError, match="at least one curve"):
        figures.learning_curves_figure({})


def test_reconstruction_preview_titles_every_panel_and_plane(tmp_path):
    rng = np.random.default_rng(0)
    samples = [[rng.random((12, 10, 8), dtype=np.float32) for _ in range(3)] for _ in range(3)]
    panels = ["clean", "disrupted", "reconstructed"]
    figure = figures.reconstruction_preview_figure(samples, panels, ["CT", "T1", "FLAIR"])
    axes = _visible_axes(figure)
    assert len(axes) == 3 * 3 * 3  # samples x panels x planes
    titles = [ax.get_title() for ax in axes]
    assert titles[:4] == ["CT · clean · axial", "CT · clean · coronal", "CT · clean · sagittal", "CT · disrupted · axial"]
    assert titles[-1] == "FLAIR · reconstructed · sagittal"
    assert axes[0].title.get_color() == figures.MODALITY_COLOURS["ct"]
    # the axial panel shows the mid axial plane, rotated for display
    np.testing.assert_array_equal(axes[0].get_images()[0].get_array(), np.rot90(samples[0][0][:, :, 4]))
    # a panel with its own display range (a class map)
    figure = figures.reconstruction_preview_figure([samples[0]], panels, display_ranges={"reconstructed": (0, 4)})
    assert _visible_axes(figure)[0].get_title() == "sample 0 · clean · axial"
    assert _visible_axes(figure)[6].get_images()[0].get_clim() == (0.0, 4.0)
    path = figures.plot_reconstruction_preview(samples, panels, str(tmp_path / "p.png"), ["CT", "T1", "FLAIR"])
    assert _png_size(path) == (9 * 260, 3 * 260)
    with pytest.raises(ValueError, match="2 volumes for 3 panels"):
        figures.reconstruction_preview_figure([samples[0][:2]], panels)


def test_dice_bars_heights_mean_and_missing_organs(tmp_path):
    values = np.linspace(0.1, 0.9, 13)
    values[3] = np.nan  # gallbladder absent from label and prediction
    figure = figures.dice_bar_figure(dict(zip(ORGANS, values)))
    (ax,) = figure.axes
    bars = ax.patches
    assert len(bars) == 13
    np.testing.assert_allclose([bar.get_height() for bar in bars], np.nan_to_num(values))
    assert [bar.get_facecolor()[:3] for bar in bars][0] == pytest.approx((0xE6 / 255, 0x19 / 255, 0x4B / 255))
    (mean_line,) = ax.get_lines()
    assert mean_line.get_ydata()[0] == pytest.approx(np.nanmean(values))
    assert ax.get_legend().get_texts()[0].get_text() == f"mean {np.nanmean(values):.3f}"
    assert [t.get_text() for t in ax.get_xticklabels()] == ORGANS
    assert "n/a" in [t.get_text() for t in ax.texts]
    path = figures.plot_dice_bars(list(values), str(tmp_path / "dice.png"), organs=ORGANS)
    width, height = _png_size(path)
    assert height == 400 and width >= 600
    with pytest.raises(ValueError, match="13 Dice values need as many organ names"):
        figures.dice_bar_figure(list(values), ORGANS[:3])


def test_segmentation_overlay_label_left_prediction_right(tmp_path):
    label = np.zeros((20, 16, 12), np.int64)
    label[4:10, 4:10, 3:8] = 1
    label[12:18, 6:12, 4:9] = 6
    prediction = label.copy()
    prediction[prediction == 6] = 7  # liver predicted as stomach
    image = np.random.default_rng(0).random(label.shape)
    figure = figures.segmentation_overlay_figure(image, label, prediction, ORGANS, "case 1")
    axes = _visible_axes(figure)
    assert [ax.get_title() for ax in axes] == [
        "label · axial", "prediction · axial", "label · coronal", "prediction · coronal",
        "label · sagittal", "prediction · sagittal",
    ]
    assert all(len(ax.get_images()) == 2 for ax in axes)  # grey image + organ overlay
    (legend,) = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == ["spleen", "liver", "stomach"]
    # the planes cross the centre of the labelled voxels, not the middle of the volume
    centre = np.argwhere(label > 0).mean(axis=0).round().astype(int)
    np.testing.assert_array_equal(axes[0].get_images()[0].get_array(), np.rot90(image[:, :, centre[2]]))
    assert _png_size(figures.plot_segmentation_overlay(image, label, prediction, ORGANS, str(tmp_path / "o.png"))) == (640, 960)
    with pytest.raises(ValueError, match="differ in shape"):
        figures.segmentation_overlay_figure(image, label[:-1], prediction, ORGANS)


def _legend_auc(ax) -> list[float]:
    return [float(re.search(r"AUC = ([0-9.]+|nan)", t.get_text()).group(1)) for t in ax.get_legend().get_texts() if "AUC" in t.get_text()]


def test_roc_curve_auc_in_legend_is_monai_and_sklearn_value(tmp_path):
    from monai.metrics import compute_roc_auc
    from sklearn.metrics import roc_auc_score, roc_curve

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 40)
    scores = np.clip(0.3 * labels + rng.random(40) * 0.7, 0, 1).round(1)  # ties included
    probabilities = np.stack([1 - scores, scores], axis=1)
    figure = figures.roc_curve_figure(labels, probabilities, ["HGG", "LGG"])
    (ax,) = figure.axes
    (auc,) = _legend_auc(ax)
    expected = float(compute_roc_auc(torch.as_tensor(scores), torch.as_tensor(labels)))
    assert auc == pytest.approx(expected, abs=5e-4) and auc == pytest.approx(roc_auc_score(labels, scores), abs=5e-4)
    assert "LGG vs HGG" in ax.get_legend().get_texts()[0].get_text()
    curve = ax.get_lines()[0]
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(curve.get_xdata(), fpr)
    np.testing.assert_allclose(curve.get_ydata(), tpr)
    assert _png_size(figures.plot_roc_curve(labels, probabilities, ["HGG", "LGG"], str(tmp_path / "roc.png"))) == (500, 500)
    # three classes: one-vs-rest curve per class
    three = rng.dirichlet(np.ones(3), size=30)
    labels3 = rng.integers(0, 3, 30)
    aucs = _legend_auc(figures.roc_curve_figure(labels3, three, ["a", "b", "c"]).axes[0])
    assert aucs == pytest.approx([roc_auc_score(labels3 == k, three[:, k]) for k in range(3)], abs=5e-4)
    with pytest.raises(ValueError, match="expected \\(40, 3\\)"):
        figures.roc_curve_figure(labels, probabilities, ["a", "b", "c"])


def test_confusion_matrix_counts_and_class_names(tmp_path):
    matrix = [[5, 2], [1, 7]]
    figure = figures.confusion_matrix_figure(matrix, ["HGG", "LGG"])
    ax = _visible_axes(figure)[0]
    assert [t.get_text() for t in ax.texts] == ["5", "2", "1", "7"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["HGG", "LGG"] == [t.get_text() for t in ax.get_yticklabels()]
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
    assert "15 subjects" in ax.get_title()
    assert _png_size(figures.plot_confusion_matrix(matrix, ["HGG", "LGG"], str(tmp_path / "cm.png"))) == (440, 440)
    with pytest.raises(ValueError, match="for 3 classes"):
        figures.confusion_matrix_figure(matrix, ["a", "b", "c"])


def test_benchmark_ratios_bars_and_machine_title(tmp_path):
    from tools.benchmarks.run import machine_title, write_figure

    rows = [
        {"section": "train_step", "name": "baseline", "ratio": 1.0, "reference": "baseline"},
        {"section": "train_step", "name": "ours_best", "ratio": 2.5, "reference": "baseline"},
        {"section": "flops", "name": "ours", "ratio": None, "reference": ""},
        {"section": "inference", "name": "bf16", "ratio": 1.8, "reference": "fp32"},
    ]
    machine = {"date": "2026-12-03T12:00:00", "cpu_model": "Test CPU", "cpu_cores": 2, "torch_threads": 2, "gpu": "none",
               "torch": "2.x", "monai": "1.x", "load_average_start": [1.0], "load_average_end": [1.5]}
    title = machine_title(machine, torch.device("cpu"))
    figure = figures.benchmark_ratios_figure(rows, title)
    (ax,) = figure.axes
    assert [bar.get_width() for bar in ax.patches] == [1.0, 2.5, 1.8]  # rows without a ratio are left out
    labels = sorted(ax.get_yticklabels(), key=lambda t: -t.get_position()[1])  # top to bottom: the table's order
    assert [t.get_text() for t in labels] == ["train_step: baseline", "train_step: ours_best", "inference: bf16"]
    assert "Test CPU" in ax.get_title() and "device cpu" in ax.get_title()
    path = write_figure(rows, title, str(tmp_path / "bench.png"))
    assert path == str(tmp_path / "bench.png") and _png_size(path)[0] == 1100
    assert write_figure([rows[2]], title, str(tmp_path / "none.png")) is None
    with pytest.raises(ValueError, match="no benchmark row has a ratio"):
        figures.benchmark_ratios_figure([rows[2]], title)


# --------------------------------------------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------------------------------------------


def _trainer_and_validator(losses: list[dict[str, float]], val_metrics: list[dict[str, float]]):
    """A toy trainer (one iteration per epoch, outputs ``losses[epoch - 1]``) validating every epoch."""
    validator = Engine(lambda engine, batch: None)

    @validator.on(Events.EPOCH_COMPLETED)
    def _metrics(engine):
        engine.state.metrics.update(val_metrics[trainer.state.epoch - 1])

    trainer = Engine(lambda engine, batch: {k: torch.tensor(v) for k, v in losses[engine.state.epoch - 1].items()})
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: validator.run([0], max_epochs=1))
    return trainer, validator


def test_learning_curves_handler_draws_every_epoch_and_resumes(tmp_path):
    losses = [{"loss": 1.0 / e, "loss_l1": 0.5 / e, "loss_cmcl": 2.0 / e} for e in (1, 2, 3)]
    val = [{"val_l1": 0.3 / e, "val_dice_spleen": 0.1 * e, "val_dice_liver": 0.2 * e} for e in (1, 2, 3)]
    trainer, validator = _trainer_and_validator(losses, val)
    handler = LearningCurvesHandler(str(tmp_path / "figures"), validator, groups={"Dice per organ": "val_dice_"})
    handler.attach(trainer)
    sizes = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: sizes.append(os.path.isfile(handler.path)))
    trainer.run([0], max_epochs=2)
    assert sizes == [True, True]  # written at every epoch end, so an interrupted run has it
    curves = handler.curves()
    assert list(curves) == ["loss", "loss_cmcl", "loss_l1", "val_l1", "Dice per organ"]
    assert curves["loss"] == {"train": [(1, 1.0), (2, 0.5)]}
    assert curves["Dice per organ"] == {"spleen": [(1, 0.1), (2, 0.2)], "liver": [(1, 0.2), (2, 0.4)]}
    assert handler.written == [str(tmp_path / "figures" / "learning_curves.png")]
    assert _png_size(handler.path) == (3 * 400, 2 * 300)

    # a resumed run (trainer state at epoch 2) reads the curves of epochs 1-2 back and adds epoch 3
    trainer, validator = _trainer_and_validator(losses, val)
    resumed = LearningCurvesHandler(str(tmp_path / "figures"), validator, groups={"Dice per organ": "val_dice_"})
    resumed.attach(trainer)
    trainer.state.epoch, trainer.state.max_epochs = 2, 3
    trainer.state.epoch_length, trainer.state.iteration = 1, 2
    trainer.run([0], max_epochs=3)
    assert resumed.curves()["loss"] == {"train": [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]}
    saved = json.loads((tmp_path / "figures" / "learning_curves.json").read_text())
    assert sorted(saved["validation"]["val_l1"]) == ["1", "2", "3"]


def test_learning_curves_prefer_the_epoch_metrics_of_the_loss_terms(tmp_path):
    trainer = Engine(lambda engine, batch: {"loss": torch.tensor(9.0)})
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(epoch_loss=1.5, epoch_loss_ce=0.5))
    handler = LearningCurvesHandler(str(tmp_path))
    handler.attach(trainer)
    trainer.run([0, 1], max_epochs=1)
    # the reduced epoch metrics (EpochLossTermsHandler, the key metric) replace this rank's own means
    assert handler.curves() == {"loss": {"train": [(1, 1.5)]}, "loss_ce": {"train": [(1, 0.5)]}}


def _one_hot(classes: np.ndarray, num: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.as_tensor(classes), num).permute(3, 0, 1, 2).float()


def test_segmentation_figures_handler_writes_last_and_best(tmp_path):
    label = np.zeros((16, 16, 8), np.int64)
    label[2:8, 2:8, 2:6], label[9:14, 4:12, 3:7] = 1, 6
    image = torch.rand(1, *label.shape)
    scores = iter([0.5, 0.3])
    evaluator = Engine(lambda engine, batch: [{"image": image, "label": _one_hot(label, 14), "pred": _one_hot(label, 14)}])

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _metrics(engine):  # as MONAI's evaluator: per-organ Dice metrics and the best key metric's epoch
        engine.state.metrics.update({f"val_dice_{organ.replace(' ', '_')}": 0.05 * k for k, organ in enumerate(ORGANS)})
        score = next(scores)
        if score > getattr(engine.state, "best_metric", -1):
            engine.state.best_metric, engine.state.best_metric_epoch = score, engine.state.epoch

    handler = SegmentationFiguresHandler(str(tmp_path), ORGANS, log_dir=str(tmp_path / "tb"))
    handler.attach(evaluator)
    evaluator.run([0, 1], max_epochs=1)  # epoch 1, best so far
    names = ["dice_per_organ.png", "overlay.png", "dice_per_organ_best.png", "overlay_best.png"]
    assert handler.written == [str(tmp_path / n) for n in names]
    assert handler.dice(evaluator.state.metrics) == {organ: pytest.approx(0.05 * k) for k, organ in enumerate(ORGANS)}
    best = (tmp_path / "overlay_best.png").read_bytes()
    evaluator.run([0, 1], max_epochs=2)  # epoch 2, worse: the last figures change, the best ones stay
    assert (tmp_path / "overlay_best.png").read_bytes() == best
    assert (tmp_path / "overlay.png").read_bytes() != best  # its title names the epoch
    assert _png_size(tmp_path / "overlay.png") == (640, 960)
    assert _png_size(tmp_path / "dice_per_organ.png")[1] == 400


def test_classification_report_draws_roc_and_confusion_matrix(tmp_path):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = [0, 1] * 10
    logits = torch.as_tensor(np.stack([np.zeros(20), np.asarray(labels) + rng.normal(0, 0.8, 20)], axis=1)).float()
    report = ClassificationReport(str(tmp_path / "out"), ["HGG", "LGG"], prefix="val_", figures_dir=str(tmp_path / "figures"))
    report.rows = [(f"s{i}", label, torch.softmax(logits[i], 0).tolist()) for i, label in enumerate(labels)]
    report.write()
    assert sorted(os.listdir(tmp_path / "figures")) == ["val_confusion_matrix.png", "val_roc_curve.png"]
    assert _png_size(tmp_path / "figures" / "val_roc_curve.png") == (500, 500)
    assert _png_size(tmp_path / "figures" / "val_confusion_matrix.png") == (440, 440)
    assert report.metrics["auc"] == pytest.approx(roc_auc_score(labels, logits[:, 1]), abs=1e-6)
    assert sum(map(sum, report.metrics["confusion_matrix"])) == 20
    # without figures: none; by default: next to the CSV files
    plain = ClassificationReport(str(tmp_path / "plain"), ["HGG", "LGG"], figures=False)
    plain.rows = report.rows
    plain.write()
    assert not [n for n in os.listdir(tmp_path / "plain") if n.endswith(".png")]
    beside = ClassificationReport(str(tmp_path / "beside"), ["HGG", "LGG"])
    beside.rows = report.rows
    beside.write()
    assert {"roc_curve.png", "confusion_matrix.png", "predictions.csv"} <= set(os.listdir(tmp_path / "beside"))


def test_figures_reach_mlflow_as_artifacts(tmp_path):
    """The figures folder given to track_hyper_parameters is uploaded when the run completes (SQLite store)."""
    import mlflow
    from monai.handlers import MLFlowHandler, StatsHandler

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    losses, val = [{"loss": 1.0}], [{"val_auc": 0.75}]
    trainer, validator = _trainer_and_validator(losses, val)
    figures_dir = str(tmp_path / "figures")
    tracker = MLFlowHandler(tracking_uri=uri, experiment_name="figures", close_on_complete=True, iteration_log=False)
    handlers = [LearningCurvesHandler(figures_dir, validator), tracker]
    assert track_hyper_parameters(handlers, {"seed": 0}, artifacts=[figures_dir]) == 1
    assert track_artifacts(handlers, figures_dir) == 1 and tracker.artifacts == (figures_dir,)  # added once
    assert track_artifacts([StatsHandler()], figures_dir) == 0
    for handler in handlers:
        handler.attach(trainer)
    trainer.run([0], max_epochs=1)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("figures").experiment_id])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"learning_curves.png", "learning_curves.json"}


def test_a_figure_that_cannot_be_drawn_never_ends_the_run(tmp_path, caplog, monkeypatch):
    import monai_dae.figures as module

    monkeypatch.setattr(module, "learning_curves_figure", lambda *a, **k: 1 / 0)
    trainer = Engine(lambda engine, batch: {"loss": torch.tensor(1.0)})
    handler = LearningCurvesHandler(str(tmp_path))
    handler.attach(trainer)
    trainer.run([0], max_epochs=2)
    assert trainer.state.epoch == 2 and not os.listdir(tmp_path)
    assert "could not draw the learning curves: ZeroDivisionError" in caplog.text
