"""Download cache against a local HTTP server: hash checks (downloads and files already cached),
interruptions, offline; ``resnets weights list/download``."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import os
import socket
import threading
import time

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
    digest = hashlib.sha256(httpd.files["a.bin"]).hexdigest()
    with pytest.raises(ResnetsError, match="cut short"):
        hub.cached_download(f"{url}/cut/a.bin", "a.bin", hash_prefix=digest[:8], progress=False)
    assert not cache.exists() or not any(cache.iterdir())


def test_file_without_known_hash_is_not_fetched(server, cache):
    httpd, url = server
    httpd.files["a.bin"] = b"payload"
    with pytest.raises(ResnetsError, match="unchecked"):
        hub.cached_download(f"{url}/a.bin", "a.bin", progress=False)
    assert httpd.requests == []


def test_cached_file_is_hash_checked_on_every_use(server, cache):
    httpd, url = server
    good = b"z" * 100_000
    digest = hashlib.sha256(good).hexdigest()
    cache.mkdir()
    (cache / "a.bin").write_bytes(b"not the published file")
    with pytest.raises(ResnetsError) as error:
        hub.cached_download(f"{url}/a.bin", "a.bin", hash_prefix=digest[:8], progress=False)
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(cache / "a.bin")) and digest[:8] in message
    assert (cache / "a.bin").read_bytes() == b"not the published file" and httpd.requests == []
    (cache / "a.bin").write_bytes(good)  # put there by hand, as the offline message says
    assert hub.cached_download(f"{url}/a.bin", "a.bin", hash_prefix=digest[:8], progress=False) == cache / "a.bin"
    assert httpd.requests == []


def test_abandoned_partial_downloads_are_removed(server, cache):
    httpd, url = server
    httpd.files["a.bin"] = b"q" * 1000
    cache.mkdir()
    old = cache / ".a.bin.123-ab.tmp.0123abcd.partial"
    fresh = cache / ".a.bin.124-cd.tmp.4567abcd.partial"
    for leftover in (old, fresh):
        leftover.write_bytes(b"half")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    hub.cached_download(f"{url}/a.bin", "a.bin", hash_prefix=hashlib.sha256(b"q" * 1000).hexdigest()[:8],
                        progress=False)
    assert not old.exists() and fresh.exists()


def _closed_port() -> int:
    with socket.socket() as probe:  # a port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_offline_gives_one_line_naming_the_file_and_place(cache):
    port = _closed_port()
    with pytest.raises(ResnetsError, match="offline") as error:
        hub.cached_download(f"http://127.0.0.1:{port}/r.pth", "r.pth", hash_prefix="abcd1234", progress=False)
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


def _resnet18_file(tmp_path) -> tuple[bytes, torch.nn.Module]:
    reference = randomise(torchvision.models.resnet18())
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    return (tmp_path / "r18.pth").read_bytes(), reference


def _registered(monkeypatch, **changes) -> pretrained.PretrainedWeights:
    entry = pretrained.get_pretrained("resnet18", "imagenet")
    patched = dataclasses.replace(entry, **changes)
    monkeypatch.setitem(pretrained._registry(), ("resnet18", "imagenet"), patched)
    return patched


def test_hand_placed_cache_file_checked_against_registry(tmp_path, cache, monkeypatch, run_cli):
    """The offline message says to put the file in the cache: a wrong one is refused, the right one used."""
    body, reference = _resnet18_file(tmp_path)
    digest = hashlib.sha256(body).hexdigest()
    entry = _registered(monkeypatch, url=f"http://127.0.0.1:{_closed_port()}/resnet18-{digest[:8]}.pth",
                        filename=f"resnet18-{digest[:8]}.pth", hash_prefix=digest[:8])
    cache.mkdir()
    wrong = body[:-1] + bytes([body[-1] ^ 1])  # one bit flipped
    (cache / entry.filename).write_bytes(wrong)
    with pytest.raises(ResnetsError, match="not the expected"):
        create_model("resnet18", weights="imagenet")
    status, out, err = run_cli("weights", "download", "resnet18")
    assert status == 2 and out == "" and len(err.strip().splitlines()) == 1 and entry.filename in err
    assert "Traceback" not in err and (cache / entry.filename).read_bytes() == wrong

    (cache / entry.filename).write_bytes(body)
    model = create_model("resnet18", weights="imagenet").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    status, out, _ = run_cli("weights", "download", "resnet18:imagenet", "--no-progress")
    assert status == 0 and out.strip() == str(cache / entry.filename)


def test_weights_download_and_list_cli(server, tmp_path, cache, monkeypatch, run_cli):
    httpd, url = server
    body, _ = _resnet18_file(tmp_path)
    digest = hashlib.sha256(body).hexdigest()
    httpd.files["r18.pth"] = body
    entry = _registered(monkeypatch, url=f"{url}/r18.pth", filename="r18.pth", hash_prefix=digest[:8])
    status, out, _ = run_cli("weights", "list", "resnet18", "--json")
    rows = json.loads(out)
    assert status == 0 and {(r["tag"], r["cached"]) for r in rows} >= {("imagenet", False), ("IMAGENET1K_V1", False)}
    status, out, err = run_cli("weights", "download", "resnet18")
    assert status == 0 and out.strip() == str(cache / "r18.pth") and (cache / "r18.pth").read_bytes() == body
    assert "r18" in err or "B/s" in err or "%" in err  # the progress bar, on stderr
    rows = json.loads(run_cli("weights", "list", "resnet18", "--json")[1])
    assert next(r for r in rows if r["tag"] == "imagenet")["cached"] is True
    assert run_cli("weights", "list")[0] == 0

    _registered(monkeypatch, url=f"http://127.0.0.1:{_closed_port()}/x-{digest[:8]}.pth",
                filename=f"x-{digest[:8]}.pth", hash_prefix=entry.hash_prefix)
    status, out, err = run_cli("weights", "download", "resnet18")
    assert status == 2 and len(err.strip().splitlines()) == 1 and "offline" in err
    assert str(cache / f"x-{digest[:8]}.pth") in err and "Traceback" not in err
    status, _, err = run_cli("weights", "download", "resnet20")
    assert status == 2 and "no pretrained weights" in err
