"""
Pretraining at scale: the persistent memory-mapped cache (same crops as the in-memory cache, keyed by the
files and the transforms' parameters, atomic and concurrent-safe writes), the sharding of an epoch across ranks,
``resume="auto"``, a 10,000-entry data list, and the ``dae_pretrain`` bundle launched as two torchrun nodes
(two c10d rendezvous participants on this host, gloo on CPU) with the worker of one node killed mid-run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest
import torch
from monai.bundle import ConfigParser

from monai_dae.data import load_datalist
from monai_dae.data.persistent import MemoryMappedPersistentDataset, transform_hash
from monai_dae.data.phantoms import write_sample_dataset
from monai_dae.data.sampling import ModalityMixingSampler
from monai_dae.utils import CheckpointError, prepare_output_dir, resume_checkpoint

from bundle_testing import DAE_TRAIN, PRETRAIN_CONFIGS, REPO, cli_env, cli_overrides, config_arg

PERSISTENT = str(PRETRAIN_CONFIGS / "persistent_cache.json")
MULTI_GPU = str(PRETRAIN_CONFIGS / "multi_gpu_train.json")
META = str(PRETRAIN_CONFIGS / "metadata.json")


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> dict[str, str]:
    """1 CT and 1 brain case (4 modality files) for training and for validation: 5 + 5 volumes."""
    return write_sample_dataset(
        str(tmp_path_factory.mktemp("sample")), num_ct=2, num_brain=2, ct_shape=(64, 56, 40),
        brain_shape=(48, 48, 40), num_validation=1,
    )


def _parser(sample: dict[str, str], root: Path, *overlays: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([*DAE_TRAIN, *overlays])
    parser.update({"dataset_dir": sample["root"], "bundle_root": str(root), "roi_size": [64, 64, 64], "num_workers": 0,
                   "progress_bar": False, **overrides})
    return parser


def test_persistent_cache_gives_the_in_memory_cache_crops_and_memory_maps_its_files(sample, tmp_path):
    memory = _parser(sample, tmp_path).get_parsed_content("train#dataset")
    persistent = _parser(sample, tmp_path, PERSISTENT).get_parsed_content("train#dataset")
    assert type(persistent).__name__ == "SeededPersistentDataset" and len(persistent) == len(memory) == 5
    for epoch in (0, 3):
        memory.set_epoch(epoch)
        persistent.set_epoch(epoch)
        for index in range(len(memory)):
            expected, first, again = memory[index], persistent[index], persistent[index]  # compute, then read back
            for crop_expected, crop_first, crop_again in zip(expected, first, again):
                torch.testing.assert_close(crop_first["image"], crop_expected["image"])
                torch.testing.assert_close(crop_again["image"], crop_expected["image"])
                assert int(crop_again["modality_label"]) == int(crop_expected["modality_label"])
    files = sorted((tmp_path / "cache").glob("*.pt"))
    assert len(files) == 5 and not list((tmp_path / "cache").glob(".*.tmp"))  # one per entry, no temporaries left
    item = persistent._cachecheck(persistent.data[0])
    mapped = {m.path for m in psutil.Process().memory_maps()}
    assert str(persistent.cache_path(persistent.data[0])) in mapped  # read back memory-mapped, not loaded
    assert item["image"].shape[1:] == (64, 64, 64)  # padded to the crop size before caching


def test_cache_key_follows_the_transform_parameters_and_the_files(sample, tmp_path):
    def cached_transform_hash(**overrides) -> str:
        dataset = _parser(sample, tmp_path, PERSISTENT, **overrides).get_parsed_content("train#dataset")
        return dataset.transform_hash

    assert cached_transform_hash() == cached_transform_hash()  # stable: no object addresses in the key
    assert cached_transform_hash(ct_window=[-175, 250]) != cached_transform_hash()
    assert cached_transform_hash(roi_size=[96, 96, 96]) != cached_transform_hash()
    assert transform_hash([]) == transform_hash([])

    dataset = _parser(sample, tmp_path, PERSISTENT).get_parsed_content("train#dataset")
    entry = dataset.data[0]
    before = dataset.cache_path(entry)
    dataset[0]
    image = nib.load(entry["image"])
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[::-1].copy(), image.affine), entry["image"])  # replaced in place
    os.utime(entry["image"], ns=(time.time_ns(), time.time_ns() + 10**9))
    assert dataset.cache_path(entry) != before


def test_unreadable_cache_file_is_named_and_computed_again(sample, tmp_path):
    dataset = _parser(sample, tmp_path, PERSISTENT).get_parsed_content("validate#dataset")
    assert isinstance(dataset, MemoryMappedPersistentDataset)
    expected = dataset[0]["image"].clone()
    path = dataset.cache_path(dataset.data[0])
    path.write_bytes(b"truncated by a full disk")
    with pytest.warns(UserWarning, match=re.escape(str(path))):
        again = dataset[0]["image"]
    torch.testing.assert_close(again, expected)
    assert torch.load(path, weights_only=False)["image"].shape == expected.shape  # rewritten whole


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_every_rank_gets_a_disjoint_equal_share_of_each_epoch_seeded_per_epoch(world_size):
    modalities = ["ct"] * 6000 + ["t1"] * 1000 + ["t1ce"] * 1000 + ["t2"] * 1000 + ["flair"] * 1001
    batch_size = 2

    def shards(epoch: int, seed: int = 0) -> list[list[int]]:
        samplers = [ModalityMixingSampler(modalities, batch_size, seed=seed, num_replicas=world_size, rank=rank)
                    for rank in range(world_size)]
        for sampler in samplers:
            sampler.set_epoch(epoch)
        return [list(sampler) for sampler in samplers]

    epoch0 = shards(0)
    per_rank = len(modalities) // (batch_size * world_size) * batch_size
    assert [len(shard) for shard in epoch0] == [per_rank] * world_size  # samples counted per rank
    seen = Counter(index for shard in epoch0 for index in shard)
    assert max(seen.values()) == 1  # disjoint: no sample on two ranks, none twice
    assert len(seen) == per_rank * world_size >= len(modalities) - batch_size * world_size  # only the tail is dropped
    assert shards(0) == epoch0  # seeded
    epoch1 = shards(1)
    assert all(a != b for a, b in zip(epoch1, epoch0))  # a new shuffle every epoch, on every rank
    assert max(Counter(index for shard in epoch1 for index in shard).values()) == 1
    assert shards(0, seed=1) != epoch0


def test_resume_auto_starts_a_new_run_then_continues_it(tmp_path):
    checkpoints = tmp_path / "runs" / "checkpoints"
    prepare_output_dir(str(tmp_path / "runs"), resume="auto", checkpoint_dir=str(checkpoints))
    assert resume_checkpoint(str(checkpoints), "auto") == ""  # first start: nothing to resume
    checkpoints.mkdir(parents=True)
    torch.save({"trainer": {"epoch": 1, "iteration": 3}}, checkpoints / "checkpoint_epoch=1.pt")
    prepare_output_dir(str(tmp_path / "runs"), resume="auto", checkpoint_dir=str(checkpoints))
    assert resume_checkpoint(str(checkpoints), "auto") == str(checkpoints / "checkpoint_epoch=1.pt")
    assert resume_checkpoint(str(checkpoints), False) == ""
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path / "empty"))):
        resume_checkpoint(str(tmp_path / "empty"), True)
    with pytest.raises(ValueError, match="resume must be true, false or 'auto'"):
        resume_checkpoint(str(checkpoints), "sometimes")


def _ten_thousand_entry_datalist(tmp_path: Path, missing: int | None = None) -> tuple[str, list[str]]:
    header = tmp_path / "header.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), header)
    content = header.read_bytes()
    names = [f"case_{i:05d}_{'ct' if i % 2 else 't1'}.nii" for i in range(10_000)]
    for position, name in enumerate(names):
        if position != missing:
            (tmp_path / name).write_bytes(content)
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": [{"image": n} for n in names]}))
    return str(path), names


def test_a_ten_thousand_entry_datalist_is_read_and_a_missing_file_named(tmp_path):
    datalist, names = _ten_thousand_entry_datalist(tmp_path, missing=7_777)
    with pytest.raises(FileNotFoundError, match=re.escape(names[7_777])):
        load_datalist(datalist, str(tmp_path))
    (tmp_path / names[7_777]).write_bytes((tmp_path / names[0]).read_bytes())
    entries = load_datalist(datalist, str(tmp_path))
    assert len(entries) == 10_000 and Counter(e["modality"] for e in entries) == {"ct": 5000, "t1": 5000}
    sampler = ModalityMixingSampler([e["modality"] for e in entries], batch_size=2, num_replicas=8, rank=7)
    assert len(sampler) == len(list(sampler)) == 1250


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_command(sample: dict[str, str], root: Path) -> list[str]:
    """One node of the run, started with the launcher the docs give for SLURM and Kubernetes."""
    return [
        "bash", "tools/cluster/torchrun_node.sh",
        "--config_file", config_arg(*DAE_TRAIN, PERSISTENT, MULTI_GPU), "--meta_file", META,
        *cli_overrides(
            dataset_dir=sample["root"], bundle_root=str(root), output_dir=str(root / "runs"), roi_size=[64, 64, 64],
            feature_size=12, batch_size=2, num_workers=0, max_epochs=3, sw_batch_size=1, progress_bar=False,
            preview=False, resume="auto",
        ),
    ]


@pytest.mark.slow
def test_two_torchrun_nodes_train_resume_after_a_worker_is_killed(sample, tmp_path):
    """Two rendezvous participants (``tools/cluster/torchrun_node.sh``: ``--nnodes 2 --nproc_per_node 1``, c10d);
    node 1's worker is killed after the first checkpoint; torchrun restarts both nodes' workers, which continue
    from the newest checkpoint (``resume="auto"``) and finish the run."""
    env = {**cli_env(), "NNODES": "2", "NPROC_PER_NODE": "1", "RDZV_ENDPOINT": f"127.0.0.1:{_free_port()}",
           "RDZV_ID": "dae-two-nodes", "PYTHON": sys.executable}
    logs = [tmp_path / f"node{rank}.log" for rank in (0, 1)]
    nodes = [subprocess.Popen(_node_command(sample, tmp_path), cwd=REPO, env=env, stdout=log.open("w"),
                              stderr=subprocess.STDOUT) for log in logs]
    checkpoints = tmp_path / "runs" / "checkpoints"
    try:
        deadline = time.monotonic() + 600
        while not list(checkpoints.glob("checkpoint_epoch=*.pt")) and time.monotonic() < deadline:
            assert all(node.poll() is None for node in nodes), logs[0].read_text()[-3000:] + logs[1].read_text()[-3000:]
            time.sleep(0.2)
        (worker,) = psutil.Process(nodes[1].pid).children()
        os.kill(worker.pid, signal.SIGKILL)
        codes = [node.wait(timeout=600) for node in nodes]
    finally:  # a failed or hung run leaves no worker behind
        for node in nodes:
            if node.poll() is None:
                for process in [*psutil.Process(node.pid).children(recursive=True), psutil.Process(node.pid)]:
                    process.kill()
    text = [log.read_text() for log in logs]
    assert codes == [0, 0], text[0][-3000:] + text[1][-3000:]
    assert "exitcode: -9" in text[1]  # the kill reached node 1's torchrun agent, which restarted the worker group
    # the restarted rank 0 (on either node: c10d assigns the ranks) continued from the checkpoint
    assert re.search(r"Restored all variables from \S+checkpoint_epoch=[12]\.pt", text[0] + text[1])
    final = torch.load(checkpoints / "checkpoint_final.pt", weights_only=True)
    # 5 training volumes, 2 ranks of batch 2: one global batch of 4 per epoch, so 1 iteration per rank and epoch
    assert final["trainer"]["iteration"] == 3 and final["trainer"]["max_epochs"] == 3
    assert (tmp_path / "models" / "model.pt").is_file()
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 10  # 5 training + 5 validation entries, written once
    assert not list((tmp_path / "cache").glob(".*.tmp"))
