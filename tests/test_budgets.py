"""Budgets on what untrusted inputs make: the pixels of every resize and crop (a tiny PNG of
100,000 x 1 pixels must not become a 26 GB resize), and class counts backed by the data (one
``.cls`` of 999999 must not build a million-class head)."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pytest
from PIL import Image

from resnets.cli import main

ADDRESS_SPACE = 3 * 2**30
CLASSES = ["a", "b", "c"]


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 90)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels but holds almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


HOSTILE = {"wide": lambda: _png(100_000, 1), "tall": lambda: _png(1, 100_000),
           "declared": lambda: _png_header(20_000, 20_000)}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A small ResNet with ImageNet's geometry (shorter side to 256, crop 224)."""
    import torch

    from resnets.factory import create_model
    from resnets.preprocessing import Preprocessing
    from resnets.weights.format import save_weights

    torch.manual_seed(0)
    net = create_model("resnet20", num_classes=len(CLASSES))
    net.preprocessing = Preprocessing.for_input_size(224, crop_fraction=0.875)
    return save_weights(tmp_path_factory.mktemp("model") / "m.safetensors", net, class_names=CLASSES)


# torch maps gigabytes of address space when imported (CUDA libraries): the limit is 3 GB beyond that
LIMITED_PREDICT = """import os, resource, sys
import torch
from resnets.cli import main
pages = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
hard = resource.getrlimit(resource.RLIMIT_AS)[1]
limit = pages + %d if hard == resource.RLIM_INFINITY else min(hard, pages + %d)
resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
main(sys.argv[1:])
""" % (ADDRESS_SPACE, ADDRESS_SPACE)


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_predict_refuses_an_image_whose_resize_is_over_the_budget(model, tmp_path, kind):
    image = tmp_path / f"{kind}.png"
    image.write_bytes(HOSTILE[kind]())
    assert len(image.read_bytes()) < 2000
    done = subprocess.run([sys.executable, "-c", LIMITED_PREDICT, "predict", str(model), str(image), "--device",
                           "cpu"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert "Traceback" not in done.stderr and lines[-1].startswith("resnets: error: "), done.stderr
    if kind == "declared":  # refused by the decoder: predict skips it as unreadable (one warning), then fails
        assert len(lines) == 2 and "skipped unreadable image" in lines[0], done.stderr
    else:
        assert len(lines) == 1 and "pixels" in lines[0], done.stderr


def test_serve_answers_4xx_to_an_image_over_the_budget_then_serves_on(model):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from resnets.predict import load_for_inference
    from resnets.serve import ServeConfig, create_app

    app = create_app(load_for_inference(model, backend="eager"), ServeConfig(name="m", topk=2))
    with TestClient(app) as client:
        for kind, make in sorted(HOSTILE.items()):
            answer = client.post("/predictions/m", content=make())
            assert answer.status_code in (400, 413), (kind, answer.status_code, answer.text)
            assert "\n" not in answer.json()["error"] and "pixels" in answer.json()["error"]
            good = client.post("/predictions/m", content=_png(300, 200))
            assert good.status_code == 200, good.text


def test_the_budget_checks_every_resize_and_crop():
    from resnets.preprocessing import MAX_PIXELS, Preprocessing, PixelBudgetError

    record = Preprocessing.for_input_size(224, crop_fraction=0.875)
    assert record.resized_size(640, 480) == (341, 256)
    for width, height in ((100_000, 1), (1, 100_000), (MAX_PIXELS + 1, 1)):
        with pytest.raises(PixelBudgetError, match=f"{width}x{height}.*{MAX_PIXELS}"):
            record.resized_size(width, height)
        with pytest.raises(PixelBudgetError):
            record.crop_box(width, height)
    tiny = Preprocessing(input_size=8192, resize_size=1)  # a crop padding a thin image to 8192 a side
    with pytest.raises(PixelBudgetError):
        tiny.resize_crop(Image.new("RGB", (40_000, 1)))


def test_batch_augment_eval_resize_is_budgeted():
    import torch

    from resnets.data import BatchAugment
    from resnets.preprocessing import PixelBudgetError

    augment = BatchAugment("imagenet", 224, train=False)
    assert augment(torch.zeros(1, 3, 300, 200, dtype=torch.uint8)).shape == (1, 3, 224, 224)
    with pytest.raises(PixelBudgetError):
        augment(torch.zeros(1, 3, 1, 600_000, dtype=torch.uint8))


# -- class counts ----------------------------------------------------------------------------------
def _shard(folder: Path, labels: list[int], name: str = "train-000000.tar") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / name, "w") as archive:
        for key, label in enumerate(labels):
            for extension, data in (("png", _png(8, 8)), ("cls", str(label).encode())):
                info = tarfile.TarInfo(f"{key:06d}.{extension}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return folder


def _one_line_exit_2(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    return err


def test_a_label_far_beyond_the_data_is_refused_naming_shard_and_sample(tmp_path, capsys):
    shards = _shard(tmp_path / "shards", [0, 1, 2, 0, 1, 999999])
    err = _one_line_exit_2(["data", "info", str(shards)], capsys)
    assert "train-000000.tar:000005.png" in err and "999999" in err
    err = _one_line_exit_2(["train", "--data", str(shards), "--epochs", "1", "--model", "resnet20",
                            "--out", str(tmp_path / "run"), "--device", "cpu"], capsys)
    assert "train-000000.tar:000005.png" in err and "999999" in err
    assert not (tmp_path / "run").exists() or sum(f.stat().st_size for f in (tmp_path / "run").rglob("*")
                                                  if f.is_file()) < 2**20


def test_a_manifest_declaring_the_classes_admits_the_label(tmp_path, capsys):
    shards = _shard(tmp_path / "shards", [0, 1, 2, 0, 1, 999999])
    manifest = {"format": "resnets-wds", "version": 1, "classes": [str(k) for k in range(1_000_000)],
                "splits": {"train": ["train-000000.tar"]}}
    (shards / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "info", str(shards)])
    assert exit_info.value.code in (0, None)
    assert "1000000" in capsys.readouterr().out.replace(",", "")


def test_ordinary_labels_are_unchanged(tmp_path):
    from resnets.data import open_source

    source = open_source(_shard(tmp_path / "shards", [0, 3, 7, 999]))  # under the floor: class numbers
    assert len(source.classes) == 1000


def test_parquet_integer_labels_are_bounded_too(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    images = [{"bytes": _png(8, 8), "path": f"{k}.png"} for k in range(4)]
    pq.write_table(pa.table({"image": images, "label": [0, 1, 2, 500_000]}), tmp_path / "train.parquet")
    err = _one_line_exit_2(["data", "info", str(tmp_path / "train.parquet")], capsys)
    assert "500000" in err and "train.parquet" in err
