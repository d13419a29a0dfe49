"""Tests for the DAE network (monai_dae.networks.DAESwinUNETR) and its compatibility with stock SwinUNETR."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import SwinUNETR

from monai_dae.networks import DAESwinUNETR, PretextSwinUNETR, use_conv_stem

FEATURE_SIZE = 12
# Spatial sizes must be multiples of 32. A 32^3 input fails in train and eval mode alike (InstanceNorm always uses
# input statistics, and the bottleneck of a 32^3 input is 1^3); 64 x 32 x 32 has a 2 x 1 x 1 bottleneck and costs
# a quarter of 64^3.
SPATIAL = (64, 32, 32)
EMBEDDED = tuple(s // 2 for s in SPATIAL)


def _zero_channels(embedding: torch.Tensor) -> torch.Tensor:
    """(B, C) boolean: channel c of sample b is zero at every position."""
    return (embedding == 0).flatten(2).all(dim=2)


class _Capture:
    """Forward hook registered after the network's own: sees the patch embedding as the next layers do."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.value = output.detach().clone()


class _CaptureInput:
    """Forward pre-hook: the input of a module."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.value = args[0].detach().clone()


def _patch_embedding(model: DAESwinUNETR, batch: int = 2) -> torch.Tensor:
    """The patch embedding as the network uses it (the masking hook fires on a direct call too)."""
    with torch.no_grad():
        return model.swinViT.patch_embed(torch.randn(batch, 1, *SPATIAL))


def _stock_copy(model: DAESwinUNETR, use_v2: bool = False) -> SwinUNETR:
    """A stock SwinUNETR with a 1-channel head holding the DAE network's weights (strict=True)."""
    stock = SwinUNETR(in_channels=1, out_channels=1, feature_size=FEATURE_SIZE, use_v2=use_v2)
    stock.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("projection_head.")})
    return stock.eval()


@pytest.fixture(scope="module")
def net() -> DAESwinUNETR:
    torch.manual_seed(0)
    return DAESwinUNETR(feature_size=FEATURE_SIZE, mask_ratio=0.6, projection_dim=32)


@pytest.fixture(scope="module")
def train_pass(net):
    """One training-mode forward/backward, capturing the patch embedding, the stage-1 input and the gradients."""
    net.train()
    embed = _Capture(net.swinViT.patch_embed)
    stage1 = _CaptureInput(net.swinViT.layers1[0])
    torch.manual_seed(1)
    x = torch.randn(2, 1, *SPATIAL)
    net.zero_grad(set_to_none=True)
    try:
        reconstruction, embedding = net(x, return_embedding=True)
        (reconstruction.abs().mean() + embedding.pow(2).mean()).backward()
        without_grad = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    finally:
        embed.handle.remove()
        stage1.handle.remove()
        net.zero_grad(set_to_none=True)
        net.eval()
    return {
        "reconstruction": reconstruction.detach(),
        "embedding": embedding.detach(),
        "patch_embedding": embed.value,
        "stage1_input": stage1.value,
        "without_grad": without_grad,
    }


@pytest.fixture(scope="module")
def eval_pass(net):
    """One evaluation-mode forward of the DAE network and of a stock SwinUNETR holding the same weights."""
    net.eval()
    stock = _stock_copy(net)
    capture = _Capture(net.swinViT.patch_embed)
    torch.manual_seed(2)
    x = torch.randn(1, 1, *SPATIAL)
    try:
        with torch.no_grad():
            reconstruction, embedding = net(x, return_embedding=True)
            stock_reconstruction = stock(x)
    finally:
        capture.handle.remove()
    return {
        "reconstruction": reconstruction,
        "embedding": embedding,
        "stock_reconstruction": stock_reconstruction,
        "patch_embedding": capture.value,
    }


# --------------------------------------------------------------------------------------------------------------
# Training mode: shapes, masking, gradients
# --------------------------------------------------------------------------------------------------------------


