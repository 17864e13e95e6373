"""Summary tables against torchinfo, and the `models`/`summary` commands."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import resnets
from resnets.summarize import summary

torchinfo = pytest.importorskip("torchinfo")


@pytest.mark.parametrize("name, params, macs", [("resnet18", 11_689_512, 1.81e9), ("resnet50", 25_557_032, 4.09e9)])
def test_totals_and_rows_agree_with_torchinfo(name, params, macs):
    model = resnets.create_model(name)
    ours = summary(model, 224)
    oracle = torchinfo.summary(model, (1, 3, 224, 224), verbose=0)
    assert ours.total_params == oracle.total_params == params
    assert ours.macs == oracle.total_mult_adds
    assert abs(ours.macs - macs) < 0.005e9
    oracle_rows = [(r.class_name, list(r.output_size), r.num_params, r.macs)
                   for r in oracle.summary_list if r.is_leaf_layer]
    our_rows = [(r.type, r.output_shape, r.params, r.macs) for r in ours.rows if r.is_leaf]
    assert our_rows == oracle_rows


def test_counting_on_the_meta_device_gives_the_same_numbers():
    with torch.device("meta"):
        meta_model = resnets.create_model("resnet50")
    on_meta = summary(meta_model, 224, device="meta")
    on_cpu = summary(resnets.create_model("resnet50"), 224)
    assert (on_meta.total_params, on_meta.macs) == (on_cpu.total_params, on_cpu.macs)


def test_trainable_counts_follow_requires_grad():
    model = resnets.create_model("resnet18", num_classes=20)
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("fc.")
    result = summary(model, 64)
    assert result.trainable_params == 512 * 20 + 20
    assert result.total_params - result.trainable_params == 11_689_512 - 513_000


def test_table_has_rows_totals_and_memory():
    text = str(summary(resnets.create_model("resnet18"), 224))
    assert "layer4.1.conv2 (Conv2d)" in text
    assert "Total params: 11,689,512" in text
    assert "Total mult-adds: 1.81 G" in text
    assert "Forward/backward pass size (MB)" in text and "Params size (MB): 46.76" in text  # 10**6 bytes


MEMORY_LINES = ("Input size (MB)", "Forward/backward pass size (MB)", "Params size (MB)", "Estimated Total Size (MB)")


@pytest.mark.parametrize("name, side", [("resnet18", 224), ("resnet50", 224), ("resnet20", 32)])
def test_memory_estimates_agree_with_torchinfo(name, side):
    model = resnets.create_model(name)
    ours = summary(model, side)
    oracle = torchinfo.summary(model, (1, 3, side, side), verbose=0)
    assert 2 * sum(r.output_bytes for r in ours.rows if r.is_leaf and r.params) == oracle.total_output_bytes
    assert ours.param_bytes == oracle.total_param_bytes
    # torchinfo measures the input with sys.getsizeof (the storage plus a few dozen bytes of object)
    assert 0 <= oracle.total_input - ours.input_bytes < 1000
    oracle_lines = [line for line in str(oracle).splitlines() if line.startswith(MEMORY_LINES)]
    our_lines = [line for line in str(ours).splitlines() if line.startswith(MEMORY_LINES)]
    assert len(oracle_lines) == 4 and our_lines == oracle_lines
    assert ours.to_dict()["memory_mb"]["forward_backward"] == round(oracle.total_output_bytes / 1e6, 3)


def test_memory_estimates_follow_the_dtype():
    model = resnets.create_model("resnet20")
    single, double = summary(model, 32), summary(model.to(torch.float64), 32)
    assert double.param_bytes == 2 * single.param_bytes and double.input_bytes == 2 * single.input_bytes
    assert double.activations_mb == pytest.approx(2 * single.activations_mb) and single.activations_mb > 0


def test_summary_is_callable_from_the_package():
    text = str(resnets.summary(resnets.create_model("resnet20"), 32))
    assert "Total params: " in text and "Estimated Total Size (MB)" in text


def test_depth_limits_the_rows():
    result = summary(resnets.create_model("resnet18"), 64, depth=1)
    shown = [r.name for r in result.visible_rows()]
    assert shown == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]
    assert sum(r.params for r in result.visible_rows()) == result.total_params


def test_too_small_input_is_refused():
    with pytest.raises(ValueError, match="8x8 is too small for resnet50.*32x32"):
        summary(resnets.create_model("resnet50"), 8)


def test_cli_summary_json(run_cli):
    status, out, _ = run_cli("summary", "resnet50", "--json")
    report = json.loads(out)
    assert status == 0
    assert report["params"] == 25_557_032 and 4.08e9 <= report["macs"] <= 4.10e9
    assert report["trainable_params"] == 25_557_032
    assert len([layer for layer in report["layers"] if layer["is_leaf"]]) == 175


def test_cli_models_lists_the_registry(run_cli):
    status, out, _ = run_cli("models", "--json")
    cards = {card["name"]: card for card in json.loads(out)}
    assert status == 0 and set(cards) == set(resnets.list_models())
    assert cards["resnet50"]["params"] == 25_557_032
    assert cards["resnet20"]["input_size"] == 32 and 0.26e6 < cards["resnet20"]["params"] < 0.28e6


def test_stored_model_cards_match_a_live_computation():
    """cards.json (what `resnets models` prints) must follow every change to a model."""
    from resnets.models.cards import cached_cards
    from resnets.summarize import model_card

    stored = cached_cards()
    assert sorted(stored) == sorted(resnets.list_models()), "run `python -m resnets.summarize`"
    for name in stored:
        assert stored[name] == model_card(name), f"{name}: run `python -m resnets.summarize`"


def test_models_computes_the_cards_of_models_registered_at_run_time():
    from resnets.summarize import model_cards
    from resnets.models.registry import _REGISTRY, ModelSpec, get_model_spec, register

    base = get_model_spec("resnet20")
    register(ModelSpec("tiny_test_net", base.config, "a run-time model", 32, 10, base.mean, base.std))
    try:
        (card,) = model_cards(["tiny_test_net"])
    finally:
        del _REGISTRY["tiny_test_net"]
    assert card["params"] == model_cards(["resnet20"])[0]["params"] and card["description"] == "a run-time model"


@pytest.mark.parametrize("args, message", [
    (["summary", "resnet51"], "resnet51 is neither a file, a run directory nor a model name; did you mean "),
    (["summary", "resnet50", "--input-size", "8"], "input 8x8 is too small for resnet50"),
    (["summary", "resnet50", "--num-classes", "-1"], "num_classes must be a non-negative integer"),
])
def test_cli_user_errors_are_one_line_and_status_2(run_cli, args, message):
    status, out, err = run_cli(*args)
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("resnets: error: ") and message in err
    if "did you mean" in message:
        assert "resnet50" in err.split("did you mean", 1)[1]


def test_console_script_reports_errors_without_traceback():
    result = subprocess.run([sys.executable, "-m", "resnets", "summary", "nosuchnet"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("resnets: error: nosuchnet is neither a file") and "`resnets models`" in line, line


def test_cli_summarises_the_seed_caffe_prototxt(run_cli):
    from pathlib import Path

    prototxt = Path(__file__).parent / "data" / "resnet18-7class-train.prototxt"
    status, out, _ = run_cli("summary", prototxt, "--json")
    report = json.loads(out)
    assert status == 0
    assert report["data"]["num_classes"] == 7 and report["data"]["crop_size"] == 224
    assert report["layers"][-1]["output_shape"] == [1, 7]
    convs = [layer for layer in report["layers"] if layer["type"] == "Conv2d"]
    assert len(convs) == 25
