"""Tests for the DAE disruptions, local masking and modality handling (monai_dae.transforms)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import RandSimulateLowResolution

from monai_dae.transforms import (
    DEFAULT_MODALITIES,
    LocalMasking,
    ModalityLabeld,
    NormalizeByModalityd,
    RandAdditiveGaussianNoise,
    RandAdditiveGaussianNoised,
    RandAdditiveGaussianNoiseD,
    RandDAEDisruption,
    RandDAEDisruptiond,
    RandDAEDisruptionD,
    RandLowResolution,
    RandLowResolutiond,
    RandLowResolutionD,
    simulate_low_resolution,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _masked_channels(out: torch.Tensor) -> torch.Tensor:
    """(B, C) boolean: channel c of sample b is zero at every spatial position."""
    return (out == 0).flatten(2).all(dim=2)


def _embedding(batch: int = 4, channels: int = 10, size: int = 3, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """A (B, C, size^3) tensor with no zero entry, so that zeros come from the masking only."""
    torch.manual_seed(0)
    return (torch.rand(batch, channels, size, size, size) + 1.0).to(device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------------------------
# LocalMasking
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio, channels", [(0.6, 10), (0.6, 48), (0.4, 48), (0.25, 12), (0.5, 7)])
@pytest.mark.parametrize("per_sample", [True, False])
def test_local_masking_exact_count_per_sample_and_position(ratio, channels, per_sample):
    x = _embedding(batch=5, channels=channels)
    out = LocalMasking(ratio, per_sample=per_sample).set_random_state(1)(x)
    expected = int(ratio * channels)
    assert out.shape == x.shape
    # exactly int(ratio * C) zero channels at every spatial position of every sample
    assert torch.all((out == 0).sum(dim=1) == expected)
    # whole channels are masked (same subset at every position), the others pass through unscaled
    masked = _masked_channels(out)
    assert torch.all(masked.sum(dim=1) == expected)
    keep = (~masked)[:, :, None, None, None]
    assert torch.equal(out * keep, x * keep)


def test_local_masking_per_sample_subsets_differ():
    x = _embedding(batch=8, channels=48)
    masking = LocalMasking(0.6, per_sample=True).set_random_state(0)
    masked = _masked_channels(masking(x))
    subsets = {tuple(row.tolist()) for row in masked}
    assert len(subsets) > 1, "per_sample=True drew the same channel subset for every sample"
    # fresh subsets on every call
    masked_again = _masked_channels(masking(x))
    assert not torch.equal(masked, masked_again)


def test_local_masking_one_subset_per_batch():
    x = _embedding(batch=8, channels=48)
    masked = _masked_channels(LocalMasking(0.6, per_sample=False).set_random_state(0)(x))
    assert torch.all(masked == masked[0:1])
    assert int(masked[0].sum()) == 28  # int(0.6 * 48), as the authors count it


def test_local_masking_seeded_reproducibility():
    x = _embedding(batch=4, channels=48)
    first = LocalMasking(0.6).set_random_state(123)
    second = LocalMasking(0.6).set_random_state(123)
    for _ in range(3):
        assert torch.equal(first(x), second(x))
    other = LocalMasking(0.6).set_random_state(124)
    assert not torch.equal(LocalMasking(0.6).set_random_state(123)(x), other(x))


def test_local_masking_randomize_false_reuses_mask():
    x = _embedding(batch=3, channels=12)
    masking = LocalMasking(0.5).set_random_state(5)
    first = masking(x)
    assert torch.equal(masking(x, randomize=False), first)
    with pytest.raises(RuntimeError):
        masking(_embedding(batch=2, channels=12), randomize=False)


def test_local_masking_ratio_zero_is_noop():
    x = _embedding()
    out = LocalMasking(0.0)(x)
    assert torch.equal(out, x)
    # a ratio that rounds to zero channels is a no-op as well
    assert torch.equal(LocalMasking(0.04)(x), x)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_local_masking_rejects_bad_ratio(ratio):
    with pytest.raises(ValueError):
        LocalMasking(ratio)


def test_local_masking_rejects_unbatched_input():
    with pytest.raises(ValueError):
        LocalMasking(0.6)(torch.ones(4, 4))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_local_masking_preserves_device_and_dtype(device, dtype):
    x = _embedding(batch=2, channels=10, dtype=dtype, device=device)
    out = LocalMasking(0.6).set_random_state(0)(x)
    assert out.dtype == dtype
    assert out.device == x.device
    assert torch.all((out == 0).sum(dim=1) == 6)


def test_local_masking_2d_and_4d_spatial():
    x2d = torch.rand(3, 10, 4, 4) + 1
    assert torch.all((LocalMasking(0.6)(x2d) == 0).sum(dim=1) == 6)
    x1d = torch.rand(3, 10, 4) + 1
    assert torch.all((LocalMasking(0.3)(x1d) == 0).sum(dim=1) == 3)


# --------------------------------------------------------------------------------------------------------------
# RandAdditiveGaussianNoise
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variance", [0.1, 0.5])
def test_noise_variance_and_zero_mean(variance):
    x = torch.full((1, 64, 64, 64), 3.0)
    out = RandAdditiveGaussianNoise(prob=1.0, variance=variance).set_random_state(0)(x)
    noise = (out - x).double()
    assert abs(noise.var().item() - variance) < 0.05 * variance
    assert abs(noise.mean().item()) < 0.005
    # it is the variance, not the standard deviation
    assert abs(noise.std().item() - math.sqrt(variance)) < 0.03 * math.sqrt(variance)


def test_noise_default_variance_is_paper_value():
    transform = RandAdditiveGaussianNoise()
    assert transform.variance == pytest.approx(0.1)
    assert transform.prob == 1.0
    x = torch.zeros(1, 64, 64, 64)
    noise = transform.set_random_state(3)(x)
    assert abs(noise.var().item() - 0.1) < 0.005


def test_noise_mean_parameter():
    x = torch.zeros(1, 32, 32, 32)
    out = RandAdditiveGaussianNoise(variance=0.1, mean=2.0).set_random_state(0)(x)
    assert abs(out.mean().item() - 2.0) < 0.01


def test_noise_rejects_negative_variance():
    with pytest.raises(ValueError):
        RandAdditiveGaussianNoise(variance=-1.0)


def test_noise_batched_independent_per_sample():
    x = torch.zeros(4, 1, 24, 24, 24)
    out = RandAdditiveGaussianNoise(variance=0.1, batched=True).set_random_state(0)(x)
    assert out.shape == x.shape
    flat = out.flatten(1)
    for i in range(4):
        assert abs(flat[i].var().item() - 0.1) < 0.01
        for j in range(i + 1, 4):
            assert not torch.equal(flat[i], flat[j])
            correlation = torch.corrcoef(torch.stack([flat[i], flat[j]]))[0, 1].item()
            assert abs(correlation) < 0.05


def test_noise_batched_per_sample_probability():
    x = torch.zeros(32, 1, 4, 4, 4)
    out = RandAdditiveGaussianNoise(prob=0.5, batched=True).set_random_state(0)(x)
    changed = (out != x).flatten(1).any(dim=1)
    unchanged = (out == x).flatten(1).all(dim=1)
    # every sample is either fully disrupted or left untouched, and both happen
    assert torch.all(changed ^ unchanged)
    assert 0 < int(changed.sum()) < 32


def test_noise_prob_zero_is_noop():
    x = torch.randn(1, 16, 16, 16)
    assert torch.equal(RandAdditiveGaussianNoise(prob=0.0)(x), x)
    xb = torch.randn(3, 1, 8, 8, 8)
    assert torch.equal(RandAdditiveGaussianNoise(prob=0.0, batched=True)(xb), xb)


def test_noise_seeded_reproducibility():
    x = torch.zeros(1, 16, 16, 16)
    a = RandAdditiveGaussianNoise().set_random_state(42)
    b = RandAdditiveGaussianNoise().set_random_state(42)
    first_a, first_b = a(x), b(x)
    assert torch.equal(first_a, first_b)
    assert torch.equal(a(x), b(x))
    # successive draws differ, other seeds differ
    assert not torch.equal(a(x), first_a)
    assert not torch.equal(RandAdditiveGaussianNoise().set_random_state(43)(x), first_a)
    # randomize=False replays the last draw
    assert torch.equal(a(x, randomize=False), a(x, randomize=False))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_noise_preserves_device_and_dtype(device, dtype):
    x = torch.zeros(2, 1, 8, 8, 8, dtype=dtype, device=device)
    out = RandAdditiveGaussianNoise(batched=True).set_random_state(0)(x)
    assert out.dtype == dtype and out.device == x.device and out.shape == x.shape
    assert torch.isfinite(out.float()).all() and (out != 0).any()


def test_noise_keeps_metatensor_metadata():
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0]))
    img = MetaTensor(torch.zeros(1, 8, 8, 8), affine=affine, meta={"filename_or_obj": "case.nii.gz"})
    out = RandAdditiveGaussianNoise().set_random_state(0)(img)
    assert isinstance(out, MetaTensor)
    assert out.meta["filename_or_obj"] == "case.nii.gz"
    assert torch.equal(out.affine, img.affine)


def test_noise_accepts_numpy():
    out = RandAdditiveGaussianNoise().set_random_state(0)(np.zeros((1, 8, 8, 8), np.float32))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 8, 8, 8)


# --------------------------------------------------------------------------------------------------------------
# RandLowResolution / simulate_low_resolution
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["trilinear", "nearest", "area"])
@pytest.mark.parametrize("shape", [(32, 32, 32), (24, 32, 20)])
def test_low_resolution_shape_preserved(mode, shape):
    x = torch.randn(2, 1, *shape)
    out = simulate_low_resolution(x, 4, downsample_mode=mode, upsample_mode=mode if mode != "area" else "nearest")
    assert out.shape == x.shape and out.dtype == x.dtype


def test_low_resolution_block_constant_volume_unchanged_with_nearest():
    torch.manual_seed(0)
    low = torch.randn(2, 1, 8, 6, 5)
    x = low.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3).repeat_interleave(4, dim=4)
    out = simulate_low_resolution(x, 4, downsample_mode="nearest", upsample_mode="nearest")
    assert torch.equal(out, x)
    transform = RandLowResolution(prob=1.0, factor=4, downsample_mode="nearest", upsample_mode="nearest")
    assert torch.equal(transform(x[0]), x[0])


def test_low_resolution_not_identity_on_random_volume():
    x = torch.randn(1, 1, 32, 32, 32)
    out = simulate_low_resolution(x, 4, "nearest", "nearest")
    assert not torch.allclose(out, x)
    # nearest/nearest gives 4^3 constant blocks
    blocks = out[0, 0].reshape(8, 4, 8, 4, 8, 4)
    assert torch.all(blocks == blocks[:, :1, :, :1, :, :1])


def _high_frequency_energy(x: torch.Tensor, cutoff: int) -> float:
    """Energy of the FFT coefficients with any |frequency index| above ``cutoff`` (for an N^3 volume)."""
    spectrum = torch.fft.fftn(x.double(), dim=(-3, -2, -1)).abs() ** 2
    n = x.shape[-1]
    freq = torch.fft.fftfreq(n, d=1.0 / n).abs()
    high = (freq[:, None, None] > cutoff) | (freq[None, :, None] > cutoff) | (freq[None, None, :] > cutoff)
    return float(spectrum[..., high].sum())


@pytest.mark.parametrize("modes", [("trilinear", "trilinear"), ("nearest", "nearest"), ("area", "trilinear")])
def test_low_resolution_reduces_high_frequency_energy(modes):
    torch.manual_seed(0)
    x = torch.randn(1, 1, 32, 32, 32)
    out = simulate_low_resolution(x, 4, *modes)
    # the Nyquist frequency of the 8^3 low-resolution grid is index 4 of the 32-point FFT
    # (white noise has ~98% of its energy there; nearest/nearest keeps sharp block edges, hence the margin)
    before, after = _high_frequency_energy(x, 4), _high_frequency_energy(out, 4)
    fraction_before = before / _high_frequency_energy(x, -1)
    fraction_after = after / _high_frequency_energy(out, -1)
    assert fraction_before > 0.9
    assert fraction_after < 0.5 * fraction_before
    assert after < 0.5 * before


def test_low_resolution_matches_monai_on_one_sample():
    torch.manual_seed(0)
    x = torch.randn(1, 32, 32, 32)
    for down, up in [("trilinear", "trilinear"), ("nearest", "nearest"), ("nearest", "trilinear")]:
        ours = RandLowResolution(prob=1.0, factor=4, downsample_mode=down, upsample_mode=up)(x)
        monai_t = RandSimulateLowResolution(prob=1.0, downsample_mode=down, upsample_mode=up, zoom_range=(0.25, 0.25))
        theirs = monai_t(x)
        assert torch.allclose(ours, torch.as_tensor(theirs), atol=1e-6), (down, up)


def test_low_resolution_batched_per_sample_probability():
    torch.manual_seed(0)
    x = torch.randn(32, 1, 16, 16, 16)
    transform = RandLowResolution(prob=0.5, factor=4, batched=True).set_random_state(0)
    out = transform(x)
    unchanged = (out == x).flatten(1).all(dim=1)
    assert 0 < int(unchanged.sum()) < 32
    # the disrupted samples are exactly the low-resolution versions of their inputs
    expected = simulate_low_resolution(x[~unchanged], 4)
    assert torch.allclose(out[~unchanged], expected, atol=1e-6)
    # decisions are redrawn on every call
    decisions = [tuple(((transform(x) == x).flatten(1).all(dim=1)).tolist()) for _ in range(3)]
    assert len(set(decisions)) > 1


def test_low_resolution_prob_zero_is_noop_and_bad_factor():
    x = torch.randn(2, 1, 16, 16, 16)
    assert torch.equal(RandLowResolution(prob=0.0, batched=True)(x), x)
    with pytest.raises(ValueError):
        RandLowResolution(factor=0.5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_low_resolution_preserves_device_and_dtype(device, dtype):
    x = torch.randn(2, 1, 16, 16, 16).to(device=device, dtype=dtype)
    out = RandLowResolution(batched=True)(x)
    assert out.dtype == dtype and out.device == x.device and out.shape == x.shape


# --------------------------------------------------------------------------------------------------------------
# RandDAEDisruption and the dictionary wrappers
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batched", [False, True])
def test_dae_disruption_is_noise_then_low_resolution(batched):
    """With the paper's trilinear modes the two steps run in turn (nearest modes: see test_fidelity.py)."""
    torch.manual_seed(0)
    x = torch.randn(2, 1, 16, 16, 16) if batched else torch.randn(1, 16, 16, 16)
    linear = {"downsample_mode": "trilinear", "upsample_mode": "trilinear"}
    combined = RandDAEDisruption(noise_variance=0.1, downsample_factor=4, batched=batched, **linear).set_random_state(7)(x)

    # the same draws, by hand: both disruptions share one random state, noise first
    state = np.random.RandomState(7)
    noise = RandAdditiveGaussianNoise(variance=0.1, batched=batched)
    low_res = RandLowResolution(factor=4, batched=batched, **linear)
    noise.set_random_state(state=state)
    low_res.set_random_state(state=state)
    noisy = noise(x)
    expected = low_res(noisy)
    assert torch.equal(combined, expected)
    # ... which is the low-resolution simulation of the noisy image, not the other way around
    def low_resolution(img):
        return simulate_low_resolution(img if batched else img[None], 4, "trilinear", "trilinear").reshape(img.shape)

    assert torch.allclose(combined, low_resolution(noisy), atol=1e-6)
    reversed_order = low_resolution(x) + (noisy - x)
    assert not torch.allclose(combined, reversed_order, atol=1e-3)
    # the noise in the output was low-passed (the operation is linear): far below the added variance 0.1
    assert (combined - low_resolution(x)).var() < 0.1 / 4