def test_train_mode_output_shapes(train_pass):
    assert train_pass["reconstruction"].shape == (2, 1, *SPATIAL)
    assert train_pass["embedding"].shape == (2, 32)  # (B, projection_dim)
    assert torch.isfinite(train_pass["reconstruction"]).all() and torch.isfinite(train_pass["embedding"]).all()


def test_masking_in_train_mode_exact_count_per_sample(train_pass):
    patch_embedding = train_pass["patch_embedding"]
    assert patch_embedding.shape == (2, FEATURE_SIZE, *EMBEDDED)
    zero = _zero_channels(patch_embedding)
    expected = round(0.6 * FEATURE_SIZE)
    assert zero.sum(dim=1).tolist() == [expected, expected]
    # exactly those channels are zero, at every position
    assert torch.all((patch_embedding == 0).sum(dim=1) == expected)
    # per-sample subsets by default
    assert not torch.equal(zero[0], zero[1])


def test_masked_embedding_feeds_stage_one(train_pass):
    # pos_drop is the identity (drop rate 0): stage 1 receives the masked embedding itself
    assert torch.equal(train_pass["stage1_input"], train_pass["patch_embedding"])


def test_backward_reaches_every_trainable_parameter(train_pass):
    assert train_pass["without_grad"] == []


# --------------------------------------------------------------------------------------------------------------
# Evaluation mode and the masking options
# --------------------------------------------------------------------------------------------------------------


def test_eval_mode_output_shapes(eval_pass):
    assert eval_pass["reconstruction"].shape == (1, 1, *SPATIAL)
    assert eval_pass["embedding"].shape == (1, 32)


def test_no_masking_in_eval_mode(eval_pass):
    assert not _zero_channels(eval_pass["patch_embedding"]).any()


def test_eval_reconstruction_equals_stock_swinunetr(eval_pass):
    """Without masking, the DAE network is exactly a stock SwinUNETR with a 1-channel head."""
    assert torch.allclose(eval_pass["reconstruction"], eval_pass["stock_reconstruction"], atol=1e-5)


def test_mask_hook_follows_training_flag(net):
    try:
        assert _zero_channels(_patch_embedding(net.train())).sum(dim=1).tolist() == [7, 7]
        assert not _zero_channels(_patch_embedding(net.eval())).any()
    finally:
        net.eval()


def test_mask_in_eval_option():
    torch.manual_seed(0)
    model = DAESwinUNETR(feature_size=FEATURE_SIZE, mask_ratio=0.5, mask_in_eval=True, mask_per_sample=False).eval()
    zero = _zero_channels(_patch_embedding(model, batch=3))
    assert zero.sum(dim=1).tolist() == [6, 6, 6]
    assert torch.all(zero == zero[0:1])  # one subset per batch with mask_per_sample=False


def test_mask_ratio_zero_disables_masking():
    model = DAESwinUNETR(feature_size=FEATURE_SIZE, mask_ratio=0.0, mask_in_eval=True).train()
    assert not _zero_channels(_patch_embedding(model)).any()


def test_default_architecture_matches_paper():
    model = DAESwinUNETR()
    assert model.swinViT.patch_embed.proj.out_channels == 48
    assert model.out.conv.conv.out_channels == 1
    assert model.embedding_transform.masking.ratio == pytest.approx(0.6)
    assert model.embedding_transform.masking.num_masked(48) == 28  # int(0.6 * 48), as the authors' code and the spec count it


def test_rejects_unknown_stem():
    with pytest.raises(ValueError):
        DAESwinUNETR(feature_size=FEATURE_SIZE, stem="vit")


