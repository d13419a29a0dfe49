"""Atomic checkpoint writes and a best-model tracker that survives a resume (monai_dae.handlers.checkpoint)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from monai_dae.handlers import AtomicDiskSaver, CheckpointSaver
from monai_dae.utils import save_atomically


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot be saved")


def test_atomic_saver_keeps_the_previous_file_when_a_write_fails(tmp_path):
    saver = AtomicDiskSaver(str(tmp_path), filename="model.pt")
    saver({"weight": torch.ones(3)}, "ignored_name.pt")
    with pytest.raises(RuntimeError, match="cannot be saved"):
        saver({"weight": torch.zeros(3), "broken": _Unpicklable()}, "ignored_name.pt")
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]  # no temporary file left behind
    torch.testing.assert_close(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], torch.ones(3))


def test_atomic_writes_get_the_permissions_of_a_plain_torch_save(tmp_path):
    save_atomically({"weight": torch.ones(3)}, str(tmp_path / "atomic.pt"))
    torch.save({"weight": torch.ones(3)}, tmp_path / "plain.pt")
    assert os.stat(tmp_path / "atomic.pt").st_mode == os.stat(tmp_path / "plain.pt").st_mode  # umask, not 0600
    assert sorted(os.listdir(tmp_path)) == ["atomic.pt", "plain.pt"]


def test_atomic_saver_removes_a_replaced_checkpoint_only_after_the_next_write(tmp_path):
    saver = AtomicDiskSaver(str(tmp_path))
    saver({"step": torch.tensor(1)}, "checkpoint_epoch=1.pt")
    saver.remove("checkpoint_epoch=1.pt")  # what ignite's Checkpoint calls before writing the next one
    assert os.listdir(tmp_path) == ["checkpoint_epoch=1.pt"]  # still there: nothing newer to resume from yet
    saver({"step": torch.tensor(2)}, "checkpoint_epoch=2.pt")
    assert os.listdir(tmp_path) == ["checkpoint_epoch=2.pt"]


def _best_model_saver(folder, network) -> CheckpointSaver:
    return CheckpointSaver(
        save_dir=str(folder),
        save_dict={"model": network},
        save_key_metric=True,
        key_metric_name="val_dice",
        key_metric_filename="model.pt",
    )


def _run(saver: CheckpointSaver, network: torch.nn.Linear, scores: list[float], weights: list[float]) -> None:
    """An evaluator-like engine, one epoch per score: the network's weight and the key metric are set, then saved."""
    engine = Engine(lambda engine, batch: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _validate(engine):
        network.weight.data.fill_(weights[engine.state.epoch - 1])
        engine.state.metrics["val_dice"] = np.float64(scores[engine.state.epoch - 1])  # as ROCAUC returns it

    saver.attach(engine)  # after _validate, as a validation handler runs after the metrics
    engine.run([0], max_epochs=len(scores))


def test_best_model_tracker_survives_a_resume_and_model_pt_stays_a_plain_state_dict(tmp_path):
    network = torch.nn.Linear(1, 1, bias=False)
    saver = _best_model_saver(tmp_path, network)
    _run(saver, network, scores=[0.5, 0.8, 0.6], weights=[1.0, 2.0, 3.0])
    best = torch.load(tmp_path / "model.pt", weights_only=True)
    assert list(best) == ["weight"] and best["weight"].item() == 2.0  # epoch 2, the best score
    torch.save({"best_model_saver": saver.state_dict()}, tmp_path / "checkpoint.pt")  # in a training checkpoint
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["best_model_saver"]
    assert [score for score, _ in state["_saved"]] == [0.8]
    os.remove(tmp_path / "checkpoint.pt")

    # a resumed run with a fresh saver: a worse first validation must not replace the best model
    resumed = _best_model_saver(tmp_path, network)
    resumed.load_state_dict(state)
    _run(resumed, network, scores=[0.7], weights=[4.0])
    assert torch.load(tmp_path / "model.pt", weights_only=True)["weight"].item() == 2.0
    _run(resumed, network, scores=[0.9], weights=[5.0])
    assert torch.load(tmp_path / "model.pt", weights_only=True)["weight"].item() == 5.0
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]

    # without the tracker state (MONAI's behaviour), the same worse validation overwrites it
    forgetful = _best_model_saver(tmp_path, network)
    _run(forgetful, network, scores=[0.1], weights=[6.0])
    assert torch.load(tmp_path / "model.pt", weights_only=True)["weight"].item() == 6.0


def test_interval_and_final_checkpoints_are_written_through_the_atomic_saver(tmp_path):
    network = torch.nn.Linear(1, 1)
    saver = CheckpointSaver(
        save_dir=str(tmp_path),
        save_dict={"model": network},
        file_prefix="checkpoint",
        save_interval=1,
        n_saved=1,
        save_final=True,
        final_filename="checkpoint_final.pt",
    )
    assert all(
        isinstance(c.save_handler, AtomicDiskSaver) for c in (saver._final_checkpoint, saver._interval_checkpoint)
    )
    engine = Engine(lambda engine, batch: None)
    saver.attach(engine)
    engine.run([0], max_epochs=3)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_final.pt", "checkpoint_model_epoch=3.pt"]
    assert saver.state_dict() == {}  # no key metric tracked