def test_dae_disruption_disabled_parts():
    x = torch.randn(1, 16, 16, 16)
    assert torch.equal(RandDAEDisruption(noise_variance=0.0, downsample_factor=1)(x), x)
    only_noise = RandDAEDisruption(noise_variance=0.1, downsample_factor=1).set_random_state(0)(x)
    assert abs((only_noise - x).var().item() - 0.1) < 0.01
    only_low_res = RandDAEDisruption(noise_variance=0.0, downsample_factor=4)(x)
    assert torch.allclose(only_low_res, simulate_low_resolution(x[None], 4)[0], atol=1e-6)


def test_dae_disruption_seeded_and_batch_independent():
    x = torch.zeros(3, 1, 16, 16, 16)
    a = RandDAEDisruption(batched=True).set_random_state(1)(x)
    b = RandDAEDisruption(batched=True).set_random_state(1)(x)
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[1], a[2])


def test_dictionary_wrappers_match_array_transforms():
    torch.manual_seed(0)
    image = torch.randn(1, 16, 16, 16)
    label = torch.randn(1, 16, 16, 16)
    pairs = [
        (RandAdditiveGaussianNoised(keys="image", variance=0.2), RandAdditiveGaussianNoise(variance=0.2)),
        (RandLowResolutiond(keys="image", factor=2, downsample_mode="nearest"),
         RandLowResolution(factor=2, downsample_mode="nearest")),
        (RandDAEDisruptiond(keys="image"), RandDAEDisruption()),
    ]
    for dict_t, array_t in pairs:
        out = dict_t.set_random_state(11)({"image": image, "label": label})
        assert torch.equal(out["image"], array_t.set_random_state(11)(image)), type(dict_t).__name__
        assert out["label"] is label  # other keys untouched
    assert RandAdditiveGaussianNoiseD is RandAdditiveGaussianNoised
    assert RandLowResolutionD is RandLowResolutiond
    assert RandDAEDisruptionD is RandDAEDisruptiond


