"""
Unpack a bundle zip (e.g. one written by ``tools/export_bundle.py``) safely: every entry is checked *before*
anything is written, and the bundle appears in place only once completely extracted.

``python -m monai.bundle download --url file://...`` (MONAI 1.6.1) checks each entry as it extracts it: an
archive with a path-traversal entry (``../x``, ``/abs``) after good ones stops half-way and leaves a partial
folder, which a retry then takes for a finished extraction ("Non-empty folder exists, skipped extracting") and
exits 0. Here an archive with an absolute path, a ``..`` component, a drive letter or a symbolic-link entry is
refused with a message naming the entry and nothing is written; the files go to a hidden temporary folder
next to the target, renamed into place at the end; an existing bundle folder is never overwritten.

Example::

    python -m tools.install_bundle dist/dae_btcv_seg_v0.1.0.zip --bundle_dir ./bundles_installed
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

__all__ = ["check_zip_entries", "install_bundle"]


def check_zip_entries(zip_path: str | Path) -> list[zipfile.ZipInfo]:
    """
    Check every entry of a zip archive without extracting anything.

    Args:
        zip_path: the archive.

    Returns:
        its entries.

    Raises:
        ValueError: naming the archive and the first unsafe entry (absolute path, ``..`` component, drive
            letter, backslash path, symbolic link).
    """
    with zipfile.ZipFile(zip_path) as archive:
        entries = archive.infolist()
    for info in entries:
        name = info.filename
        parts = PurePosixPath(name).parts
        unsafe = (
            name.startswith(("/", "\\"))
            or "\\" in name
            or ".." in parts
            or (len(name) > 1 and name[1] == ":")
            or stat.S_ISLNK(info.external_attr >> 16)
        )
        if unsafe:
            raise ValueError(
                f"archive '{zip_path}' has an unsafe entry '{name}' (absolute path, '..', drive letter or symbolic "
                "link): it could write outside the target folder. Nothing was extracted; do not use this archive."
            )
    return entries


def install_bundle(zip_path: str, bundle_dir: str = ".") -> str:
    """
    Extract a bundle zip (one top-level folder ``<name>/``) into ``bundle_dir/<name>``.

    Args:
        zip_path: the bundle zip.
        bundle_dir: folder the bundle folder is created in.

    Returns:
        the path of the installed bundle.

    Raises:
        ValueError: an unsafe entry (see :py:func:`check_zip_entries`), or not exactly one top-level folder.
        FileExistsError: the bundle folder already exists (remove it to reinstall).
    """
    entries = check_zip_entries(zip_path)
    tops = {PurePosixPath(info.filename).parts[0] for info in entries if info.filename.strip("/")}
    if len(tops) != 1:
        raise ValueError(f"archive '{zip_path}' must hold one top-level bundle folder, found {sorted(tops)[:10]}.")
    (name,) = tops
    target = Path(bundle_dir).resolve() / name
    if target.exists():
        raise FileExistsError(f"'{target}' already exists; remove it to install '{zip_path}' again.")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=target.parent))
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for info in entries:
                destination = staging / info.filename
                if info.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, open(destination, "wb") as stream:
                    shutil.copyfileobj(source, stream)
        os.replace(staging / name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"installed '{zip_path}' as '{target}'.")
    return str(target)


def main() -> None:
    """Command-line entry point (``python -m tools.install_bundle --help``)."""
    import fire

    fire.Fire(install_bundle, serialize=lambda path: None)


if __name__ == "__main__":
    main()
