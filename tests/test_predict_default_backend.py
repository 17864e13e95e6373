"""`predict` and `evaluate` default to `auto` (issue 25): eager for a few images, the probed ONNX
runtime from the count at which its export pays back; the same answers either way."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from _data_helpers import shared_file
from conftest import randomize_batchnorm
from resnets import inference
from resnets.cli import main
from resnets.inference import onnxruntime_available, worth_probing
from resnets import create_model
from resnets.weights.format import save_weights

pytestmark = pytest.mark.usefixtures("one_thread")
needs_ort = pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime not installed")
CLASSES = ["n01440764", "n02102040", "n02979186"]  # Imagenette's first three WordNet ids


@pytest.fixture(autouse=True)
def fresh_choices(tmp_path, monkeypatch):
    """auto's memory and disk cache emptied for each test (never the user's)."""
    monkeypatch.setenv(inference.CACHE_ENV, str(tmp_path / "backends.json"))
    monkeypatch.setattr(inference, "_CHOICES", {})


@pytest.fixture
def onnx_wins(monkeypatch):
    """Every probe finds onnxruntime fastest, and any image count worth the export: the default
    path then runs the ONNX graph, whose answers the tests compare with eager's."""
    monkeypatch.setattr(inference, "AUTO_MIN_IMAGES", 1)
    monkeypatch.setattr(inference, "probe_backends", lambda modules, example: {
        name: (1.0 if name == "onnxruntime" else 2.0) for name in modules})


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Real photos (Imagenette): three classes of four, as class folders."""
    archive_path = shared_file("imagenette-224-train.zip", "real photos for the default backend")
    root = tmp_path_factory.mktemp("default-photos")
    with zipfile.ZipFile(archive_path) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".JPEG"))
        for cls in CLASSES:
            (root / cls).mkdir()
            for name in [n for n in names if n.split("/")[1] == cls][:4]:
                (root / cls / Path(name).name).write_bytes(archive.read(name))
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    model = randomize_batchnorm(create_model("resnet20", num_classes=3)).eval()
    model.class_names = list(CLASSES)
    return save_weights(tmp_path_factory.mktemp("default-model") / "model.safetensors", model)


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_the_rule_weighs_the_images_against_the_setup():
    probe = {"backend": "onnxruntime", "probe_ms": {"onnxruntime": 10.0, "eager": 15.0},
             "setup_ms": {"onnxruntime": 2000.0, "eager": 0.0}}
    assert worth_probing(probe, "eager", 401) == (True, "")  # 401 x 5 ms > 2 s
    worth, why = worth_probing(probe, "eager", 399)
    assert not worth and "399" in why and "2.00 s" in why
    assert worth_probing(probe, "eager", 100, batch=4)[0] is False  # the probe's ms were per call of 4 images
    assert worth_probing(probe, "eager", 1700, batch=4)[0] is True  # 1700 / 4 x 5 ms > 2 s
    assert worth_probing(probe, "eager", None) == (True, "")  # a server: no count, always
    assert worth_probing({**probe, "backend": "eager"}, "eager", 1) == (True, "")  # eager chosen: nothing to build
    # unprobed (or an old entry without setup times): the fixed threshold
    assert worth_probing(None, "eager", inference.AUTO_MIN_IMAGES)[0] is True
    assert worth_probing(None, "eager", inference.AUTO_MIN_IMAGES - 1)[0] is False
    assert worth_probing({"backend": "onnxruntime", "probe_ms": {}}, "eager", 3)[0] is False


@needs_ort
def test_few_images_run_eager_without_export_or_probe(weights, monkeypatch):
    from resnets.predict import load_for_inference

    monkeypatch.setattr(inference, "export_onnx", lambda *a, **k: pytest.fail("exported for 3 images"))
    monkeypatch.setattr(inference, "probe_backends", lambda *a, **k: pytest.fail("probed for 3 images"))
    predictor = load_for_inference(weights, backend="auto", images=3)
    assert predictor.backend == "eager" and "3 image(s)" in predictor.model.auto_probe["source"]


@needs_ort
def test_a_remembered_probe_decides_by_its_break_even(weights, monkeypatch):
    from resnets.predict import load_for_inference

    first = load_for_inference(weights, backend="auto")  # a server's way: probed, and remembered
    choice = first.model.auto_probe
    assert set(choice["setup_ms"]) == set(choice["probe_ms"])
    assert choice["setup_ms"]["onnxruntime"] > choice["setup_ms"]["eager"]  # the export is the ONNX runtimes' cost
    forced = {"backend": "onnxruntime", "probe_ms": {"onnxruntime": 1.0, "eager": 2.0},
              "setup_ms": {"onnxruntime": 100.0, "eager": 0.0}}
    monkeypatch.setattr(inference, "_CHOICES", {key: forced for key in inference._CHOICES})
    assert load_for_inference(weights, backend="auto", images=99).backend == "eager"  # saves 99 ms < 100 ms
    assert load_for_inference(weights, backend="auto", images=101).backend == "onnxruntime"


@needs_ort
def test_predict_default_matches_eager_on_real_photos(weights, photos, onnx_wins, capsys):
    status, out, _ = run_cli(["predict", weights, photos, "--topk", "3", "--json"], capsys)
    assert status == 0
    default = json.loads(out)
    status, out, _ = run_cli(["predict", weights, photos, "--topk", "3", "--json", "--backend", "eager"], capsys)
    eager = json.loads(out)
    assert len(default) == len(eager) == 12
    for a, b in zip(default, eager):
        assert a["path"] == b["path"] and a["top"][0]["class"] == b["top"][0]["class"]
        assert [t["probability"] for t in a["top"]] == pytest.approx([t["probability"] for t in b["top"]], abs=1e-4)


@needs_ort
def test_the_default_really_ran_onnx_for_many_images(weights, photos, onnx_wins):
    from resnets.predict import load_for_inference

    assert load_for_inference(weights, backend="auto", images=12).backend == "onnxruntime"


@needs_ort
def test_evaluate_default_matches_eager_on_real_photos(weights, photos, onnx_wins, capsys, tmp_path):
    status, out, _ = run_cli(["evaluate", weights, "--data", photos, "--json", "--confusion", tmp_path / "a.png"],
                             capsys)
    assert status == 0
    default = json.loads(out)
    status, out, _ = run_cli(["evaluate", weights, "--data", photos, "--json", "--backend", "eager",
                              "--confusion", tmp_path / "b.png"], capsys)
    eager = json.loads(out)
    assert default["backend"] == "onnxruntime" and eager["backend"] == "eager"
    assert default["count"] == eager["count"] == 12
    assert default["top1"] == eager["top1"] and default["top5"] == eager["top5"]
    assert default["loss"] == pytest.approx(eager["loss"], abs=1e-4)


def test_the_help_says_the_rule(capsys):
    for command in ("predict", "evaluate"):
        status, out, _ = run_cli([command, "--help"], capsys)
        assert status == 0 and "256" in " ".join(out.split()) and "auto (default" in " ".join(out.split())