def test_dictionary_wrapper_keys_get_independent_draws_and_missing_keys():
    x = torch.zeros(1, 8, 8, 8)
    out = RandAdditiveGaussianNoised(keys=["a", "b"]).set_random_state(0)({"a": x, "b": x})
    assert not torch.equal(out["a"], out["b"])
    with pytest.raises(KeyError):
        RandAdditiveGaussianNoised(keys=["a", "b"])({"a": x})
    partial = RandAdditiveGaussianNoised(keys=["a", "b"], allow_missing_keys=True)({"a": x})
    assert set(partial) == {"a"}


def test_dictionary_wrapper_batched():
    x = torch.zeros(3, 1, 8, 8, 8)
    out = RandDAEDisruptiond(keys="image", downsample_factor=2, batched=True).set_random_state(0)({"image": x})
    assert out["image"].shape == x.shape
    assert not torch.equal(out["image"][0], out["image"][1])


# --------------------------------------------------------------------------------------------------------------
# ModalityLabeld
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, name",
    [("ct", "ct"), ("CT", "ct"), ("t1", "t1"), ("T1", "t1"), ("t1ce", "t1ce"), ("T1CE", "t1ce"), ("T1Gd", "t1ce"),
     ("t1c", "t1ce"), ("t2", "t2"), (" T2 ", "t2"), ("FLAIR", "flair"), ("t2f", "flair"), ("t1n", "t1"),
     ("T2w", "t2")],
)
def test_modality_label_from_field(field, name):
    out = ModalityLabeld()({"image": "/data/case_0001.nii.gz", "modality": field})
    assert out["modality"] == name
    assert int(out["modality_label"]) == DEFAULT_MODALITIES.index(name)


