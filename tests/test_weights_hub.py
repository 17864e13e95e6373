"""Download cache against a local HTTP server: hash checks, interruptions, offline."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import socket
import threading

import pytest
import torch
import torchvision

from resnets import ResnetsError, create_model
from resnets.weights import hub, pretrained
from weights_helpers import randomise


class _Server(http.server.ThreadingHTTPServer):
    files: dict[str, bytes]
    requests: list[str]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path.lstrip("/").removeprefix("cut/"))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path.startswith("/cut/"):  # close the connection half-way through the body
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.requests = {}, []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_good_file_is_cached_and_not_downloaded_again(server, cache):
    httpd, url = server
    httpd.files["a.bin"] = b"x" * 3_000_000
    digest = hashlib.sha256(httpd.files["a.bin"]).hexdigest()
    path = hub.cached_download(f"{url}/a.bin", "a.bin", sha256=digest, progress=False)
    assert path == cache / "a.bin" and path.read_bytes() == httpd.files["a.bin"]
    assert hub.cached_download(f"{url}/a.bin", "a.bin", sha256=digest, progress=False) == path
    assert httpd.requests == ["/a.bin"]


def test_wrong_hash_is_refused_and_not_cached(server, cache):
    httpd, url = server
    httpd.files["a.bin"] = b"payload"
    with pytest.raises(ResnetsError, match="corrupt") as error:
        hub.cached_download(f"{url}/a.bin", "a.bin", hash_prefix="deadbeef", progress=False)
    assert "\n" not in str(error.value) and str(cache / "a.bin") in str(error.value)
    assert not any(cache.iterdir())


def test_interrupted_transfer_leaves_nothing(server, cache):
    httpd, url = server
    httpd.files["a.bin"] = b"y" * 2_000_000
    with pytest.raises(ResnetsError, match="interrupted"):
        hub.cached_download(f"{url}/cut/a.bin", "a.bin", progress=False)
    assert not cache.exists() or not any(cache.iterdir())


def test_offline_gives_one_line_naming_the_file_and_place(cache):
    with socket.socket() as probe:  # a port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ResnetsError, match="offline") as error:
        hub.cached_download(f"http://127.0.0.1:{port}/r.pth", "r.pth", progress=False)
    assert "\n" not in str(error.value) and str(cache / "r.pth") in str(error.value)


def test_create_model_with_imagenet_weights_from_registry(server, cache, monkeypatch):
    httpd, url = server
    reference = randomise(torchvision.models.resnet18())
    torch.save(reference.state_dict(), cache.parent / "r18.pth")
    body = (cache.parent / "r18.pth").read_bytes()
    httpd.files["resnet18-test.pth"] = body
    entry = pretrained.get_pretrained("resnet18", "imagenet")
    patched = dataclasses.replace(entry, url=f"{url}/resnet18-test.pth", filename="resnet18-test.pth",
                                  hash_prefix=hashlib.sha256(body).hexdigest()[:8])
    monkeypatch.setitem(pretrained._registry(), ("resnet18", "imagenet"), patched)
    model = create_model("resnet18", weights="imagenet").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    assert model.class_names[0] == "tench" and model.preprocessing.input_size == 224


def test_registry_reads_torchvision_metadata():
    entry = pretrained.get_pretrained("resnet50", "IMAGENET1K_V2")
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    assert entry.url == weights.url and entry.hash_prefix == weights.url.rsplit("-", 1)[1][:8]
    assert entry.accuracy["acc@1"] == weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    assert entry.preprocessing.resize_size == 232 and entry.preprocessing.interpolation == "bilinear"
    assert pretrained.get_pretrained("resnet50").url == torchvision.models.ResNet50_Weights.DEFAULT.url
    assert len(entry.class_names) == 1000
    with pytest.raises(ResnetsError, match="IMAGENET1K_V1"):
        pretrained.get_pretrained("resnet18", "a1_in1k")
    with pytest.raises(ResnetsError, match="no pretrained weights"):
        pretrained.get_pretrained("resnet20")
