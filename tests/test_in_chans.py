"""Other channel counts: RGB weights adapted to 1 or N input channels (timm's adapt_input_conv)."""

from __future__ import annotations

import pytest
import torch

from _train_fixtures import write_folder_dataset
from resnets.cli import main
from resnets.errors import ResnetsError
from resnets.factory import create_model
from resnets.preprocessing import Preprocessing
from resnets.weights import save_weights
from resnets.weights.load import load_model_weights
from resnets.factory import load_model


def run_cli(args: list[str]) -> int:
    try:
        return main(args)
    except SystemExit as exit_:
        return int(exit_.code)


def rgb_weights(tmp_path, name: str, **options) -> tuple[torch.nn.Module, str]:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **options).eval()
    for module in model.modules():  # BN statistics away from the identity, so they count
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / f"{name}.safetensors"
    save_weights(path, model)
    return model, str(path)


@pytest.mark.parametrize("name, size", [("resnet18", 64), ("resnet50d", 64), ("resnet20", 32)])
def test_one_channel_equals_the_rgb_model_on_a_replicated_gray_image(tmp_path, name, size):
    rgb, path = rgb_weights(tmp_path, name)
    gray = create_model(name, weights=path, in_chans=1).eval()
    assert gray.in_chans == 1
    x = torch.randn(3, 1, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = rgb(x.expand(-1, 3, -1, -1)), gray(x)
    # relative to the logits' scale (about 10): summation order differs with the thread count
    assert (got - expected).abs().max().item() < 1e-6 * max(1.0, expected.abs().max().item()) * 10
    assert gray.preprocessing.mean == pytest.approx((sum(rgb.preprocessing.mean) / 3,))
    assert gray.preprocessing.std == pytest.approx((sum(rgb.preprocessing.std) / 3,))


def test_n_channels_repeat_the_rgb_filters_cyclically_scaled_by_3_over_n(tmp_path):
    rgb, path = rgb_weights(tmp_path, "resnet18")
    four = create_model("resnet18", weights=path, in_chans=4)
    old, new = rgb.conv1.weight.detach(), four.conv1.weight.detach()
    assert new.shape[1] == 4
    assert torch.allclose(new, torch.cat([old, old[:, :1]], dim=1) * 0.75)
    assert four.preprocessing.mean == pytest.approx((*rgb.preprocessing.mean, rgb.preprocessing.mean[0]))
    # the rest of the network is the file's, unchanged
    assert torch.equal(four.layer1[0].conv1.weight, rgb.layer1[0].conv1.weight)


def test_gray_record_feeds_rgb_pixels_as_their_luma():
    record = Preprocessing(input_size=4, resize_size=4, mean=(0.5,), std=(0.25,))
    pixels = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    out = record.normalize(pixels.expand(-1, 3, -1, -1))
    assert out.shape == (2, 1, 4, 4)
    assert torch.allclose(out, (pixels.float() / 255 - 0.5) / 0.25, atol=1e-5)
    colour = torch.tensor([255, 0, 0], dtype=torch.uint8).view(1, 3, 1, 1)
    assert record.normalize(colour).item() == pytest.approx((0.299 - 0.5) / 0.25, abs=1e-6)


@pytest.mark.parametrize("fields", [dict(mean=(0.5,), std=(0.2, 0.2, 0.2)), dict(mean=(0.5,), std=(0.2,),
                                                                                channel_order="BGR"),
                                    dict(mean=(), std=())])
def test_record_values_must_match_the_channels(fields):
    with pytest.raises(ResnetsError):
        Preprocessing(**fields)


def test_untrained_models_get_one_record_value_per_channel():
    assert len(create_model("resnet20", in_chans=1).preprocessing.mean) == 1
    assert len(create_model("resnet20").preprocessing.mean) == 3


def test_only_rgb_weights_are_adapted(tmp_path):
    gray = create_model("resnet20", in_chans=1)
    save_weights(tmp_path / "gray.safetensors", gray)
    with pytest.raises(ResnetsError, match="only RGB weights"):
        load_model_weights(tmp_path / "gray.safetensors", in_chans=3)
    assert load_model_weights(tmp_path / "gray.safetensors").in_chans == 1


def test_train_in_chans_1_from_rgb_weights(tmp_path, capsys):
    data = write_folder_dataset(tmp_path / "data", {"train": 6, "val": 3})
    _, path = rgb_weights(tmp_path, "resnet20")
    out = tmp_path / "run"
    assert run_cli(["train", "--model", "resnet20", "--weights", path, "--in-chans", "1", "--data", str(data),
                    "--out", str(out), "--epochs", "1", "--batch-size", "6", "--device", "cpu",
                    "--no-progress"]) == 0
    trained = load_model(str(out))  # the run directory, as evaluate and predict read it
    assert trained.in_chans == 1 and trained.conv1.weight.shape[1] == 1 and trained.num_classes == 3
    assert len(trained.preprocessing.mean) == 1
    capsys.readouterr()
    assert run_cli(["train", "--model", "resnet20", "--in-chans", "4", "--data", str(data), "--out",
                    str(tmp_path / "run4"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--in-chans 4" in err
