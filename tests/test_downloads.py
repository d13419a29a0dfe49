"""
Downloads through MONAI's own command line (``python -m monai.bundle ...`` in a subprocess) from a real HTTP
server on 127.0.0.1: the bundles' ``large_files.yml`` (format, then a download of the authors' weights
archive followed by the documented conversion step), a hash mismatch, a dead URL and a truncated transfer
(an error, and no file left in ``models/``), and a bundle zip installed with ``download --url``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml
from monai.bundle import ConfigParser

from tools.convert_checkpoint import convert_checkpoint

from bundle_testing import REPO
from test_weights import make_dae_official

BUNDLES = ("dae_pretrain", "dae_btcv_seg", "dae_brats_cls")
AUTHORS_URL = (
    "https://developer.download.nvidia.com/assets/Clara/monai/tutorials/dae_weights_midl_2024/DAE_SSL_WEIGHTS.zip"
)
TIMEOUT = 300


class _Handler(SimpleHTTPRequestHandler):
    """Serves a folder; ``/truncated/<name>`` announces 100000 bytes, sends 100 and closes the connection."""

    def do_GET(self):  # noqa: N802 (http.server API)
        if self.path.startswith("/truncated/"):
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"\0" * 100)
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, format, *args):  # noqa: A002 (http.server API)
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """An HTTP server on 127.0.0.1 (ephemeral port) serving a folder; yields (base URL, folder)."""
    root = tmp_path_factory.mktemp("served")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def monai_bundle(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle ARGS`` in a subprocess, never through a proxy."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    for key in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(key, None)
    command = [sys.executable, "-m", "monai.bundle", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd, env=env)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_large_files(bundle: Path, entries: list[dict]) -> None:
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "large_files.yml").write_text(yaml.safe_dump({"large_files": entries}, sort_keys=False))


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("bundle", BUNDLES)
def test_large_files_format(bundle):
    """MONAI's format: path inside the bundle, https URL, sha256 type; the authors' archive; no made-up hash."""
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "large_files.yml"))
    entries = parser.get()["large_files"]
    assert [e["path"] for e in entries] == ["models/DAE_SSL_WEIGHTS.zip"]
    for entry in entries:
        assert set(entry) == {"path", "url", "hash_val", "hash_type"}
        assert entry["url"] == AUTHORS_URL and entry["hash_type"] == "sha256"
        assert entry["hash_val"] == "" or re.fullmatch(r"[0-9a-f]{64}", entry["hash_val"])
        assert not os.path.isabs(entry["path"]) and ".." not in Path(entry["path"]).parts


def test_download_large_files_then_convert(server, tmp_path):
    """The real dae_pretrain large_files.yml pointed at the local server, plus a hashed entry; then the
    documented conversion of the downloaded archive into models/model.pt."""
    base, served = server
    checkpoint = tmp_path / "ckpt_best.pth"
    source = make_dae_official(str(checkpoint))
    with zipfile.ZipFile(served / "DAE_SSL_WEIGHTS.zip", "w") as archive:
        archive.write(checkpoint, "DAE_SSL_WEIGHTS/ckpt_best.pth")
    (served / "small.pt").write_bytes(b"weights" * 100)

    bundle = tmp_path / "dae_pretrain"
    shutil.copytree(REPO / "bundles" / "dae_pretrain" / "configs", bundle / "configs")
    entries = yaml.safe_load((REPO / "bundles" / "dae_pretrain" / "large_files.yml").read_text())["large_files"]
    for entry in entries:
        entry["url"] = entry["url"].replace(AUTHORS_URL.rsplit("/", 1)[0], base)
    entries.append({"path": "models/small.pt", "url": f"{base}/small.pt", "hash_val": sha256(served / "small.pt"),
                    "hash_type": "sha256"})
    write_large_files(bundle, entries)

    result = monai_bundle("download_large_files", "--bundle_path", str(bundle), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sha256(bundle / "models" / "DAE_SSL_WEIGHTS.zip") == sha256(served / "DAE_SSL_WEIGHTS.zip")
    assert sha256(bundle / "models" / "small.pt") == sha256(served / "small.pt")
    assert "file integrity is NOT verified" in result.stderr  # the entry without a hash
    assert re.search(r"Verified 'small.pt', sha256", result.stdout + result.stderr)

    report = convert_checkpoint(str(bundle / "models" / "DAE_SSL_WEIGHTS.zip"), str(bundle), complete=True)
    written = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert report.num_loaded == 163 and len(written) == 171  # + 4 legacy_order records of the legacy merging
    torch.testing.assert_close(written["swinViT.layers4.0.blocks.1.mlp.linear2.weight"],
                               source.state_dict()["swinViT.layers4.0.blocks.1.mlp.linear2.weight"], rtol=0, atol=0)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FAILURES = {
    "hash_mismatch": r"HashCheckError: sha256 hash check of downloaded file failed",
    "not_found": r"HTTP Error 404",
    "refused": r"Connection refused",
    "truncated": r"ContentTooShortError|retrieval incomplete",
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_failed_download_leaves_nothing(case, server, tmp_path):
    base, served = server
    (served / "good.pt").write_bytes(b"good weights" * 100)
    url, hash_val = {
        "hash_mismatch": (f"{base}/good.pt", "0" * 64),
        "not_found": (f"{base}/missing.pt", ""),
        "refused": (f"http://127.0.0.1:{_closed_port()}/good.pt", ""),
        "truncated": (f"{base}/truncated/good.pt", ""),
    }[case]
    bundle = tmp_path / "bundle"
    write_large_files(bundle, [{"path": "models/model.pt", "url": url, "hash_val": hash_val, "hash_type": "sha256"}])

    result = monai_bundle("download_large_files", "--bundle_path", str(bundle), cwd=tmp_path)
    assert result.returncode != 0
    assert re.search(FAILURES[case], result.stderr), result.stderr[-2000:]
    assert files_under(bundle) == ["large_files.yml"]  # no partial or wrong file in models/


def test_download_bundle_zip(server, tmp_path):
    """``download --name N --url .../N_v1.0.0.zip`` installs a bundle zip (top folder N/) into bundle_dir/N."""
    base, served = server
    name = "dae_btcv_seg"
    with zipfile.ZipFile(served / f"{name}_v1.0.0.zip", "w") as archive:
        for path in sorted((REPO / "bundles" / name).rglob("*")):
            relative = path.relative_to(REPO / "bundles" / name)
            if path.is_file() and relative.parts[0] in ("configs", "docs", "LICENSE", "large_files.yml"):
                archive.write(path, f"{name}/{relative}")
    bundle_dir = tmp_path / "installed"

    result = monai_bundle("download", "--name", name, "--url", f"{base}/{name}_v1.0.0.zip", "--bundle_dir",
                          str(bundle_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    configs = sorted((REPO / "bundles" / name / "configs").glob("*.json"))
    assert {"inference.json", "evaluate.json", "metadata.json", "multi_gpu_train.json"} <= {c.name for c in configs}
    for config in configs:
        assert (bundle_dir / name / "configs" / config.name).read_bytes() == config.read_bytes()
    assert (bundle_dir / name / "large_files.yml").is_file() and (bundle_dir / name / "LICENSE").is_file()
    assert (bundle_dir / f"{name}.zip").is_file()  # MONAI keeps the downloaded archive next to the bundle
