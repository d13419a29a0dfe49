"""Where the bundles of this checkout are, for the tools that take a bundle by name or by folder."""

from __future__ import annotations

from pathlib import Path

__all__ = ["REPO_ROOT", "BUNDLES_DIR", "bundle_names", "resolve_bundle"]

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO_ROOT / "bundles"


def bundle_names() -> list[str]:
    """
    Returns:
        the names of the bundles of this checkout (folders of ``bundles/`` with ``configs/metadata.json``), sorted.
    """
    return sorted(p.name for p in BUNDLES_DIR.iterdir() if (p / "configs" / "metadata.json").is_file())


def resolve_bundle(bundle: str, required: str = "configs/metadata.json") -> Path:
    """
    The root folder of a bundle given by folder or by name.

    Args:
        bundle: a bundle folder, or the name of a bundle of this checkout (``dae_pretrain``, ``dae_btcv_seg``,
            ``dae_brats_cls``).
        required: the file, relative to the bundle root, that the caller needs (it marks a bundle folder).

    Returns:
        the absolute bundle root.

    Raises:
        FileNotFoundError: neither a bundle folder nor a bundle of this checkout; the message lists the bundles.
    """
    for candidate in (Path(bundle), BUNDLES_DIR / bundle):
        if (candidate / required).is_file():
            return candidate.resolve()
    raise FileNotFoundError(
        f"bundle '{bundle}' not found: expected a bundle folder with {required} or one of {bundle_names()}."
    )
