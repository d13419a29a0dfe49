"""
Deterministic synthetic sample data: abdominal CT and multi-modal brain MRI phantoms.

The phantoms stand in for the public BTCV (abdominal CT, 13 organs) and BraTS 2018 (brain
MRI, four modalities, tumour sub-regions) data sets so that the pretraining and fine-tuning
pipelines can be run end to end without downloading anything. They are written as NIfTI
files in the same folder layouts and datalist formats as the public releases.

Geometry is defined in normalised voxel coordinates ``(u, v, w)`` in ``[-1, 1]`` along the
three array axes, so that a phantom keeps its anatomy at any array shape. The affines are
LPS-like (``diag(-sx, -sy, sz)``), as produced by ITK/DICOM converters: increasing the first
array index moves towards the patient's left, the second towards posterior and the third
towards superior. Loaders that reorient to RAS therefore have to flip the first two axes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import nibabel as nib
import numpy as np

__all__ = [
    "BTCV_ORGANS",
    "BRATS_MODALITIES",
    "BRATS_GRADES",
    "make_ct_phantom",
    "make_brain_phantom",
    "write_sample_dataset",
]

BTCV_ORGANS = (
    "spleen",
    "right kidney",
    "left kidney",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "inferior vena cava",
    "portal and splenic veins",
    "pancreas",
    "right adrenal gland",
    "left adrenal gland",
)
"""The 13 BTCV organ names; the organ at position ``i`` has label ``i + 1``."""

BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")
"""The four BraTS MRI modalities, in file-suffix spelling."""

BRATS_GRADES = ("HGG", "LGG")
"""The two BraTS 2018 tumour grades (high- and low-grade glioma), in folder spelling."""

# brain tissue classes used to look up intensities
_BG, _CSF, _GM, _WM, _EDEMA, _NECROSIS, _ENHANCING, _NON_ENHANCING = range(8)
# mean intensity per tissue class (indexed as above) before the per-modality scale
_BRAIN_CONTRAST = {
    "t1": np.array([0, 250, 550, 750, 480, 300, 600, 420], dtype=np.float32),
    "t1ce": np.array([0, 250, 560, 760, 490, 300, 1300, 430], dtype=np.float32),
    "t2": np.array([0, 1500, 800, 550, 1150, 1400, 900, 1200], dtype=np.float32),
    "flair": np.array([0, 150, 600, 450, 1100, 650, 800, 1000], dtype=np.float32),
}
# scanner-dependent global scale per modality
_BRAIN_SCALE = {"t1": 1.0, "t1ce": 1.3, "t2": 0.6, "flair": 0.8}


def _grid(shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Normalised voxel-centre coordinates as broadcastable open grids.

    Args:
        shape: spatial shape ``(X, Y, Z)``.

    Returns:
        ``(u, v, w)`` float32 arrays of shapes ``(X, 1, 1)``, ``(1, Y, 1)``, ``(1, 1, Z)`` with
        values in ``(-1, 1)``.
    """
    axes = [((np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0) for n in shape]
    return axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]


def _lps_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """
    LPS-like voxel-to-world affine (``diag(-sx, -sy, sz)``) centring the volume near the origin.

    Args:
        shape: spatial shape ``(X, Y, Z)``.
        spacing: voxel size in mm along the three array axes.

    Returns:
        4x4 float64 affine.
    """
    affine = np.diag([-float(spacing[0]), -float(spacing[1]), float(spacing[2]), 1.0])
    half_extent = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0 * np.asarray(spacing, dtype=np.float64)
    affine[:3, 3] = [half_extent[0], half_extent[1], -half_extent[2]]
    return affine


