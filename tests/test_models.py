"""The ResNet family against torchvision and timm, and its options."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import resnets
from conftest import randomize_batchnorm

TORCHVISION_NAMES = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                     "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", TORCHVISION_NAMES)
def test_torchvision_state_dict_loads_strict_and_gives_same_logits(name):
    torch.manual_seed(0)
    reference = randomize_batchnorm(getattr(torchvision.models, name)()).eval()
    ours = resnets.create_model(name).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    batch = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = reference(batch), ours(batch)
    assert (expected - got).abs().max().item() <= 1e-5
    assert count_params(ours) == count_params(reference)


def test_torchvision_logits_at_full_resolution():
    torch.manual_seed(1)
    reference = randomize_batchnorm(torchvision.models.resnet50(), seed=1).eval()
    ours = resnets.create_model("resnet50").eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    batch = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (reference(batch) - ours(batch)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ["resnet50d", "resnet18d", "resnet50c"])
def test_timm_resnet_cd_matches(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = randomize_batchnorm(timm.create_model(name, pretrained=False)).eval()
    ours = resnets.create_model(name).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    batch = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert (reference(batch) - ours(batch)).abs().max().item() <= 1e-5


def _timm_resnetv2_key(key: str) -> str:
    """timm's ResNetV2 names -> ours (torchvision-style)."""
    key = key.replace("stem.conv.", "conv1.").replace("head.fc.", "fc.")
    if key.startswith("stages."):
        _, stage, _, block, rest = key.split(".", 4)
        rest = rest.replace("downsample.conv.", "downsample.")
        for i in (1, 2, 3):
            rest = rest.replace(f"norm{i}.", f"bn{i}.")
        key = f"layer{int(stage) + 1}.{block}.{rest}"
    return key


def test_preact_resnet50_matches_timm_resnetv2_50():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = randomize_batchnorm(timm.create_model("resnetv2_50", pretrained=False)).eval()
    ours = resnets.create_model("preact_resnet50").eval()
    converted = {_timm_resnetv2_key(k): v for k, v in reference.state_dict().items()}
    converted["fc.weight"] = converted["fc.weight"].flatten(1)  # timm's head is a 1x1 conv
    ours.load_state_dict(converted, strict=True)
    batch = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected, got = reference(batch), ours(batch)
    # no BatchNorm after the last residual sum: logits are large, so the bound is relative
    assert (expected - got).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())


@pytest.mark.parametrize("name, expected", [("resnet20", 0.27e6), ("resnet56", 0.85e6), ("resnet110", 1.7e6)])
def test_cifar_parameter_counts_match_the_paper(name, expected):
    assert abs(count_params(resnets.create_model(name)) - expected) / expected < 0.02
    if name != "resnet110":  # the paper rounds 1.73 M to 1.7 M
        assert abs(count_params(resnets.create_model(name)) - expected) / expected < 0.01


def test_cifar_option_a_has_no_shortcut_parameters_and_option_b_has():
    option_a = resnets.create_model("resnet20")
    option_b = resnets.create_model("resnet20", shortcut="projection")
    assert not [n for n, _ in option_a.named_parameters() if "downsample" in n]
    assert count_params(option_b) > count_params(option_a)
    out = option_a.layer2[0].downsample(torch.ones(1, 16, 32, 32))
    assert out.shape == (1, 32, 16, 16)
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0 and (out[:, 8:24] == 1).all()


def test_v1_and_v15_differ_only_in_stride_placement():
    v15 = resnets.create_model("resnet50").eval()
    v1 = resnets.create_model("resnet50_v1").eval()
    assert count_params(v1) == count_params(v15)
    assert v1.layer2[0].conv1.stride == (2, 2) and v1.layer2[0].conv2.stride == (1, 1)
    assert v15.layer2[0].conv1.stride == (1, 1) and v15.layer2[0].conv2.stride == (2, 2)
    batch = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        shapes_v1 = [m.shape for m in v1.forward_intermediates(batch)]
        shapes_v15 = [m.shape for m in v15.forward_intermediates(batch)]
    assert shapes_v1 == shapes_v15


def test_resnet_d_structure_follows_the_bag_of_tricks_paper():
    model = resnets.create_model("resnet50d")
    stem_convs = [m for m in model.conv1 if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in stem_convs] == [
        (3, 32, (3, 3), (2, 2)), (32, 32, (3, 3), (1, 1)), (32, 64, (3, 3), (1, 1))]
    shortcut = model.layer2[0].downsample
    assert isinstance(shortcut[0], nn.AvgPool2d) and shortcut[0].stride == 2
    assert shortcut[1].stride == (1, 1) and shortcut[1].kernel_size == (1, 1)


def test_feature_maps_for_backbones_have_strides_4_to_32():
    model = resnets.create_model("resnet50", num_classes=0).eval()
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(1, 3, 128, 128))
    assert [m.shape[1] for m in maps] == [256, 512, 1024, 2048]
    assert [128 // m.shape[-1] for m in maps] == [4, 8, 16, 32]
    assert [i.reduction for i in model.feature_info] == [4, 8, 16, 32]


def test_head_options():
    model = resnets.create_model("resnet18", num_classes=0).eval()
    batch = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        embedding = model(batch)
        assert embedding.shape == (2, 512)
        features = model.forward_features(batch)
        assert torch.allclose(model.forward_head(features, pre_logits=True), embedding)
    model.reset_classifier(20)
    assert model(batch).shape == (2, 20)
    assert resnets.create_model("resnet18", in_chans=1, num_classes=7)(torch.randn(2, 1, 64, 64)).shape == (2, 7)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "preact_resnet18", "resnet20"])
def test_zero_init_residual_makes_every_block_start_as_identity(name):
    model = resnets.create_model(name, zero_init_residual=True)
    for stage in model.stages():
        for block in stage:
            if block.downsample is not None:
                continue
            block.eval()
            x = torch.rand(1, block.conv1.in_channels, 8, 8)
            with torch.no_grad():
                out = block(x)
            # post-activation blocks end with a ReLU on (0 + x); x >= 0 here, so both give x
            assert torch.allclose(out, x, atol=1e-6)


def test_drop_path_is_random_in_training_and_off_in_eval():
    model = resnets.create_model("resnet20", drop_path_rate=0.5)
    batch = torch.randn(4, 3, 32, 32)
    torch.manual_seed(0)
    first = model(batch)
    second = model(batch)
    assert not torch.allclose(first, second)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(batch), model(batch))


@pytest.mark.parametrize("name", resnets.list_models())
def test_one_sgd_step_lowers_the_loss(name):
    torch.manual_seed(0)
    model = resnets.create_model(name, num_classes=10)
    size = min(resnets.get_model_spec(name).input_size, 64)  # the smoke tests cover each net's shapes
    batch, labels = torch.randn(1, 3, size, size), torch.tensor([3])
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    loss = nn.functional.cross_entropy(model(batch), labels)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]  # frozen BN scales (airbench) get none
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    optimizer.step()
    with torch.no_grad():
        assert nn.functional.cross_entropy(model(batch), labels) < loss


def test_bad_arguments_raise_value_errors_with_clear_messages():
    with pytest.raises(ValueError, match="unknown model 'resnet51'.*resnet50"):
        resnets.create_model("resnet51")
    with pytest.raises(ValueError, match="num_classes must be a non-negative integer"):
        resnets.create_model("resnet50", num_classes=-1)
    with pytest.raises(ValueError, match="unknown option"):
        resnets.create_model("resnet50", depth=3)
    with pytest.raises(ValueError, match="drop_path_rate"):
        resnets.create_model("resnet50", drop_path_rate=1.5)
