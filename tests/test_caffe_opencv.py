"""A real third-party Caffe runtime (OpenCV's importer) against `resnets convert` and `from_prototxt`.

The prototxt is written here, independently of resnets' exporter, in the layout of MSRA's
original ResNet-50 deploy file: old-style `input_dim` header, conv1 with a bias, unpadded
ceil-rounded pool1, stride on each stage's first 1x1, BatchNorm + Scale pairs, Eltwise sums, a
7x7 average pool5, fc1000 and a Softmax. The weights are random, written by resnets' caffemodel
writer with a BatchNorm scale factor other than 1.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pytest
import torch

from resnets import create_model
from resnets.cli import main
from resnets.weights.caffe import from_prototxt, write_caffemodel

cv2 = pytest.importorskip("cv2", reason="OpenCV (opencv-python-headless) is not installed")

torch.set_num_threads(1)

STAGES = ((2, 3, 64), (3, 4, 128), (4, 6, 256), (5, 3, 512))  # ResNet-50: (stage, blocks, planes)
BN_FACTOR = 2.0


class MsraWriter:
    """Deploy prototxt text and random blobs of a ResNet in MSRA's names and layout."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.lines = ['name: "ResNet-50"', 'input: "data"', "input_dim: 1", "input_dim: 3",
                      "input_dim: 224", "input_dim: 224"]
        self.blobs: dict[str, list[np.ndarray]] = {}

    def layer(self, name: str, kind: str, bottoms: list[str], top: str, params: str = "") -> None:
        bottom = " ".join(f'bottom: "{b}"' for b in bottoms)
        self.lines.append(f'layer {{\n\t{bottom}\n\ttop: "{top}"\n\tname: "{name}"\n\ttype: "{kind}"\n\t{params}\n}}')

    def conv_bn(self, name: str, bottom: str, cin: int, cout: int, kernel: int, stride: int, relu: bool,
                bias: bool = False) -> str:
        pad = f"\n\t\tpad: {kernel // 2}" if kernel > 1 else ""
        bias_line = "" if bias else "\n\t\tbias_term: false"
        self.layer(name, "Convolution", [bottom], name, f"convolution_param {{\n\t\tnum_output: {cout}\n\t\t"
                   f"kernel_size: {kernel}{pad}\n\t\tstride: {stride}{bias_line}\n\t}}")
        fan_in = cin * kernel * kernel
        self.blobs[name] = [self.rng.normal(0, np.sqrt(2 / fan_in), (cout, cin, kernel, kernel)).astype(np.float32)]
        if bias:
            self.blobs[name].append(self.rng.normal(0, 0.1, cout).astype(np.float32))
        tag = name[3:] if name.startswith("res") else f"_{name}"
        self.layer(f"bn{tag}", "BatchNorm", [name], name, "batch_norm_param {\n\t\tuse_global_stats: true\n\t}")
        mean, var = self.rng.normal(0, 0.1, cout), self.rng.uniform(0.5, 1.5, cout)
        self.blobs[f"bn{tag}"] = [(mean * BN_FACTOR).astype(np.float32), (var * BN_FACTOR).astype(np.float32),
                                  np.array([BN_FACTOR], np.float32)]
        self.layer(f"scale{tag}", "Scale", [name], name, "scale_param {\n\t\tbias_term: true\n\t}")
        self.blobs[f"scale{tag}"] = [self.rng.uniform(0.3, 0.8, cout).astype(np.float32),
                                     self.rng.normal(0, 0.1, cout).astype(np.float32)]
        if relu:
            self.layer(f"{name}_relu", "ReLU", [name], name)
        return name

    def resnet50(self, softmax: bool) -> str:
        blob = self.conv_bn("conv1", "data", 3, 64, 7, 2, relu=True, bias=True)
        self.layer("pool1", "Pooling", [blob], "pool1",
                   "pooling_param {\n\t\tkernel_size: 3\n\t\tstride: 2\n\t\tpool: MAX\n\t}")
        blob, channels = "pool1", 64
        for stage, blocks, planes in STAGES:
            for index in range(blocks):
                name = f"res{stage}{string.ascii_lowercase[index]}"
                stride = 2 if index == 0 and stage > 2 else 1
                shortcut = blob
                if index == 0:
                    shortcut = self.conv_bn(f"{name}_branch1", blob, channels, planes * 4, 1, stride, relu=False)
                branch = self.conv_bn(f"{name}_branch2a", blob, channels, planes, 1, stride, relu=True)
                branch = self.conv_bn(f"{name}_branch2b", branch, planes, planes, 3, 1, relu=True)
                branch = self.conv_bn(f"{name}_branch2c", branch, planes, planes * 4, 1, 1, relu=False)
                self.layer(name, "Eltwise", [shortcut, branch], name)
                self.layer(f"{name}_relu", "ReLU", [name], name)
                blob, channels = name, planes * 4
        self.layer("pool5", "Pooling", [blob], "pool5",
                   "pooling_param {\n\t\tkernel_size: 7\n\t\tstride: 1\n\t\tpool: AVE\n\t}")
        self.layer("fc1000", "InnerProduct", ["pool5"], "fc1000", "inner_product_param {\n\t\tnum_output: 1000\n\t}")
        self.blobs["fc1000"] = [self.rng.normal(0, 0.02, (1000, channels)).astype(np.float32),
                                self.rng.normal(0, 0.1, 1000).astype(np.float32)]
        if softmax:
            self.layer("prob", "Softmax", ["fc1000"], "prob")
        return "\n".join(self.lines) + "\n"


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / np.abs(expected).max())


