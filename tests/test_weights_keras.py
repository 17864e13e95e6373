"""Keras 3 ResNet50 (v1) and ResNet50V2: converted models compute Keras' own logits."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
pytest.importorskip("h5py")

from resnets import create_model  # noqa: E402
from resnets.weights.convert import convert  # noqa: E402

from weights_helpers import real_photo, top5  # noqa: E402

CONSTRUCTORS = {"v1": "ResNet50", "v2": "ResNet50V2"}
EXPECTED_MODEL = {"v1": "resnet50_v1", "v2": "preact_resnet50"}
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _keras_model(version: str, size: int, seed: int = 0):
    """A Keras ResNet with random BN statistics and conv biases (Keras initialises them to zero)."""
    model = getattr(keras.applications, CONSTRUCTORS[version])(weights=None, input_shape=(size, size, 3),
                                                                classifier_activation=None)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.uniform(-0.2, 0.2, n), rng.uniform(-0.5, 0.5, n),
                               rng.uniform(0.5, 1.5, n)])
        elif isinstance(layer, keras.layers.Conv2D) and layer.use_bias:
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.uniform(-0.2, 0.2, bias.shape)])
        elif isinstance(layer, keras.layers.Dense):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel * 0.05, bias])
    return model


def _save(model, path):
    (model.save_weights if path.name.endswith(".weights.h5") else model.save)(path)


@pytest.fixture(scope="module", params=["v1", "v2"])
def keras_net(request):
    return request.param, _keras_model(request.param, 64)


@pytest.mark.parametrize("filename", ["k.weights.h5", "k.keras", "k.h5"])
def test_keras_file_converts_to_same_logits(tmp_path, keras_net, filename):
    version, net = keras_net
    _save(net, tmp_path / filename)
    convert(tmp_path / filename, tmp_path / "k.safetensors")
    model = create_model(weights=str(tmp_path / "k.safetensors")).eval()
    assert model.model_name == EXPECTED_MODEL[version]
    x = np.random.default_rng(1).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(net(x, training=False))
    with torch.no_grad():
        got = model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert np.abs(got - expected).max() < 1e-4


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_same_top5_on_a_real_photo_with_keras_preprocessing(tmp_path, version):
    photo = real_photo()
    net = _keras_model(version, 224, seed=5)
    _save(net, tmp_path / "k.weights.h5")
    convert(tmp_path / "k.weights.h5", tmp_path / "k.safetensors")
    model = create_model(weights=str(tmp_path / "k.safetensors")).eval()
    module = keras.applications.resnet if version == "v1" else keras.applications.resnet_v2
    pixels = module.preprocess_input(np.asarray(photo, dtype="float32")[None].copy())
    expected = torch.from_numpy(np.asarray(keras.ops.convert_to_numpy(net(pixels, training=False))))
    with torch.no_grad():
        got = model(model.preprocessing.transform()(photo).unsqueeze(0))
    assert (got - expected).abs().max().item() < 1e-4 and top5(got) == top5(expected)
