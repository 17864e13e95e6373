"""optimize_for_inference: every backend computes the model's function on a copy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import resnets
from resnets.inference import (BACKENDS, fold_batchnorm, onnxruntime_available, openvino_available,
                               optimize_for_inference)

needs_ort = pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime not installed")
needs_ov = pytest.mark.skipif(not openvino_available(), reason="openvino not installed")
needs_nncf = pytest.mark.skipif(not openvino_available(with_nncf=True), reason="openvino/nncf not installed")


def _randomise_batchnorm(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine terms, so that folding is tested."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return model.eval()


TINY = {  # name, options, input side: CIFAR option-A shortcuts, ImageNet stem + projection, pre-act
    "resnet20": ({"layers": (1, 1, 1), "widths": (8, 16, 32), "stem_width": 8}, 32),
    "resnet50": ({"layers": (1, 1, 1, 1), "widths": (8, 8, 16, 16), "stem_width": 8}, 64),
    "preact_resnet18": ({"layers": (1, 1, 1, 1), "widths": (8, 8, 16, 16), "stem_width": 8}, 64),
}


def tiny_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    options, side = TINY[name]
    torch.manual_seed(0)
    model = _randomise_batchnorm(resnets.create_model(name, num_classes=10, **options))
    return model, torch.randn(6, 3, side, side)


@pytest.mark.parametrize("name", list(TINY))
def test_folding_removes_batchnorm_after_convs_and_keeps_outputs(name):
    model, x = tiny_model(name)
    folded = fold_batchnorm(model)
    remaining = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    if name.startswith("preact"):
        assert remaining > 0  # a norm that precedes its conv cannot be folded
    else:
        assert remaining == 0
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("backend", ["eager", pytest.param("onnxruntime", marks=needs_ort),
                                     pytest.param("openvino", marks=needs_ov)])
def test_fp32_backends_match_the_plain_model(name, backend):
    model, x = tiny_model(name)
    fast = optimize_for_inference(model, backend, example_input=x[:1])
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(fast(x), expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(fast(x[:2]), expected[:2], rtol=0, atol=1e-4)  # dynamic batch


@pytest.mark.slow
def test_compile_backend_matches_the_plain_model():
    model, x = tiny_model("resnet20")
    fast = optimize_for_inference(model, "compile", example_input=x)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=0, atol=1e-4)


def test_torchvision_models_are_optimised_too():
    torchvision = pytest.importorskip("torchvision")
    model = _randomise_batchnorm(torchvision.models.resnet18(num_classes=10))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(optimize_for_inference(model)(x), model(x), rtol=0, atol=1e-4)


def test_the_original_model_is_left_trainable_and_unchanged():
    model, x = tiny_model("resnet50")
    model.train()
    model.fc.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads_before = {k: p.requires_grad for k, p in model.named_parameters()}
    optimize_for_inference(model, "eager")
    assert model.training
    assert all(m.training for m in model.modules())
    assert {k: p.requires_grad for k, p in model.named_parameters()} == grads_before
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
        assert after[key].is_contiguous(), key  # no channels-last leaked into the original
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 0
    model(x).sum().backward()
    assert model.conv1.weight.grad is not None


def test_unknown_backend_is_a_one_line_error():
    model, _ = tiny_model("resnet20")
    with pytest.raises(resnets.ResnetsError, match="unknown inference backend 'tensorrt'") as error:
        optimize_for_inference(model, "tensorrt")
    assert "\n" not in str(error.value)
    assert all(b in str(error.value) for b in BACKENDS)


def test_auto_backend_is_exact_with_or_without_onnxruntime(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # auto's probe cache: not the user's
    model, x = tiny_model("resnet20")
    with torch.no_grad():
        expected = model(x)
    fast = optimize_for_inference(model)  # the fastest exact backend by a probe (test_inference_backend.py)
    assert fast.backend in ("onnxruntime", "openvino", "eager")
    torch.testing.assert_close(fast(x), expected, rtol=0, atol=1e-4)
    monkeypatch.setattr("resnets.inference.onnxruntime_available", lambda: False)
    assert optimize_for_inference(model).backend in ("openvino", "eager")


@needs_ov
def test_openvino_compiles_other_input_sizes_on_demand():
    model, x = tiny_model("resnet50")
    fast = optimize_for_inference(model, "openvino", example_input=x[:1])
    bigger = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        torch.testing.assert_close(fast(bigger), model(bigger), rtol=0, atol=1e-4)
    assert set(fast.requests) == {(3, 64, 64), (3, 96, 80)}


def test_missing_openvino_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr("resnets.inference.openvino_available", lambda with_nncf=False: False)
    model, _ = tiny_model("resnet20")
    for backend in ("openvino", "openvino-int8"):
        with pytest.raises(resnets.ResnetsError, match=r"pip install 'resnets\[openvino\]'") as error:
            optimize_for_inference(model, backend)
        assert "\n" not in str(error.value)


def test_missing_onnxruntime_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr("resnets.inference.onnxruntime_available", lambda: False)
    model, _ = tiny_model("resnet20")
    with pytest.raises(resnets.ResnetsError, match=r"pip install 'resnets\[onnx\]'"):
        optimize_for_inference(model, "onnxruntime")


def _separable_data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes told apart by which quadrant of the image is bright, plus noise."""
    labels = torch.randint(0, 4, (n,), generator=generator)
    images = torch.randn(n, 3, 16, 16, generator=generator) * 0.5
    for i, label in enumerate(labels.tolist()):
        row, col = divmod(label, 2)
        images[i, :, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8] += 2.0
    return images, labels


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("backend", [pytest.param("int8", marks=needs_ort),
                                     pytest.param("openvino-int8", marks=needs_nncf)])
def test_int8_keeps_the_top1_of_a_trained_model(backend):
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = resnets.create_model("resnet20", num_classes=4, layers=(1, 1, 1), widths=(8, 16, 32),
                                 stem_width=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(40):
        images, labels = _separable_data(32, generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    model.eval()
    test_images, test_labels = _separable_data(400, generator)
    with torch.no_grad():
        fp32_top1 = model(test_images).argmax(1)
    assert (fp32_top1 == test_labels).float().mean() > 0.9  # the check below is meaningful
    calibration, _ = _separable_data(256, generator)
    int8 = optimize_for_inference(model, backend, example_input=test_images[:1], calibration_data=calibration)
    agreement = (int8(test_images).argmax(1) == fp32_top1).float().mean().item()
    assert agreement >= 0.99


@pytest.mark.parametrize("backend", [pytest.param("int8", marks=needs_ort),
                                     pytest.param("openvino-int8", marks=needs_nncf)])
def test_int8_without_calibration_data_is_an_error(backend):
    model, _ = tiny_model("resnet20")
    with pytest.raises(resnets.ResnetsError, match="calibration_data"):
        optimize_for_inference(model, backend)
