"""
Generate the synthetic sample data set (BTCV-style CT and BraTS-style MRI phantoms).

Example::

    python -m tools.sample_data --output_dir data/sample
    python -m tools.sample_data --output_dir data/tiny --num_ct 2 --num_brain 2 \
        --ct_shape "[64,64,32]" --brain_shape "[48,48,48]" --num_validation 1
"""

from __future__ import annotations

from collections.abc import Sequence

import fire

from monai_dae.data.phantoms import write_sample_dataset


def generate(
    output_dir: str = "data/sample",
    num_ct: int = 6,
    num_brain: int = 6,
    seed: int = 0,
    ct_shape: Sequence[int] = (96, 96, 48),
    brain_shape: Sequence[int] = (80, 80, 64),
    num_validation: int = 2,
) -> None:
    """
    Write the sample data set and print the resulting paths.

    Args:
        output_dir: root folder of the data set.
        num_ct: number of CT cases (BTCV layout), at least 2.
        num_brain: number of brain MRI cases (BraTS 2018 layout), at least 2.
        seed: base random seed; the same seed gives identical data.
        ct_shape: spatial shape of the CT volumes.
        brain_shape: spatial shape of the MRI volumes.
        num_validation: number of validation cases for each of CT and MRI.
    """
    paths = write_sample_dataset(
        output_dir,
        num_ct=num_ct,
        num_brain=num_brain,
        seed=seed,
        ct_shape=tuple(ct_shape),
        brain_shape=tuple(brain_shape),
        num_validation=num_validation,
    )
    for key, path in paths.items():
        print(f"{key}: {path}")


if __name__ == "__main__":
    fire.Fire(generate)
