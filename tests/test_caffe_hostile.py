"""Hostile or damaged Caffe files: one `resnets: error:` line and exit status 2, never a traceback
or a large allocation; a --model whose geometry differs from the prototxt's is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from resnets import ResnetsError, create_model
from resnets.cli import main
from resnets.weights.caffe import export_caffe, from_prototxt, read_caffemodel, write_caffemodel
from resnets.weights.caffe.caffemodel import NetParameter

torch.set_num_threads(1)

INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 32 dim: 32 } } }\n'


def conv_net(params: str, bottom: str = 'bottom: "data"') -> str:
    return INPUT + f'layer {{ name: "conv" type: "Convolution" {bottom} top: "conv" convolution_param {{ {params} }} }}\n'


HOSTILE_PROTOTXTS = {
    "stride_0": conv_net("num_output: 4 kernel_size: 3 stride: 0"),
    "group_0": conv_net("num_output: 4 kernel_size: 3 group: 0"),
    "num_output_nan": conv_net("num_output: nan kernel_size: 3"),
    "num_output_1e12": conv_net("num_output: 1e12 kernel_size: 3"),
    "num_output_int_over_int32": conv_net("num_output: 1000000000000 kernel_size: 3"),
    # Every value in range and a 1x1 output, but 1e6 x 3 x 32 x 32 weights: refused by the estimate.
    "params_over_limit": conv_net("num_output: 1000000 kernel_size: 32"),
    "kernel_over_input": conv_net("num_output: 4 kernel_size: 100000"),
    "no_bottom": conv_net("num_output: 4 kernel_size: 3", bottom=""),
    "deep_nesting": "layer { " * 100_000 + "}" * 100_000,
    "input_dims_huge": INPUT.replace("dim: 32 dim: 32", "dim: 2000000000 dim: 2000000000"),
}
EXPECTED = {
    "stride_0": "stride must be an integer from 1", "group_0": "group must be an integer from 1",
    "num_output_nan": "num_output must be an integer", "num_output_1e12": "num_output must be an integer",
    "num_output_int_over_int32": "num_output must be an integer", "params_over_limit": "over the limit of 2e+09",
    "kernel_over_input": "empty blob", "no_bottom": "reads 0 blob(s)", "deep_nesting": "nest deeper than 64",
    "input_dims_huge": "values per image",
}
SIZE_ATTACKS = ["num_output_1e12", "num_output_int_over_int32", "params_over_limit", "kernel_over_input",
                "deep_nesting", "input_dims_huge"]


def hostile_blob_model(path: Path, shape: list[int], values: int) -> Path:
    net = NetParameter(name="bad")
    blob = net.layer.add(name="conv1").blobs.add()
    blob.shape.dim.extend(shape)
    blob.data.extend([0.5] * values)
    path.write_bytes(net.SerializeToString())
    return path


HOSTILE_BLOBS = {"negative_dims": ([-1, -4], 4), "dims_2_32": ([1 << 32, 1 << 32], 0),
                 "dim_2_32_no_data": ([1 << 32], 0), "count_over_data": ([64, 3, 7, 7], 10)}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Every hostile file, plus a valid MSRA-named prototxt and caffemodel to pair them with."""
    root = tmp_path_factory.mktemp("hostile")
    paths = {}
    for name, text in HOSTILE_PROTOTXTS.items():
        paths[name] = root / f"{name}.prototxt"
        paths[name].write_text(text)
    for name, (shape, values) in HOSTILE_BLOBS.items():
        paths[name] = hostile_blob_model(root / f"{name}.caffemodel", shape, values)
    export_caffe(create_model("resnet18", num_classes=4), root / "good.prototxt", root / "good.caffemodel",
                 input_size=(3, 64, 64))
    paths["good.prototxt"], paths["good.caffemodel"] = root / "good.prototxt", root / "good.caffemodel"
    return paths


