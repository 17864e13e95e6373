"""The project's own ONNX files as models (issue 25): `export` then `predict model.onnx` agrees with
the weights file it came from; hostile ONNX inputs are one line and exit 2; commands that need
gradients refuse an ONNX file in one line."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest
import torch

from _data_helpers import shared_file
from conftest import randomize_batchnorm
from resnets.cli import main
from resnets.factory import load_model
from resnets.inference import onnxruntime_available
from resnets import create_model
from resnets.weights.format import save_weights
from resnets.weights.onnx import OnnxModel

pytestmark = [pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime not installed"),
              pytest.mark.usefixtures("one_thread")]
CLASSES = [f"class{i}" for i in range(10)]  # as _train_fixtures.write_folder_dataset names them


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def one_line_exit_2(args: list[str], capsys) -> str:
    status, out, err = run_cli(args, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and out == "", (status, out, err)
    assert len(lines) == 1 and lines[0].startswith("resnets: error:") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """Four real photos (Imagenette), as files."""
    archive_path = shared_file("imagenette-224-train.zip", "real photos for predict on an ONNX file")
    root = tmp_path_factory.mktemp("onnx-photos")
    with zipfile.ZipFile(archive_path) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".JPEG"))[::997][:4]
        for i, name in enumerate(names):
            (root / f"{i}.jpg").write_bytes(archive.read(name))
    return sorted(root.glob("*.jpg"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """A small CIFAR-style ResNet with non-trivial BatchNorms and named classes: its weights file,
    and the ONNX file `resnets export` wrote from it."""
    root = tmp_path_factory.mktemp("onnx-model")
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model("resnet20", num_classes=10)).eval()
    model.class_names = list(CLASSES)
    weights = save_weights(root / "model.safetensors", model)
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(weights), "--format", "onnx", "--out", str(root / "model.onnx")])
    assert exit_info.value.code in (0, None)
    return weights, root / "model.onnx"


def test_the_resolver_reads_the_record_of_an_exported_onnx_file(exported):
    weights, onnx_file = exported
    model, original = load_model(onnx_file, onnx=True), load_model(weights)
    assert isinstance(model, OnnxModel) and model.model_name == "resnet20"
    assert model.class_names == CLASSES and model.preprocessing == original.preprocessing
    assert (model.in_chans, model.num_classes) == (3, 10)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), rtol=0, atol=1e-4)


def test_a_multi_label_model_stays_multi_label_through_its_onnx_file(tmp_path, photos, capsys):
    from resnets.multilabel import is_multi_label, mark_multi_label, threshold_of

    torch.manual_seed(0)
    model = mark_multi_label(create_model("resnet20", num_classes=10), threshold=0.3).eval()
    model.class_names = list(CLASSES)
    weights = save_weights(tmp_path / "ml.safetensors", model)
    status, _, err = run_cli(["export", weights, "--format", "onnx", "--out", tmp_path / "ml.onnx"], capsys)
    assert status in (0, None), err
    onnx_model = load_model(tmp_path / "ml.onnx", onnx=True)
    assert is_multi_label(onnx_model) and threshold_of(onnx_model) == 0.3
    answers = [json.loads(run_cli(["predict", path, photos[0], "--json", "--threshold", "0.01"], capsys)[1])[0]
               for path in (weights, tmp_path / "ml.onnx")]
    assert len(answers[0]["labels"]) == len(answers[1]["labels"]) == 10  # sigmoids: all over 0.01
    for mine, theirs in zip(answers[0]["labels"], answers[1]["labels"]):
        assert mine["class"] == theirs["class"] and abs(mine["probability"] - theirs["probability"]) < 1e-4


def test_predict_on_the_onnx_file_agrees_with_the_weights_file(exported, photos, capsys):
    weights, onnx_file = exported
    status, out, _ = run_cli(["predict", onnx_file, *photos, "--topk", "3", "--json"], capsys)
    assert status == 0
    from_onnx = json.loads(out)
    status, out, _ = run_cli(["predict", weights, *photos, "--topk", "3", "--json", "--backend", "eager"], capsys)
    from_weights = json.loads(out)
    assert len(from_onnx) == len(from_weights) == len(photos)
    for a, b in zip(from_onnx, from_weights):
        assert a["path"] == b["path"]
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        assert [t["probability"] for t in a["top"]] == pytest.approx([t["probability"] for t in b["top"]], abs=1e-4)
    assert {t["class"] for r in from_onnx for t in r["top"]} <= set(CLASSES)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_an_onnx_file_runs_through_either_onnx_runtime(exported, photos, backend):
    pytest.importorskip(backend)
    from resnets.predict import load_for_inference, predict_files

    weights, onnx_file = exported
    predictor = load_for_inference(onnx_file, backend=backend)
    assert predictor.backend == backend
    got, want = predict_files(predictor, photos, topk=2), predict_files(load_for_inference(weights), photos, topk=2)
    for a, b in zip(got, want):
        assert [t["index"] for t in a["top"]] == [t["index"] for t in b["top"]]
        assert [t["probability"] for t in a["top"]] == pytest.approx([t["probability"] for t in b["top"]], abs=1e-4)


def test_evaluate_on_the_onnx_file_scores_as_the_weights_file(exported, tmp_path):
    from _train_fixtures import write_folder_dataset
    from resnets.evaluate import evaluate

    weights, onnx_file = exported
    data = write_folder_dataset(tmp_path / "data", {"val": 4}, size=32)
    from_onnx = evaluate(onnx_file, data, confusion_png=None, split="all")
    from_weights = evaluate(weights, data, confusion_png=None, split="all", backend="eager")
    assert from_onnx.backend in ("onnxruntime", "openvino") and from_weights.backend == "eager"
    assert from_onnx.count == from_weights.count > 0 and from_onnx.top1 == from_weights.top1
    assert from_onnx.loss == pytest.approx(from_weights.loss, abs=1e-4)


def _truncated(onnx_file: Path, folder: Path, fraction: float) -> Path:
    data = onnx_file.read_bytes()
    path = folder / f"cut{fraction}.onnx"
    path.write_bytes(data[:int(len(data) * fraction)])
    return path


def _foreign(folder: Path) -> Path:
    """An ONNX file as torch.onnx.export writes it, without the project's metadata."""
    path = folder / "foreign.onnx"
    model = create_model("resnet20", num_classes=10).eval()
    torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(path), input_names=["images"], dynamo=False)
    return path