# --------------------------------------------------------------------------------------------------------------
# Compatibility with stock SwinUNETR
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_v2", [False, True])
def test_backbone_loads_into_stock_swinunetr(use_v2):
    torch.manual_seed(0)
    model = DAESwinUNETR(feature_size=FEATURE_SIZE, use_v2=use_v2)
    backbone = model.backbone_state_dict()
    assert not any(k.startswith(("out.", *PretextSwinUNETR.pretext_prefixes)) for k in backbone)

    stock = SwinUNETR(in_channels=1, out_channels=14, feature_size=FEATURE_SIZE, use_v2=use_v2)
    result = stock.load_state_dict(backbone, strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(k.startswith("out.") for k in result.missing_keys)
    assert sorted(result.missing_keys) == sorted(k for k in stock.state_dict() if k.startswith("out."))

    # strict=True once the new output head is supplied: nothing else is missing or unexpected
    full = dict(backbone, **{k: v for k, v in stock.state_dict().items() if k.startswith("out.")})
    stock.load_state_dict(full, strict=True)
    for key, value in backbone.items():
        assert torch.equal(stock.state_dict()[key], value), key


def test_use_v2_forward_equals_stock_and_masks():
    torch.manual_seed(0)
    model = DAESwinUNETR(feature_size=FEATURE_SIZE, use_v2=True).eval()
    assert hasattr(model.swinViT, "layers1c")
    stock = _stock_copy(model, use_v2=True)
    x = torch.randn(1, 1, *SPATIAL)
    with torch.no_grad():
        reconstruction, embedding = model(x, return_embedding=True)
        assert torch.allclose(reconstruction, stock(x), atol=1e-5)
    assert reconstruction.shape == (1, 1, *SPATIAL) and embedding.shape == (1, 128)
    assert _zero_channels(_patch_embedding(model.train())).sum(dim=1).tolist() == [7, 7]


# --------------------------------------------------------------------------------------------------------------
# The authors' convolutional stem
# --------------------------------------------------------------------------------------------------------------


def test_conv_stem_key_names_match_authors_checkpoint():
    torch.manual_seed(0)
    model = DAESwinUNETR(feature_size=FEATURE_SIZE, stem="conv")
    stem = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("swinViT.patch_embed.")}
    # the authors' keys are encoder.patch_embed.proj.*; the loader renames encoder. -> swinViT.
    assert stem == {
        "swinViT.patch_embed.proj.conv1.conv.weight": (FEATURE_SIZE, 1, 3, 3, 3),
        "swinViT.patch_embed.proj.conv2.conv.weight": (FEATURE_SIZE, FEATURE_SIZE, 3, 3, 3),
        "swinViT.patch_embed.proj.norm1.weight": (FEATURE_SIZE,),
        "swinViT.patch_embed.proj.norm1.bias": (FEATURE_SIZE,),
        "swinViT.patch_embed.proj.norm2.weight": (FEATURE_SIZE,),
        "swinViT.patch_embed.proj.norm2.bias": (FEATURE_SIZE,),
    }
    # the rest of the network keeps the stock names
    stock_keys = set(SwinUNETR(in_channels=1, out_channels=1, feature_size=FEATURE_SIZE).state_dict())
    other = {k for k in model.state_dict() if not k.startswith(("swinViT.patch_embed.", "projection_head."))}
    assert other == stock_keys - {"swinViT.patch_embed.proj.weight", "swinViT.patch_embed.proj.bias"}


def test_conv_stem_forward_and_masking():
    torch.manual_seed(0)
    model = DAESwinUNETR(feature_size=FEATURE_SIZE, stem="conv").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, *SPATIAL)).shape == (1, 1, *SPATIAL)
    embedding = _patch_embedding(model.train())
    assert embedding.shape == (2, FEATURE_SIZE, *EMBEDDED)  # stride 2, like the patchify conv
    assert _zero_channels(embedding).sum(dim=1).tolist() == [7, 7]


def test_use_conv_stem_on_stock_network():
    stock = use_conv_stem(SwinUNETR(in_channels=1, out_channels=14, feature_size=FEATURE_SIZE))
    keys = set(stock.state_dict())
    assert "swinViT.patch_embed.proj.conv1.conv.weight" in keys and "swinViT.patch_embed.proj.weight" not in keys
    with torch.no_grad():
        assert stock.swinViT.patch_embed(torch.randn(1, 1, *SPATIAL)).shape == (1, FEATURE_SIZE, *EMBEDDED)
