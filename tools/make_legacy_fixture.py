"""
Write ``tests/data/legacy_merging_fixture.pt``: Swin UNETR features computed by MONAI < 1.5, whose 3D patch
merging concatenates the 2x2x2 neighbours in the order that ``monai_dae.networks.LegacyPatchMerging``
reproduces. ``tests/test_legacy_merging.py`` loads these weights with the current MONAI and checks that its
features equal these references to 1e-5 (and that MONAI's current merging does not).

Run it only under MONAI 1.4 (it asserts ``monai.__version__ < 1.5``), in a throwaway copy of MONAI that reuses
the project's PyTorch and NumPy; ``monai_dae`` is not imported (it needs MONAI 1.6)::

    .venv/bin/python -m pip install --no-deps --target /tmp/monai14 monai==1.4.0
    PYTHONPATH=/tmp/monai14 .venv/bin/python -m tools.make_legacy_fixture

What it builds, with a fixed seed: a MONAI 1.4 ``SwinUNETR`` (feature size 12, 1 input channel, depths
(2, 2, 2, 2), heads (3, 6, 12, 24), window 7) whose parameters are all re-drawn (0.1 * randn, norm weights
1 + 0.1 * randn) so that no stage output is dominated by the initialisation, and a copy of it whose patchify
stem is replaced by the DAE authors' convolutional stem (the ``UnetBasicBlock`` of
``monai_dae.networks.use_conv_stem``, replicated here) with re-drawn stem weights. Both share the Swin
transformer weights, which ``torch.save`` stores once. Each runs ``swinViT`` (with the hidden-state
normalisation SwinUNETR applies) in evaluation mode on one seeded 1 x 1 x 64^3 input.

The file holds (``torch.load(..., weights_only=True)``):

- ``input``: the input image (1, 1, 64, 64, 64);
- ``layouts``: for ``"swin_ssl"`` (patchify stem) and ``"dae_official"`` (conv stem):
  ``checkpoint``, the weights in that published layout (Swin-SSL ``model_swinvit.pt``:
  ``{"state_dict": {"module.patch_embed...", "module.layers1.0...", mlp.fc1/fc2}}``; the DAE authors'
  ``ckpt_best.pth``: ``{"model": {"encoder.patch_embed.proj.conv1.conv.weight", "encoder.layers1.0.0...",
  mlp.fc1/fc2, "encoder.mask_token", "encoder.norm.*"}, "epoch": 0}``, Swin transformer only),
  ``omitted``, ``{published name: current SwinUNETR name}`` of the ``relative_position_index`` buffers left
  out of ``checkpoint``, ``stem`` (``"patch"`` / ``"conv"``) and ``hidden_states``, the references of stages
  1 to 4 (``swinViT(x, normalize=True)[1:5]``);
- ``stages`` (1, 2, 3, 4), ``feature_size``, ``seed``, ``monai_version``, ``torch_version``.

The ``relative_position_index`` buffers (constant int64 tables, 7.5 MB at this size) are left out to keep the
file small; the test re-adds them from a freshly built network, under the ``omitted`` names, before writing
a checkpoint file in the published layout.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import fire
import torch

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "legacy_merging_fixture.pt"
FEATURE_SIZE = 12
SPATIAL = (64, 64, 64)
OMITTED_SUFFIX = ".relative_position_index"


def _redraw(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Re-draw every parameter: 1 + 0.1 * randn for normalisation weights, 0.1 * randn for the others."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            noise = 0.1 * torch.randn(parameter.shape, generator=generator)
            is_norm_weight = re.search(r"norm\d*\.weight$", name) is not None
            parameter.copy_(1.0 + noise if is_norm_weight else noise)


def _conv_stem(proj: torch.nn.Conv3d) -> torch.nn.Module:
    """The DAE authors' stem, built as ``monai_dae.networks.use_conv_stem`` builds it."""
    from monai.networks.blocks import UnetBasicBlock

    return UnetBasicBlock(
        spatial_dims=3,
        in_channels=proj.in_channels,
        out_channels=proj.out_channels,
        kernel_size=3,
        stride=2,
        norm_name=("instance", {"affine": True}),
        act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
    )


def _fc(key: str) -> str:
    """MONAI >= 0.9 MLP names -> the ``fc1``/``fc2`` names of the published checkpoints."""
    return key.replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2.")


