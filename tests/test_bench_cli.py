"""`resnets bench` and `resnets compare`: smoke runs with tiny settings, JSON shape, user errors."""

from __future__ import annotations

import json

import pytest

from resnets.bench import count_macs, percentile
from resnets.cli import main
from resnets.compare import CompareRow, pareto_front
from resnets.inference import onnxruntime_available


pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_bench_json_has_a_reference_row_and_ratios(tmp_path, capsys):
    status, out, _ = run_cli(["bench", "resnet18", "--backend", "eager", "--batch-size", "1,2",
                              "--img-size", "32", "--reps", "1", "--warmup", "0", "--train", "--json",
                              "--out", str(tmp_path)], capsys)
    assert status == 0
    document = json.loads(out)
    assert document["machine"]["matmul_peak_gflops"] == pytest.approx(
        max(r["matmul_peak_gflops"] for r in document["results"]), abs=0.05)
    rows = document["results"]
    assert {(r["backend"], r["batch_size"]) for r in rows} == {
        ("torchvision", 1), ("eager", 1), ("torchvision", 2), ("eager", 2)}
    for row in rows:
        assert row["latency_p50_ms"] <= row["latency_p90_ms"]
        assert row["images_per_s"] == pytest.approx(1e3 * row["batch_size"] / row["latency_p50_ms"])
        assert (row["train_images_per_s"] is None) == (row["batch_size"] == 1)
        assert row["matmul_peak_gflops"] > 0
        assert row["gflops"] == pytest.approx(row["peak_fraction"] * row["matmul_peak_gflops"], rel=0.01)
    assert all(r["speedup"] == 1.0 for r in rows if r["backend"] == "torchvision")
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert json.loads((tmp_path / "bench.json").read_text()) == document


def test_bench_table_for_a_model_without_torchvision_peer(tmp_path, capsys):
    backends = "eager,onnxruntime" if onnxruntime_available() else "eager"
    status, out, _ = run_cli(["bench", "resnet20", "--backend", backends, "--batch-size", "2", "--reps", "1",
                              "--out", str(tmp_path)], capsys)
    assert status == 0
    assert "resnet20" in out and "torchvision" not in out.split("\n", 2)[2]


@pytest.mark.parametrize("argv, message", [
    (["bench", "resnet20", "--backend", "tensorrt"], "unknown inference backend 'tensorrt'"),
    (["bench", "resnet20", "--batch-size", "0"], "batch sizes must be positive"),
    (["bench", "resnet20", "--batch-size", "x"], "comma-separated integers"),
    (["bench", "nosuchnet"], "unknown model 'nosuchnet'"),
    (["compare", "--models", "resnet18", "--backend", "tensorrt"], "unknown inference backend"),
])
def test_cli_errors_are_one_line_with_status_2(argv, message, capsys, tmp_path):
    status, out, err = run_cli(argv + ["--out", str(tmp_path)], capsys)
    assert status == 2
    assert err.startswith("resnets: error: ") and message in err
    assert err.count("\n") == 1 and out == ""


def test_missing_onnxruntime_is_reported_by_the_cli(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("resnets.inference.onnxruntime_available", lambda: False)
    status, _, err = run_cli(["bench", "resnet20", "--backend", "onnxruntime", "--out", str(tmp_path)], capsys)
    assert status == 2 and "needs onnxruntime" in err and err.count("\n") == 1


def test_compare_json_shape(tmp_path, capsys):
    status, out, _ = run_cli(["compare", "--models", "resnet18,mobilenet_v3_small", "--img-size", "32",
                              "--batch-size", "2", "--reps", "1", "--warmup", "0", "--json",
                              "--out", str(tmp_path)], capsys)
    assert status == 0
    models = {row["model"]: row for row in json.loads(out)["models"]}
    assert set(models) == {"resnet18", "mobilenet_v3_small"}
    assert models["resnet18"]["params_m"] == pytest.approx(11.69, abs=0.01)
    assert models["resnet18"]["top1"] == pytest.approx(69.758)
    assert models["mobilenet_v3_small"]["top1"] == pytest.approx(67.668)
    assert any(row["pareto"] for row in models.values())
    assert (tmp_path / "compare.png").stat().st_size > 0


def test_mac_count_matches_torchinfo():
    torchinfo = pytest.importorskip("torchinfo")
    import resnets

    model = resnets.create_model("resnet18")
    expected = torchinfo.summary(model, input_size=(1, 3, 224, 224), verbose=0).total_mult_adds
    assert count_macs(model, (3, 224, 224)) == expected


def test_pareto_front_keeps_only_undominated_models():
    rows = [CompareRow("fast", 1, 1, 10.0, 1, 70.0, None), CompareRow("slow-better", 1, 1, 20.0, 1, 75.0, None),
            CompareRow("dominated", 1, 1, 25.0, 1, 72.0, None), CompareRow("unrated", 1, 1, 1.0, 1, None, None)]
    pareto_front(rows)
    assert [r.model for r in rows if r.pareto] == ["fast", "slow-better"]


def test_percentile_interpolates():
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 90) == pytest.approx(4.6)
    assert percentile([7.0], 90) == 7.0