def run_cli(capsys, args: list[str]) -> str:
    """Run the CLI in-process; it must exit 2 with exactly one error line and no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("resnets: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("name", list(HOSTILE_PROTOTXTS))
def test_hostile_prototxt_is_one_error_line_in_summary_and_convert(files, capsys, tmp_path, name):
    line = run_cli(capsys, ["summary", str(files[name])])
    assert EXPECTED[name] in line
    line = run_cli(capsys, ["convert", str(files["good.caffemodel"]), str(tmp_path / "out.safetensors"),
                            "--prototxt", str(files[name])])
    assert EXPECTED[name] in line
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("name", list(HOSTILE_BLOBS))
def test_hostile_caffemodel_is_one_error_line_in_convert(files, capsys, tmp_path, name):
    line = run_cli(capsys, ["convert", str(files[name]), str(tmp_path / "out.safetensors"),
                            "--prototxt", str(files["good.prototxt"])])
    assert "caffemodel is damaged" in line and "conv1" in line
    with pytest.raises(ResnetsError, match="damaged"):
        from_prototxt(files["good.prototxt"], files[name])


# One child process runs every size attack through the CLI, twice; before each run the peak-RSS
# mark is reset (/proc/self/clear_refs), so the second run measures the attack's own peak with
# torch and the command's modules already imported.
CHILD = r"""
import json, sys
from resnets.cli import main

def rss_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])

results = {}
for name, args in json.loads(sys.argv[1]).items():
    for attempt in range(2):  # the first run also imports what the command needs; the second is measured
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        before = rss_kb("VmRSS:")
        try:
            main(args)
            code = 0
        except SystemExit as exit_info:
            code = exit_info.code
        results[name] = {"code": code, "before_kb": before, "peak_kb": rss_kb("VmHWM:")}
json.dump(results, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def size_attack_results(files, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("child")
    runs = {name: ["summary", str(files[name])] for name in SIZE_ATTACKS}
    runs["blob_dims_2_32"] = ["convert", str(files["dims_2_32"]), str(root / "out.safetensors"),
                              "--prototxt", str(files["good.prototxt"])]
    result_path = root / "results.json"
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(runs), str(result_path)], capture_output=True,
                          text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {"results": json.loads(result_path.read_text()), "stderr": proc.stderr}


@pytest.mark.parametrize("name", SIZE_ATTACKS + ["blob_dims_2_32"])
def test_size_attacks_stay_far_below_1gb_in_a_child_process(size_attack_results, name):
    result = size_attack_results["results"][name]
    assert result["code"] == 2
    lines = size_attack_results["stderr"].strip().splitlines()
    assert len(lines) == 2 * (len(SIZE_ATTACKS) + 1) and all(line.startswith("resnets: error: ") for line in lines)
    peak_mb, grown_mb = result["peak_kb"] / 1024, (result["peak_kb"] - result["before_kb"]) / 1024
    # The process (torch loaded) stays under 1 GB; the attack itself adds next to nothing.
    print(f"{name}: peak {peak_mb:.0f} MB, {grown_mb:.1f} MB over the imports")
    assert peak_mb < 1024 and grown_mb < 100, (peak_mb, grown_mb)


# -- geometry checks of the converter ---------------------------------------------------------
def test_mismatched_model_exits_2_naming_the_difference(capsys, tmp_path):
    prototxt = tmp_path / "v1.prototxt"
    export_caffe(create_model("resnet50_v1", num_classes=10, stem_pool_caffe=True), prototxt,
                 input_size=(3, 64, 64))
    write_caffemodel(tmp_path / "w.caffemodel", "v1", {"conv1": [np.zeros((64, 3, 7, 7), np.float32)]})
    args = ["convert", str(tmp_path / "w.caffemodel"), str(tmp_path / "out.safetensors"), "--prototxt", str(prototxt)]
    line = run_cli(capsys, args + ["--model", "resnet50"])
    assert line == ("resnets: error: the prototxt strides in res3a_branch2a (1x1) but resnet50 strides in the "
                    "3x3; use resnet50_v1")
    line = run_cli(capsys, args + ["--model", "resnet101_v1"])
    assert "3-4-6-3 blocks per stage but resnet101_v1 has 3-4-23-3; use resnet50_v1" in line
    line = run_cli(capsys, args + ["--model", "resnet18"])
    assert "bottleneck blocks" in line and "resnet18 has basic blocks" in line


def test_stride_on_3x3_prototxt_refuses_resnet50_v1(capsys, tmp_path):
    prototxt = tmp_path / "v15.prototxt"
    export_caffe(create_model("resnet50", num_classes=10), prototxt, input_size=(3, 64, 64))
    write_caffemodel(tmp_path / "w.caffemodel", "v15", {"conv1": [np.zeros((64, 3, 7, 7), np.float32)]})
    line = run_cli(capsys, ["convert", str(tmp_path / "w.caffemodel"), str(tmp_path / "o.safetensors"),
                            "--prototxt", str(prototxt), "--model", "resnet50_v1"])
    assert line.endswith("the prototxt strides in res3a_branch2b (3x3) but resnet50_v1 strides in the 1x1; use resnet50")


def test_convert_infers_torch_pool_model_and_round_trips(capsys, tmp_path):
    """An export of a torchvision-pool net (padded pool1 + Crop) converts back to that model."""
    model = create_model("resnet18", num_classes=4).eval()
    prototxt, caffemodel = tmp_path / "r18.prototxt", tmp_path / "r18.caffemodel"
    export_caffe(model, prototxt, caffemodel, input_size=(3, 64, 64))
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", str(caffemodel), str(tmp_path / "r18.safetensors"), "--prototxt", str(prototxt)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 0 and "the prototxt is resnet18 (basic blocks 2-2-2-2" in err
    assert "stem_pool_caffe" not in err
    back = create_model(weights=str(tmp_path / "r18.safetensors")).eval()
    assert not back.config.stem_pool_caffe
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), rtol=0, atol=1e-5)