@pytest.fixture(scope="module")
def msra_files(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("msra")
    writer = MsraWriter(seed=0)
    deploy = root / "ResNet-50-deploy.prototxt"
    deploy.write_text(writer.resnet50(softmax=True))
    caffemodel = root / "ResNet-50-model.caffemodel"
    write_caffemodel(caffemodel, "ResNet-50", writer.blobs)
    logits_only = root / "ResNet-50-logits.prototxt"  # the same net without its Softmax
    logits_only.write_text(MsraWriter(seed=0).resnet50(softmax=False))
    return deploy, caffemodel, logits_only


def test_convert_and_from_prototxt_match_opencv_caffe_importer(msra_files, tmp_path, capsys):
    deploy, caffemodel, logits_only = msra_files
    image = np.random.default_rng(1).normal(0, 30, (1, 3, 224, 224)).astype(np.float32)
    net = cv2.dnn.readNetFromCaffe(str(deploy), str(caffemodel))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setInput(image)
    opencv_logits = net.forward("fc1000").reshape(1, 1000)
    assert np.isfinite(opencv_logits).all() and opencv_logits.std() > 0.1

    converted = tmp_path / "resnet50_v1_caffe.safetensors"
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", str(caffemodel), str(converted), "--prototxt", str(deploy)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 0, err
    assert "the prototxt is resnet50_v1" in err and "stem_pool_caffe=True" in err
    model = create_model(weights=str(converted)).eval()
    assert model.config.stride_in_1x1 and model.config.stem_pool_caffe
    with torch.no_grad():
        ours = model(torch.from_numpy(image)).numpy()
    print(f"converted vs OpenCV: {relative_error(ours, opencv_logits):.2e} relative")
    assert relative_error(ours, opencv_logits) < 1e-4

    caffe_net = from_prototxt(logits_only, caffemodel)
    with torch.no_grad():
        assert relative_error(caffe_net(torch.from_numpy(image)).numpy(), opencv_logits) < 1e-4

    # The check can fail: torchvision's padded stem pool (the old conversion) is measurably off.
    shifted = create_model("resnet50_v1").eval()
    shifted.load_state_dict(model.state_dict())
    with torch.no_grad():
        shifted_error = relative_error(shifted(torch.from_numpy(image)).numpy(), opencv_logits)
    print(f"torchvision stem pool vs OpenCV: {shifted_error:.2e} relative")
    assert shifted_error > 1e-3
