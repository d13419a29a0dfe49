"""
Tests for the cross-modal contrastive loss, the total DAE loss and their DDP gathering (monai_dae.losses), and
the plain list gather of the classification report (monai_dae.utils.all_gather_list) in the same two processes.
"""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from monai_dae.losses import CrossModalContrastiveLoss, DAELoss, gather_with_grad
from monai_dae.utils import all_gather_list, destroy_process_group

C = 1.0 / math.sqrt(2.0)


def _tiny_features() -> torch.Tensor:
    """Four 2-D features, deliberately not unit-norm: directions (1,0), (0,1), (-1,0), (1,1)/sqrt(2)."""
    return torch.tensor([[2.0, 0.0], [0.0, 5.0], [-3.0, 0.0], [1.0, 1.0]])


def _random_batch(n: int = 16, dim: int = 8, classes: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n, dim, generator=generator)
    labels = torch.arange(n) % classes
    return features, labels


# --------------------------------------------------------------------------------------------------------------
# CrossModalContrastiveLoss: value
# --------------------------------------------------------------------------------------------------------------


def test_cmcl_hand_computed_one_positive_each():
    # cosine similarities of the four directions: s01=0, s02=-1, s03=c, s12=0, s13=c, s23=-c (c = 1/sqrt(2)).
    # Labels [0, 0, 1, 1], temperature 0.5 (logits = 2 * cosine). Each anchor has one positive:
    #   l_i = -2 s_ip + log(sum_{a != i} exp(2 s_ia))
    c = C
    l0 = -2 * 0.0 + math.log(math.exp(0.0) + math.exp(-2.0) + math.exp(2 * c))
    l1 = -2 * 0.0 + math.log(math.exp(0.0) + math.exp(0.0) + math.exp(2 * c))
    l2 = -2 * (-c) + math.log(math.exp(-2.0) + math.exp(0.0) + math.exp(-2 * c))
    l3 = -2 * (-c) + math.log(math.exp(2 * c) + math.exp(2 * c) + math.exp(-2 * c))
    expected = (l0 + l1 + l2 + l3) / 4
    loss = CrossModalContrastiveLoss(temperature=0.5)(_tiny_features(), torch.tensor([0, 0, 1, 1]))
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_cmcl_hand_computed_several_positives_and_excluded_anchor():
    # labels [0, 0, 0, 1]: anchors 0, 1, 2 have two positives each; anchor 3 has no positive and is left out.
    #   l_i = log(sum_{a != i} exp(2 s_ia)) - 1/2 * sum_{p in P(i)} 2 s_ip
    c = C
    l0 = math.log(math.exp(0.0) + math.exp(-2.0) + math.exp(2 * c)) - 0.5 * (2 * 0.0 + 2 * -1.0)
    l1 = math.log(math.exp(0.0) + math.exp(0.0) + math.exp(2 * c)) - 0.5 * (2 * 0.0 + 2 * 0.0)
    l2 = math.log(math.exp(-2.0) + math.exp(0.0) + math.exp(-2 * c)) - 0.5 * (2 * -1.0 + 2 * 0.0)
    expected = (l0 + l1 + l2) / 3
    loss = CrossModalContrastiveLoss(temperature=0.5)(_tiny_features(), torch.tensor([0, 0, 0, 1]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_cmcl_default_temperature_and_scale_invariance():
    loss_fn = CrossModalContrastiveLoss()
    assert loss_fn.temperature == pytest.approx(0.07)
    features, labels = _random_batch()
    scale = torch.rand(features.shape[0], 1) * 10 + 0.1  # per-row scaling: features are L2-normalised
    assert loss_fn(features * scale, labels).item() == pytest.approx(loss_fn(features, labels).item(), rel=1e-5)


def test_cmcl_lower_when_modalities_cluster():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    centres = torch.eye(3)[labels]
    clustered = centres + 0.01 * torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    shuffled = centres[torch.tensor([0, 2, 4, 1, 3, 5])]
    loss_fn = CrossModalContrastiveLoss(temperature=0.1)
    assert loss_fn(clustered, labels) < loss_fn(shuffled, labels)


def test_cmcl_invariant_to_batch_permutation():
    features, labels = _random_batch(n=12, classes=3)
    loss_fn = CrossModalContrastiveLoss()
    reference = loss_fn(features, labels)
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):
        order = torch.randperm(12, generator=generator)
        assert loss_fn(features[order], labels[order]).item() == pytest.approx(reference.item(), rel=1e-6)
    # relabelling the modalities (a different integer for the same grouping) changes nothing either
    assert loss_fn(features, (labels + 1) * 7).item() == pytest.approx(reference.item(), rel=1e-6)


def test_cmcl_gradient_permutes_with_batch():
    features, labels = _random_batch(n=8, classes=2)
    order = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    f1 = features.clone().requires_grad_()
    f2 = features[order].clone().requires_grad_()
    CrossModalContrastiveLoss()(f1, labels).backward()
    CrossModalContrastiveLoss()(f2, labels[order]).backward()
    assert torch.allclose(f1.grad[order], f2.grad, atol=1e-6)


@pytest.mark.parametrize("labels", [[2, 2, 2, 2], [0, 1, 2, 3], [4]])
def test_cmcl_defined_when_no_anchor_has_positive_and_negative(labels):
    # documented: the loss is 0 with a zero gradient that keeps the graph connected
    features = torch.randn(len(labels), 6, requires_grad=True)
    loss = CrossModalContrastiveLoss()(features, torch.tensor(labels))
    assert loss.item() == 0.0 and torch.isfinite(loss)
    assert loss.requires_grad
    loss.backward()
    assert features.grad is not None
    assert torch.equal(features.grad, torch.zeros_like(features))


def test_cmcl_single_modality_keeps_parameters_in_graph():
    layer = nn.Linear(4, 3)
    loss = CrossModalContrastiveLoss()(layer(torch.randn(3, 4)), torch.zeros(3, dtype=torch.long))
    loss.backward()
    assert layer.weight.grad is not None and torch.all(layer.weight.grad == 0)


def test_cmcl_rejects_bad_shapes_and_temperature():
    loss_fn = CrossModalContrastiveLoss()
    with pytest.raises(ValueError):
        loss_fn(torch.randn(4, 2, 2), torch.zeros(4))
    with pytest.raises(ValueError):
        loss_fn(torch.randn(4, 2), torch.zeros(3))
    with pytest.raises(ValueError):
        CrossModalContrastiveLoss(temperature=0.0)


def test_cmcl_accepts_column_labels():
    features, labels = _random_batch(n=6, classes=2)
    loss_fn = CrossModalContrastiveLoss()
    assert loss_fn(features, labels[:, None]).item() == pytest.approx(loss_fn(features, labels).item())


# --------------------------------------------------------------------------------------------------------------
# CrossModalContrastiveLoss: numerics
# --------------------------------------------------------------------------------------------------------------


def _cpu_autocast_supports(dtype: torch.dtype) -> bool:
    try:
        with torch.autocast("cpu", dtype=dtype):
            out = nn.Linear(2, 2)(torch.randn(1, 2))
        return out.dtype == dtype
    except Exception:  # older torch: cpu autocast is bf16 only
        return False


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cmcl_under_autocast_is_finite_and_close_to_fp32(dtype):
    torch.manual_seed(0)
    head = nn.Linear(32, 16)
    x = torch.randn(16, 32)
    labels = torch.arange(16) % 4
    loss_fn = CrossModalContrastiveLoss()
    reference = loss_fn(head(x), labels)

    if _cpu_autocast_supports(dtype):
        with torch.autocast("cpu", dtype=dtype):
            features = head(x)
            assert features.dtype == dtype
            loss = loss_fn(features, labels)
    else:  # fall back to half-precision inputs without autocast
        features = head(x).to(dtype)
        loss = loss_fn(features, labels)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(reference.item(), rel=0.02, abs=0.02)
    loss.backward()
    assert torch.isfinite(head.weight.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cmcl_half_precision_inputs_with_tiny_temperature(dtype):
    features, labels = _random_batch(n=16, dim=16, classes=4)
    loss_fn = CrossModalContrastiveLoss(temperature=0.01)  # logits up to 100: exp overflows fp16 if computed there
    reference = loss_fn(features, labels)
    half = features.to(dtype).requires_grad_()
    loss = loss_fn(half, labels)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(reference.item(), rel=0.05)
    loss.backward()
    assert half.grad.dtype == dtype and torch.isfinite(half.grad.float()).all()


@pytest.mark.parametrize("dtype, scale", [(torch.float16, 1e4), (torch.bfloat16, 1e30), (torch.float32, 1e15), (torch.float32, 1e-20)])
def test_cmcl_extreme_magnitude_features_do_not_overflow(dtype, scale):
    features, labels = _random_batch(n=8, dim=8, classes=2)
    features = features / features.norm(dim=1, keepdim=True)
    reference = CrossModalContrastiveLoss()(features, labels)
    big = (features * scale).to(dtype).requires_grad_()
    assert torch.isfinite(big).all()
    loss = CrossModalContrastiveLoss()(big, labels)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(reference.item(), rel=0.05)
    loss.backward()
    assert torch.isfinite(big.grad.float()).all()


# --------------------------------------------------------------------------------------------------------------
# DAELoss
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [0.05, 0.0, 1.0])
def test_dae_loss_total_and_components(weight):
    torch.manual_seed(0)
    reconstruction = torch.randn(4, 1, 8, 8, 8, requires_grad=True)
    clean = torch.randn(4, 1, 8, 8, 8)
    embedding = torch.randn(4, 16, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 1])
    loss_fn = DAELoss(cmcl_weight=weight, temperature=0.1)
    total = loss_fn((reconstruction, embedding), (clean, labels))

    l1 = (reconstruction - clean).abs().mean()
    cmcl = CrossModalContrastiveLoss(temperature=0.1)(embedding, labels)
    assert total.item() == pytest.approx((l1 + weight * cmcl).item(), rel=1e-6)
    assert set(loss_fn.components) >= {"loss_l1", "loss_cmcl"}
    assert loss_fn.components["loss_l1"].item() == pytest.approx(l1.item(), rel=1e-6)
    assert loss_fn.components["loss_cmcl"].item() == pytest.approx(cmcl.item(), rel=1e-6)
    assert not loss_fn.components["loss_l1"].requires_grad
    total.backward()
    assert reconstruction.grad is not None and embedding.grad is not None


