"""Page's ResNet-9 and the fast CIFAR recipe (issue 16): shapes, parameter counts, the head,
and the recipe run end to end through the CLI, resumed bit for bit."""

from __future__ import annotations

import pytest
import torch

import resnets
from resnets import create_model
from resnets.models.registry import resnet9_config
from resnets.train.checkpoint import load_state

from _train_fixtures import write_folder_dataset


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _published_resnet9_parameters(widths=(64, 128, 256, 512), classes=10) -> int:
    """Page's ResNet-9 counted layer by layer from its definition: 3x3 convs without bias, each
    followed by BN (weight and bias), a bias-free linear head."""
    prep, c1, c2, c3 = widths

    def conv_bn(cin: int, cout: int) -> int:
        return 9 * cin * cout + 2 * cout

    return (conv_bn(3, prep) + conv_bn(prep, c1) + 2 * conv_bn(c1, c1) + conv_bn(c1, c2)
            + conv_bn(c2, c3) + 2 * conv_bn(c3, c3) + c3 * classes)


def test_resnet9_has_the_published_parameter_count():
    assert _count(create_model("resnet9_cifar")) == _published_resnet9_parameters() == 6_573_120
    assert _count(create_model("resnet9_cifar_x0_5")) == _published_resnet9_parameters((32, 64, 128, 256))
    assert _count(create_model("resnet9_cifar_x0_75")) == _published_resnet9_parameters((48, 96, 192, 384))


@pytest.mark.parametrize("name, width", [("resnet9_cifar", 512), ("resnet9_cifar_x0_5", 256)])
def test_resnet9_shapes(name, width):
    model = create_model(name).eval()
    maps = model.forward_intermediates(torch.randn(2, 3, 32, 32))
    assert [tuple(m.shape[1:]) for m in maps] == [(width // 4, 16, 16), (width // 2, 8, 8), (width, 4, 4)]
    assert [info.reduction for info in model.feature_info] == [2, 4, 8]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model.preprocessing.input_size == 32
    assert model.default_target_layer() == "layer3.1"


def test_resnet9_head_is_a_scaled_max_pool_without_bias():
    model = create_model("resnet9_cifar_x0_5").eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        by_hand = 0.125 * features.amax(dim=(2, 3)) @ model.fc.weight.T
        assert torch.allclose(model(x), by_hand, atol=1e-6)
    assert model.fc.bias is None


def test_resnet9_width_multiplier_and_record_round_trip(tmp_path):
    assert resnet9_config(0.5).widths == (64, 128, 256) and resnet9_config(0.5).stem_width == 32
    model = create_model("resnet9_cifar_x0_5", num_classes=4)
    path = tmp_path / "r9.safetensors"
    resnets.save_weights(path, model)
    again = resnets.load_model(str(path))
    assert again.config == model.config
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), again.eval()(x))


def test_resnet9_refuses_bad_head_settings():
    from resnets.errors import ResnetsError

    with pytest.raises(ResnetsError, match="head_pool"):
        create_model("resnet9_cifar", head_pool="median")
    with pytest.raises(ResnetsError, match="head_scale"):
        create_model("resnet9_cifar", head_scale=float("nan"))


def test_the_fast_recipe_runs_and_resumes_bitwise(tmp_path, run_cli):
    """Issue 16's acceptance: the shipped recipe for one epoch on 2,000 images (two epochs, to
    resume between them), straight and stopped after the first then resumed: the same weights
    and EMA bit for bit."""
    data = write_folder_dataset(tmp_path / "data", {"train": 667, "val": 30}, size=32)
    recipe = ["train", "--config", "cifar10-resnet9-fast", "--data", data, "--epochs", "2", "--no-progress"]
    assert run_cli(*recipe, "--out", tmp_path / "full")[0] == 0
    assert run_cli(*recipe, "--out", tmp_path / "split", "--stop-after", "1")[0] == 0
    assert run_cli("train", "--resume", tmp_path / "split", "--no-progress")[0] == 0
    full, split = load_state(tmp_path / "full"), load_state(tmp_path / "split")
    assert full["epoch"] == split["epoch"]
    for key in ("model", "ema"):
        assert full[key].keys() == split[key].keys()
        for name in full[key]:
            assert torch.equal(full[key][name], split[key][name]), (key, name)
    config = (tmp_path / "full" / "config.json").read_text()
    for setting in ('"flip": "alternate"', '"patch_whitening": true', '"pad_mode": "reflect"'):
        assert setting in config
