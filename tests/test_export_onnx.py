"""The one ONNX exporter: dynamic batch/height/width, metadata, a relative check; `resnets export`."""

from __future__ import annotations

import json

import pytest
import torch

from resnets import ResnetsError, create_model
from resnets.cli import main
from resnets.export import ONNX_INPUT, check_onnx, export, export_onnx
from resnets.weights import save_weights
from weights_helpers import randomise

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TINY = {"layers": (1, 1, 1, 1), "widths": (8, 8, 16, 16), "stem_width": 8}
CLASSES = ["cat", "dog", "fish", "bird"]


def _tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomise(create_model("resnet18", num_classes=len(CLASSES), **TINY), seed)


def _run_cli(capsys, *argv):
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def _metadata(path) -> dict:
    return {prop.key: json.loads(prop.value) for prop in onnx.load(str(path)).metadata_props}


def test_cli_onnx_runs_at_other_batches_and_sizes_and_carries_its_metadata(tmp_path, capsys):
    model = _tiny()
    weights = save_weights(tmp_path / "w.safetensors", model, class_names=CLASSES)
    status, out, err = _run_cli(capsys, "export", str(weights), "--format", "onnx", "--out",
                                str(tmp_path / "m.onnx"), "--input-size", "64")
    assert status == 0, err
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [ONNX_INPUT]
    for batch, height, width in ((1, 64, 64), (3, 64, 64), (1, 96, 96), (3, 96, 128)):
        x = torch.randn(batch, 3, height, width)
        with torch.no_grad():
            expected = model(x)
        got = torch.from_numpy(session.run(None, {ONNX_INPUT: x.numpy()})[0])
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    metadata = _metadata(tmp_path / "m.onnx")
    assert metadata["class_names"] == CLASSES
    assert metadata["model_name"] == "resnet18"
    rebuilt = create_model(weights=str(weights))
    expected_pre = rebuilt.preprocessing
    expected_pre = expected_pre.to_dict() if hasattr(expected_pre, "to_dict") else expected_pre
    assert metadata["preprocessing"] == json.loads(json.dumps(expected_pre))
    assert metadata["preprocessing"]["mean"] and metadata["preprocessing"]["std"]


def test_a_model_with_logits_near_1e3_exports(tmp_path):
    model = _tiny(1)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        scale = 1000.0 / model(x).abs().max()
        model.fc.weight.mul_(scale)
        model.fc.bias.mul_(scale)
        assert 900 < model(x).abs().max().item() < 1100
    export(model, "onnx", tmp_path / "big.onnx", input_size=64)  # an absolute 1e-4 check refuses it
    session = ort.InferenceSession(str(tmp_path / "big.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x)
    got = torch.from_numpy(session.run(None, {ONNX_INPUT: x.numpy()})[0])
    assert (got - expected).abs().max().item() <= 1e-4 * expected.abs().max().item()


def test_the_check_refuses_a_graph_that_computes_something_else(tmp_path):
    model = _tiny()
    example = torch.randn(2, 3, 64, 64)
    export_onnx(model, tmp_path / "m.onnx", example)  # passes its own check
    other = _tiny()
    with torch.no_grad():
        other.fc.weight.mul_(1.01)  # 1 % off: far over the relative tolerance
    with pytest.raises(ResnetsError, match="differs from PyTorch"):
        check_onnx(other, tmp_path / "m.onnx", example)


def test_a_failed_check_writes_nothing(tmp_path, monkeypatch):
    (tmp_path / "m.onnx").write_bytes(b"old")

    def refuse(model, path, example):
        raise ResnetsError("ONNX export differs from PyTorch by 1 (> 1e-4); not written")

    monkeypatch.setattr("resnets.export.check_onnx", refuse)
    with pytest.raises(ResnetsError):
        export(_tiny(), "onnx", tmp_path / "m.onnx", input_size=64)
    assert (tmp_path / "m.onnx").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_the_inference_backends_use_this_exporter(monkeypatch):
    from resnets import export as export_module
    from resnets.inference import optimize_for_inference

    calls = []
    real = export_module.export_onnx

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr("resnets.inference.export_onnx", spy)
    model = _tiny()
    fast = optimize_for_inference(model, "onnxruntime", example_input=torch.randn(1, 3, 64, 64))
    assert calls == [{"check": False}]
    x = torch.randn(2, 3, 96, 80)  # another batch and another, non-square size
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=0, atol=1e-4)
