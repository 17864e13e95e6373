"""`resnets convert` and `resnets export`: success paths, and one line + status 2 for bad input."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torchvision

from resnets import create_model
from resnets.cli import main
from resnets.export import ONNX_INPUT, export
from weights_helpers import randomise


def _run(capsys, *argv):
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return exited.value.code, out, err


@pytest.fixture(scope="module")
def r18_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "r18.pth"
    torch.save(randomise(torchvision.models.resnet18()).state_dict(), path)
    return path


def test_convert_then_rebuild_without_a_name(tmp_path, capsys, r18_checkpoint):
    status, out, _ = _run(capsys, "convert", str(r18_checkpoint), str(tmp_path / "w.safetensors"))
    assert status == 0 and "resnet18" in out
    assert create_model(weights=str(tmp_path / "w.safetensors")).model_name == "resnet18"


class _Marker:
    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


def _bad_inputs(tmp_path, r18_checkpoint):
    data = r18_checkpoint.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 3])
    torch.save(torchvision.models.vgg11().state_dict(), tmp_path / "vgg.pth")
    _Marker.path = str(tmp_path / "pwned")
    torch.save({"payload": _Marker()}, tmp_path / "evil.pth")
    (tmp_path / "notes.xyz").write_text("hello")
    return {"truncated": ["convert", str(tmp_path / "cut.pth")],
            "not a ResNet": ["convert", str(tmp_path / "vgg.pth")],
            "NOT unpickled": ["convert", str(tmp_path / "evil.pth")],
            "cannot tell the format": ["convert", str(tmp_path / "notes.xyz")],
            "does not fit resnet50": ["convert", str(r18_checkpoint), "--model", "resnet50"]}


def test_bad_inputs_one_line_status_2(tmp_path, capsys, r18_checkpoint):
    for expected, argv in _bad_inputs(tmp_path, r18_checkpoint).items():
        status, out, err = _run(capsys, *argv, str(tmp_path / "out.safetensors"))
        assert status == 2, expected
        assert err.startswith("resnets: error: ") and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out.safetensors").exists()
    status, _, err = _run(capsys, "export", "resnet9000", "--format", "onnx", "--out", str(tmp_path / "m.onnx"))
    assert status == 2 and "neither a file" in err


@pytest.mark.slow
def test_onnx_export_of_resnet50_matches_pytorch_at_batch_1_and_7(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = randomise(create_model("resnet50"))
    export(model, "onnx", tmp_path / "r50.onnx", input_size=64)
    session = ort.InferenceSession(str(tmp_path / "r50.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        x = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            expected = model(x).numpy()
        assert np.abs(session.run(None, {ONNX_INPUT: x.numpy()})[0] - expected).max() < 1e-4


def test_export_cli_torchscript_from_weights_file(tmp_path, capsys, r18_checkpoint):
    status, _, _ = _run(capsys, "convert", str(r18_checkpoint), str(tmp_path / "w.safetensors"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (tmp_path / "w.safetensors").rename(run_dir / "weights.safetensors")
    status, out, _ = _run(capsys, "export", str(run_dir), "--format", "torchscript", "--out",
                          str(tmp_path / "m.pt"), "--input-size", "64")
    assert status == 0
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    model = create_model(weights=str(run_dir / "weights.safetensors")).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert (scripted(x) - model(x)).abs().max().item() < 1e-5


def test_caffe_round_trip_through_export_and_convert(tmp_path, capsys):
    pytest.importorskip("resnets.weights.caffe")
    from resnets.weights import save_weights

    model = randomise(create_model("resnet18"))
    save_weights(tmp_path / "w.safetensors", model)
    status, _, err = _run(capsys, "export", str(tmp_path / "w.safetensors"), "--format", "prototxt",
                          "--out", str(tmp_path / "r.prototxt"))
    assert status == 0, err  # the pair: r.prototxt and r.caffemodel
    status, _, err = _run(capsys, "convert", str(tmp_path / "r.caffemodel"), str(tmp_path / "r.safetensors"),
                          "--prototxt", str(tmp_path / "r.prototxt"), "--model", "resnet18")
    assert status == 0, err
    converted = create_model(weights=str(tmp_path / "r.safetensors")).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (converted(x) - model(x)).abs().max().item() < 1e-4
    preprocessing = converted.preprocessing
    preprocessing = preprocessing.to_dict() if hasattr(preprocessing, "to_dict") else preprocessing
    assert preprocessing["channel_order"] == "BGR"


TINY = {"layers": (1, 1, 1, 1), "widths": (8, 8, 16, 16), "stem_width": 8}


def _tiny_weights(path, seed: int = 0, num_classes: int = 3):
    from resnets.weights import save_weights

    torch.manual_seed(seed)
    return save_weights(path, randomise(create_model("resnet18", num_classes=num_classes, **TINY), seed),
                        class_names=[f"class{i}" for i in range(num_classes)])


def _digest(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _export_pair(capsys, weights, prototxt):
    return _run(capsys, "export", str(weights), "--format", "prototxt", "--out", str(prototxt), "--input-size", "64")


def test_prototxt_pair_survives_a_failure_between_its_two_replacements(tmp_path, capsys, monkeypatch):
    pytest.importorskip("resnets.weights.caffe")
    prototxt, caffemodel = tmp_path / "r.prototxt", tmp_path / "r.caffemodel"
    status, _, err = _export_pair(capsys, _tiny_weights(tmp_path / "old.safetensors", 0), prototxt)
    assert status == 0, err
    before = (_digest(prototxt), _digest(caffemodel))
    new_weights = _tiny_weights(tmp_path / "new.safetensors", 1, num_classes=4)  # another prototxt too
    real_replace, final = os.replace, []

    def replace(src, dst):
        if str(dst) in (str(prototxt), str(caffemodel)):  # the pair's own renames, not the writers' inside
            final.append(str(dst))
            if len(final) == 2:
                raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    status, _, err = _export_pair(capsys, new_weights, prototxt)  # the CLI reports OS errors in one line
    assert status == 2 and "No space left on device" in err and "Traceback" not in err
    monkeypatch.undo()
    assert final[:2] == [str(prototxt), str(caffemodel)]
    assert (_digest(prototxt), _digest(caffemodel)) == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    status, _, err = _export_pair(capsys, new_weights, prototxt)
    assert status == 0, err
    assert _digest(prototxt) != before[0] and _digest(caffemodel) != before[1]


def test_prototxt_out_naming_the_caffemodel_is_refused(tmp_path, capsys):
    pytest.importorskip("resnets.weights.caffe")
    status, _, err = _export_pair(capsys, _tiny_weights(tmp_path / "w.safetensors"), tmp_path / "x.caffemodel")
    assert status == 2 and err.count("\n") == 1 and "x.prototxt" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_export_removes_the_leftovers_of_a_killed_export(tmp_path, capsys):
    pytest.importorskip("resnets.weights.caffe")
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    pid = child.pid  # a writer that is gone: its temporary files are abandoned
    leftovers = [tmp_path / f".r.prototxt.{pid}-0123abcd.tmp", tmp_path / f".r.caffemodel.{pid}-0123abcd.tmp",
                 tmp_path / f"..r.caffemodel.{pid}-0123abcd.tmp.{pid}-89abcdef.tmp"]
    for path in leftovers:
        path.write_bytes(b"torn")
        os.utime(path, (time.time() - 600, time.time() - 600))
    status, _, err = _export_pair(capsys, _tiny_weights(tmp_path / "w.safetensors"), tmp_path / "r.prototxt")
    assert status == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.caffemodel", "r.prototxt", "w.safetensors"]


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600)])
def test_exported_safetensors_follow_the_umask(tmp_path, capsys, mask, expected):
    weights = _tiny_weights(tmp_path / "w.safetensors")
    old = os.umask(mask)
    try:
        status, _, err = _run(capsys, "export", str(weights), "--format", "safetensors", "--out",
                              str(tmp_path / "out.safetensors"))
    finally:
        os.umask(old)
    assert status == 0, err
    assert os.stat(tmp_path / "out.safetensors").st_mode & 0o777 == expected


@pytest.mark.parametrize("size", ["-1", "0", "100000"])
def test_export_bad_input_size_is_one_line_before_anything_is_built(tmp_path, capsys, monkeypatch, size):
    def never(*args):
        raise AssertionError("the model was built")

    monkeypatch.setattr("resnets.cli.export.load_checkpoint", never)
    status, _, err = _run(capsys, "export", "resnet18", "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                          "--input-size", size)
    assert status == 2 and err.startswith("resnets: error: ") and err.count("\n") == 1, err
    assert "--input-size" in err and size in err
    assert list(tmp_path.iterdir()) == []


def test_export_input_size_below_the_network_stride_is_one_line(tmp_path, capsys):
    status, _, err = _run(capsys, "export", str(_tiny_weights(tmp_path / "w.safetensors")), "--format", "torchscript",
                          "--out", str(tmp_path / "m.pt"), "--input-size", "8")
    assert status == 2 and "too small" in err and err.count("\n") == 1, err