def _smooth_field(rng: np.random.Generator, grid: tuple, frequency: float) -> np.ndarray:
    """
    Random smooth field in ``[-1, 1]``: a product of three sinusoids with random phases.

    Args:
        rng: random generator.
        grid: ``(u, v, w)`` open grids from :func:`_grid`.
        frequency: angular frequency in radians per normalised unit.

    Returns:
        float32 array broadcast to the full volume shape.
    """
    freqs = frequency * rng.uniform(0.7, 1.3, size=3)
    phases = rng.uniform(0.0, 2.0 * np.pi, size=3)
    u, v, w = grid
    field = np.sin(freqs[0] * u + phases[0]) * np.sin(freqs[1] * v + phases[1]) * np.sin(freqs[2] * w + phases[2])
    return field.astype(np.float32)


def _ellipsoid_radius(
    grid: tuple,
    center: Sequence[float],
    semi_axes: Sequence[float],
    angle: float = 0.0,
    deformation: np.ndarray | float = 0.0,
) -> np.ndarray:
    """
    Normalised radius of a (deformed) ellipsoid: ``<= 1`` inside, 0 at the centre.

    Args:
        grid: ``(u, v, w)`` open grids from :func:`_grid`.
        center: ellipsoid centre ``(u, v, w)``.
        semi_axes: semi-axes along the (rotated) ``u``, ``v`` and ``w`` directions.
        angle: in-plane (``u``-``v``) rotation in radians.
        deformation: relative radial deformation field (e.g. ``0.1 * smooth_field``); positive
            values push the surface outwards.

    Returns:
        float32 array with the full volume shape.
    """
    u, v, w = grid
    du, dv, dw = u - center[0], v - center[1], w - center[2]
    cos_a, sin_a = np.cos(angle), np.sin(angle)
    ru = cos_a * du + sin_a * dv
    rv = -sin_a * du + cos_a * dv
    radius = np.sqrt((ru / semi_axes[0]) ** 2 + (rv / semi_axes[1]) ** 2 + (dw / semi_axes[2]) ** 2)
    return (radius / (1.0 + deformation)).astype(np.float32)


