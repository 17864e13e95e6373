"""airbench94's net (Keller Jordan's airbench94_muon.py) as a registered layout of the one ResNet:
its published parameter count layer by layer, its forward pass written out by hand, and each of
its techniques (Dirac init, frozen-scale BatchNorm, head scaling) checked on the built model,
also on ResNet-9 with the same techniques; existing nets keep their defaults."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnets import ResnetsError, create_model
from resnets.export import ONNX_INPUT, export_onnx
from resnets.models.resnet import ResNetConfig
from resnets.weights import save_weights
from weights_helpers import randomise

pytestmark = pytest.mark.usefixtures("one_thread")

# airbench94's layers as published: 2x2 whitening conv with bias, then per group a 3x3 conv + BN
# after the pool and a plain 3x3 conv + BN, and a bias-free 256 -> 10 head.
LAYER_PARAMETERS = {
    "conv1": 3 * 24 * 2 * 2 + 24,
    "layer1.0.conv": 9 * 24 * 64, "layer1.0.bn": 2 * 64, "layer1.1.conv": 9 * 64 * 64, "layer1.1.bn": 2 * 64,
    "layer2.0.conv": 9 * 64 * 256, "layer2.0.bn": 2 * 256, "layer2.1.conv": 9 * 256 * 256, "layer2.1.bn": 2 * 256,
    "layer3.0.conv": 9 * 256 * 256, "layer3.0.bn": 2 * 256, "layer3.1.conv": 9 * 256 * 256, "layer3.1.bn": 2 * 256,
    "fc": 256 * 10,
}


def _airbench(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("airbench94")


def _norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def test_airbench94_has_the_published_parameter_count_layer_by_layer():
    model = _airbench()
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        layer = name.rsplit(".", 1)[0]
        counts[layer] = counts.get(layer, 0) + param.numel()
    assert counts == LAYER_PARAMETERS
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters()) == 1_972_792
    # The same techniques leave ResNet-9's layout (and its state-dict keys) as they were.
    page, airbench = create_model("resnet9_cifar"), create_model("resnet9_cifar_airbench")
    assert page.state_dict().keys() == airbench.state_dict().keys()
    assert sum(p.numel() for p in airbench.parameters()) == 6_573_120


def test_airbench94_residual_is_resnet9s_layout_at_airbench_widths():
    """airbench94 with ResNet-9's residual pairs (after the first and last groups) in place of its
    plain convs: the same stem, widths, head and techniques, counted layer by layer."""
    from resnets.models.blocks import ConvPool, ResidualPair
    torch.manual_seed(0)
    model = create_model("airbench94_residual")
    assert [[type(b) for b in stage] for stage in model.stages()] == [
        [ConvPool, ResidualPair], [ConvPool], [ConvPool, ResidualPair]]
    pair = {"layer1.1": 64, "layer3.1": 256}
    expected = {k: v for k, v in LAYER_PARAMETERS.items() if not k.startswith(("layer1.1", "layer2.1", "layer3.1"))}
    for prefix, width in pair.items():
        for half in ("1", "2"):
            expected[f"{prefix}.conv{half}"] = 9 * width * width
            expected[f"{prefix}.bn{half}"] = 2 * width
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        counts[name.rsplit(".", 1)[0]] = counts.get(name.rsplit(".", 1)[0], 0) + param.numel()
    assert counts == expected and sum(counts.values()) == 2_009_784
    assert model.config.head_scale == 1 / 256 and isinstance(model.layer1[1].relu, nn.GELU)
    x = torch.randn(2, 64, 16, 16)
    block = model.layer1[1].eval()
    with torch.no_grad():  # the pair adds its branch to the identity
        branch = block.relu(block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x))))))
        torch.testing.assert_close(block(x), x + branch)


def _by_hand(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """airbench94's forward pass written out from its definition: the features and the logits."""
    x = F.gelu(model.conv1(x))
    for stage in model.stages():
        entry, plain = stage
        x = F.gelu(entry.bn(F.max_pool2d(entry.conv(x), 2)))  # conv -> pool -> BN -> GELU
        x = F.gelu(plain.bn(plain.conv(x)))  # a plain conv, no shortcut
    features = x
    return features, F.max_pool2d(features, 3).flatten(1) @ model.fc.weight.T / 256


def test_airbench94_forward_is_its_published_layout():
    model = randomise(_airbench())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features, expected = _by_hand(model, x)
        assert features.shape == (2, 256, 3, 3)
        logits = model(x)
        assert logits.shape == (2, 10)
        torch.testing.assert_close(model.forward_features(x), features)
        torch.testing.assert_close(logits, model.fc(model.forward_head(features, pre_logits=True)) / 256)
        torch.testing.assert_close(logits, expected)
    assert model.fc.bias is None and model.conv1.bias is not None
    assert model.preprocessing.input_size == 32 and model.min_input_size == 9
    assert model(torch.randn(1, 3, 9, 9)).shape == (1, 10)