def test_modality_labels_are_distinct_and_t1ce_is_not_t1():
    labels = {m: int(ModalityLabeld()({"image": "x.nii.gz", "modality": m})["modality_label"]) for m in DEFAULT_MODALITIES}
    assert sorted(labels.values()) == list(range(len(DEFAULT_MODALITIES)))
    assert labels["t1ce"] != labels["t1"]


@pytest.mark.parametrize(
    "path, name",
    [("BraTS_001_t1ce.nii.gz", "t1ce"), ("/data/BraTS2021_00000/BraTS2021_00000_t1ce.nii.gz", "t1ce"),
     ("BraTS_001_t1.nii.gz", "t1"), ("BraTS_001_t2.nii.gz", "t2"), ("BraTS_001_flair.nii", "flair"),
     ("BraTS-GLI-00000-000-t1c.nii.gz", "t1ce"), ("BraTS-GLI-00000-000-t2f.nii.gz", "flair"),
     ("/data/t1/lung_ct_004.nii.gz", "ct"), ("CASE_T1CE.NII.GZ", "t1ce")],
)
def test_modality_inferred_from_file_name_when_field_absent(path, name):
    out = ModalityLabeld()({"image": path})
    assert out["modality"] == name
    assert int(out["modality_label"]) == DEFAULT_MODALITIES.index(name)
    # a None field counts as absent
    assert ModalityLabeld()({"image": path, "modality": None})["modality"] == name


