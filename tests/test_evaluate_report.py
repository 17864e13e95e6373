"""`resnets evaluate --report`: the highest-loss images and the most-confused class pairs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from _train_fixtures import write_folder_dataset
from resnets.evaluate import most_confused
from resnets.factory import create_model
from resnets.predict import load_for_inference, predict_files
from resnets.preprocessing import Preprocessing
from resnets.weights.format import save_weights

CLASSES = ["class0", "class1", "class2"]


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory) -> tuple[Path, Path]:
    """A random tiny model made confident (large head weights: losses far apart) and 30 images."""
    root = tmp_path_factory.mktemp("report")
    data = write_folder_dataset(root / "data", {"val": 10})
    torch.manual_seed(3)
    model = create_model("resnet20", num_classes=3, layers=(1, 1, 1), widths=(4, 8, 8), stem_width=4).eval()
    with torch.no_grad():
        model.fc.weight.mul_(10)
    model.preprocessing = Preprocessing.for_input_size(16)
    path = root / "model.safetensors"
    save_weights(path, model, class_names=CLASSES)
    return path, data


def test_most_confused_by_hand():
    confusion = torch.tensor([[5, 2, 0], [7, 1, 2], [0, 2, 9]])
    assert most_confused(confusion, ["a", "b", "c"]) == [
        {"true": "b", "predicted": "a", "count": 7}, {"true": "a", "predicted": "b", "count": 2},
        {"true": "b", "predicted": "c", "count": 2}, {"true": "c", "predicted": "b", "count": 2}]
    assert most_confused(torch.eye(3, dtype=torch.long), ["a", "b", "c"]) == []


def test_report_lists_the_confusion_matrix_pairs_and_the_highest_losses(model_and_data, tmp_path, run_cli):
    model, data = model_and_data
    out = tmp_path / "report"
    status, stdout, stderr = run_cli("evaluate", model, "--data", data, "--json", "--report", out,
                                     "--confusion", tmp_path / "confusion.png")
    assert status == 0, stderr
    result = json.loads(stdout)
    confusion = result["confusion"]
    pairs = result["interpretation"]["most_confused"]
    expected = sorted(((confusion[t][p], CLASSES[t], CLASSES[p]) for t in range(3) for p in range(3)
                       if t != p and confusion[t][p]), key=lambda c: -c[0])
    assert [(p["count"], p["true"], p["predicted"]) for p in pairs] == expected
    assert pairs, "the random model should confuse something"
    assert json.loads((out / "interpretation.json").read_text()) == result["interpretation"]

    # The top losses are the images whose true class predict gives the lowest probability.
    rows = result["interpretation"]["top_losses"]
    assert len(rows) == 16
    predicted = predict_files(load_for_inference(model), [data], topk=3)
    losses = {}
    for item in predicted:
        true = Path(item["path"]).parent.name
        losses[Path(item["path"]).as_posix()] = -math.log(next(t["probability"] for t in item["top"]
                                                                if t["class"] == true))
    ranked = sorted(losses.values(), reverse=True)
    assert [r["loss"] for r in rows] == pytest.approx(ranked[:16], rel=1e-3, abs=1e-4)
    for row in rows:
        assert row["loss"] == pytest.approx(-math.log(row["true_probability"]), rel=1e-3, abs=1e-5)
        assert any(path.endswith(row["item"].split(":")[-1].replace("\\", "/")) or row["item"] in path
                   for path in losses), row["item"]
    with Image.open(out / "top_losses.png") as grid:
        assert grid.size[0] > 600 and grid.size[1] > 600


def test_report_prints_pairs_and_draws_cams(model_and_data, tmp_path, run_cli):
    pytest.importorskip("pytorch_grad_cam")
    model, data = model_and_data
    status, stdout, stderr = run_cli("evaluate", model, "--data", data, "--report-cam",
                                     "--confusion", tmp_path / "confusion.png")
    assert status == 0, stderr
    record = json.loads((tmp_path / "report" / "interpretation.json").read_text())
    assert record["cam"] is True and (tmp_path / "report" / "top_losses.png").is_file()
    printed = stdout[stdout.index("most confused"):].splitlines()[1:]
    assert printed == [f"  {p['true']} -> {p['predicted']}: {p['count']}" for p in record["most_confused"]]
