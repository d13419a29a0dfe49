"""Array transforms of the DAE disruptions.

Each transform takes one sample shaped (C, *spatial), or a whole batch shaped (B, C, *spatial) when built with
``batched=True``, as a torch tensor on any device. Random draws come from ``self.R`` (seeded by
``set_random_state``) and, for per-voxel noise, from a ``torch.Generator`` on the tensor's own device seeded from
``self.R``: results are reproducible from a seed and no data crosses between host and device.
"""

from __future__ import annotations

import math
import numpy as np
import torch
import torch.nn.functional as F
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import Randomizable, RandomizableTransform, Transform
from monai.utils import TransformBackends
from monai.utils.type_conversion import convert_to_tensor

__all__ = [
    "LocalMasking",
    "RandAdditiveGaussianNoise",
    "RandLowResolution",
    "RandDAEDisruption",
    "simulate_low_resolution",
    "device_generator",
]

_ALIGNABLE_MODES = {"linear", "bilinear", "bicubic", "trilinear"}


def device_generator(device: torch.device, seed: int) -> torch.Generator:
    """
    A ``torch.Generator`` living on ``device`` and seeded with ``seed``.

    Args:
        device: device the random numbers are drawn on.
        seed: seed of the generator.

    Returns:
        the seeded generator.
    """
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


def _draw_seed(rng: np.random.RandomState) -> int:
    return int(rng.randint(0, 2**31 - 1))