def _with_metadata(onnx_file: Path, folder: Path, **changes: str | None) -> Path:
    import onnx

    proto = onnx.load(str(onnx_file))
    kept = {p.key: p.value for p in proto.metadata_props}
    kept.update(changes)
    del proto.metadata_props[:]
    for key, value in kept.items():
        if value is not None:
            proto.metadata_props.add(key=key, value=value)
    path = folder / f"meta{len(list(folder.iterdir()))}.onnx"
    onnx.save(proto, str(path))
    return path


HOSTILE = {
    "truncated at 1 %": (lambda f, d: _truncated(f, d, 0.01), "not a readable ONNX model"),
    "truncated at 50 %": (lambda f, d: _truncated(f, d, 0.5), "ONNX"),
    "truncated at 99 %": (lambda f, d: _truncated(f, d, 0.99), "ONNX"),
    "empty": (lambda f, d: _truncated(f, d, 0.0), "ONNX"),
    "random bytes": (lambda f, d: _write(d / "random.onnx", os.urandom(4096)), "ONNX"),
    "a directory": (lambda f, d: _mkdir(d / "folder.onnx"), "directory"),
    "a FIFO": (lambda f, d: _fifo(d / "pipe.onnx"), "not a regular file"),
    "foreign, no record": (lambda f, d: _foreign(d), "no model_name and no preprocessing"),
    "no preprocessing": (lambda f, d: _with_metadata(f, d, preprocessing=None), "no preprocessing"),
    "bad preprocessing": (lambda f, d: _with_metadata(f, d, preprocessing='{"input_size": -3}'), "preprocessing"),
    "class names not a list": (lambda f, d: _with_metadata(f, d, class_names='"cat"'), "class_names"),
    "wrong class count": (lambda f, d: _with_metadata(f, d, class_names='["a", "b"]'), "classes"),
    "deep JSON": (lambda f, d: _with_metadata(f, d, class_names="[" * 5000 + "]" * 5000), "deep"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_onnx_file_is_one_line_and_exit_2(case, exported, photos, tmp_path, capsys):
    make, words = HOSTILE[case]
    bad = make(exported[1], tmp_path)
    line = one_line_exit_2(["predict", bad, photos[0]], capsys)
    assert words.lower() in line.lower(), line


@pytest.mark.parametrize("command", ["evaluate", "serve", "explain"])
def test_other_commands_refuse_a_foreign_onnx_file_in_one_line(command, photos, tmp_path, capsys):
    from _train_fixtures import write_folder_dataset

    if command == "serve":
        pytest.importorskip("fastapi")
    bad = _foreign(tmp_path)
    data = write_folder_dataset(tmp_path / "data", {"val": 2}, size=32)
    args = {"evaluate": ["evaluate", bad, "--data", data],
            "serve": ["serve", bad, "--port", "0"],
            "explain": ["explain", bad, photos[0], "--out", tmp_path / "cams"]}[command]
    line = one_line_exit_2(args, capsys)
    assert "ONNX" in line


@pytest.mark.parametrize("command", ["summary", "export", "embed", "train"])
def test_commands_that_need_a_module_refuse_the_onnx_file_in_one_line(command, exported, photos, tmp_path, capsys):
    """summary, export, embed and train look into layers and parameters that an ONNX graph run by
    onnxruntime does not have (export used to trace ORT's output as a constant, exit 0)."""
    from _train_fixtures import write_folder_dataset

    onnx_file = exported[1]
    data = write_folder_dataset(tmp_path / "data", {"train": 2}, size=32)
    args = {"summary": ["summary", onnx_file],
            "export": ["export", onnx_file, "--format", "torchscript", "--out", tmp_path / "m.pt"],
            "embed": ["embed", onnx_file, photos[0], "--out", tmp_path / "index.npy"],
            "train": ["train", "--weights", onnx_file, "--data", data, "--epochs", "1", "--out", tmp_path / "run"]}
    line = one_line_exit_2(args[command], capsys)
    assert "ONNX file" in line and "exported from" in line, line
    assert not any((tmp_path / name).exists() for name in ("m.pt", "index.npy"))


def test_the_served_card_counts_an_onnx_files_architecture_without_running_it(exported):
    pytest.importorskip("fastapi")
    from resnets.predict import load_for_inference
    from resnets.serve.server import ServeConfig, model_card

    weights, onnx_file = exported
    onnx_predictor = load_for_inference(onnx_file, backend="onnxruntime")
    cards = [model_card(p, ServeConfig(name="m")) for p in (onnx_predictor, load_for_inference(weights))]
    assert cards[0]["parameters"] == cards[1]["parameters"] > 0 and cards[0]["macs"] == cards[1]["macs"] > 0
    assert onnx_predictor.plain.session is None  # no second session built to count


def test_bench_names_what_it_measures_instead_of_a_file(exported, capsys):
    line = one_line_exit_2(["bench", exported[1]], capsys)
    assert "architecture" in line


def test_explain_refuses_an_onnx_file_saying_why(exported, photos, tmp_path, capsys):
    line = one_line_exit_2(["explain", exported[1], photos[0], "--out", tmp_path / "cams"], capsys)
    assert "gradients" in line and not (tmp_path / "cams").exists()


def test_eager_on_an_onnx_file_is_one_line(exported, photos, capsys):
    line = one_line_exit_2(["predict", exported[1], photos[0], "--backend", "eager"], capsys)
    assert "onnxruntime" in line


def test_a_missing_model_argument_is_said(photos, capsys):
    line = one_line_exit_2(["predict", photos[0]], capsys)
    assert "MODEL" in line
    line = one_line_exit_2(["predict"], capsys)
    assert "MODEL" in line
