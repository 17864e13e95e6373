"""`resnets evaluate` and `resnets predict` through the inference backends (--backend)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _train_fixtures import tiny_config, write_folder_dataset
from resnets.cli import main
from resnets.evaluate import evaluate
from resnets.predict import load_for_inference, predict_files
from resnets.train import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("backends")
    data = write_folder_dataset(root / "data", {"train": 12, "val": 8})
    train(tiny_config(root / "run", data=str(data), img_size=16, epochs=3))
    return root / "run", data


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_evaluate_through_an_exact_backend_matches_eager(trained, backend, tmp_path):
    pytest.importorskip(backend)
    run, data = trained
    eager = evaluate(run, data, confusion_png=None)
    other = evaluate(run, data, confusion_png=None, backend=backend)
    assert other.count == eager.count == 24 and (eager.backend, other.backend) == ("eager", backend)
    assert other.top1 == eager.top1 and other.per_class == eager.per_class
    assert other.loss == pytest.approx(eager.loss, abs=1e-4)


def test_evaluate_int8_calibrates_and_reports(trained, capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    run, data = trained
    eager = evaluate(run, data, confusion_png=None)
    status, out, _ = run_cli(["evaluate", str(run), "--data", str(data), "--backend", "int8", "--json",
                              "--confusion", str(tmp_path / "c.png")], capsys)
    assert status == 0
    report = json.loads(out)
    assert report["backend"] == "int8" and report["count"] == 24
    assert abs(report["top1"] - eager.top1) <= 100 / 24 + 1e-6  # at most one image flips


def test_predict_through_onnxruntime_matches_eager(trained, capsys):
    pytest.importorskip("onnxruntime")
    run, data = trained
    images = [str(data / "val")]
    eager = predict_files(load_for_inference(run), images, topk=3)
    status, out, _ = run_cli(["predict", str(run), *images, "--topk", "3", "--backend", "onnxruntime", "--json"],
                             capsys)
    assert status == 0
    fast = json.loads(out)
    assert [r["path"] for r in fast] == [r["path"] for r in eager] and len(fast) == 24
    for a, b in zip(fast, eager):
        assert [t["index"] for t in a["top"]] == [t["index"] for t in b["top"]]
        assert [t["probability"] for t in a["top"]] == pytest.approx([t["probability"] for t in b["top"]], abs=1e-4)


@pytest.mark.parametrize("args", [
    ["predict", "{run}", "{image}", "--backend", "int8"],
    ["predict", "{run}", "{image}", "--backend", "tensorrt"],
    ["evaluate", "{run}", "--data", "{data}", "--backend", "tensorrt"],
])
def test_backend_errors_are_one_line_and_exit_2(trained, capsys, args):
    run, data = trained
    image = data / "val" / "class0" / "0.png"
    filled = [a.format(run=run, image=image, data=data) for a in args]
    status, _, err = run_cli(filled, capsys)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("resnets: error:"), err
    assert "backend" in lines[0]