class LocalMasking(Randomizable, Transform):
    """
    DAE local masking: zero a random subset of the channels of a (B, C, *spatial) tensor at every spatial
    position, for example the patch embedding of a Swin UNETR (B x 48 x 48^3 for a 96^3 crop).

    Exactly ``int(ratio * C)`` channels (28 of 48 at ratio 0.6, as in the authors' code) are zeroed in every sample. With ``per_sample=True`` each sample gets
    its own channel subset; ``per_sample=False`` draws one subset for the whole batch (the authors' behaviour).
    Masked channels are zeroed, the others are passed through unscaled, as in the paper.

    Args:
        ratio: fraction of the channels to zero, in [0, 1). 0 makes the transform a no-op.
        per_sample: draw a fresh channel subset for every sample of the batch.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, ratio: float = 0.6, per_sample: bool = True) -> None:
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"LocalMasking ratio must be in [0, 1), got {ratio}.")
        self.ratio = float(ratio)
        self.per_sample = per_sample
        self._keep: np.ndarray | None = None

    def num_masked(self, num_channels: int) -> int:
        """
        Number of channels zeroed out of ``num_channels``, as the authors' code counts them.

        Args:
            num_channels: channel count C of the tensor.

        Returns:
            ``int(ratio * num_channels)`` (28 of 48 at ratio 0.6).
        """
        return int(self.ratio * num_channels)

    def randomize(self, data: tuple[int, int]) -> None:
        """
        Draw the channel subsets.

        Args:
            data: (batch size, channel count).
        """
        batch_size, num_channels = data
        rows = batch_size if self.per_sample else 1
        order = self.R.rand(rows, num_channels).argsort(axis=1)
        keep = np.ones((rows, num_channels), dtype=bool)
        np.put_along_axis(keep, order[:, : self.num_masked(num_channels)], False, axis=1)
        self._keep = np.broadcast_to(keep, (batch_size, num_channels))

    def __call__(self, x: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        """
        Args:
            x: tensor shaped (B, C, *spatial) on any device.
            randomize: draw new channel subsets first.

        Returns:
            ``x`` with the masked channels set to zero, same shape, dtype and device.
        """
        if x.ndim < 3:
            raise ValueError(f"LocalMasking expects a (B, C, *spatial) tensor, got shape {tuple(x.shape)}.")
        if self.num_masked(x.shape[1]) == 0:
            return x
        if randomize:
            self.randomize((x.shape[0], x.shape[1]))
        if self._keep is None or self._keep.shape != tuple(x.shape[:2]):
            raise RuntimeError("LocalMasking has no mask for this batch shape: call with randomize=True first.")
        keep = torch.from_numpy(np.array(self._keep)).to(device=x.device, dtype=x.dtype, non_blocking=True)
        return x * keep.reshape(*keep.shape, *([1] * (x.ndim - 2)))


class _BatchableRandomTransform(RandomizableTransform):
    """Shared plumbing: draw one "apply or not" decision per sample, then transform the selected samples."""

    backend = [TransformBackends.TORCH]

    def __init__(self, prob: float, batched: bool) -> None:
        RandomizableTransform.__init__(self, prob)
        self.batched = batched
        self._apply: np.ndarray = np.zeros(0, dtype=bool)

    def randomize(self, data: int) -> None:
        """
        Draw the per-sample decisions.

        Args:
            data: number of samples (1 for an unbatched input).
        """
        self._apply = self.R.rand(data) < self.prob
        self._do_transform = bool(self._apply.any())

    def _transform_batch(self, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> torch.Tensor:
        """
        Args:
            img: one sample (C, *spatial) or, with ``batched=True``, a batch (B, C, *spatial).
            randomize: draw new random values first.

        Returns:
            the transformed tensor, same shape, dtype and device as the input.
        """
        img_t = convert_to_tensor(img, track_meta=False)
        batch = img_t if self.batched else img_t.unsqueeze(0)
        if randomize:
            self.randomize(batch.shape[0])
        if len(self._apply) != batch.shape[0]:
            raise RuntimeError(f"{type(self).__name__} was randomized for {len(self._apply)} samples, got {batch.shape[0]}.")
        if self._apply.all():
            out = self._transform_batch(batch)
        elif not self._apply.any():
            out = batch
        else:
            index = torch.as_tensor(np.flatnonzero(self._apply), device=batch.device)
            out = batch.index_copy(0, index, self._transform_batch(batch.index_select(0, index)))
        out = out if self.batched else out.squeeze(0)
        if isinstance(img, MetaTensor):
            return MetaTensor(out, meta=img.meta, applied_operations=img.applied_operations)
        return out


class RandAdditiveGaussianNoise(_BatchableRandomTransform):
    """
    Additive zero-mean Gaussian noise of a fixed **variance**, drawn per voxel and per sample on the tensor's
    device. This is MONAI's ``RandGaussianNoise(std=sqrt(variance), sample_std=False)`` with the noise drawn by
    torch on the input's device (MONAI draws with NumPy on the host) and with batches supported.

    Args:
        prob: probability to disrupt each sample.
        variance: variance of the noise, in the squared intensity unit of the input (0.1 in the DAE paper).
        mean: mean of the noise.
        batched: the input is a batch (B, C, *spatial) and each sample is decided independently.
    """

    def __init__(self, prob: float = 1.0, variance: float = 0.1, mean: float = 0.0, batched: bool = False) -> None:
        if variance < 0:
            raise ValueError(f"noise variance must be non-negative, got {variance}.")
        super().__init__(prob, batched)
        self.variance = float(variance)
        self.mean = float(mean)
        self._seed = 0

    def randomize(self, data: int) -> None:
        super().randomize(data)
        self._seed = _draw_seed(self.R)

    def _transform_batch(self, batch: torch.Tensor) -> torch.Tensor:
        generator = device_generator(batch.device, self._seed)
        dtype = batch.dtype if batch.is_floating_point() else torch.float32
        noise = torch.randn(batch.shape, generator=generator, device=batch.device, dtype=dtype)
        return batch + noise * math.sqrt(self.variance) + self.mean


def simulate_low_resolution(
    batch: torch.Tensor,
    factor: float,
    downsample_mode: str = "nearest",
    upsample_mode: str = "nearest",
    align_corners: bool | None = False,
) -> torch.Tensor:
    """
    Downsample a batch by ``factor`` and resample it back to its shape, as MONAI's
    ``RandSimulateLowResolution`` does for one sample with ``zoom_range=(1/factor, 1/factor)``.

    Args:
        batch: tensor shaped (B, C, *spatial).
        factor: downsampling factor (4: 96^3 -> 24^3 -> 96^3).
        downsample_mode: interpolation mode of ``torch.nn.functional.interpolate`` for the downsampling.
        upsample_mode: interpolation mode for the upsampling.
        align_corners: passed to the linear modes only.

    Returns:
        the degraded batch, same shape, dtype and device.
    """
    spatial = tuple(batch.shape[2:])
    low = tuple(max(1, int(np.round(s / factor))) for s in spatial)
    x = batch if batch.is_floating_point() else batch.float()
    down_ac = align_corners if downsample_mode in _ALIGNABLE_MODES else None
    up_ac = align_corners if upsample_mode in _ALIGNABLE_MODES else None
    x = F.interpolate(x, size=low, mode=downsample_mode, align_corners=down_ac)
    return F.interpolate(x, size=spatial, mode=upsample_mode, align_corners=up_ac).to(batch.dtype)


class RandLowResolution(_BatchableRandomTransform):
    """
    Simulate a low-resolution acquisition: downsample by an integer ``factor`` and resample back.

    Identical to MONAI's ``RandSimulateLowResolution(zoom_range=(1/factor, 1/factor))`` on one sample (a test
    checks it), and also runs on a whole batch on the training device with an independent decision per sample,
    which MONAI's transform cannot.

    Args:
        prob: probability to disrupt each sample.
        factor: downsampling factor (4 in the DAE paper).
        downsample_mode: interpolation for the downsampling: "nearest" as in the authors' code (default), or the
            paper's linear ("trilinear" in 3D).
        upsample_mode: interpolation for the upsampling, likewise.
        align_corners: passed to the linear modes.
        batched: the input is a batch (B, C, *spatial).
    """

    def __init__(
        self,
        prob: float = 1.0,
        factor: float = 4,
        downsample_mode: str = "nearest",
        upsample_mode: str = "nearest",
        align_corners: bool | None = False,
        batched: bool = False,
    ) -> None:
        if factor < 1:
            raise ValueError(f"downsampling factor must be >= 1, got {factor}.")
        super().__init__(prob, batched)
        self.factor = factor
        self.downsample_mode = downsample_mode
        self.upsample_mode = upsample_mode
        self.align_corners = align_corners

    def _transform_batch(self, batch: torch.Tensor) -> torch.Tensor:
        return simulate_low_resolution(batch, self.factor, self.downsample_mode, self.upsample_mode, self.align_corners)


class RandDAEDisruption(Randomizable, Transform):
    """
    The combined low-level DAE disruption: additive Gaussian noise, then low-resolution simulation. Local
    masking, the third disruption, acts on the patch embedding inside the network
    (:py:class:`monai_dae.networks.DAESwinUNETR`).

    With nearest interpolation both ways (the authors' code, the default) and an integer factor k that divides
    the spatial sizes, downsampling keeps exactly the voxels on a stride-k grid and upsampling repeats each of
    them k times along every axis. The noise then only matters on that grid, so it is drawn there (1/k^3 of the
    voxels) and the result is written once: the same distribution as noise-then-resample (per-voxel noise of
    the given variance, constant over each k^3 block), at about the cost of one copy of the volume. Other modes
    run the two steps in turn.

    Args:
        noise_variance: variance of the additive noise (0 disables it).
        downsample_factor: low-resolution factor (1 disables it).
        noise_prob: probability of the noise per sample.
        low_resolution_prob: probability of the low-resolution simulation per sample.
        downsample_mode: interpolation of the downsampling: "nearest" (authors' code, default) or "trilinear"
            (the paper's linear interpolation, which averages the noise away: on a zero volume, noise of
            variance 0.1 followed by trilinear x4 leaves a variance of about 0.004).
        upsample_mode: interpolation of the upsampling, likewise.
        batched: inputs are batches (B, C, *spatial), each sample disrupted independently.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        noise_variance: float = 0.1,
        downsample_factor: float = 4,
        noise_prob: float = 1.0,
        low_resolution_prob: float = 1.0,
        downsample_mode: str = "nearest",
        upsample_mode: str = "nearest",
        batched: bool = False,
    ) -> None:
        self.batched = batched
        self.noise = RandAdditiveGaussianNoise(
            prob=noise_prob if noise_variance > 0 else 0.0, variance=noise_variance, batched=batched
        )
        self.low_resolution = RandLowResolution(
            prob=low_resolution_prob if downsample_factor > 1 else 0.0,
            factor=downsample_factor,
            downsample_mode=downsample_mode,
            upsample_mode=upsample_mode,
            batched=batched,
        )

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandDAEDisruption:
        super().set_random_state(seed, state)
        self.noise.set_random_state(state=self.R)
        self.low_resolution.set_random_state(state=self.R)
        return self

    def randomize(self, data: int) -> None:
        """
        Draw the random values of both disruptions.

        Args:
            data: number of samples.
        """
        self.noise.randomize(data)
        self.low_resolution.randomize(data)

    def grid_stride(self, spatial_shape: tuple[int, ...]) -> int | None:
        """
        The stride k of the voxels that survive the low-resolution step, when it is nearest down and up by an
        integer factor that divides every spatial size; None otherwise.

        Args:
            spatial_shape: spatial sizes of the input.

        Returns:
            k, or None.
        """
        low = self.low_resolution
        factor = int(low.factor)
        if (low.downsample_mode, low.upsample_mode) != ("nearest", "nearest") or factor != low.factor:
            return None
        return factor if all(size % factor == 0 for size in spatial_shape) else None

    def _disrupt_on_grid(self, batch: torch.Tensor, stride: int) -> torch.Tensor:
        """Noise and nearest low resolution of a batch, each sample as randomized, drawing noise on the grid only."""
        generator = device_generator(batch.device, self.noise._seed)
        noisy, low = self.noise._apply, self.low_resolution._apply
        out = torch.empty_like(batch)
        for add_noise, coarse in sorted({(bool(n), bool(c)) for n, c in zip(noisy, low)}):
            selected = np.flatnonzero((noisy == add_noise) & (low == coarse))
            whole = len(selected) == batch.shape[0]
            index = torch.as_tensor(selected, device=batch.device)
            x = batch if whole else batch.index_select(0, index)
            if coarse:
                x = x[(slice(None), slice(None)) + (slice(None, None, stride),) * (batch.ndim - 2)]
            if add_noise:
                dtype = x.dtype if x.is_floating_point() else torch.float32
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=dtype)
                x = x + noise * math.sqrt(self.noise.variance) + self.noise.mean
            target = out if whole else torch.empty((len(selected), *batch.shape[1:]), dtype=batch.dtype, device=batch.device)
            if coarse:  # repeat every grid voxel over its stride^d block: one write of the output
                grid = [size for dim in x.shape[2:] for size in (dim, 1)]
                blocks = [size for dim in x.shape[2:] for size in (dim, stride)]
                target.view(*x.shape[:2], *blocks).copy_(x.reshape(*x.shape[:2], *grid).expand(*x.shape[:2], *blocks))
            else:
                target.copy_(x)
            if not whole:
                out.index_copy_(0, index, target)
        return out

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> torch.Tensor:
        """
        Args:
            img: one sample (C, *spatial) or a batch (B, C, *spatial) with ``batched=True``.
            randomize: draw new random values first.

        Returns:
            the disrupted tensor, same shape, dtype and device.
        """
        img_t = convert_to_tensor(img, track_meta=False)
        batch = img_t if self.batched else img_t.unsqueeze(0)
        if randomize:
            self.randomize(batch.shape[0])
        stride = self.grid_stride(tuple(batch.shape[2:]))
        if stride is None:
            return self.low_resolution(self.noise(img, randomize=False), randomize=False)
        if len(self.noise._apply) != batch.shape[0]:
            raise RuntimeError(f"RandDAEDisruption was randomized for {len(self.noise._apply)} samples, got {batch.shape[0]}.")
        out = self._disrupt_on_grid(batch, stride)
        out = out if self.batched else out.squeeze(0)
        if isinstance(img, MetaTensor):
            return MetaTensor(out, meta=img.meta, applied_operations=img.applied_operations)
        return out
