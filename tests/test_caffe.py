"""Caffe support: prototxt parsing, caffemodel I/O, running Caffe nets, export and import of ResNets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from resnets import ResnetsError, create_model
from resnets.weights.caffe import (CaffeNet, caffe_to_state_dict, export_caffe, format_prototxt,
                                   from_prototxt, parse_prototxt, read_binaryproto, read_caffemodel,
                                   write_caffemodel)
from resnets.weights.caffe.caffemodel import BlobProto, NetParameter

torch.set_num_threads(min(2, torch.get_num_threads()))

SEED = Path(__file__).parent / "data" / "resnet18-7class-train.prototxt"


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so a mis-converted BN changes the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
    return model


def net_from_text(tmp_path: Path, text: str, blobs: dict | None = None) -> CaffeNet:
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(text)
    caffemodel = None
    if blobs is not None:
        caffemodel = tmp_path / "net.caffemodel"
        write_caffemodel(caffemodel, "net", blobs)
    return from_prototxt(prototxt, caffemodel)


INPUT_3x8x8 = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'


# -- prototxt -----------------------------------------------------------------------------------
def test_parse_prototxt_handles_comments_repeats_and_odd_syntax():
    net = parse_prototxt("""
        name: "x"  # a comment
        input_dim: 1 input_dim: 3
        layer {
              name: 'c1' type: "Convolution"
          bottom: "data" bottom: "extra"   top: "c1"
          convolution_param: { num_output: 4 kernel_size: 3 stride:2 bias_term: false }
          param < lr_mult: 1.5e0 >
          include { phase: TRAIN }
        }
        layers { name: "old" type: CONVOLUTION ; dims: [1, 2, -3] weight: -0.25 s: "a\\"b" "c" }
    """)
    assert net["name"] == ["x"] and net["input_dim"] == [1, 3]
    layer = net["layer"][0]
    assert layer["bottom"] == ["data", "extra"]
    assert layer["convolution_param"][0] == {"num_output": [4], "kernel_size": [3], "stride": [2],
                                             "bias_term": [False]}
    assert layer["param"][0]["lr_mult"] == [1.5]
    assert layer["include"][0]["phase"] == ["TRAIN"]
    old = net["layers"][0]
    assert old["type"] == ["CONVOLUTION"] and old["dims"] == [1, 2, -3] and old["weight"] == [-0.25]
    assert old["s"] == ['a"bc']
    assert parse_prototxt(format_prototxt(net)) == net
    assert parse_prototxt('s: "caf\\u00e9 \\t日本"') == {"s": ["café \t日本"]}


@pytest.mark.parametrize("text, line", [
    ('name: "x"\nlayer {\n  name: "a"\n  type "Conv"\n}\n', 4),
    ('layer {\n  name: "a"\n', 2),
    ('layer {\n  name: "a" }\n}\n', 3),
    ('layer {\n  name: "unterminated\n}\n', 2),
])
def test_prototxt_syntax_error_names_file_and_line(tmp_path, text, line):
    path = tmp_path / "bad.prototxt"
    path.write_text(text)
    with pytest.raises(ResnetsError) as error:
        parse_prototxt(path)
    message = str(error.value)
    assert f"{path}:{line}:" in message and "\n" not in message


def test_missing_prototxt_is_a_one_line_error(tmp_path):
    with pytest.raises(ResnetsError, match="not found"):
        from_prototxt(tmp_path / "nope.prototxt")


# -- caffemodel ---------------------------------------------------------------------------------
def test_caffemodel_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    layers = {"conv": [rng.standard_normal((4, 3, 3, 3), dtype=np.float32), rng.standard_normal(4, dtype=np.float32)],
              "fc": [rng.standard_normal((5, 7), dtype=np.float32)], "bn": [np.array([2.0], np.float32)]}
    write_caffemodel(tmp_path / "m.caffemodel", "net", layers, {"conv": "Convolution"})
    back = read_caffemodel(tmp_path / "m.caffemodel")
    assert list(back) == list(layers)
    for name in layers:
        for want, got in zip(layers[name], back[name]):
            assert got.shape == want.shape and np.array_equal(got, want)
    net = NetParameter()
    net.ParseFromString((tmp_path / "m.caffemodel").read_bytes())
    assert net.name == "net" and net.layer[0].type == "Convolution"
    # The hand-assembled bytes are exactly what protobuf itself serializes.
    assert net.SerializeToString() == (tmp_path / "m.caffemodel").read_bytes()


def test_reads_legacy_v1_layers_and_4d_blob_dims(tmp_path):
    net = NetParameter(name="old")
    layer = net.layers.add(name="fc", type=14)
    blob = layer.blobs.add(num=1, channels=1, height=2, width=3)
    blob.data.extend([1, 2, 3, 4, 5, 6])
    blob = layer.blobs.add()
    blob.double_data.extend([0.5, 1.5])
    blob.shape.dim.extend([2])
    (tmp_path / "old.caffemodel").write_bytes(net.SerializeToString())
    blobs = read_caffemodel(tmp_path / "old.caffemodel")
    assert blobs["fc"][0].shape == (1, 1, 2, 3) and blobs["fc"][0][0, 0, 1, 2] == 6
    assert blobs["fc"][1].tolist() == [0.5, 1.5]


def test_reads_mean_binaryproto(tmp_path):
    blob = BlobProto(num=1, channels=3, height=2, width=2)
    blob.data.extend(range(12))
    (tmp_path / "mean.binaryproto").write_bytes(blob.SerializeToString())
    mean = read_binaryproto(tmp_path / "mean.binaryproto")
    assert mean.shape == (1, 3, 2, 2) and mean[0, 2, 1, 1] == 11
    (tmp_path / "cut.binaryproto").write_bytes(blob.SerializeToString()[:-5])
    with pytest.raises(ResnetsError, match="truncated"):
        read_binaryproto(tmp_path / "cut.binaryproto")


def test_truncated_caffemodel_is_a_one_line_error(tmp_path):
    write_caffemodel(tmp_path / "m.caffemodel", "net", {"conv": [np.ones((64, 3, 7, 7), np.float32)]})
    data = (tmp_path / "m.caffemodel").read_bytes()
    (tmp_path / "cut.caffemodel").write_bytes(data[: len(data) // 2])
    with pytest.raises(ResnetsError, match="truncated") as error:
        read_caffemodel(tmp_path / "cut.caffemodel")
    assert "\n" not in str(error.value)


# -- running Caffe nets -------------------------------------------------------------------------
@pytest.mark.parametrize("phase, mirror, loss_layers", [
    ("TRAIN", True, ["loss (SoftmaxWithLoss)"]),
    ("TEST", False, ["loss (SoftmaxWithLoss)", "accuracy (Accuracy)"]),
])
def test_seed_prototxt_loads_reports_data_and_runs(phase, mirror, loss_layers):
    model = from_prototxt(SEED, phase=phase)
    info = model.data_info
    assert (info.num_classes, info.crop_size, info.mirror, info.batch_size) == (7, 224, mirror, 8)
    assert info.backend == "LMDB" and info.source.endswith(("train.db", "valid.db"))
    assert info.mean_file.endswith("_mean.binary") and info.loss_layers == loss_layers
    assert model.input_size == (3, 224, 224)
    # 25 conv + 25 fused BN/Scale: the Scale layers fold into the BatchNorm2d modules.
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 25
    assert sum(isinstance(m, nn.BatchNorm2d) and m.affine for m in model.modules()) == 25
    assert model.res5b_branch1.in_channels == 512 and model.fc7.in_features == 512
    if phase == "TRAIN":  # one run at full size is enough
        with torch.no_grad():
            out = model(torch.randn(2, 3, 224, 224))
        assert out.shape == (2, 7) and torch.isfinite(out).all()


def caffe_pool_reference(x: np.ndarray, kernel: int, stride: int, pad: int, method: str) -> np.ndarray:
    """Caffe's pooling_layer.cpp, written as plainly as Caffe does it."""
    h, w = x.shape[-2:]
    out_h = int(math.ceil((h + 2 * pad - kernel) / stride)) + 1
    out_w = int(math.ceil((w + 2 * pad - kernel) / stride)) + 1
    if pad:
        out_h -= (out_h - 1) * stride >= h + pad
        out_w -= (out_w - 1) * stride >= w + pad
    out = np.zeros(x.shape[:-2] + (out_h, out_w), np.float32)
    for i in range(out_h):
        for j in range(out_w):
            hs, ws = i * stride - pad, j * stride - pad
            he, we = min(hs + kernel, h + pad), min(ws + kernel, w + pad)
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            window = x[..., hs:he, ws:we]
            out[..., i, j] = window.max((-1, -2)) if method == "MAX" else window.sum((-1, -2)) / size
    return out


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("kernel, stride, pad, size", [(3, 2, 0, 8), (3, 2, 1, 8), (3, 2, 1, 9), (2, 2, 0, 7),
                                                      (5, 3, 2, 10), (3, 1, 1, 6)])
def test_pooling_rounds_like_caffe(tmp_path, method, kernel, stride, pad, size):
    model = net_from_text(tmp_path, INPUT_3x8x8 + f"""
        layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool"
                 pooling_param {{ pool: {method} kernel_size: {kernel} stride: {stride} pad: {pad} }} }}""")
    x = torch.randn(1, 3, size, size)
    expected = caffe_pool_reference(x.numpy(), kernel, stride, pad, method)
    got = model(x).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_batchnorm_scale_pair_uses_scale_factor_eps_and_conv_bias(tmp_path):
    rng = np.random.default_rng(1)
    weight, bias = rng.standard_normal((4, 3, 3, 3)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    mean, var = rng.standard_normal(4).astype(np.float32), rng.random(4).astype(np.float32) + 0.5
    gamma, beta = rng.random(4).astype(np.float32) + 0.5, rng.standard_normal(4).astype(np.float32)
    factor = 4.0
    model = net_from_text(tmp_path, INPUT_3x8x8 + """
        layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
                convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
        layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" batch_norm_param { eps: 0.001 } }
        layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
        layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" relu_param { negative_slope: 0.1 } }
    """, {"conv": [weight, bias], "bn": [mean * factor, var * factor, np.array([factor], np.float32)],
          "scale": [gamma, beta]})
    assert [name for name, _ in model.named_children()] == ["conv", "bn", "relu"]
    x = torch.randn(2, 3, 8, 8)
    y = nn.functional.conv2d(x, torch.from_numpy(weight), torch.from_numpy(bias), padding=1)
    shape = (1, 4, 1, 1)
    y = ((y - torch.from_numpy(mean).view(shape)) / torch.sqrt(torch.from_numpy(var).view(shape) + 1e-3)
         * torch.from_numpy(gamma).view(shape) + torch.from_numpy(beta).view(shape))
    y = nn.functional.leaky_relu(y, 0.1)
    torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-5)


def test_eltwise_concat_softmax_and_v1_layers(tmp_path):
    model = net_from_text(tmp_path, """
        input: "data" input_dim: 1 input_dim: 2 input_dim: 4 input_dim: 4
        layers { name: "split" type: SPLIT bottom: "data" top: "a" top: "b" }
        layers { name: "sum" type: ELTWISE bottom: "a" bottom: "b" top: "sum" eltwise_param { coeff: 1 coeff: -2 } }
        layers { name: "prod" type: ELTWISE bottom: "a" bottom: "sum" top: "prod" eltwise_param { operation: PROD } }
        layers { name: "max" type: ELTWISE bottom: "a" bottom: "prod" top: "max" eltwise_param { operation: MAX } }
        layers { name: "cat" type: CONCAT bottom: "max" bottom: "a" top: "cat" }
        layers { name: "flat" type: FLATTEN bottom: "cat" top: "flat" }
        layers { name: "drop" type: DROPOUT bottom: "flat" top: "flat" }
        layers { name: "prob" type: SOFTMAX bottom: "flat" top: "prob" }
    """)
    assert model.input_size == (2, 4, 4)
    x = torch.randn(3, 2, 4, 4)
    total = x - 2 * x
    expected = torch.softmax(torch.cat([torch.maximum(x, x * total), x], 1).flatten(1), 1)
    torch.testing.assert_close(model(x), expected)


# -- bad input ----------------------------------------------------------------------------------
def test_mixing_layer_and_v1_layers_is_refused(tmp_path):
    with pytest.raises(ResnetsError, match="both"):
        net_from_text(tmp_path, INPUT_3x8x8 + 'layers { name: "r" type: RELU bottom: "data" top: "r" }')


def test_unknown_layer_type_names_layer_and_type(tmp_path):
    with pytest.raises(ResnetsError, match="layer 'weird' has type 'LRN'") as error:
        net_from_text(tmp_path, INPUT_3x8x8 + 'layer { name: "weird" type: "LRN" bottom: "data" top: "n" }')
    assert "\n" not in str(error.value)


def test_caffemodel_that_does_not_fit_names_layer_and_both_shapes(tmp_path):
    text = INPUT_3x8x8 + """layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
                                    convolution_param { num_output: 4 kernel_size: 3 bias_term: false } }"""
    with pytest.raises(ResnetsError, match=r"layer 'conv' has shape \(4, 3, 5, 5\).*\(4, 3, 3, 3\)"):
        net_from_text(tmp_path, text, {"conv": [np.zeros((4, 3, 5, 5), np.float32)]})
    with pytest.raises(ResnetsError, match="no weights for layer 'conv'"):
        net_from_text(tmp_path, text, {"other": [np.zeros((4, 3, 3, 3), np.float32)]})


def test_export_rejects_what_caffe_cannot_express(tmp_path):
    with pytest.raises(ResnetsError, match="pre-activation"):
        export_caffe(create_model("preact_resnet18"), tmp_path / "x.prototxt")
    with pytest.raises(ResnetsError, match="zero-padding"):
        export_caffe(create_model("resnet20"), tmp_path / "x.prototxt")


# -- export and import of ResNets ---------------------------------------------------------------
def exported(tmp_path: Path, model: nn.Module) -> tuple[Path, Path]:
    prototxt, caffemodel = tmp_path / "deploy.prototxt", tmp_path / "weights.caffemodel"
    export_caffe(model, prototxt, caffemodel, input_size=(3, 64, 64))
    return prototxt, caffemodel


@pytest.mark.parametrize("name, torchvision_fn", [("resnet50", torchvision.models.resnet50),
                                                  ("resnet18", torchvision.models.resnet18)])
def test_export_matches_torchvision_and_imports_back(tmp_path, name, torchvision_fn):
    torch.manual_seed(0)
    reference = randomize_bn(torchvision_fn()).eval()
    model = create_model(name)
    model.load_state_dict(reference.state_dict())
    prototxt, caffemodel = exported(tmp_path, model.eval())
    net = from_prototxt(prototxt, caffemodel)
    assert "fc1000" in read_caffemodel(caffemodel) and net.data_info.num_classes == 1000
    back = create_model(name)
    back.load_state_dict(caffe_to_state_dict(prototxt, caffemodel, back))
    back.eval()
    # 65: an odd size, where Caffe's round-up pooling and torch's round-down disagree.
    for size in (64, 65):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            expected = reference(x)
            torch.testing.assert_close(net(x), expected, rtol=0, atol=1e-4)
            torch.testing.assert_close(back(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["resnet50_v1", "resnet18d"])
def test_export_round_trip_v1_and_resnet_d(tmp_path, name):
    model = randomize_bn(create_model(name, num_classes=10)).eval()
    prototxt, caffemodel = exported(tmp_path, model)
    net = from_prototxt(prototxt, caffemodel)
    blobs = read_caffemodel(caffemodel)
    if name == "resnet50_v1":
        assert blobs["res3a_branch2a"][0].shape == (128, 256, 1, 1)
        assert net.res3a_branch2a.stride == (2, 2) and net.res3a_branch2b.stride == (1, 1)
    else:
        assert {"conv1_1", "conv1_2", "conv1_3", "bn_conv1_3", "fc10"} <= set(blobs)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=0, atol=1e-4)


def test_import_folds_msra_conv1_bias_and_eps(tmp_path):
    """MSRA's conv1 has a bias and another net may use another BN eps: both fold in exactly."""
    model = randomize_bn(create_model("resnet18", num_classes=5)).eval()
    prototxt, caffemodel = exported(tmp_path, model)
    text = prototxt.read_text()
    conv1 = text.index('name: "conv1"')
    text = text[:conv1] + text[conv1:].replace("bias_term: false", "bias_term: true", 1)
    bn = text.index('name: "bn_conv1"')
    text = text[:bn] + text[bn:].replace("eps: 1e-05", "eps: 0.01", 1)
    prototxt.write_text(text)
    blobs = read_caffemodel(caffemodel)
    blobs["conv1"].append(np.linspace(-1, 1, 64, dtype=np.float32))
    write_caffemodel(caffemodel, "msra", blobs)
    caffe_net = from_prototxt(prototxt, caffemodel)
    assert caffe_net.conv1.bias is not None and caffe_net.bn_conv1.eps == 0.01
    imported = create_model("resnet18", num_classes=5)
    imported.load_state_dict(caffe_to_state_dict(prototxt, caffemodel, imported))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = caffe_net(x)
        assert not torch.allclose(expected, model(x), atol=1e-3)
        torch.testing.assert_close(imported.eval()(x), expected, rtol=0, atol=1e-4)


def test_import_into_another_architecture_is_a_one_line_error(tmp_path):
    prototxt, caffemodel = exported(tmp_path, create_model("resnet18", num_classes=5))
    with pytest.raises(ResnetsError, match="res2a_branch1"):
        caffe_to_state_dict(prototxt, caffemodel, create_model("resnet50"))
    with pytest.raises(ResnetsError, match=r"layer 'fc5' has shape \(5, 512\)"):
        caffe_to_state_dict(prototxt, caffemodel, create_model("resnet18", num_classes=7))


def test_deep_stages_use_msra_numbered_block_names():
    from resnets.weights.caffe.layout import resnet_layout

    # Stage depths as in ResNet-101 (3, 4, 23, 3), with basic blocks to stay small.
    layout = resnet_layout(create_model("resnet18", layers=(3, 4, 23, 3), num_classes=0))
    names = [block.name for block in layout.blocks]
    assert names[:8] == ["res2a", "res2b", "res2c", "res3a", "res3b1", "res3b2", "res3b3", "res4a"]
    assert names[-4:] == ["res4b22", "res5a", "res5b", "res5c"]
    assert layout.fc is None and layout.blocks[3].shortcut[0].caffe_bn == "bn3a_branch1"
    assert [u.caffe_scale for u in layout.blocks[4].branch] == ["scale3b1_branch2a", "scale3b1_branch2b"]