def test_modality_field_wins_over_file_name():
    out = ModalityLabeld()({"image": "BraTS_001_t1ce.nii.gz", "modality": "flair"})
    assert out["modality"] == "flair"


def test_modality_inferred_from_metatensor_file_name():
    image = MetaTensor(torch.zeros(1, 4, 4, 4), meta={"filename_or_obj": "/data/BraTS_007_t1ce.nii.gz"})
    assert ModalityLabeld()({"image": image})["modality"] == "t1ce"


def test_unknown_modality_error_names_file():
    with pytest.raises(ValueError) as error:
        ModalityLabeld()({"image": "/data/scan_042.nii.gz", "modality": "pet"})
    assert "/data/scan_042.nii.gz" in str(error.value) and "pet" in str(error.value)


def test_uninferable_modality_error_names_file():
    with pytest.raises(ValueError) as error:
        ModalityLabeld()({"image": "/data/scan_042.nii.gz"})
    assert "scan_042.nii.gz" in str(error.value)
    with pytest.raises(KeyError) as error:
        ModalityLabeld(infer_from_filename=False)({"image": "/data/BraTS_001_t1.nii.gz"})
    assert "BraTS_001_t1.nii.gz" in str(error.value)


def test_modality_extensible_and_custom_keys():
    transform = ModalityLabeld(keys="mod", label_key="y", modalities=(*DEFAULT_MODALITIES, "pet"))
    out = transform({"image": "a.nii.gz", "mod": "PET"})
    assert out["mod"] == "pet" and int(out["y"]) == 5
    with pytest.raises(ValueError):
        ModalityLabeld(keys=["a", "b"])


