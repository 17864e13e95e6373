"""The ResNet family: blocks, the configurable network, and the name registry."""

from .registry import ModelSpec, create_model, get_model_spec, list_models
from .resnet import FeatureInfo, ResNet, ResNetConfig

__all__ = ["FeatureInfo", "ModelSpec", "ResNet", "ResNetConfig", "create_model", "get_model_spec",
           "list_models"]
