"""torchvision and timm checkpoints: converted models compute the source's logits."""

from __future__ import annotations


import pytest
import timm
import torch
import torchvision

from resnets import ResnetsError, create_model
from resnets.weights.convert import convert
from resnets.weights.format import load_weights_file

from weights_helpers import randomise, real_photo, top5

ATOL = 1e-4


def _compare(reference: torch.nn.Module, path, size: int = 64) -> str:
    dst = path.with_suffix(".safetensors")
    convert(path, dst)
    model = create_model(weights=str(dst)).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max().item() < ATOL
    return model.model_name


@pytest.mark.parametrize("name", ["resnet18", "resnet50", pytest.param("resnet101", marks=pytest.mark.slow)])
def test_torchvision_checkpoint_is_recognised_and_equal(tmp_path, name):
    reference = randomise(getattr(torchvision.models, name)())
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    assert _compare(reference, tmp_path / "tv.pth") == name


@pytest.mark.parametrize("name", ["resnet50", "resnet50d"])
def test_timm_checkpoint_is_recognised_and_equal(tmp_path, name):
    reference = randomise(timm.create_model(name))
    torch.save(reference.state_dict(), tmp_path / "timm.pth")
    assert _compare(reference, tmp_path / "timm.pth") == name


@pytest.mark.parametrize("wrap", [
    lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3},  # DataParallel
    lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "global_step": 7},  # Lightning
    lambda sd: {"model": {}, "state_dict_ema": sd, "optimizer": {}},  # timm train script, EMA only
])
def test_training_checkpoints_are_unwrapped(tmp_path, wrap):
    reference = randomise(torchvision.models.resnet18())
    torch.save(wrap(reference.state_dict()), tmp_path / "ckpt.pth")
    assert _compare(reference, tmp_path / "ckpt.pth") == "resnet18"


def test_head_of_another_size_is_kept_or_dropped(tmp_path):
    reference = randomise(torchvision.models.resnet18(num_classes=37))
    torch.save(reference.state_dict(), tmp_path / "ft.pth")
    model, _ = convert(tmp_path / "ft.pth", tmp_path / "ft.safetensors")
    assert model.num_classes == 37 and load_weights_file(tmp_path / "ft.safetensors").class_names is None
    with pytest.raises(ResnetsError, match="37 classes"):
        convert(tmp_path / "ft.pth", tmp_path / "bad.safetensors", num_classes=1000)
    model, imported = convert(tmp_path / "ft.pth", tmp_path / "nohead.safetensors", drop_head=True)
    assert model.num_classes == 0 and "dropped" in imported.notes[0]
    features = create_model(weights=str(tmp_path / "nohead.safetensors")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = torch.flatten(reference.avgpool(torch.nn.Sequential(*list(reference.children())[:-2])(x)), 1)
        assert torch.allclose(features(x), expected, atol=ATOL)


def test_model_option_selects_v1_stride(tmp_path):
    reference = randomise(create_model("resnet50_v1"))
    torch.save(reference.state_dict(), tmp_path / "v1.pth")
    convert(tmp_path / "v1.pth", tmp_path / "v1.safetensors", model_name="resnet50_v1")
    model = create_model(weights=str(tmp_path / "v1.safetensors")).eval()
    assert model.model_name == "resnet50_v1" and model.config.stride_in_1x1
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_fine_tune_head_replaced_when_num_classes_differs(tmp_path):
    reference = randomise(torchvision.models.resnet18())
    torch.save(reference.state_dict(), tmp_path / "r.pth")
    model = create_model("resnet18", weights=str(tmp_path / "r.pth"), num_classes=5)
    assert model.fc.out_features == 5
    assert torch.equal(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


class _Marker:
    """Unpickling this would create a file: the proof that code ran."""

    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_that_would_run_code_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    _Marker.path = str(marker)
    torch.save({"conv1.weight": torch.zeros(1), "payload": _Marker()}, tmp_path / "evil.pth")
    assert not marker.exists()
    with pytest.raises(ResnetsError, match="NOT unpickled") as error:
        convert(tmp_path / "evil.pth", tmp_path / "out.safetensors")
    assert "\n" not in str(error.value)
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_truncated_and_foreign_files_give_one_line(tmp_path):
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), tmp_path / "ok.pth")
    data = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ResnetsError, match="truncated"):
        convert(tmp_path / "cut.pth", tmp_path / "o.safetensors")
    torch.save(torchvision.models.vgg11().state_dict(), tmp_path / "vgg.pth")
    with pytest.raises(ResnetsError, match="not a ResNet"):
        convert(tmp_path / "vgg.pth", tmp_path / "o.safetensors")
    with pytest.raises(ResnetsError, match="does not fit resnet50"):
        convert(tmp_path / "ok.pth", tmp_path / "o.safetensors", model_name="resnet50")
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.shared_data
def test_same_top5_on_a_real_photo_at_224(tmp_path):
    photo = real_photo()
    reference = randomise(torchvision.models.resnet50(), seed=3)
    torch.save(reference.state_dict(), tmp_path / "r50.pth")
    convert(tmp_path / "r50.pth", tmp_path / "r50.safetensors")
    model = create_model(weights=str(tmp_path / "r50.safetensors")).eval()
    ours = model.preprocessing.transform()(photo).unsqueeze(0)
    theirs = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.transforms()(photo).unsqueeze(0)
    with torch.no_grad():
        a, b = model(ours), reference(theirs)
    assert (a - b).abs().max().item() < ATOL and top5(a) == top5(b)
