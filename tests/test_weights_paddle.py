"""Paddle ``.pdparams``: read without Paddle through a numpy-only unpickler."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torchvision

from resnets import ResnetsError, create_model
from resnets.weights.convert import convert

from weights_helpers import randomise, real_photo, top5


def _paddle_names(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A torchvision state dict as paddle.save writes a paddle.vision ResNet (pickle of numpy arrays)."""
    out = {}
    for key, tensor in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        key = key.replace(".running_mean", "._mean").replace(".running_var", "._variance")
        array = tensor.numpy()
        out[key] = array.T.copy() if key == "fc.weight" else array
    return out


def test_fabricated_pdparams_matches_torchvision(tmp_path):
    reference = randomise(torchvision.models.resnet18())
    with open(tmp_path / "r18.pdparams", "wb") as handle:
        pickle.dump(_paddle_names(reference.state_dict()), handle, protocol=4)
    convert(tmp_path / "r18.pdparams", tmp_path / "r18.safetensors")
    model = create_model(weights=str(tmp_path / "r18.safetensors")).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model.model_name == "resnet18" and (model(x) - reference(x)).abs().max().item() < 1e-4


class _Marker:
    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pdparams_that_would_run_code_is_refused(tmp_path):
    _Marker.path = str(tmp_path / "pwned")
    with open(tmp_path / "evil.pdparams", "wb") as handle:
        pickle.dump({"conv1.weight": np.zeros(3, np.float32), "x": _Marker()}, handle, protocol=4)
    with pytest.raises(ResnetsError, match="NOT unpickled"):
        convert(tmp_path / "evil.pdparams", tmp_path / "out.safetensors")
    assert not (tmp_path / "pwned").exists()


def _paddle_resnet50(seed: int = 0):
    """paddle.vision's ResNet-50 with random BN statistics, scaled so logits stay O(1)."""
    paddle = pytest.importorskip("paddle")
    paddle.seed(seed)
    net = paddle.vision.models.resnet50()
    net.eval()
    rng = np.random.default_rng(seed)
    for key, value in net.state_dict().items():
        if key.endswith("_mean"):
            value.set_value(rng.uniform(-0.5, 0.5, value.shape).astype("float32"))
        elif key.endswith("_variance"):
            value.set_value(rng.uniform(0.5, 1.5, value.shape).astype("float32"))
        elif key.endswith(".weight") and value.ndim == 1:  # BN scales
            value.set_value(rng.uniform(0.2, 0.6, value.shape).astype("float32"))
        elif key == "fc.weight":
            value.set_value(value.numpy() * 0.05)
    return paddle, net


@pytest.mark.slow
def test_paddle_saved_resnet50_gives_paddles_logits(tmp_path):
    paddle, net = _paddle_resnet50()
    paddle.save(net.state_dict(), str(tmp_path / "r50.pdparams"))
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 64, 64)).astype("float32")
    expected = net(paddle.to_tensor(x)).numpy()
    convert(tmp_path / "r50.pdparams", tmp_path / "r50.safetensors")
    model = create_model(weights=str(tmp_path / "r50.safetensors")).eval()
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    assert model.model_name == "resnet50" and np.abs(got - expected).max() < 1e-4


@pytest.mark.slow
@pytest.mark.shared_data
def test_same_top5_on_a_real_photo_with_paddle_preprocessing(tmp_path):
    photo = real_photo()
    paddle, net = _paddle_resnet50(seed=2)
    from paddle.vision import transforms as PT

    paddle_transform = PT.Compose([PT.Resize(256), PT.CenterCrop(224), PT.ToTensor(),
                                   PT.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    expected = torch.from_numpy(net(paddle_transform(photo).unsqueeze(0)).numpy())
    paddle.save(net.state_dict(), str(tmp_path / "r50.pdparams"))
    convert(tmp_path / "r50.pdparams", tmp_path / "r50.safetensors")
    model = create_model(weights=str(tmp_path / "r50.safetensors")).eval()
    with torch.no_grad():
        got = model(model.preprocessing.transform()(photo).unsqueeze(0))
    assert (got - expected).abs().max().item() < 1e-4 and top5(got) == top5(expected)