# --------------------------------------------------------------------------------------------------------------
# NormalizeByModalityd
# --------------------------------------------------------------------------------------------------------------


def test_ct_window_scaled_with_clipping():
    hu = torch.tensor([-3000.0, -1000.0, -500.0, 0.0, 500.0, 1000.0, 3071.0]).reshape(1, 7, 1, 1)
    out = NormalizeByModalityd(keys="image")({"image": hu, "modality": "ct"})["image"]
    expected = torch.tensor([0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]).reshape(1, 7, 1, 1)
    assert torch.allclose(torch.as_tensor(out), expected, atol=1e-6)


def test_ct_custom_window():
    hu = torch.tensor([-175.0, 37.5, 250.0, 400.0]).reshape(1, 4, 1, 1)
    out = NormalizeByModalityd(keys="image", ct_window=(-175, 250))({"image": hu, "modality": "CT"})["image"]
    assert torch.allclose(torch.as_tensor(out).flatten(), torch.tensor([0.0, 0.5, 1.0, 1.0]), atol=1e-6)


@pytest.mark.parametrize("modality", ["t1", "t1ce", "t2", "flair", "T1Gd"])
def test_mri_zscore_over_nonzero_voxels(modality):
    torch.manual_seed(0)
    image = torch.zeros(2, 16, 16, 16)
    image[0, 4:12, 4:12, 4:12] = torch.rand(8, 8, 8) * 300 + 100
    image[1, 2:14, 2:14, 2:14] = torch.rand(12, 12, 12) * 5 + 50
    nonzero = image != 0
    out = torch.as_tensor(NormalizeByModalityd(keys="image")({"image": image, "modality": modality})["image"])
    assert out.shape == image.shape
    assert torch.all(out[~nonzero] == 0), "background voxels must stay zero"
    for channel in range(2):  # channel-wise statistics over the non-zero voxels
        values = out[channel][nonzero[channel]].double()
        assert abs(values.mean().item()) < 1e-4
        assert abs(values.std(unbiased=False).item() - 1.0) < 1e-3


def test_normalize_needs_modality():
    with pytest.raises(KeyError):
        NormalizeByModalityd(keys="image")({"image": torch.ones(1, 2, 2, 2)})


def test_modality_pipeline_on_metatensor():
    image = MetaTensor(torch.full((1, 4, 4, 4), 1000.0), meta={"filename_or_obj": "/d/lung_ct_1.nii.gz"})
    d = ModalityLabeld()({"image": image})
    d = NormalizeByModalityd(keys="image")(d)
    assert d["modality"] == "ct" and int(d["modality_label"]) == 0
    assert torch.allclose(torch.as_tensor(d["image"]), torch.ones(1, 4, 4, 4))
