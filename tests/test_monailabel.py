"""
MONAI Label 0.8.5 serving the dae_btcv_seg bundle (``tools/monailabel_serve.py``): a real server on 127.0.0.1,
started from the separate ``.venv-monailabel`` environment, answers a multipart upload of a CT phantom with a
label map on the input's grid.

Run with ``make test-monailabel``; skipped when that environment is absent (``make monailabel-env`` makes it).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch
from monai.bundle import ConfigParser

from monai_dae.data.phantoms import BTCV_ORGANS, make_ct_phantom
from tools.monailabel_serve import BUNDLE, INSTALLED_MARKER, setup_app

from bundle_testing import REPO, tool_command

VENV = Path(os.environ.get("MONAILABEL_VENV", REPO / ".venv-monailabel"))
INFERENCE = REPO / "bundles" / BUNDLE / "configs" / "inference.json"
FEATURE = 12
START_TIMEOUT = 300
INFER_TIMEOUT = 600

pytestmark = [
    pytest.mark.monailabel,
    pytest.mark.skipif(
        not (VENV / INSTALLED_MARKER).is_file(),
        reason=f"MONAI Label environment {VENV} is not installed (make monailabel-env)",
    ),
]


def _random_model(path: Path, feature_size: int) -> None:
    """
    Save the state dict of a seeded, randomly initialised network of the bundle's inference config.

    Args:
        path: output ``model.pt``.
        feature_size: Swin UNETR feature size.
    """
    parser = ConfigParser()
    parser.read_config(str(INFERENCE))
    parser["feature_size"] = feature_size
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)


def _free_port() -> int:
    """
    A TCP port that is free on 127.0.0.1 right now.

    Returns:
        the port number.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(log: Path, lines: int = 40) -> str:
    """
    The last lines of the server log, for failure messages.

    Args:
        log: log file.
        lines: number of lines.

    Returns:
        the text.
    """
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"


def _wait_until_up(server: subprocess.Popen, url: str, log: Path) -> dict:
    """
    Poll the server's ``/info/`` until it answers, failing if the server exits or does not start in time.

    Args:
        server: the server process.
        url: base URL.
        log: server log, quoted on failure.

    Returns:
        the app info JSON.
    """
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"MONAI Label server exited with status {server.returncode}:\n{_log_tail(log)}")
        try:
            response = requests.get(f"{url}/info/", timeout=5)
            if response.status_code == 200:
                return response.json()
        except requests.ConnectionError:
            pass
        time.sleep(1)
    pytest.fail(f"MONAI Label server did not answer within {START_TIMEOUT} s:\n{_log_tail(log)}")


def test_weights_that_do_not_fit_the_served_config_are_refused(tmp_path):
    """Feature-size-12 weights against the bundle's default (48) fail at setup, naming the weights file."""
    model = tmp_path / "model.pt"
    _random_model(model, FEATURE)
    with pytest.raises(ValueError, match=r"model\.pt does not fit the network .*inference\.json"):
        setup_app(str(tmp_path / "app"), model=str(model), venv=str(VENV))
    assert not (tmp_path / "app" / "model" / BUNDLE).exists()  # no half-made app left to serve


def test_server_segments_an_uploaded_ct(tmp_path):
    """
    Upload a CT to ``/infer/dae_btcv_seg``: the label map comes back on the input's grid (shape and affine)
    with labels in 0..13, and ``/info/`` lists the bundle's 13 organ labels.
    """
    model = tmp_path / "model.pt"
    _random_model(model, FEATURE)
    served = Path(setup_app(str(tmp_path / "app"), model=str(model), overrides={"feature_size": FEATURE},
                            venv=str(VENV)))
    assert ConfigParser.load_config_file(str(served / "configs" / "inference.json"))["feature_size"] == FEATURE

    image, _, affine = make_ct_phantom(seed=3)
    ct_file = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), str(ct_file))

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    command = tool_command(
        "monailabel_serve", "serve",
        "--app_dir", str(tmp_path / "app"), "--studies", str(tmp_path / "studies"), "--port", str(port),
        "--venv", str(VENV),
    )  # fmt: skip
    started = time.monotonic()
    with open(log, "w") as log_file:
        # from the checkout's root (python -m puts it on sys.path), not with tool_env(): the server that the
        # tool starts inherits the environment, and a PYTHONPATH would reach the MONAI Label environment
        server = subprocess.Popen(command, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        info = _wait_until_up(server, url, log)
        start_seconds = time.monotonic() - started
        labels = info["models"][BUNDLE]["labels"]
        assert labels == {organ: index + 1 for index, organ in enumerate(BTCV_ORGANS)}

        started = time.monotonic()
        with open(ct_file, "rb") as upload:
            response = requests.post(
                f"{url}/infer/{BUNDLE}",
                params={"output": "image"},
                files={"file": ("ct.nii.gz", upload, "application/octet-stream")},
                data={"params": "{}"},
                timeout=INFER_TIMEOUT,
            )
        infer_seconds = time.monotonic() - started
        assert response.status_code == 200, f"{response.status_code} {response.text[:500]}\n{_log_tail(log)}"
        label_file = tmp_path / "label.nii.gz"
        label_file.write_bytes(response.content)
        label = nib.load(str(label_file))
        values = np.asarray(label.dataobj)
        assert values.shape == image.shape
        np.testing.assert_allclose(label.affine, affine, atol=1e-4)
        assert np.array_equal(values, np.round(values))
        assert set(np.unique(values).astype(int)) <= set(range(len(BTCV_ORGANS) + 1))
        print(f"MONAI Label: server up in {start_seconds:.1f} s, inference of a {image.shape} CT in "
              f"{infer_seconds:.1f} s (labels {sorted(int(v) for v in np.unique(values))})")
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
