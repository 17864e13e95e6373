"""The ResNet family: blocks, the configurable network, the name registry (``create_model``: factory)."""

from .registry import ModelSpec, get_model_spec, iter_model_specs, list_models
from .resnet import FeatureInfo, ResNet, ResNetConfig

__all__ = ["FeatureInfo", "ModelSpec", "ResNet", "ResNetConfig", "get_model_spec", "iter_model_specs",
           "list_models"]