def _tube(grid: tuple, start: Sequence[float], end: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """
    Mask of a straight tube with elliptic cross-section between two points.

    The tube runs along its dominant axis (largest coordinate difference between ``start`` and
    ``end``); the cross-section lies in the plane of the two remaining axes.

    Args:
        grid: ``(u, v, w)`` open grids from :func:`_grid`.
        start: first end point ``(u, v, w)``.
        end: second end point ``(u, v, w)``.
        radii: cross-section semi-axes along the two remaining axes, in axis order.

    Returns:
        boolean array with the full volume shape.
    """
    start_arr, end_arr = np.asarray(start, dtype=np.float32), np.asarray(end, dtype=np.float32)
    axis = int(np.argmax(np.abs(end_arr - start_arr)))
    t = (grid[axis] - start_arr[axis]) / (end_arr[axis] - start_arr[axis])
    others = [k for k in range(3) if k != axis]
    dist = sum(((grid[k] - (start_arr[k] + t * (end_arr[k] - start_arr[k]))) / r) ** 2 for k, r in zip(others, radii))
    return (dist <= 1.0) & (t >= 0.0) & (t <= 1.0)


def make_ct_phantom(
    seed: int, shape: Sequence[int] = (96, 96, 48), spacing: Sequence[float] = (0.8, 0.8, 2.5)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Abdominal CT-like phantom with the 13 BTCV organs.

    An elliptical body (subcutaneous fat, muscle wall, intra-abdominal fat) surrounded by air,
    a vertebra with spinal canal and paraspinal muscles, and the 13 BTCV organs as deformed
    ellipsoids and tubes at anatomically plausible relative positions and contrast-enhanced
    (portal venous phase) Hounsfield units. Positions, sizes and shapes vary per seed, and
    Gaussian noise (sigma 15 HU) is added; values are rounded to integer HU and clipped to
    ``[-1024, 3071]``.

    Args:
        seed: random seed; the same seed gives identical arrays.
        shape: spatial shape ``(X, Y, Z)``; axes are patient right-to-left, anterior-to-posterior
            and inferior-to-superior.
        spacing: voxel size in mm along the three array axes.

    Returns:
        ``(image, label, affine)``: float32 HU image, uint8 label map (0 background, ``i + 1``
        for ``BTCV_ORGANS[i]``) and the 4x4 LPS-like affine.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    grid = _grid(shape)
    u, v, w = grid
    full = np.broadcast_shapes(u.shape, v.shape, w.shape)

    def jitter(point: Sequence[float], amount: float = 0.04) -> np.ndarray:
        return np.asarray(point, dtype=np.float32) + rng.uniform(-amount, amount, size=len(point))

    def scale(sizes: Sequence[float]) -> np.ndarray:
        return np.asarray(sizes, dtype=np.float32) * rng.uniform(0.88, 1.12)

    def deform(amplitude: float = 0.1, frequency: float = 4.0) -> np.ndarray:
        return amplitude * _smooth_field(rng, grid, frequency)

    # body wall: skin/subcutaneous fat, muscle, intra-abdominal cavity
    body_axes = np.array([0.9, 0.75], dtype=np.float32) * rng.uniform(0.94, 1.04, size=2)
    body_r = np.broadcast_to(np.sqrt((u / body_axes[0]) ** 2 + (v / body_axes[1]) ** 2), full)
    body_r = body_r / (1.0 + deform(0.02, 3.0))
    body = body_r <= 1.0
    fat_in, muscle_in = rng.uniform(0.9, 0.93), rng.uniform(0.84, 0.87)
    image = np.full(full, -1000.0, dtype=np.float32)
    image[body] = -100.0
    image[body_r <= fat_in] = 40.0
    cavity = body_r <= muscle_in
    image[cavity] = -80.0

    # spine: vertebral body (cortical rim, cancellous core), arch, canal and paraspinal muscles
    spine_c = jitter((0.0, 0.38), 0.02)
    spine_r = np.broadcast_to(np.sqrt((u - spine_c[0]) ** 2 + (v - spine_c[1]) ** 2), full)
    vert_radius = 0.12 * rng.uniform(0.92, 1.08)
    canal_c = (spine_c[0], spine_c[1] + vert_radius + 0.06)
    canal_r = np.broadcast_to(np.sqrt((u - canal_c[0]) ** 2 + (v - canal_c[1]) ** 2), full)
    paraspinal = np.zeros(full, dtype=bool)
    for side in (-1.0, 1.0):
        paraspinal |= _ellipsoid_radius(grid, (side * 0.17, canal_c[1] - 0.01, 0.0), (0.11, 0.1, 10.0)) <= 1.0
    image[paraspinal & body] = 50.0
    arch = (canal_r <= 0.08) & (v >= canal_c[1] - 0.02)
    image[arch] = 500.0
    image[canal_r <= 0.045] = 15.0
    image[spine_r <= vert_radius] = 700.0
    image[spine_r <= vert_radius - 0.025] = 350.0
    spine = (spine_r <= vert_radius) | arch | (canal_r <= 0.045) | paraspinal
    organ_space = cavity & ~spine

    label = np.zeros(full, dtype=np.uint8)

    def paint(mask: np.ndarray, organ: str, hu: float | np.ndarray) -> None:
        mask = mask & organ_space
        label[mask] = BTCV_ORGANS.index(organ) + 1
        image[mask] = hu if np.isscalar(hu) else hu[mask]

    # painting order resolves overlaps: later organs win
    liver_r = _ellipsoid_radius(
        grid, jitter((-0.35, -0.05, 0.3)), scale((0.45, 0.5, 0.55)), rng.uniform(-0.2, 0.2), deform(0.12)
    )
    paint(liver_r <= 1.0, "liver", 60.0)

    stomach_c, stomach_ax = jitter((0.3, -0.15, 0.4)), scale((0.25, 0.2, 0.28))
    stomach = _ellipsoid_radius(grid, stomach_c, stomach_ax, rng.uniform(-0.3, 0.3), deform(0.12)) <= 1.0
    stomach_hu = np.where(v < stomach_c[1] - 0.5 * stomach_ax[1], -850.0, 20.0).astype(np.float32)
    paint(stomach, "stomach", np.broadcast_to(stomach_hu, full))

    spleen = _ellipsoid_radius(grid, jitter((0.55, 0.2, 0.4)), scale((0.15, 0.22, 0.28)), 0.5, deform(0.12)) <= 1.0
    paint(spleen, "spleen", 50.0)

    pancreas_c = jitter((0.05, 0.02, 0.0))
    # curved body with the tail rising towards the splenic hilum
    curve = np.broadcast_to(0.25 * (u - pancreas_c[0]) ** 2 - 0.15 * (u - pancreas_c[0]), full)
    pancreas_r = _ellipsoid_radius(
        (u, v - curve, w - 0.5 * (u - pancreas_c[0])), pancreas_c, scale((0.32, 0.07, 0.09)), 0.0, deform(0.1, 6.0)
    )
    paint(pancreas_r <= 1.0, "pancreas", 45.0)

    for organ, side, z in (("right kidney", -1.0, -0.2), ("left kidney", 1.0, -0.1)):
        kidney_r = _ellipsoid_radius(
            grid, jitter((side * 0.4, 0.33, z)), scale((0.11, 0.13, 0.28)), side * 0.3, deform(0.06)
        )
        paint(kidney_r <= 1.0, organ, np.where(kidney_r <= 0.65, 110.0, 160.0).astype(np.float32))

    gallbladder = _ellipsoid_radius(grid, jitter((-0.32, -0.32, -0.05)), scale((0.08, 0.1, 0.15)), 0.3) <= 1.0
    paint(gallbladder, "gallbladder", 10.0)

    for organ, side in (("right adrenal gland", -1.0), ("left adrenal gland", 1.0)):
        adrenal_r = _ellipsoid_radius(grid, jitter((side * 0.24, 0.28, 0.35), 0.02), scale((0.05, 0.05, 0.12)))
        paint(adrenal_r <= 1.0, organ, 30.0)

    confluence = jitter((-0.15, 0.1, -0.02), 0.02)
    portal = _tube(grid, confluence, jitter((-0.32, 0.02, 0.25), 0.02), (0.045, 0.045))
    splenic = _tube(grid, confluence, jitter((0.45, 0.12, 0.12), 0.02), (0.035, 0.05))
    paint(portal | splenic, "portal and splenic veins", 170.0)

    ivc_c = jitter((-0.17, 0.17), 0.02)
    paint(_tube(grid, (*ivc_c, -1.5), (*ivc_c, 1.5), scale((0.075, 0.055))), "inferior vena cava", 150.0)

    aorta_c = jitter((0.08, 0.18), 0.02)
    aorta_radius = 0.065 * rng.uniform(0.9, 1.1)
    paint(_tube(grid, (*aorta_c, -1.5), (*aorta_c, 1.5), (aorta_radius, aorta_radius)), "aorta", 200.0)

    # the oesophagus descends behind the liver and joins the stomach at the cardia
    esophagus_top = jitter((-0.02, 0.06, 1.0), 0.02)
    esophagus_bottom = (stomach_c[0] - 0.15, stomach_c[1] + 0.1, 0.45)
    paint(_tube(grid, esophagus_bottom, esophagus_top, (0.05, 0.05)), "esophagus", 40.0)

    image += rng.normal(0.0, 15.0, size=full).astype(np.float32)
    image = np.clip(np.rint(image), -1024.0, 3071.0).astype(np.float32)
    return image, label, _lps_affine(shape, spacing)


def make_brain_phantom(
    seed: int, grade: str, shape: Sequence[int] = (80, 80, 64), spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """
    Skull-stripped multi-modal brain MRI phantom with a glioma, in the style of BraTS.

    A deformed brain ellipsoid (exactly 0 outside) with a folded grey matter ribbon, white
    matter, sulcal CSF and lateral ventricles, and a tumour in one hemisphere. Four
    co-registered modalities with realistic relative contrasts (T1: WM > GM > CSF; T1ce: T1 plus
    enhancement; T2: CSF and edema bright; FLAIR: CSF dark, edema bright), a per-modality
    intensity scale, a smooth bias field and Rician noise inside the brain.

    Args:
        seed: random seed; the same seed (and grade) gives identical arrays.
        grade: ``"HGG"`` (large tumour with necrotic core, enhancing rim and large edema) or
            ``"LGG"`` (small non-enhancing tumour with little edema).
        shape: spatial shape ``(X, Y, Z)``; axes are patient right-to-left, anterior-to-posterior
            and inferior-to-superior.
        spacing: voxel size in mm along the three array axes.

    Returns:
        ``(images, seg, affine)``: dict mapping each of ``BRATS_MODALITIES`` to a float32 image,
        the uint8 BraTS segmentation (1 necrotic/non-enhancing core, 2 edema, 4 enhancing
        tumour; no 4 for LGG) and the 4x4 LPS-like affine.

    Raises:
        ValueError: when ``grade`` is not ``"HGG"`` or ``"LGG"``.
    """
    if grade not in BRATS_GRADES:
        raise ValueError(f"unknown tumour grade {grade!r}, expected one of {BRATS_GRADES}.")
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    grid = _grid(shape)
    full = np.broadcast_shapes(*(g.shape for g in grid))

    # brain, grey matter ribbon with gyral folding, sulcal CSF, lateral ventricles
    gyri = _smooth_field(rng, grid, 14.0)
    brain_r = _ellipsoid_radius(
        grid,
        np.array([0.0, 0.0, -0.05]) + rng.uniform(-0.03, 0.03, size=3),
        np.array([0.82, 0.92, 0.8]) * rng.uniform(0.95, 1.05, size=3),
        rng.uniform(-0.08, 0.08),
        0.03 * gyri + 0.04 * _smooth_field(rng, grid, 3.0),
    )
    brain = brain_r <= 1.0
    tissue = np.zeros(full, dtype=np.uint8)
    tissue[brain] = _WM
    tissue[brain & (brain_r > 0.78 + 0.07 * gyri)] = _GM
    tissue[brain & (brain_r > 0.95) & (gyri > 0.3)] = _CSF
    for side in (-1.0, 1.0):
        ventricle = _ellipsoid_radius(
            grid,
            (side * 0.12, -0.05, 0.12) + rng.uniform(-0.02, 0.02, size=3),
            np.array([0.07, 0.32, 0.12]) * rng.uniform(0.85, 1.15),
            side * 0.14,
            0.15 * _smooth_field(rng, grid, 4.0),
        )
        tissue[ventricle <= 1.0] = _CSF

    # tumour in one hemisphere: edema (2), core (1) and, for HGG, an enhancing rim (4)
    side = rng.choice((-1.0, 1.0))
    tumour_c = (side * rng.uniform(0.25, 0.4), rng.uniform(-0.35, 0.35), rng.uniform(-0.15, 0.3))
    hgg = grade == "HGG"
    tumour_size = rng.uniform(0.16, 0.22) if hgg else rng.uniform(0.1, 0.15)
    edema_size = tumour_size * (rng.uniform(1.7, 2.1) if hgg else rng.uniform(1.25, 1.45))
    tumour_r = _ellipsoid_radius(
        grid, tumour_c, tumour_size * rng.uniform(0.85, 1.15, size=3), 0.0, 0.15 * _smooth_field(rng, grid, 6.0)
    )
    edema_r = _ellipsoid_radius(
        grid, tumour_c, edema_size * rng.uniform(0.85, 1.15, size=3), 0.0, 0.25 * _smooth_field(rng, grid, 5.0)
    )
    seg = np.zeros(full, dtype=np.uint8)
    edema = brain & (edema_r <= 1.0) & (tissue != _CSF)
    seg[edema] = 2
    tissue[edema] = _EDEMA
    core = brain & (tumour_r <= 1.0)
    if hgg:
        necrosis = core & (tumour_r <= rng.uniform(0.55, 0.7))
        seg[core] = 4
        tissue[core] = _ENHANCING
        seg[necrosis] = 1
        tissue[necrosis] = _NECROSIS
    else:
        seg[core] = 1
        tissue[core] = _NON_ENHANCING

    bias = 1.0 + 0.05 * _smooth_field(rng, grid, 1.5)
    texture = np.where(seg > 0, 1.0 + 0.06 * _smooth_field(rng, grid, 10.0), 1.0)
    images = {}
    for modality in BRATS_MODALITIES:
        contrast = _BRAIN_CONTRAST[modality] * _BRAIN_SCALE[modality] * rng.uniform(0.9, 1.1)
        clean = contrast[tissue] * bias * texture
        sigma = 0.03 * contrast[_WM]
        noisy = np.hypot(clean + rng.normal(0.0, sigma, size=full), rng.normal(0.0, sigma, size=full))
        images[modality] = np.where(brain, np.maximum(noisy, 1.0), 0.0).astype(np.float32)
    return images, seg, _lps_affine(shape, spacing)


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: str) -> None:
    """
    Save an array as NIfTI with scanner qform/sform codes and mm units.

    Args:
        array: image or label array; its dtype is kept on disk.
        affine: 4x4 voxel-to-world affine.
        path: output file name (``.nii.gz`` for compression).
    """
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_data_dtype(array.dtype)
    img.header.set_xyzt_units("mm", "sec")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(img, path)


def _save_json(data: dict, path: str) -> None:
    """
    Write a dict as indented JSON.

    Args:
        data: JSON-serialisable dict.
        path: output file name.
    """
    with open(path, "w") as f:
        json.dump(data, f, indent=4)
        f.write("\n")


def write_sample_dataset(
    output_dir: str,
    num_ct: int = 6,
    num_brain: int = 6,
    seed: int = 0,
    ct_shape: Sequence[int] = (96, 96, 48),
    brain_shape: Sequence[int] = (80, 80, 64),
    num_validation: int = 2,
) -> dict[str, str]:
    """
    Write a small synthetic data set in the public BTCV and BraTS 2018 layouts plus datalists.

    Written under ``output_dir``:

        - ``btcv/imagesTr/img0001.nii.gz``, ``btcv/labelsTr/label0001.nii.gz``, ... and
          ``btcv/dataset_0.json`` (BTCV format; the last cases form the ``"validation"`` list).
        - ``brats/MICCAI_BraTS_2018_Data_Training/{HGG,LGG}/<case>/<case>_<suffix>.nii.gz`` with
          case names ``Brats18_SAMPLE_0001``, ... and suffixes ``t1``, ``t1ce``, ``t2``, ``flair``,
          ``seg``; grades alternate HGG, LGG, HGG, ...
        - ``datalist_pretrain.json``: ``{"training": [...], "validation": [...]}`` with entries
          ``{"image": <path relative to output_dir>, "modality": "ct" | "t1" | "t1ce" | "t2" |
          "flair"}``, one entry per CT image and per MRI modality file. Validation holds the last
          CT cases and all modality files of the last brain cases.

    The number of validation cases per data set is ``num_validation`` clamped to
    ``[1, num_cases - 1]``, so that both lists always contain CT and MRI entries.

    Args:
        output_dir: root folder of the data set (created if missing).
        num_ct: number of CT cases, at least 2.
        num_brain: number of brain MRI cases, at least 2.
        seed: base seed; per-case seeds are derived from it, so the same seed gives identical
            arrays.
        ct_shape: spatial shape of the CT volumes.
        brain_shape: spatial shape of the MRI volumes.
        num_validation: number of validation cases for each of CT and MRI.

    Returns:
        absolute paths ``{"root", "datalist_pretrain", "btcv_dir", "btcv_datalist", "brats_dir"}``.

    Raises:
        ValueError: when ``num_ct`` or ``num_brain`` is smaller than 2.
    """
    if num_ct < 2 or num_brain < 2:
        raise ValueError(f"num_ct and num_brain must be at least 2, got {num_ct} and {num_brain}.")
    root = os.path.abspath(output_dir)
    btcv_dir = os.path.join(root, "btcv")
    brats_dir = os.path.join(root, "brats", "MICCAI_BraTS_2018_Data_Training")
    # independent seed streams: adding CT cases does not change the brain cases and vice versa
    ct_stream, brain_stream = (np.random.default_rng(s) for s in np.random.default_rng(seed).integers(2**31, size=2))
    ct_seeds = ct_stream.integers(2**31, size=num_ct)
    brain_seeds = brain_stream.integers(2**31, size=num_brain)
    num_val_ct = min(max(num_validation, 1), num_ct - 1)
    num_val_brain = min(max(num_validation, 1), num_brain - 1)

    pretrain: dict[str, list] = {"training": [], "validation": []}
    btcv_cases = []
    for index, case_seed in enumerate(ct_seeds, start=1):
        image, label, affine = make_ct_phantom(int(case_seed), shape=ct_shape)
        case = {"image": f"imagesTr/img{index:04d}.nii.gz", "label": f"labelsTr/label{index:04d}.nii.gz"}
        _save_nifti(image, affine, os.path.join(btcv_dir, case["image"]))
        _save_nifti(label, affine, os.path.join(btcv_dir, case["label"]))
        btcv_cases.append(case)
        split = "validation" if index > num_ct - num_val_ct else "training"
        pretrain[split].append({"image": os.path.join("btcv", case["image"]), "modality": "ct"})

    for index, case_seed in enumerate(brain_seeds, start=1):
        grade = BRATS_GRADES[(index - 1) % 2]
        images, seg, affine = make_brain_phantom(int(case_seed), grade, shape=brain_shape)
        name = f"Brats18_SAMPLE_{index:04d}"
        case_dir = os.path.join(brats_dir, grade, name)
        split = "validation" if index > num_brain - num_val_brain else "training"
        for modality, array in images.items():
            path = os.path.join(case_dir, f"{name}_{modality}.nii.gz")
            _save_nifti(array, affine, path)
            pretrain[split].append({"image": os.path.relpath(path, root), "modality": modality})
        _save_nifti(seg, affine, os.path.join(case_dir, f"{name}_seg.nii.gz"))

    btcv_datalist = {
        "name": "btcv",
        "description": "Synthetic abdominal CT phantoms in the BTCV (Beyond the Cranial Vault) layout",
        "reference": "monai_dae.data.phantoms (synthetic)",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", **{str(i + 1): organ for i, organ in enumerate(BTCV_ORGANS)}},
        "numTraining": num_ct - num_val_ct,
        "numValidation": num_val_ct,
        "training": btcv_cases[: num_ct - num_val_ct],
        "validation": btcv_cases[num_ct - num_val_ct :],
    }
    btcv_json = os.path.join(btcv_dir, "dataset_0.json")
    _save_json(btcv_datalist, btcv_json)
    pretrain_json = os.path.join(root, "datalist_pretrain.json")
    _save_json(pretrain, pretrain_json)
    return {
        "root": root,
        "datalist_pretrain": pretrain_json,
        "btcv_dir": btcv_dir,
        "btcv_datalist": btcv_json,
        "brats_dir": brats_dir,
    }