def test_caffe_stem_pool_exports_as_msra_pool1(tmp_path):
    model = create_model("resnet18", num_classes=3, stem_pool_caffe=True).eval()
    prototxt, caffemodel = tmp_path / "p.prototxt", tmp_path / "p.caffemodel"
    export_caffe(model, prototxt, caffemodel, input_size=(3, 64, 64))
    text = prototxt.read_text()
    assert "pool1_padded" not in text and '"Crop"' not in text
    pool1 = text[text.index('name: "pool1"'):]
    pool1 = pool1[:pool1.index("\n}")]
    assert "pad" not in pool1 and "kernel_size: 3" in pool1 and "stride: 2" in pool1
    net = from_prototxt(prototxt, caffemodel)
    default_pool = create_model("resnet18", num_classes=3).eval()
    default_pool.load_state_dict(model.state_dict())
    for size in (64, 65):  # even and odd sizes: Caffe's and torch's rounding differ on one of them
        x = torch.randn(1, 3, size, size)
        with torch.no_grad():
            torch.testing.assert_close(net(x), model(x), rtol=0, atol=1e-4)
            assert not torch.allclose(default_pool(x), model(x), atol=1e-3)


def test_read_caffemodel_checks_declared_count_before_allocating(tmp_path):
    path = hostile_blob_model(tmp_path / "m.caffemodel", [1 << 30, 1 << 30], 0)
    with pytest.raises(ResnetsError, match=r"holds 0; the caffemodel is damaged"):
        read_caffemodel(path)


def test_oversized_prototxt_is_refused_before_parsing(tmp_path):
    from resnets.weights.caffe.prototxt import MAX_PROTOTXT_BYTES, parse_prototxt

    path = tmp_path / "big.prototxt"
    with open(path, "wb") as handle:
        handle.truncate(MAX_PROTOTXT_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(ResnetsError, match="more than any network definition"):
        parse_prototxt(path)


# Found by make fuzz: "03" in a prototxt was a ValueError traceback (int("03", 0)). protobuf's text
# format reads a leading 0 as octal; a leading 0 before 8 or 9, or a number of more digits than
# Python converts, is one line.
@pytest.mark.parametrize("text, value", [("03", 3), ("-017", -15), ("0x1F", 31), ("12", 12), ("0", 0),
                                         ("2.5f", 2.5), ("09.5", 9.5)])
def test_prototxt_numbers_read_as_protobuf_reads_them(text, value):
    from resnets.weights.caffe.prototxt import parse_prototxt

    assert parse_prototxt(f"layer {{ top: \"x\" num_output: {text} }}")["layer"][0]["num_output"] == [value]


@pytest.mark.parametrize("text", ["09", "-08", "9" * 5000])
def test_prototxt_numbers_python_cannot_read_are_one_line(text):
    from resnets.weights.caffe.prototxt import parse_prototxt

    with pytest.raises(ResnetsError, match="invalid number"):
        parse_prototxt(f"layer {{ num_output: {text} }}")