def test_dae_loss_defaults():
    loss_fn = DAELoss()
    assert loss_fn.cmcl_weight == pytest.approx(0.05)
    assert loss_fn.contrastive.temperature == pytest.approx(0.07)


def test_dae_loss_bf16_reconstruction():
    reconstruction = torch.randn(2, 1, 4, 4, 4).bfloat16()
    clean = torch.randn(2, 1, 4, 4, 4)
    total = DAELoss()((reconstruction, torch.randn(2, 8).bfloat16()), (clean, torch.tensor([0, 0])))
    assert total.dtype == torch.float32 and torch.isfinite(total)


# --------------------------------------------------------------------------------------------------------------
# Two-process gloo DDP
# --------------------------------------------------------------------------------------------------------------

WORLD_SIZE = 2
PER_RANK = 3


def _global_problem():
    """The global batch (features, labels), a small head and its inputs, identical on every process."""
    generator = torch.Generator().manual_seed(1234)
    features = torch.randn(WORLD_SIZE * PER_RANK, 5, generator=generator)
    labels = torch.tensor([0, 1, 2, 0, 1, 0])  # rank 0 holds [0, 1, 2], rank 1 [0, 1, 0]: negatives across ranks
    inputs = torch.randn(WORLD_SIZE * PER_RANK, 6, generator=generator)
    torch.manual_seed(99)
    head = nn.Linear(6, 4)
    return features, labels, inputs, head


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        torch.set_num_threads(1)
        features, labels, inputs, head = _global_problem()
        local = slice(rank * PER_RANK, (rank + 1) * PER_RANK)

        # gather_with_grad: rank-ordered concatenation, of features and of integer labels (no autograd)
        local_features = features[local].clone().requires_grad_()
        gathered = gather_with_grad(local_features)
        gathered_labels = gather_with_grad(labels[local])
        # all_gather_list: Python rows, a different number on each rank (none on rank 1)
        rows = all_gather_list([(f"subject{rank}_{i}", i, [0.5, 0.5]) for i in range(2 - 2 * rank)])

        # the loss on local features equals the single-process loss on the global batch
        loss = CrossModalContrastiveLoss()(local_features, labels[local])
        loss.backward()

        # a real DDP model: the averaged parameter gradient equals the single-process gradient
        model = nn.parallel.DistributedDataParallel(head)
        ddp_loss = CrossModalContrastiveLoss()(model(inputs[local]), labels[local])
        ddp_loss.backward()

        torch.save(
            {
                "gathered": gathered.detach(),
                "gathered_labels": gathered_labels,
                "labels_require_grad": gathered_labels.requires_grad,
                "rows": rows,
                "loss": loss.detach(),
                "feature_grad": local_features.grad,
                "ddp_loss": ddp_loss.detach(),
                "weight_grad": model.module.weight.grad,
                "bias_grad": model.module.bias.grad,
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out_dir = str(tmp_path_factory.mktemp("ddp"))
    mp.spawn(_ddp_worker, args=(_free_port(), out_dir), nprocs=WORLD_SIZE, join=True)
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(WORLD_SIZE)]


def test_ddp_gather_with_grad_concatenates_in_rank_order(ddp_results):
    features, _, _, _ = _global_problem()
    for result in ddp_results:
        assert torch.equal(result["gathered"], features)


def test_ddp_gather_with_grad_gathers_integer_labels(ddp_results):
    _, labels, _, _ = _global_problem()
    for result in ddp_results:
        assert torch.equal(result["gathered_labels"], labels) and not result["labels_require_grad"]


def test_ddp_all_gather_list_concatenates_uneven_lists_in_rank_order(ddp_results):
    for result in ddp_results:
        assert result["rows"] == [("subject0_0", 0, [0.5, 0.5]), ("subject0_1", 1, [0.5, 0.5])]


def test_all_gather_list_is_identity_without_distributed():
    rows = [("a", 1, [0.2, 0.8])]
    assert all_gather_list(rows) is rows


def test_ddp_gathered_loss_equals_single_process_loss(ddp_results):
    features, labels, _, _ = _global_problem()
    single = CrossModalContrastiveLoss()(features, labels)
    for result in ddp_results:
        assert result["loss"].item() == pytest.approx(single.item(), rel=1e-6)
    # without gathering, each rank would see a different, smaller batch
    rank0_alone = CrossModalContrastiveLoss()(features[:PER_RANK], labels[:PER_RANK])
    assert rank0_alone.item() != pytest.approx(single.item(), rel=1e-3)


def test_ddp_gradients_flow_back_to_each_rank(ddp_results):
    features, labels, _, _ = _global_problem()
    full = features.clone().requires_grad_()
    CrossModalContrastiveLoss()(full, labels).backward()
    for rank, result in enumerate(ddp_results):
        grad = result["feature_grad"]
        assert grad is not None and torch.count_nonzero(grad) > 0
        # every rank computes the same global loss; the backward sums their gradients, so the local gradient is
        # world_size x the single-process one, which DDP's gradient averaging divides back (next test)
        expected = WORLD_SIZE * full.grad[rank * PER_RANK : (rank + 1) * PER_RANK]
        assert torch.allclose(grad, expected, atol=1e-6, rtol=1e-5)


def test_ddp_parameter_gradients_equal_single_process(ddp_results):
    _, labels, inputs, head = _global_problem()
    single = CrossModalContrastiveLoss()(head(inputs), labels)
    single.backward()
    for result in ddp_results:
        assert result["ddp_loss"].item() == pytest.approx(single.item(), rel=1e-6)
        assert torch.allclose(result["weight_grad"], head.weight.grad, atol=1e-6, rtol=1e-5)
        assert torch.allclose(result["bias_grad"], head.bias.grad, atol=1e-6, rtol=1e-5)


def _exit_after_backward_worker(rank: int, port: int) -> None:
    """A two-rank DDP step followed at once by the end of the process: the shape of a finished training run."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        torch.set_num_threads(1)
        model = nn.parallel.DistributedDataParallel(nn.Linear(6, 4))
        model(torch.randn(PER_RANK, 6)).sum().backward()
    finally:
        destroy_process_group()


@pytest.mark.extended
def test_ddp_processes_exit_cleanly_right_after_backward():
    # Without the barrier in destroy_process_group, 11 of 57 such runs aborted at exit (SIGABRT); 20 clean runs
    # in a row would then happen by chance about once in 60.
    for _ in range(20):
        mp.spawn(_exit_after_backward_worker, args=(_free_port(),), nprocs=WORLD_SIZE, join=True)


def test_destroy_process_group_without_group_does_nothing():
    assert not dist.is_initialized()
    destroy_process_group()
    assert not dist.is_initialized()


def test_gather_with_grad_is_identity_without_distributed():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x