def test_dirac_init_passes_the_input_through_the_first_filters():
    model = _airbench()
    x = torch.randn(2, 64, 15, 15)
    for conv in (model.layer1[1].conv, model.layer2[0].conv):  # 64 -> 64 and 64 -> 256
        with torch.no_grad():
            out = conv(x)
        assert torch.equal(out[:, :64], x)
        rest = conv.weight[64:]
        if len(rest):  # the other filters keep PyTorch's default (uniform within 1/sqrt(fan_in))
            bound = 1 / (64 * 9) ** 0.5
            assert rest.abs().max() <= bound and rest.std() > bound / 4
    stem = model.conv1.weight  # the 2x2 whitening conv is not a 3x3 conv: no Dirac filters
    assert stem.shape == (24, 3, 2, 2)
    for name, dirac in (("resnet9_cifar_airbench", True), ("resnet9_cifar", False)):  # off by default
        weight = create_model(name).layer1[1].conv1.weight
        assert torch.equal(weight, nn.init.dirac_(torch.empty_like(weight))) == dirac


@pytest.mark.parametrize("name", ["airbench94", "resnet9_cifar_airbench"])
def test_frozen_norm_scale_stays_one_while_the_shifts_train(name):
    torch.manual_seed(0)
    model = create_model(name).train()
    norms = _norms(model)
    assert norms and all(not n.weight.requires_grad and torch.equal(n.weight, torch.ones_like(n.weight))
                         for n in norms)
    assert all(n.bias.requires_grad for n in norms)
    entry = model.layer1[0].bn
    seen = []
    entry.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().mean((0, 2, 3))))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    after = model.state_dict()
    for n in norms:
        prefix = next(k for k, m in model.named_modules() if m is n)
        assert torch.equal(after[f"{prefix}.weight"], before[f"{prefix}.weight"])
        assert not torch.equal(after[f"{prefix}.bias"], before[f"{prefix}.bias"]), prefix
    # running statistics move by momentum 0.4 (airbench's 0.6): 0.6 * 0 + 0.4 * the batch mean
    torch.testing.assert_close(entry.running_mean, 0.4 * seen[0])


def test_norm_settings_and_defaults_of_other_nets():
    for name in ("airbench94", "resnet9_cifar_airbench"):
        assert {(n.momentum, n.eps) for n in _norms(create_model(name))} == {(0.4, 1e-12)}
    for name in ("resnet20", "resnet9_cifar"):
        model = create_model(name)
        assert {(n.momentum, n.eps) for n in _norms(model)} == {(0.1, 1e-5)}
        assert all(n.weight.requires_grad for n in _norms(model))
        assert not any(isinstance(m, nn.GELU) for m in model.modules())
        assert model.config.residual and not model.config.dirac_init and model.config.head_init_std is None
    assert any(isinstance(m, nn.GELU) for m in create_model("resnet9_cifar_airbench").modules())


def test_head_weight_starts_at_unit_std():
    for name, width in (("airbench94", 256), ("resnet9_cifar_airbench", 512)):
        model = create_model(name)
        assert model.fc.weight.std().item() == pytest.approx(1.0, abs=1e-5)
        assert model.config.head_scale == 1 / width  # logits divided by the width, as airbench's
        model.reset_classifier(3)
        assert model.fc.weight.std().item() == pytest.approx(1.0, abs=1e-5)


def test_saves_loads_and_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = randomise(_airbench(1))
    path = save_weights(tmp_path / "a.safetensors", model)
    again = create_model(weights=str(path)).eval()
    assert again.config == model.config and again.model_name == "airbench94"
    assert all(not n.weight.requires_grad for n in _norms(again))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(again(x), expected)
    export_onnx(model, tmp_path / "a.onnx", torch.randn(1, 3, 32, 32))  # its own relative check
    session = ort.InferenceSession(str(tmp_path / "a.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {ONNX_INPUT: x.numpy()})[0])
    assert (got - expected).abs().max() <= 1e-4 * max(1.0, expected.abs().max().item())


@pytest.mark.parametrize("field, value, message", [
    ("activation", "swish", "activation"), ("activation", ["gelu"], "activation"),
    ("norm_eps", 0.0, "norm_eps"), ("norm_momentum", 1.5, "norm_momentum"),
    ("head_init_std", float("nan"), "head_init_std"), ("stem", "patchy", "stem"),
])
def test_bad_settings_are_refused_from_records(field, value, message):
    record = {**create_model("airbench94").config.to_dict(), field: value}
    with pytest.raises(ResnetsError, match=message):
        ResNetConfig.from_dict(record)


def test_plain_units_and_pool_order_belong_to_conv_pool_stages():
    with pytest.raises(ResnetsError, match="conv_pool"):
        create_model("resnet20", residual=False)
    with pytest.raises(ResnetsError, match="conv_pool"):
        create_model("resnet20", pool_before_norm=True)
    with pytest.raises(ResnetsError, match="drop_path_rate"):
        create_model("airbench94", drop_path_rate=0.1)


def test_unfreezing_after_transfer_keeps_the_models_own_frozen_scales():
    """--freeze then --unfreeze-after give gradients back to what freeze took, not to the BatchNorm
    scales airbench keeps frozen itself."""
    from resnets.train.freeze import freeze, parse_freeze, unfreeze

    model = create_model("airbench94")
    parts = parse_freeze("backbone", model)
    freeze(model, parts)
    assert not any(p.requires_grad for name, p in model.named_parameters() if not name.startswith("fc"))
    unfreeze(model, parts)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(not m.weight.requires_grad and m.bias.requires_grad for m in norms)
    assert all(p.requires_grad for name, p in model.named_parameters() if "conv" in name and name.endswith("weight"))