def _swin_ssl_name(key: str) -> str:
    """``swinViT.layers1.0.x`` -> Swin-SSL ``module.layers1.0.x``."""
    return "module." + _fc(key[len("swinViT.") :])


def _dae_official_name(key: str) -> str:
    """``swinViT.layers1.0.x`` -> the DAE authors' ``encoder.layers1.0.0.x`` (MONAI 0.8 names)."""
    return "encoder." + _fc(re.sub(r"^layers(\d)\.0\.", r"layers\1.0.0.", key[len("swinViT.") :]))


def _published(state: dict[str, torch.Tensor], rename) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The ``swinViT`` tensors under published names, and the omitted buffers' published -> current names."""
    kept, omitted = {}, {}
    for key, value in state.items():
        if not key.startswith("swinViT."):
            continue
        if key.endswith(OMITTED_SUFFIX):
            omitted[rename(key)] = key
        else:
            kept[rename(key)] = value
    return kept, omitted


def make_legacy_fixture(output: str = str(DEFAULT_OUTPUT), seed: int = 0) -> str:
    """
    Build the reference networks under MONAI < 1.5 and write the fixture (see the module docstring).

    Args:
        output: the fixture file to write.
        seed: seed of the weights and the input.

    Returns:
        the path written.
    """
    import monai
    from monai.networks.nets import SwinUNETR

    version = tuple(int(p) for p in re.findall(r"\d+", monai.__version__)[:2])
    assert version < (1, 5), f"run under MONAI < 1.5 (found {monai.__version__}): see the module docstring."

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    # img_size: a required (deprecated, unused) argument in MONAI 1.4
    patch_net = SwinUNETR(img_size=SPATIAL, in_channels=1, out_channels=1, feature_size=FEATURE_SIZE)
    _redraw(patch_net, generator)
    conv_net = copy.deepcopy(patch_net)
    conv_net.swinViT.patch_embed.proj = _conv_stem(conv_net.swinViT.patch_embed.proj)
    _redraw(conv_net.swinViT.patch_embed.proj, generator)
    image = torch.randn((1, 1, *SPATIAL), generator=generator)

    stages = (1, 2, 3, 4)
    references = {}
    for name, net in (("swin_ssl", patch_net), ("dae_official", conv_net)):
        net.eval()
        with torch.no_grad():
            hidden = net.swinViT(image, normalize=True)
        references[name] = [hidden[s].clone() for s in stages]

    patch_state = patch_net.state_dict()
    # the conv-stem network's Swin transformer is a copy of the patchify one: store those tensors once
    conv_state = conv_net.state_dict()
    for key, value in conv_state.items():
        if not key.startswith("swinViT.patch_embed."):
            torch.testing.assert_close(value, patch_state[key], rtol=0, atol=0)
            conv_state[key] = patch_state[key]

    swin_ssl, swin_ssl_omitted = _published(patch_state, _swin_ssl_name)
    dae, dae_omitted = _published(conv_state, _dae_official_name)
    dae["encoder.mask_token"] = torch.zeros(1, 1, FEATURE_SIZE)
    dae["encoder.norm.weight"] = torch.ones(16 * FEATURE_SIZE)
    dae["encoder.norm.bias"] = torch.zeros(16 * FEATURE_SIZE)
    fixture = {
        "monai_version": str(monai.__version__),
        "torch_version": str(torch.__version__),
        "seed": seed,
        "feature_size": FEATURE_SIZE,
        "stages": list(stages),
        "input": image,
        "layouts": {
            "swin_ssl": {
                "stem": "patch",
                "checkpoint": {"state_dict": swin_ssl},
                "omitted": swin_ssl_omitted,
                "hidden_states": references["swin_ssl"],
            },
            "dae_official": {
                "stem": "conv",
                "checkpoint": {"model": dae, "epoch": 0},
                "omitted": dae_omitted,
                "hidden_states": references["dae_official"],
            },
        },
    }
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    torch.save(fixture, output)
    size = os.path.getsize(output) / 2**20
    print(f"MONAI {monai.__version__}, torch {torch.__version__}, seed {seed}: wrote '{output}' ({size:.2f} MiB).")
    for name, hidden in references.items():
        shapes = ", ".join(f"stage {s} {tuple(h.shape)}" for s, h in zip(stages, hidden))
        print(f"  {name}: {shapes}")
    return output


if __name__ == "__main__":
    fire.Fire(make_legacy_fixture, serialize=lambda path: None)
